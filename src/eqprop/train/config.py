"""Training settings: nested dataclasses, the one place where training defaults live.

The CLI (``eqprop train``) is generated from :class:`TrainConfig` by tyro;
``--config FILE`` loads the same structure from TOML or YAML (see
:mod:`eqprop.train.configio`). Every section validates itself in ``__post_init__``
and raises :class:`~eqprop.errors.ConfigError` naming the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass

from ..data import DataConfig
from ..diagnostics.tracking import StabilityTracking
from ..errors import ConfigError
from ..gradients.registry import EstimatorConfig
from ..models import ModelConfig
from ..regularizers import RegularizerConfig
from ..solvers import Anderson
from ..solvers.registry import SOLVERS, SolverConfig
from ..validate import boolean, choice, integer, interval
from .stability import StabilityConfig

__all__ = ["GUARD_ACTIONS", "GUARD_POLICIES", "EvalConfig", "GuardConfig", "OptimConfig",
           "RunConfig", "ScheduleConfig", "TrainConfig", "check_device", "check_seed"]

#: what the wall guard does when free relaxations stop converging (see GuardConfig)
GUARD_POLICIES = ("off", "warn", "stop", "skip", "escalate")
#: the escalation steps a ladder may list
GUARD_ACTIONS = ("eps", "jacreg", "solver")
#: largest seed torch's generators take (a seed plus a rank stays below 2**64)
MAX_SEED = 2**63 - 1


def check_device(device: object, where: str = "device") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, else a :class:`ConfigError` naming ``where``."""
    if not (isinstance(device, str) and (device in ("auto", "cpu", "cuda") or (
            device.startswith("cuda:") and device[5:].isascii() and device[5:].isdigit()))):
        raise ConfigError(f"{where}={device!r}: allowed values are auto, cpu, cuda, cuda:N")


def check_seed(seed: object, where: str = "seed") -> None:
    """An integer in [0, MAX_SEED], else a :class:`ConfigError` naming ``where``."""
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        raise ConfigError(f"{where}={seed!r}: must be an integer in [0, {MAX_SEED}]")


@dataclass
class OptimConfig:
    """AdamW settings.

    Args:
        lr: peak learning rate (reached after the warmup).
        weight_decay: decoupled weight decay, applied to matrices only (not to norms, biases).
        beta1: AdamW's first-moment decay.
        beta2: AdamW's second-moment decay.
        grad_clip: clip the global gradient norm to this value; 0 turns clipping off.
        ema_decay: decay of an exponential moving average of the parameters, used for
            validation and sampling and saved in checkpoints; 0 turns it off.
    """

    lr: float = 1e-2
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        interval("optim", "lr", self.lr, 0, 10, lo_open=True)
        interval("optim", "ema_decay", self.ema_decay, 0, 1, hi_open=True)
        interval("optim", "weight_decay", self.weight_decay, 0, 10)
        interval("optim", "beta1", self.beta1, 0, 1, hi_open=True)
        interval("optim", "beta2", self.beta2, 0, 1, hi_open=True)
        interval("optim", "grad_clip", self.grad_clip, 0, float("inf"), hi_open=True)


@dataclass
class ScheduleConfig:
    """Step budget and learning-rate schedule: linear warmup, then cosine decay.

    Args:
        steps: number of optimizer steps (updates) of the whole run.
        warmup: steps of linear warmup from 0 to ``optim.lr`` (a warmup as long as the
            run is allowed: the run then ends at the peak).
        min_lr_ratio: the cosine ends at ``min_lr_ratio × optim.lr``.
    """

    steps: int = 200
    warmup: int = 20
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        integer("schedule", "steps", self.steps)
        integer("schedule", "warmup", self.warmup, minimum=0)
        interval("schedule", "min_lr_ratio", self.min_lr_ratio, 0, 1)


