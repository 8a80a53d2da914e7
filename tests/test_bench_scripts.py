"""The study's benchmark scripts: ``wall_arms.py report``, ``wall_probe.py --row`` and
``stability_probe.py``."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from eqprop.solvers import Anderson

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(step: int, ce: float, converged: int, nfe: float, nudged: int) -> dict:
    return {"step": step, "train_ce": ce, "nfe": {"free": nfe},
            "status": {"converged": converged, "contracting": 4 - converged},
            "nudge_status": {"converged": nudged, "cycling": 8 - nudged},
            "lead_re": -0.5 + 0.01 * step, "reg_weight": 10.0}


def test_wall_arms_report_reads_the_wall_and_the_relaxation_tail(tmp_path):
    recs = [_record(s, 3.0 - 0.1 * s, c, n, u) for s, c, n, u in
            ((1, 4, 10, 8), (2, 4, 20, 8), (3, 1, 30, 6), (4, 3, 40, 4))]
    recs.insert(3, {"event": "rejected", "step": 3})
    recs[-1].update(val_ce=2.5, val_ce_ref=2.75)  # validated at step 4
    path = tmp_path / "arm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n{torn")
    out = tmp_path / "report.md"
    args = argparse.Namespace(metrics=[str(path)], out=str(out), append_to=None, tail=2,
                              relaxation=True)
    _script("wall_arms").report(args)
    row = next(line for line in out.read_text().splitlines() if line.startswith("| arm |"))
    assert "last 2 logged" in row
    cells = [c.strip() for c in out.read_text().splitlines()[2].split("|")[1:-1]]
    # steps, train CE over the last 2, min converged 1/4, first < 99 % at 3, < 50 % at 3
    assert cells[:7] == ["arm", "4", "2.650", "2.500 / 2.750 (4)", "25%", "3", "3 (2.70)"]
    assert cells[7] == "-0.460"  # the largest leading Re μ, step 4
    assert cells[-2:] == ["35", "62%"]  # free NFE and nudged converged over the last 2
    assert (tmp_path / "report.png").exists()


def test_wall_probe_rows_build_the_named_solver_and_reject_bad_settings():
    probe = _script("wall_probe")
    text, section = probe._row_spec("anderson:eps=0.25,m=20")
    assert text == "anderson:eps=0.25,m=20" and section == Anderson(eps=0.25, m=20)
    for bad, says in (("nope", "unknown solver 'nope'"), ("anderson:foo=1", "no setting 'foo'"),
                      ("anderson:m=x", "m='x' is not a int"), ("anderson:m=0", "anderson:m=0")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            probe._row_spec(bad)


def test_stability_probe_agrees_with_the_dense_spectrum_on_a_tiny_run(tmp_path):
    from eqprop.cli.main import main
    from eqprop.diagnostics.spectrum import dense_spectrum
    from tests.helpers import train_args, write_text

    assert main(train_args(write_text(tmp_path), tmp_path / "runs", "r")) == 0
    probe = _script("stability_probe")
    r = probe.probe_run(str(tmp_path / "runs" / "r"), 2, "train", False, "cpu")
    dense = dense_spectrum(r["field"], r["z"]).real.amax(1).double()  # (2,) the reference
    assert r["z"][0].numel() == 64 and r["converged"] == 2
    torch.testing.assert_close(r["lead"], dense, atol=1e-4, rtol=0)  # ARPACK
    # 64 Arnoldi steps span the whole space: the Ritz values are the eigenvalues, up to the
    # forward differences' error in fp32 (δ = √ulp·‖z‖; measured 5e-3)
    whole = r["est"]["residual, 64 (now)"].max_real
    torch.testing.assert_close(whole, dense, atol=2e-2, rtol=0)
    table = probe.table([r])
    assert table.count("\n") == 3 and f"| {tmp_path / 'runs' / 'r'} (8) | 2/2 |" in table


def test_study_step_breaks_the_step_into_its_phases(tmp_path):
    """The phases of ``Trainer.train_step`` cover its profiled time without overlap."""
    study = _script("study_step")
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text('[model]\nd_model = 16\nn_heads = 2\nd_ff = 32\nseq_len = 16\n'
                        '[data]\nbatch_size = 4\n[solver]\nname = "anderson"\ntol = 1e-3\n'
                        'max_steps = 40\n[estimator]\nname = "asymep"\n'
                        '[regularizer]\nname = "abscissa"\nweight = 1.0\nsamples = 2\n')
    cfg = study.bench_config(str(cfg_file), tmp_path / "out.md", "cpu")
    row = study.bench(cfg, "asymep", warmup=1, repeats=1, top=4)
    phases, total = row["phase_ms"], row["kernel_ms"]
    assert set(phases) == set(study.STEP_PHASES)
    assert all(phases[p] > 0 for p in ("eqprop.free", "eqprop.estimate", "eqprop.penalties",
                                       "eqprop.backward"))
    # disjoint ranges: their sum is the step's time less what runs outside them
    assert 0.8 * total < sum(phases.values()) <= total * (1 + 1e-9)
    top = row["top_kernels"]
    assert len(top) == 4 and all(name not in study.STEP_PHASES for name, _, _ in top)
    assert [ms for _, ms, _ in top] == sorted((ms for _, ms, _ in top), reverse=True)
    assert "| step | free | estimate |" in "\n".join(study.breakdown([row]))


def test_nudge_probe_matches_the_exact_adjoint_at_small_beta(tmp_path):
    from eqprop.cli.main import main
    from tests.helpers import train_args, write_text

    assert main(train_args(write_text(tmp_path), tmp_path / "runs", "r")) == 0
    probe = _script("nudge_probe")
    r = probe.probe_run(str(tmp_path / "runs" / "r"), [1e-2, 8.0], 2, "cpu")
    small, large = r["rows"]
    assert r["estimator"] == "asymep" and r["free_converged"] == 2
    assert r["cos_unconverged_kept"] is None  # every free phase converged
    assert small["phases"] == 2 and sum(small["counts"].values()) == 4
    assert small["counts"][probe.Status.CONVERGED] == 4
    # AsymEP is exact as β → 0 (its error O(β²)): at β 0.01 it is the adjoint's gradient
    assert small["cos"] > 0.9999  # measured 1 - 1.5e-5
    assert large["cos"] < 0.999  # a large nudge leaves the linear regime (1 - 9e-3)
    table = probe.table([r])
    budget = small["budget"]
    assert table.count("\n") == 3 and f"| 0.01 | {budget} | 4/4 | 0/4 |" in table
    # one step of budget: no nudged phase settles, and the estimate is far from the adjoint
    (short,) = probe.probe_run(str(tmp_path / "runs" / "r"), [1e-2], 2, "cpu", [1])["rows"]
    assert short["budget"] == 1 and short["counts"][probe.Status.CONVERGED] == 0
    assert short["cos"] < small["cos"] - 1e-3
    with pytest.raises(argparse.ArgumentTypeError, match="every β must be > 0"):
        probe._betas("0.5,-1")
    with pytest.raises(argparse.ArgumentTypeError, match="integers ≥ 1"):
        probe._budgets("150,0")
