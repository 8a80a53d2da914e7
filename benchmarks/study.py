"""The study runner: the arms of three questions at the study size on one GPU, side by side
as processes, resumable, into one folder of raw metrics, a report and its figures.

Q1: past the wall by adaptive ε, a Jacobian penalty or a smaller fixed ε? Q2: what does the
penalty do to the continuous dynamics, against the leak (damping) and the stability
controller? Q3: Anderson, implicit Euler, Ψtc, IMEX or Newton–Krylov instead of explicit
Euler, and does AsymEP's gradient stay close to IFT's with them (``grad_cosine``)?

``arms [--check]``: the catalogue (``--check`` parses every arm by ``eqprop train``'s own
path). ``run``: one ``eqprop train`` process (``wall_arms.py``) per (arm, seed) in
``DIR/<arm>_s<seed>``; ``run`` again continues every unfinished arm from its checkpoint
(``--steps`` may grow). ``--size tiny``: a CPU smoke size. On one H200 (a command ≤ 10 min,
the machine warm 30 s after it): one command per group G (SIGINT at 480 s, each run
checkpoints, a straggler killed 45 s later); back in $OUT the metrics and the newest
checkpoints (~3.8 MB an arm; ≤ 8 files of ≤ 16 MiB come back)::

    G=euler_e0.1,euler_e0.05,euler_e0.02,adaptive,ift      # 1st; then the two below
    python benchmarks/study.py run --out-dir runs/study --arms $G --seeds 0 --time-limit 480
    tar czf $OUT/metrics.tgz --exclude=checkpoints runs/study
    for a in ${G//,/ }; do tar czf $OUT/$a.tgz runs/study/${a}_s0/checkpoints; done
    # G=jacreg,jacreg_adaptive,damping,stability,stability_eps
    # G=anderson,implicit,ptc,imex,newton,abscissa

The same commands continue the runs (on a fresh machine: unpack into ``runs/study``, carry
it). Measured in the first pass (results/study_h200, 8 and 7 processes): median seconds a
step 0.9 (stability), 1.1–1.7 (ift, anderson, ptc, adaptive), 2–3 (euler_e0.1, jacreg,
damping), 4.4 / 9.8 (euler_e0.05 / 0.02: the same flow time), 5–7.5 (implicit, imex: a
host check every step), 76 (newton): the slow arms want a command of their own. Then
``report`` and ``probe`` (dopri5 on 8 samples: seconds an arm, minutes past a wall).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is no package
import wall_arms  # noqa: E402


@dataclass(frozen=True)
class Arm:
    """An arm: name, question, what it tests, its flags (on top of the size's), its fixed
    Euler ε (for ``wall_vs_eps.png``) and the other figures it is in."""

    name: str
    question: str
    tests: str
    flags: str
    eps: float | None = None
    figures: tuple[str, ...] = ()


def _phases(name: str, setting: str, free: int, nudged: int = 0, sync: bool = False) -> str:
    """Solver ``name`` with ``setting`` (``"eps 0.25,m 20"``) in the free phase and the
    nudged phases, with those budgets (0: that phase keeps its own); ``sync``: no CUDA
    graphs, the host checks every step (a solver that syncs anyway)."""
    return " ".join(f"--{p}.name {name} --{p}.max-steps {n}"
                    + "".join(f" --{p}.{name}.{kv}" for kv in setting.split(",") if kv)
                    + (f" --{p}.check-every 1 --{p}.no-capture" if sync else "")
                    for p, n in (("solver", free), ("estimator.nudge", nudged)) if n)


def _euler(eps: float) -> str:
    """Euler at ``eps`` in every phase, budgets for the same flow time in every arm, 30 (free)
    and 15 (nudged, from z*): a smaller ε changes the step, not the horizon."""
    return _phases("euler", f"eps {eps}", round(30 / eps), round(15 / eps))


EULER = _euler(0.1)
JACREG = "--regularizer.name jacreg --regularizer.weight 0.5 --regularizer.samples 16"
# the controller steers the free NFE to a third of Euler ε 0.1's budget (its default 25
# suits Anderson); gain and weights as in benchmarks/results/past_the_wall_h200
CONTROL = (f"{JACREG} --stability.enabled --stability.target-nfe 100 --stability.gain 0.2 "
           "--stability.w-init 0.1 --stability.w-min 0.03")
ANDERSON = _phases("anderson", "eps 0.25,m 20", 300, 150)
# implicit, ptc and newton take JVPs of the field, which the nudged field cannot give
# (NudgedField.grad_loss runs autograd inside the JVP transform): their nudged phases are
# the recipe's Anderson
A_NUDGE = _phases("anderson", "eps 0.25,m 20", 0, 150)
CATALOGUE: tuple[Arm, ...] = (
    Arm("euler_e0.1", "Q1", "explicit Euler ε 0.1 in every phase: the reference arm", EULER,
        0.1, ("cosine", "damping")),
    Arm("euler_e0.05", "Q1", "a smaller fixed ε, 0.05 (same flow time)", _euler(0.05), 0.05,
        ("cosine",)),
    Arm("euler_e0.02", "Q1", "a smaller fixed ε, 0.02 (same flow time)", _euler(0.02), 0.02,
        ("cosine",)),
    Arm("adaptive", "Q1", "per-sample ε (Heun PI) from 0.1 with the floor 0.02, every phase",
        _phases("adaptive", "eps 0.1,eps-min 0.02", 1500, 750), figures=("cosine",)),
    Arm("jacreg", "Q1+Q2", "Jacobian penalty, fixed weight 0.5 on 16 samples; Euler ε 0.1",
        f"{EULER} {JACREG}", figures=("damping",)),
    Arm("jacreg_adaptive", "Q1+Q2", "Jacobian penalty, adaptive weight from 0.5; Euler ε 0.1",
        f"{EULER} {JACREG} --regularizer.adaptive", figures=("damping",)),
    Arm("stability_eps", "Q1", "the controller, also halving ε (floor 0.02) at a simulator's "
        "wall; ε 0.02's budgets", f"{_phases('euler', 'eps 0.1', 1500, 750)} {CONTROL} "
        "--stability.eps-factor 0.5 --stability.eps-min 0.02", figures=("damping",)),
    Arm("damping", "Q2", "the leak γ 1 (one layer: a rescaling of time, ε_eff 0.2); Euler ε 0.1",
        f"{EULER} --model.damping 1.0", figures=("damping",)),
    Arm("stability", "Q2", "the stability controller sets the jacreg weight; Euler ε 0.1",
        f"{EULER} {CONTROL}", figures=("damping",)),
    Arm("anderson", "Q3", "Anderson m 20, ε 0.25, every phase (the recipe without its hinge)",
        ANDERSON, figures=("cosine",)),
    Arm("implicit", "Q3", "free phase backward Euler h 1 (A-stable: no ε_crit), flow time 30",
        f"{_phases('implicit', 'h 1.0', 30, sync=True)} {A_NUDGE}", figures=("cosine",)),
    Arm("ptc", "Q3", "free phase pseudo-transient continuation from h 1 (turns into Newton)",
        f"{_phases('ptc', 'h 1.0', 50, sync=True)} {A_NUDGE}", figures=("cosine",)),
    Arm("imex", "Q3", "IMEX Euler h 1 (one layer: Euler ε h/(1+h) = 0.5), flow time 30 / 15",
        _phases("imex", "h 1.0", 60, 30, sync=True), figures=("cosine",)),
    Arm("newton", "Q3", "free phase Newton–Krylov (it finds unstable roots too)",
        f"{_phases('newton', '', 30, sync=True)} {A_NUDGE}", figures=("cosine",)),
    Arm("abscissa", "ctrl", "the recipe (configs/study_abscissa.toml): hinge, Anderson m 20, EMA",
        f"{_phases('anderson', 'eps 0.25,m 20', 1000, 150)} --regularizer.name abscissa "
        "--regularizer.weight 10.0 --regularizer.margin 0.1 --regularizer.samples 16 "
        "--optim.ema-decay 0.999 --estimator.beta 0.2 --estimator.drop-failed 0.05",
        figures=("cosine", "damping")),
    Arm("ift", "ctrl", "the exact gradient (IFT) with Euler ε 0.1: is the wall AsymEP's?",
        f"{EULER} --estimator.name ift"),
)
ARMS = {a.name: a for a in CATALOGUE}

# Study size, tracking (and the cosine to IFT) every 100 steps: ARPACK on 2 samples takes
# ~11 s a call there (results/study_step_h200.md), a step 0.05-0.2 s alone (more side by
# side): ≤ ~50 % overhead early, less later; 50 points in 5000 steps, and 100/200/300
# resolve the wall at steps ~150-250 (study_wall_h200.md), which every 250 or 500 would see
# once at most. Two CPU threads a process: 16 cores for up to 8 processes.
CONFIG = shlex.quote(str(Path(__file__).resolve().parents[1] / "configs" / "study.toml"))
SIZES = {
    "study": f"--config {CONFIG} --tracking.every 100 --tracking.fidelity-every 100 "
             "--eval.every 250 --run.ckpt-every 250 --run.sample-tokens 0 --run.threads 2",
    "tiny": f"--config {CONFIG} --model.d-model 16 --model.n-heads 2 --model.d-ff 32 "
            "--model.seq-len 8 --data.batch-size 4 --eval.batches 1 --eval.batch-size 4 "
            "--eval.every 0 --schedule.warmup 1 --tracking.every 2 --tracking.fidelity-every 2 "
            "--run.log-every 1 --run.ckpt-every 2 --run.sample-tokens 0 --run.threads 1 "
            "--run.device cpu",
}
STEPS = {"study": 5000, "tiny": 4}


def arm_of(run: str) -> str:
    """The arm of a run directory's name (``jacreg_s0`` -> ``jacreg``)."""
    head, _, seed = run.rpartition("_s")
    return head if head and seed.isdigit() else run


def flags(arm: Arm, seed: int, size: str, steps: int, extra: str = "") -> tuple[str, str]:
    """(the size's flags, the arm's with the seed and ``extra``) of (arm, seed)."""
    return f"{SIZES[size]} --schedule.steps {steps}", f"{arm.flags} --run.seed {seed} {extra}"


def train_argv(arm: Arm, seed: int, size: str, steps: int, extra: str = "") -> list[str]:
    """``eqprop train`` arguments of a new run of (arm, seed): the size's flags, then the
    arm's, the seed and ``extra`` (a later flag wins)."""
    return [x for f in flags(arm, seed, size, steps, extra) for x in shlex.split(f)]


def _write_study(out: Path, a: argparse.Namespace, steps: int) -> None:
    """``study.json``, by the first ``run``; a later one adds its arms, seeds and command."""
    path = out / "study.json"
    d = json.loads(path.read_text()) if path.exists() else {
        "size": a.size, "common": SIZES[a.size], "arms": {}, "seeds": [], "commands": []}
    if d["size"] != a.size:
        sys.exit(f"study.py run: error: {out} holds a study of size {d['size']!r}, not "
                 f"{a.size!r}: choose another --out-dir")
    d.update(steps=steps, extra=a.extra, seeds=sorted(set(d["seeds"]) | set(a.seeds)))
    d["arms"].update({m.name: {"question": m.question, "tests": m.tests, "flags": m.flags}
                      for m in a.arms})
    d["commands"].append(a.command)
    path.write_text(json.dumps(d, indent=1) + "\n")


def cmd_run(a: argparse.Namespace) -> int:
    """Start every unfinished (arm, seed), show progress, wait; 1 if an arm failed."""
    out, steps = Path(a.out_dir), a.steps or STEPS[a.size]
    out.mkdir(parents=True, exist_ok=True)
    _write_study(out, a, steps)
    procs, names = [], []
    for arm in a.arms:
        for seed in a.seeds:
            name = f"{arm.name}_s{seed}"
            names.append(name)
            if (wall_arms.checkpoint_step(out / name) or 0) >= steps:
                continue
            procs.append((name, wall_arms.start_arm(out, name, *flags(arm, seed, a.size, steps,
                                                                      a.extra))))
    t0, last = time.time(), [0.0]  # the first tick shows

    def show(head: str, state: dict[str, str] | None = None) -> None:
        print(head, *(wall_arms.progress_line(out, n, steps, (state or {}).get(n, ""))
                      for n in names), sep="\n", flush=True)

    def tick() -> None:
        if time.time() - last[0] >= a.every:
            last[0] = time.time()
            show(f"-- {time.time() - t0:.0f} s")

    tick()
    wall_arms.wait_arms(procs, a.time_limit, tick=tick, poll=a.poll, grace=a.grace)
    codes = {n: p.returncode for n, p in procs}
    show("-- end", {n: f"exit {codes[n]}" if n in codes else "done" for n in names})
    failed = [n for n, c in codes.items() if c not in (0, 130, 143)]  # 130/143: stopped
    for n in failed:
        print(f"study.py run: {n} exited {codes[n]}: see {out / (n + '.log')}", file=sys.stderr)
    return 1 if failed else 0


def cmd_arms(a: argparse.Namespace) -> int:
    """Print the catalogue; with ``--check`` parse every arm's flags at ``--size``."""
    bad = 0
    for arm in CATALOGUE:
        print(f"{arm.name:<16}{arm.question:<7}{arm.tests}\n{'':<23}{arm.flags}")
        if a.check:
            try:
                wall_arms.parse_config(train_argv(arm, 0, a.size, STEPS[a.size]))
                print(f"{'':<23}ok ({a.size})")
            except (Exception, SystemExit) as e:  # tyro exits; eqprop raises ConfigError
                bad += 1
                print(f"{'':<23}REJECTED ({a.size}): {e}")
    return 1 if bad else 0


def _arm_list(text: str) -> list[Arm]:
    names = list(ARMS) if text == "all" else [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in ARMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown arm {', '.join(unknown) or text!r}: "
                                         f"'all' or a comma list of {', '.join(ARMS)}")
    return [ARMS[n] for n in names]


def _seed_list(text: str) -> list[int]:
    if not text or not all(s.isdigit() for s in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of seeds ≥ 0, e.g. 0,1,2")
    return [int(s) for s in text.split(",")]


def _runs(out: Path, arms: list[Arm] | None = None) -> dict[str, list[dict]]:
    """Every run of ``out`` (of ``arms``) with metrics, in catalogue order: name -> records."""
    order = {n: i for i, n in enumerate(ARMS)}
    runs = wall_arms.run_records(out, lambda n: order.get(arm_of(n), len(order)))
    keep = {m.name for m in arms or CATALOGUE}
    return {n: r for n, r in runs.items() if arms is None or arm_of(n) in keep}


def _in(runs: dict[str, list[dict]], figure: str) -> dict[str, list[dict]]:
    return {n: r for n, r in runs.items() if figure in getattr(ARMS.get(arm_of(n)), "figures", ())}


def _wall_figure(out: Path, runs: dict[str, list[dict]], tail: int) -> list[str]:
    """``wall_vs_eps.png`` (and its table lines): train CE at the wall (first logged step
    < 50 % converged) against ε, fixed-ε Euler arms; one that never walls: last CE, open."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    lines = ["| run | ε | wall step | train CE at the wall |", "|---|---|---|---|"]
    for name, recs in runs.items():
        arm = ARMS.get(arm_of(name))
        if arm is None or arm.eps is None:
            continue
        s = wall_arms.summarize_arm(name, recs, tail)
        wall = s["first_below_50"]
        ce = s["ce_at_wall"] if wall is not None else s["train_ce"]
        ax.plot([arm.eps], [ce], "^" if wall is None else "o", label=name,
                mfc="none" if wall is None else None)
        cell = wall_arms.fmt(ce, ".3f")
        lines.append(f"| {name} | {arm.eps:g} | " + (f"{wall} | {cell} |" if wall is not None else
                                                     f"no wall | — (last {tail}: {cell}) |"))
    ax.set(xscale="log", xlabel="Euler ε", ylabel="train CE",
           title="train CE at the wall (open: no wall, last CE)")
    if len(lines) > 2:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "wall_vs_eps.png", dpi=110)
    plt.close(fig)
    return lines if len(lines) > 2 else ["No fixed-ε Euler arm has records."]


def cmd_report(a: argparse.Namespace) -> int:
    """The wall_arms table of every run, the four figures and notes, as ``--out``."""
    import matplotlib

    matplotlib.use("Agg")
    out, notes = Path(a.dir), []
    runs = _runs(out)
    if not runs:
        sys.exit(f"study.py report: error: no run directory with a metrics.jsonl in {out}")
    wall_arms.report(argparse.Namespace(
        metrics=[str(out / n / "metrics.jsonl") for n in runs], out=str(out / "arms.md"),
        append_to=None, tail=a.tail, relaxation=True))
    fig = wall_arms.metric_figure
    fig(out / "eps_crit_vs_ce.png", runs, "eps_crit_min", "train_ce",
        [("ε_crit (eps_crit_min)", "eps_crit_min", "symlog"),
         ("leading Re μ (max_re)", "max_re", "linear")], notes)
    fig(out / "cosine.png", _in(runs, "cosine"), "grad_cosine", "step",
        [("1 − cosine to IFT (grad_cosine)", "grad_cosine", "log")], notes)
    fig(out / "damping.png", _in(runs, "damping"), "crit_a", "step",
        [("critical mode Re μ (crit_a)", "crit_a", "linear"),
         ("its damping ratio −a/|μ|", "damping", "linear")], notes)
    study = out / "study.json"
    head = json.loads(study.read_text()) if study.exists() else {}
    text = [f"# Study: {out.name}", "",
            f"Size {head.get('size', '?')}, seeds {head.get('seeds', '?')}, steps "
            f"{head.get('steps', '?')}; `{a.command}`.",
            "", "## Arms", "", (out / "arms.md").read_text().strip(), "", "![arms](arms.png)",
            "", "## The wall against ε", "", *_wall_figure(out, runs, a.tail), "",
            "![wall](wall_vs_eps.png)", "", "## Tracking", "", *(
                f"![{p}]({p}.png)\n" for p in ("eps_crit_vs_ce", "cosine", "damping"))]
    text += ["## Notes", "", *(f"- {n}" for n in notes), ""] if notes else []
    Path(a.out).write_text("\n".join(text))
    print(f"wrote {a.out}")
    return 0


def probe_row(run_dir: Path, samples: int, device: str, max_nfe: int) -> str:
    """One markdown row: the ODE (dopri5) settling time of the free phase from the input
    drive at a run's newest checkpoint, on ``samples`` training sequences (seed 0)."""
    import torch

    from eqprop.data import load_corpus
    from eqprop.solvers.ode import ODE, settling_time
    from eqprop.train import load_run

    run = load_run(run_dir, device=device, average=False)  # the field training relaxes
    cfg = run.config
    corpus = load_corpus(cfg.data, seq_len=cfg.model.seq_len, vocab=run.vocab)
    tokens, targets = corpus.get_batch("train", samples, cfg.model.seq_len,
                                       generator=torch.Generator().manual_seed(0))
    field = run.model.field(tokens.to(device), targets.to(device))
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # unsettled samples read inf: the table says so
        warnings.simplefilter("ignore", RuntimeWarning)
        t, sol = settling_time(field, field.initial_state(),
                               ODE(tol=cfg.solver.tol, max_nfe=max_nfe))
    settled = int(torch.isfinite(t).sum())
    return (f"| {run_dir.name} | {run.step} | {settled}/{t.numel()} | "
            f"{wall_arms.fmt(float(t.median()), '.1f').replace('inf', '∞')} | "
            f"{float(sol.nfe.float().mean()):.0f} | {time.perf_counter() - t0:.1f} |")


def cmd_probe(a: argparse.Namespace) -> int:
    """Append the settling-time table of every run with a checkpoint to ``--out``."""
    import torch

    out = Path(a.dir)
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = [probe_row(out / n, a.samples, dev, a.max_nfe) for n in _runs(out, a.arms)
            if wall_arms.checkpoint_step(out / n) is not None]
    report = Path(a.out or out / "report.md")
    body = report.read_text().rstrip() + "\n\n" if report.exists() else ""
    report.write_text(body + "\n".join([
        f"## ODE settling time at the newest checkpoint ({a.samples} samples, {dev})", "",
        "| run | step | settled | median t (lower; unsettled: ∞) | mean NFE | s |",
        "|---|---|---|---|---|---|", *rows]) + "\n")
    print("\n".join(rows) or "no run with a checkpoint")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("arms", help="the catalogue of arms")
    c.add_argument("--check", action="store_true", help="parse every arm's flags")
    c.add_argument("--size", choices=SIZES, default="study")
    r = sub.add_parser("run", help="run (or continue) arms side by side")
    r.add_argument("--out-dir", required=True)
    r.add_argument("--arms", type=_arm_list, default=_arm_list("all"), help="all or a,b,...")
    r.add_argument("--seeds", type=_seed_list, default=[0], help="e.g. 0,1,2")
    r.add_argument("--steps", type=int, default=0, help="schedule.steps (0: the size's)")
    r.add_argument("--time-limit", type=float, default=0, help="seconds; 0: none")
    r.add_argument("--size", choices=SIZES, default="study")
    r.add_argument("--extra", default="", help="flags every arm gets last")
    r.add_argument("--every", type=float, default=30.0, help="seconds between progress")
    r.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    r.add_argument("--grace", type=float, default=45.0, help="seconds from SIGINT to kill")
    q = sub.add_parser("report", help="table, figures and notes from a study folder")
    q.add_argument("dir")
    q.add_argument("--out", required=True)
    q.add_argument("--tail", type=int, default=50, help="logged steps the tail means span")
    b = sub.add_parser("probe", help="ODE settling time at each run's newest checkpoint")
    b.add_argument("dir")
    b.add_argument("--samples", type=int, default=8)
    b.add_argument("--arms", type=_arm_list, default=None, help="all (default) or a,b,...")
    b.add_argument("--out", default=None, help="markdown to append to (DIR/report.md)")
    b.add_argument("--device", default=None, help="default: cuda when available")
    b.add_argument("--max-nfe", type=int, default=20_000, help="ODE evaluations a sample")
    a = p.parse_args(argv)
    a.command = "python benchmarks/study.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    for name, low in (("steps", 0), ("samples", 1), ("tail", 1), ("max_nfe", 1)):
        if getattr(a, name, low) < low:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)}: must be ≥ {low}")
    return dict(arms=cmd_arms, run=cmd_run, report=cmd_report, probe=cmd_probe)[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
