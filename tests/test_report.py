"""The diagnose workflow as a library function, against dense references on a tiny LM."""

from __future__ import annotations

import json

import pytest
import torch

from eqprop.diagnostics import DiagnoseReport, diagnose
from eqprop.solvers import SolverConfig
from tests.helpers import tiny_problem

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_report():
    # 64 unknowns a sample: ARPACK (asked for) on an operator small enough for a dense check
    model, field, _ = tiny_problem("asym", B=2, d_model=8, d_ff=16, n_layers=1)
    texts: list[str] = []
    rep = diagnose(model, (field.tokens, field.targets), solver=SolverConfig(tol=1e-8,
                   max_steps=3000), sweep_eps=(0.5, 3.0), steps=100, method="arpack",
                   tols=(1e-3,), on_text=texts.append)
    return model, field, rep, texts


def dense_jacobian_eigvals(field, z: torch.Tensor, b: int) -> torch.Tensor:
    """Eigenvalues of sample ``b``'s Jacobian, from the dense ``torch.func.jacrev``."""
    one = field.sample(b)
    n = z[b].numel()
    J = torch.func.jacrev(lambda v: one.forward_for_jvp(v.reshape(1, *z.shape[1:])).reshape(-1))(
        z[b].reshape(-1))
    return torch.linalg.eigvals(J.detach().reshape(n, n))


def test_spectrum_rows_match_the_dense_jacobian(tiny_report):
    _, field, rep, _ = tiny_report
    z = rep.failures.z_best
    assert isinstance(rep, DiagnoseReport) and len(rep.samples) == 2
    for b, row in enumerate(rep.samples):
        mu = dense_jacobian_eigvals(field, z, b)
        assert row["status"] == "converged" and row["verdict"] == "none"
        assert row["max_Re_mu"] == pytest.approx(float(mu.real.max()), rel=1e-6)
        crit = (-2 * mu.real / mu.abs() ** 2).min()  # every Re μ < 0: Euler's ε_crit
        assert row["eps_crit"] == pytest.approx(float(crit), rel=1e-6)
        assert row["eps_crit_bisect"] == pytest.approx(float(crit), rel=2e-3)
        lead = mu[mu.abs().argmax()]
        assert torch.isclose(rep.eigvals[b], lead.to(rep.eigvals.dtype), rtol=1e-6).any()
        assert row["damping"] == pytest.approx(-row["crit_a"] / abs(complex(row["crit_a"],
                                                                          row["crit_|b|"])))


def test_sweep_fidelity_and_sections(tiny_report):
    _, _, rep, texts = tiny_report
    small, large = rep.sweep.rows()
    assert small["converged"] == 2 and large["converged"] == 0  # ε = 3 > ε_crit
    ift = [r for r in rep.fidelity_rows() if r["estimator"] == "ift"]
    assert ift and ift[0]["cosine"] == pytest.approx(1.0, abs=1e-4)  # at a loose z*
    assert texts == rep.sections() and len(texts) == 4
    assert texts[0].startswith("\nper sample (ε_crit at the fixed point; the run's ε = 0.5)")
    assert texts[-1] == "\nverdicts: none 2"


def test_save_writes_plots_and_json(tiny_report, tmp_path):
    _, _, rep, _ = tiny_report
    paths = rep.save(tmp_path / "d", args={"k": "6"})
    assert [p.name for p in paths] == ["spectrum.png", "residual_traces.png", "fidelity.png",
                                       "diagnose.json"]
    assert all(p.stat().st_size > 0 for p in paths)
    data = json.loads(paths[-1].read_text())
    assert list(data) == ["run", "eps", "args", "samples", "sweep", "fidelity", "verdicts"]
    assert data["args"] == {"k": "6"} and data["verdicts"]["none"] == 2
    assert data["samples"][0]["eps_crit"] == pytest.approx(rep.samples[0]["eps_crit"])


def test_a_feed_forward_model_is_rejected():
    from eqprop.errors import ConfigError
    from eqprop.models import StandardLM
    from tests.helpers import tiny_config

    with pytest.raises(ConfigError, match="diagnose: expected an EquilibriumLM"):
        diagnose(StandardLM(tiny_config()), (torch.zeros(1, 8, dtype=torch.long),) * 2)
