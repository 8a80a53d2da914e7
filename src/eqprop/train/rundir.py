"""Run directories: a new one per run, never an existing one (except on resume).

Before training starts, :func:`check_writable` proves that the run directory takes
a file and has room for the checkpoints, so that an unwritable or full disk is a
clear error at the start, not a crash hours later.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from torch import nn

from ..errors import ConfigError, StorageError
from .config import RunConfig, TrainConfig
from .configio import save_config

__all__ = ["CONFIG_FILE", "METRICS_FILE", "PLOTS_DIR", "SAMPLES_FILE", "SUMMARY_FILE",
           "check_writable", "new_run_dir", "open_run_dir"]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
PLOTS_DIR = "plots"
SAMPLES_FILE = "samples.txt"
SUMMARY_FILE = "summary.json"


def new_run_dir(cfg: RunConfig) -> Path:
    """Create the run directory ``out_dir/name``.

    Without a name it is the current time (``YYYYmmdd-HHMMSS``), numbered
    ``-2``, ``-3``, ... when that exists already.

    Raises:
        ConfigError: a named run directory exists already.
        StorageError: the folder cannot be created (permissions, a file in the way,
            a read-only or full disk).
    """
    parent = Path(cfg.out_dir)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if cfg.name is not None:
            path = parent / cfg.name
            try:
                path.mkdir()
            except FileExistsError:
                raise ConfigError(f"run directory {str(path)!r} exists already: choose another "
                                  f"--run.name, or continue it with --resume {path}") from None
            return path
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(1, 10_000):
            path = parent / (stamp if i == 1 else f"{stamp}-{i}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise StorageError(f"cannot create a run directory under {str(parent)!r} "
                           f"({e.strerror or e}): choose a writable --run.out-dir") from None
    raise ConfigError(f"cannot find a free run directory name under {str(parent)!r}")


def check_writable(run_dir: str | Path, model: nn.Module | None = None) -> None:
    """Prove that ``run_dir`` takes a new file and has room for two checkpoints of
    ``model`` (weights and AdamW's two moments each: the old one stays until the new
    one is complete).

    Raises:
        StorageError: it cannot be written, or the disk has less room than needed.
    """
    d = Path(run_dir)
    params = 0 if model is None else sum(p.numel() * p.element_size()
                                         for p in model.parameters())
    need_bytes = 6 * params + 2**20
    probe = d / ".eqprop-write-test"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
        free = shutil.disk_usage(d).free
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise StorageError(f"run directory {str(d)!r} is not writable ({e.strerror or e}): "
                           "fix its permissions or choose another --run.out-dir") from None
    if free < need_bytes:
        raise StorageError(f"run directory {str(d)!r} has {free / 2**20:.1f} MiB free, "
                           f"checkpoints need about {need_bytes / 2**20:.1f} MiB: free some "
                           "space or choose another --run.out-dir")


def open_run_dir(run_dir: str | Path, cfg: TrainConfig, model: nn.Module | None = None) -> None:
    """Before training: :func:`check_writable`, then write the resolved config.

    Raises:
        StorageError: the directory cannot be written or has too little room.
    """
    check_writable(run_dir, model)
    try:
        save_config(cfg, Path(run_dir) / CONFIG_FILE)
    except OSError as e:
        raise StorageError(f"cannot write {str(Path(run_dir) / CONFIG_FILE)!r} "
                           f"({e.strerror or e}): free some space or fix the permissions"
                           ) from None
