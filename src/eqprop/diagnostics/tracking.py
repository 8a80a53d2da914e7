"""Stability measurements for the training loop, every K steps (design §5).

:func:`track_stability` turns the free equilibrium of a training batch into a few
floats for ``metrics.jsonl``: ε_crit, the critical mode ``a + ib``, its damping
ratio and the largest ``Re μ``. :func:`track_fidelity` adds the cosine of the
training estimator to IFT at the same equilibrium. ARPACK runs one sample at a
time, so only the first ``samples`` samples of the batch are measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..fields import Field
from ..gradients import IFT, Estimator, estimate_grads, gradient_cosine
from ..solvers.stability import leading_real
from .base import check_method
from .eps_crit import eps_crit

__all__ = ["StabilityTracking", "track_fidelity", "track_stability"]


@dataclass
class StabilityTracking:
    """How the training loop tracks stability.

    Args:
        every: measure every this many training steps (0 turns tracking off).
        k: eigenvalues per ARPACK call.
        samples: how many samples of the batch to measure (one ARPACK run each).
        method: ``"arpack"``, ``"dense"`` or ``"auto"`` (dense up to 128 unknowns a sample).
        bisect: also compute ε_crit by bisection (about 15× the cost; a cross-check).
        fidelity_every: measure the estimator's cosine to IFT every this many steps
            (0: never).
    """

    every: int = 50
    k: int = 6
    samples: int = 2
    method: str = "auto"
    bisect: bool = False
    fidelity_every: int = 0

    def __post_init__(self) -> None:
        for name in ("every", "fidelity_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ConfigError(f"tracking.{name}={v!r}: must be an integer ≥ 0 (0 = off)")
        for name in ("k", "samples"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"tracking.{name}={v!r}: must be an integer ≥ 1")
        check_method(self.method)

    def due(self, step: int) -> bool:
        """Whether stability is measured at training step ``step``."""
        return self.every > 0 and step % self.every == 0

    def fidelity_due(self, step: int) -> bool:
        """Whether gradient fidelity is measured at training step ``step``."""
        return self.fidelity_every > 0 and step % self.fidelity_every == 0

    def __call__(self, model: nn.Module, field: Field, z_star: Tensor,
                 step: int) -> dict[str, float]:
        """The training loop's tracker hook: :meth:`measure` when :meth:`due`, else ``{}``."""
        return self.measure(model, field, z_star) if self.due(step) else {}

    def measure(self, model: nn.Module, field: Field, z_star: Tensor) -> dict[str, float]:
        """:func:`track_stability` with these settings."""
        return track_stability(model, field, z_star, k=self.k, samples=self.samples,
                               method=self.method, bisect=self.bisect)


def _subset(field: Field, z_star: Tensor, samples: int) -> tuple[Field, Tensor]:
    """The field and z* on the first ``samples`` samples (the whole batch for a field that
    cannot build its head)."""
    s = min(samples, z_star.shape[0])
    head = field.head(s)
    return (field, z_star.detach()) if head is None else (head, z_star[:s].detach())


def track_stability(model: nn.Module, field: Field, z_star: Tensor, *, k: int = 6,
                    samples: int = 2, method: str = "auto",
                    bisect: bool = False) -> dict[str, float]:
    """Stability of the free equilibrium of a training batch, as floats for the metrics log.

    Args:
        model: the :class:`~eqprop.models.EquilibriumLM`.
        field: its field on the batch (``model.field(tokens, targets)``).
        z_star: the free equilibrium ``(B, L, T, D)``.
        k: eigenvalues per ARPACK call.
        samples: measure the first this many samples.
        method: eigenvalue method (see :func:`~eqprop.diagnostics.spectrum`).
        bisect: add ``eps_crit_bisect_min`` from the bisection route.

    Returns:
        ``eps_crit_min`` / ``eps_crit_mean`` (0 for a sample with some Re μ ≥ 0),
        ``crit_a`` / ``crit_b`` (the critical mode ``a + i|b|`` of the sample with the
        smallest ε_crit), ``crit_abs_b_mean``, ``damping`` (its ``-a/|μ|``),
        ``damping_mean``, ``max_re`` (largest Re μ over the samples),
        ``unstable_frac`` (samples with some Re μ ≥ 0), ``stable_frac`` and
        ``max_re_est`` (the cheap per-sample check of
        :mod:`~eqprop.solvers.stability` on the whole batch, not only the first
        ``samples``), ``stability_time_s``.
    """
    t0 = time.perf_counter()
    sub, z = _subset(field, z_star, samples)
    r = eps_crit(sub, z, k=k, bisect=bisect, method=method)
    i = int(torch.nan_to_num(r.eig, nan=float("inf")).argmin())
    mode = r.mode[i]
    out = {
        "eps_crit_min": float(r.eig[i]),
        "eps_crit_mean": float(r.eig.mean()),
        "crit_a": float(mode.real),
        "crit_b": float(mode.imag.abs()),
        "crit_abs_b_mean": float(r.mode.imag.abs().mean()),
        "damping": float(-mode.real / mode.abs()),
        "damping_mean": float(r.damping.mean()),
        "max_re": float(r.max_real.max()),
        "unstable_frac": float((r.max_real >= 0).double().mean()),
    }
    if r.bisect is not None:
        out["eps_crit_bisect_min"] = float(r.bisect.min())
    est = leading_real(field, z_star.detach())  # every sample, batched: m evaluations of F
    out["stable_frac"] = float((~est.unstable).double().mean())
    out["max_re_est"] = float(torch.nan_to_num(est.max_real, nan=-float("inf")).max())
    out["stability_time_s"] = time.perf_counter() - t0
    return out


def track_fidelity(model: nn.Module, field: Field, z_star: Tensor, estimator: Estimator,
                   reference: Estimator | None = None, *, samples: int = 2) -> dict[str, float]:
    """Cosine of ``estimator`` to the IFT gradient at the same equilibrium.

    Leaves the parameters' ``.grad`` cleared: call it before the training step's
    own backward, or after the optimiser step.

    Args:
        model: the model.
        field: its field on the batch.
        z_star: the free equilibrium ``(B, ...)``.
        estimator: the training estimator.
        reference: the reference (default ``IFT(tol=1e-6)``).
        samples: measure on the first this many samples.

    Returns:
        ``grad_cosine`` (global) and ``grad_cosine_min`` (worst parameter).
    """
    sub, z = _subset(field, z_star, samples)
    ref, _ = estimate_grads(model, sub, z, IFT(tol=1e-6) if reference is None else reference)
    est, _ = estimate_grads(model, sub, z, estimator)
    cos, per = gradient_cosine(est, ref)
    return {"grad_cosine": cos, "grad_cosine_min": min(per.values())}
