"""The training step at the study size: AsymEP, IFT, BPTT and a backprop transformer.

    python benchmarks/study_step.py --config configs/study.toml \\
        --out benchmarks/results/study_step_h200.md

Every equilibrium row is the real ``Trainer.train_step`` of ``eqprop train --config``
(its relaxation objects, CUDA graphs, one host transfer per step), run side by side
in one process on one device, each from the same initial weights and batches. The
standard row is the same-size pre-norm transformer (same blocks and parameter count)
trained by backprop with the same fused AdamW. Reported per kind: the median step
(after ``--warmup`` steps, which also record the CUDA graphs), NFE per phase, ms per
F-equivalent evaluation, the ratio to the standard step, and ``wall / kernels``: the
step's wall time over the summed time of its GPU kernels (profiled on an eager
replica of the same step, since kernels inside replayed graphs are not profiled).
``--top N`` adds, from the same profile, the kernels' time per phase of the step (the
ranges :data:`~eqprop.train.ep_step.STEP_PHASES` of ``train_step``) and its N costliest
kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from eqprop.errors import CheckpointError, EqpropError
from eqprop.models.standard import StandardLM
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.configio import config_from_dict, load_config_file
from eqprop.train.ep_step import STEP_PHASES
from eqprop.train.trainer import Trainer

KINDS = ("asymep", "ift", "bptt", "standard", "asymep-eager", "asymep-unchecked",
         "ift-anderson")


def sync(dev: torch.device | str) -> None:
    """Wait for the device (a no-op on the CPU)."""
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, dev: torch.device | str, repeats: int, warmup: int = 0) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup``
    untimed ones, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def bench_config(path: str, out: Path, device: str):
    """The config file at ``path`` for a benchmark: its runs under ``out``'s folder, on
    ``device``, no progress bar, sample, validation or tracking."""
    cfg = config_from_dict(load_config_file(path))
    return replace(cfg, run=replace(cfg.run, out_dir=str(out.parent / "runs"), name=None,
                                    progress=False, device=device, sample_tokens=0),
                   eval=replace(cfg.eval, every=0), tracking=replace(cfg.tracking, every=0))


def _kernels(step, dev: torch.device, top: int = 0) -> dict:
    """The device time of one call of ``step`` (CPU: its ops' own time), in ms: ``total``,
    per phase of :data:`~eqprop.train.ep_step.STEP_PHASES` (``phases``, each range's
    kernels with those of its children) and the ``top`` kernels by summed time
    (``kernels``: name, ms, calls)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = dev.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
        sync(dev)
    kind = DeviceType.CUDA if cuda else DeviceType.CPU

    def own(e) -> float:
        return (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e3

    avg = prof.key_averages()
    # on CUDA the phases' ranges reappear as device events (not kernels: left out); on
    # CPU a range's own time (the host code between its ops) belongs to the step
    events = [e for e in avg if e.device_type == kind and own(e) > 0
              and not (cuda and e.key in STEP_PHASES)]
    kernels = sorted((e for e in events if e.key not in STEP_PHASES), key=own, reverse=True)
    phases: dict[str, float] = {}
    for e in prof.events():  # each range once per step
        if e.name in STEP_PHASES:
            ms = _kernels_under(e) if cuda else e.cpu_time_total / 1e3
            phases[e.name] = phases.get(e.name, 0.0) + ms
    return {"total": sum(own(e) for e in events), "phases": phases,
            "kernels": [(e.key, own(e), e.count) for e in kernels[:top]]}


def _kernels_under(event) -> float:
    """ms of the kernels launched under a profiled CPU event and its children. The
    profiler's own ``device_time_total`` would also count the range's span on the device
    (its annotation, idle gaps included), so the annotations are left out here."""
    own = sum(k.duration for k in event.kernels if k.name not in STEP_PHASES)
    return own / 1e3 + sum(_kernels_under(c) for c in event.cpu_children)


def _eager(cfg):
    """The config with every relaxation eager and a host check every step."""
    return replace(cfg, solver=replace(cfg.solver, capture=False, check_every=1),
                   estimator=replace(cfg.estimator, nudge=replace(cfg.estimator.nudge,
                                                                   capture=False,
                                                                   check_every=1)))


def _off_path(tr: Trainer, batch) -> dict[str, float]:
    """Wall time of the work kept off the per-step path: one validation, one checkpoint,
    one stability measurement (ARPACK) of the training batch."""
    dev = tr.device
    out = {}
    for name, fn in (("validate", tr.validate), ("checkpoint", tr.checkpoint)):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        out[name] = time.perf_counter() - t0
    field = tr.model.field(*batch)
    z = tr.free_relaxation().run(field, field.initial_state()).z
    t0 = time.perf_counter()
    tr.cfg.tracking.measure(tr.model, field, z)
    sync(dev)
    out["tracking"] = time.perf_counter() - t0
    return out


def bench(cfg, kind: str, warmup: int, repeats: int, top: int = 0,
          weights: dict[str, torch.Tensor] | None = None) -> dict:
    """One kind of step: median ms, NFE per phase, wall over kernels (and the kernels'
    time per phase of the step and the ``top`` kernels); from ``weights`` (a checkpoint's
    parameters) when given, else from the initialisation."""
    est = kind.split("-")[0]
    c = replace(cfg, estimator=replace(cfg.estimator, name="asymep" if est == "standard"
                                       else est))
    if kind == "asymep-eager":
        c = _eager(c)
    if kind == "asymep-unchecked":  # no stability check of the free phase's end point
        c = replace(c, solver=replace(c.solver, stability="never"))
    if kind == "ift-anderson":  # the adjoint relaxed as a flow, recorded as CUDA graphs
        c = replace(c, estimator=replace(c.estimator, ift_adjoint="anderson"))
    tr = Trainer(c)
    if weights is not None:
        try:
            tr.model.load_state_dict(weights)
        except RuntimeError:
            raise CheckpointError("the checkpoint is of other model settings than "
                                  f"{c.model}") from None
    dev = tr.device
    B, T = c.data.batch_size, c.model.seq_len
    gen = torch.Generator().manual_seed(c.run.seed)
    batches = [tuple(t.to(dev) for t in tr.corpus.get_batch("train", B, T, gen))
               for _ in range(warmup + repeats)]
    if kind == "standard":
        model = StandardLM(tr.cfg.model).to(dev)  # vocab_size set from the data
        model.load_state_dict(tr.model.state_dict())
        opt = torch.optim.AdamW(model.parameters(), lr=c.optim.lr, fused=dev.type == "cuda")

        def step(tokens, targets):
            model.loss(tokens, targets).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return {"nfe": {}}
    else:
        step = tr.train_step
    times, recs = [], []
    for i, (tokens, targets) in enumerate(batches):
        sync(dev)
        t0 = time.perf_counter()
        rec = step(tokens, targets)
        sync(dev)
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - t0))
            recs.append(rec)
    nfe = {k: statistics.mean(r["nfe"][k] for r in recs) for k in recs[0]["nfe"]}
    # the kernels of one step, profiled on an eager replica (graphs are not profiled)
    if kind != "standard":
        tr_e = Trainer(_eager(c))
        tr_e.model.load_state_dict(tr.model.state_dict())
        tr_e.train_step(*batches[-1])
        prof = _kernels(lambda: tr_e.train_step(*batches[-1]), dev, top)
    else:
        prof = _kernels(lambda: step(*batches[-1]), dev, top)
    kern = prof["total"]
    ms = statistics.median(times)
    total = sum(nfe.values())
    off = _off_path(tr, batches[-1]) if kind == "asymep" else {}
    return {"off_path_s": off, "kind": kind, "median_ms": ms,
            "p90_ms": sorted(times)[int(0.9 * len(times))],
            "nfe": nfe, "nfe_total": total, "ms_per_f": ms / total if total else float("nan"),
            "kernel_ms": kern, "wall_over_kernels": ms / kern if kern else float("nan"),
            "phase_ms": prof["phases"], "top_kernels": prof["kernels"],
            "train_ce": recs[-1].get("train_ce")}


