"""The backprop baseline: a same-size feed-forward transformer trained by plain backprop.

``eqprop train --model.block standard --estimator.name backprop`` trains a
:class:`~eqprop.models.StandardLM` with the same data, schedule, AdamW, metrics,
plots and checkpoints as the equilibrium models. There is no relaxation: a step is
forward, backward, clip, AdamW; validation measures the CE of one forward pass on
the same fixed batches as :func:`~eqprop.train.evaluation.evaluate` (relaxation
statistics are absent from its records).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..data import Corpus
from ..models import StandardLM
from .config import EvalConfig
from .schedule import lr_at

if TYPE_CHECKING:  # the trainer imports this module
    from .trainer import Trainer

__all__ = ["backprop_step", "evaluate_forward"]


def backprop_step(trainer: Trainer, tokens: Tensor, targets: Tensor) -> dict[str, Any]:
    """One backprop update of the trainer's :class:`StandardLM` on ``tokens, targets (B, T)``.

    A non-finite loss or gradient skips the update, as in the equilibrium step.

    Args:
        trainer: the trainer (its model, optimizer, config and step counter).
        tokens: input ids ``(B, T)``.
        targets: next-token ids ``(B, T)``.

    Returns:
        The step's metrics record (``train_ce``, ``lr``, ``grad_norm``, ``step_time``;
        ``skipped`` when skipped).
    """
    t0 = time.perf_counter()
    model, opt = trainer.model, trainer.optimizer
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = model.loss(tokens, targets)
    loss.backward()
    trainer.dist.average_gradients(model.parameters())  # torchrun: mean over ranks
    clip = trainer.cfg.optim.grad_clip or float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    ce = float(loss.detach())
    lr = lr_at(trainer.step, trainer.cfg.optim, trainer.cfg.schedule)
    finite = trainer.dist.all_true(math.isfinite(ce) and math.isfinite(grad_norm))
    if finite:
        trainer.optimizer_step(lr)  # and the moving average's, as in the equilibrium step
    else:
        trainer.skipped += 1
    opt.zero_grad(set_to_none=True)
    trainer.step += 1
    record: dict[str, Any] = {"step": trainer.step, "train_ce": ce, "lr": lr,
                              "grad_norm": grad_norm}
    record = trainer.dist.reduce_record(record)
    if not finite:
        record.update(skipped=True, skip_reason="nonfinite")
    record["step_time"] = time.perf_counter() - t0
    return record


@torch.no_grad()
def evaluate_forward(model: StandardLM, corpus: Corpus, cfg: EvalConfig, *, seed: int = 0,
                     split: str = "val", device: str | torch.device = "cpu",
                     prefix: str = "val") -> dict[str, Any]:
    """Cross-entropy of the feed-forward baseline on fixed batches of a split.

    The batches are drawn exactly as by :func:`~eqprop.train.evaluation.evaluate`, so the
    numbers compare with an equilibrium model's on the same data.

    Args:
        model: the baseline (not modified).
        corpus: the data.
        cfg: number and size of the batches.
        seed: picks the batches.
        split: ``"val"`` or ``"train"``.
        device: where the model lives.
        prefix: key prefix (``val``).

    Returns:
        ``{prefix}_ce``: the mean CE over the batches' sequences.
    """
    gen = torch.Generator().manual_seed(seed)
    ces = []
    for _ in range(cfg.batches):
        tokens, targets = corpus.get_batch(split, cfg.batch_size, model.cfg.seq_len, gen)
        logits = model(tokens.to(device))  # (B, T, V)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(),
                                               reduction="none")
        ces.append(ce.view(targets.shape).mean(-1))  # (B,)
    return {f"{prefix}_ce": float(torch.cat(ces).mean())}
