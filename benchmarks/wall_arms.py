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

``benchmarks/study.py`` builds on the pieces: :func:`start_arm` and :func:`wait_arms` (what
``run`` does), :func:`parse_config`, :func:`progress_line`, :func:`summarize_arm`,
:func:`report` and :func:`metric_figure`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def read_records(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a torn line is left out)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line
            pass
    return out


def run_records(out: Path, rank: Callable[[str], int] = lambda name: 0) -> dict[str, list[dict]]:
    """The records of every run directory of ``out`` that has a ``metrics.jsonl``, by name,
    ordered by ``rank(name)`` then name."""
    dirs = [d for d in out.iterdir() if (d / "metrics.jsonl").is_file()] if out.is_dir() else []
    return {d.name: read_records(d / "metrics.jsonl")
            for d in sorted(dirs, key=lambda d: (rank(d.name), d.name))}


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


def parse_config(argv: list[str]):
    """The :class:`~eqprop.train.TrainConfig` that ``eqprop train ARGV`` would train, by its
    own parse path (``--config`` defaults, then the flags), its solvers, estimator and
    penalty built (their checks); raises on a rejected flag or setting (tyro: SystemExit)."""
    import tyro

    from eqprop.cli.train import Args, base_args
    from eqprop.gradients.registry import build_estimator
    from eqprop.regularizers.registry import build_regularizer
    from eqprop.solvers.registry import build_solver

    cfg = tyro.cli(Args, args=argv, default=base_args(argv)).train
    build_solver(cfg.solver)
    build_estimator(cfg.estimator, cfg.solver)
    build_regularizer(cfg.regularizer)
    return cfg


def arm_command(out: Path, name: str, common: str, flags: str) -> list[str]:
    """The ``eqprop train`` command of arm ``name`` under ``out``: a new run
    ``out/name``, or ``--resume`` of it where it exists (it has a checkpoint, or at least
    its ``config.yaml``: a run stopped before its first checkpoint restarts from step 0)
    with its saved config and these flags on top."""
    rd = out / name
    common_args = shlex.split(common)
    if (rd / "checkpoints").exists() or (rd / "config.yaml").exists():
        args = ["--resume", str(rd)]
        common_args = _without_config(common_args)
    else:
        args = ["--run.out-dir", str(out), "--run.name", name]
    return [sys.executable, "-m", "eqprop", "train", *common_args, *shlex.split(flags), *args,
            "--run.no-progress"]


