"""Shared by the tests: analytic fields with known fixed points and eigenvalues, tiny
float64 models, and the tiny training runs (text, configs, CLI flags, child processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor

from eqprop.data import DataConfig
from eqprop.fields import Field
from eqprop.models import EquilibriumLM, ModelConfig
from eqprop.solvers import Euler, relax
from eqprop.split import SplitField
from eqprop.train import EvalConfig, RunConfig, ScheduleConfig, TrainConfig


def rotation_block(a: float, b: float) -> Tensor:
    """2×2 real block with eigenvalues ``a ± ib``."""
    return torch.tensor([[a, -b], [b, a]], dtype=torch.float64)


def eps_crit(a: float, b: float) -> float:
    """Euler's critical step for a mode ``μ = a + ib`` (a < 0): ``-2a/(a²+b²)``."""
    return -2 * a / (a * a + b * b)


class LinearField(SplitField):
    """``F(z) = A (z - z_fix)`` per sample, with the loss ``L(z) = ½‖C z - y‖²``.

    ``A`` ``(n, n)`` is shared by the batch; ``z`` is ``(B, n)``. The fixed point is
    ``z_fix`` and the Jacobian is ``A`` everywhere, so ε_crit, the equilibrium and
    the adjoint ``A⁻ᵀ ∇L`` are known in closed form. The split is ``A = -I + (A + I)``.
    """

    def __init__(self, A: Tensor, z_fix: Tensor, C: Tensor | None = None,
                 y: Tensor | None = None):
        self.A, self.z_fix = A, z_fix
        n = A.shape[0]
        self.C = torch.eye(n, dtype=A.dtype) if C is None else C
        self.y = torch.zeros(z_fix.shape[0], self.C.shape[0], dtype=A.dtype) if y is None else y

    def __call__(self, z: Tensor) -> Tensor:
        return (z - self.z_fix) @ self.A.T

    def conservative(self, z: Tensor) -> Tensor:
        return -(z - self.z_fix)

    def nonconservative(self, z: Tensor) -> Tensor:
        return (z - self.z_fix) @ (self.A + torch.eye(self.A.shape[0], dtype=self.A.dtype)).T

    def loss(self, z: Tensor) -> Tensor:
        return 0.5 * ((z @ self.C.T - self.y) ** 2).sum(-1)


def rotating_field(a: float, b: float, B: int = 3, extra: tuple[float, ...] = (-1.0,),
                   seed: int = 0) -> LinearField:
    """A linear field with a rotating mode ``a ± ib`` plus real modes ``extra``,
    mixed by a random orthogonal change of basis (so the field is not block-diagonal)."""
    g = torch.Generator().manual_seed(seed)
    n = 2 + len(extra)
    D = torch.zeros(n, n, dtype=torch.float64)
    D[:2, :2] = rotation_block(a, b)
    for i, lam in enumerate(extra):
        D[2 + i, 2 + i] = lam
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    z_fix = torch.randn(B, n, generator=g, dtype=torch.float64)
    y = torch.randn(B, n, generator=g, dtype=torch.float64)
    return LinearField(Q @ D @ Q.T, z_fix, y=y)


class StiffNonlinearField(SplitField):
    """A nonlinear field with a rotating mode near its fixed point ``z_fix``:

    ``F(z) = A d - ‖d‖² d``, ``d = z - z_fix`` (cubic damping); its Jacobian at
    ``z_fix`` is ``A`` (modes a ± ib, -1). Above ε_crit Euler settles on a limit cycle
    (the cubic term bounds the orbit). ``shifted=False`` puts the fixed point at 0
    (where the relative residual ``‖F‖/‖z‖`` cannot fall below ``‖A‖``-ish: use a
    ``scale`` in relax); ``shifted=True`` uses the random ``z_fix`` of the linear part.
    """

    def __init__(self, a: float, b: float, B: int = 3, seed: int = 0, shifted: bool = False):
        self.inner = rotating_field(a, b, B=B, seed=seed)
        self.A = self.inner.A
        self.z_fix = self.inner.z_fix if shifted else torch.zeros_like(self.inner.z_fix)

    def __call__(self, z: Tensor) -> Tensor:
        d = z - self.z_fix
        return d @ self.A.T - d * (d * d).sum(-1, keepdim=True)

    def conservative(self, z: Tensor) -> Tensor:
        return -(z - self.z_fix)

    def nonconservative(self, z: Tensor) -> Tensor:
        return self(z) - self.conservative(z)


