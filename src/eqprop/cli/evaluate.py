"""``eqprop eval RUN``: validation CE and relaxation statistics of a trained run."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Annotated, Literal

import torch
import tyro

from ..data import load_corpus
from ..train import evaluate, load_run
from ..train.config import check_device, check_seed
from ..train.loop import resolve_device

__all__ = ["Args", "run"]


@dataclass
class Args:
    """Cross-entropy of a run's newest checkpoint at the training solver's equilibrium and
    after a tight reference solve, with relaxation statistics."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """the run directory (written by eqprop train)."""
    split: Literal["val", "train"] = "val"
    """which part of the corpus."""
    batches: int | None = None
    """number of batches (default: the run's eval.batches)."""
    batch_size: int | None = None
    """sequences per batch (default: the run's eval.batch_size)."""
    seed: int = 0
    """picks the batches."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    json: bool = False
    """print the metrics as one JSON object instead of a table."""


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.items() if v) or "none"


def run(args: Args) -> int:
    """Evaluate and print; returns the exit code."""
    check_device(args.device, "--device")
    check_seed(args.seed, "--seed")
    device = resolve_device(args.device)
    loaded = load_run(args.run, device=device)
    cfg = loaded.config
    if loaded.config.run.threads:  # as in training: small models run best on one
        torch.set_num_threads(loaded.config.run.threads)
    ev = replace(cfg.eval,
                 batches=cfg.eval.batches if args.batches is None else args.batches,
                 batch_size=cfg.eval.batch_size if args.batch_size is None else args.batch_size)
    corpus = load_corpus(cfg.data, seq_len=cfg.model.seq_len, vocab=loaded.vocab)
    m = evaluate(loaded.model, corpus, cfg.solver, ev, seed=args.seed, split=args.split,
                 device=device, prefix="eval")
    m = {"run": str(loaded.run_dir), "step": loaded.step, "split": args.split,
         "unigram_entropy": corpus.unigram_entropy(), **m}
    if args.json:
        print(json.dumps(m))
        return 0
    s, r = cfg.solver, ev.reference
    n = ev.batches * ev.batch_size
    print("\n".join([
        f"run         {loaded.run_dir} (step {loaded.step})",
        f"data        {corpus.source}, {args.split} split, {ev.batches} batches x "
        f"{ev.batch_size} sequences of {cfg.model.seq_len} characters",
        f"CE          {m['eval_ce']:.4f} nats at the training solver's z* "
        f"({s.name} eps={s.eps:g}, tol={s.tol:g}, max_steps={s.max_steps})",
        f"            {m['eval_ce_ref']:.4f} nats after the reference solve "
        f"({r.name} eps={r.eps:g}, tol={r.tol:g}); mean |gap| {m['eval_ce_gap']:.2e}",
        f"unigram     {m['unigram_entropy']:.4f} nats (entropy of the training characters)",
        f"free phase  {_counts(m['eval_status'])} of {n}; mean NFE {m['eval_nfe']:.1f}, "
        f"residual max {m['eval_res_max']:.2e}, mean {m['eval_res_mean']:.2e}",
        f"reference   {_counts(m['ref_status'])} of {n}; mean NFE {m['ref_nfe']:.1f}, "
        f"residual max {m['ref_res_max']:.2e}",
        f"stability   {m['eval_stable_frac']:.0%} of the training solver's z* continuous-stable "
        f"(estimated max Re μ {m['eval_max_re']:+.3g}; see docs/solvers.md)",
    ]))
    return 0
