"""Model settings (the one place where model defaults live)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

BLOCKS = ("asym", "energy", "standard")

__all__ = ["BLOCKS", "ModelConfig"]


@dataclass
class ModelConfig:
    """Shape and kind of an :class:`~eqprop.models.EquilibriumLM`.

    Args:
        vocab_size: number of tokens (set from the data's vocabulary when training).
        d_model: width D of each layer's state.
        n_heads: attention heads; must divide ``d_model``.
        d_ff: hidden width of the feed-forward part.
        n_layers: number of stacked equilibrium layers L (one field for the stack).
        seq_len: context length T.
        block: ``"asym"`` (independent weights, non-conservative) or ``"energy"``
            (force = -∇E, symmetric Jacobian, plain EP exact); ``"standard"`` is the
            feed-forward transformer of the same size, the backprop baseline
            (:class:`~eqprop.models.standard.StandardLM`).
        tied_readout: reuse the embedding matrix as the readout ``W_out``.
        init_scale: multiplies the initial weights of the non-conservative part n.
        fused_attention: use PyTorch's fused attention for plain forwards (the
            explicit masked softmax is always used for JVPs).
    """

    vocab_size: int = 65
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 128
    n_layers: int = 2
    seq_len: int = 64
    block: str = "asym"
    tied_readout: bool = False
    init_scale: float = 1.0
    fused_attention: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model.{name}={value!r}: must be a positive integer")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}: "
                f"choose n_heads among {[h for h in range(1, 17) if self.d_model % h == 0]}"
            )
        if self.block not in BLOCKS:
            raise ConfigError(f"model.block={self.block!r}: allowed values are {', '.join(BLOCKS)}")
        if not self.init_scale > 0:
            raise ConfigError(f"model.init_scale={self.init_scale!r}: must be > 0")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads
