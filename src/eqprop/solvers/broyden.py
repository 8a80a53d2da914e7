"""Limited-memory Broyden root finding on ``F(z) = 0``, batched per sample (design §2)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..fields import FieldFn
from ..validate import integer, interval, positive
from .base import Solver, SolverState, bcast, sample_norm

__all__ = ["Broyden"]


def _flat(v: Tensor) -> Tensor:  # (B, ...) -> (B, N)
    return v.reshape(v.shape[0], -1)


def _dot(a: Tensor, b: Tensor) -> Tensor:  # (B, N), (B, N) -> (B,): aᴴb per sample
    return (a.conj() * b).sum(-1)


@dataclass
class Broyden(Solver):
    """Broyden's "good" method (Broyden 1965) on ``F(z) = 0``, with a limited-memory
    inverse Jacobian per sample.

    ``H_k ≈ J⁻¹`` starts as ``H_0 = -ε I``, so the first step is the Euler step
    ``z + εF(z)`` (on the map ``G(z) = z + εF(z)`` this is Broyden with the usual
    ``-I``). A step is ``s = -H_k F(z_k)``; with ``y = F(z_k + s) - F(z_k)``, the
    rank-one update of the Jacobian estimate that satisfies the secant condition and
    changes the estimate least (``B_(k+1) = B_k + (y - B_k s) sᴴ / sᴴs``) reads for
    the inverse, by Sherman–Morrison,

        H_(k+1) = H_k + (s - H_k y) sᴴ H_k / (sᴴ H_k y),       so  H_(k+1) y = s.

    ``H_k = -ε I + Σ_i u_i v_iᴴ`` is kept as two histories ``U, V`` ``(B, m, N)``
    with ``u = (s - H_k y) / (sᴴ H_k y)`` and ``v = H_kᴴ s``: the memory is ``2m``
    states per sample, a product costs ``O(mN)``. ``H_k F(z_k)`` is carried along
    (``aux["Hf"]``, brought to ``H_(k+1)`` by the rank-one term), so a step needs two
    products (``H F(z_k + s)`` and ``Hᴴ s``) and one evaluation of F. On an affine field
    with an unbounded history the iterates stay in the Krylov space of ``J`` and
    terminate in at most ``2N`` steps (Gay 1979); a history shorter than that makes
    the restarts cost that property (measured on the solver bench: docs/solvers.md).

    Safeguard, per sample: a step after which ``‖F‖`` exceeds ``restart_growth``
    times its value before is rejected (the sample stays where it was), but its
    secant pair still updates ``H``: it is exact information on ``J``, and the
    stiff directions that made the step blow up are exactly what ``H`` lacks. A
    sample restarts from ``H_0`` (counted in ``aux["restarts"]``) when its history is
    full, or when its update is unusable: not finite, or ``|sᴴ H y|`` below
    ``ulp · ‖s‖ ‖H y‖`` (a division by ~0); a restart resets the count, the stale
    columns are masked and then overwritten. Rejections are counted in
    ``aux["rejected"]``. Every choice is a mask applied with ``torch.where``, so
    :meth:`step` never synchronises with the host (``capturable``).

    NFE: one evaluation of F per step, rejected or not.

    Args:
        m: history size (≥ 1): rank of the correction to ``H_0`` before a restart.
        eps: scale ε of the initial inverse Jacobian ``-ε I`` (finite, > 0).
        restart_growth: growth of ``‖F‖`` at which a step is rejected (≥ 1; ``inf``
            accepts every finite step; the default's trade-off: docs/solvers.md).
    """

    capturable: ClassVar[bool] = True

    m: int = 100
    eps: float = 0.5
    restart_growth: float = 4.0

    def __post_init__(self) -> None:
        integer(self, "m", self.m)
        positive(self, "eps", self.eps)
        interval(self, "restart_growth", self.restart_growth, 1.0, math.inf)

    def init(self, F: FieldFn, z0: Tensor) -> SolverState:
        state = super().init(F, z0)
        B, N = z0.shape[0], z0[0].numel()
        hist = torch.zeros(B, self.m, N, dtype=z0.dtype, device=z0.device)
        zero = torch.zeros(B, dtype=torch.long, device=z0.device)
        aux = {"U": hist, "V": hist.clone(),  # (B, m, N) columns u_i, v_i of the correction
               "count": zero,  # (B,) valid columns (the older ones are stale, ignored)
               "Hf": -self.eps * _flat(state.f),  # (B, N) H_k F(z_k), kept up to date
               "restarts": zero.clone(), "rejected": zero.clone()}  # (B,) counters
        return replace(state, aux=aux)

    def _H(self, U: Tensor, V: Tensor, count: Tensor, x: Tensor) -> Tensor:
        """``H x = -ε x + Σ_(i<count) u_i (v_iᴴ x)``; x (B, N), U, V (B, m, N) -> (B, N)."""
        c = torch.einsum("bin,bn->bi", V.conj(), x)  # (B, m)
        c = torch.where(self._valid(count), c, torch.zeros_like(c))
        return -self.eps * x + torch.einsum("bi,bin->bn", c, U)

    def _Hh(self, U: Tensor, V: Tensor, count: Tensor, x: Tensor) -> Tensor:
        """``Hᴴ x = -ε x + Σ_(i<count) v_i (u_iᴴ x)``; x (B, N), U, V (B, m, N) -> (B, N)."""
        c = torch.einsum("bin,bn->bi", U.conj(), x)  # (B, m)
        c = torch.where(self._valid(count), c, torch.zeros_like(c))
        return -self.eps * x + torch.einsum("bi,bin->bn", c, V)

    def _valid(self, count: Tensor) -> Tensor:  # (B,) -> (B, m) the columns in use
        return torch.arange(self.m, device=count.device)[None, :] < count[:, None]

    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        z, aux = state.z, state.aux
        f = _flat(state.f)  # (B, N)
        U, V, Hf = aux["U"], aux["V"], aux["Hf"]
        s = -Hf  # (B, N) the quasi-Newton step -H_k F(z_k)
        z_new = z + s.reshape(z.shape)
        f_new = F(z_new)
        f1_flat = _flat(f_new)  # (B, N)
        f0, f1 = sample_norm(f), sample_norm(f1_flat)  # (B,)
        ok = torch.isfinite(f1) & (f1 <= self.restart_growth * f0)  # (B,) accept the step
        # a sample with a full history restarts from H_0 before taking in the new pair
        # (a restart only resets the count: the stale columns are masked, then overwritten)
        full = aux["count"] >= self.m  # (B,)
        count = torch.where(full, torch.zeros_like(aux["count"]), aux["count"])
        Hf = torch.where(full[:, None], -self.eps * f, Hf)  # (B, N) H F(z_k), H as reset
        Hf_new = self._H(U, V, count, f1_flat)  # (B, N) H F(z_k + s)
        y = f1_flat - f  # (B, N)
        Hy = Hf_new - Hf  # (B, N)
        v = self._Hh(U, V, count, s)  # (B, N) Hᴴs
        den = _dot(v, y)  # (B,) sᴴHy
        fi = torch.finfo(f1.dtype)
        size = sample_norm(s) * sample_norm(Hy)  # (B,)
        usable = (torch.isfinite(den) & torch.isfinite(size) & (den.abs() > fi.eps * size)
                  & (den.abs() > fi.tiny))  # (B,)
        u = (s - Hy) / torch.where(usable, den, torch.ones_like(den))[:, None]  # (B, N)
        usable = usable & torch.isfinite(u).all(1)
        slot = torch.arange(self.m, device=z.device)[None, :] == count[:, None]  # (B, m)
        put = (slot & usable[:, None])[:, :, None]  # (B, m, 1)
        # H_(k+1) F at the next point, by Sherman–Morrison (no pass over the history);
        # an unusable pair restarts the sample: the history that produced it is suspect
        f_next = torch.where(ok[:, None], f1_flat, f)  # (B, N)
        Hf_next = torch.where(ok[:, None], Hf_new, Hf) + u * _dot(v, f_next)[:, None]
        new_aux = {"U": torch.where(put, u[:, None], U),
                   "V": torch.where(put, v[:, None], V),
                   "count": torch.where(usable, count + 1, torch.zeros_like(count)),
                   "Hf": torch.where(usable[:, None], Hf_next, -self.eps * f_next),
                   "restarts": aux["restarts"] + (full | ~usable),
                   "rejected": aux["rejected"] + ~ok}
        k = bcast(ok, z)
        return SolverState(z=torch.where(k, z_new, z), f=torch.where(k, f_new, state.f),
                           nfe=self.charge(state, F), eps=state.eps, aux=new_aux)
