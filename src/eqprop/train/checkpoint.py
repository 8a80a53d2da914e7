"""Atomic checkpoints and loading a trained run.

Layout of ``<run_dir>/checkpoints/``: ``step_XXXXXXX.safetensors`` (the weights),
``step_XXXXXXX.pt`` (optimizer, RNG states, step, vocabulary, config; plain
tensors and containers only, read with ``torch.load(weights_only=True)``) and
``latest.json``, the pointer to the newest complete pair with the SHA-256 of
both files. Each file is written to a temporary name, flushed to disk and moved
into place with ``os.replace``; the pointer moves last, so a crash (``kill -9``,
power loss, a full disk) at any moment leaves the previous checkpoint intact, and
a file damaged later fails its checksum. Nothing is unpickled: weights are
safetensors, the state is read with ``torch.load(weights_only=True)``.

Test-only fault injection: with ``EQPROP_TEST_FAULT=kill-in-checkpoint:STEP:SUFFIX``
in the environment the process tears the file ending in ``SUFFIX`` (``safetensors``,
``pt`` or ``json``) of checkpoint ``STEP`` in half and kills itself with SIGKILL, as
a ``kill -9`` in the middle of that write would (see ``tests/test_reliability.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..data import Vocab
from ..errors import CheckpointError, StorageError
from ..models import EquilibriumLM, build_model
from .config import TrainConfig
from .configio import config_to_dict

__all__ = ["CKPT_DIR", "Checkpoint", "file_sha256", "has_checkpoint", "load_checkpoint",
           "model_from_checkpoint", "require_run_dir", "run_dir_of", "save_checkpoint"]

CKPT_DIR = "checkpoints"
LATEST = "latest.json"
FORMAT = "eqprop-checkpoint/1"
#: environment variable of the test-only fault injection (see the module docstring)
FAULT_ENV = "EQPROP_TEST_FAULT"
#: entries of the state file (each a dict)
REQUIRED = ("optimizer", "rng", "vocab", "config")


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


def _fault(step: int, path: Path) -> None:
    """The test-only ``kill -9`` in the middle of a checkpoint write (module docstring)."""
    spec = os.environ.get(FAULT_ENV, "")
    kind, _, rest = spec.partition(":")
    at, _, suffix = rest.partition(":")
    if kind == "kill-in-checkpoint" and at == str(step) and path.name.endswith(f".{suffix}.tmp"):
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, e.g. of the training corpus, stored with each
    checkpoint so that ``eqprop eval`` notices a changed file."""
    return _sha256(Path(path))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported here (some file systems): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, write, step: int = -1) -> None:
    """Write ``path`` through a temporary file, flushed, then renamed into place.

    Raises:
        StorageError: the write failed (full disk, permissions); the temporary file is
            removed and whatever ``path`` held before is untouched.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes 0600; every file alike
        _fault(step, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {str(path)!r} ({e.strerror or e}); the previous "
                           "checkpoint is intact: free some space or fix the permissions, "
                           "then continue with --resume") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _nonfinite(tensors: dict[str, Any], prefix: str = "") -> list[str]:
    """Names of the floating tensors (nested in dicts and lists) that hold NaN or Inf."""
    bad = []
    for k, v in tensors.items():
        name = f"{prefix}{k}"
        if isinstance(v, Tensor):
            if v.is_floating_point() and not torch.isfinite(v).all():
                bad.append(name)
        elif isinstance(v, dict):
            bad += _nonfinite(v, f"{name}.")
        elif isinstance(v, (list, tuple)):
            bad += _nonfinite(dict(enumerate(v)), f"{name}.")
    return bad


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
        CheckpointError: a parameter or an optimizer moment is NaN or Inf (nothing is
            written).
        StorageError: a file cannot be written (the previous checkpoint stays intact).
    """
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    bad = _nonfinite(weights) + _nonfinite(opt_state.get("state", {}), "optimizer.")
    if bad:
        raise CheckpointError(f"refusing to checkpoint step {step}: non-finite values in "
                              f"{', '.join(bad[:5])}")
    folder = Path(run_dir) / CKPT_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {str(folder)!r} ({e.strerror or e})") from None
    stem = f"step_{step:07d}"
    state = {"format": FORMAT, "step": step, "optimizer": opt_state, "rng": rng,
             "vocab": vocab.to_dict(), "config": config_to_dict(config), "extra": extra or {}}
    w_path, s_path = folder / f"{stem}.safetensors", folder / f"{stem}.pt"
    _write_atomic(w_path, lambda p: save_file(weights, str(p), metadata={"step": str(step),
                                                                           "format": FORMAT}),
                  step)
    _write_atomic(s_path, lambda p: torch.save(state, p), step)
    pointer = {"step": step, "stem": stem,
               "sha256": {w_path.name: _sha256(w_path), s_path.name: _sha256(s_path)}}
    _write_atomic(folder / LATEST, lambda p: p.write_text(json.dumps(pointer)), step)
    _fsync_dir(folder)
    for old in folder.glob("step_*"):  # older checkpoints and torn leftovers of a crash
        if not old.name.startswith(stem) or old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)
    return s_path


