"""Issues 3 and 5: a long run with fixed-ε Euler in both phases, tracking ε_crit.

    python benchmarks/wall.py --out-dir benchmarks/results/wall --steps 1000 --eps 0.1

Logs the free-phase residual floor, status fractions and (every ``--track-every``
steps) ε_crit, a and b of the critical mode; plots them against train CE and step.
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import replace

import torch

from eqprop.diagnostics.plots import plot_stability_history
from eqprop.diagnostics.tracking import StabilityTracking
from eqprop.solvers import Euler
from eqprop.solvers.registry import SolverConfig
from eqprop.train import TrainConfig, train
from eqprop.train.metrics import read_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--runs", default="runs/wall")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--track-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    base = TrainConfig()
    steps_free = int(30 / a.eps)  # enough Euler steps to contract ~e^-15 on a unit-rate mode
    cfg = replace(
        base,
        solver=SolverConfig(name="euler", euler=Euler(a.eps), tol=1e-4, max_steps=steps_free),
        estimator=replace(base.estimator, nudge=SolverConfig(
            name="euler", euler=Euler(a.eps), tol=1e-2, max_steps=steps_free // 2)),
        optim=replace(base.optim, lr=a.lr),
        schedule=replace(base.schedule, steps=a.steps, warmup=min(50, a.steps // 10)),
        eval=replace(base.eval, every=max(a.steps // 10, 1)),
        tracking=StabilityTracking(every=a.track_every, samples=2),
        run=replace(base.run, name=f"wall-eps{a.eps:g}-s{a.seed}", out_dir=a.runs, seed=a.seed,
                    device=a.device, progress=False, ckpt_every=100),
    )
    summary = train(cfg)
    recs = [r for r in read_metrics(summary.run_dir / "metrics.jsonl") if "event" not in r]
    plot_stability_history(recs, os.path.join(a.out_dir, "eps_crit_vs_ce.png"), x="train_ce",
                           eps=a.eps)
    plot_stability_history(recs, os.path.join(a.out_dir, "eps_crit_vs_step.png"), eps=a.eps)
    plot_relaxation(recs, a, os.path.join(a.out_dir, "relaxation.png"))
    tracked = [r for r in recs if "eps_crit_min" in r]
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and a.device != "cpu" \
        else f"CPU ({platform.machine()})"
    lines = [
        f"# Fixed-ε Euler (ε = {a.eps:g}) in both phases, {a.steps} steps", "",
        f"Command: `python benchmarks/wall.py --out-dir {a.out_dir} --steps {a.steps} "
        f"--eps {a.eps:g} --lr {a.lr:g} --track-every {a.track_every} --seed {a.seed}`  ",
        f"Device: {dev}, torch {torch.__version__}. Model: `eqprop train` defaults; free phase "
        f"≤ {steps_free} steps to tol 1e-4, nudged ≤ {steps_free // 2} steps. ε_crit, a, b: "
        "of the critical mode (the one that sets ε_crit), min over 2 samples of the batch.",
        "", f"Final: train CE {summary.train_ce:.4f}, val CE {summary.val_ce:.4f} (ref. solve "
        f"{summary.val_ce_ref:.4f}), unigram {summary.unigram_entropy:.3f}; free phase "
        f"{100 * summary.free_converged:.1f} % converged, mean NFE {summary.free_nfe:.1f}; "
        f"{summary.steps / summary.wall_time:.2f} steps/s.", "",
        "| step | train CE | free max g | converged | cycling | diverged | ε_crit | a | b |"
        " max Re μ |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in tracked:
        sf = r.get("status_frac") or {}
        lines.append(f"| {r['step']} | {r['train_ce']:.3f} | {r['res_max']:.2e} | "
                     f"{sf.get('converged', 0):.2f} | {sf.get('cycling', 0):.2f} | "
                     f"{sf.get('diverged', 0):.2f} | {r['eps_crit_min']:.4f} | "
                     f"{r['crit_a']:.3f} | {r['crit_b']:.3f} | {r['max_re']:.3f} |")
    lines += ["", "![ε_crit vs CE](eps_crit_vs_ce.png)", "", "![relaxation](relaxation.png)", ""]
    with open(os.path.join(a.out_dir, "wall.md"), "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


def plot_relaxation(recs: list[dict], a: argparse.Namespace, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in recs]
    fig, axes = plt.subplots(3, 1, figsize=(6.4, 7.2), sharex=True)
    axes[0].plot(steps, [r["train_ce"] for r in recs], lw=0.8)
    axes[0].set_ylabel("train CE")
    axes[1].semilogy(steps, [r["res_max"] or float("nan") for r in recs], lw=0.8, label="max g")
    axes[1].semilogy(steps, [r["res_mean"] or float("nan") for r in recs], lw=0.8,
                     label="mean g")
    axes[1].axhline(1e-4, color="k", ls=":", label="tol")
    axes[1].set_ylabel("free residual floor")
    axes[1].legend(fontsize=8)
    for label in ("converged", "contracting", "cycling", "diverged"):
        axes[2].plot(steps, [(r.get("status_frac") or {}).get(label, 0) for r in recs], lw=0.8,
                     label=label)
    axes[2].set_ylabel("status fraction")
    axes[2].set_xlabel("step")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Euler ε = {a.eps:g} in both phases")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
