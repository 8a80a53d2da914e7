"""One evaluation of the study-size field F, eager against ``torch.compile``, launched one by one
and replayed in a CUDA graph.

    python benchmarks/field_compile.py --config configs/study.toml \\
        --out benchmarks/results/field_compile_h200.md [--steps 32] [--repeats 20]

Times ``--steps`` explicit Euler steps ``z <- z + ε F(z)`` of the model that ``eqprop train
--config`` builds, at a batch of the corpus, in four ways: ``eager`` (PyTorch kernels, one
launch each), ``compiled`` (``torch.compile`` of the force, Inductor's fused Triton kernels,
``--mode``), and each of them recorded once as a CUDA graph of the ``--steps`` steps and
replayed (what the relaxation objects do). Reports ms per F (median over ``--repeats``
replays / loops), the kernels one F launches (profiled), the largest difference of the
compiled force from the eager one (float32 fusion reorders sums), and the one-time compile
cost. A CUDA device is needed for the graph rows; on CPU they are left out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from eqprop.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is no package
from study_step import bench_config, median_ms, sync  # noqa: E402


def _kernels(fn, z: torch.Tensor) -> int | None:
    """GPU kernels one call of ``fn(z)`` launches (None on CPU)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    if z.device.type != "cuda":
        return None
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(z)
        sync(z.device)
    return sum(e.count for e in prof.key_averages() if e.device_type == DeviceType.CUDA)


def measure(force, z0: torch.Tensor, eps: float, steps: int, repeats: int,
            graph: bool) -> float:
    """ms per F of ``steps`` Euler steps with ``force``, launched or replayed as one graph."""
    dev = z0.device
    z = z0.clone()

    def loop() -> None:
        y = z
        for _ in range(steps):
            y = y + eps * force(y)
        z.copy_(y)

    with torch.no_grad():
        for _ in range(3):  # warm-up: allocator, autotuning, lazy init
            z.copy_(z0)
            loop()
        if not graph:
            return median_ms(loop, dev, repeats) / steps
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            loop()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            loop()
        return median_ms(g.replay, dev, repeats) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/study.toml")
    p.add_argument("--out", required=True, help="markdown file")
    p.add_argument("--steps", type=int, default=32, help="Euler steps per loop / graph")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--mode", default="default",
                   choices=("default", "max-autotune-no-cudagraphs"),
                   help="torch.compile mode (its own CUDA graphs would not nest in ours)")
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    for name in ("steps", "repeats"):
        if getattr(a, name) < 1:
            p.error(f"--{name} {getattr(a, name)}: must be ≥ 1")
    out = Path(a.out)
    cfg = bench_config(a.config, out, a.device)
    tr = Trainer(cfg)
    dev, model = tr.device, tr.model
    B, T = cfg.data.batch_size, cfg.model.seq_len
    tokens, targets = (t.to(dev) for t in tr.corpus.get_batch(
        "train", B, T, torch.Generator().manual_seed(cfg.run.seed)))
    field = model.field(tokens, targets)
    x, explicit = field.x, not cfg.model.fused_attention
    z0 = model.initial_state(x)

    def eager(z):
        return model.force(z, x, explicit)

    t0 = time.perf_counter()
    compiled = torch.compile(eager, mode=a.mode, dynamic=False)
    with torch.no_grad():
        ref, got = eager(z0), compiled(z0)
        sync(dev)
    compile_s = time.perf_counter() - t0
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    with torch.no_grad():
        kernels = {"eager": _kernels(eager, z0), "compiled": _kernels(compiled, z0)}
    rows = []
    for name, f in (("eager", eager), ("compiled", compiled)):
        for graph in ((False, True) if dev.type == "cuda" else (False,)):
            rows.append((name + (", CUDA graph" if graph else ", launched"),
                         measure(f, z0, a.eps, a.steps, a.repeats, graph), kernels[name]))
    base = rows[0][1]
    devname = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    m = cfg.model
    lines = [f"# One evaluation of the study-size field F ({devname}, torch {torch.__version__})",
             "", f"`python benchmarks/field_compile.py --config {a.config} --out {a.out} "
             f"--steps {a.steps} --repeats {a.repeats} --mode {a.mode}`", "",
             f"d_model {m.d_model}, {m.n_heads} heads, d_ff {m.d_ff}, {m.n_layers} layer(s), "
             f"T {m.seq_len}, batch {B}, fp32, fused attention {m.fused_attention}; "
             f"{a.steps} Euler steps (ε {a.eps}) per loop or graph, median of {a.repeats}. "
             f"`torch.compile` (mode {a.mode}) took {compile_s:.1f} s once; its force "
             f"differs from the eager one by {err:.1e} (max, relative to max |F|).", "",
             "| F | ms per F | × eager launched | kernels per F |", "|---|---|---|---|"]
    lines += [f"| {n} | {ms:.3f} | {ms / base:.2f} | {'—' if k is None else k} |"
              for n, ms, k in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
