"""Issue 7's measurements: training-step kinds side by side, precision, scaling, launch gaps.

    python benchmarks/train_step.py --out-dir benchmarks/results/train_step

Writes ``train_step.md`` and scaling plots into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace

import torch

from eqprop.bench.train_step import (
    TrainBenchConfig,
    bench_precision,
    bench_relax_loop,
    bench_train_step,
)

SCALING = {"seq_len": (128, 256, 512, 1024), "d_model": (256, 512, 1024),
           "batch_size": (8, 16, 32, 64), "n_layers": (1, 2, 4)}


def fmt(rows: list[dict], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke run)")
    a = p.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    base = TrainBenchConfig(device=a.device)
    scaling = SCALING
    if a.quick:
        base = replace(base, d_model=32, n_heads=2, d_ff=64, seq_len=16, batch_size=4,
                       repeats=1, warmup=1)
        scaling = {"seq_len": (16, 32)}
    dev = torch.cuda.get_device_name() if a.device == "cuda" else "CPU"
    lines = [f"# Training-step benchmark ({dev})", "",
             f"Command: `python benchmarks/train_step.py --out-dir {a.out_dir}"
             f"{' --quick' if a.quick else ''}`  ",
             f"torch {torch.__version__}. Base: d_model={base.d_model}, heads={base.n_heads}, "
             f"d_ff={base.d_ff}, layers={base.n_layers}, T={base.seq_len}, B={base.batch_size}; "
             f"Euler ε={base.eps}, free tol {base.free_tol} (≤{base.free_max_steps} steps), "
             f"AsymEP β={base.beta} nudge tol {base.nudge_tol}, IFT tol {base.ift_tol}, "
             f"BPTT {base.bptt_steps} steps. Times are means of {base.repeats} steps after "
             f"{base.warmup} warm-up steps. TFLOP/s counts matmul FLOPs per F-equivalent "
             "evaluation (NFE).", ""]
    cols = ["kind", "step", "free", "gradient", "update", "nfe", "tokens_per_s", "tflops",
            "peak_frac", "peak_mem_gb"]
    results = {}

    def flush() -> None:  # rewrite the outputs after each section, so a timeout loses little
        with open(os.path.join(a.out_dir, "train_step.md"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        with open(os.path.join(a.out_dir, "train_step.json"), "w") as fh:
            json.dump(results, fh, indent=1)

    for precision in ("tf32", "bf16"):
        rows = bench_train_step(replace(base, precision=precision))
        results[f"base_{precision}"] = rows
        lines += [f"## Step kinds at the base size, {precision}", ""] + fmt(rows, cols) + [""]
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
        flush()
    prec = bench_precision(base)
    results["precision"] = prec
    lines += ["## Precision policy: AsymEP cosine vs an fp32 IFT reference", ""]
    lines += fmt(prec, ["precision", "cosine", "step", "tflops"]) + [""]
    print("\n".join(lines[-8:]), flush=True)
    flush()
    loop = bench_relax_loop(base)
    results["relax_loop"] = loop
    lines += ["## Relaxation loop: wall time vs summed kernel time (50 Euler steps)", ""]
    lines += fmt(loop, ["variant", "check_every", "wall_s", "kernel_s", "ratio", "ms_per_step"])
    lines += [""]
    print("\n".join(lines[-8:]), flush=True)
    flush()
    for dim, values in scaling.items():
        rows = []
        for v in values:
            cfg = replace(base, **{dim: v})
            try:
                for r in bench_train_step(cfg):
                    rows.append({dim: v, **r})
            except torch.OutOfMemoryError:
                print(f"{dim}={v}: out of memory")
                torch.cuda.empty_cache()
        results[f"scaling_{dim}"] = rows
        lines += [f"## Scaling with {dim} (tf32)", ""]
        lines += fmt(rows, [dim, "kind", "step", "tokens_per_s", "tflops", "peak_mem_gb"]) + [""]
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
        flush()
        plot(results, scaling, a.out_dir)


def plot(results: dict, scaling: dict, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scaling), figsize=(4 * len(scaling), 3.4), squeeze=False)
    for ax, dim in zip(axes[0], scaling, strict=True):
        rows = results.get(f"scaling_{dim}", [])
        for kind in ("asymep", "ift", "bptt", "standard"):
            pts = [(r[dim], r["tokens_per_s"]) for r in rows if r["kind"] == kind]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(dim)
        ax.set_ylabel("tokens/s")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "scaling.png"), dpi=120)


if __name__ == "__main__":
    main()
