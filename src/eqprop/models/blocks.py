"""One equilibrium layer: the non-conservative (asym) block and the energy block.

Each block acts on one layer's state ``z_l`` of shape ``(B, T, D)``, real or complex:
every op is holomorphic-safe (see :mod:`eqprop.models.attention`), so holomorphic EP
can evaluate the field at complex states; the real path is unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from .attention import (
    causal_attention,
    causal_mask,
    gelu_tanh,
    layer_norm,
    linear,
    masked_logsumexp,
    softplus,
    unit,
)
from .config import ModelConfig

__all__ = ["AsymBlock", "EnergyBlock"]

#: initial weight scale of the energy block relative to the asym block
ENERGY_INIT = 0.5


def _linear(d_in: int, d_out: int, scale: float, bias: bool = False) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(scale)
    return layer


class _Norm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, z: Tensor) -> Tensor:
        return layer_norm(z, self.weight, self.bias, self.eps)


class AsymBlock(nn.Module):
    """``n(z) = Attn(LN(z)) + FFN(LN(z))`` with independent W_Q, W_K, W_V, W_O, W_1, W_2.

    Causal at every instant: position i of ``n(z)`` reads positions ≤ i only.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, s = cfg.d_model, cfg.init_scale
        self.n_heads = cfg.n_heads
        self.qk_norm, self.logit_scale = cfg.qk_norm, cfg.logit_scale
        self.norm = _Norm(D, cfg.norm_eps)
        self.W_q, self.W_k = _linear(D, D, s), _linear(D, D, s)
        self.W_v, self.W_o = _linear(D, D, s), _linear(D, D, s)
        self.W_1 = _linear(D, cfg.d_ff, s, bias=True)
        self.W_2 = _linear(cfg.d_ff, D, s, bias=True)

    def _heads(self, h: Tensor) -> Tensor:  # (B, T, D) -> (B, H, T, d_h)
        B, T, D = h.shape
        return h.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)

    def forward(self, z: Tensor, explicit: bool = False) -> Tensor:
        """``z``: ``(B, T, D)`` -> ``n(z)``: ``(B, T, D)`` (complex z: holomorphic extension)."""
        B, T, D = z.shape
        h = self.norm(z)  # (B, T, D)
        q, k, v = (self._heads(linear(W, h)) for W in (self.W_q, self.W_k, self.W_v))
        scale = None
        if self.qk_norm:  # logits logit_scale · cos(q, k): bounded
            q, k, scale = unit(q), unit(k), self.logit_scale
        a = causal_attention(q, k, v, explicit, scale).transpose(1, 2).reshape(B, T, D)
        return linear(self.W_o, a) + linear(self.W_2, gelu_tanh(linear(self.W_1, h)))


class EnergyBlock(nn.Module):
    """Scalar energy of one layer: causal Hopfield attention plus a Hopfield memory.

    ``E(z) = -1/γ Σ_h Σ_i logsumexp_{j≤i}(γ q_i·k_j) - Σ_i Σ_μ softplus(ξ_μ·g_i + b_μ)``
    with ``g = tanh(z)``, ``q = W_Q g``, ``k = W_K g``, ``γ = 1/√d_h`` (the energy
    attention of Hoover et al. 2023, made causal). The activation is a bounded
    elementwise tanh rather than a layer norm: a layer norm's 1/σ makes the
    energy's curvature blow up wherever a position's state has small spread.
    Its force ``-∇E`` has a symmetric Jacobian by construction. Because keys are shared by later
    queries, this block is not causal in ``z`` (only the asym block is).
    Its weights start at ``ENERGY_INIT × init_scale``: the energy's curvature grows
    with the weights squared, and at the asym block's scale it starts non-convex.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, s = cfg.d_model, cfg.init_scale * ENERGY_INIT
        self.n_heads = cfg.n_heads
        self.qk_norm, self.logit_scale = cfg.qk_norm, cfg.logit_scale
        self.W_q, self.W_k = _linear(D, D, s), _linear(D, D, s)
        self.xi = _linear(D, cfg.d_ff, s, bias=True)

    def energy(self, z: Tensor) -> Tensor:
        """``z``: ``(B, T, D)`` -> per-sample energy ``(B,)`` (complex z: holomorphic extension)."""
        B, T, D = z.shape
        H, dh = self.n_heads, D // self.n_heads
        g = torch.tanh(z)  # bounded, holomorphic; see the class docstring
        q = linear(self.W_q, g).view(B, T, H, dh).transpose(1, 2)  # (B, H, T, d_h)
        k = linear(self.W_k, g).view(B, T, H, dh).transpose(1, 2)
        gamma = 1.0 / math.sqrt(dh)
        if self.qk_norm:  # bounded logits: the energy stays a scalar function of g
            q, k, gamma = unit(q), unit(k), self.logit_scale
        scores = gamma * (q @ k.transpose(-1, -2))  # (B, H, T, T)
        e_att = -masked_logsumexp(scores, causal_mask(T, z.device)).sum(dim=(1, 2)) / gamma
        e_hop = -softplus(linear(self.xi, g)).sum(dim=(1, 2))
        return e_att + e_hop
