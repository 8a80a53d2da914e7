"""Training settings: nested dataclasses, the one place where training defaults live.

The CLI (``eqprop train``) is generated from :class:`TrainConfig` by tyro;
``--config FILE`` loads the same structure from TOML or YAML (see
:mod:`eqprop.train.configio`). Every section validates itself in ``__post_init__``
and raises :class:`~eqprop.errors.ConfigError` naming the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import DataConfig
from ..diagnostics.tracking import StabilityTracking
from ..errors import ConfigError
from ..gradients.registry import EstimatorConfig
from ..models import ModelConfig
from ..regularizers import RegularizerConfig
from ..solvers.registry import SolverConfig

__all__ = ["EvalConfig", "OptimConfig", "RunConfig", "ScheduleConfig", "TrainConfig"]


def _positive_int(section: str, name: str, value: object, minimum: int = 1) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise ConfigError(f"{section}.{name}={value!r}: must be an integer ≥ {minimum}")


def _number(section: str, name: str, value: object, lo: float, hi: float,
            lo_open: bool = False, hi_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{section}.{name}={value!r}: must be a number in {interval}")


@dataclass
class OptimConfig:
    """AdamW settings.

    Args:
        lr: peak learning rate (reached after the warmup).
        weight_decay: decoupled weight decay, applied to matrices only (not to norms, biases).
        beta1: AdamW's first-moment decay.
        beta2: AdamW's second-moment decay.
        grad_clip: clip the global gradient norm to this value; 0 turns clipping off.
    """

    lr: float = 1e-2
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        _number("optim", "lr", self.lr, 0, 10, lo_open=True)
        _number("optim", "weight_decay", self.weight_decay, 0, 10)
        _number("optim", "beta1", self.beta1, 0, 1, hi_open=True)
        _number("optim", "beta2", self.beta2, 0, 1, hi_open=True)
        _number("optim", "grad_clip", self.grad_clip, 0, float("inf"))


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
        _positive_int("schedule", "steps", self.steps)
        _positive_int("schedule", "warmup", self.warmup, minimum=0)
        _number("schedule", "min_lr_ratio", self.min_lr_ratio, 0, 1)


@dataclass
class EvalConfig:
    """Periodic validation.

    Validation CE is measured twice on the same fixed batches: at the equilibrium
    the training solver finds, and after a tight reference solve started there
    (small ε, tight tolerance): the gap shows how far training's z* is from the
    true fixed point.

    Args:
        every: validate every this many steps (and at the last step); 0 only at the end.
        batches: validation batches (the same ones each time).
        batch_size: sequences per validation batch.
        reference: the tight reference solver.
    """

    every: int = 50
    batches: int = 4
    batch_size: int = 32
    reference: SolverConfig = field(
        default_factory=lambda: SolverConfig(eps=0.2, tol=1e-6, max_steps=1000))

    def __post_init__(self) -> None:
        _positive_int("eval", "every", self.every, minimum=0)
        _positive_int("eval", "batches", self.batches)
        _positive_int("eval", "batch_size", self.batch_size)


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
        track_every: call the diagnostics trackers every this many steps.
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
    track_every: int = 50
    progress: bool = True
    sample_tokens: int = 300

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or "/" in self.name or
                                      self.name in (".", "..")):
            raise ConfigError(f"run.name={self.name!r}: must be a plain folder name (no '/')")
        if not self.out_dir:
            raise ConfigError("run.out_dir='': give a folder for the run directories")
        _positive_int("run", "seed", self.seed, minimum=0)
        if not (self.device in ("auto", "cpu", "cuda") or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ConfigError(f"run.device={self.device!r}: allowed values are auto, cpu, "
                              "cuda, cuda:N")
        _positive_int("run", "threads", self.threads, minimum=0)
        _positive_int("run", "log_every", self.log_every)
        _positive_int("run", "ckpt_every", self.ckpt_every, minimum=0)
        _positive_int("run", "track_every", self.track_every)
        _positive_int("run", "sample_tokens", self.sample_tokens, minimum=0)


def _default_model() -> ModelConfig:
    # small enough that the default run finishes in minutes on a 2-core CPU
    return ModelConfig(d_model=32, n_heads=4, d_ff=64, n_layers=1, seq_len=32)


def _default_solver() -> SolverConfig:
    return SolverConfig(name="euler", eps=0.5, tol=1e-4, max_steps=100)


def _default_estimator() -> EstimatorConfig:
    return EstimatorConfig(name="asymep", beta=0.05,
                           nudge=SolverConfig(name="euler", eps=0.5, tol=1e-2, max_steps=50))


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
        regularizer: Jacobian penalty (none, jacreg, homeostasis), fixed or adaptive weight.
        tracking: every how many steps ε_crit and the critical mode are measured (0: never).
    """

    model: ModelConfig = field(default_factory=_default_model)
    solver: SolverConfig = field(default_factory=_default_solver)
    estimator: EstimatorConfig = field(default_factory=_default_estimator)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    tracking: StabilityTracking = field(default_factory=lambda: StabilityTracking(every=50))
