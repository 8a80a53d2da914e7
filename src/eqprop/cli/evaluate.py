"""``eqprop eval RUN``: validation CE and relaxation statistics of a trained run.

The corpus is the run's own ``data.path`` (or ``--data PATH`` when the file has moved);
its SHA-256 must match the one recorded at training, unless ``--allow-changed-data``.
The feed-forward baseline (``model.block standard``) reports its CE of one forward pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from ..data import load_corpus
from ..errors import DataError
from ..models import StandardLM
from ..train import evaluate, load_run
from ..train.backprop import evaluate_forward
from ..train.checkpoint import file_sha256
from ..train.config import check_device, check_seed
from ..train.distributed import resolve_device

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
    data: str | None = None
    """the training text file, when it is no longer where the run's data.path says."""
    allow_changed_data: bool = False
    """evaluate on a text file whose SHA-256 differs from the one the run was trained on."""
    raw: bool = False
    """the raw parameters, not their moving average (a run trained with optim.ema_decay
    is evaluated with the average by default, as its validation was)."""


def _counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.items() if v) or "none"


def run(args: Args) -> int:
    """Evaluate and print; returns the exit code."""
    check_device(args.device, "--device")
    check_seed(args.seed, "--seed")
    device = resolve_device(args.device)
    loaded = load_run(args.run, device=device, average=not args.raw)
    cfg = loaded.config
    if loaded.config.run.threads:  # as in training: small models run best on one
        torch.set_num_threads(loaded.config.run.threads)
    ev = replace(cfg.eval,
                 batches=cfg.eval.batches if args.batches is None else args.batches,
                 batch_size=cfg.eval.batch_size if args.batch_size is None else args.batch_size)
    data = cfg.data if args.data is None else replace(cfg.data, path=args.data)
    _check_data(data.path, loaded.data_sha256, args)
    corpus = load_corpus(data, seq_len=cfg.model.seq_len, vocab=loaded.vocab)
    forward = isinstance(loaded.model, StandardLM)
    if forward:
        m = evaluate_forward(loaded.model, corpus, ev, seed=args.seed, split=args.split,
                             device=device, prefix="eval")
    else:
        m = evaluate(loaded.model, corpus, cfg.solver, ev, seed=args.seed, split=args.split,
                     device=device, prefix="eval")
    m = {"run": str(loaded.run_dir), "step": loaded.step, "split": args.split,
         "averaged": loaded.averaged, "unigram_entropy": corpus.unigram_entropy(), **m}
    if args.json:
        print(json.dumps(m))
        return 0
    s, r = cfg.solver, ev.reference
    n = ev.batches * ev.batch_size
    weights = (f"the parameters' moving average (decay {cfg.optim.ema_decay:g}; --raw: the "
               "raw ones)" if loaded.averaged else "the raw parameters")
    head = [f"run         {loaded.run_dir} (step {loaded.step}), {weights}",
            f"data        {corpus.source}, {args.split} split, {ev.batches} batches x "
            f"{ev.batch_size} sequences of {cfg.model.seq_len} characters"]
    if forward:
        print("\n".join([*head,
                         f"CE          {m['eval_ce']:.4f} nats (one forward pass: the backprop "
                         "baseline, no relaxation)",
                         f"unigram     {m['unigram_entropy']:.4f} nats (entropy of the training "
                         "characters)"]))
        return 0
    print("\n".join([
        *head,
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


def _check_data(path: str | None, recorded: str | None, args: Args) -> None:
    """The text file must be the one the run was trained on (same SHA-256)."""
    if path is None:
        return
    if args.data is None and not Path(path).is_file():
        raise DataError(f"data file {path!r} of the run does not exist (moved or deleted?): "
                        "give the training text with --data PATH")
    if recorded is None or args.allow_changed_data:
        return
    try:
        actual = file_sha256(path)
    except OSError:
        return  # missing or unreadable: load_corpus says so, and names --data
    if actual != recorded:
        raise DataError(f"data file {path!r} is not the one the run was trained on (SHA-256 "
                        f"{actual[:12]}…, trained on {recorded[:12]}…): give the original with "
                        "--data PATH, or pass --allow-changed-data to evaluate on it anyway")
