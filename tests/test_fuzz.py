"""Property-based tests (hypothesis): configs and command lines fuzzed.

- any value for any setting of a config file is accepted or a one-line ConfigError
  naming the setting, never another exception;
- NaN, ±inf, -1, a wrong type, and an unknown name are always rejected;
- random valid configs round-trip through the config file formats (YAML, JSON);
- random ``eqprop train / eval / sample`` argument lists exit with 0 or 2, never a
  traceback, with exactly one error line (training itself is stubbed out).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eqprop.cli.train as cli_train
from eqprop.cli.main import main
from eqprop.diagnostics.base import METHODS
from eqprop.errors import ConfigError
from eqprop.gradients.registry import ESTIMATORS
from eqprop.models.config import BLOCKS
from eqprop.regularizers import REGULARIZERS
from eqprop.solvers.controllers import CONTROLLERS
from eqprop.solvers.registry import SOLVERS
from eqprop.train import TrainConfig, config_from_dict, load_config_file, save_config
from eqprop.train.config import GUARD_POLICIES
from eqprop.train.configio import apply_overrides, unflatten

FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def leaves(cfg: object, path: str = "") -> list[tuple[str, object]]:
    """``(dotted path, type)`` of every setting of a nested config."""
    out = []
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += leaves(value, f"{path}{f.name}.")
        else:
            out.append((f"{path}{f.name}", hints[f.name]))
    return out


LEAVES = leaves(TrainConfig())
NUMERIC = [p for p, t in LEAVES if t in (int, float)]
SOLVER_SECTIONS = ("solver", "estimator.nudge", "eval.reference")
CHOICES = {"model.block": BLOCKS, "estimator.name": ESTIMATORS,
           "regularizer.name": REGULARIZERS, "tracking.method": METHODS,
           "guard.policy": GUARD_POLICIES, "guard.robust_solver": SOLVERS,
           **{f"{s}.name": SOLVERS for s in SOLVER_SECTIONS},
           **{f"{s}.adaptive.controller": CONTROLLERS for s in SOLVER_SECTIONS}}
#: knobs validated only where they are used (the adaptive weight, when it is on)
UNCHECKED = ("regularizer.adapt.",)

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(),
                 st.text(max_size=12), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def rejected(path: str, value: object) -> str:
    with pytest.raises(ConfigError) as e:
        config_from_dict(unflatten({path: value}))
    return str(e.value)


def names(path: str, msg: str) -> bool:
    return path.rsplit(".", 1)[-1] in msg and "\n" not in msg


@FAST
@given(st.sampled_from(LEAVES), junk)
def test_any_value_is_accepted_or_a_config_error_naming_the_setting(leaf, value):
    path, _ = leaf
    try:
        cfg = config_from_dict(unflatten({path: value}))
    except ConfigError as e:
        assert names(path, str(e)), (path, value, str(e))
    else:
        assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize("path", [p for p in NUMERIC if not p.startswith(UNCHECKED)])
def test_nonfinite_negative_and_mistyped_numbers_are_rejected(path):
    tp = dict(LEAVES)[path]
    bad = [-1, "3", True, None] if tp is int else \
        [float("nan"), float("inf"), float("-inf"), -1.0, "0.1", None]
    for value in bad:
        assert names(path, rejected(path, value)), (path, value)


@FAST
@given(st.sampled_from(sorted(CHOICES)), st.text(min_size=1, max_size=12))
def test_unknown_names_list_the_allowed_ones(path, value):
    if value in CHOICES[path]:
        return
    msg = rejected(path, value)
    assert names(path, msg) and "allowed values are" in msg and \
        ", ".join(CHOICES[path]) in msg


def valid_candidate(path: str, tp: object) -> st.SearchStrategy:
    if path in CHOICES:
        return st.sampled_from(list(CHOICES[path]))
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(0, 300)
    if tp is float:
        return st.floats(1e-6, 20.0)
    if path == "run.device":
        return st.sampled_from(["auto", "cpu", "cuda", "cuda:1"])
    if path == "guard.ladder":
        return st.lists(st.sampled_from(["eps", "jacreg", "solver"]), min_size=1,
                        max_size=4).map(",".join)
    optional = typing.get_origin(tp) is not None or tp is not str
    text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=16)
    return st.one_of(st.none(), text) if optional else text


@FAST
@given(st.data())
def test_random_valid_configs_round_trip_through_files(tmp_path, data):
    cfg = TrainConfig()
    for path, tp in LEAVES:
        value = data.draw(valid_candidate(path, tp), label=path)
        with contextlib.suppress(ConfigError):  # keep the values this section accepts
            cfg = apply_overrides(cfg, unflatten({path: value}))
    for suffix in (".yaml", ".json"):
        save_config(cfg, tmp_path / f"c{suffix}")
        assert config_from_dict(load_config_file(tmp_path / f"c{suffix}")) == cfg


# -- command lines ----------------------------------------------------------------------------

def flag(path: str) -> str:
    return "--" + path.replace("_", "-")


def no(path: str) -> str:
    head, _, leaf = path.rpartition(".")
    return flag(f"{head}.no_{leaf}" if head else f"no_{leaf}")


TRAIN_FLAGS = [flag(p) for p, t in LEAVES if t is not bool] + \
    ["--config", "--resume", "--data", "--bogus", "--help", "-h"]
TRAIN_SWITCHES = [flag(p) for p, t in LEAVES if t is bool] + \
    [no(p) for p, t in LEAVES if t is bool]
RUN_FLAGS = ["--split", "--batches", "--batch-size", "--seed", "--device", "--prompt",
             "--tokens", "--temperature", "--top-k", "--bogus", "--help"]
RUN_SWITCHES = ["--json", "--no-json", "--warm-start", "--no-warm-start"]
VALUES = st.one_of(st.sampled_from(["0", "-1", "1", "nan", "inf", "-inf", "1e999", "", "x",
                                    "0.5", "2.5", "euler", "none", "cpu", "/nonexistent"]),
                   st.integers(-10**6, 10**6).map(str),
                   st.text(st.characters(blacklist_categories=("Cs",),
                                         blacklist_characters="\x00"), max_size=8))


def argv(flags: list[str], switches: list[str]) -> st.SearchStrategy:
    """Up to 5 pieces: a flag with a value, a switch, or a stray value."""
    piece = st.one_of(st.tuples(st.sampled_from(flags), VALUES).map(list),
                      st.sampled_from(switches).map(lambda f: [f]), VALUES.map(lambda v: [v]))
    return st.lists(piece, max_size=5).map(lambda ps: [tok for p in ps for tok in p])


class _Summary:
    stopped = None
    applied = 1

    def format(self) -> str:
        return "stub summary"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def check_exit(command: str, code: int, out: str, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err and "│" not in err
    if code == 2:
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"eqprop {command}: error: "), err


@FAST
@given(argv(TRAIN_FLAGS, TRAIN_SWITCHES))
def test_random_train_command_lines_exit_0_or_2(monkeypatch, tmp_path, argv):
    monkeypatch.setattr(cli_train, "train", lambda cfg, resume=None: _Summary())
    code, out, err = run_cli(["train", *argv, "--run.out-dir", str(tmp_path)])
    check_exit("train", code, out, err)
    if code == 0:
        assert "stub summary" in out or "usage" in out


@FAST
@given(st.sampled_from(["eval", "sample"]), argv(RUN_FLAGS, RUN_SWITCHES))
def test_random_eval_and_sample_command_lines_exit_0_or_2(tmp_path, command, argv):
    code, out, err = run_cli([command, str(tmp_path / "no-run"), *argv])
    check_exit(command, code, out, err)
