"""``eqprop bench train``: one training step of each kind, side by side in one run.

An AsymEP step, an IFT-backprop step, a truncated-BPTT step and a standard
(non-equilibrium) transformer of the same parameter count trained by ordinary
backprop: tokens/s, step time split by phase, peak memory, achieved TFLOP/s
against the device's peak, and scaling with sequence length, width, batch and
layers. FLOPs are counted analytically per F-equivalent evaluation (a JVP or VJP
is counted as one evaluation, as NFE is), so TFLOP/s is a lower bound.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch

from ..errors import ConfigError
from ..gradients import BPTT, IFT, AsymEP, Estimator, gradient_cosine
from ..models import EquilibriumLM, ModelConfig
from ..models.standard import StandardLM
from ..solvers import AdaptiveEuler, Anderson, Euler, Solver, relax
from ..solvers.relaxation import Relaxation

__all__ = ["POLICIES", "PRECISIONS", "TrainBenchConfig", "bench_precision", "bench_relax_loop",
           "bench_train_step", "flops_per_eval"]

PRECISIONS = ("fp32", "tf32", "bf16")
NUDGE_SOLVERS = ("euler", "anderson")
#: dense tensor-core peaks (TFLOP/s) by device-name fragment and precision (vendor data sheets)
PEAK_TFLOPS = {"H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
               "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}}


@dataclass
class TrainBenchConfig:
    """Sizes and settings of the training-step benchmark.

    Args:
        d_model, n_heads, d_ff, n_layers, seq_len, batch_size, vocab_size: the model and batch.
        eps: Euler step of the free and nudged phases.
        free_tol, free_max_steps: free-phase tolerance and budget.
        beta, nudge_tol, nudge_max_steps: AsymEP nudging (tolerance relative to the nudge).
            The per-sample loss is a mean over T positions, so ``β‖∇L‖`` shrinks like
            ``1/√T``: a small β puts the nudge near float32's round-off of ``F(z) - F(z*)``
            and the nudged residual stalls (measured: docs/gpu.md, "EP against backprop").
        nudge_solver: solver of the nudged phases, ``euler`` or ``anderson`` (step ``eps``).
        batch_nudges: relax AsymEP's ±β phases as one batch of 2B samples.
        ift_tol: GMRES tolerance of the IFT step (set equal to ``nudge_tol``: equal residual).
        bptt_steps: unroll length of the BPTT step.
        precision: fp32, tf32 (TF32 matmuls) or bf16 (autocast).
        nudge_precision: precision of the gradient phase (nudged relaxations, GMRES,
            BPTT unroll); None: the same as ``precision``.
        check_every: host check for convergence every k steps.
        capture: record ``check_every`` relaxation steps as a CUDA graph (free and
            nudged phases; ignored on CPU).
        warmup, repeats: untimed and timed steps per measurement.
        device: "cuda" or "cpu".
    """

    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_layers: int = 2
    seq_len: int = 256
    batch_size: int = 16
    vocab_size: int = 65
    eps: float = 0.5
    free_tol: float = 1e-4
    free_max_steps: int = 100
    beta: float = 0.5
    nudge_tol: float = 1e-2
    nudge_max_steps: int = 100
    nudge_solver: str = "euler"
    batch_nudges: bool = True
    ift_tol: float = 1e-2
    bptt_steps: int = 20
    precision: str = "tf32"
    nudge_precision: str | None = None
    check_every: int = 1
    capture: bool = False
    warmup: int = 2
    repeats: int = 5
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")

    def __post_init__(self) -> None:
        for name in ("precision", "nudge_precision"):
            v = getattr(self, name)
            if v not in PRECISIONS and not (name == "nudge_precision" and v is None):
                raise ConfigError(f"{name}={v!r}: allowed values are {', '.join(PRECISIONS)}")
        if self.nudge_solver not in NUDGE_SOLVERS:
            raise ConfigError(f"nudge_solver={self.nudge_solver!r}: allowed values are "
                              f"{', '.join(NUDGE_SOLVERS)}")
        if self.device not in ("cuda", "cpu"):
            raise ConfigError(f"device={self.device!r}: allowed values are cuda, cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device='cuda' but no CUDA device is available: use device='cpu' "
                              "(eqprop bench train --train.device cpu)")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"repeats={self.repeats}, warmup={self.warmup}: need repeats ≥ 1, "
                              "warmup ≥ 0")

    def asymep(self) -> AsymEP:
        """The AsymEP estimator these settings describe."""
        solver = Euler(self.eps) if self.nudge_solver == "euler" else Anderson(eps=self.eps)
        return AsymEP(beta=self.beta, solver=solver, tol=self.nudge_tol,
                      max_steps=self.nudge_max_steps, check_every=self.check_every,
                      capture=self.capture, batch_nudges=self.batch_nudges)

    def free(self) -> Relaxation:
        """The free phase's relaxation these settings describe (Euler at ``eps``)."""
        return Relaxation(Euler(self.eps), tol=self.free_tol, max_steps=self.free_max_steps,
                          check_every=self.check_every, capture=self.capture)

    def model_config(self) -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_heads=self.n_heads,
                           d_ff=self.d_ff, n_layers=self.n_layers, seq_len=self.seq_len)


