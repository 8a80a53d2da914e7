"""The causal equilibrium transformer language model (design §1).

State ``z`` of shape ``(B, L, T, D)``: one ``(T, D)`` state per layer and sample.
The model only *defines* the field ``F(z; x, θ) = c(z; x) + n(z; θ)``; solvers
find its equilibrium and estimators turn that into a gradient.

On a complex state ``z`` (holomorphic EP) the field, the logits and the loss are the
holomorphic extensions of the real ones; the real path is unchanged.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as Fn
from torch import Tensor
from torch.func import grad as func_grad
from torch.func import vjp as func_vjp

from ..split import SplitField
from .attention import masked_logsumexp
from .blocks import AsymBlock, EnergyBlock, _Norm
from .config import ModelConfig

__all__ = ["EquilibriumLM", "LMField"]

#: inter-layer coupling of the energy block; ≤ 0.5 keeps Σ ½‖z_l‖² - α<z_{l-1}, z_l> convex
ENERGY_COUPLING = 0.5


class EquilibriumLM(nn.Module):
    """Causal equilibrium transformer LM built from a :class:`ModelConfig`.

    ``x = Emb(tokens) + Pos``; layer 1 is driven by ``x``, layer l by ``z_{l-1}``;
    ``logits = W_out LN(z_L)``; loss = next-token cross-entropy averaged over positions.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.emb = nn.Embedding(cfg.vocab_size, D)
        self.pos = nn.Parameter(0.1 * torch.randn(cfg.seq_len, D))
        block = AsymBlock if cfg.block == "asym" else EnergyBlock
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_layers))
        self.norm_f = _Norm(D)
        self.W_out = None if cfg.tied_readout else nn.Linear(D, cfg.vocab_size, bias=False)

    # -- input and readout -------------------------------------------------
    def embed(self, tokens: Tensor) -> Tensor:
        """``tokens (B, T)`` -> input drive ``x (B, T, D)``."""
        T = tokens.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence length {T} exceeds model.seq_len={self.cfg.seq_len}")
        return self.emb(tokens) + self.pos[:T]

    def logits(self, z: Tensor) -> Tensor:
        """``z (B, L, T, D)`` -> ``(B, T, V)`` from the top layer."""
        h = self.norm_f(z[:, -1])
        W = self.emb.weight if self.W_out is None else self.W_out.weight
        return h @ (W.t().to(h.dtype) if h.is_complex() else W.t())

    # -- the field ---------------------------------------------------------
    def conservative(self, z: Tensor, x: Tensor) -> Tensor:
        """``c(z; x) = -(1 + γ) z + drive``; drive is x for layer 1 and z_{l-1} above it."""
        leak = 1.0 + self.cfg.damping  # 1 + γ
        if self.cfg.block == "asym":
            drive = torch.cat([x.unsqueeze(1), z[:, :-1]], dim=1)  # (B, L, T, D)
            return -leak * z + drive
        # energy: -∇ of Σ_l ½(1+γ)‖z_l‖² - <x, z_1> - α Σ_l <z_{l-1}, z_l> (symmetric coupling)
        a = ENERGY_COUPLING
        zeros = torch.zeros_like(z[:, :1])
        below = torch.cat([zeros, z[:, :-1]], dim=1)
        above = torch.cat([z[:, 1:], zeros], dim=1)
        c = -leak * z + a * (below + above)
        return torch.cat([c[:, :1] + x.unsqueeze(1), c[:, 1:]], dim=1)

    def nonconservative(self, z: Tensor, explicit: bool = False) -> Tensor:
        """``n(z; θ)``: attention + feed-forward per layer, ``(B, L, T, D)``."""
        if self.cfg.block == "asym":
            return torch.stack([blk(z[:, l], explicit) for l, blk in enumerate(self.blocks)], 1)
        if z.is_complex():
            # autograd returns conj(E'(z)) for a holomorphic E (conjugate Wirtinger
            # convention), so conj it back: n = -E'(z), the holomorphic extension of -∇E
            _, pullback = func_vjp(self._block_energy, z)
            return -pullback(torch.ones((), dtype=z.dtype, device=z.device))[0].conj()
        return -func_grad(self._block_energy)(z)

    def _block_energy(self, z: Tensor) -> Tensor:
        return sum(blk.energy(z[:, l]).sum() for l, blk in enumerate(self.blocks))

    def force(self, z: Tensor, x: Tensor, explicit: bool = False) -> Tensor:
        """``F(z; x, θ) = c(z; x) + n(z; θ)``, shape ``(B, L, T, D)``."""
        return self.conservative(z, x) + self.nonconservative(z, explicit)

    def forward(self, tokens: Tensor) -> Tensor:
        """An equilibrium model has no single forward pass: its output is read at the
        fixed point of its field. Raises a TypeError that says what to call instead."""
        raise TypeError("EquilibriumLM has no forward pass: relax its field "
                        "(model.field(tokens), eqprop.solvers.relax) and read model.logits(z), "
                        "or use eqprop.train.load_run(RUN).logits(text)")

    def field(self, tokens: Tensor, targets: Tensor | None = None) -> LMField:
        """The field bound to an input batch (and its next-token targets)."""
        return LMField(self, tokens, targets)

    def initial_state(self, x: Tensor) -> Tensor:
        """Start of relaxation: every layer at the input drive, ``(B, L, T, D)``."""
        B, T, D = x.shape
        return x.detach().unsqueeze(1).expand(B, self.cfg.n_layers, T, D).clone()


