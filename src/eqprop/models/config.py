"""Model settings (the one place where model defaults live)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..validate import boolean, choice, integer, interval, positive

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
        damping: γ ≥ 0, the leak of the conservative part: ``c(z) = -(1 + γ) z + drive``
            (a physical circuit's leak to ground). It shifts every eigenvalue of J left
            by γ (J → J - γI): a symmetric change, so AsymEP stays exact and holomorphic
            EP works unchanged. It moves the Hopf point; it raises Euler's ε_crit
            ``-2a/(a²+b²)`` little when |b| is large.
        qk_norm: normalised queries and keys: the attention logit is ``qk_scale ·
            cos(q, k)``, bounded by ``qk_scale``, which bounds the attention part of
            ``J_n`` (the softmax's derivative is bounded by its logits' spread).
        qk_scale: the logit bound of ``qk_norm`` (None: ``√d_head``, the spread of
            unnormalised logits at initialisation).
        norm_eps: the ε of the layer norm inside the block, ``(z - μ)/√(var + ε)``. Its
            derivative is bounded by ``1/√ε``: the default 1e-5 makes ``n`` blind to the
            scale of ``z`` (then the damping only rescales time); ε ~ 1 bounds the
            norm's gain by 1 where ``var(z) ≲ 1``, so that ``n`` is Lipschitz in ``z`` and the
            leak's shift acts.
    """

    # small enough that the default run (eqprop train) finishes in minutes on a 2-core CPU
    vocab_size: int = 65
    d_model: int = 32
    n_heads: int = 4
    d_ff: int = 64
    n_layers: int = 1
    seq_len: int = 32
    block: str = "asym"
    tied_readout: bool = False
    init_scale: float = 1.0
    fused_attention: bool = True
    damping: float = 0.0
    qk_norm: bool = False
    qk_scale: float | None = None
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "seq_len"):
            integer("model", name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}: "
                f"choose n_heads among {[h for h in range(1, 17) if self.d_model % h == 0]}"
            )
        choice("model", "block", self.block, BLOCKS)
        positive("model", "init_scale", self.init_scale)
        interval("model", "damping", self.damping, 0.0, math.inf, hi_open=True)
        positive("model", "norm_eps", self.norm_eps)
        for name in ("tied_readout", "fused_attention", "qk_norm"):
            boolean("model", name, getattr(self, name))
        s = self.qk_scale
        if s is not None:
            positive("model", "qk_scale", s)  # (None: √d_head)
        if s is not None and not self.qk_norm:
            raise ConfigError(f"model.qk_scale={s!r} is set but model.qk_norm is off: "
                              "turn qk_norm on or leave qk_scale unset")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def logit_scale(self) -> float:
        """The bound on attention logits under ``qk_norm``."""
        return float(self.qk_scale) if self.qk_scale is not None else self.d_head ** 0.5
