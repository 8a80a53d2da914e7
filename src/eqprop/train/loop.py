"""The training loop: free relaxation, gradient estimator, AdamW update (design §2, §3).

One step: relax the free dynamics from the input drive to z* with the free-phase
solver; let the estimator (asymep, ep, ift, bptt) turn z* into a surrogate
scalar whose ``backward()`` fills ``.grad``; clip and apply AdamW. A step whose
relaxation (free or nudged), loss, penalty or gradient is NaN/Inf is skipped (and
logged), never applied; the wall guard (:mod:`eqprop.train.guard`) watches the free
relaxations' statuses. Hook points for regularizer penalties and diagnostics
trackers are marked in :meth:`Trainer.train_step`. The loop over steps is
:mod:`eqprop.train.run`; what a checkpoint holds of the trainer,
:mod:`eqprop.train.trainer_state`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data import Vocab, load_corpus
from ..diagnostics.plots import plot_stability_history
from ..errors import ConfigError
from ..gradients.registry import BACKPROP, build_estimator
from ..models import EquilibriumLM, LMField, StandardLM, build_model
from ..solvers import Solution, Status
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
from .distributed import init_distributed
from .ema import EMA
from .evaluation import evaluate
from .generation import generate
from .guard import WallGuard
from .hooks import ConfigHooks
from .plots import plot_metrics
from .rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    PLOTS_DIR,
    SAMPLES_FILE,
    RunLock,
    new_run_dir,
    open_run_dir,
)
from .sanity import suspicious_settings
from .schedule import lr_at
from .stability import StabilityController
from .summary import TrainSummary, summarize
from .trainer_state import restore_trainer, save_trainer
from .update_filter import UpdateFilter

__all__ = ["Penalty", "Tracker", "TrainSummary", "Trainer", "resolve_device"]

#: ``penalty(field, z_star, sol) -> scalar`` added to the surrogate (e.g. jacreg)
Penalty = Callable[[LMField, Tensor, Solution], Tensor]
#: ``tracker(model, field, z_star, step) -> {name: float}`` merged into the metrics record
Tracker = Callable[[EquilibriumLM, LMField, Tensor, int], dict[str, float]]



def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; other names as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name!r} but CUDA is not available: use auto or cpu")
    return torch.device(name)


def _to_host(scalars: dict[str, Tensor], free: Solution, nudged: list[Solution]
             ) -> tuple[dict[str, float], dict[str, int], list[dict[str, int]]]:
    """Scalars and status counts of a step in one device-to-host transfer: ``(scalars,
    free-phase counts, counts of each nudged phase)``."""
    n = len(Status)
    codes = [torch.bincount(free.status.flatten(), minlength=n)]
    codes += [torch.bincount(s.status.flatten(), minlength=n) for s in nudged]
    packed = torch.cat([torch.stack([v.detach().float().reshape(()) for v in scalars.values()]),
                        torch.stack(codes).flatten().float()]).tolist()
    host = dict(zip(scalars, packed[:len(scalars)], strict=True))
    rows = [packed[len(scalars) + k * n: len(scalars) + (k + 1) * n] for k in range(len(codes))]
    counts = [{s.label: int(r[s]) for s in Status} for r in rows]
    return host, counts[0], counts[1:]


class Trainer:
    """Owns the model, optimizer, data stream, run directory and metrics of one run.

    ``model.block standard`` with ``estimator.name backprop`` builds the feed-forward
    baseline (:class:`~eqprop.models.StandardLM`), trained by plain backprop.

    Args:
        cfg: the resolved config.
        resume: a run directory to continue exactly from its newest checkpoint (one
            stopped before its first checkpoint restarts from step 0).
        penalty: optional regularizer (see :data:`Penalty`).
        trackers: optional diagnostics (see :data:`Tracker`), called every step with its
            number (each returns ``{}`` on the steps it skips).

    Raises:
        ConfigError: a setting is rejected, or the run directory is in use by another
            process (it is locked while a trainer holds it).
        CheckpointError: the resumed checkpoint is unusable or for another model.
    """

    def __init__(self, cfg: TrainConfig, *, resume: str | Path | None = None,
                 penalty: Penalty | None = None, trackers: Sequence[Tracker] = ()):
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
        self.penalty, self.trackers = penalty, list(trackers)
        self.hooks = ConfigHooks.from_config(cfg, sync=self.dist)
        self.solver = build_solver(cfg.solver)
        self._free: Relaxation | None = None
        self.estimator = None if self.backprop else build_estimator(cfg.estimator, cfg.solver)
        self.guard = WallGuard(cfg.guard)
        self.update_filter = UpdateFilter()
        self.stability = StabilityController(cfg.stability) if cfg.stability.enabled else None
        self.events: list[dict[str, Any]] = []  # decisions to log, taken by run()
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
            self.hooks.reg.weight = self.stability.weight
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
    def free_relaxation(self) -> Relaxation:
        """The free phase's relaxation, built once (rebuilt if the guard swapped the solver)."""
        sc = self.cfg.solver
        if self._free is None or self._free.solver is not self.solver:
            self._free = build_relaxation(sc, solver=self.solver)
        return self._free

    def train_step(self, tokens: Tensor, targets: Tensor) -> dict[str, Any]:
        """One update on a batch ``tokens, targets (B, T)``; returns its metrics record.

        The host waits for the device only inside the relaxations (a check every
        ``check_every`` steps) and once before the update, when every number the step
        reports (and the skip decision needs) comes over in one transfer.
        """
        if self.backprop:
            return self._backprop_step(tokens, targets)
        t0 = time.perf_counter()
        self.model.train()
        field = self.model.field(tokens, targets)
        # 1. free phase: relax from the input drive to z*
        sol = self.free_relaxation().run(field, field.initial_state())
        # 2. the estimator's surrogate: its backward() fills .grad with the estimate
        result = self.estimator.estimate(field, sol.z)
        objective = result.surrogate
        # ---- HOOK (regularizers): a penalty scalar added to the surrogate --------------
        penalties = [pen for hook in (self.penalty, self.hooks.penalty) if hook is not None
                     for pen in [hook(field, sol.z, sol)] if pen is not None]
        for pen in penalties:
            objective = objective + pen
        # ------------------------------------------------------------------------------
        # 3. gradient, then one transfer of everything the step reports
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.dist.average_gradients(self.model.parameters())  # torchrun: mean over ranks
        clip = self.cfg.optim.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        nudged = list(result.solutions.values())
        scalars = {"loss": result.loss, "grad_norm": grad_norm,
                   "res_max": sol.rel_residual.max(), "res_mean": sol.rel_residual.mean(),
                   "nfe.free": sol.nfe.float().mean()}
        scalars.update({f"nfe.{k}": v.float().mean() for k, v in result.nfe.items()})
        if penalties:
            scalars["penalty"] = sum(p.detach() for p in penalties)
        if sol.max_real is not None:  # the stability check's leading Re μ over the batch
            scalars["lead_re"] = sol.max_real.nan_to_num(nan=-math.inf).max()
        host, counts, nudge_phases = _to_host(scalars, sol, nudged)
        nudge_counts = {k: sum(c[k] for c in nudge_phases) for k in counts}
        loss, gn = host["loss"], host["grad_norm"]
        lr = lr_at(self.step, self.cfg.optim, self.cfg.schedule)
        finite = self.dist.all_true(
            math.isfinite(loss) and math.isfinite(gn) and math.isfinite(host.get("penalty", 0))
            and counts["nonfinite"] == 0 and nudge_counts.get("nonfinite", 0) == 0)
        # an estimate from failed relaxations, or an absurd norm: rejected on every rank
        reason = self.update_filter.check(counts, nudge_phases, gn)
        sound = finite and self.dist.all_true(reason is None)
        # the guard judges the global batch: the same verdict on every rank
        apply = sound and self.guard.allow_update(self.dist.sum_counts(counts))
        if sound:
            self.update_filter.accept(gn)
        if apply:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()
        elif not sound:
            self.skipped += 1
        else:
            self.guard.wall_skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        B = tokens.shape[0]
        nfe = {k[4:]: v for k, v in host.items() if k.startswith("nfe.")}
        record: dict[str, Any] = {
            "step": self.step, "train_ce": loss, "lr": lr, "grad_norm": gn,
            "res_max": host["res_max"], "res_mean": host["res_mean"],
            "nfe": nfe, "nfe_total": sum(nfe.values()), "status": counts,
            "status_frac": {k: v / B for k, v in counts.items()},
        }
        if penalties:
            record["penalty"] = host["penalty"]
        if math.isfinite(host.get("lead_re", math.nan)):
            record["lead_re"] = host["lead_re"]
        if nudged:
            record["nudge_status"] = nudge_counts
        record = self.dist.reduce_record(record)  # torchrun: the global batch's metrics
        if not apply:
            record.update(skipped=True, skip_reason="wall" if sound else
                          "nonfinite" if not finite else "rejected")
            if finite and not sound:
                record["skip_detail"] = reason or "rejected on another rank"
        # ---- HOOK (diagnostics): trackers' floats merged into the record --------------
        if self.trackers:  # each tracker decides when it is due (StabilityTracking.due)
            for tracker in self.trackers:
                record.update(tracker(self.model, field, sol.z.detach(), self.step))
        if self.hooks.active:  # config-built tracking: decides itself when it is due
            record.update(self.hooks.track(self.model, field, sol.z.detach(), self.step))
        # ------------------------------------------------------------------------------
        # 4. the stability controller decides the next step's penalty weight; applied here
        if self.stability is not None:
            decision = self.stability.decide(self.step, nfe["free"], field, sol.z.detach())
            self.hooks.reg.weight = decision.weight
            record.update(decision.metrics)
            self.events.extend(decision.events)
        record["step_time"] = time.perf_counter() - t0
        return record

    def _backprop_step(self, tokens: Tensor, targets: Tensor) -> dict[str, Any]:
        """The baseline's update (:func:`~eqprop.train.backprop.backprop_step`)."""
        return backprop_step(self, tokens, targets)

    # -- periodic work -------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Validation metrics on fixed batches (see :func:`~eqprop.train.evaluation.evaluate`;
        the backprop baseline: :func:`~eqprop.train.backprop.evaluate_forward`)."""
        if not self.dist.is_main:
            return {}
        self.model.eval()
        with self.averaged():
            if isinstance(self.model, StandardLM):
                out = evaluate_forward(self.model, self.corpus, self.cfg.eval,
                                       seed=self.cfg.run.seed, device=self.device)
            else:
                out = evaluate(self.model, self.corpus, self.cfg.solver, self.cfg.eval,
                               seed=self.cfg.run.seed, device=self.device)
        self.val_last = out
        return out

    def averaged(self) -> contextlib.AbstractContextManager:
        """The parameters' moving average in the model (when ``optim.ema_decay`` is set)."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    def checkpoint(self) -> None:
        """Save a checkpoint now (refused, and logged, if a weight is non-finite; see
        :func:`~eqprop.train.trainer_state.save_trainer`)."""
        save_trainer(self)

    def plot(self) -> None:
        """Redraw the PNG plots from ``metrics.jsonl``."""
        if not self.dist.is_main:
            return
        records = self.metrics.read()
        plot_metrics(records, self.run_dir / PLOTS_DIR,
                     unigram_entropy=self.unigram, tol=self.cfg.solver.tol)
        if any("eps_crit_min" in r for r in records):
            plot_stability_history(records, self.run_dir / PLOTS_DIR / "stability.png",
                                   eps=self.cfg.solver.eps)

    def write_sample(self) -> None:
        """Sample ``run.sample_tokens`` characters into ``samples.txt``."""
        n = self.cfg.run.sample_tokens
        if not n or not self.dist.is_main:
            return
        self.model.eval()
        gen = torch.Generator().manual_seed(self.cfg.run.seed)
        prompt = "\n" if "\n" in self.corpus.vocab.chars else self.corpus.vocab.chars[0]
        with self.averaged():
            g = generate(self.model, self.corpus.vocab, prompt, n, solver=self.solver,
                         tol=self.cfg.solver.tol, max_steps=self.cfg.solver.max_steps,
                         temperature=0.8, generator=gen)
        cost = "one forward pass per char" if self.backprop else f"mean NFE/char {g.mean_nfe:.1f}"
        with (self.run_dir / SAMPLES_FILE).open("a", encoding="utf-8") as f:
            f.write(f"--- step {self.step}, temperature 0.8, prompt {prompt!r}, {cost}"
                    f"{f' ({g.stopped})' if g.stopped else ''}"
                    f"\n{prompt}{g.text}\n\n")

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