class LMField(SplitField):
    """``F(z)`` of an :class:`EquilibriumLM` bound to tokens ``(B, T)`` and targets ``(B, T)``."""

    def __init__(self, model: EquilibriumLM, tokens: Tensor, targets: Tensor | None = None):
        self.model = model
        self.tokens = tokens
        self.targets = targets
        with torch.no_grad():
            self._x = model.embed(tokens)  # (B, T, D), for relaxation (no graph)
        self._explicit = not model.cfg.fused_attention

    @property
    def x(self) -> Tensor:
        """Input drive ``(B, T, D)``; recomputed with autograd on, so gradients reach Emb, Pos."""
        return self.model.embed(self.tokens) if torch.is_grad_enabled() else self._x

    def __call__(self, z: Tensor) -> Tensor:
        return self.model.force(z, self.x, explicit=self._explicit)

    def forward_for_jvp(self, z: Tensor) -> Tensor:
        return self.model.force(z, self.x, explicit=True)

    def static_inputs(self) -> list[Tensor]:
        # tokens: the drive is recomputed from them wherever autograd records F (Linearization)
        return [self.tokens, self._x] + ([] if self.targets is None else [self.targets])

    def static_key(self) -> tuple:
        return (id(self.model), self._explicit, self.targets is None)

    def static_copy(self) -> LMField:
        new = copy.copy(self)
        new.tokens, new._x = self.tokens.clone(), self._x.clone()
        new.targets = None if self.targets is None else self.targets.clone()
        return new

    def head(self, n: int) -> LMField:
        targets = None if self.targets is None else self.targets[:n]
        return LMField(self.model, self.tokens[:n], targets)

    def sample(self, b: int) -> LMField:
        targets = None if self.targets is None else self.targets[b : b + 1]
        return LMField(self.model, self.tokens[b : b + 1], targets)

    def repeated(self, n: int) -> LMField:
        targets = None if self.targets is None else self.targets.repeat(n, 1)
        return LMField(self.model, self.tokens.repeat(n, 1), targets)

    def conservative(self, z: Tensor) -> Tensor:
        """Conservative part ``-z + drive``."""
        return self.model.conservative(z, self.x)

    def nonconservative(self, z: Tensor) -> Tensor:
        """Non-conservative part (attention + feed-forward), JVP-safe."""
        return self.model.nonconservative(z, explicit=True)

    def initial_state(self) -> Tensor:
        return self.model.initial_state(self.x)

    def logits(self, z: Tensor) -> Tensor:
        return self.model.logits(z)

    def loss(self, z: Tensor) -> Tensor:
        """Per-sample next-token cross-entropy averaged over positions, ``(B,)``."""
        if self.targets is None:
            raise ValueError("this field was built without targets: model.field(tokens, targets)")
        logits = self.logits(z)  # (B, T, V)
        if logits.is_complex():  # holomorphic extension: logsumexp(logits) - logits[target]
            every = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
            picked = logits.gather(-1, self.targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
            return (masked_logsumexp(logits, every) - picked).mean(-1)
        ce = Fn.cross_entropy(logits.flatten(0, 1), self.targets.flatten(), reduction="none")
        return ce.view(self.targets.shape).mean(-1)
