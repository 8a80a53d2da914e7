"""Validation: CE at the training solver's equilibrium and after a tight reference solve."""

from __future__ import annotations

from typing import Any

import torch

from ..data import Corpus
from ..models import EquilibriumLM
from ..solvers.registry import SolverConfig, build_relaxation
from .config import EvalConfig
from .metrics import status_counts

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: EquilibriumLM, corpus: Corpus, solver: SolverConfig, cfg: EvalConfig, *,
             seed: int = 0, split: str = "val", device: str | torch.device = "cpu",
             prefix: str = "val") -> dict[str, Any]:
    """Cross-entropy and relaxation statistics on fixed batches of a split.

    Each batch is relaxed from the input drive with ``solver`` (as in training),
    then refined from there by ``cfg.reference`` (small ε, tight tolerance): the
    CE at both points, and their gap, say whether the training solver's z* is
    the model's true fixed point.

    Args:
        model: the model (not modified).
        corpus: the data.
        solver: the training (free-phase) solver.
        cfg: number and size of batches, and the reference solver.
        seed: picks the batches; the same seed gives the same batches every time.
        split: ``"val"`` or ``"train"``.
        device: where the model lives.
        prefix: key prefix of the CE and relaxation statistics (``val``).

    Returns:
        ``{prefix}_ce``, ``{prefix}_ce_ref``, ``{prefix}_ce_gap`` (mean |ΔCE| per
        sample), ``{prefix}_res_max``/``_res_mean``, ``{prefix}_nfe``,
        ``{prefix}_status``, ``{prefix}_stable_frac`` (samples whose z* is estimated
        continuous-stable), ``{prefix}_max_re`` (largest estimated leading Re μ);
        ``ref_res_max``, ``ref_nfe``, ``ref_status``.
    """
    T = model.cfg.seq_len
    gen = torch.Generator().manual_seed(seed)
    # every sample's stability measured, whatever the solver (solvers/stability.py)
    free, ref = build_relaxation(solver, stability="always"), build_relaxation(cfg.reference)
    ce, ce_ref, res, res_ref, nfe, nfe_ref, sols, ref_sols = [], [], [], [], [], [], [], []
    for _ in range(cfg.batches):
        tokens, targets = corpus.get_batch(split, cfg.batch_size, T, gen)
        field = model.field(tokens.to(device), targets.to(device))
        sol = free.run(field, field.initial_state())
        # warm start: the reference only has to finish the job (or undo a cycle)
        sol_ref = ref.run(field, sol.z)
        ce.append(field.loss(sol.z))  # (B,)
        ce_ref.append(field.loss(sol_ref.z))
        res.append(sol.rel_residual)
        res_ref.append(sol_ref.rel_residual)
        nfe.append(sol.nfe.float())
        nfe_ref.append(sol_ref.nfe.float())
        sols.append(sol)
        ref_sols.append(sol_ref)
    ce_t, ce_ref_t = torch.cat(ce), torch.cat(ce_ref)
    stable = torch.cat([s.stable for s in sols]).float()
    max_re = torch.cat([s.max_real for s in sols])
    res_t, res_ref_t = torch.cat(res), torch.cat(res_ref)
    return {
        f"{prefix}_ce": float(ce_t.mean()),
        f"{prefix}_ce_ref": float(ce_ref_t.mean()),
        f"{prefix}_ce_gap": float((ce_t - ce_ref_t).abs().mean()),
        f"{prefix}_res_max": float(res_t.max()),
        f"{prefix}_res_mean": float(res_t.mean()),
        f"{prefix}_nfe": float(torch.cat(nfe).mean()),
        f"{prefix}_status": status_counts(sols),
        f"{prefix}_stable_frac": float(stable.mean()),
        f"{prefix}_max_re": float(torch.nan_to_num(max_re, nan=-float("inf")).max()),
        "ref_res_max": float(res_ref_t.max()),
        "ref_nfe": float(torch.cat(nfe_ref).mean()),
        "ref_status": status_counts(ref_sols),
    }
