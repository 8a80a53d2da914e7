"""Run directories: a new one per run, never an existing one (except on resume)."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import ConfigError
from .config import RunConfig

__all__ = ["CONFIG_FILE", "METRICS_FILE", "PLOTS_DIR", "SAMPLES_FILE", "SUMMARY_FILE",
           "new_run_dir"]

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
    """
    parent = Path(cfg.out_dir)
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
    raise ConfigError(f"cannot find a free run directory name under {str(parent)!r}")
