"""A trained run, loaded for use: evaluation, sampling, logits, or to continue training.

``load_run(path)`` reads the newest checkpoint (:mod:`eqprop.train.checkpoint`) and
returns a :class:`LoadedRun` whose :meth:`~LoadedRun.generate` and
:meth:`~LoadedRun.logits` relax with the run's own solver settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from ..data import Vocab
from ..errors import CheckpointError, ConfigError, DataError
from ..models import EquilibriumLM, StandardLM
from ..solvers.registry import build_relaxation, build_solver
from ..solvers.relaxation import Relaxation
from .checkpoint import (
    Checkpoint,
    has_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    require_run_dir,
    run_dir_of,
)
from .config import TrainConfig
from .configio import config_from_dict, load_config_file
from .ema import EMA
from .generation import Generation, generate

__all__ = ["LoadedRun", "load_run", "resume_config"]

#: the resolved config a run directory holds from its start (rundir.CONFIG_FILE)
_CONFIG_FILE = "config.yaml"


@dataclass
class LoadedRun:
    """A trained model ready for evaluation or sampling (from :func:`load_run`).

    Attributes:
        model: the :class:`EquilibriumLM` (or the feed-forward
            :class:`~eqprop.models.StandardLM`) in eval mode, on the requested device.
        config: the run's resolved :class:`TrainConfig`.
        vocab: its character vocabulary.
        step: updates done at the checkpoint.
        run_dir: the run directory.
        data_sha256: SHA-256 of the training text file (None for the embedded corpus or
            a checkpoint written before it was recorded).
        averaged: the model holds the parameters' moving average (``optim.ema_decay``),
            as training's validation and sample did; False: the raw parameters.
    """

    model: EquilibriumLM
    config: TrainConfig
    vocab: Vocab
    step: int
    run_dir: Path
    data_sha256: str | None = None
    averaged: bool = False

    def generate(self, prompt: str, tokens: int, *, temperature: float = 0.8,
                 top_k: int | None = None, seed: int = 0,
                 warm_start: bool = True) -> Generation:
        """Continue ``prompt`` by ``tokens`` characters, relaxing with the run's own
        free-phase solver (as ``eqprop sample`` does).

        Args:
            prompt: text to continue; every character must be in :attr:`vocab`.
            tokens: number of characters to generate.
            temperature: softmax temperature; 0 picks the most likely character.
            top_k: sample among the k most likely characters only.
            seed: seed of the sampling.
            warm_start: start each relaxation from the previous equilibrium.

        Returns:
            A :class:`~eqprop.train.Generation` (``.text`` is the continuation).
        """
        s = self.config.solver
        return generate(self.model, self.vocab, prompt, tokens, solver=build_solver(s),
                        tol=s.tol, max_steps=s.max_steps, temperature=temperature,
                        top_k=top_k, warm_start=warm_start,
                        generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def logits(self, tokens: Tensor | str) -> Tensor:
        """Next-character logits at every position, relaxed with the run's free-phase
        solver (one forward pass for the feed-forward baseline).

        Args:
            tokens: token ids ``(B, T)`` or ``(T,)``, or a text (encoded with
                :attr:`vocab`); at most ``config.model.seq_len`` positions.

        Returns:
            Logits ``(B, T, V)`` (``(1, T, V)`` for a text or a 1-D input).
        """
        ids = self.vocab.encode(tokens, what="the text") if isinstance(tokens, str) else tokens
        device = next(self.model.parameters()).device
        ids = (ids[None] if ids.dim() == 1 else ids).to(device)  # (B, T)
        if isinstance(self.model, StandardLM):
            return self.model(ids)
        field = self.model.field(ids)
        sol = self.free_relaxation.run(field, field.initial_state())
        return self.model.logits(sol.z)

    @cached_property
    def free_relaxation(self) -> Relaxation:
        """The run's free-phase relaxation (its solver settings), built once."""
        return build_relaxation(self.config.solver)


def _config_and_vocab(ck: Checkpoint) -> tuple[TrainConfig, Vocab]:
    try:
        return config_from_dict(ck.state["config"]), Vocab.from_dict(ck.state["vocab"])
    except (ConfigError, DataError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint of {str(ck.run_dir)!r} has an unreadable config "
                              f"or vocabulary ({e})") from None


def resume_config(path: str | Path) -> TrainConfig:
    """The resolved config of a run, to continue it: the one saved with its newest
    checkpoint, or, for a run stopped before its first checkpoint, its ``config.yaml``
    (the run then restarts from step 0).

    Raises:
        CheckpointError: not a run directory, or its checkpoint or config is unreadable.
    """
    if has_checkpoint(path):
        return _config_and_vocab(load_checkpoint(path))[0]
    p = run_dir_of(path)
    if not (p / _CONFIG_FILE).is_file():
        require_run_dir(path)  # the error for a missing path or a folder with nothing in it
    try:
        return config_from_dict(load_config_file(p / _CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(f"run {str(p)!r} has no checkpoint yet and its {_CONFIG_FILE} "
                              f"cannot be used ({e})") from None


def load_run(path: str | Path, device: str | torch.device = "cpu", *,
             average: bool = True) -> LoadedRun:
    """Load a trained run for evaluation or sampling.

    Args:
        path: the run directory (or its ``checkpoints`` folder).
        device: where to put the model.
        average: a run trained with a moving average of its parameters is loaded with
            the average (what its validation measured); False: the raw parameters.

    Returns:
        A :class:`LoadedRun` with the model in eval mode.

    Raises:
        CheckpointError: no usable checkpoint, or one whose config or vocabulary
            cannot be read back.
    """
    ck = load_checkpoint(path)
    config, vocab = _config_and_vocab(ck)
    model = model_from_checkpoint(ck, config).to(device).eval()
    extra = ck.state.get("extra", {})
    ema = extra.get("ema") if average else None
    if ema is not None:
        _load_average(model, ema, config, ck.run_dir)
    sha = extra.get("data_sha256")
    return LoadedRun(model=model, config=config, vocab=vocab, step=ck.step, run_dir=ck.run_dir,
                     data_sha256=sha if isinstance(sha, str) else None,
                     averaged=ema is not None)


def _load_average(model: torch.nn.Module, state: dict, config: TrainConfig,
                  run_dir: Path) -> None:
    """Put the checkpoint's moving average (:meth:`EMA.state_dict`) into ``model``."""
    ema = EMA(model, config.optim.ema_decay or 0.5)  # the decay is not used here
    try:
        ema.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise CheckpointError(f"checkpoint of {str(run_dir)!r} holds a moving average that "
                              "does not fit the model: load it with average=False (--raw)"
                              ) from None
    ema.apply()
