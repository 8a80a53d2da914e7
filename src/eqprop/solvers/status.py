"""Per-sample failure classification from a residual trace (design §2)."""

from __future__ import annotations

from enum import IntEnum

import torch
from torch import Tensor

__all__ = ["FAILED", "Status", "classify"]


class Status(IntEnum):
    """Per-sample outcome of a relaxation."""

    CONVERGED = 0
    CONTRACTING = 1  #: not there yet, residual still falling
    CYCLING = 2  #: residual stalls without settling: a limit cycle of the simulation
    DIVERGED = 3  #: residual grows
    NONFINITE = 4  #: NaN or Inf met
    #: the residual test was met at a fixed point that is not continuous-stable (some
    #: Re μ ≥ 0: a source or saddle the hardware would leave); a failed relaxation
    UNSTABLE = 5

    @property
    def label(self) -> str:
        return self.name.lower()


#: the outcomes whose end point is no equilibrium to learn from (a merely slow or
#: cycling relaxation still ends near one)
FAILED = (Status.DIVERGED, Status.NONFINITE, Status.UNSTABLE)


#: fraction of the trace (its tail) that the verdict looks at
WINDOW_FRACTION = 0.25
#: a residual minimum must fall by this factor across the window to count as progress
PROGRESS = 0.95
#: the residual envelope must grow by this factor across the window to count as divergence
GROWTH = 1.02
#: residual this many times the start, or a state this large, is divergence outright
BLOWUP = 1e4


def classify(residuals: Tensor, converged: Tensor, finite: Tensor,
             norms: Tensor | None = None) -> Tensor:
    """Status code ``(B,)`` for each sample (values of :class:`Status`).

    The verdict for a sample that is neither converged nor non-finite comes from
    the tail of its trace, split in two halves: a falling minimum is "still
    contracting"; a growing envelope (or blow-up) is "diverged"; anything else —
    a residual that stalls, whether it oscillates or sits on a limit cycle of
    constant ‖F‖ — is "cycling".

    The relative residual ``g = ‖F‖/‖z‖`` of a linear instability saturates at
    about ``‖J‖`` once ``z`` is dominated by the growing mode, so from ``g`` alone a
    blow-up that started far from ``z*`` looks like a stall. Pass ``norms`` (the
    trace of the normaliser ``‖z‖``) and the growth tests run on ``‖F‖ = g·‖z‖``,
    and a state that grew to ``BLOWUP`` times ``‖z0‖ + ‖F(z0)‖`` is diverged.

    Args:
        residuals: ``(B, S)`` relative residuals, one column per step (S ≥ 1).
        converged: ``(B,)`` bool.
        finite: ``(B,)`` bool, False where NaN/Inf were met.
        norms: optional ``(B, S)`` normalisers of the residuals (``‖z‖`` per step).
    """
    B, S = residuals.shape
    runaway = torch.zeros(B, dtype=torch.bool, device=residuals.device)
    if norms is not None:
        residuals = residuals * norms
        # the state ran away from the problem's size (‖z0‖ + ‖F(z0)‖): on a field whose F
        # stays bounded (no leak) a run-away keeps ‖F‖ flat and would read as a stall
        n = torch.nan_to_num(norms, nan=float("inf"))
        runaway = n[:, -1] > BLOWUP * (n[:, 0] + torch.nan_to_num(residuals[:, 0]))
    r = torch.nan_to_num(residuals, nan=float("inf"))
    if S < 2:  # one residual (done or non-finite at the start): halves need two columns
        r = r.expand(B, 2)
    W = max(2, int(S * WINDOW_FRACTION))
    tail = r[:, -W:]
    first, second = tail[:, : W // 2], tail[:, W // 2 :]
    contracting = second.amin(1) < PROGRESS * first.amin(1)
    growing = (second.amax(1) > GROWTH * first.amax(1)) & (r[:, -1] > r[:, 0])
    blowup = (r[:, -1] > BLOWUP * r[:, 0]) | runaway
    def code(s: Status) -> Tensor:
        return torch.full((B,), int(s), dtype=torch.long, device=r.device)

    status = torch.where(contracting, code(Status.CONTRACTING), code(Status.CYCLING))
    status = torch.where(growing | blowup, code(Status.DIVERGED), status)
    if S < 4:  # too short to judge: call it contracting unless it blew up
        status = torch.where(blowup, status, code(Status.CONTRACTING))
    status = torch.where(converged, code(Status.CONVERGED), status)
    return torch.where(finite, status, code(Status.NONFINITE))