def flops_per_eval(cfg: TrainBenchConfig) -> float:
    """Matmul FLOPs of one evaluation of F on the batch (causal attention counted at half)."""
    D, Fd, T = cfg.d_model, cfg.d_ff, cfg.seq_len
    per_token_layer = 2 * 4 * D * D + 2 * 2 * D * Fd + 2 * 2 * T * D / 2
    return cfg.batch_size * T * cfg.n_layers * per_token_layer


@contextlib.contextmanager
def precision_context(precision: str, device: str) -> Iterator[None]:
    """TF32 on or off for matmuls, and bf16 autocast for ``bf16``."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    try:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _eq_step(model, opt, batch, est: Estimator, free: Relaxation,
             cfg: TrainBenchConfig) -> dict[str, float]:
    tokens, targets = batch
    t0 = time.perf_counter()
    field = model.field(tokens, targets)
    sol = free.run(field, field.initial_state())
    _sync(cfg.device)
    t1 = time.perf_counter()
    with precision_context(cfg.nudge_precision or cfg.precision, cfg.device):
        res = est.estimate(field, sol.z)
    _sync(cfg.device)
    t2 = time.perf_counter()
    res.surrogate.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(cfg.device)
    t3 = time.perf_counter()
    nfe = float(sol.nfe.float().mean()) + sum(float(v.float().mean()) for v in res.nfe.values())
    nudged = [v.converged.float().mean() for v in res.solutions.values()]
    return {"free": t1 - t0, "gradient": t2 - t1, "update": t3 - t2, "nfe": nfe + 2.0,
            "free_conv": float(sol.converged.float().mean()),
            "nudge_conv": float(torch.stack(nudged).mean()) if nudged else float("nan")}


def _std_step(model, opt, batch, cfg: TrainBenchConfig) -> dict[str, float]:
    t0 = time.perf_counter()
    model.loss(*batch).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(cfg.device)
    return {"free": 0.0, "gradient": 0.0, "update": time.perf_counter() - t0, "nfe": 3.0,
            "free_conv": float("nan"), "nudge_conv": float("nan")}


def _measure(step: Callable[[], dict[str, float]], cfg: TrainBenchConfig) -> dict[str, float]:
    for _ in range(cfg.warmup):
        step()
    if cfg.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs = [step() for _ in range(cfg.repeats)]
    out = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    out["step"] = out["free"] + out["gradient"] + out["update"]
    out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if cfg.device == "cuda" else 0.0
    return out


def _peak(precision: str, device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v[precision] for k, v in PEAK_TFLOPS.items() if k in name), None)


KINDS = ("asymep", "ift", "bptt", "standard")


def bench_train_step(cfg: TrainBenchConfig, seed: int = 0,
                     kinds: tuple[str, ...] = KINDS) -> list[dict[str, float | str]]:
    """Time the kinds of training step (default: all four) on one model size; a row each."""
    torch.manual_seed(seed)
    mcfg = cfg.model_config()
    g = torch.Generator().manual_seed(seed)
    batch = tuple(torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.seq_len), generator=g)
                  .to(cfg.device) for _ in range(2))
    eq = EquilibriumLM(mcfg).to(cfg.device)
    std = StandardLM(mcfg).to(cfg.device)
    std.load_state_dict(eq.state_dict())
    steps: dict[str, tuple[torch.nn.Module, Estimator | None]] = {
        "asymep": (eq, cfg.asymep()),
        "ift": (eq, IFT(tol=cfg.ift_tol)),
        "bptt": (eq, BPTT(steps=cfg.bptt_steps, solver=Euler(cfg.eps))),
        "standard": (std, None),
    }
    tokens_per_step = cfg.batch_size * cfg.seq_len
    fl, peak = flops_per_eval(cfg), _peak(cfg.precision, cfg.device)
    rows = []
    free = cfg.free()  # held across the steps, as the trainer holds its free relaxation
    for kind, (model, est) in steps.items():
        if kind not in kinds:
            continue
        state = {k: v.clone() for k, v in model.state_dict().items()}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        with precision_context(cfg.precision, cfg.device):
            if est is None:
                m = _measure(lambda: _std_step(model, opt, batch, cfg), cfg)  # noqa: B023
            else:
                m = _measure(lambda: _eq_step(model, opt, batch, est, free, cfg),  # noqa: B023
                             cfg)
        model.load_state_dict(state)
        tflops = m["nfe"] * fl / m["step"] / 1e12
        rows.append({"kind": kind, **m, "tokens_per_s": tokens_per_step / m["step"],
                     "tflops": tflops, "peak_frac": tflops / peak if peak else float("nan")})
    return rows


#: (free-phase precision, gradient-phase precision) policies compared by bench_precision
POLICIES = (("fp32", "fp32"), ("tf32", "tf32"), ("bf16", "bf16"), ("tf32", "fp32"),
            ("bf16", "fp32"))


def bench_precision(cfg: TrainBenchConfig, seed: int = 0) -> list[dict[str, float | str]]:
    """Per precision policy (free phase, gradient phase): the AsymEP gradient's cosine to an
    fp32 IFT reference (free phase to 1e-6, GMRES to 1e-6), and the AsymEP step time."""
    torch.manual_seed(seed)
    model = EquilibriumLM(cfg.model_config()).to(cfg.device)
    g = torch.Generator().manual_seed(seed)
    tokens, targets = (torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.seq_len),
                                     generator=g).to(cfg.device) for _ in range(2))

    def grads(est: Estimator, free: str, grad: str, tol: float) -> dict[str, torch.Tensor]:
        field = model.field(tokens, targets)
        with precision_context(free, cfg.device):
            sol = Relaxation(Euler(cfg.eps), tol=tol, max_steps=1000).run(
                field, field.initial_state())
        model.zero_grad(set_to_none=True)
        with precision_context(grad, cfg.device):
            est.estimate(field, sol.z).surrogate.backward()
        out = {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return out

    ref = grads(IFT(tol=1e-6, max_iter=1000), "fp32", "fp32", 1e-6)
    rows = []
    for free, grad in POLICIES:
        est = replace(cfg, check_every=1, capture=False).asymep()
        cos, _ = gradient_cosine(grads(est, free, grad, cfg.free_tol), ref)
        timing = bench_train_step(replace(cfg, precision=free, nudge_precision=grad), seed,
                                  kinds=("asymep",))[0]
        rows.append({"free": free, "gradient": grad, "cosine": cos, "step": timing["step"],
                     "nfe": timing["nfe"], "nudge_conv": timing["nudge_conv"],
                     "tflops": timing["tflops"]})
    return rows


def _loop_solvers(cfg: TrainBenchConfig) -> dict[str, Solver]:
    return {"euler": Euler(cfg.eps), "adaptive": AdaptiveEuler(eps0=cfg.eps),
            "anderson": Anderson(eps=cfg.eps)}


def bench_relax_loop(cfg: TrainBenchConfig, steps: int = 64, chunk: int = 16,
                     seed: int = 0) -> list[dict[str, float | str]]:
    """Relaxation-loop wall time against the summed time of its GPU kernels.

    Per solver (Euler, adaptive PI, Anderson) and loop variant (host check every
    step; every ``chunk`` steps; every ``chunk`` steps with the chunk captured as a
    CUDA graph), a free relaxation of exactly ``steps`` and of ``2·steps`` steps
    (the tolerance is never met) is timed. ``call_ms`` is the wall of one
    ``steps``-step call (warm-up and capture included); ``step_ms`` the marginal
    cost of a step, ``(wall(2n) - wall(n)) / n``, where one-off costs cancel.
    ``kernel_ms`` is the summed device time of the kernels of one step (profiled on
    the eager loop; on CPU the ops' own time), so ``gap = step_ms / kernel_ms`` is 1
    when no launch gap is left.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(seed)
    model = EquilibriumLM(cfg.model_config()).to(cfg.device)
    tokens = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.seq_len), device=cfg.device)
    field = model.field(tokens, tokens)
    z0 = field.initial_state()
    rows: list[dict[str, float | str]] = []
    with precision_context(cfg.precision, cfg.device), torch.no_grad():
        for name, solver in _loop_solvers(cfg).items():
            def run(n: int, check_every: int, capture: bool) -> float:
                _sync(cfg.device)
                t0 = time.perf_counter()
                # a one-off relaxation: its call cost includes recording the graph
                relax(field, z0, solver, tol=1e-30, max_steps=n,  # noqa: B023
                      check_every=check_every, capture=capture)
                _sync(cfg.device)
                return time.perf_counter() - t0

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                             if cfg.device == "cuda" else [])
            run(steps, chunk, False)
            with profile(activities=acts) as prof:
                run(steps, chunk, False)
            # device-side events only (an op's self device time repeats its kernels'); on CPU
            # the "kernels" are the ops' own CPU time
            kind = DeviceType.CUDA if cfg.device == "cuda" else DeviceType.CPU
            kernel = sum(e.self_device_time_total if kind == DeviceType.CUDA
                         else e.self_cpu_time_total
                         for e in prof.key_averages() if e.device_type == kind) / 1e6 / steps
            for variant, check_every, capture in (("host check every step", 1, False),
                                                  (f"check every {chunk}", chunk, False),
                                                  (f"CUDA graph of {chunk}", chunk, True)):
                if capture and cfg.device != "cuda":
                    continue
                run(steps, check_every, capture)  # warm-up
                short = min(run(steps, check_every, capture) for _ in range(3))
                long = min(run(2 * steps, check_every, capture) for _ in range(3))
                step_s = (long - short) / steps
                rows.append({"solver": name, "variant": variant, "call_ms": 1e3 * short,
                             "step_ms": 1e3 * step_s, "kernel_ms": 1e3 * kernel,
                             "gap": step_s / kernel if kernel else float("nan"),
                             "call_gap": short / (steps * kernel) if kernel else float("nan")})
    return rows