def breakdown(rows: list[dict]) -> list[str]:
    """Markdown: the kernels' ms per phase of each equilibrium step, and its top kernels."""
    eq = [r for r in rows if r["phase_ms"]]
    if not eq:
        return []
    lines = ["", "Kernels' time per phase of the step (ms, the eager replica's profile; a "
             "phase holds the kernels of its calls, e.g. `eqprop.free` the free relaxation "
             "and its stability check):", "",
             "| step | " + " | ".join(p.removeprefix("eqprop.") for p in STEP_PHASES)
             + " | rest | total |", "|---|" + "---|" * (len(STEP_PHASES) + 2)]
    for r in eq:
        ph = [r["phase_ms"].get(p, 0.0) for p in STEP_PHASES]
        lines.append(f"| {r['kind']} | " + " | ".join(f"{v:.1f}" for v in ph)
                     + f" | {r['kernel_ms'] - sum(ph):.1f} | {r['kernel_ms']:.1f} |")
    for r in eq:
        lines += ["", f"Top kernels of `{r['kind']}` (ms summed over the step, calls):", "",
                  "| kernel | ms | calls |", "|---|---|---|"]
        lines += [f"| `{name[:90]}` | {ms:.2f} | {n} |" for name, ms, n in r["top_kernels"]]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/study.toml")
    p.add_argument("--out", required=True, help="markdown file (a .json beside it)")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--weights", default=None, metavar="RUN_DIR",
                   help="start every kind from the newest checkpoint's parameters of this "
                        "run (of the same model settings; its optimizer state is not "
                        "loaded), e.g. late in training where relaxations are long")
    p.add_argument("--top", type=int, default=0,
                   help="also tabulate the kernels' time per phase of the step and the "
                        "TOP kernels by summed time (from the eager replica's profile)")
    a = p.parse_args()
    kinds = a.kinds.split(",")
    if bad := [k for k in kinds if k not in KINDS]:
        p.error(f"--kinds {','.join(bad)}: allowed values are {','.join(KINDS)}")
    out = Path(a.out)
    cfg = bench_config(a.config, out, a.device)
    ck = None
    try:
        ck = None if a.weights is None else load_checkpoint(a.weights)
        rows = [bench(cfg, k, a.warmup, a.repeats, a.top, None if ck is None else ck.weights)
                for k in kinds]
    except EqpropError as e:
        p.error(f"--weights {a.weights}: {e}")
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and a.device != "cpu" \
        else "CPU"
    std = next((r["median_ms"] for r in rows if r["kind"] == "standard"), None)
    m = cfg.model
    lines = [f"# Training step at the study size ({dev}, torch {torch.__version__})", "",
             f"`python benchmarks/study_step.py --config {a.config} --out {a.out} "
             f"--kinds {a.kinds} --warmup {a.warmup} --repeats {a.repeats}"
             + (f" --weights {a.weights}" if ck else "") + (f" --top {a.top}" if a.top else "")
             + "`", "",
             f"d_model {m.d_model}, {m.n_heads} heads, d_ff {m.d_ff}, {m.n_layers} layer(s), "
             f"T {m.seq_len}, batch {cfg.data.batch_size}; free phase {cfg.solver.name} "
             f"(tol {cfg.solver.tol}, check every {cfg.solver.check_every}, capture "
             f"{cfg.solver.capture}); nudged phases {cfg.estimator.nudge.name} (β "
             f"{cfg.estimator.beta}); steps {a.warmup + 1}–{a.warmup + a.repeats} of training "
             + (f"from the parameters of {a.weights} at step {ck.step} (fresh optimizer)"
                if ck else "from the same seed")
             + ". `asymep-eager`: the same step with every relaxation eager and a host check "
             "every step (the loop before relaxations were "
             "objects); `asymep-unchecked`: without the stability check of the free "
             "phase's end point (`--solver.stability never`); `ift`: the adjoint by GMRES; "
             "`ift-anderson`: the adjoint relaxed as the flow ds/dt = Jᵀs - ∇L by Anderson, "
             "recorded as CUDA graphs (`--estimator.ift-adjoint anderson`).", "",
             "| step | median ms | p90 ms | × standard | NFE per phase | ms per F-eq | "
             "kernels ms | wall / kernels |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['median_ms'] / std:.1f}" if std else "n/a"
        nfe = ", ".join(f"{k} {v:.1f}" for k, v in r["nfe"].items()) or "—"
        per_f = f"{r['ms_per_f']:.3f}" if r["nfe_total"] else "—"
        lines.append(f"| {r['kind']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {ratio} | "
                     f"{nfe} | {per_f} | {r['kernel_ms']:.1f} | "
                     f"{r['wall_over_kernels']:.2f} |")
    for r in rows:
        if r["off_path_s"]:
            o = r["off_path_s"]
            lines += ["", f"Off the per-step path ({r['kind']} trainer, wall s per call): "
                      f"validation {o['validate']:.2f} ({cfg.eval.batches} batches of "
                      f"{cfg.eval.batch_size}, with the reference solve), checkpoint "
                      f"{o['checkpoint']:.3f}, stability tracking {o['tracking']:.2f} "
                      f"({cfg.tracking.samples} samples, ARPACK)."]
    if a.top:
        lines += breakdown(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
