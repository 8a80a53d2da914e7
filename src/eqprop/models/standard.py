"""A standard feed-forward transformer with the same blocks: the backprop baseline.

``h_0 = x``, ``h_l = h_{l-1} + n_l(h_{l-1})`` (pre-norm parallel attention + MLP,
the very :class:`AsymBlock` of the equilibrium model), ``logits = W_out LN(h_L)``.
With the same :class:`ModelConfig` it has exactly the parameters of the asym
:class:`EquilibriumLM`, so the two can be compared step for step. ``eqprop train
--model.block standard --estimator.name backprop`` trains it by plain backpropagation.
"""

from __future__ import annotations

from dataclasses import replace

import torch.nn.functional as Fn
from torch import Tensor

from .config import ModelConfig
from .lm import EquilibriumLM, LMField

__all__ = ["STANDARD", "StandardLM", "build_model"]

#: the ``model.block`` of the feed-forward baseline
STANDARD = "standard"


class StandardLM(EquilibriumLM):
    """One forward pass through the stack instead of an equilibrium.

    Args:
        cfg: its shape; ``block`` is ``"standard"`` or ``"asym"`` (the blocks are asym
            blocks either way).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(replace(cfg, block="asym"))
        self.cfg = cfg

    def field(self, tokens: Tensor, targets: Tensor | None = None) -> LMField:
        """Not defined: a feed-forward model has no equilibrium to relax to."""
        raise TypeError("StandardLM is a feed-forward transformer: it has no field to relax; "
                        "call it on tokens (model(tokens) -> logits)")

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


def build_model(cfg: ModelConfig) -> EquilibriumLM:
    """The model a config names: :class:`StandardLM` for ``block="standard"``, else an
    :class:`EquilibriumLM`."""
    return StandardLM(cfg) if cfg.block == STANDARD else EquilibriumLM(cfg)
