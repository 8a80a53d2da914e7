"""Every setting of TrainConfig is read by something: no knob is validated and then ignored.

How: while a few tiny but complete runs train, evaluate and sample (and every
estimator and every solver section is built and used), each read of a config
field is recorded with the path of the config object it was read from. Reads by
validation (``__post_init__``, the finiteness check), by the dataclass machinery
(``__init__``, ``__eq__``, ``asdict``, ``replace``) and by the config-file code
(``configio``) and by this test do not count: a field only they touch does nothing. Then every leaf
of TrainConfig must have been read, or be one of :data:`FIXED` — a setting whose
every other value is refused (checked here too).

It fails for a dead knob: before issue 17, ``tracking.fidelity_every`` was read by
validation only, ``run.track_every`` only when Python trackers were passed (never from
the CLI, the runs here), and ``solver.eps`` by no solver that the run used.

A copy of a config object (``build_solver`` copies a solver section) is attributed to
every path whose object equals it; the runs below give the sections that would be
equal distinct values where it matters (the nudge's Anderson its own ε).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from eqprop.data import DataConfig
from eqprop.gradients.registry import ESTIMATORS, build_estimator
from eqprop.models import ModelConfig
from eqprop.solvers import SOLVERS, Anderson, Euler, SolverConfig, build_solver, relax
from eqprop.train import EvalConfig, RunConfig, ScheduleConfig, TrainConfig, Trainer, load_run
from eqprop.train.configio import apply_overrides, unflatten

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind.\n" * 30

#: leaves whose only allowed value is the default, with why
FIXED = {
    "estimator.nudge.stability": "the nudged phases are never checked (gradients/ep.py)",
}
#: frames whose reads do not count
IGNORED_FILES = ("dataclasses.py", "copy.py", "configio.py", "<string>")
IGNORED_FUNCTIONS = ("__post_init__", "_check_finite")


def leaves(cfg: object, path: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(leaves(value, f"{path}{f.name}."))
        else:
            out[f"{path}{f.name}"] = value
    return out


def objects(cfg: object, path: str = "") -> list[tuple[str, object]]:
    out = [(path, cfg)]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += objects(value, f"{path}{f.name}.")
    return out


class Reads:
    """Patches ``__getattribute__`` of every config class of ``cfg``'s tree."""

    def __init__(self) -> None:
        self.paths: list[tuple[str, object]] = []
        self.read: set[str] = set()
        self.busy = False
        self.patched: dict[type, object] = {}

    def watch(self, cfg: TrainConfig) -> None:
        self.paths += objects(cfg)
        for _, obj in objects(cfg):
            cls = type(obj)
            if cls not in self.patched:
                self.patched[cls] = cls.__getattribute__
                names = {f.name for f in dataclasses.fields(cls)}
                cls.__getattribute__ = self._getter(cls, names)

    def _getter(self, cls: type, names: set[str]):
        original = self.patched[cls]

        def get(obj, name):
            if name in names and not self.busy and self._counts(sys._getframe(1)):
                self.busy = True
                try:
                    hits = [p for p, o in self.paths if o is obj] or \
                        [p for p, o in self.paths if type(o) is cls and o == obj]
                    self.read.update(f"{p}{name}" for p in hits)
                finally:
                    self.busy = False
            return original(obj, name)

        return get

    @staticmethod
    def _counts(frame) -> bool:
        code = frame.f_code
        return not (code.co_filename.endswith(IGNORED_FILES) or code.co_filename == __file__
                    or code.co_name in IGNORED_FUNCTIONS)

    def restore(self) -> None:
        for cls, original in self.patched.items():
            cls.__getattribute__ = original


def tiny(text_file: str, out_dir: Path, name: str, **sections) -> TrainConfig:
    cfg = TrainConfig(
        model=ModelConfig(d_model=8, n_heads=2, d_ff=16, n_layers=1, seq_len=8),
        schedule=ScheduleConfig(steps=4, warmup=1),
        data=DataConfig(path=text_file, batch_size=4),
        eval=EvalConfig(every=2, batches=1, batch_size=2,
                        reference=SolverConfig(euler=Euler(eps=0.2), tol=1e-5, max_steps=300)),
        run=RunConfig(out_dir=str(out_dir), name=name, device="cpu", threads=1,
                      progress=False, log_every=1, ckpt_every=2, sample_tokens=3))
    return apply_overrides(cfg, unflatten(sections))


