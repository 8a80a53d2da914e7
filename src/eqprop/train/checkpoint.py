"""Atomic checkpoints and loading a trained run.

Layout of ``<run_dir>/checkpoints/``: ``step_XXXXXXX.safetensors`` (the weights),
``step_XXXXXXX.pt`` (optimizer, RNG states, step, vocabulary, config; plain
tensors and containers only, read with ``torch.load(weights_only=True)``) and
``latest.json``, the pointer to the newest complete pair. Each file is written
to a temporary name and moved into place with ``os.replace``; the pointer moves
last, so a crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..data import Vocab
from ..errors import CheckpointError, ConfigError, DataError
from ..models import EquilibriumLM
from .config import TrainConfig
from .configio import config_from_dict, config_to_dict

__all__ = ["CKPT_DIR", "Checkpoint", "LoadedRun", "load_checkpoint", "load_run",
           "model_from_checkpoint", "resume_config", "save_checkpoint"]

CKPT_DIR = "checkpoints"
LATEST = "latest.json"
FORMAT = "eqprop-checkpoint/1"


@dataclass
class Checkpoint:
    """A checkpoint read back from disk.

    Attributes:
        weights: parameter tensors by name (CPU).
        state: ``step``, ``optimizer``, ``rng``, ``vocab``, ``config`` and ``extra``.
        run_dir: the run directory it belongs to.
        step: updates done when it was written.
    """

    weights: dict[str, Tensor]
    state: dict[str, Any]
    run_dir: Path
    step: int


@dataclass
class LoadedRun:
    """A trained model ready for evaluation or sampling.

    Attributes:
        model: the :class:`EquilibriumLM` in eval mode, on the requested device.
        config: the run's resolved :class:`TrainConfig`.
        vocab: its character vocabulary.
        step: updates done at the checkpoint.
        run_dir: the run directory.
    """

    model: EquilibriumLM
    config: TrainConfig
    vocab: Vocab
    step: int
    run_dir: Path


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    step: int, vocab: Vocab, config: TrainConfig, rng: dict[str, Tensor],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint of ``step`` atomically and drop the older ones.

    Args:
        run_dir: the run directory.
        model: its parameters go to safetensors.
        optimizer: its ``state_dict()`` goes to the torch file.
        step: updates done.
        vocab: stored so that eval and sample encode text the same way.
        config: the resolved config.
        rng: RNG states (byte tensors) that an exact resume restores.
        extra: more plain values (counters, elapsed time).

    Returns:
        Path of the torch state file.

    Raises:
        CheckpointError: a parameter is NaN or Inf (nothing is written).
    """
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to checkpoint step {step}: non-finite values in "
                              f"{', '.join(bad[:5])}")
    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"step_{step:07d}"
    state = {"format": FORMAT, "step": step, "optimizer": optimizer.state_dict(), "rng": rng,
             "vocab": vocab.to_dict(), "config": config_to_dict(config), "extra": extra or {}}
    _write_atomic(folder / f"{stem}.safetensors",
                  lambda p: save_file(weights, str(p), metadata={"step": str(step),
                                                                 "format": FORMAT}))
    _write_atomic(folder / f"{stem}.pt", lambda p: torch.save(state, p))
    _write_atomic(folder / LATEST, lambda p: p.write_text(json.dumps({"step": step,
                                                                     "stem": stem})))
    for old in folder.glob("step_*"):
        if not old.name.startswith(stem):
            old.unlink(missing_ok=True)
    return folder / f"{stem}.pt"


def _run_dir_of(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"run {str(p)!r} does not exist; give a run directory written "
                              "by 'eqprop train'")
    if p.is_file():
        p = p.parent
    if p.name == CKPT_DIR:
        p = p.parent
    if not (p / CKPT_DIR / LATEST).is_file():
        raise CheckpointError(f"{str(p)!r} holds no checkpoint ({CKPT_DIR}/{LATEST} is missing);"
                              " give a run directory written by 'eqprop train'")
    return p


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read the newest checkpoint of a run (CPU tensors).

    Args:
        path: the run directory (or its ``checkpoints`` folder).

    Raises:
        CheckpointError: missing, truncated, corrupted or unsafe files.
    """
    run_dir = _run_dir_of(path)
    folder = run_dir / CKPT_DIR
    try:
        pointer = json.loads((folder / LATEST).read_text())
        stem, step = pointer["stem"], int(pointer["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{str(folder / LATEST)!r} is corrupted ({e})") from None
    weights_path, state_path = folder / f"{stem}.safetensors", folder / f"{stem}.pt"
    try:
        weights = load_file(str(weights_path), device="cpu")
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"weights {str(weights_path)!r} are missing or corrupted "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"state {str(state_path)!r} is missing") from None
    except Exception as e:  # torch.load raises many types for truncated or unsafe files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"state {str(state_path)!r} is truncated, corrupted or unsafe "
                              f"({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("step") != step:
        raise CheckpointError(f"state {str(state_path)!r} is not an {FORMAT} file of step {step}")
    return Checkpoint(weights=weights, state=state, run_dir=run_dir, step=step)


def model_from_checkpoint(ck: Checkpoint, config: TrainConfig) -> EquilibriumLM:
    """Build the model of ``config`` and load the checkpoint's weights into it.

    Raises:
        CheckpointError: the weights are for another model shape.
    """
    model = EquilibriumLM(config.model)
    try:
        model.load_state_dict(ck.weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint of {str(ck.run_dir)!r} is for another model: "
                              f"{str(e).splitlines()[0]}") from None
    return model


def _config_and_vocab(ck: Checkpoint) -> tuple[TrainConfig, Vocab]:
    try:
        return config_from_dict(ck.state["config"]), Vocab.from_dict(ck.state["vocab"])
    except (ConfigError, DataError, KeyError) as e:
        raise CheckpointError(f"checkpoint of {str(ck.run_dir)!r} has an unreadable config "
                              f"or vocabulary ({e})") from None


def resume_config(path: str | Path) -> TrainConfig:
    """The resolved config saved with a run's newest checkpoint (to continue it)."""
    return _config_and_vocab(load_checkpoint(path))[0]


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a trained run for evaluation or sampling.

    Args:
        path: the run directory (or its ``checkpoints`` folder).
        device: where to put the model.

    Returns:
        A :class:`LoadedRun` with the model in eval mode.

    Raises:
        CheckpointError: no usable checkpoint, or one whose config or vocabulary
            cannot be read back.
    """
    ck = load_checkpoint(path)
    config, vocab = _config_and_vocab(ck)
    model = model_from_checkpoint(ck, config).to(device).eval()
    return LoadedRun(model=model, config=config, vocab=vocab, step=ck.step, run_dir=ck.run_dir)
