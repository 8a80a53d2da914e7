"""Run directories: a new one per run, never an existing one (except on resume).

Before training starts, :func:`check_writable` proves that the run directory takes
a file and has room for the checkpoints, so that an unwritable or full disk is a
clear error at the start, not a crash hours later. :class:`RunLock` keeps a second
process out of a run directory that one is training in (``fcntl.flock`` on
``.lock``: the kernel drops it when its process ends, even by ``kill -9``, so a lock
is never stale). An existing but empty folder (a run killed before it wrote
anything) may be used again under its name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from torch import nn

from ..errors import ConfigError, StorageError
from .config import RunConfig, TrainConfig
from .configio import save_config

__all__ = ["CONFIG_FILE", "LOCK_FILE", "METRICS_FILE", "PLOTS_DIR", "SAMPLES_FILE",
           "SUMMARY_FILE", "RunLock", "check_writable", "new_run_dir", "open_run_dir"]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
PLOTS_DIR = "plots"
SAMPLES_FILE = "samples.txt"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"


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
                if path.is_dir() and not any(p.name != LOCK_FILE for p in path.iterdir()):
                    return path  # empty: a run killed before it wrote anything
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


class RunLock:
    """An exclusive lock on a run directory, held while one process trains in it.

    Args:
        run_dir: the run directory.

    Raises:
        ConfigError: another process holds it (the message names that process).
        StorageError: the lock file cannot be created.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"cannot create the lock file {str(self.path)!r} "
                               f"({e.strerror or e}): fix the permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"run directory {str(Path(run_dir))!r} is in use by {holder}: "
                              "wait until it ends, or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Give the lock up (also done by the kernel when the process ends)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
