"""Causal attention, layer norm and activations written for matrix-free Jacobian
products and for complex states.

PyTorch's fused attention kernels have no forward-mode AD on CPU (design §1),
so JVPs go through :func:`causal_attention` with ``explicit=True``: an explicit
masked softmax, tested to agree with the fused path.

Holomorphic EP (Laborieux & Zenke 2022; design §3) evaluates the field at
complex states, so every op here also has a *holomorphic* complex path: no
``conj`` or ``abs``, softmax / logsumexp shifted by the max of the real part only,
a finite large negative real as the causal mask. On real inputs the complex path
computes the same numbers; the real path keeps PyTorch's fused kernels and is
chosen by ``z.is_complex()`` so that it costs nothing extra.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from torch import Tensor

__all__ = ["causal_attention", "causal_mask", "gelu_tanh", "layer_norm", "linear",
           "masked_logsumexp", "masked_softmax", "softplus", "unit"]

#: the causal mask on complex scores: exp(MASK_NEG - max) is exactly 0, and unlike -inf it
#: never meets inf·0 = NaN in complex products or in the backward pass
MASK_NEG = -1e30


def causal_mask(T: int, device: torch.device) -> Tensor:
    """Boolean ``(T, T)`` mask, True where position i may attend to j (j ≤ i)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def _shifted(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Masked complex scores minus the row max of their real part (a real shift keeps
    the function holomorphic: it cancels in softmax and adds back exactly in logsumexp)."""
    s = scores.masked_fill(~mask, MASK_NEG)  # (..., T, T)
    m = s.real.amax(-1, keepdim=True).detach()  # (..., T, 1) real
    return s - m, m


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim where ``mask`` is True; holomorphic on complex scores."""
    if not scores.is_complex():
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    e = torch.exp(_shifted(scores, mask)[0])
    return e / e.sum(-1, keepdim=True)


def masked_logsumexp(scores: Tensor, mask: Tensor) -> Tensor:
    """``log Σ_j exp(s_j)`` over the last dim where ``mask`` is True; holomorphic on complex
    scores (principal log: the sum stays near the positive real axis for small imaginary parts)."""
    if not scores.is_complex():
        return torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=-1)
    s, m = _shifted(scores, mask)
    return torch.log(torch.exp(s).sum(-1)) + m.squeeze(-1)


def unit(q: Tensor, eps: float = 1e-6) -> Tensor:
    """``q / ‖q‖`` over the last dim, with ``‖q‖² = Σ q·q`` (no conjugate: holomorphic)."""
    return q * torch.rsqrt((q * q).sum(-1, keepdim=True) + eps)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, explicit: bool,
                     scale: float | None = None) -> Tensor:
    """Causal softmax attention. ``q, k, v``: ``(B, H, T, d_h)`` -> ``(B, H, T, d_h)``.

    Logits are ``scale · q·k`` (default ``1/√d_h``). Complex inputs always take the
    explicit path (the fused kernels are real-only).
    """
    if not explicit and not q.is_complex():
        return Fn.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    T = q.shape[-2]
    qk = q @ k.transpose(-1, -2)  # (B, H, T, T)
    scores = qk / math.sqrt(q.shape[-1]) if scale is None else scale * qk
    return masked_softmax(scores, causal_mask(T, q.device)) @ v


def layer_norm(z: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Layer norm over the last dim from elementary ops (forward- and reverse-mode safe).

    The variance is ``mean(zc·zc)``, not ``mean(|zc|²)``, so it is holomorphic on complex z.
    """
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    var = (zc * zc).mean(-1, keepdim=True)
    return zc * torch.rsqrt(var + eps) * weight + bias


def linear(layer: torch.nn.Linear, h: Tensor) -> Tensor:
    """``layer(h)``; on complex ``h`` the real weights are promoted (autograd keeps them real)."""
    if not h.is_complex():
        return layer(h)
    bias = None if layer.bias is None else layer.bias.to(h.dtype)
    return Fn.linear(h, layer.weight.to(h.dtype), bias)


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: Tensor) -> Tensor:
    """Tanh-approximate GELU ``½x(1 + tanh(√(2/π)(x + 0.044715x³)))``: holomorphic
    (entire away from the poles of tanh); PyTorch's kernel is used on real ``x``."""
    if not x.is_complex():
        return Fn.gelu(x, approximate="tanh")
    return 0.5 * x * (1.0 + torch.tanh(_GELU_C * (x + 0.044715 * x * x * x)))


def softplus(x: Tensor) -> Tensor:
    """``log(1 + eˣ)``; on complex x written as ``m + log(e^{-m} + e^{x-m})``, m = max(Re x, 0)."""
    if not x.is_complex():
        return Fn.softplus(x)
    m = x.real.clamp_min(0).detach()
    return m + torch.log(torch.exp(-m) + torch.exp(x - m))
