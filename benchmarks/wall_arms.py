"""Arms of ``eqprop train`` side by side on one GPU, and their report: does training get
past the wall?

    # run: every arm is its own process (they share the GPU by time slices); an arm whose
    # run directory exists is resumed (chain calls with checkpoints)
    python benchmarks/wall_arms.py run --out-dir runs/wall --time-limit 450 \\
        --common "--config configs/study.toml --schedule.steps 2000" \\
        --arm "jac_s0=--regularizer.name jacreg --run.seed 0" ...
    # report: a markdown table and a figure from the arms' metrics.jsonl
    python benchmarks/wall_arms.py report --out benchmarks/results/past_the_wall_h200/README.md \\
        runs/wall/jac_s0/metrics.jsonl ...

The table gives, per arm: steps reached, train CE (mean of the last ``--tail`` logged
steps, 50 by default), the last validation CE after the reference solve, the smallest
converged fraction of the free relaxations over the logged steps and the step where it
first fell below 99 % and below 50 % (the wall) with the train CE there, the largest
leading ``Re μ`` measured at z* (the free phase's stability check, else the penalty's or
the controller's estimate), skipped updates and the penalty weight at the end. With
``--relaxation`` it adds the free phase's mean NFE and the nudged phases' converged
fraction (both over the same tail) and a panel of the free NFE.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def _read(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line
            pass
    return out


def _without_config(args: list[str]) -> list[str]:
    """``args`` less ``--config FILE`` (a resumed run keeps its saved config)."""
    out, skip = [], False
    for x in args:
        if skip:
            skip = False
        elif x == "--config":
            skip = True
        elif not x.startswith("--config="):
            out.append(x)
    return out


def run(a: argparse.Namespace) -> None:
    out = Path(a.out_dir)
    procs = []
    for spec in a.arm:
        name, _, flags = spec.partition("=")
        rd = out / name
        common = shlex.split(a.common)
        if (rd / "checkpoints").exists():  # resumed: its saved config, the flags on top
            args = ["--resume", str(rd)]
            common = _without_config(common)
        else:
            args = ["--run.out-dir", str(out), "--run.name", name]
        cmd = [sys.executable, "-m", "eqprop", "train", *common, *shlex.split(flags), *args,
               "--run.no-progress"]
        out.mkdir(parents=True, exist_ok=True)
        log = (out / f"{name}.log").open("a")
        procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
    t0 = time.time()
    while any(p.poll() is None for _, p in procs):
        if a.time_limit and time.time() - t0 > a.time_limit:
            for _, p in procs:  # SIGINT: a run checkpoints at a step boundary where it can
                if p.poll() is None:
                    p.send_signal(2)
            for _, p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
            break
        time.sleep(5)
    for name, p in procs:
        print(f"{name}: exit {p.returncode}")


def _lead(r: dict) -> float | None:
    """The leading Re μ a step measured: the free phase's stability check (every sample),
    else the penalty's (``reg_lead_re``), else the controller's."""
    for key in ("lead_re", "reg_lead_re", "stab_re"):
        if r.get(key) is not None:
            return r[key]
    return None


def _summary(name: str, recs: list[dict], n_tail: int = 50) -> dict:
    steps = [r for r in recs if "event" not in r]
    conv = [(r["step"], r["status"].get("converged", 0) / max(1, sum(r["status"].values())))
            for r in steps if r.get("status")]
    first_bad = next((s for s, f in conv if f < 0.99), None)
    half = next((s for s, f in conv if f < 0.5), None)  # the wall: most samples fail
    vals = [r for r in steps if r.get("val_ce_ref") is not None]
    res = [_lead(r) for r in steps if _lead(r) is not None]
    tail = [r["train_ce"] for r in steps[-n_tail:] if r.get("train_ce") is not None]
    return {"arm": name, "steps": steps[-1]["step"] if steps else 0,
            "train_ce": sum(tail) / len(tail) if tail else float("nan"),
            "val_ce_ref": vals[-1]["val_ce_ref"] if vals else float("nan"),
            "val_step": vals[-1]["step"] if vals else None,
            "min_conv": min((f for _, f in conv), default=float("nan")),
            "first_below_99": first_bad,
            "first_below_50": half,
            "ce_at_wall": next((r["train_ce"] for r in steps if r["step"] == half), float("nan")),
            "max_re": max(res, default=float("nan")),
            "skipped": sum(1 for r in steps if r.get("skipped")),
            "weight": next((r["reg_weight"] for r in reversed(steps) if "reg_weight" in r),
                           float("nan")),
            "kicks": sum(1 for r in recs if r.get("event") == "stability_kick"),
            "free_nfe": _mean([r["nfe"]["free"] for r in steps[-n_tail:]
                               if "free" in r.get("nfe", {})]),
            "nudged_conv": _mean([_converged(r["nudge_status"]) for r in steps[-n_tail:]
                                  if r.get("nudge_status")])}


def _pct(x: float) -> str:
    return "—" if x != x else f"{x:.0%}"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _converged(status: dict[str, int]) -> float:
    return status.get("converged", 0) / max(1, sum(status.values()))


def report(a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {Path(p).stem if Path(p).name != "metrics.jsonl" else Path(p).parent.name:
            _read(Path(p)) for p in a.metrics}
    rows = [_summary(n, r, a.tail) for n, r in runs.items()]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    panels = 5 if a.relaxation else 4
    fig, ax = plt.subplots(1, panels, figsize=(4.5 * panels, 4))
    for name, recs in runs.items():
        steps = [r for r in recs if "event" not in r]
        x = [r["step"] for r in steps]
        ax[0].plot(x, [r["train_ce"] for r in steps], label=name, lw=1)
        ax[1].plot(x, [r["status"].get("converged", 0) / max(1, sum(r["status"].values()))
                       for r in steps], lw=1)
        s = [r for r in steps if _lead(r) is not None]
        ax[2].plot([r["step"] for r in s], [_lead(r) for r in s], lw=1)
        w = [r for r in steps if "reg_weight" in r]
        ax[3].semilogy([r["step"] for r in w], [r["reg_weight"] for r in w], lw=1)
        if a.relaxation:
            n = [r for r in steps if "free" in r.get("nfe", {})]
            ax[4].plot([r["step"] for r in n], [r["nfe"]["free"] for r in n], lw=1)
    ax[2].axhline(0, color="k", lw=0.5)
    titles = ("train CE", "free relaxations converged", "leading Re μ at z*", "penalty weight",
              "free phase mean NFE")
    for a_, t in zip(ax, titles[:panels], strict=True):
        a_.set_title(t)
        a_.set_xlabel("step")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    png = out.with_suffix(".png") if out.suffix == ".md" else out.parent / "arms.png"
    fig.savefig(png, dpi=110)
    lines = [f"| arm | steps | train CE (last {a.tail} logged) | val CE ref (step) | min converged | "
             "first < 99 % | first < 50 % (train CE there) | max Re μ | skipped | weight at end | "
             "kicks |" + (f" free NFE (last {a.tail}) | nudged converged (last {a.tail}) |"
                          if a.relaxation else ""),
             "|---" * (13 if a.relaxation else 11) + "|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['steps']} | {r['train_ce']:.3f} | "
                     f"{r['val_ce_ref']:.3f} ({r['val_step']}) | {r['min_conv']:.0%} | "
                     f"{r['first_below_99']} | {r['first_below_50']} ({r['ce_at_wall']:.2f}) | "
                     f"{r['max_re']:+.3f} | {r['skipped']} | "
                     f"{r['weight']:.3g} | {r['kicks']} |"
                     + (f" {r['free_nfe']:.0f} | {_pct(r['nudged_conv'])} |" if a.relaxation
                        else ""))
    text = "\n".join(lines) + "\n"
    if a.append_to:
        body = Path(a.append_to).read_text() if Path(a.append_to).exists() else ""
        text = body.rstrip() + "\n\n" + text + f"\n![arms]({png.name})\n"
    out.write_text(text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the arms side by side")
    r.add_argument("--out-dir", required=True)
    r.add_argument("--common", default="", help="flags every arm gets")
    r.add_argument("--arm", action="append", required=True, help="NAME=FLAGS")
    r.add_argument("--time-limit", type=float, default=0, help="seconds; 0: none")
    q = sub.add_parser("report", help="table and figure from metrics.jsonl files")
    q.add_argument("metrics", nargs="+")
    q.add_argument("--out", required=True)
    q.add_argument("--append-to", default=None, help="a markdown preamble to keep")
    q.add_argument("--tail", type=int, default=50, help="logged steps the tail means span")
    q.add_argument("--relaxation", action="store_true",
                   help="add the free NFE and the nudged phases' converged fraction")
    a = p.parse_args()
    run(a) if a.cmd == "run" else report(a)


if __name__ == "__main__":
    main()