def runs(text_file: str, out: Path) -> list[TrainConfig]:
    """Configs that together use every feature (the runs are 4 steps of a width-8 model)."""
    walled = dict(**{"solver.euler.eps": 2.5, "guard.policy": "escalate", "guard.window": 1,
                     "guard.threshold": 0.1, "guard.count_contracting": True,
                     "guard.ladder": "eps,jacreg,solver"})
    return [
        tiny(text_file, out, "a", **walled, **{
            "tracking.every": 1, "tracking.fidelity_every": 2, "tracking.bisect": True,
            "tracking.method": "dense", "regularizer.name": "jacreg",
            "regularizer.adaptive": True, "optim.ema_decay": 0.5,
            "estimator.nudge.anderson.eps": 0.4}),
        tiny(text_file, out, "b", **{
            "estimator.name": "ep", "estimator.centered": False, "model.qk_norm": True,
            "model.qk_scale": 2.0, "model.tied_readout": True, "model.damping": 0.1,
            "regularizer.name": "abscissa", "regularizer.margin": 0.3, "stability.enabled": True,
            "stability.every": 1, "stability.margin": 100.0, "tracking.every": 0}),
        tiny(text_file, out, "c", **{**walled, "guard.ladder": "jacreg,solver"}),
    ]


def exercise(reads: Reads, cfg: TrainConfig, field, z0: torch.Tensor) -> None:
    """Every estimator and every solver section of every solver config of ``cfg``."""
    for name in ESTIMATORS:
        est = replace(cfg.estimator, name=name)
        reads.paths.append(("estimator.", est))
        build_estimator(est, cfg.solver)
    for sc in (cfg.solver, cfg.estimator.nudge, cfg.eval.reference):
        for name in SOLVERS:
            relax(field, z0, build_solver(replace(sc, name=name)), tol=1e-3, max_steps=3)


@pytest.mark.usefixtures("one_thread")
def test_every_setting_is_read_by_something(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    reads = Reads()
    try:
        for cfg in runs(str(text), tmp_path / "runs"):
            reads.watch(cfg)
            trainer = Trainer(cfg)
            reads.watch(trainer.cfg)  # with the vocabulary size from the data
            trainer.run()
            loaded = load_run(trainer.run_dir)
            tokens, targets = trainer.corpus.get_batch("train", 2, 8, trainer.data_gen)
            field = loaded.model.field(tokens, targets)
            exercise(reads, trainer.cfg, field, field.initial_state())
            trainer.close()
    finally:
        reads.restore()
    unread = sorted(set(leaves(TrainConfig())) - reads.read - set(FIXED))
    assert not unread, f"settings nothing reads: {unread}"


@pytest.mark.parametrize("path", sorted(FIXED))
def test_a_fixed_setting_refuses_every_other_value(path):
    default = leaves(TrainConfig())[path]
    hints = typing.get_type_hints(SolverConfig)
    assert hints[path.rsplit(".", 1)[-1]] is str
    from eqprop.solvers.stability import MODES

    for value in MODES:
        if value == default:
            continue
        with pytest.raises(Exception, match=path.rsplit(".", 1)[-1]):
            apply_overrides(TrainConfig(), unflatten({path: value}))


def test_a_dead_knob_is_found():
    """The tracer itself: a field read only by validation is not a read."""

    @dataclasses.dataclass
    class Section:
        used: int = 1
        dead: int = 2

        def __post_init__(self) -> None:
            assert self.dead >= 0

    reads = Reads()
    s = Section()
    reads.paths.append(("x.", s))
    reads.patched[Section] = Section.__getattribute__
    Section.__getattribute__ = reads._getter(Section, {"used", "dead"})
    reader = compile("s.used", "reader.py", "eval")  # a reader outside this file
    try:
        Section(dead=3)  # validation reads dead
        replace(s, used=2)  # the dataclass machinery reads both
        assert reads.read == set()
        assert eval(reader, {"s": s}) == 1
    finally:
        reads.restore()
    assert reads.read == {"x.used"}
    assert Anderson(m=3) == replace(Anderson(m=3))  # copies are found by equality
