"""Anderson acceleration of the Euler map, batched per sample, with a safeguard (design §2).

The history is a ring buffer written in place: per step it costs one read of each of
its two ``(B, m, N)`` tensors and one column written into each (see :class:`Anderson`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..fields import FieldFn
from ..validate import integer, interval, positive
from .base import Solver, SolverState, batched_solve, bcast, sample_norm

__all__ = ["Anderson"]


def _flat(v: Tensor) -> Tensor:  # (B, ...) -> (B, N)
    return v.reshape(v.shape[0], -1)


def _dots(hist: Tensor, cols: Tensor) -> Tensor:
    """``<hist_i, cols_k> = Σ_n conj(hist_in) cols_kn``, ``(B, m, N), (B, k, N) -> (B, m, k)``.

    One pass over ``hist`` for all ``k`` columns; the conjugation falls on the small
    operand and the small result, never on the history (no conjugated copy of it).
    """
    return torch.bmm(cols.conj(), hist.transpose(1, 2)).conj().transpose(1, 2)


def _write(buf: Tensor, at: Tensor, col: Tensor, inplace: bool) -> Tensor:
    """``buf`` ``(B, m, N)`` with column ``at[b]`` of sample ``b`` set to ``col[b]`` ``(B, N)``.

    A per-sample ``scatter_`` (no host sync, so it records in a CUDA graph); out of
    place where autograd may need the old buffer (an unrolled, differentiated relaxation).
    """
    idx = at.reshape(-1, 1, 1).expand(-1, 1, buf.shape[2])  # (B, 1, N)
    src = col.unsqueeze(1).to(buf.dtype)  # (B, 1, N)
    return buf.scatter_(1, idx, src) if inplace else buf.scatter(1, idx, src)


def _valid(pos: Tensor, count: Tensor, m: int) -> Tensor:
    """Columns in the history, ``(B, m)``: age ``(pos - i) mod m`` below ``count``."""
    age = (pos[:, None] - torch.arange(m, device=pos.device)[None, :]) % m  # (B, m)
    return age < count[:, None]


@dataclass
class Anderson(Solver):
    """Anderson mixing (type II, Walker & Ni 2011) on the fixed-point map ``G(z) = z + εF(z)``.

    With the residual ``r_k = G(z_k) - z_k = εF(z_k)`` and the last ``m`` differences
    ``ΔR = [r_(i+1) - r_i]``, ``ΔZ = [z_(i+1) - z_i]`` (columns, per sample), solve the
    ridge least-squares problem ``min_γ ‖r_k - ΔR γ‖² + λ s ‖γ‖²`` and step

        z_(k+1) = z_k + β r_k - (ΔZ + β ΔR) γ

    (``β`` the mixing/damping, 1 is undamped). The ridge is scaled to the history:
    ``s = trace(ΔRᴴΔR)/k`` over the ``k ≤ m`` columns held, so λ is dimensionless and
    the solve stays well posed when the columns become nearly parallel. With an empty
    history this is the plain step ``z + βεF(z)`` (Euler with step βε).

    Safeguard: when ``‖F‖`` after the mixed step exceeds ``restart_growth`` times its
    value before, the step is rejected, the sample's history is forgotten (a restart,
    counted in ``aux["restarts"]``) and its next step is the plain one. Samples are
    independent: each has its own history length and its own restarts.

    Memory, per sample: ``dG = ΔZ + βΔR`` (the combination the step needs) and ``ΔR``
    as ring buffers ``(B, m, N)``, the newest column at ``aux["pos"]``, the valid ones
    those of age ``< aux["count"]`` (the least-squares problem does not depend on the
    order of the columns); the Gram matrix ``aux["G"] = ΔRᴴΔR`` ``(B, m, m)`` and
    ``aux["c"] = ΔRᴴ r_k`` ``(B, m)`` are carried along. After the step one pass over
    ``ΔR`` gives ``ΔRᴴ r_(k+1)`` (the next ``c``) and ``ΔRᴴ Δr`` (the new column's Gram
    row, computed directly: no cancellation), and the new column is written in place.
    So a step reads each buffer once and writes one column of each; the relaxation
    loop lets a solver mutate its history in place (see :class:`~.base.Solver`), and
    with autograd recording (an unrolled BPTT) the buffers are written out of place. A
    restart only sets ``count`` to 0 and writes a zero column (old columns stay finite,
    so their γ = 0 contributes exactly 0). The mixing and the history update run
    outside autocast, in the state's precision.

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
        B, N, m, dev = z0.shape[0], z0[0].numel(), self.m, z0.device
        hist = torch.zeros(B, m, N, dtype=z0.dtype, device=dev)
        aux = {
            "dG": hist,  # (B, m, N) ring buffer of ΔZ + βΔR (zeros: every column finite)
            "dR": hist.clone(),  # (B, m, N) ring buffer of ΔR
            "G": torch.zeros(B, m, m, dtype=z0.dtype, device=dev),  # ΔRᴴΔR
            "c": torch.zeros(B, m, dtype=z0.dtype, device=dev),  # ΔRᴴ r at the current z
            "pos": torch.full((B,), m - 1, dtype=torch.long, device=dev),  # newest column
            "count": torch.zeros(B, dtype=torch.long, device=dev),  # valid columns
            "restarts": torch.zeros(B, dtype=torch.long, device=dev),
        }
        eps = torch.full((B,), float(self.eps), dtype=z0.real.dtype, device=dev)
        return replace(state, eps=eps, aux=aux)

    def _gamma(self, G: Tensor, c: Tensor, valid: Tensor, count: Tensor) -> Tensor:
        """Mixing coefficients ``(B, m)`` of the ridge problem (0 on invalid columns).

        Runs in the state's precision (the caller disables autocast): a bf16 Gram matrix
        loses the differences it is made of, and LU has no bf16 kernel.
        """
        m = G.shape[1]
        pair = valid[:, :, None] & valid[:, None, :]  # (B, m, m)
        diag = torch.diagonal(G, dim1=1, dim2=2).real  # (B, m)
        scale = torch.where(valid, diag, 0.0).sum(1) / count.clamp_min(1)  # (B,)
        eye = torch.eye(m, dtype=G.dtype, device=G.device)
        ridge = (self.lam * scale).clamp_min(torch.finfo(scale.dtype).tiny)
        # invalid columns: identity rows so that their γ is exactly 0
        H = torch.where(pair, G, torch.zeros((), dtype=G.dtype, device=G.device))
        H = H + eye * torch.where(valid, ridge[:, None], 1.0).to(H.dtype)[:, None, :]
        rhs = torch.where(valid, c, torch.zeros((), dtype=c.dtype, device=c.device))  # (B, m)
        gamma = batched_solve(H, rhs.unsqueeze(-1)).squeeze(-1)  # (B, m), no sync
        return torch.nan_to_num(gamma) * valid

    def _push(self, aux: dict[str, Tensor], ok: Tensor, r: Tensor, r_new: Tensor, dz: Tensor,
              inplace: bool) -> dict[str, Tensor]:
        """The history after a step from residual ``r`` to ``r_new`` by ``dz`` (all ``(B, N)``);
        ``ok`` ``(B,)``: the step was kept (else the sample restarts)."""
        m = self.m
        dr = r_new - r  # (B, N) the new ΔR column
        cols = torch.stack([r_new, dr], 1)  # (B, 2, N)
        old = _dots(aux["dR"], cols)  # (B, m, 2) before the write: ΔRᴴ r_new, ΔRᴴ dr
        own = _dots(dr[:, None], cols)[:, 0]  # (B, 2): <dr, r_new>, ‖dr‖²
        pos = (aux["pos"] + 1) % m  # (B,) where the new column goes (the oldest one)
        at = torch.arange(m, device=pos.device)[None, :] == pos[:, None]  # (B, m)
        keep = ok[:, None]
        zero = torch.zeros((), dtype=dr.dtype, device=dr.device)
        # a restarted sample's column is zeroed: the buffers stay finite (γ = 0 gives 0)
        dR = _write(aux["dR"], pos, torch.where(keep, dr, zero), inplace)
        dG = _write(aux["dG"], pos, torch.where(keep, dz + self.beta * dr, zero), inplace)
        # row ``pos`` of the Gram matrix: <dr, ΔR_j> = conj(<ΔR_j, dr>), ‖dr‖² on the diagonal
        row = torch.where(at, own[:, 1:].real.to(dr.dtype), old[..., 1].conj())  # (B, m)
        G = torch.where(at[:, :, None], row[:, None, :], aux["G"])
        G = torch.where(at[:, None, :], row.conj()[:, :, None], G)  # hermitian
        count = aux["count"]
        return {
            "dG": dG, "dR": dR, "G": G,
            "c": torch.where(at, own[:, :1], old[..., 0]),  # ΔRᴴ r_new
            "pos": pos,
            "count": torch.where(ok, (count + 1).clamp_max(m), torch.zeros_like(count)),
            "restarts": aux["restarts"] + ~ok,
        }

    def step(self, F: FieldFn, state: SolverState) -> SolverState:
        z, f, aux = state.z, state.f, state.aux
        r = _flat(bcast(state.eps, z) * f)  # (B, N) residual of G
        count = aux["count"]
        with torch.autocast(r.device.type, enabled=False):
            gamma = self._gamma(aux["G"], aux["c"], _valid(aux["pos"], count, self.m), count)
            mixed = torch.bmm(gamma.unsqueeze(1).to(aux["dG"].dtype), aux["dG"]).squeeze(1)
            dz = self.beta * r - mixed  # (B, N)
        z_new = z + dz.reshape(z.shape)
        f_new = F(z_new)
        f0, f1 = sample_norm(f), sample_norm(f_new)
        # safeguard: reject a mixed step on which the residual grew; a plain step is never
        # rejected (it is the Euler step the user asked for)
        ok = (count == 0) | (torch.isfinite(f1) & (f1 <= self.restart_growth * f0))
        r_new = _flat(bcast(state.eps, z) * f_new)
        # in place unless autograd records this step (it would need the old buffers)
        inplace = not (torch.is_grad_enabled() and (z_new.requires_grad or f_new.requires_grad))
        with torch.autocast(r.device.type, enabled=False):
            new_aux = self._push(aux, ok, r, r_new, dz, inplace)
        k = bcast(ok, z)
        return SolverState(z=torch.where(k, z_new, z), f=torch.where(k, f_new, f),
                           nfe=self.charge(state, F), eps=state.eps, aux=new_aux)
