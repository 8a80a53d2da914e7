"""Data-parallel training under ``torchrun``: process group, gradient averaging, rank-0 I/O.

``torchrun --nproc_per_node=N -m eqprop train ...`` starts N processes (ranks). Each
rank holds a full copy of the model, draws its own batches of ``data.batch_size``
sequences from a rank-specific generator (so one update sees ``N × data.batch_size``
sequences), relaxes and estimates on them, and the ranks average their gradients
before the (identical) AdamW update. Only rank 0 writes the run directory.

Why an explicit all-reduce and not ``DistributedDataParallel(model)``: DDP
all-reduces in autograd hooks that it arms in ``DDP.forward``; the relaxation and
every estimator call the model's submodules directly (``model.field(...)``, JVPs and
VJPs by ``torch.func``), never ``DDP.forward``, so a wrapped model would reduce
nothing. Averaging the ``.grad`` that ``surrogate.backward()`` filled (design §3)
works for every estimator and penalty unchanged. DDP's one advantage, overlapping
the reduction with the backward pass, buys almost nothing here: a step spends its
time in the tens to hundreds of field evaluations of the relaxations, and one
backward of the surrogate plus one bucketed all-reduce of the gradient is a small
part of it.

Every decision that could differ between ranks is made from reduced values, so
the ranks never diverge: the gradient (hence its norm and clipping), the
"non-finite: skip" flag, the adaptive regularizer's inputs.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError
from .metrics import MetricsLog

__all__ = ["DistContext", "NullMetricsLog", "init_distributed", "is_main_process", "rank_seed",
           "resolve_device"]

T = TypeVar("T")

#: gradient buckets of at most this many MiB are flattened and reduced in one call
BUCKET_MB = 25.0
#: golden-ratio increment: rank seeds far apart from the seeds of neighbouring runs
_SEED_STRIDE = 0x9E3779B97F4A7C15


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s random streams; rank 0 keeps ``seed`` (a 1-process run).

    Args:
        seed: the run's seed (``run.seed``).
        rank: the process rank.

    Returns:
        A non-negative 63-bit seed, distinct for every rank.
    """
    return (seed + rank * _SEED_STRIDE) % 2**63


