"""``eqprop train``: train an equilibrium LM (the main job).

Every flag comes from :class:`~eqprop.train.TrainConfig` (``--model.d-model``,
``--solver.eps``, ``--estimator.name``, ...). ``--config FILE`` (TOML, YAML or
JSON) replaces the defaults; flags override the file. ``--resume RUN`` continues
a run exactly from its newest checkpoint, with its saved config. Exit codes: 0
done, 2 a rejected setting or file (one line on stderr), 3 stopped early by the wall
guard (``--guard.policy stop``, or ``escalate`` once its ladder is used up). Under
``torchrun --nproc_per_node=N -m eqprop train ...`` every process trains on its own
batches and rank 0 writes the run (see :mod:`eqprop.train.distributed`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from ..errors import ConfigError
from ..train import TrainConfig, resume_config, train
from ..train.configio import config_to_dict, flatten, load_config_file, resolve_config
from ..train.distributed import is_main_process

__all__ = ["Args", "run"]


@dataclass
class Args:
    """Train an equilibrium LM with equilibrium propagation (or a baseline estimator).

    Writes runs/<name>/: config.yaml, metrics.jsonl, plots/*.png, checkpoints/,
    samples.txt and summary.json.
    """

    train: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(default_factory=TrainConfig)
    config: str | None = None
    """TOML, YAML or JSON file of settings (same sections as the flags); flags override it."""
    resume: str | None = None
    """continue this run directory exactly from its newest checkpoint (its saved config;
    flags that differ from the defaults override it)."""


def run(args: Args) -> int:
    """Resolve the config, train, print the summary; returns the exit code."""
    if args.resume is not None:
        if args.config is not None:
            raise ConfigError("--config and --resume cannot be combined: a resumed run "
                              "continues with its saved config")
        saved = config_to_dict(resume_config(args.resume))
        cfg = resolve_config(args.train, saved)
        before, after = flatten(saved), flatten(config_to_dict(cfg))
        changed = [f"{k} {before[k]!r} -> {v!r}" for k, v in after.items() if before.get(k) != v]
        if changed and is_main_process():
            print(f"eqprop train: resuming with changed settings: {'; '.join(changed)}",
                  file=sys.stderr)
    elif args.config is not None:
        cfg = resolve_config(args.train, load_config_file(args.config))
    else:
        cfg = args.train
    summary = train(cfg, resume=args.resume)  # under torchrun: every rank trains
    if is_main_process():
        print(summary.format())
        if summary.stopped:
            print(f"eqprop train: {summary.stopped}; after changing the settings, continue "
                  f"with: eqprop train --resume {summary.run_dir}", file=sys.stderr)
    return 3 if summary.stopped else 0
