"""The run: training steps until the schedule ends, with validation, logging,
checkpoints and plots at their cadences, and a clean stop on Ctrl-C or SIGTERM.

:class:`~eqprop.train.trainer.Trainer` owns the state and does one step
(:meth:`~eqprop.train.trainer.Trainer.train_step`, the controllers' decisions included);
this module drives it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ..solvers.loop import capture_fallbacks
from .config import TrainConfig
from .hooks import Penalty, Tracker
from .interrupt import StopSignals, TrainingInterrupted
from .metrics import format_progress
from .outputs import plot_run, write_sample
from .rundir import SUMMARY_FILE
from .summary import TrainSummary
from .trainer import Trainer

__all__ = ["run_to_end", "train"]

#: skipped steps announced one by one on stderr; later ones are only counted
NONFINITE_SHOWN = 3
#: the events of a skipped update (non-finite values; the update filter's rejection)
SKIP_EVENTS = ("nonfinite", "rejected")


def run_to_end(tr: Trainer) -> TrainSummary:
    """Train ``tr`` to ``schedule.steps``: steps, validation, logging, checkpoints and plots
    at their cadences, a stop at a step boundary on a signal; returns the summary."""
    cfg, steps = tr.cfg, tr.cfg.schedule.steps
    show = cfg.run.progress and tr.dist.is_main
    if show:
        tqdm.write(f"eqprop train: run directory {tr.run_dir}"
                   f"{tr.dist.describe(cfg.data.batch_size)}", file=sys.stderr)
    bar = tr._bar = tqdm(total=steps, initial=tr.step, disable=not show,
                           dynamic_ncols=True, desc=tr.run_dir.name, file=sys.stderr)
    plotted, nonfinite_shown = -1, 0
    fallbacks = len(capture_fallbacks())  # those of this run become capture_failed events
    try:
        with StopSignals() as stop:
            while tr.step < steps and tr.stop_reason is None:
                t0 = time.perf_counter()
                tokens, targets = tr.corpus.get_batch("train", cfg.data.batch_size,
                                                        cfg.model.seq_len, tr.data_gen)
                record = tr.train_step(tokens.to(tr.device), targets.to(tr.device))
                s, last = tr.step, tr.step == steps or tr.stop_reason is not None
                do_eval = last or (cfg.eval.every > 0 and s % cfg.eval.every == 0)
                if do_eval:
                    record.update(tr.validate())
                tr.elapsed += time.perf_counter() - t0
                record["time"] = tr.elapsed
                if do_eval or s % cfg.run.log_every == 0 or record.get("skipped"):
                    tr.metrics.append(record)
                new = capture_fallbacks()[fallbacks:]
                fallbacks += len(new)
                tr.events += [{"step": s, "event": "capture_failed", "detail": m} for m in new]
                events, tr.events = tr.events, []  # skips, the controllers' decisions
                for event in events:
                    tr.metrics.append(event)
                    skip = event["event"] in SKIP_EVENTS
                    nonfinite_shown += skip
                    if not skip or nonfinite_shown <= NONFINITE_SHOWN:
                        tr.say(f"{event['event']} at step {s}: {event['detail']}")
                    if skip and nonfinite_shown == NONFINITE_SHOWN:
                        tr.say("further skipped steps are only counted (metrics.jsonl, "
                                 "the summary)")
                bar.set_postfix_str(format_progress(record), refresh=False)
                bar.update(1)
                if last or (cfg.run.ckpt_every > 0 and s % cfg.run.ckpt_every == 0):
                    tr.checkpoint()
                if do_eval:
                    plot_run(tr)
                    plotted = tr.step
                # a signal stops at this step boundary (on every rank alike)
                if not tr.dist.all_true(stop.signum is None):
                    _stop(tr, stop, bar)
    except KeyboardInterrupt as e:
        if isinstance(e, TrainingInterrupted):
            raise
        bar.close()  # a second Ctrl-C, in the middle of a step: nothing is saved
        raise TrainingInterrupted(2, _interrupted(tr, "Ctrl-C (SIGINT), during a step"
                                                       )) from None
    finally:
        bar.close()
        tr._bar = None
    if not tr.val_last:  # resumed at the end: nothing was validated in this process
        tr.validate()
    if plotted != tr.step:
        plot_run(tr)
    write_sample(tr)
    summary = tr.summary()
    if tr.dist.is_main:
        (tr.run_dir / SUMMARY_FILE).write_text(
            json.dumps({k: (str(v) if isinstance(v, Path) else v)
                        for k, v in asdict(summary).items()}, indent=2) + "\n")
        for warning in summary.warnings():
            tr.say(f"warning: {warning}")
    return summary

def _stop(tr: Trainer, stop: StopSignals, bar: tqdm) -> None:
    """End the run at this step boundary after a signal: checkpoint, say, raise."""
    signum = stop.signum if stop.signum is not None else 15  # another rank's signal
    if tr.ckpt_step != tr.step:
        tr.checkpoint()
    bar.close()
    raise TrainingInterrupted(signum, _interrupted(tr, stop.name or "a signal"))

def _interrupted(tr: Trainer, how: str) -> str:
    """Say, in one line, where the run stopped and how to continue it; returns it."""
    at = tr.ckpt_step or 0
    saved = "checkpoint saved" if tr.ckpt_step == tr.step else (
        f"last checkpoint at step {at}" if tr.ckpt_step else "no checkpoint yet")
    text = (f"interrupted by {how} at step {tr.step} ({saved}); continue from step {at} "
            f"with: eqprop train --resume {tr.run_dir}")
    tr.say(text)
    return text

def train(cfg: TrainConfig, *, resume: str | Path | None = None, penalty: Penalty | None = None,
          trackers: Sequence[Tracker] = ()) -> TrainSummary:
    """Train an equilibrium LM; everything is written into a new run directory.

    Args:
        cfg: the resolved config.
        resume: continue this run directory exactly from its newest checkpoint
            (``cfg`` should be its saved config; see :func:`eqprop.train.resume_config`).
        penalty: optional ``penalty(field, z_star, sol) -> scalar`` added to the surrogate.
        trackers: optional ``tracker(model, field, z_star, step) -> dict`` diagnostics.

    Returns:
        A :class:`TrainSummary`.
    """
    trainer = Trainer(cfg, resume=resume, penalty=penalty, trackers=trackers)
    try:
        return trainer.run()
    finally:
        trainer.close()
        trainer.dist.close()  # under torchrun: end the process group this run started
