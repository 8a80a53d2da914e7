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

SECTIONS = ("base", "loop", "precision", "scaling", "large")
SCALING = {"seq_len": (128, 256, 512, 1024), "d_model": (256, 512, 1024, 2048),
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
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    a = p.parse_args()
    sections = a.sections.split(",")
    if bad := [x for x in sections if x not in SECTIONS]:
        p.error(f"--sections {','.join(bad)}: allowed values are {','.join(SECTIONS)}")
    os.makedirs(a.out_dir, exist_ok=True)
    # the policy chosen by the precision table, with the relaxations captured 16 steps a graph
    base = TrainBenchConfig(device=a.device, precision="tf32", nudge_precision="fp32",
                            check_every=16, capture=a.device == "cuda", warmup=1, repeats=3)
    # eager (host check every 16 steps) for the sweeps: each captured call records new graphs
    sweep = replace(base, capture=False, warmup=1, repeats=2)
    scaling = SCALING
    if a.quick:
        base = replace(base, d_model=32, n_heads=2, d_ff=64, seq_len=16, batch_size=4,
                       repeats=1, warmup=1)
        scaling = {"seq_len": (16, 32)}
    dev = torch.cuda.get_device_name() if a.device == "cuda" else "CPU"
    lines = [f"# Training-step benchmark ({dev})", "",
             f"Command: `python benchmarks/train_step.py --out-dir {a.out_dir}"
             f"{' --quick' if a.quick else ''} --sections {a.sections}`  ",
             f"torch {torch.__version__}. Base: d_model={base.d_model}, heads={base.n_heads}, "
             f"d_ff={base.d_ff}, layers={base.n_layers}, T={base.seq_len}, B={base.batch_size}; "
             f"Euler ε={base.eps}, free tol {base.free_tol} (≤{base.free_max_steps} steps), "
             f"AsymEP β={base.beta} nudge tol {base.nudge_tol} ({base.nudge_solver} unless "
             "named; the ±β phases relaxed as one batch of 2B unless named), "
             f"IFT tol {base.ift_tol}, "
             f"BPTT {base.bptt_steps} steps. Times are means of {base.repeats} steps after "
             f"{base.warmup} warm-up steps. TFLOP/s counts matmul FLOPs per F-equivalent "
             "evaluation (NFE).", ""]
    cols = ["kind", "step", "free", "gradient", "update", "nfe", "free_conv", "nudge_conv",
            "tokens_per_s", "tflops", "peak_frac", "peak_mem_gb"]
    results = {}

    def flush() -> None:  # rewrite the outputs after each section, so a timeout loses little
        with open(os.path.join(a.out_dir, "train_step.md"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        with open(os.path.join(a.out_dir, "train_step.json"), "w") as fh:
            json.dump(results, fh, indent=1)

    eager = replace(base, capture=False, check_every=1)
    modes = {"fp32": replace(eager, precision="fp32", nudge_precision=None),
             "tf32": replace(eager, precision="tf32", nudge_precision=None),
             "tf32 free, fp32 gradient": eager,
             "tf32 free, fp32 gradient, Anderson nudge": replace(eager, nudge_solver="anderson"),
             "tf32 free, fp32 gradient, Anderson nudge, ±β phases one after the other":
                 replace(eager, nudge_solver="anderson", batch_nudges=False),
             "tf32 free, fp32 gradient, CUDA graph of 16 steps": base,
             "tf32 free, fp32 gradient, Anderson nudge, nudge and GMRES tol 0.1":
                 replace(eager, nudge_solver="anderson", nudge_tol=0.1, ift_tol=0.1)}
    for mode, cfg in modes.items() if "base" in sections else ():
        if cfg.capture and a.device != "cuda":
            continue
        rows = bench_train_step(cfg)
        results[f"base_{mode}"] = rows
        lines += [f"## Step kinds at the base size, {mode}", ""] + fmt(rows, cols) + [""]
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
        flush()
    if "precision" in sections:
        prec = bench_precision(base)
        results["precision"] = prec
        lines += ["## Precision policy: AsymEP cosine vs an fp32 IFT reference", ""]
        lines += fmt(prec, ["free", "gradient", "cosine", "step", "nfe", "nudge_conv",
                            "tflops"]) + [""]
        print("\n".join(lines[-8:]), flush=True)
        flush()
    if "loop" in sections:
        section_loop(base, results, lines)
        flush()
    if "large" in sections:
        section_large(eager, results, lines, a.quick)
        flush()
    for dim, values in scaling.items() if "scaling" in sections else ():
        rows = []
        for v in values:
            cfg = replace(sweep, **{dim: v})
            try:
                for r in bench_train_step(cfg):
                    rows.append({dim: v, **r})
            except torch.OutOfMemoryError:
                print(f"{dim}={v}: out of memory")
                torch.cuda.empty_cache()
        results[f"scaling_{dim}"] = rows
        lines += [f"## Scaling with {dim} (tf32 free, fp32 gradient, check every 16)", ""]
        lines += fmt(rows, [dim, "kind", "step", "tokens_per_s", "tflops", "peak_mem_gb"]) + [""]
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
        flush()
        plot(results, scaling, a.out_dir)


def section_large(eager: TrainBenchConfig, results: dict, lines: list[str], quick: bool) -> None:
    """A large β lifts the nudge above TF32's round-off: the precision table again at β = 20,
    then d_model 2048, B 64 with the gradient phase in fp32 and in TF32 (TF32 peak vs fp32's),
    and the precision table at that size."""
    loose = replace(eager, beta=20.0, nudge_tol=0.1, ift_tol=0.1, nudge_solver="anderson")
    prec = bench_precision(loose)
    results["precision_beta20"] = prec
    lines += ["## Precision policy at β = 20 (Anderson nudge, nudge and GMRES tol 0.1)", ""]
    lines += fmt(prec, ["free", "gradient", "cosine", "step", "nfe", "nudge_conv", "tflops"])
    big = replace(loose, d_model=2048, n_heads=16, d_ff=8192, batch_size=64, repeats=2)
    if quick:
        big = replace(loose, d_model=64, n_heads=2, d_ff=128, batch_size=8, repeats=1)
    rows = []
    for grad in ("fp32", "tf32"):
        for r in bench_train_step(replace(big, nudge_precision=grad),
                                  kinds=("asymep", "ift", "standard")):
            rows.append({"grad_precision": grad, **r})
    results["large"] = rows
    lines += ["", f"## d_model {big.d_model}, d_ff {big.d_ff}, B {big.batch_size}: TF32 free "
              "phase, gradient phase fp32 or TF32 (β = 20, tol 0.1, Anderson nudge)", ""]
    lines += fmt(rows, ["grad_precision", "kind", "step", "free", "gradient", "nfe", "nudge_conv",
                        "tokens_per_s", "tflops", "peak_frac", "peak_mem_gb"]) + [""]
    prec = bench_precision(big)
    results["precision_large"] = prec
    lines += [f"## Precision policy at d_model {big.d_model}, B {big.batch_size} (β = 20, tol 0.1, "
              "Anderson nudge)", ""]
    lines += fmt(prec, ["free", "gradient", "cosine", "step", "nfe", "nudge_conv", "tflops"])
    lines += [""]
    print("\n".join(lines[-len(rows) - 28:]), flush=True)


def section_loop(base: TrainBenchConfig, results: dict, lines: list[str]) -> None:
    """The relaxation-loop launch-gap table."""
    loop = bench_relax_loop(base)
    results["relax_loop"] = loop
    lines += ["## Relaxation loop: wall time vs summed kernel time (64 and 128 free steps)", "",
              "`step_ms`: marginal wall per step, (wall(128) − wall(64))/64; `kernel_ms`: "
              "summed kernel time per step (profiled); `gap` = step_ms/kernel_ms (1 = no "
              "launch gaps); `call_ms`/`call_gap`: one 64-step call, warm-up and capture "
              "included.", ""]
    lines += fmt(loop, ["solver", "variant", "call_ms", "step_ms", "kernel_ms", "gap",
                        "call_gap"])
    lines += [""]
    print("\n".join(lines[-14:]), flush=True)


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
