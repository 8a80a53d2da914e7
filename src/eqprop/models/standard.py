"""A standard feed-forward transformer with the same blocks: the backprop baseline.

``h_0 = x``, ``h_l = h_{l-1} + n_l(h_{l-1})`` (pre-norm parallel attention + MLP,
the very :class:`AsymBlock` of the equilibrium model), ``logits = W_out LN(h_L)``.
With the same :class:`ModelConfig` it has exactly the parameters of the asym
:class:`EquilibriumLM`, so the two can be compared step for step.
"""

from __future__ import annotations

import torch.nn.functional as Fn
from torch import Tensor

from .lm import EquilibriumLM

__all__ = ["StandardLM"]


class StandardLM(EquilibriumLM):
    """One forward pass through the stack instead of an equilibrium (block must be asym)."""

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens (B, T)`` -> logits ``(B, T, V)``."""
        h = self.embed(tokens)  # (B, T, D)
        for blk in self.blocks:
            h = h + blk(h)
        return self.logits(h.unsqueeze(1))

    def loss(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy."""
        logits = self(tokens)
        return Fn.cross_entropy(logits.flatten(0, 1), targets.flatten())
