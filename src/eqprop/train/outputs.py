"""What a run writes for people to look at: the plots and the text samples.

Called by the run loop (:mod:`eqprop.train.run`) on rank 0; the trainer itself only
trains, validates and checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..diagnostics.plots import plot_stability_history
from .generation import generate
from .plots import plot_metrics
from .rundir import PLOTS_DIR, SAMPLES_FILE

if TYPE_CHECKING:  # a type only
    from .trainer import Trainer

__all__ = ["plot_run", "write_sample"]


def plot_run(tr: Trainer) -> None:
    """Redraw the run's PNG plots from its ``metrics.jsonl``."""
    if not tr.dist.is_main:
        return
    records = tr.metrics.read()
    plot_metrics(records, tr.run_dir / PLOTS_DIR, unigram_entropy=tr.unigram,
                 tol=tr.cfg.solver.tol)
    if any("eps_crit_min" in r for r in records):
        plot_stability_history(records, tr.run_dir / PLOTS_DIR / "stability.png",
                               eps=tr.cfg.solver.eps)


def write_sample(tr: Trainer) -> None:
    """Sample ``run.sample_tokens`` characters into the run's ``samples.txt`` (with the
    parameters' moving average when there is one)."""
    n = tr.cfg.run.sample_tokens
    if not n or not tr.dist.is_main:
        return
    tr.model.eval()
    gen = torch.Generator().manual_seed(tr.cfg.run.seed)
    prompt = "\n" if "\n" in tr.corpus.vocab.chars else tr.corpus.vocab.chars[0]
    with tr.averaged():
        g = generate(tr.model, tr.corpus.vocab, prompt, n, solver=tr.solver,
                     tol=tr.cfg.solver.tol, max_steps=tr.cfg.solver.max_steps,
                     temperature=0.8, generator=gen)
    cost = "one forward pass per char" if tr.backprop else f"mean NFE/char {g.mean_nfe:.1f}"
    with (tr.run_dir / SAMPLES_FILE).open("a", encoding="utf-8") as f:
        f.write(f"--- step {tr.step}, temperature 0.8, prompt {prompt!r}, {cost}"
                f"{f' ({g.stopped})' if g.stopped else ''}"
                f"\n{prompt}{g.text}\n\n")
