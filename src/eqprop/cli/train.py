"""``eqprop train``: train an equilibrium LM (the main job).

Every flag comes from :class:`~eqprop.train.TrainConfig` (``--model.d-model``,
``--solver.name``, ``--solver.anderson.m``, ``--estimator.name``, ...). ``--config FILE``
(TOML, YAML or JSON) replaces the defaults; ``--resume RUN`` continues a run exactly from its newest
checkpoint, with its saved config as the defaults. A flag given on the command line
always wins over both (:func:`base_args` reads the file or the run before the flags
are parsed). Exit codes: 0 done, 2 a rejected setting or file (one line on stderr),
3 stopped early by the wall guard (``--guard.policy stop``, or ``escalate`` once its
ladder is used up), 4 no update was applied (every step skipped), 130 / 143 stopped
by Ctrl-C / SIGTERM (after a checkpoint at the step boundary). Under
``torchrun --nproc_per_node=N -m eqprop train ...`` every process trains on its own
batches and rank 0 writes the run (see :mod:`eqprop.train.distributed`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Annotated

import tyro

from ..errors import ConfigError
from ..solvers.registry import FLAT_SETTINGS
from ..train import TrainConfig, resume_config, train
from ..train.configio import config_from_dict, config_to_dict, flatten, load_config_file
from ..train.distributed import is_main_process

__all__ = ["Args", "base_args", "run"]

#: exit code when not a single update was applied
EXIT_NOTHING_LEARNED = 4
#: the flag prefixes of TrainConfig's solver configs
SOLVER_FLAGS = ("--solver.", "--estimator.nudge.", "--eval.reference.")
#: model settings that a resumed run may change (they do not change its weights)
RESUMABLE_MODEL_SETTINGS = ("model.fused_attention",)


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
    """continue this run directory exactly from its newest checkpoint (from step 0 if it
    has none yet), with its saved config; flags override it."""
    vocab_flag: tyro.conf.Suppress[bool] = False
    """--model.vocab-size was on the command line (it is ignored: the data sets it)."""


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv`` (the last one wins)."""
    value = None
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif tok.startswith(name + "="):
            value = tok.split("=", 1)[1]
    return value


def base_args(argv: list[str]) -> Args:
    """The defaults the flags of ``argv`` are parsed onto: the dataclass defaults, or the
    ``--config`` file's settings, or the resumed run's saved config.

    Parsing the flags onto these (instead of onto the dataclass defaults and merging
    afterwards) makes every flag on the command line win, also one that repeats a
    default value.

    Args:
        argv: the arguments after ``eqprop train``.

    Returns:
        An :class:`Args` whose ``train`` holds those defaults.

    Raises:
        ConfigError: both ``--config`` and ``--resume``; a bad file or setting.
        CheckpointError: the resumed run cannot be read.
    """
    if "-h" in argv or "--help" in argv:
        return Args()
    _refuse_flat_solver_flags(argv)
    config, resume = _option(argv, "--config"), _option(argv, "--resume")
    if config is not None and resume is not None:
        raise ConfigError("--config and --resume cannot be combined: a resumed run "
                          "continues with its saved config")
    vocab = _given(argv, "--model.vocab-size")
    if resume is not None:
        return Args(train=resume_config(resume), resume=resume, vocab_flag=vocab)
    if config is not None:
        return Args(train=config_from_dict(load_config_file(config)), config=config,
                    vocab_flag=vocab)
    return Args(vocab_flag=vocab)


def _refuse_flat_solver_flags(argv: list[str]) -> None:
    """A flag of the flat solver settings (``--solver.eps``) says where it lives now."""
    for tok in argv:
        flag = tok.split("=", 1)[0]
        for prefix in SOLVER_FLAGS:
            key = flag[len(prefix):].replace("-", "_") if flag.startswith(prefix) else ""
            if key in FLAT_SETTINGS:
                new = [f"{prefix}{section}.{setting}".replace("_", "-")
                       for section, setting in FLAT_SETTINGS[key]]
                raise ConfigError(f"{flag}: solver settings live in their solver's section now: "
                                  f"use {' or '.join(new)}")


def _given(argv: list[str], flag: str) -> bool:
    """Whether ``flag`` (in its ``-`` or ``_`` spelling) is on the command line."""
    names = {flag, "--" + flag[2:].replace("-", "_")}
    return any(tok.split("=", 1)[0] in names for tok in argv)


def run(args: Args) -> int:
    """Train with the parsed config, print the summary; returns the exit code."""
    cfg = args.train
    if args.resume is not None:
        before, after = flatten(config_to_dict(resume_config(args.resume))), \
            flatten(config_to_dict(cfg))
        changed = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
        shape = [f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()
                 if k.startswith("model.") and k not in RESUMABLE_MODEL_SETTINGS]
        if shape:
            raise ConfigError(f"{'; '.join(shape)}: the model of a run cannot change when it "
                              "is resumed; start a new run (--run.name) for another model")
        if changed and is_main_process():
            shown = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            print(f"eqprop train: resuming with changed settings: {shown}", file=sys.stderr)
    if args.vocab_flag and is_main_process():
        print("eqprop train: warning: --model.vocab-size is ignored: the vocabulary size is "
              "the number of distinct characters in the data", file=sys.stderr)
    summary = train(cfg, resume=args.resume)  # under torchrun: every rank trains
    if is_main_process():
        print(summary.format())
        if summary.stopped:
            print(f"eqprop train: {summary.stopped}; after changing the settings, continue "
                  f"with: eqprop train --resume {summary.run_dir}", file=sys.stderr)
    if summary.stopped:
        return 3
    return EXIT_NOTHING_LEARNED if summary.applied <= 0 else 0
