"""``eqprop sample RUN --prompt TEXT --tokens N``: generate text through the equilibrium."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Annotated

import torch
import tyro

from ..errors import ConfigError
from ..solvers.registry import build_solver
from ..train import generate, load_run
from ..train.config import check_device, check_seed
from ..train.distributed import resolve_device

__all__ = ["Args", "run"]


@dataclass
class Args:
    """Continue a prompt character by character; each character's equilibrium is
    warm-started from the previous one (the prefix's positions stay put)."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """the run directory (written by eqprop train)."""
    prompt: str = "\n"
    """text to continue; every character must be in the run's vocabulary."""
    tokens: int = 200
    """number of characters to generate."""
    temperature: float = 0.8
    """softmax temperature; 0 picks the most likely character."""
    top_k: int | None = None
    """sample among the k most likely characters only."""
    seed: int = 0
    """random seed of the sampling."""
    warm_start: bool = True
    """start each relaxation from the previous equilibrium (--no-warm-start: from the drive)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    raw: bool = False
    """the raw parameters, not their moving average (a run trained with optim.ema_decay
    samples with the average by default, as its own sample did)."""


def run(args: Args) -> int:
    """Generate and print the prompt and its continuation; statistics go to stderr."""
    if args.tokens < 1:
        raise ConfigError(f"--tokens={args.tokens}: must be a positive integer")
    if not 0 <= args.temperature < math.inf:
        raise ConfigError(f"--temperature={args.temperature}: must be a finite number ≥ 0")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k={args.top_k}: must be a positive integer")
    check_device(args.device, "--device")
    check_seed(args.seed, "--seed")
    loaded = load_run(args.run, device=resolve_device(args.device), average=not args.raw)
    s = loaded.config.solver
    if loaded.config.run.threads:  # as in training: small models run best on one
        torch.set_num_threads(loaded.config.run.threads)
    loaded.vocab.encode(args.prompt, what="the prompt")  # a bad prompt fails before printing

    def stream(text: str) -> None:  # each character as soon as it is chosen
        sys.stdout.write(text)
        sys.stdout.flush()

    stream(args.prompt)
    g = generate(loaded.model, loaded.vocab, args.prompt, args.tokens, solver=build_solver(s),
                 tol=s.tol, max_steps=s.max_steps, temperature=args.temperature,
                 top_k=args.top_k, warm_start=args.warm_start,
                 generator=torch.Generator().manual_seed(args.seed), on_text=stream)
    stream("\n")
    if loaded.config.model.block == "standard":
        print(f"eqprop sample: {len(g.text)} characters (one forward pass each: the backprop "
              "baseline)", file=sys.stderr)
        return 0
    status = ", ".join(f"{k} {v}" for k, v in g.status.items() if v)
    if g.stopped:  # what was generated is printed; the failure is the one error line
        print(f"eqprop sample: error: {g.stopped} after {len(g.text)} characters ({s.name} "
              f"eps={s.eps:g}): this checkpoint does not settle with its solver",
              file=sys.stderr)
        return 2
    print(f"eqprop sample: {args.tokens} characters, mean NFE per character {g.mean_nfe:.1f} "
          f"({'warm' if args.warm_start else 'cold'} start); relaxations: {status}",
          file=sys.stderr)
    return 0