def start_arm(out: Path, name: str, common: str, flags: str) -> subprocess.Popen:
    """Start arm ``name`` (see :func:`arm_command`), its output appended to ``out/name.log``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{name}.log").open("a") as log:  # the child keeps its own descriptor
        return subprocess.Popen(arm_command(out, name, common, flags), stdout=log,
                                stderr=subprocess.STDOUT)


def wait_arms(procs: list[tuple[str, subprocess.Popen]], time_limit: float = 0, *,
              tick: Callable[[], None] | None = None, poll: float = 5.0,
              grace: float = 60.0) -> None:
    """Wait for the arms' processes; past ``time_limit`` seconds (0: none) send each a
    SIGINT (a run checkpoints at a step boundary where it can) and kill those still
    running ``grace`` seconds later. ``tick`` is called after every ``poll`` seconds."""
    t0 = time.time()
    while any(p.poll() is None for _, p in procs):
        if time_limit and time.time() - t0 > time_limit:
            for _, p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for _, p in procs:
                try:
                    p.wait(grace)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            break
        time.sleep(poll)
        if tick is not None:
            tick()


def run(a: argparse.Namespace) -> None:
    out = Path(a.out_dir)
    procs = []
    for spec in a.arm:
        name, _, flags = spec.partition("=")
        procs.append((name, start_arm(out, name, a.common, flags)))
    wait_arms(procs, a.time_limit)
    for name, p in procs:
        print(f"{name}: exit {p.returncode}")


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of a run directory's newest checkpoint (None: none yet)."""
    try:
        return int(json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def last_record(path: Path, window: int = 65536) -> dict | None:
    """The newest step record (not an event) of a ``metrics.jsonl``, from its last bytes."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - window))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and "event" not in r and "step" in r:
            return r
    return None


def progress_line(out: Path, name: str, steps: int, state: str = "") -> str:
    """``name  step k/N  CE x  converged y %  NFE z``: arm ``name`` under ``out`` from the
    tail of its metrics, then ``state``."""
    r = last_record(out / name / "metrics.jsonl")
    if r is None:
        return f"{name:<22} no step yet {state}".rstrip()
    status = r.get("status") or {}
    conv = _converged(status) if status else float("nan")
    ce, nfe = r.get("train_ce"), (r.get("nfe") or {}).get("free")
    return (f"{name:<22} step {r['step']:>5}/{steps}  CE {fmt(ce, '.3f')}  "
            f"converged {fmt(conv, '.0%')}  NFE {fmt(nfe, '.1f')} {state}").rstrip()


def fmt(x: float | None, spec: str) -> str:
    """``x`` formatted, or a dash for None or NaN."""
    return "—" if x is None or x != x else format(x, spec)


def metric_figure(path: Path, runs: dict[str, list[dict]], key: str, xkey: str,
                  panels: list[tuple[str, str, str]], notes: list[str]) -> None:
    """A png of one line per run and panel ``(title, y key, y scale)`` against ``xkey``,
    over the records that hold ``key``; a run without any is left out with a line in
    ``notes``. ``grad_cosine`` is drawn as ``1 - cosine`` (at least 1e-9); a None is NaN."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax in axes[0]:
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 runs, each its own colour
    drawn = 0
    for name, recs in runs.items():
        rs = [r for r in recs if "event" not in r and r.get(key) is not None]
        if not rs:
            notes.append(f"`{path.name}`: {name} has no `{key}` records: left out")
            continue
        drawn += 1
        for ax, (_, y, _) in zip(axes[0], panels, strict=True):
            ys = [1 - num(r.get(y)) if y == "grad_cosine" else num(r.get(y)) for r in rs]
            ax.plot([num(r.get(xkey)) for r in rs], [max(v, 1e-9) if y == "grad_cosine" else v
                                                    for v in ys], marker=".", lw=1, label=name)
    for ax, (title, _, scale) in zip(axes[0], panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("train CE (training runs right to left)" if xkey == "train_ce" else xkey)
        if drawn and scale != "linear":
            ax.set_yscale(scale, **({"linthresh": 1e-3} if scale == "symlog" else {}))
    if drawn:
        axes[0][0].legend(fontsize=7)
    else:
        axes[0][0].text(0.5, 0.5, "no data", ha="center", transform=axes[0][0].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lead(r: dict) -> float | None:
    """The leading Re μ a step measured: the free phase's stability check (every sample),
    else the penalty's (``reg_lead_re``), else the controller's; None where none measured
    one (a solver that follows the flow is not checked: NaN in the log)."""
    for key in ("lead_re", "reg_lead_re", "stab_re"):
        if r.get(key) is not None and math.isfinite(r[key]):
            return r[key]
    return None


def _val(r: dict) -> str:
    """``1.984 / 2.225 (500)``: the last validation at the training solver's z* and after
    the reference solve, and its step; "—" where the run was never validated."""
    if r["val_step"] is None:
        return "—"
    return f"{r['val_ce']:.3f} / {r['val_ce_ref']:.3f} ({r['val_step']})"


def _or_dash(step: int | None) -> str:
    return "—" if step is None else str(step)


def _wall(r: dict) -> str:
    """``450 (2.05)``: the first step below 50 % converged and the train CE there."""
    return "—" if r["first_below_50"] is None else f"{r['first_below_50']} ({r['ce_at_wall']:.2f})"


def _signed(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:+.3f}"


def num(x: float | None) -> float:
    """``x``, or NaN where the log holds None (a non-finite value is written as null)."""
    return float("nan") if x is None else x


def summarize_arm(name: str, recs: list[dict], n_tail: int = 50) -> dict:
    """One arm's row of the table (see the module docstring) from its records."""
    steps = [r for r in recs if "event" not in r]
    conv = [(r["step"], _converged(r["status"]))
            for r in steps if r.get("status")]
    first_bad = next((s for s, f in conv if f < 0.99), None)
    half = next((s for s, f in conv if f < 0.5), None)  # the wall: most samples fail
    vals = [r for r in steps if r.get("val_ce_ref") is not None]
    res = [_lead(r) for r in steps if _lead(r) is not None]
    tail = [r["train_ce"] for r in steps[-n_tail:] if r.get("train_ce") is not None]
    return {"arm": name, "steps": steps[-1]["step"] if steps else 0,
            "train_ce": sum(tail) / len(tail) if tail else float("nan"),
            "val_ce": num(vals[-1].get("val_ce")) if vals else float("nan"),
            "val_ce_ref": vals[-1]["val_ce_ref"] if vals else float("nan"),
            "val_step": vals[-1]["step"] if vals else None,
            "min_conv": min((f for _, f in conv), default=float("nan")),
            "first_below_99": first_bad,
            "first_below_50": half,
            "ce_at_wall": num(next((r.get("train_ce") for r in steps if r["step"] == half),
                                    None)),
            "max_re": max(res, default=float("nan")),
            "skipped": sum(1 for r in steps if r.get("skipped")),
            "dropped": sum(r.get("dropped", 0) for r in steps),
            "weight": num(next((r["reg_weight"] for r in reversed(steps) if "reg_weight" in r),
                                None)),
            "kicks": sum(1 for r in recs if r.get("event") == "stability_kick"),
            "free_nfe": _mean([r["nfe"]["free"] for r in steps[-n_tail:]
                               if (r.get("nfe") or {}).get("free") is not None]),
            "nudged_conv": _mean([_converged(r["nudge_status"]) for r in steps[-n_tail:]
                                  if r.get("nudge_status")])}


def _skips(r: dict) -> str:
    """Skipped updates, and the samples dropped from accepted ones where there were any."""
    return f"{r['skipped']} ({r['dropped']})" if r["dropped"] else str(r["skipped"])


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
            read_records(Path(p)) for p in a.metrics}
    rows = [summarize_arm(n, r, a.tail) for n, r in runs.items()]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    panels = 5 if a.relaxation else 4
    fig, ax = plt.subplots(1, panels, figsize=(4.5 * panels, 4))
    for axis in ax:
        axis.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 runs, each its own colour
    for name, recs in runs.items():
        steps = [r for r in recs if "event" not in r]
        x = [r["step"] for r in steps]
        ax[0].plot(x, [num(r.get("train_ce")) for r in steps], label=name, lw=1)
        ax[1].plot(x, [_converged(r["status"]) if r.get("status") else float("nan")
                       for r in steps], lw=1)
        s = [r for r in steps if _lead(r) is not None]
        ax[2].plot([r["step"] for r in s], [_lead(r) for r in s], lw=1)
        w = [r for r in steps if "reg_weight" in r]
        ax[3].semilogy([r["step"] for r in w], [num(r["reg_weight"]) for r in w], lw=1)
        if a.relaxation:
            n = [r for r in steps if (r.get("nfe") or {}).get("free") is not None]
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
    lines = [f"| arm | steps | train CE (last {a.tail} logged) | val CE at z* / after the "
             "reference (step) | "
             "min converged | first < 99 % | first < 50 % (train CE there) | max Re μ | "
             "skipped (samples dropped) | weight at end | "
             "kicks |" + (f" free NFE (last {a.tail}) | nudged converged (last {a.tail}) |"
                          if a.relaxation else ""),
             "|---" * (13 if a.relaxation else 11) + "|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['steps']} | {r['train_ce']:.3f} | "
                     f"{_val(r)} | {r['min_conv']:.0%} | "
                     f"{_or_dash(r['first_below_99'])} | {_wall(r)} | "
                     f"{_signed(r['max_re'])} | {_skips(r)} | "
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
