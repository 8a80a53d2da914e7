"""``eqprop bench solvers``: relaxation solvers side by side on stiff problems (design §2).

Cases: (i) ``stiff``: a linear field with rotating modes ``a ± ib`` (``|b| ≫ |a|``);
(ii) ``lm``: a fresh LM with W_Q, W_K × ``qk_scale``; (iii) ``run``: a run's trained LM on
validation text. Per solver: the fraction of samples reaching ``tol``, their NFE (F, JVP,
VJP) and wall time. torchdeq's Anderson and Broyden (optional ``peers`` extra) run on
``G(z) = z + εF(z)``; their NFE per sample counts evaluations until that sample first
reached ``tol`` (a counting wrapper of F).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import Field
from ..solvers.base import sample_norm
from ..solvers.registry import FLAT_SETTINGS, SOLVERS, SolverConfig, build_solver
from ..solvers.relaxation import Relaxation
from ..solvers.status import Status
from ..train.configio import apply_overrides
from .problems import CountingField, counting, stiff_field

__all__ = ["DEFAULT_SOLVERS", "CountingField", "SolverBenchConfig", "bench_solvers",
           "markdown_table", "stiff_field"]

#: solver specs ``name[:controller][@eps]`` run by default
DEFAULT_SOLVERS = ("euler@0.1", "euler", "adaptive:overshoot", "adaptive:ema", "adaptive:noise",
                   "adaptive:pi", "adaptive:doubling", "adaptive:ser", "adaptive:naive",
                   "anderson", "broyden", "newton", "implicit", "ptc", "imex", "ode")
PEERS = ("torchdeq-anderson", "torchdeq-broyden")
CASES = ("stiff", "lm", "run")


@dataclass
class SolverBenchConfig:
    """Settings of the solver benchmark.

    Args:
        cases: which problems: ``stiff`` (analytic), ``lm`` (a fresh LM with sharpened
            attention), ``run`` (the trained model of ``run``; skipped without one).
        solvers: solver specs ``name[:controller][@eps]`` (names of ``SOLVERS``).
        peers: also run torchdeq's Anderson and Broyden (skipped with a note if
            torchdeq is not installed: ``pip install 'eqprop[peers]'``).
        tol: relative residual ``‖F‖/‖z‖`` to reach.
        max_nfe: evaluation budget per sample.
        eps: ε of Euler and of the map ``G = z + εF`` of Anderson and the peers.
        batch: samples per case.
        run: a run directory or checkpoint for the ``run`` case.
        qk_scale: factor on W_Q and W_K of the synthetic model.
        d_model, n_layers, seq_len: shape of the synthetic model.
        stiff_b: largest rotation rate |b| of the analytic field (a = -1).
        stiff_dim: dimension of the analytic field (even).
        eps_crit_samples: estimate ε_crit of the lm case on this many samples (0: skip).
        flow_horizons: horizons of the ODE reference (the time covered grows 1.5× each).
        dtype: float32 or float64.
        threads: CPU threads for torch (0: leave as is).
        seed: seed of models, tokens and fields.
        verbose: print one progress line per solver to stderr.
    """

    cases: tuple[str, ...] = CASES
    solvers: tuple[str, ...] = DEFAULT_SOLVERS
    peers: bool = True
    tol: float = 1e-5
    max_nfe: int = 2000
    eps: float = 0.5
    batch: int = 16
    run: str | None = None
    qk_scale: float = 6.0
    d_model: int = 32
    n_layers: int = 2
    seq_len: int = 32
    stiff_b: float = 20.0
    stiff_dim: int = 64
    eps_crit_samples: int = 4
    flow_horizons: int = 14
    dtype: str = "float32"
    threads: int = 1
    seed: int = 0
    verbose: bool = True

    def __post_init__(self) -> None:
        for c in self.cases:
            if c not in CASES:
                raise ConfigError(f"bench cases: {c!r} is not a case; allowed: {', '.join(CASES)}")
        for spec in self.solvers:
            parse_spec(spec)
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"bench dtype={self.dtype!r}: allowed values are float32, float64")
        for name in ("tol", "eps", "qk_scale", "stiff_b"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < math.inf):
                raise ConfigError(f"bench {name}={v!r}: must be a finite number > 0")
        for name, low in (("max_nfe", 1), ("batch", 1), ("d_model", 2), ("n_layers", 1),
                          ("seq_len", 2), ("stiff_dim", 4), ("eps_crit_samples", 0),
                          ("flow_horizons", 1), ("threads", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"bench {name}={v!r}: must be an integer ≥ {low}")
        if self.stiff_dim % 2:
            raise ConfigError(f"bench stiff_dim={self.stiff_dim}: must be even (pairs of modes)")


def parse_spec(spec: str) -> tuple[str, str | None, float | None]:
    """``"adaptive:pi@0.2"`` -> ``("adaptive", "pi", 0.2)``; errors list what is allowed."""
    rest, _, eps = spec.partition("@")
    name, _, controller = rest.partition(":")
    if name not in SOLVERS:
        raise ConfigError(f"bench solver {spec!r}: {name!r} is not a solver; allowed: "
                          f"{', '.join(SOLVERS)} (spec: name[:controller][@eps])")
    try:
        eps_v = float(eps) if eps else None
    except ValueError:
        raise ConfigError(f"bench solver {spec!r}: the part after @ must be a number") from None
    _solver_config(name, controller or None, None)  # validates the controller name
    return name, controller or None, eps_v


def _solver_config(name: str, controller: str | None, eps: float | None,
                   tol: float | None = None) -> SolverConfig:
    """The solver config of a spec: ε goes to the solver's section where it has one."""
    values: dict = {"name": name} if tol is None else {"name": name, "tol": tol}
    if eps is not None:
        values.update({section: {"eps": eps} for section, _ in FLAT_SETTINGS["eps"]})
    if controller:
        values.setdefault("adaptive", {})["controller"] = controller
    return apply_overrides(SolverConfig(), values)


