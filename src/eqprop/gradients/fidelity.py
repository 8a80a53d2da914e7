"""Gradient fidelity: cosine between an estimate and a reference (design §3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..fields import Field
from .base import Estimator, EstimatorResult

__all__ = ["estimate_grads", "gradient_cosine", "grads_of"]


def grads_of(model: nn.Module) -> dict[str, Tensor]:
    """Copy of every parameter's ``.grad`` (zeros where None), by name."""
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def estimate_grads(model: nn.Module, field: Field, z_star: Tensor,
                   estimator: Estimator) -> tuple[dict[str, Tensor], EstimatorResult]:
    """Zero the grads, run ``estimator`` at ``z_star``, backward, return the grads."""
    model.zero_grad(set_to_none=True)
    result = estimator.estimate(field, z_star)
    result.surrogate.backward()
    grads = grads_of(model)
    model.zero_grad(set_to_none=True)
    return grads, result


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = a.norm(), b.norm()
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float((a * b).sum() / (na * nb))


def gradient_cosine(estimate: dict[str, Tensor],
                    reference: dict[str, Tensor]) -> tuple[float, dict[str, float]]:
    """Cosine similarity, global (all parameters as one vector) and per parameter."""
    if estimate.keys() != reference.keys():
        raise ValueError(f"parameter names differ: {sorted(estimate.keys() ^ reference.keys())}")
    names = sorted(reference)
    flat_e = torch.cat([estimate[n].flatten().double() for n in names])
    flat_r = torch.cat([reference[n].flatten().double() for n in names])
    per = {n: _cos(estimate[n].double(), reference[n].double()) for n in names}
    return _cos(flat_e, flat_r), per