@dataclass
class EvalConfig:
    """Periodic validation.

    Validation CE is measured twice on the same fixed batches: at the equilibrium
    the training solver finds, and after a tight reference solve started there: the
    gap shows how far training's z* is from the true fixed point. The reference is
    Anderson with a 20-deep history to 1e-6, its end points checked for stability:
    explicit Euler (the reference before) cycles or diverges once training makes ε_crit
    smaller than its ε, and its CE is then that of wherever it stopped (docs/stability.md,
    "The reference solve"); Anderson lands on the equilibrium the continuous flow reaches
    (dopri5, ``--eval.reference.name ode``) at a fifteenth of its cost.

    Args:
        every: validate every this many steps (and at the last step); 0 only at the end.
        batches: validation batches (the same ones each time).
        batch_size: sequences per validation batch.
        reference: the tight reference solver.
    """

    every: int = 50
    batches: int = 4
    batch_size: int = 32
    reference: SolverConfig = field(default_factory=lambda: SolverConfig(
        name="anderson", anderson=Anderson(eps=0.25, m=20), tol=1e-6, max_steps=1000))

    def __post_init__(self) -> None:
        integer("eval", "every", self.every, minimum=0)
        integer("eval", "batches", self.batches)
        integer("eval", "batch_size", self.batch_size)


@dataclass
class RunConfig:
    """Where the run is written and how it reports.

    Args:
        name: run directory name under ``out_dir``; default: a new timestamped name.
        out_dir: parent folder of run directories.
        seed: seed of the initial weights and of the batch order.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        threads: CPU threads for PyTorch; 0 keeps PyTorch's default. The default model is
            too small to gain from more than one (and shared cores make it slower).
        log_every: write a metrics record every this many steps.
        ckpt_every: checkpoint every this many steps (and at the end); 0 only at the end.
        progress: show a progress bar.
        sample_tokens: characters sampled into ``samples.txt`` at the end; 0 for none.
    """

    name: str | None = None
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    threads: int = 1
    log_every: int = 1
    ckpt_every: int = 100
    progress: bool = True
    sample_tokens: int = 300

    def __post_init__(self) -> None:
        if self.name is not None and not (
                isinstance(self.name, str) and self.name and self.name.isprintable()
                and not any(c in self.name for c in "/\\") and self.name not in (".", "..")):
            raise ConfigError(f"run.name={self.name!r}: must be a plain folder name (printable, "
                              "no '/' or '\\', not '.' or '..')")
        if not (isinstance(self.out_dir, str) and self.out_dir and self.out_dir.isprintable()):
            raise ConfigError(f"run.out_dir={self.out_dir!r}: give a folder for the run "
                              "directories (printable characters)")
        integer("run", "seed", self.seed, minimum=0, maximum=MAX_SEED)
        check_device(self.device, "run.device")
        integer("run", "threads", self.threads, minimum=0, maximum=1024)
        integer("run", "log_every", self.log_every)
        integer("run", "ckpt_every", self.ckpt_every, minimum=0)
        integer("run", "sample_tokens", self.sample_tokens, minimum=0)


@dataclass
class GuardConfig:
    """The wall guard: what training does when free relaxations stop converging.

    Every step the guard takes the fraction of the batch's free relaxations that
    failed (cycling, diverged or non-finite; also "contracting", out of budget while
    still converging, with ``count_contracting``) and its mean over the last
    ``window`` steps. When that mean reaches ``threshold`` the guard trips, logs a
    ``wall`` event in ``metrics.jsonl`` (a vertical line on the plots) and acts:

    - ``off``: nothing is measured.
    - ``warn``: the event only (and ``wall_cleared`` once the mean falls back).
    - ``stop``: checkpoint, validate and end the run (``eqprop train`` exits with 3).
    - ``skip``: while tripped, the update of a batch whose own failed fraction reaches
      ``threshold`` is skipped (the model is not moved by an estimate taken away from z*).
    - ``escalate``: the next step of ``ladder``: ``eps`` shrinks ε by ``eps_factor``
      (free and nudged phases), ``jacreg`` turns the Jacobian penalty on at
      ``jacreg_weight`` (or multiplies its weight by ``jacreg_factor``), ``solver``
      switches free and nudged phases to ``robust_solver``. After each step the window
      starts afresh; once the ladder is used up, a further trip stops the run.

    Args:
        policy: off, warn, stop, skip or escalate.
        window: steps over which the failed fraction is averaged (the guard waits for
            a full window before it can trip).
        threshold: mean failed fraction, in (0, 1], that trips the guard.
        count_contracting: count relaxations that ran out of steps while still
            contracting as failed.
        ladder: comma-separated escalation steps, in order (each may repeat).
        eps_factor: ``eps`` step: ε ← ε · eps_factor, in (0, 1).
        jacreg_weight: ``jacreg`` step: the penalty's weight when none was on.
        jacreg_factor: ``jacreg`` step: the weight's factor when one was on (> 1).
        robust_solver: ``solver`` step: the solver switched to (default: Euler with
            per-sample adaptive ε, faithful to the continuous dynamics).
    """

    policy: str = "warn"
    window: int = 20
    threshold: float = 0.5
    count_contracting: bool = False
    ladder: str = "eps,jacreg,solver"
    eps_factor: float = 0.5
    jacreg_weight: float = 0.1
    jacreg_factor: float = 10.0
    robust_solver: str = "adaptive"

    def __post_init__(self) -> None:
        choice("guard", "policy", self.policy, GUARD_POLICIES)
        integer("guard", "window", self.window)
        interval("guard", "threshold", self.threshold, 0, 1, lo_open=True)
        boolean("guard", "count_contracting", self.count_contracting)
        steps = self.ladder_steps() if isinstance(self.ladder, str) else [None]
        if not steps or any(a not in GUARD_ACTIONS for a in steps):
            raise ConfigError(f"guard.ladder={self.ladder!r}: a comma-separated list of "
                              f"{', '.join(GUARD_ACTIONS)}")
        interval("guard", "eps_factor", self.eps_factor, 0, 1, lo_open=True, hi_open=True)
        interval("guard", "jacreg_weight", self.jacreg_weight, 0, 1e6, lo_open=True)
        interval("guard", "jacreg_factor", self.jacreg_factor, 1, 1e6, lo_open=True)
        choice("guard", "robust_solver", self.robust_solver, SOLVERS)

    def ladder_steps(self) -> list[str]:
        """The escalation steps of ``ladder``, in order."""
        return [a.strip() for a in self.ladder.split(",") if a.strip()]


