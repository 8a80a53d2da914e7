"""PNG plots of a run's metrics (matplotlib's object API on the Agg canvas: no display,
no global backend switch). Files are replaced atomically, so they can be watched.

Events of the wall guard (``wall``, ``wall_cleared``; see :mod:`eqprop.train.guard`)
are drawn on every plot as vertical lines, labelled with the action taken. Skipped
updates (non-finite, or by the guard) are shaded on ``ce.png`` and ``status.png``, and
their training CE is marked with a cross."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import StorageError
from ..solvers.status import Status

__all__ = ["PLOTS", "nfe_phases", "plot_metrics"]

#: file names written by :func:`plot_metrics`
PLOTS = ("ce.png", "residual.png", "nfe.png", "status.png")

_STATUS_COLORS = {"converged": "tab:green", "contracting": "tab:blue", "cycling": "tab:orange",
                  "diverged": "tab:red", "nonfinite": "black", "unstable": "tab:purple"}


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, m = [], None
    for v in values:
        m = v if m is None else (1 - alpha) * m + alpha * v
        out.append(m)
    return out


#: line colour of a guard event, by its action (``wall_cleared`` is green)
_EVENT_COLORS = {"warn": "tab:orange", "skip": "tab:purple", "stop": "tab:red",
                 "eps": "tab:brown", "jacreg": "tab:pink", "solver": "tab:cyan"}


def _events(records: Sequence[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """``(step, label, colour)`` of the guard events to mark."""
    out = []
    for r in records:
        if r.get("event") == "wall" and "step" in r:
            action = str(r.get("action", "warn"))
            out.append((r["step"], f"wall: {action}", _EVENT_COLORS.get(action, "tab:red")))
        elif r.get("event") == "wall_cleared" and "step" in r:
            out.append((r["step"], "wall cleared", "tab:green"))
    return out


def _mark(ax: Any, events: Sequence[tuple[int, str, str]]) -> None:
    """Vertical lines at the guard's events, each labelled at the top of the axes."""
    for step, label, color in events:
        ax.axvline(step, color=color, ls="--", lw=1.0, alpha=0.8)
        ax.annotate(label, xy=(step, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -2), textcoords="offset points", rotation=90, va="top",
                    fontsize="x-small", color=color)


def _save(fig: Figure, path: Path, events: Sequence[tuple[int, str, str]] = ()) -> None:
    for ax in fig.axes:
        _mark(ax, events)
    FigureCanvasAgg(fig)
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write the plot {str(path)!r} ({e.strerror or e})") from None


