"""Plots of the diagnostics (matplotlib, Agg backend: files only, no display).

- :func:`plot_spectrum`: eigenvalues of J in the complex plane with Euler's
  stability region ``|1 + εμ| < 1`` (the disk of radius 1/ε centred at -1/ε);
  a mode outside the disk makes Euler at that ε cycle or diverge.
- :func:`plot_residual_traces`: relative residual per step for each ε of a sweep.
- :func:`plot_fidelity`: gradient cosine to IFT against the free-phase tolerance.
- :func:`plot_stability_history`: tracked ε_crit and critical mode during training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .fidelity import FidelityResult
    from .sweep import SweepResult

__all__ = ["plot_fidelity", "plot_residual_traces", "plot_spectrum", "plot_stability_history"]


def _plt():
    """pyplot on the file-only Agg backend, imported on first use (keeps ``import eqprop`` fast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_spectrum(eigvals: Tensor, eps: float, path: str | Path, *,
                  critical: Tensor | None = None, extra_eps: Sequence[float] = (),
                  title: str | None = None) -> Path:
    """Eigenvalues of J in the complex plane with Euler's stability disk for ``eps``.

    Args:
        eigvals: ``(B, m)`` or ``(m,)`` complex eigenvalues (NaN entries skipped).
        eps: the run's step ε: the disk ``|1 + εμ| < 1`` (centre -1/ε, radius 1/ε).
        path: PNG file to write.
        critical: ``(B,)`` critical modes to highlight.
        extra_eps: further step sizes whose disk boundaries are drawn dashed.
        title: figure title.

    Returns:
        The path written.
    """
    mu = eigvals.detach().reshape(-1).to(torch.complex128).cpu()
    mu = mu[~torch.isnan(mu.real)]
    from matplotlib.patches import Circle

    fig, ax = _plt().subplots(figsize=(6.4, 5.2))
    ax.add_patch(Circle((-1 / eps, 0), 1 / eps, facecolor="tab:green", alpha=0.12,
                        edgecolor="tab:green", lw=1.5, label=f"|1 + εμ| < 1, ε = {eps:g}"))
    for e in extra_eps:
        ax.add_patch(Circle((-1 / e, 0), 1 / e, fill=False, ls="--", lw=0.8, color="0.5"))
    ax.scatter(mu.real, mu.imag, s=14, color="tab:blue", label="eigenvalues μ of J", zorder=3)
    if critical is not None:
        c = critical.detach().reshape(-1).to(torch.complex128).cpu()
        c = c[~torch.isnan(c.real)]
        pair = torch.cat([c, c.conj()])
        ax.scatter(pair.real, pair.imag, s=70, facecolor="none", edgecolor="tab:red", lw=1.5,
                   label="critical mode", zorder=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.axhline(0, color="k", lw=0.5)
    # frame the eigenvalues; show the whole disk unless it dwarfs them
    re_min = min(float(mu.real.min()), 0.0) if len(mu) else -2 / eps
    re_max = max(float(mu.real.max()), 0.0) if len(mu) else 0.0
    im_max = max(float(mu.imag.abs().max()) if len(mu) else 0.0, 0.1)
    if 2 / eps <= 3 * (re_max - re_min):
        re_min, im_max = min(re_min, -2 / eps), max(im_max, 1 / eps)
    pad = 0.08 * (re_max - re_min) + 0.05
    ax.set_xlim(re_min - pad, re_max + pad)
    ax.set_ylim(-1.15 * im_max, 1.15 * im_max)
    ax.set_xlabel("Re μ")
    ax.set_ylabel("Im μ")
    ax.set_title(title or "spectrum of J at z* and Euler's stability region")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_residual_traces(sweep: SweepResult, path: str | Path, *,
                         title: str | None = None) -> Path:
    """Relative residual ``‖F‖/‖z‖`` per Euler step for each ε of an ε-sweep.

    The median over samples is drawn solid, the band between the smallest and the
    largest sample shaded.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("viridis")
    E = len(sweep.eps)
    for i in range(E):
        tr = sweep.traces[i]  # (B, S)
        keep = ~torch.isnan(tr).all(0)
        tr = tr[:, keep]
        steps = torch.arange(tr.shape[1])
        color = cmap(i / max(E - 1, 1))
        finite = torch.nan_to_num(tr, nan=math.inf, posinf=math.inf)
        ax.fill_between(steps, finite.amin(0).clamp_min(1e-300), tr.nan_to_num(1e300).amax(0)
                        .clamp_max(1e300), color=color, alpha=0.15, lw=0)
        ax.plot(steps, tr.nanmedian(0).values, color=color, label=f"ε = {float(sweep.eps[i]):g}")
    ax.axhline(sweep.tol, color="k", ls=":", lw=0.8, label=f"tol {sweep.tol:g}")
    ax.set_yscale("log")
    ax.set_ylim(max(1e-16, sweep.tol / 100), None)
    ax.set_xlabel("Euler step")
    ax.set_ylabel("‖F(z)‖ / ‖z‖")
    ax.set_title(title or "free-phase residual per ε (median, min–max band)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_fidelity(result: FidelityResult, path: str | Path, *, title: str | None = None) -> Path:
    """Global gradient cosine to the reference against the free-phase tolerance: the cosine
    itself, and ``1 - cos`` on a log axis (where estimators that all read ~1 come apart),
    each estimator with its own marker and line style."""
    fig, (ax, gap) = _plt().subplots(1, 2, figsize=(11.0, 4.2))
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-")]
    for i, name in enumerate(result.estimators):
        tols, cos = result.curve(name)
        marker, line = styles[i % len(styles)]
        ax.plot(tols, cos, marker=marker, ls=line, label=name, alpha=0.85)
        gap.plot(tols, [max(1.0 - c, 1e-12) for c in cos], marker=marker, ls=line, label=name,
                 alpha=0.85)
    for a in (ax, gap):
        a.set_xscale("log")
        a.invert_xaxis()
        a.set_xlabel("free-phase tolerance ‖F‖/‖z‖")
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=8)
    ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.05)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_ylabel("cosine to IFT gradient")
    gap.set_yscale("log")
    gap.set_ylabel("1 − cosine (floor 1e-12)")
    fig.suptitle(title or "gradient fidelity vs free-phase tolerance")
    return _save(fig, path)


def plot_stability_history(records: Sequence[Mapping[str, float]], path: str | Path, *,
                           x: str = "step", eps: float | None = None) -> Path:
    """Tracked stability against ``x`` (e.g. ``"step"`` or a train CE key).

    Args:
        records: metrics rows holding ``x`` and the keys of
            :func:`~eqprop.diagnostics.track_stability` (rows without them are skipped).
        path: PNG file to write.
        x: the key on the horizontal axis.
        eps: the run's step ε, drawn as a line on the ε_crit panel.
    """
    rows = [r for r in records if x in r and "eps_crit_min" in r]
    xs = [float(r[x]) for r in rows]
    fig, axes = _plt().subplots(3, 1, figsize=(6.4, 7.2), sharex=True)
    axes[0].plot(xs, [r["eps_crit_min"] for r in rows], marker=".", label="ε_crit (min)")
    if eps is not None:
        axes[0].axhline(eps, color="tab:red", ls="--", label=f"run's ε = {eps:g}")
    axes[0].set_ylabel("ε_crit")
    axes[0].legend(fontsize=8)
    axes[1].plot(xs, [r["crit_b"] for r in rows], marker=".", color="tab:purple")
    axes[1].set_ylabel("|b| of critical mode")
    axes[2].plot(xs, [r["crit_a"] for r in rows], marker=".", color="tab:orange", label="a")
    axes[2].plot(xs, [r["max_re"] for r in rows], ls=":", color="k", label="max Re μ")
    axes[2].axhline(0, color="k", lw=0.6)
    axes[2].set_ylabel("a of critical mode")
    axes[2].legend(fontsize=8)
    axes[2].set_xlabel(x)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)
