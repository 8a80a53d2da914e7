"""``benchmarks/study.py``: the catalogue parses, ``run`` starts and resumes, ``report`` reads
the wall and draws its figures, ``probe`` times the flow at a checkpoint."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from eqprop.errors import ConfigError
from eqprop.train.configio import config_from_dict, config_to_dict, load_config_file

ROOT = Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "benchmarks" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["study"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


study = _study()


@pytest.mark.parametrize("size", ["tiny", "study"])
def test_every_arm_builds_a_valid_train_config(size):
    parse = study.wall_arms.parse_config
    cfgs = {a.name: parse(study.train_argv(a, 3, size, 7)) for a in study.CATALOGUE}
    assert {"euler_e0.1", "euler_e0.05", "euler_e0.02", "adaptive", "anderson", "implicit",
            "ptc", "imex", "newton", "jacreg", "jacreg_adaptive", "damping", "stability",
            "abscissa", "ift"} <= set(cfgs)
    for c in cfgs.values():
        assert c.schedule.steps == 7 and c.run.seed == 3 and c.tracking.every > 0
        assert c.tracking.fidelity_every > 0
    for name, eps in (("euler_e0.1", 0.1), ("euler_e0.05", 0.05), ("euler_e0.02", 0.02)):
        c = cfgs[name]
        assert (c.solver.name, c.estimator.nudge.name) == ("euler", "euler")
        assert c.solver.euler.eps == c.estimator.nudge.euler.eps == eps == study.ARMS[name].eps
        assert c.solver.max_steps * eps == pytest.approx(30)  # the same flow time
    assert cfgs["adaptive"].solver.name == "adaptive"
    assert cfgs["adaptive"].solver.adaptive.eps_min == 0.02
    assert (cfgs["jacreg"].regularizer.name, cfgs["jacreg"].regularizer.adaptive) == (
        "jacreg", False)
    assert cfgs["jacreg_adaptive"].regularizer.adaptive
    assert cfgs["damping"].model.damping == 1.0
    assert cfgs["stability"].stability.enabled and not cfgs["stability"].regularizer.adaptive
    assert cfgs["stability_eps"].stability.eps_factor == 0.5
    assert cfgs["ift"].estimator.name == "ift"
    for name in ("anderson", "implicit", "ptc", "imex", "newton"):
        assert cfgs[name].solver.name == name
    assert cfgs["euler_e0.1"].model.d_model == (16 if size == "tiny" else 128)


def test_the_abscissa_arm_is_the_recipe_config():
    """At the study size the arm's flags give configs/study_abscissa.toml (with the study's
    tracking and run settings)."""
    arm = study.ARMS["abscissa"]
    got = config_to_dict(study.wall_arms.parse_config(study.train_argv(arm, 0, "study", 5000)))
    want = config_to_dict(config_from_dict(load_config_file(ROOT / "configs/study_abscissa.toml")))
    for section in ("model", "solver", "estimator", "regularizer", "optim", "schedule", "data"):
        assert got[section] == want[section], section


def test_a_bad_flag_or_arm_is_refused():
    with pytest.raises(ConfigError, match="solver.name='nope'"):  # eqprop's own check
        study.wall_arms.parse_config(["--solver.name", "nope"])
    with pytest.raises(SystemExit):  # tyro: no such flag
        study.wall_arms.parse_config(["--solver.euler.nope", "1"])
    with pytest.raises(ConfigError, match="stability.enabled"):  # a combination
        study.wall_arms.parse_config(["--stability.enabled"])
    with pytest.raises(SystemExit):
        study.main(["run", "--out-dir", "x", "--arms", "euler_e0.1,nope"])
    with pytest.raises(SystemExit):
        study.main(["run", "--out-dir", "x", "--seeds", "a"])


def _steps(run_dir: Path) -> list[int]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if "event" not in r]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Two arms at the tiny size: 2 steps, then ``run`` again to 4 (a resume)."""
    out = tmp_path_factory.mktemp("study") / "s"
    args = ["run", "--out-dir", str(out), "--size", "tiny", "--arms", "euler_e0.1,imex",
            "--seeds", "0", "--poll", "0.2"]
    assert study.main([*args, "--steps", "2"]) == 0
    first = {n: _steps(out / n) for n in ("euler_e0.1_s0", "imex_s0")}
    assert study.main([*args, "--steps", "4"]) == 0
    return out, first, args


