"""An exponential moving average of the parameters, for validation and sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """``θ̄ ← θ̄ + (1 - d_n)(θ - θ̄)`` after the n-th applied update, with the warmed-up
    decay ``d_n = min(decay, (1 + n) / (10 + n))``.

    Without the warm-up the average starts at the initial parameters and lags them by
    about ``1 / (1 - decay)`` updates (1000 at 0.999, most of a short run); with it the
    early updates weigh more, so the average follows training from the start and
    reaches the full ``decay`` after ``(10 decay - 1) / (1 - decay)`` updates.

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
        self.updates = 0
        self.params = [p for p in model.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    def current_decay(self) -> float:
        """``d_n`` of the next update."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current parameters (one fused kernel per dtype)."""
        weight = 1 - self.current_decay()
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], weight)
        self.updates += 1

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the model holds the averaged parameters."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
        self.apply()
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], saved)

    @torch.no_grad()
    def apply(self) -> None:
        """Put the averaged parameters into the model, in place, for good."""
        torch._foreach_copy_([p.data for p in self.params], self.shadow)

    def state_dict(self) -> dict[str, list[Tensor] | int]:
        return {"shadow": [t.detach().cpu() for t in self.shadow], "updates": self.updates}

    def load_state_dict(self, state: dict[str, list[Tensor] | int]) -> None:
        # a checkpoint written before the warm-up holds no count: its average runs at the
        # full decay, as it did
        self.updates = int(state.get("updates", 10**9))
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