def smooth_field(B: int = 3, seed: int = 0) -> LinearField:
    """A slow, smooth linear field: modes ``-0.2 ± 0.05i`` and ``-0.3`` (ε_crit ≈ 6.7).

    At ε = 0.1 every mode contracts by less than 3 % a step."""
    return rotating_field(-0.2, 0.05, B=B, extra=(-0.3,), seed=seed)


class CountingField(Field):
    """Wraps a field and counts every evaluation: calls of F and JVPs (``forward_for_jvp``)."""

    def __init__(self, field: Field):
        self.field = field
        self.calls = 0
        self.jvps = 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return self.field(z)

    def forward_for_jvp(self, z: Tensor) -> Tensor:
        self.jvps += 1
        return self.field.forward_for_jvp(z)

    @property
    def total(self) -> int:
        return self.calls + self.jvps


def analytic_settling_time(F: LinearField, z0: Tensor, tol: float, t_max: float = 200.0,
                           n: int = 20001) -> Tensor:
    """First t with ``‖F(z(t))‖/‖z(t)‖ ≤ tol`` for ``z(t) = z_fix + e^{At}(z0 - z_fix)``,
    per sample ``(B,)``, from a fine grid refined by bisection on the matrix exponential."""

    def g(t: float) -> Tensor:
        d = (z0 - F.z_fix) @ torch.linalg.matrix_exp(F.A * t).T
        return (d @ F.A.T).norm(dim=1) / (F.z_fix + d).norm(dim=1)

    ts = torch.linspace(0.0, t_max, n, dtype=torch.float64)
    out = []
    for b in range(z0.shape[0]):
        lo, hi = 0.0, t_max
        for i in range(1, n, 50):  # coarse scan for the first grid point below tol
            if g(float(ts[i]))[b] <= tol:
                lo, hi = float(ts[max(i - 50, 0)]), float(ts[i])
                break
        for _ in range(60):  # bisection on the first crossing inside (lo, hi]
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if g(mid)[b] <= tol else (mid, hi)
        out.append(hi)
    return torch.tensor(out, dtype=torch.float64)


__all__ = ["CountingField", "LinearField", "StiffNonlinearField", "TanhField",
           "analytic_settling_time", "eps_crit", "planted_matrix", "rotating_field",
           "rotation_block", "smooth_field"]


class TanhField(Field):
    """``F(z) = J tanh(z - c)``: no linear leak, ``‖F‖ ≤ ‖J‖ √n`` everywhere.

    The fixed point is ``c`` (Jacobian ``J`` there, planted by :func:`planted_matrix`);
    far from it ``F`` stays bounded, so ``‖F‖/‖z‖ → 0`` as ``‖z‖ → ∞`` although no
    fixed point is near: the field on which a relative residual test alone reports
    a run-away as converged.
    """

    def __init__(self, J: Tensor, c: Tensor):
        self.J, self.c = J, c  # (n, n), (B, n): a tensor named c, no split

    def __call__(self, z: Tensor) -> Tensor:
        return torch.tanh(z - self.c) @ self.J.T


def planted_matrix(modes: tuple[complex | float, ...], seed: int = 0) -> Tensor:
    """A real matrix with the eigenvalues ``modes`` (a complex entry adds its conjugate),
    mixed by a random orthogonal basis, float64."""
    blocks = []
    for mu in modes:
        if isinstance(mu, complex) and mu.imag != 0:
            blocks.append(rotation_block(mu.real, abs(mu.imag)))
        else:
            blocks.append(torch.tensor([[float(getattr(mu, "real", mu))]], dtype=torch.float64))
    D = torch.block_diag(*blocks)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D.shape[0], D.shape[0], generator=g, dtype=torch.float64))
    return Q @ D @ Q.T


# -- tiny float64 models ----------------------------------------------------------------------