def run_dir_of(path: str | Path) -> Path:
    """The run directory that ``path`` names (it, its ``checkpoints`` folder or a file
    in there); not checked."""
    p = Path(path)
    try:
        if p.is_file():
            p = p.parent
        if p.name == CKPT_DIR:
            p = p.parent
    except (OSError, ValueError):
        pass
    return p


def has_checkpoint(path: str | Path) -> bool:
    """Whether a run directory (or its ``checkpoints`` folder) holds a checkpoint pointer."""
    try:
        return (run_dir_of(path) / CKPT_DIR / LATEST).is_file()
    except (OSError, ValueError):
        return False


def require_run_dir(path: str | Path) -> Path:
    """The run directory that ``path`` names, which must hold a checkpoint pointer.

    Raises:
        CheckpointError: the path does not exist, cannot be read, or holds no checkpoint.
    """
    p = Path(path)
    try:
        if not p.exists():
            raise CheckpointError(f"run {str(p)!r} does not exist; give a run directory "
                                  "written by 'eqprop train'")
        if p.is_file():
            p = p.parent
        if p.name == CKPT_DIR:
            p = p.parent
        found = (p / CKPT_DIR / LATEST).is_file()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, no permission
        raise CheckpointError(f"run {str(p)!r} cannot be read ({e})") from None
    if not found:
        raise CheckpointError(f"{str(p)!r} holds no checkpoint ({CKPT_DIR}/{LATEST} is missing);"
                              " give a run directory written by 'eqprop train'")
    return p


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read the newest checkpoint of a run (CPU tensors).

    Nothing in the files can run code: the weights are safetensors and the state is
    unpickled with ``weights_only=True`` (plain tensors and containers only).

    Args:
        path: the run directory (or its ``checkpoints`` folder).

    Raises:
        CheckpointError: missing, truncated, corrupted (checksum), unsafe or non-finite
            files.
    """
    run_dir = require_run_dir(path)
    folder = run_dir / CKPT_DIR
    try:
        pointer = json.loads((folder / LATEST).read_text())
        stem, step = pointer["stem"], int(pointer["step"])
        sums = pointer.get("sha256", {})  # absent in checkpoints written before checksums
        if not (isinstance(stem, str) and stem == f"step_{step:07d}" and isinstance(sums, dict)):
            raise ValueError(f"unexpected entries {pointer!r}"[:200])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{str(folder / LATEST)!r} is corrupted ({e})") from None
    weights_path, state_path = folder / f"{stem}.safetensors", folder / f"{stem}.pt"
    try:
        weights = load_file(str(weights_path), device="cpu")
    except Exception as e:  # SafetensorError, OSError, or others on a crafted header
        raise CheckpointError(f"weights {str(weights_path)!r} are missing or corrupted "
                              f"({_first_line(e)})") from None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for truncated or unsafe files
        raise CheckpointError(f"state {str(state_path)!r} is truncated, corrupted or unsafe "
                              f"({_first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("step") != step \
            or not all(isinstance(state.get(k), dict) for k in REQUIRED):
        raise CheckpointError(f"state {str(state_path)!r} is not an {FORMAT} file of step {step} "
                              f"(with {', '.join(REQUIRED)})")
    for p in (weights_path, state_path):  # damage that still parses: a flipped bit
        if p.name in sums and _sha256(p) != sums[p.name]:
            raise CheckpointError(f"checkpoint file {str(p)!r} does not match its checksum in "
                                  f"{LATEST}: it is corrupted (or was replaced)")
    bad = _nonfinite(weights)
    if bad:
        raise CheckpointError(f"weights {str(weights_path)!r} hold NaN or Inf in "
                              f"{', '.join(bad[:5])}")
    return Checkpoint(weights=weights, state=state, run_dir=run_dir, step=step)


def _shape_mismatch(saved: dict[str, Tensor], model: nn.Module) -> str:
    """What differs between the checkpoint's tensors and ``model``'s, in a few words."""
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    shapes = [f"{k} is {tuple(saved[k].shape)} in the checkpoint, {tuple(v.shape)} here"
              for k, v in own.items() if k in saved and saved[k].shape != v.shape]
    parts = shapes[:2] + ([f"missing {', '.join(missing[:3])}"] if missing else []) \
        + ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
    return "; ".join(parts) or "the tensors differ"


def model_from_checkpoint(ck: Checkpoint, config: TrainConfig) -> EquilibriumLM:
    """Build the model of ``config`` and load the checkpoint's weights into it.

    Raises:
        CheckpointError: the weights are for another model shape (the message names
            the tensors that differ).
    """
    model = build_model(config.model)
    try:
        model.load_state_dict(ck.weights, strict=True)
    except RuntimeError:
        raise CheckpointError(f"checkpoint of {str(ck.run_dir)!r} is for another model "
                              f"({_shape_mismatch(ck.weights, model)}): the model settings "
                              "of a run cannot change; resume with its own") from None
    return model