def test_run_writes_run_dirs_and_study_json_and_resumes(tiny_study, capsys):
    out, first, args = tiny_study
    assert first == {"euler_e0.1_s0": [1, 2], "imex_s0": [1, 2]}
    for name in first:
        assert _steps(out / name) == [1, 2, 3, 4]  # continued, no step twice
        assert study.wall_arms.checkpoint_step(out / name) == 4
    meta = json.loads((out / "study.json").read_text())
    assert meta["size"] == "tiny" and meta["seeds"] == [0] and meta["steps"] == 4
    assert set(meta["arms"]) == {"euler_e0.1", "imex"} and len(meta["commands"]) == 2
    assert meta["arms"]["imex"]["flags"] == study.ARMS["imex"].flags
    assert study.main([*args, "--steps", "4"]) == 0  # every arm done: nothing started
    shown = capsys.readouterr().out
    assert "euler_e0.1_s0          step     4/4" in shown and "done" in shown
    assert _steps(out / "imex_s0") == [1, 2, 3, 4]


def test_probe_appends_the_settling_time(tiny_study):
    out, _, _ = tiny_study
    md = out / "probe.md"
    assert study.main(["probe", str(out), "--samples", "2", "--arms", "imex", "--out",
                       str(md), "--device", "cpu"]) == 0
    rows = [line for line in md.read_text().splitlines() if line.startswith("| imex_s0 |")]
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[1] == "4" and cells[2] == "2/2" and float(cells[3]) > 0


def _rec(step: int, ce: float | None, conv: int, **extra) -> dict:
    return {"step": step, "train_ce": ce, "nfe": {"free": 10.0 * step},
            "status": {"converged": conv, "cycling": 4 - conv}, **extra}


def _write(out: Path, name: str, recs: list[dict]) -> None:
    (out / name).mkdir(parents=True)
    (out / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")


def test_report_reads_the_wall_and_draws_the_figures(tmp_path):
    out = tmp_path / "s"
    track = {"eps_crit_min": 0.5, "max_re": -0.2, "crit_a": -0.3, "damping": 0.9,
             "grad_cosine": 0.999}
    # euler ε 0.1: 4, 3, then 1 of 4 converged at step 3 (train CE 2.7 there): the wall
    _write(out, "euler_e0.1_s0", [_rec(1, 3.0, 4, **track), _rec(2, 2.9, 3),
                                  {"event": "rejected", "step": 2},
                                  _rec(3, 2.7, 1, **track), _rec(4, 2.6, 0)])
    _write(out, "euler_e0.05_s0", [_rec(1, 3.0, 4), _rec(2, 2.5, 4)])  # never walls
    _write(out, "jacreg_s0", [_rec(1, None, 4, eps_crit_min=None, max_re=None, crit_a=None,
                                   damping=None, grad_cosine=None, reg_weight=None),
                              _rec(2, 2.8, 4, **{**track, "eps_crit_min": 0.0}, reg_weight=0.5)])
    _write(out, "anderson_s0", [_rec(1, 3.1, 4)])  # no tracking records
    md = out / "report.md"
    assert study.main(["report", str(out), "--out", str(md), "--tail", "2"]) == 0
    text = md.read_text()
    assert "| euler_e0.1_s0 | 0.1 | 3 | 2.700 |" in text
    assert "| euler_e0.05_s0 | 0.05 | no wall | — (last 2: 2.750) |" in text
    arm_row = next(line for line in text.splitlines() if line.startswith("| euler_e0.1_s0 | 4"))
    cells = [c.strip() for c in arm_row.split("|")[1:-1]]
    assert cells[2] == "2.650" and cells[4] == "0%" and cells[5] == "2" and cells[6] == "3 (2.70)"
    assert "anderson_s0 has no `grad_cosine` records" in text
    assert "anderson_s0 has no `eps_crit_min` records" in text
    assert "euler_e0.05_s0 has no `crit_a` records" not in text  # not in that figure
    for png in ("eps_crit_vs_ce", "wall_vs_eps", "cosine", "damping", "arms"):
        assert (out / f"{png}.png").stat().st_size > 1000, png
        assert f"({png}.png)" in text


def test_report_without_tracking_or_euler_arms_does_not_crash(tmp_path):
    out = tmp_path / "s"
    _write(out, "newton_s0", [_rec(1, None, 0)])
    assert study.main(["report", str(out), "--out", str(out / "r.md")]) == 0
    text = (out / "r.md").read_text()
    assert "No fixed-ε Euler arm has records." in text and (out / "cosine.png").exists()