def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=11, d_model=16, n_heads=2, d_ff=32, n_layers=2, seq_len=8)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_problem(block: str = "asym", B: int = 3, seed: int = 0, readout: float = 1.0,
                 **overrides):
    """(model, field, z_star) in float64 with z* solved to g ≤ 1e-12; ``readout`` scales
    the readout weights (sharper than at init: the nudged equilibrium turns nonlinear in β)."""
    torch.manual_seed(seed)
    model = EquilibriumLM(tiny_config(block=block, **overrides)).double()
    with torch.no_grad():
        model.W_out.weight.mul_(readout)
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, 11, (B, model.cfg.seq_len), generator=g)
    targets = torch.randint(0, 11, (B, model.cfg.seq_len), generator=g)
    field = model.field(tokens, targets)
    sol = relax(field, field.initial_state(), Euler(0.5), tol=1e-12, max_steps=3000)
    assert bool(sol.converged.all()), sol.summary()
    return model, field, sol.z


# -- tiny training runs -----------------------------------------------------------------------

TEXT = ("To be, or not to be, that is the question:\n"
        "Whether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\n") * 20

#: metrics that depend on the wall clock, not on the computation
CLOCK_KEYS = {"time", "step_time", "stability_time_s"}

#: ``eqprop train`` flags of a tiny run on the CPU (the step count left to the test)
TINY = ["--model.d-model", "8", "--model.n-heads", "2", "--model.d-ff", "16",
        "--model.seq-len", "8", "--data.batch-size", "4", "--schedule.warmup", "1",
        "--eval.every", "0", "--eval.batches", "1", "--eval.batch-size", "2",
        "--run.sample-tokens", "5", "--run.threads", "1", "--run.device", "cpu",
        "--run.no-progress"]
#: the tiny run, three steps
TINY3 = [*TINY, "--schedule.steps", "3"]
#: steps and checkpoint interval of :func:`train_args`
STEPS, CKPT = 8, 2


def field_batches(model, n: int, B: int = 4, seed: int = 3):
    """``n`` fields of ``model`` on random token batches ``(B, seq_len)`` (vocabulary 11),
    on the model's device."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    for _ in range(n):
        tokens = torch.randint(0, 11, (B, model.cfg.seq_len), generator=g).to(dev)
        targets = torch.randint(0, 11, (B, model.cfg.seq_len), generator=g).to(dev)
        yield model.field(tokens, targets)


def write_text(folder: Path) -> str:
    """:data:`TEXT` as ``folder/text.txt``; returns the path."""
    p = Path(folder) / "text.txt"
    p.write_text(TEXT, encoding="utf-8")
    return str(p)


def tiny(text_file: str, out_dir, eval_every: int = 0, **run) -> TrainConfig:
    """A config that trains in about a second (validation only at the end by default)."""
    return TrainConfig(
        model=ModelConfig(d_model=8, n_heads=2, d_ff=16, n_layers=1, seq_len=8),
        schedule=ScheduleConfig(steps=6, warmup=2),
        data=DataConfig(path=text_file, batch_size=4),
        eval=EvalConfig(every=eval_every, batches=1, batch_size=2),
        run=RunConfig(out_dir=str(out_dir), device="cpu", threads=1, progress=False,
                      ckpt_every=3, sample_tokens=5, **run),
    )


def without_clock(records):
    return [{k: v for k, v in r.items() if k not in CLOCK_KEYS} for r in records]


def train_args(text_file: str, out: Path, name: str, *extra: str) -> list[str]:
    """``eqprop train`` arguments of a tiny run of :data:`STEPS` steps, a checkpoint every
    :data:`CKPT`."""
    return ["train", *TINY, "--schedule.steps", str(STEPS), "--run.ckpt-every", str(CKPT),
            "--data", text_file, "--run.out-dir", str(out), "--run.name", name, *extra]


def one_line_error(capsys, command: str) -> str:
    """The one error line on stderr; a resume may print its changed settings before it."""
    lines = capsys.readouterr().err.strip().splitlines()
    notes = [x for x in lines if x.startswith("eqprop train: resuming with changed settings")]
    (err,) = [x for x in lines if x not in notes] or [""]
    assert err.startswith(f"eqprop {command}: error: "), lines
    assert "Traceback" not in err and "│" not in err and "╭" not in err
    return err


def spawn(args: list[str], **env: str) -> subprocess.Popen:
    """``python -m eqprop ARGS`` in a child process (one torch thread)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "eqprop", *args], env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).parent.parent)
