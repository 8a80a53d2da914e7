"""Causal attention and layer norm written for matrix-free Jacobian products.

PyTorch's fused attention kernels have no forward-mode AD on CPU (DESIGN.md §1),
so JVPs go through :func:`causal_attention` with ``explicit=True``: an explicit
masked softmax, tested to agree with the fused path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import Tensor

__all__ = ["causal_attention", "causal_mask", "layer_norm"]


def causal_mask(T: int, device: torch.device) -> Tensor:
    """Boolean ``(T, T)`` mask, True where position i may attend to j (j ≤ i)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def causal_attention(q: Tensor, k: Tensor, v: Tensor, explicit: bool) -> Tensor:
    """Causal softmax attention. ``q, k, v``: ``(B, H, T, d_h)`` -> ``(B, H, T, d_h)``."""
    if not explicit:
        return Fn.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    scores = scores.masked_fill(~causal_mask(T, q.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def layer_norm(z: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Layer norm over the last dim from elementary ops (forward- and reverse-mode safe)."""
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    var = (zc * zc).mean(-1, keepdim=True)
    return zc * torch.rsqrt(var + eps) * weight + bias
