"""The trainer: free relaxation, gradient estimator, AdamW update (design §2, §3).

One step (:meth:`Trainer.train_step`): relax the free dynamics from the input drive to
z* with the free-phase solver; let the estimator (asymep, ep, ift, bptt) turn z* into
a surrogate scalar; add the hooks' penalties (:mod:`eqprop.train.hooks`); its
``backward()`` fills ``.grad``; clip; decide whether the update is sound and apply
AdamW (a step whose relaxation, free or nudged, loss, penalty or gradient is NaN/Inf
is skipped and logged, never applied); record the step's metrics and the hooks'
tracking; then the controllers (the wall guard, :mod:`eqprop.train.guard`, and the
stability controller) decide, and :meth:`Trainer.apply` puts their
:class:`~eqprop.train.decisions.Decision` into effect. The loop over steps is
:mod:`eqprop.train.run`; what a checkpoint holds of the trainer,
:mod:`eqprop.train.trainer_state`.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data import Vocab, load_corpus
from ..errors import ConfigError
from ..gradients.registry import BACKPROP, build_estimator
from ..models import LMField, StandardLM, build_model
from ..solvers import Solution
from ..solvers.registry import build_relaxation, build_solver
from ..solvers.relaxation import Relaxation
from .backprop import backprop_step, evaluate_forward
from .checkpoint import (
    file_sha256,
    has_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    run_dir_of,
)
from .config import TrainConfig
from .configio import apply_overrides, save_config, unflatten
from .decisions import Decision, phase_eps
from .distributed import init_distributed, resolve_device
from .ema import EMA
from .ep_step import equilibrium_step
from .evaluation import evaluate
from .guard import WallGuard
from .hooks import ConfigHooks, Hook, Penalty, PenaltyHook, Tracker, TrackerHook
from .rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    RunLock,
    new_run_dir,
    open_run_dir,
)
from .sanity import suspicious_settings
from .stability import StabilityController
from .step import Measured, Verdict, mark_skipped, step_record
from .summary import TrainSummary, summarize
from .trainer_state import restore_trainer, save_trainer
from .update_filter import UpdateFilter

__all__ = ["Penalty", "Tracker", "TrainSummary", "Trainer"]


class Trainer:
    """Owns the model, optimizer, data stream, run directory and metrics of one run.

    ``model.block standard`` with ``estimator.name backprop`` builds the feed-forward
    baseline (:class:`~eqprop.models.StandardLM`), trained by plain backprop.

    Args:
        cfg: the resolved config.
        resume: a run directory to continue exactly from its newest checkpoint (one
            stopped before its first checkpoint restarts from step 0).
        penalty: optional regularizer (see :data:`~eqprop.train.hooks.Penalty`).
        trackers: optional diagnostics (see :data:`~eqprop.train.hooks.Tracker`), called
            every step with its number (each returns ``{}`` on the steps it skips).
        hooks: further :class:`~eqprop.train.hooks.Hook` objects. The step calls, in
            order, ``penalty``, ``trackers``, ``hooks`` and the config-built
            :class:`~eqprop.train.hooks.ConfigHooks` (one list, :attr:`hooks`).

    Raises:
        ConfigError: a setting is rejected, or the run directory is in use by another
            process (it is locked while a trainer holds it).
        CheckpointError: the resumed checkpoint is unusable or for another model.
    """

    def __init__(self, cfg: TrainConfig, *, resume: str | Path | None = None,
                 penalty: Penalty | None = None, trackers: Sequence[Tracker] = (),
                 hooks: Sequence[Hook] = ()):
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.dist = init_distributed(cfg.run.device)  # torchrun: process group, rank's device
        self.device = self.dist.device or resolve_device(cfg.run.device)
        ck = load_checkpoint(resume) if resume is not None and has_checkpoint(resume) else None
        if resume is not None and ck is None and not (run_dir_of(resume) / CONFIG_FILE).is_file():
            load_checkpoint(resume)  # not a run directory: its error says so
        if ck is not None and cfg.schedule.steps < ck.step:
            raise ConfigError(f"schedule.steps={cfg.schedule.steps} is below the {ck.step} steps "
                              f"the run has done: give --schedule.steps {ck.step} or more")
        vocab = Vocab.from_dict(ck.state["vocab"]) if ck is not None else None
        self.corpus = load_corpus(cfg.data, seq_len=cfg.model.seq_len, vocab=vocab)
        self.data_sha256 = file_sha256(cfg.data.path) if cfg.data.path is not None else None
        self.cfg = cfg = replace(cfg, model=replace(cfg.model,
                                                    vocab_size=len(self.corpus.vocab)))
        self.unigram = self.corpus.unigram_entropy()
        torch.manual_seed(cfg.run.seed)
        self.model = build_model(cfg.model)
        self.backprop = cfg.estimator.name == BACKPROP  # the feed-forward baseline
        self.data_gen = torch.Generator().manual_seed(self.dist.rank_seed(cfg.run.seed))
        if self.dist.rank:  # own torch stream per rank (rank 0 continues as one process)
            torch.manual_seed(self.dist.rank_seed(cfg.run.seed))
        self.step, self.skipped, self.elapsed = 0, 0, 0.0
        self.hooks: list[Hook] = [*([PenaltyHook(penalty)] if penalty is not None else []),
                                  *map(TrackerHook, trackers), *hooks,
                                  ConfigHooks.from_config(cfg, sync=self.dist)]
        self.solver = build_solver(cfg.solver)
        self._free: Relaxation | None = None
        self.estimator = None if self.backprop else build_estimator(cfg.estimator, cfg.solver)
        self.guard = WallGuard(cfg.guard)
        self.update_filter = UpdateFilter(max_dropped=cfg.estimator.drop_failed)
        self.stability = StabilityController(cfg.stability) if cfg.stability.enabled else None
        self.events: list[dict[str, Any]] = []  # decisions to log, taken by run()
        self.stop_reason: str | None = None  # why a controller stopped the run
        if ck is not None:
            self.model = model_from_checkpoint(ck, cfg)
        self.model.to(self.device)
        self.dist.broadcast_module(self.model)  # identical weights on every rank
        self.ema = EMA(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
        self.optimizer = self._make_optimizer()
        self.ckpt_step: int | None = None  # the step of the newest checkpoint on disk
        if ck is not None:
            restore_trainer(self, ck)
            self.run_dir, self.ckpt_step = ck.run_dir, ck.step
        elif resume is not None:  # stopped before its first checkpoint: from step 0
            self.run_dir = run_dir_of(resume)
        else:
            self.run_dir = self.dist.on_main(lambda: new_run_dir(cfg.run))
        self.lock: RunLock | None = None
        self.dist.on_main(self._lock)  # a second process in this run directory: refused
        if self.stability is not None:  # the controller owns the penalty's weight
            self.config_hooks.reg.weight = self.stability.weight
        # config.yaml; an unwritable or full disk fails now (on every rank), not later
        self.dist.on_main(lambda: open_run_dir(self.run_dir, self.cfg, self.model))
        self.metrics = self.dist.metrics_log(self.run_dir / METRICS_FILE)
        if resume is not None:
            self.metrics.truncate_after(self.step)
        self.val_last: dict[str, Any] = {}
        self._bar: tqdm | None = None
        if self.dist.is_main:
            for warning in suspicious_settings(self.cfg):
                self.say(f"warning: {warning}")

    def _lock(self) -> None:
        self.lock = RunLock(self.run_dir)

    def close(self) -> None:
        """Release the run directory's lock (the kernel does so too when the process ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def say(self, text: str) -> None:
        """Print ``eqprop train: TEXT`` on stderr, above the progress bar when one is shown
        (rank 0 only; also with ``--run.no-progress``)."""
        if not self.dist.is_main:
            return
        if self._bar is not None and not self._bar.disable:
            tqdm.write(f"eqprop train: {text}", file=sys.stderr)
        else:
            print(f"eqprop train: {text}", file=sys.stderr, flush=True)

    # -- setup ---------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.AdamW:
        o = self.cfg.optim
        decay = [p for _, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for _, p in self.model.named_parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": o.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # the fused kernel on CUDA: one launch for every parameter
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2),
                                 fused=self.device.type == "cuda")

    # -- one step ------------------------------------------------------------
    def train_step(self, tokens: Tensor, targets: Tensor) -> dict[str, Any]:
        """One update on a batch ``tokens, targets (B, T)``; returns its metrics record.

        The host waits for the device only inside the relaxations (a check every
        ``check_every`` steps) and once before the update, when every number the step
        reports (and the skip decision needs) comes over in one transfer.
        """
        if self.backprop:  # the baseline's update, then the guard's decision
            record = backprop_step(self, tokens, targets)
            return self.settle(record, self.decide(record))
        return equilibrium_step(self, tokens, targets)

    def free_relaxation(self) -> Relaxation:
        """The free phase's relaxation, built once (rebuilt if the guard swapped the solver)."""
        sc = self.cfg.solver
        if self._free is None or self._free.solver is not self.solver:
            self._free = build_relaxation(sc, solver=self.solver)
        return self._free

    def relax(self, field: LMField) -> Solution:
        """The free phase: relax from the input drive to z*."""
        return self.free_relaxation().run(field, field.initial_state())

    def penalties(self, field: LMField, sol: Solution) -> list[Tensor]:
        """The hooks' penalty scalars for this step, in hook order."""
        return [pen for hook in self.hooks for pen in [hook.penalty(field, sol.z, sol)]
                if pen is not None]

    def backward(self, surrogate: Tensor, penalties: list[Tensor]) -> Tensor:
        """Fill ``.grad`` from the surrogate plus the penalties (averaged over the ranks
        under torchrun), clip it; returns the norm before clipping."""
        objective = surrogate
        for pen in penalties:
            objective = objective + pen
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.dist.average_gradients(self.model.parameters())  # torchrun: mean over ranks
        clip = self.cfg.optim.grad_clip or float("inf")
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)

    def judge(self, m: Measured) -> Verdict:
        """Whether the update is applied, the same verdict on every rank."""
        h = m.host
        finite = self.dist.all_true(
            math.isfinite(h["loss"]) and math.isfinite(h["grad_norm"])
            and math.isfinite(h.get("penalty", 0))
            and m.counts["nonfinite"] == 0 and m.nudge_counts.get("nonfinite", 0) == 0)
        # an estimate from failed relaxations, or an absurd norm: rejected on every rank
        reason = self.update_filter.check(m.counts, m.nudge_phases, h["grad_norm"])
        sound = finite and self.dist.all_true(reason is None)
        # the guard judges the global batch: the same verdict on every rank
        apply = sound and self.guard.allow_update(self.dist.sum_counts(m.counts))
        return Verdict(finite, sound, apply, reason)

    def update(self, verdict: Verdict, m: Measured) -> None:
        """The AdamW update at the step's learning rate (and the moving average), or the
        skip counted."""
        if verdict.sound:
            self.update_filter.accept(m.host["grad_norm"])
        if verdict.apply:
            self.optimizer_step(m.lr)
        elif not verdict.sound:
            self.skipped += 1
        else:
            self.guard.wall_skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def optimizer_step(self, lr: float) -> None:
        """The AdamW step at ``lr`` on the filled ``.grad``, then the moving average's."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()

    def record(self, m: Measured, verdict: Verdict, *, batch: int,
               nudged: bool) -> dict[str, Any]:
        """The step's metrics record (over the global batch under torchrun)."""
        record = self.dist.reduce_record(step_record(self.step, m, batch=batch, nudged=nudged))
        return mark_skipped(record, verdict)

    def track(self, field: LMField, z_star: Tensor) -> dict[str, float]:
        """The hooks' tracking of this step (each decides when it is due)."""
        out: dict[str, float] = {}
        for hook in self.hooks:
            out.update(hook.track(self.model, field, z_star, self.step))
        return out

    # -- decisions -------------------------------------------------------------
    @property
    def config_hooks(self) -> ConfigHooks:
        """The config-built hook of :attr:`hooks` (regularizer and tracking)."""
        return next(h for h in self.hooks if isinstance(h, ConfigHooks))

    def decide(self, record: dict[str, Any], field: LMField | None = None,
               z_star: Tensor | None = None, free_nfe: float = math.nan) -> Decision:
        """The controllers' decisions on this step: the stability controller's (when on,
        from this rank's free NFE), and the wall guard's (from the record)."""
        stability = Decision()
        if self.stability is not None and field is not None:
            converged = record["status_frac"].get("converged", 0.0)
            stability = self.stability.decide(self.step, free_nfe, field, z_star,
                                              converged=converged, eps=phase_eps(self.cfg))
        reg = self.config_hooks.reg
        guard = self.guard.update(record, self.cfg, reg.current_weight if reg else None)
        return guard.then(stability)

    def settle(self, record: dict[str, Any], decision: Decision) -> dict[str, Any]:
        """The decision's metrics into the record, the decision applied; the record."""
        record.update(decision.metrics)
        self.apply(decision)
        return record

    def apply(self, decision: Decision, *, save: bool = True) -> None:
        """Put a decision into effect: the penalty's weight; then changed settings (the
        config, the solver, the estimator and the config hooks rebuilt from it, the
        hooks' state carried over, ``config.yaml`` rewritten unless ``save`` is false);
        a stop; its events queued for the log."""
        if decision.weight is not None:
            self.config_hooks.reg.weight = decision.weight
        if decision.changes:
            self._reconfigure(decision.changes)
            if save and self.dist.is_main:  # the run directory shows the settings in use
                save_config(self.cfg, self.run_dir / CONFIG_FILE)
        if decision.stop is not None:
            self.stop_reason = decision.stop
        self.events.extend(decision.events)

    def _reconfigure(self, changes: dict[str, Any]) -> None:
        """The config with ``changes``; solver, estimator and config hooks rebuilt."""
        cfg: TrainConfig = apply_overrides(self.cfg, unflatten(changes))
        self.cfg = cfg
        self.solver = build_solver(cfg.solver)
        if not self.backprop:
            self.estimator = build_estimator(cfg.estimator, cfg.solver)
        old = self.config_hooks
        new = old.rebuilt(cfg)
        self.hooks = [new if h is old else h for h in self.hooks]

    # -- periodic work -------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Validation metrics on fixed batches (see :func:`~eqprop.train.evaluation.evaluate`;
        the backprop baseline: :func:`~eqprop.train.backprop.evaluate_forward`)."""
        if not self.dist.is_main:
            return {}
        self.model.eval()
        with self.averaged():
            out = self._evaluate("val")
        if self.ema is not None:  # the raw parameters too: does the average help?
            raw = self._evaluate("val_raw")
            out.update({k: raw[k] for k in ("val_raw_ce", "val_raw_ce_ref") if k in raw})
        self.val_last = out
        return out

    def _evaluate(self, prefix: str) -> dict[str, Any]:
        if isinstance(self.model, StandardLM):
            return evaluate_forward(self.model, self.corpus, self.cfg.eval,
                                    seed=self.cfg.run.seed, device=self.device, prefix=prefix)
        return evaluate(self.model, self.corpus, self.cfg.solver, self.cfg.eval,
                        seed=self.cfg.run.seed, device=self.device, prefix=prefix)

    def averaged(self) -> contextlib.AbstractContextManager:
        """The parameters' moving average in the model (when ``optim.ema_decay`` is set)."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    def checkpoint(self) -> None:
        """Save a checkpoint now (refused, and logged, if a weight is non-finite; see
        :func:`~eqprop.train.trainer_state.save_trainer`)."""
        save_trainer(self)

    # -- the run -------------------------------------------------------------
    def run(self) -> TrainSummary:
        """Train to ``schedule.steps`` and return the summary.

        Raises:
            TrainingInterrupted: Ctrl-C or SIGTERM; the step in progress was finished and
                checkpointed first (a second signal stops at once), the message says the
                step a resume restarts from.
        """
        from .run import run_to_end  # the loop over steps, periodic work and signals

        try:
            return run_to_end(self)
        finally:
            self.close()  # the run directory is free for the next process (or trainer)

    def summary(self) -> TrainSummary:
        """Summary from the metrics written so far (see :func:`~eqprop.train.summary.summarize`)."""
        return summarize(self.metrics.read(), run_dir=self.run_dir, steps=self.step,
                         skipped=self.skipped, val=self.val_last, unigram=self.unigram,
                         wall_time=self.elapsed, guard=self.guard, relaxation=not self.backprop)
