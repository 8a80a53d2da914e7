"""jacreg study (issue 6): train with jacreg off / fixed / adaptive, otherwise identical.

Each arm runs the same :class:`~eqprop.train.config.TrainConfig` (same seed, data,
model, solvers, estimator, schedule) through :class:`~eqprop.train.trainer.Trainer`;
only the penalty differs:

- ``off``: no penalty;
- ``fixed``: ``JacReg`` with a fixed weight;
- ``adaptive``: ``JacReg`` with an :class:`~eqprop.regularizers.AdaptiveWeight`, fed each
  step with the free phase's converged fraction and the latest ``1 - ε/ε_crit``
  (``TrainConfig.regularizer`` and ``.tracking``: the same hooks as ``eqprop train``).

Reported per arm: train CE at equal steps, final val CE, and on a fixed val batch
at the end: ε_crit (eigenvalue route), the critical mode's damping ratio ``-a/|μ|``,
the largest Re μ, ``‖J_n‖²_F/dim`` (the penalty itself, many probes) and the
continuous settling time of the ODE reference (a fine-step Euler if that is
missing). Writes ``benchmarks/results/jacreg/{table.md, results.json, jacreg_study.png}``.

Usage::

    python benchmarks/jacreg_study.py --steps 2000 --weight 0.05 --device auto
    python benchmarks/jacreg_study.py --quick          # a minute on CPU: smoke test

Which question it answers: which arm costs CE, and which changes the continuous
dynamics (settling time, damping) rather than only the Euler-specific ε_crit?
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

ARMS = ("off", "fixed", "adaptive")
OUT = Path(__file__).resolve().parent / "results" / "jacreg"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="training steps per arm")
    p.add_argument("--weight", type=float, default=0.05, help="fixed weight / adaptive start")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--track-every", type=int, default=50,
                   help="measure ε_crit every this many steps (feeds the adaptive weight)")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " +
                   ", ".join(ARMS))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--quick", action="store_true", help="tiny run: a smoke test of the script")
    return p.parse_args()


def base_config(args: argparse.Namespace):
    """The one config all arms share (defaults of TrainConfig, plus the study's steps)."""
    from eqprop.diagnostics.tracking import StabilityTracking
    from eqprop.train.config import TrainConfig

    cfg = TrainConfig()
    steps = 20 if args.quick else args.steps
    cfg = replace(cfg, schedule=replace(cfg.schedule, steps=steps,
                                        warmup=min(cfg.schedule.warmup, steps // 10)))
    return replace(cfg, tracking=StabilityTracking(every=args.track_every, samples=2),
                   run=replace(cfg.run, seed=args.seed, device=args.device,
                               out_dir=str(args.out / "runs"), progress=not args.quick,
                               ckpt_every=max(steps, 1)))


def settle(field, z0):
    """Continuous settling time per sample: ODE reference, else fine-step Euler (ε = 0.02)."""
    try:
        from eqprop.solvers.ode import settling_time
    except ImportError:
        settling_time = None
    if settling_time is not None:
        t, _ = settling_time(field, z0)
        return t, "ode"
    from eqprop import Euler, relax

    eps = 0.02
    sol = relax(field, z0, Euler(eps), tol=1e-5, max_steps=50_000)
    t = sol.steps.to(torch.float64) * eps
    return torch.where(sol.converged, t, torch.full_like(t, math.inf)), "euler(0.02)"


def final_measures(trainer, args) -> dict[str, float | str]:
    """ε_crit, damping, max Re μ, ‖J_n‖²_F/dim and settling time on a fixed val batch."""
    from eqprop import relax
    from eqprop.diagnostics import eps_crit
    from eqprop.regularizers import JacReg
    from eqprop.solvers.registry import build_solver

    model, cfg = trainer.model.eval(), trainer.cfg
    gen = torch.Generator().manual_seed(1234)
    tokens, targets = trainer.corpus.get_batch("val", 4 if args.quick else 16,
                                               cfg.model.seq_len, gen)
    dev = next(model.parameters()).device
    field = model.field(tokens.to(dev), targets.to(dev))
    sol = relax(field, field.initial_state(), build_solver(cfg.eval.reference),
                tol=cfg.eval.reference.tol, max_steps=cfg.eval.reference.max_steps)
    z = sol.z
    n_eig = 2 if args.quick else 8
    ec = eps_crit(model.field(tokens[:n_eig].to(dev), targets[:n_eig].to(dev)), z[:n_eig],
                  bisect=False)
    damping = ec.damping
    t_settle, how = settle(field, field.initial_state())
    jn = JacReg(n_probes=16).penalty(field, z, torch.Generator(device=dev).manual_seed(0))
    finite = torch.isfinite(t_settle)
    return {
        "ref_converged": float(sol.converged.float().mean()),
        "eps_crit_min": float(ec.eig.min()), "eps_crit_mean": float(ec.eig.mean()),
        "damping_min": float(damping.min()), "damping_mean": float(damping.mean()),
        "max_re": float(ec.max_real.max()), "jn_frob2_per_dim": float(jn.detach()),
        "settle_mean": float(t_settle[finite].mean()) if bool(finite.any()) else math.inf,
        "settle_unsettled": float((~finite).float().mean()), "settle_method": how,
    }


def run_arm(arm: str, args) -> dict:
    from eqprop.regularizers import RegularizerConfig
    from eqprop.train.trainer import Trainer

    cfg = base_config(args)
    reg = RegularizerConfig(name="none" if arm == "off" else "jacreg", weight=args.weight,
                            adaptive=arm == "adaptive")
    cfg = replace(cfg, regularizer=reg, run=replace(cfg.run, name=f"jacreg-{arm}-s{args.seed}"))
    t0 = time.perf_counter()
    trainer = Trainer(cfg)  # the penalty and ε_crit tracking come from the config
    summary = trainer.run()
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (summary.run_dir / "metrics.jsonl").open()]
    train = [r for r in records if "train_ce" in r]
    return {"arm": arm, "run_dir": str(summary.run_dir), "wall_s": wall,
            "val_ce": summary.val_ce, "train_ce": summary.train_ce,
            "curve": [(r["step"], r["train_ce"], r.get("reg_weight"), r.get("reg_value"))
                      for r in train],
            "final": final_measures(trainer, args)}


def ce_at(curve, step: int, window: int = 20) -> float:
    """Mean train CE over the ``window`` steps ending at ``step``."""
    vals = [ce for s, ce, *_ in curve if step - window < s <= step and math.isfinite(ce)]
    return sum(vals) / len(vals) if vals else math.nan


def write(results: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    steps = max(s for r in results for s, *_ in r["curve"])
    marks = sorted({max(1, steps // 4), steps // 2, steps})
    head = ["arm", *[f"CE@{m}" for m in marks], "val CE", "ε_crit min", "damping min",
            "max Re μ", "‖J_n‖²/dim", "settle t", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        f = r["final"]
        row = [r["arm"], *[f"{ce_at(r['curve'], m):.3f}" for m in marks],
               f"{r['val_ce']:.3f}" if r["val_ce"] is not None else "-",
               f"{f['eps_crit_min']:.3f}", f"{f['damping_min']:.3f}", f"{f['max_re']:.3f}",
               f"{f['jn_frob2_per_dim']:.4f}", f"{f['settle_mean']:.2f} ({f['settle_method']})",
               f"{r['wall_s']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(
        f"# jacreg off / fixed / adaptive\n\n`python benchmarks/jacreg_study.py --steps "
        f"{args.steps} --weight {args.weight} --seed {args.seed}`\n\n{table}\n")
    print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        s = [c[0] for c in r["curve"]]
        ce = [c[1] for c in r["curve"]]
        k = max(1, len(ce) // 100)  # light smoothing for readability
        sm = [sum(ce[max(0, i - k):i + 1]) / len(ce[max(0, i - k):i + 1]) for i in range(len(ce))]
        ax1.plot(s, sm, label=r["arm"])
        w = [(c[0], c[2]) for c in r["curve"] if c[2] is not None]
        if w:
            ax2.plot(*zip(*w, strict=True), label=r["arm"])
    ax1.set(xlabel="step", ylabel="train CE", title="CE at equal steps")
    ax2.set(xlabel="step", ylabel="jacreg weight", yscale="log", title="weight")
    for ax in (ax1, ax2):
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "jacreg_study.png", dpi=120)


def main() -> None:
    args = parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise SystemExit(f"--arms: unknown {bad}; allowed: {', '.join(ARMS)}")
    results = [run_arm(arm, args) for arm in arms]
    write(results, args)


if __name__ == "__main__":
    main()