def is_main_process() -> bool:
    """True on rank 0 (or outside ``torchrun``); readable after the group is closed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


class NullMetricsLog(MetricsLog):
    """The metrics log of ranks other than 0: writes nothing, reads nothing."""

    def __init__(self) -> None:
        super().__init__(os.devnull)

    def append(self, record: dict[str, Any]) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def read(self) -> list[dict[str, Any]]:
        return []


@dataclass
class DistContext:
    """This process's place among the ranks; every method is a no-op for one process.

    Attributes:
        rank: global rank (0 writes the run directory).
        world_size: number of ranks.
        local_rank: rank on this host (picks the GPU).
        device: the rank's device under ``torchrun`` (``cuda:LOCAL_RANK`` or CPU);
            None for one process (the trainer resolves ``run.device`` itself).
        owns_group: this context created the process group (and :meth:`close` ends it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    owns_group: bool = False

    @property
    def active(self) -> bool:
        """Several ranks: collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: logs, plots, checkpoints, samples."""
        return self.rank == 0

    def describe(self, batch_size: int) -> str:
        """`` (N processes, global batch N×B)`` under ``torchrun``; empty for one process."""
        if not self.active:
            return ""
        return f" ({self.world_size} processes, global batch {self.world_size * batch_size})"

    @property
    def _comm_device(self) -> torch.device:
        # NCCL reduces GPU tensors only; gloo takes CPU tensors
        if self.device is not None and self.device.type == "cuda":
            return self.device
        return torch.device("cpu")

    # -- seeding and initial state --------------------------------------------
    def rank_seed(self, seed: int) -> int:
        """This rank's seed for its data stream and torch RNG (see :func:`rank_seed`)."""
        return rank_seed(seed, self.rank)

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (identical initial weights)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def on_main(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` on rank 0 only and give its result (or its error) to every rank.

        Args:
            fn: e.g. creating the run directory.

        Returns:
            ``fn()``'s value, on every rank.

        Raises:
            Whatever ``fn`` raised on rank 0, on every rank (no rank is left waiting).
        """
        if not self.active:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box = [("ok", fn())]
            except Exception as e:  # re-raised below, after the others have heard of it
                box = [("error", e)]
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    # -- one step -------------------------------------------------------------
    def average_gradients(self, params: Iterable[Tensor], bucket_mb: float = BUCKET_MB) -> None:
        """Replace every ``.grad`` by its mean over the ranks, in flattened buckets.

        A parameter without a gradient on some rank counts as a zero there; it gets a
        ``.grad`` when any rank had one and keeps None when none had (as in one process).

        Args:
            params: the model's parameters (after ``surrogate.backward()``).
            bucket_mb: largest bucket flattened into one all-reduce.
        """
        if not self.active:
            return
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        had = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                           device=self._comm_device)  # (P,) how many ranks had a grad
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        tensors = grads + [had]
        cap = int(bucket_mb * 2**20)
        bucket: list[Tensor] = []
        size = 0
        for t in tensors:
            if bucket and (t.dtype != bucket[0].dtype or t.device != bucket[0].device or
                           size + t.numel() * t.element_size() > cap):
                self._reduce_bucket(bucket)
                bucket, size = [], 0
            bucket.append(t)
            size += t.numel() * t.element_size()
        self._reduce_bucket(bucket)
        for p, g, n in zip(params, grads, had.tolist(), strict=True):
            g.div_(self.world_size)
            if n > 0 and p.grad is None:
                p.grad = g

    def _reduce_bucket(self, bucket: list[Tensor]) -> None:
        flat = torch.cat([t.reshape(-1) for t in bucket])  # one call per bucket
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # SUM: gloo has no AVG
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def _reduce(self, values: list[float], op: dist.ReduceOp) -> list[float]:
        if not self.active or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def all_true(self, flag: bool) -> bool:
        """``flag`` and-ed over the ranks: e.g. "this step is finite" (skip on every rank
        when one rank saw NaN/Inf)."""
        return bool(self._reduce([1.0 if flag else 0.0], dist.ReduceOp.MIN)[0] > 0.5)

    def mean(self, x: float) -> float:
        """``x`` averaged over the ranks (NaN when any rank has NaN)."""
        return self._reduce([x], dist.ReduceOp.SUM)[0] / self.world_size

    def min(self, x: float) -> float:
        """The smallest ``x`` over the ranks; NaN only when every rank has NaN."""
        nan = math.isnan(x)
        v, all_nan = self._reduce([math.inf if nan else x, float(nan)], dist.ReduceOp.MIN)
        return math.nan if all_nan > 0.5 else v

    def sum_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """Per-label counts summed over the ranks: the global batch's (same labels on every
        rank, e.g. :meth:`Solution.counts`)."""
        labels = sorted(counts)
        summed = self._reduce([float(counts[k]) for k in labels], dist.ReduceOp.SUM)
        return {k: int(round(v)) for k, v in zip(labels, summed, strict=True)}

    def reduce_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A step's metrics over the whole global batch (the record of one process's step
        on the concatenated batch): ``train_ce``, ``penalty``, ``res_mean``, ``nfe`` means,
        ``res_max`` max, ``status``/``nudge_status`` counts and ``dropped`` summed,
        ``status_frac`` redone.

        Args:
            record: this rank's record (every rank has the same keys).

        Returns:
            The reduced record (the same object, updated); other keys are left as they are.
        """
        if not self.active:
            return record
        means = [k for k in ("train_ce", "penalty", "res_mean", "nfe_total") if k in record]
        totals = [k for k in ("dropped",) if k in record]
        phases = sorted(record.get("nfe", {}))
        counts = [(k, label) for k in ("status", "nudge_status") if k in record
                  for label in sorted(record[k])]
        summed = iter(self._reduce([float(record[k]) for k in means + totals] +
                                   [float(record["nfe"][p]) for p in phases] +
                                   [float(record[k][label]) for k, label in counts],
                                   dist.ReduceOp.SUM))
        for k in means:
            record[k] = next(summed) / self.world_size
        for k in totals:
            record[k] = int(round(next(summed)))
        for p in phases:
            record["nfe"][p] = next(summed) / self.world_size
        for k, label in counts:
            record[k][label] = int(round(next(summed)))
        if "res_max" in record:
            record["res_max"] = self._reduce([float(record["res_max"])], dist.ReduceOp.MAX)[0]
        if "status" in record:
            total = sum(record["status"].values())
            record["status_frac"] = {k: v / total for k, v in record["status"].items()}
        return record

    # -- checkpoints ----------------------------------------------------------
    def gather_rng(self, rng: dict[str, Any]) -> dict[str, Any]:
        """The RNG states of a checkpoint: rank 0's at the top level (as one process
        writes them) and every rank's under ``"ranks"`` (for an exact resume)."""
        if not self.active:
            return rng
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, rng)
        return {**states[0], "ranks": states}

    def local_rng(self, rng: dict[str, Any], seed: int, step: int) -> dict[str, Any]:
        """This rank's RNG states from a checkpoint's (see :meth:`gather_rng`).

        A checkpoint written by another number of ranks cannot be continued exactly:
        rank 0 takes the top-level state and the other ranks start fresh streams seeded
        from ``(seed + step, rank)``; rank 0 says so on stderr.

        Args:
            rng: the checkpoint's ``rng`` entry.
            seed: the run's seed.
            step: the checkpoint's step.

        Returns:
            ``{"torch": ..., "data": ...}`` (and ``"cuda"`` when saved) for this rank.
        """
        ranks = rng.get("ranks")
        if not self.active:
            if isinstance(ranks, list) and len(ranks) > 1:
                print(f"eqprop train: the checkpoint was written by {len(ranks)} processes, "
                      "this run has 1: it continues rank 0's batches only", file=sys.stderr)
            return rng
        if isinstance(ranks, list) and len(ranks) == self.world_size:
            return ranks[self.rank]
        if self.is_main:
            written = len(ranks) if isinstance(ranks, list) else 1
            print(f"eqprop train: the checkpoint was written by {written} process(es), this "
                  f"run has {self.world_size}: ranks > 0 draw fresh batches, so the resumed "
                  "run is not an exact continuation", file=sys.stderr)
            return rng
        g = torch.Generator().manual_seed(rank_seed(seed + step, self.rank))
        return {"torch": g.get_state(), "data": g.get_state()}

    def metrics_log(self, path: Path) -> MetricsLog:
        """``metrics.jsonl`` on rank 0; a log that drops everything on the other ranks."""
        return MetricsLog(path) if self.is_main else NullMetricsLog()

    def close(self) -> None:
        """End the process group if this context started it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _rank_device(name: str, local_rank: int) -> torch.device:
    if name.startswith("cuda:"):
        raise ConfigError(f"run.device={name!r} under torchrun: each process uses "
                          "cuda:LOCAL_RANK; give run.device auto, cuda or cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"run.device={name!r} but CUDA is not available: use auto or cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} "
                          "GPU(s) are visible: start at most that many processes per node")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group described by the environment, if any.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``)
    as ``torchrun`` sets them. With more than one rank it starts the process group —
    NCCL on ``cuda:LOCAL_RANK``, gloo on CPU — unless one is running already (then it
    is reused and left open).

    Args:
        device: ``run.device``: ``auto`` (CUDA when available), ``cuda`` or ``cpu``.

    Returns:
        A :class:`DistContext`; a one-process one when ``WORLD_SIZE`` is unset or 1.

    Raises:
        ConfigError: ``cuda:N`` or CUDA asked for and absent, more ranks than GPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _rank_device(device, local_rank)
    if dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=local_rank, device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # object collectives and NCCL use the current device
        dist.init_process_group("nccl", init_method="env://", device_id=dev)
    else:
        dist.init_process_group("gloo", init_method="env://")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev,
                       owns_group=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; other names as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name!r} but CUDA is not available: use auto or cpu")
    return torch.device(name)