def _lm_case(cfg: SolverBenchConfig, dtype: torch.dtype,
             trained: bool) -> tuple[Field, Tensor, str]:
    from ..models import EquilibriumLM, ModelConfig

    gen = torch.Generator().manual_seed(cfg.seed)
    if trained:
        from ..data.corpus import load_corpus
        from ..train.loaded import load_run  # lazy: the training package is heavy

        run = load_run(cfg.run)
        model = run.model.to(dtype)
        T = min(cfg.seq_len, model.cfg.seq_len)
        corpus = load_corpus(run.config.data, seq_len=T, vocab=run.vocab)
        tokens, targets = corpus.get_batch("val", cfg.batch, T, generator=gen)
        desc = f"run {cfg.run} (step {run.step}), val batch {cfg.batch}×{T}"
    else:
        torch.manual_seed(cfg.seed)
        mcfg = ModelConfig(d_model=cfg.d_model, n_heads=max(1, cfg.d_model // 16),
                           d_ff=2 * cfg.d_model, n_layers=cfg.n_layers, seq_len=cfg.seq_len)
        model = EquilibriumLM(mcfg).to(dtype)
        with torch.no_grad():
            for blk in model.blocks:
                blk.W_q.weight.mul_(cfg.qk_scale)
                blk.W_k.weight.mul_(cfg.qk_scale)
        tokens = torch.randint(0, mcfg.vocab_size, (cfg.batch, cfg.seq_len), generator=gen)
        targets = None
        desc = (f"fresh LM d={cfg.d_model} L={cfg.n_layers} T={cfg.seq_len}, W_Q,W_K ×"
                f"{cfg.qk_scale}, random tokens, batch {cfg.batch}")
    model.eval()
    field = model.field(tokens, targets)
    return field, field.initial_state(), desc


def _run_ours(spec: str, F: Field, z0: Tensor, cfg: SolverBenchConfig) -> dict:
    name, controller, eps = parse_spec(spec)
    sc = _solver_config(name, controller, cfg.eps if eps is None else eps, cfg.tol)
    counted = counting(F, None)  # the relaxation holds the budget, per sample
    t = time.perf_counter()
    sol = Relaxation(build_solver(sc), tol=cfg.tol, max_steps=cfg.max_nfe,
                     max_nfe=cfg.max_nfe).run(counted, z0)
    wall = time.perf_counter() - t
    reached = sol.converged & (sol.nfe <= cfg.max_nfe)
    cut = ~sol.converged & (sol.nfe >= cfg.max_nfe) & (sol.status != Status.NONFINITE)
    # the samples the budget ended are "out of budget", whatever their residual trend
    n = torch.bincount(sol.status[~cut], minlength=len(Status)).tolist()
    counts = {s.label: n[s] for s in Status if n[s] and s != Status.CONVERGED}
    if int(cut.sum()):
        counts["out of budget"] = int(cut.sum())
    note = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    return _row(spec, reached, sol.nfe, wall, note, sol.z)


def _run_peer(kind: str, F: Field, z0: Tensor, cfg: SolverBenchConfig) -> dict:
    try:
        from torchdeq.solver import get_solver
    except ImportError:
        return {"solver": kind, "skipped": "torchdeq not installed (pip install 'eqprop[peers]')"}
    counted = counting(F, cfg.max_nfe)
    counted.tol = cfg.tol
    counted.first_hit = torch.full((z0.shape[0],), -1, dtype=torch.long)
    eps = cfg.eps

    def G(z: Tensor) -> Tensor:
        return z + eps * counted(z)

    solve = get_solver(kind.split("-")[1])
    # torchdeq's 'rel' criterion is ‖G(z) - z‖/‖G(z)‖ ≈ ε g: stop when every sample is there
    t = time.perf_counter()
    with torch.no_grad():
        z, _, _ = solve(G, z0, max_iter=cfg.max_nfe, tol=0.5 * eps * cfg.tol, stop_mode="rel")
    wall = time.perf_counter() - t
    hit = counted.first_hit
    nfe = torch.where(hit > 0, hit, torch.full_like(hit, cfg.max_nfe + 1))
    return _row(kind, hit > 0, nfe, wall, "", z)


def _row(name: str, reached: Tensor, nfe: Tensor, wall: float, note: str, z: Tensor) -> dict:
    n = nfe[reached].double()
    return {"solver": name, "reached": float(reached.double().mean()),
            "nfe_mean": float(n.mean()) if n.numel() else math.nan,
            "nfe_median": float(n.median()) if n.numel() else math.nan,
            "nfe_max": int(n.max()) if n.numel() else -1, "wall_s": wall, "note": note,
            "z": z.detach(), "reached_mask": reached}


def _flow_reference(F: Field, z0: Tensor, cfg: SolverBenchConfig) -> tuple[Tensor, Tensor]:
    """Where the continuous flow settles: the ODE reference (the analog emulator).

    Returns ``(z_ref, settled)``; a solver's sample "follows the flow" when it reached
    ``tol`` within ``FLOW_RTOL`` of ``z_ref``. Root finders and large steps can land on
    another equilibrium (possibly a saddle), which the hardware would not reach."""
    from ..solvers.ode import ODE, settling_time

    _, sol = settling_time(F, z0, ODE(tol=cfg.tol, rtol=1e-4), max_steps=cfg.flow_horizons)
    return sol.z, sol.converged


#: relative distance to the flow's equilibrium within which a solution agrees with it
FLOW_RTOL = 1e-3


def _eps_crit_note(F: Field, z_ref: Tensor, settled: Tensor, k: int) -> str:
    """ε_crit at the flow's equilibria (the first ``k`` settled samples), via diagnostics."""
    from ..diagnostics import eps_crit  # lazy: ARPACK via scipy

    idx = settled.nonzero().flatten()[:k].tolist()
    one = [F.sample(b) for b in idx]  # each sample's own field (None: the field has none)
    if not idx or any(f is None for f in one):
        return ""
    ecs = [eps_crit(f, z_ref[b : b + 1], bisect=False) for f, b in zip(one, idx, strict=True)]
    vals = ", ".join(f"{float(ec.eig[0]):.3f}" for ec in ecs)
    max_re = max(float(ec.max_real[0]) for ec in ecs)
    return f"ε_crit at the flow's z* of {len(idx)} samples: {vals} (max Re μ {max_re:.3f})"


def bench_solvers(cfg: SolverBenchConfig) -> list[tuple[str, str, list[dict]]]:
    """Run every solver (and peer) on every case.

    Returns:
        ``[(case, description, rows)]``; each row a dict with ``solver``, ``reached``
        (fraction of samples at ``tol``), ``flow`` (fraction at ``tol`` on the
        equilibrium the continuous flow settles on), ``nfe_mean``/``nfe_median``/
        ``nfe_max`` over the samples that reached ``tol``, ``wall_s`` and a ``note``
        (or ``skipped``).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype = getattr(torch, cfg.dtype)
    out = []
    for case in cfg.cases:
        if case == "stiff":
            F = stiff_field(cfg.stiff_dim, cfg.stiff_b, cfg.batch, cfg.seed, dtype)
            z0 = torch.zeros_like(F.z_fix) + 1.0
            ec = 2 * 0.1 / (0.01 + cfg.stiff_b**2)  # slowest-damped mode has the largest b
            desc = (f"linear, {cfg.stiff_dim // 2} modes a ∈ [-1, -0.1], |b| ≤ {cfg.stiff_b:g}, "
                    f"ε_crit = {ec:.2e}, batch {cfg.batch}")
            z_ref, settled = F.z_fix, torch.ones(cfg.batch, dtype=torch.bool)
        elif case == "run" and cfg.run is None:
            out.append((case, "skipped: no --solvers.run given", []))
            continue
        else:
            F, z0, desc = _lm_case(cfg, dtype, trained=case == "run")
            t = time.perf_counter()
            z_ref, settled = _flow_reference(F, z0, cfg)
            desc += (f"; the flow (ODE reference, {time.perf_counter() - t:.0f} s) settles "
                     f"{int(settled.sum())}/{cfg.batch} samples")
            if cfg.eps_crit_samples:
                note = _eps_crit_note(F, z_ref, settled, cfg.eps_crit_samples)
                desc = f"{desc}; {note}" if note else desc
        rows = []
        for spec in cfg.solvers + (PEERS if cfg.peers else ()):
            run = _run_peer if spec in PEERS else _run_ours
            r = run(spec, F, z0, cfg)
            if "skipped" not in r:
                dist = sample_norm(r["z"] - z_ref) / sample_norm(z_ref)
                r["flow"] = float((r["reached_mask"] & settled & (dist <= FLOW_RTOL))
                                  .double().mean())
            rows.append(r)
            if cfg.verbose:
                print(f"[bench {case}] {spec}: " + (f"skipped ({r['skipped']})" if "skipped" in r
                      else f"{100 * r['reached']:.0f} % ({100 * r['flow']:.0f} % on the flow's "
                           f"z*) at {r['nfe_mean']:.0f} NFE, {r['wall_s']:.1f} s"),
                      file=sys.stderr, flush=True)
        out.append((case, desc, rows))
    return out


def markdown_table(results: list[tuple[str, str, list[dict]]], cfg: SolverBenchConfig,
                   command: str = "") -> str:
    """The results as markdown: one table per case."""
    lines = []
    if command:
        lines += ["```", command, "```", ""]
    lines += [f"Relative residual target {cfg.tol:g}, budget {cfg.max_nfe} evaluations per "
              f"sample, ε = {cfg.eps:g} for Euler/Anderson/peers, {cfg.dtype}, "
              f"{torch.get_num_threads()} CPU thread(s). \"reached\": samples at the target; "
              "\"on the flow's z*\": at the target within a relative distance "
              f"{FLOW_RTOL:g} of the equilibrium where the continuous flow (ODE reference) "
              "settles, i.e. where the hardware would settle. NFE: mean / median / max over "
              "the samples that reached the target (F, JVP and VJP each count 1).", ""]
    for case, desc, rows in results:
        if not rows:
            lines += [f"## {case}: {desc}", ""]
            continue
        lines += [f"## {case}: {desc}", "",
                  "| solver | reached | on the flow's z* | NFE mean | NFE median | NFE max "
                  "| wall s | notes |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            if "skipped" in r:
                lines.append(f"| {r['solver']} | – | – | – | – | – | – | "
                             f"skipped: {r['skipped']} |")
                continue
            nfe = (f"{r['nfe_mean']:.0f} | {r['nfe_median']:.0f} | {r['nfe_max']}"
                   if r["reached"] else "– | – | –")
            lines.append(f"| {r['solver']} | {100 * r['reached']:.0f} % | "
                         f"{100 * r['flow']:.0f} % | {nfe} | {r['wall_s']:.2f} | {r['note']} |")
        lines.append("")
    return "\n".join(lines)
