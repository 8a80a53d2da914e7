"""Anderson acceleration of the Euler map, batched per sample, with a safeguard (design §2)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..fields import FieldFn
from ..validate import integer, interval, positive
from .base import Solver, SolverState, bcast, sample_norm

__all__ = ["Anderson"]


def _flat(v: Tensor) -> Tensor:  # (B, ...) -> (B, N)
    return v.reshape(v.shape[0], -1)


@dataclass
class Anderson(Solver):
    """Anderson mixing (type II, Walker & Ni 2011) on the fixed-point map ``G(z) = z + εF(z)``.

    With the residual ``r_k = G(z_k) - z_k = εF(z_k)`` and the last ``m`` differences
    ``ΔR = [r_(i+1) - r_i]``, ``ΔZ = [z_(i+1) - z_i]`` (columns, per sample), solve the
    ridge least-squares problem ``min_γ ‖r_k - ΔR γ‖² + λ s ‖γ‖²`` and step

        z_(k+1) = z_k + β r_k - (ΔZ + β ΔR) γ

    (``β`` the mixing/damping, 1 is undamped). The ridge is scaled to the history:
    ``s = trace(ΔRᴴΔR)/m``, so λ is dimensionless and the solve stays well posed when
    the columns become nearly parallel. With an empty history this is the plain
    step ``z + βεF(z)`` (Euler with step βε).

    Safeguard: when ``‖F‖`` after the mixed step exceeds ``restart_growth`` times its
    value before, the step is rejected, the sample's history is cleared (a restart,
    counted in ``aux["restarts"]``) and its next step is the plain one. Samples are
    independent: each has its own history length and its own restarts.

    Args:
        m: history size (≥ 1).
        beta: mixing parameter, in (0, 1].
        lam: relative ridge λ ≥ 0.
        eps: ε of the underlying map G (> 0).
        restart_growth: residual growth that triggers the safeguard (≥ 1).
    """

    capturable: ClassVar[bool] = True

    m: int = 5
    beta: float = 1.0
    lam: float = 1e-4
    eps: float = 0.5
    restart_growth: float = 2.0

    def __post_init__(self) -> None:
        integer(self, "m", self.m)
        interval(self, "beta", self.beta, 0.0, 1.0, lo_open=True)
        interval(self, "lam", self.lam, 0.0, math.inf)
        positive(self, "eps", self.eps)
        interval(self, "restart_growth", self.restart_growth, 1.0, math.inf)

    def init(self, F: FieldFn, z0: Tensor) -> SolverState:
        state = super().init(F, z0)
        B, N = z0.shape[0], z0[0].numel()
        hist = torch.zeros(B, self.m, N, dtype=z0.dtype, device=z0.device)
        aux = {
            "dZ": hist,  # (B, m, N) newest difference first
            "dR": hist.clone(),  # (B, m, N)
            "count": torch.zeros(B, dtype=torch.long, device=z0.device),  # valid columns
            "restarts": torch.zeros(B, dtype=torch.long, device=z0.device),
        }
        eps = torch.full((B,), float(self.eps), dtype=z0.real.dtype, device=z0.device)
        return replace(state, eps=eps, aux=aux)

    def _mix(self, r: Tensor, dZ: Tensor, dR: Tensor, count: Tensor) -> Tensor:
        """Anderson update direction per sample; ``r`` (B, N), histories (B, m, N).

        The small least-squares problem runs outside autocast, in the state's precision: a
        bf16 Gram matrix loses the differences it is made of, and LU has no bf16 kernel.
        """
        with torch.autocast(r.device.type, enabled=False):
            B, m, _ = dR.shape
            valid = torch.arange(m, device=r.device)[None, :] < count[:, None]  # (B, m)
            pair = valid[:, :, None] & valid[:, None, :]  # (B, m, m)
            H = torch.einsum("bin,bjn->bij", dR.conj(), dR)  # (B, m, m) Gram matrix ΔRᴴΔR
            scale = torch.diagonal(H, dim1=1, dim2=2).real.sum(1) / count.clamp_min(1)  # (B,)
            eye = torch.eye(m, dtype=H.dtype, device=H.device)
            ridge = (self.lam * scale).clamp_min(torch.finfo(scale.dtype).tiny)
            # invalid columns: identity rows so that their γ is exactly 0
            H = torch.where(pair, H, torch.zeros((), dtype=H.dtype, device=H.device))
            H = H + eye * torch.where(valid, ridge[:, None], 1.0).to(H.dtype)[:, None, :]
            rhs = torch.einsum("bin,bn->bi", dR.conj(), r) * valid  # (B, m)
            gamma = torch.linalg.solve_ex(H, rhs.unsqueeze(-1))[0].squeeze(-1)  # (B, m), no sync
        gamma = torch.nan_to_num(gamma) * valid
        return self.beta * r - torch.einsum("bi,bin->bn", gamma.to(dZ.dtype),
                                            dZ + self.beta * dR)

    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        z, f, aux = state.z, state.f, state.aux
        r = _flat(bcast(state.eps, z) * f)  # (B, N) residual of G
        count = aux["count"]
        dz = self._mix(r, aux["dZ"], aux["dR"], count)  # (B, N)
        z_new = z + dz.reshape(z.shape)
        f_new = F(z_new)
        f0, f1 = sample_norm(f), sample_norm(f_new)
        # safeguard: reject a mixed step on which the residual grew; a plain step is never
        # rejected (it is the Euler step the user asked for)
        ok = (count == 0) | (torch.isfinite(f1) & (f1 <= self.restart_growth * f0))
        restart = ~ok
        r_new = _flat(bcast(state.eps, z) * f_new)
        # push the new differences in front (newest first), then clear restarted samples
        dZ = torch.cat([dz[:, None], aux["dZ"][:, :-1]], 1)
        dR = torch.cat([(r_new - r)[:, None], aux["dR"][:, :-1]], 1)
        keep = ok[:, None, None]
        new_aux = {
            "dZ": torch.where(keep, dZ, torch.zeros_like(dZ)),
            "dR": torch.where(keep, dR, torch.zeros_like(dR)),
            "count": torch.where(ok, (count + 1).clamp_max(self.m), torch.zeros_like(count)),
            "restarts": aux["restarts"] + restart,
        }
        k = bcast(ok, z)
        return SolverState(z=torch.where(k, z_new, z), f=torch.where(k, f_new, f),
                           nfe=self.charge(state, F), eps=state.eps, aux=new_aux)