def _check_finite(cfg: object, path: str = "") -> None:
    """Every float of a (nested) config is finite: NaN or ±inf is never a setting."""
    for f in fields(cfg):
        value, where = getattr(cfg, f.name), f"{path}{f.name}"
        if is_dataclass(value):
            _check_finite(value, f"{where}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}={value!r}: must be a finite number")


@dataclass
class TrainConfig:
    """Everything a training run needs.

    Args:
        model: the equilibrium LM (``vocab_size`` is set from the data).
        solver: the free-phase relaxation.
        estimator: the gradient estimator (asymep, ep, ift, bptt) and its nudged phases.
        optim: AdamW and gradient clipping.
        schedule: step budget, warmup and cosine decay.
        data: corpus and batch size.
        eval: periodic validation.
        run: run directory, seed, device, logging.
        regularizer: Jacobian penalty (none, jacreg, homeostasis, abscissa), fixed or
            adaptive weight.
        tracking: every how many steps ε_crit and the critical mode are measured (0: never).
        guard: the wall guard (what happens when free relaxations stop converging).
        stability: the stability controller (sets the Jacobian penalty's weight).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    tracking: StabilityTracking = field(default_factory=StabilityTracking)
    guard: GuardConfig = field(default_factory=GuardConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)

    def __post_init__(self) -> None:
        _check_finite(self)
        standard, backprop = self.model.block == "standard", self.estimator.name == "backprop"
        if standard and not backprop:
            raise ConfigError(f"model.block='standard' (the feed-forward baseline) is trained "
                              f"by backprop, not estimator.name={self.estimator.name!r}: add "
                              "--estimator.name backprop")
        if backprop and not standard:
            raise ConfigError(f"estimator.name='backprop' trains the feed-forward baseline, "
                              f"not model.block={self.model.block!r}: add --model.block standard")
        if backprop and self.regularizer.name != "none":
            raise ConfigError(f"regularizer.name={self.regularizer.name!r} penalises an "
                              "equilibrium's Jacobian; the backprop baseline has none: use "
                              "--regularizer.name none")
        if backprop and self.tracking.fidelity_every:
            raise ConfigError(f"tracking.fidelity_every={self.tracking.fidelity_every} measures "
                              "an estimator's cosine to IFT; the backprop baseline has none: "
                              "use --tracking.fidelity-every 0")
        if self.stability.enabled and (self.regularizer.name == "none"
                                       or self.regularizer.adaptive):
            raise ConfigError("stability.enabled=true sets the Jacobian penalty's weight: "
                              "choose regularizer.name jacreg, homeostasis or abscissa with a "
                              "fixed weight (regularizer.adaptive false)")