def _figure(title: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _skipped_spans(records: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """``(start, end)`` step intervals of consecutive skipped updates (step s covers
    ``(s - 1, s]``)."""
    spans: list[list[float]] = []
    for r in records:
        if r.get("skipped") and "step" in r:
            if spans and spans[-1][1] == r["step"] - 1:
                spans[-1][1] = r["step"]
            else:
                spans.append([r["step"] - 1, r["step"]])
    return [(a, b) for a, b in spans]


def _shade_skipped(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    n = sum(1 for r in records if r.get("skipped"))
    for i, (a, b) in enumerate(_skipped_spans(records)):
        ax.axvspan(a, b, color="tab:purple", alpha=0.15, lw=0,
                   label=f"update skipped ({n} steps)" if i == 0 else None)


def _plot_ce(records, unigram: float | None, out: Path, events=()) -> None:
    fig, ax = _figure("cross-entropy", "CE (nats)")
    x, y = _series(records, "train_ce")
    if x:
        ax.plot(x, y, color="tab:blue", alpha=0.25, lw=0.8)
        ax.plot(x, _ema(y), color="tab:blue", label="train (EMA)")
        skipped = [(r["step"], r["train_ce"]) for r in records
                   if r.get("skipped") and r.get("train_ce") is not None]
        if skipped:
            ax.plot([p[0] for p in skipped], [p[1] for p in skipped], "x", color="tab:purple",
                    ms=3, label="train, skipped update")
        _shade_skipped(ax, records)
    x, y = _series(records, "val_ce")
    if x:
        ax.plot(x, y, "o-", color="tab:orange", label="val, training solver")
    x, y = _series(records, "val_ce_ref")
    if x:
        ax.plot(x, y, "x--", color="tab:red", label="val, reference solve")
    x, y = _series(records, "val_raw_ce_ref")
    if x:  # with a moving average, val_* are the average's and these the raw parameters'
        ax.plot(x, y, "+:", color="tab:brown", label="val, raw parameters, reference solve")
    if unigram is not None:
        ax.axhline(unigram, color="gray", ls=":", label=f"unigram entropy {unigram:.2f}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right")
    _save(fig, out, events)


def _plot_residual(records, tol: float | None, out: Path, events=()) -> None:
    fig, ax = _figure("free-phase relative residual ‖F(z)‖/‖z‖", "residual")
    drawn = False
    for key, label in (("res_max", "max over batch"), ("res_mean", "mean over batch")):
        x, y = _series(records, key)
        pos = [(a, b) for a, b in zip(x, y, strict=True) if b > 0]
        if pos:
            ax.plot([p[0] for p in pos], [p[1] for p in pos], lw=0.9, label=label)
            drawn = True
    if drawn:  # a log axis without data warns
        ax.set_yscale("log")
        if tol is not None:
            ax.axhline(tol, color="gray", ls=":", label=f"tol {tol:g}")
        ax.legend(loc="upper right")
    _save(fig, out, events)


def nfe_phases(records: Sequence[dict[str, Any]]) -> list[str]:
    """The relaxation phases ``nfe.png`` draws, in order of appearance; ``residual`` (the
    single F(z*) of the residual correction, a flat line at 1) is left out."""
    phases: list[str] = []
    for r in records:
        for k in r.get("nfe") or {}:
            if k not in phases and k != "residual":
                phases.append(k)
    return phases


def _plot_nfe(records, out: Path, events=()) -> None:
    fig, ax = _figure("function evaluations per sample (F, JVP, VJP)", "NFE")
    phases = nfe_phases(records)
    for k in phases:
        pts = [(r["step"], r["nfe"][k]) for r in records
               if (r.get("nfe") or {}).get(k) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.9, label=k)
    if phases:
        ax.legend(loc="upper right")
    _save(fig, out, events)


def _plot_status(records, out: Path, events=()) -> None:
    fig, ax = _figure("free-phase status (fraction of samples)", "fraction")
    rows = [r for r in records if r.get("status_frac")]
    if rows:
        x = [r["step"] for r in rows]
        labels = [s.label for s in Status]
        ys = [[r["status_frac"].get(lab, 0.0) for r in rows] for lab in labels]
        ax.stackplot(x, ys, labels=labels, colors=[_STATUS_COLORS[lab] for lab in labels],
                     alpha=0.8)
        ax.set_ylim(0, 1)
        for i, (a, b) in enumerate(_skipped_spans(records)):  # a band above the stack
            ax.axvspan(a, b, ymin=0.97, ymax=1.0, color="tab:purple", lw=0,
                       label="update skipped" if i == 0 else None)
        ax.legend(loc="lower left", fontsize="small")
    _save(fig, out, events)


def plot_metrics(records: Sequence[dict[str, Any]], out_dir: str | Path, *,
                 unigram_entropy: float | None = None, tol: float | None = None) -> list[Path]:
    """Write the run's plots.

    Args:
        records: metrics records (see :mod:`eqprop.train.metrics`).
        out_dir: folder for the PNGs (created).
        unigram_entropy: drawn as the bar to beat on the CE plot.
        tol: the free solver's tolerance, drawn on the residual plot.

    Raises:
        StorageError: a file cannot be written (full disk, permissions).

    Returns:
        Paths of the files written (``PLOTS``).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {str(out)!r} ({e.strerror or e})") from None
    steps = [r for r in records if "event" not in r]
    events = _events(records)
    paths = [out / name for name in PLOTS]
    _plot_ce(steps, unigram_entropy, paths[0], events)
    _plot_residual(steps, tol, paths[1], events)
    _plot_nfe(steps, paths[2], events)
    _plot_status(steps, paths[3], events)
    return paths
