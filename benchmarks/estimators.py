"""Issue 3's comparison: one model, one step budget, trained with asymep, ep, ift and
bptt, two seeds each: validation CE curves, final values and steps/s.

    python benchmarks/estimators.py --out-dir benchmarks/results/estimators --steps 200

Everything else is ``eqprop train``'s defaults. Writes ``estimators.md`` and
``val_ce.png`` into ``--out-dir``; the runs go to ``--runs`` (default runs/estimators).
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import replace

import torch

from eqprop.train import TrainConfig, train
from eqprop.train.metrics import read_metrics

ESTIMATORS = ("asymep", "ep", "ift", "bptt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--runs", default="runs/estimators")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    results = []
    for name in ESTIMATORS:
        for seed in a.seeds:
            base = TrainConfig()
            cfg = replace(base, estimator=replace(base.estimator, name=name),
                          schedule=replace(base.schedule, steps=a.steps),
                          run=replace(base.run, name=f"{name}-s{seed}", out_dir=a.runs,
                                      seed=seed, device=a.device, progress=False,
                                      sample_tokens=0))
            summary = train(cfg)
            recs = read_metrics(summary.run_dir / "metrics.jsonl")
            val = [(r["step"], r["val_ce_ref"]) for r in recs if r.get("val_ce_ref") is not None]
            results.append(dict(name=name, seed=seed, summary=summary, val=val))
            print(f"{name} seed {seed}: val CE {summary.val_ce_ref:.4f}, "
                  f"{summary.steps / summary.wall_time:.2f} steps/s", flush=True)
    write(results, a)


def write(results: list[dict], a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and a.device != "cpu" \
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} thread)"
    s0 = results[0]["summary"]
    lines = [
        "# Estimators trained side by side (same model, same step budget)", "",
        f"Command: `python benchmarks/estimators.py --out-dir {a.out_dir} --steps {a.steps}`  ",
        f"Device: {dev}, torch {torch.__version__}. Model and solvers: `eqprop train` defaults "
        "(d_model 32, 4 heads, d_ff 64, 1 layer, T 32, batch 16, Euler ε 0.5 free tol 1e-4; "
        "nudged phases Euler ε 0.5 tol 1e-2 of the nudge; AsymEP/EP β 0.05; IFT GMRES tol 1e-6; "
        f"BPTT 20 steps), AdamW lr 1e-2, {a.steps} steps. Unigram entropy "
        f"{s0.unigram_entropy:.3f} nats. Val CE after the tight reference solve.", "",
        "| estimator | seed | val CE (ref. solve) | val CE (training solver) | train CE | "
        "free converged | free NFE | steps/s |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        lines.append(f"| {r['name']} | {r['seed']} | {s.val_ce_ref:.4f} | {s.val_ce:.4f} | "
                     f"{s.train_ce:.4f} | {100 * s.free_converged:.1f} % | {s.free_nfe:.1f} | "
                     f"{s.steps / s.wall_time:.2f} |")
    lines += ["", "steps/s were measured on a shared machine while other jobs ran: compare "
              "them as rough ratios only.", "", "![val CE](val_ce.png)", ""]
    with open(os.path.join(a.out_dir, "estimators.md"), "w") as fh:
        fh.write("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    colors = dict(zip(ESTIMATORS, ("tab:blue", "tab:orange", "tab:green", "tab:red"),
                      strict=True))
    for r in results:
        if r["val"]:
            ax.plot(*zip(*r["val"], strict=True), marker="o", color=colors[r["name"]],
                    ls="-" if r["seed"] == a.seeds[0] else "--",
                    label=f"{r['name']} seed {r['seed']}")
    ax.axhline(s0.unigram_entropy, color="gray", ls=":", label="unigram entropy")
    ax.set_xlabel("step")
    ax.set_ylabel("val CE (nats)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out_dir, "val_ce.png"), dpi=120)


if __name__ == "__main__":
    main()
