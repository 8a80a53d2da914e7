"""``eqprop diagnose RUN``: why does (or will) this run's relaxation fail? (design §5)

The arguments, a batch of the run's data, and the printing; the workflow is
:func:`eqprop.diagnostics.report.diagnose`. Tables go to the terminal; plots (PNG) and
``diagnose.json`` to ``RUN/diagnose/``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import tyro

from ..errors import ConfigError

__all__ = ["Args", "run"]


@dataclass
class Args:
    """Spectrum, ε_crit, ε-sweep and gradient fidelity of a trained run."""

    run: tyro.conf.Positional[Path]
    """run directory (or a checkpoint inside it)"""
    eps_sweep: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    """Euler step sizes of the ε-sweep"""
    steps: int = 300
    """step budget T of each ε-sweep relaxation"""
    k: int = 6
    """eigenvalues per ARPACK call"""
    batch_size: int = 4
    """validation samples examined (ARPACK runs one sample at a time)"""
    method: str = "auto"
    """eigenvalues by arpack, dense (full Jacobian, small models) or auto"""
    bisect: bool = True
    """also compute ε_crit by bisection on ρ(I + εJ) (about 15 ARPACK runs a sample)"""
    fidelity: bool = True
    """measure gradient fidelity (EP, AsymEP, IFT) against IFT"""
    tols: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    """free-phase tolerances of the fidelity measurement"""
    split: str = "val"
    """data split of the batch (train or val)"""
    seed: int = 0
    """seed of the batch draw"""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)"""
    out: Path | None = None
    """where plots and diagnose.json go (default RUN/diagnose)"""

    def check(self) -> None:
        """Raise :class:`~eqprop.errors.ConfigError` on a value that is not allowed (called by
        :func:`run`, so that the CLI reports it as one line with exit code 2)."""
        for name in ("steps", "k", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"--{name.replace('_', '-')}={v!r}: must be an integer ≥ 1")
        if not self.eps_sweep or not all(e > 0 and math.isfinite(e) for e in self.eps_sweep):
            raise ConfigError(f"--eps-sweep {' '.join(map(str, self.eps_sweep))}: give one or "
                              "more finite step sizes > 0")
        if not self.tols or not all(t > 0 for t in self.tols):
            raise ConfigError(f"--tols {' '.join(map(str, self.tols))}: give tolerances > 0")
        if self.method not in ("auto", "arpack", "dense"):
            raise ConfigError(f"--method={self.method!r}: allowed values are auto, arpack, dense")
        if self.split not in ("train", "val"):
            raise ConfigError(f"--split={self.split!r}: allowed values are train, val")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"--device={self.device!r}: allowed values are auto, cpu, cuda[:N]")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device={name}: CUDA is not available here; use --device cpu")
    return torch.device(name)


def run(args: Args) -> int:
    """Diagnose a run; print tables, write plots and ``diagnose.json``. Returns 0."""
    args.check()
    from ..data import load_corpus
    from ..diagnostics.report import diagnose
    from ..train.loaded import load_run

    loaded = load_run(args.run, average=False)  # the field training relaxes, not the EMA
    cfg = loaded.config
    if cfg.model.block == "standard":
        raise ConfigError(f"run {str(loaded.run_dir)!r} is the feed-forward baseline "
                          "(model.block standard): it has no equilibrium to diagnose")
    loaded.model.to(_device(args.device)).eval()
    out = Path(args.out) if args.out is not None else Path(loaded.run_dir) / "diagnose"
    out.mkdir(parents=True, exist_ok=True)
    T = cfg.model.seq_len
    corpus = load_corpus(cfg.data, seq_len=T, vocab=loaded.vocab)
    g = torch.Generator().manual_seed(args.seed)
    batch = corpus.get_batch(args.split, args.batch_size, T, generator=g)
    print(f"run {loaded.run_dir}: {args.batch_size} {args.split} samples, T={T}, "
          f"solver {cfg.solver.name} ε={cfg.solver.eps:g}, tol={cfg.solver.tol:g}")
    report = diagnose(loaded, batch, sweep_eps=args.eps_sweep, steps=args.steps, k=args.k,
                      method=args.method, bisect=args.bisect, fidelity=args.fidelity,
                      tols=args.tols, on_text=print)
    *pngs, summary = report.save(out, args={k: str(v) for k, v in asdict(args).items()})
    print(f"wrote {', '.join(str(p) for p in pngs)} and {summary}")
    return 0
