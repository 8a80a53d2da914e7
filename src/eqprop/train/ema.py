"""An exponential moving average of the parameters, for validation and sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """``θ̄ ← θ̄ + (1 - decay)(θ - θ̄)`` after every applied update.

    :meth:`swapped` puts θ̄ into the model in place (so CUDA graphs that read the
    parameters see it) and restores θ afterwards.

    Args:
        model: the model whose parameters are averaged.
        decay: in (0, 1); the average spans about ``1 / (1 - decay)`` updates.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA(decay={decay!r}): must lie in (0, 1)")
        self.decay = decay
        self.params = [p for p in model.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current parameters (one fused kernel per dtype)."""
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - self.decay)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the model holds the averaged parameters."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.data for p in self.params], self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], saved)

    def state_dict(self) -> dict[str, list[Tensor]]:
        return {"shadow": [t.detach().cpu() for t in self.shadow]}

    def load_state_dict(self, state: dict[str, list[Tensor]]) -> None:
        shadow = state["shadow"]
        if len(shadow) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(shadow)} tensors, the model "
                             f"{len(self.shadow)}")
        with torch.no_grad():
            for dst, src in zip(self.shadow, shadow, strict=True):
                dst.copy_(src)

    def finite(self) -> bool:
        """Every averaged value is finite (a checkpoint must not hold NaN)."""
        return all(bool(torch.isfinite(t).all()) for t in self.shadow)
