"""Stability diagnostics on planted spectra and on a small model (float64 where exact)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from eqprop import Euler, relax
from eqprop.diagnostics import (
    Failure,
    StabilityTracking,
    classify_failures,
    damping_ratio,
    dense_jacobian,
    dense_spectrum,
    eps_crit,
    eps_crit_from_eigs,
    gradient_fidelity,
    hutchinson_frobenius,
    log_norm,
    plot_fidelity,
    plot_residual_traces,
    plot_spectrum,
    sort_eigs,
    spectral_radius,
    spectrum,
    sweep_field,
    track_stability,
)
from eqprop.errors import ConfigError
from eqprop.fields import Field
from eqprop.gradients import EP, IFT, AsymEP
from eqprop.solvers import Status
from tests.helpers import eps_crit as eps_crit_of
from tests.helpers import rotation_block, tiny_problem


@pytest.fixture(autouse=True)
def one_thread():
    """ARPACK drives thousands of tiny JVPs: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class BatchLinearField(Field):
    """``F(z)_b = A_b (z_b - c_b)``: a different planted Jacobian ``A_b`` per sample."""

    def __init__(self, A: Tensor, c: Tensor):
        self.A, self.c = A, c  # (B, n, n), (B, n)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.einsum("bij,bj->bi", self.A, z - self.c)


def planted(reals: list[float], pairs: list[tuple[float, float]], seed: int = 0,
            mix: float = 0.3) -> Tensor:
    """A non-normal ``n × n`` matrix ``S D S⁻¹`` with the given real modes and pairs a ± ib."""
    n = len(reals) + 2 * len(pairs)
    D = torch.zeros(n, n, dtype=torch.float64)
    for i, (a, b) in enumerate(pairs):
        D[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = rotation_block(a, b)
    idx = torch.arange(2 * len(pairs), n)
    D[idx, idx] = torch.tensor(reals, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    S = torch.eye(n, dtype=torch.float64) + mix * torch.randn(n, n, generator=g,
                                                              dtype=torch.float64) / n**0.5
    return S @ D @ torch.linalg.inv(S)


def batch_field(mats: list[Tensor], seed: int = 0) -> BatchLinearField:
    g = torch.Generator().manual_seed(seed)
    A = torch.stack(mats)
    return BatchLinearField(A, torch.randn(A.shape[:2], generator=g, dtype=torch.float64))


class ShiftedCubic(Field):
    """``F(z) = A (z - c) - ‖z - c‖² (z - c)``, fixed point ``c ≠ 0`` with Jacobian ``A``.

    A rotating mode a < 0 above ε_crit: Euler settles on a limit cycle of the *map*
    (an artifact). a > 0: a supercritical Hopf bifurcation, the *continuous* dynamics
    circle c on a limit cycle and no step size settles.
    """

    def __init__(self, a: float, b: float, B: int = 3, seed: int = 0):
        self.A = planted([-1.0], [(a, b)], seed=seed)
        g = torch.Generator().manual_seed(seed + 1)
        self.c = 2 + torch.rand(B, 3, generator=g, dtype=torch.float64)

    def __call__(self, z: Tensor) -> Tensor:
        d = z - self.c
        return d @ self.A.T - d * (d * d).sum(-1, keepdim=True)


def power_iteration_eps_crit(F, z: Tensor, iters: int = 500) -> Tensor:
    """What the naive method gives: the dominant eigenvalue by a power iteration on J
    (Rayleigh quotient), turned into -2a/a² for that one (real) estimate."""
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=z.dtype)
    for _ in range(iters):
        w = torch.func.jvp(F, (z,), (v,))[1]
        lam = (w * v).sum(-1) / (v * v).sum(-1)
        v = w / w.norm(dim=-1, keepdim=True)
    return -2 / lam


# -- ε_crit from planted spectra ----------------------------------------------


def test_eps_crit_formula_and_unstable_modes():
    mu = torch.tensor([[-1 + 0j, -0.3 + 2j, complex("nan")],
                       [-1 + 0j, 0.1 + 1j, -5 + 0j],
                       [-1 + 0j, 0 + 0j, -2 + 0j]], dtype=torch.complex128)
    e, mode = eps_crit_from_eigs(mu)
    assert e[0] == pytest.approx(eps_crit_of(-0.3, 2.0)) and mode[0] == -0.3 + 2j
    assert e[1] == 0 and mode[1] == 0.1 + 1j  # a ≥ 0: no ε works
    assert e[2] == 0 and mode[2] == 0
    assert damping_ratio(mode[:1])[0] == pytest.approx(0.3 / math.hypot(0.3, 2.0))


@pytest.mark.parametrize("method", ["dense", "arpack"])
def test_eps_crit_of_planted_spectra_per_sample(method):
    """Each sample its own planted Jacobian: ε_crit within 1 % by both routes."""
    cases = [(-0.3, 2.0), (-0.05, 0.8), (-1.0, 6.0)]
    reals = torch.linspace(-4.0, -0.5, 24).tolist()
    F = batch_field([planted(reals, [ab], seed=i) for i, ab in enumerate(cases)])
    r = eps_crit(F, F.c, method=method, k=6)
    for i, (a, b) in enumerate(cases):
        truth = min(eps_crit_of(a, b), 2 / 4.0)
        assert r.eig[i] == pytest.approx(truth, rel=1e-6)
        assert r.bisect[i] == pytest.approx(truth, rel=1e-2)
    assert torch.allclose(r.max_real, torch.tensor([-0.3, -0.05, -0.5], dtype=torch.float64))


def test_critical_pair_found_where_power_iteration_misses_it():
    """A stiff, strongly damped real mode -10 dominates |μ| (power iteration converges
    to it: ε_crit ≈ 0.2), while the pair -1 ± 6i sets ε_crit = 2/37 ≈ 0.054. The pair is
    neither among the 6 largest-magnitude nor the 6 largest-real-part eigenvalues."""
    reals = torch.linspace(-10.0, -7.0, 14).tolist() + torch.linspace(-3.0, -0.2, 24).tolist()
    F = batch_field([planted(reals, [(-1.0, 6.0)], seed=s) for s in range(2)])
    truth = eps_crit_of(-1.0, 6.0)
    naive = power_iteration_eps_crit(F, F.c)
    assert torch.allclose(naive, torch.full((2,), 0.2, dtype=torch.float64), rtol=1e-2)
    for which in ("LM", "LR"):  # the pair is not where a leading-k search looks
        leading = spectrum(F, F.c, 6, which, method="arpack").eigvals
        assert (leading.imag.abs() < 1e-6).all(), which
    r = eps_crit(F, F.c, method="arpack", k=6)
    assert torch.allclose(r.eig, torch.full((2,), truth, dtype=torch.float64), rtol=1e-2)
    assert torch.allclose(r.bisect, torch.full((2,), truth, dtype=torch.float64), rtol=1e-2)
    assert torch.allclose(r.mode.imag.abs(), torch.full((2,), 6.0, dtype=torch.float64))


@pytest.mark.parametrize("a_plus", [1e-3, 1e-2])
def test_marginally_unstable_mode_means_no_step_works(a_plus):
    """A real mode at +1e-3 hides behind a stiffer pair: ρ(I + εJ) exceeds 1 by only
    ε·1e-3 at small ε; both routes must still say that no step size works."""
    reals = [a_plus] + torch.linspace(-4.0, -0.5, 24).tolist()
    F = batch_field([planted(reals, [(-0.3, 2.0)], seed=3)])
    r = eps_crit(F, F.c, method="arpack", k=6)
    assert float(r.eig[0]) == 0 and float(r.bisect[0]) == 0
    assert float(r.max_real[0]) == pytest.approx(a_plus, abs=1e-9)


def test_spectral_radius_crosses_one_at_eps_crit():
    F = batch_field([planted([-1.0, -2.0], [(-0.3, 2.0)])])
    e = eps_crit_of(-0.3, 2.0)
    assert spectral_radius(F, F.c, 0.98 * e)[0] < 1 < spectral_radius(F, F.c, 1.02 * e)[0]


def test_bad_settings_say_what_is_allowed():
    F = batch_field([planted([-1.0], [(-0.3, 2.0)])])
    with pytest.raises(ConfigError, match="LM, LR"):
        spectrum(F, F.c, 2, "SM")
    with pytest.raises(ConfigError, match="auto, arpack, dense"):
        spectrum(F, F.c, 2, "LM", method="lapack")
    with pytest.raises(ConfigError, match="integer ≥ 1"):
        spectrum(F, F.c, 0)


# -- small model: ARPACK against the dense Jacobian ---------------------------


@pytest.fixture(scope="module")
def small_model():
    torch.set_num_threads(1)
    return tiny_problem("asym", B=1, d_model=8, d_ff=16, seq_len=6)  # n = 2·6·8 = 96


@pytest.mark.parametrize("which", ["LM", "LR"])
def test_arpack_matches_dense_eigvals_on_small_model(small_model, which):
    _, field, z = small_model
    k = 6
    dense = dense_spectrum(field, z)  # (1, 96)
    assert torch.allclose(dense, sort_eigs(torch.linalg.eigvals(dense_jacobian(field, z)), "LM"))
    got = spectrum(field, z, k, which, method="arpack")
    assert bool(got.converged.all())
    key = (lambda m: m.abs()) if which == "LM" else (lambda m: m.real)
    # the same leading values (the ordering key is blind to the order within a pair) ...
    torch.testing.assert_close(key(got.eigvals), key(sort_eigs(dense, which)[:, :k]),
                               rtol=0, atol=1e-6)
    # ... and each one an eigenvalue of the dense Jacobian
    dist = (got.eigvals[0][:, None] - dense[0][None, :]).abs().amin(1)
    assert float(dist.max()) < 1e-6


def test_bisection_and_eigenvalue_eps_crit_agree_on_small_model(small_model):
    _, field, z = small_model
    r = eps_crit(field, z, method="arpack", k=6)
    truth, _ = eps_crit_from_eigs(dense_spectrum(field, z))
    assert float(r.eig[0]) == pytest.approx(float(truth[0]), rel=1e-6)
    assert float(r.bisect[0]) == pytest.approx(float(r.eig[0]), rel=1e-2)
    # the measured ε_crit is where Euler's contraction factor crosses 1
    rho_lo, rho_hi = (spectral_radius(field, z, f * float(r.eig[0]), method="arpack")
                      for f in (0.97, 1.03))
    assert float(rho_lo[0]) < 1 < float(rho_hi[0])


def test_log_norm_and_hutchinson_frobenius(small_model):
    _, field, z = small_model
    J = dense_jacobian(field, z)[0]
    nu = torch.linalg.eigvalsh((J + J.T) / 2).max()
    assert float(log_norm(field, z, method="arpack")[0]) == pytest.approx(float(nu), abs=1e-8)
    fro = float((J**2).sum() / J.shape[0])
    est = hutchinson_frobenius(field, z, probes=200, generator=torch.Generator().manual_seed(0))
    assert float(est[0]) == pytest.approx(fro, rel=0.1)
    # ν ≥ max Re μ always; equality would mean J is normal, which attention's is not
    assert float(nu) > float(dense_spectrum(field, z).real.max()) + 1e-3


# -- failure classification ----------------------------------------------------


def test_classify_integration_artifact_vs_lost_fixed_point():
    stable, hopf = ShiftedCubic(-0.3, 2.0), ShiftedCubic(0.3, 2.0)
    e = eps_crit_of(-0.3, 2.0)
    g = torch.Generator().manual_seed(0)
    start = stable.c + 0.5 * torch.randn(stable.c.shape, generator=g, dtype=torch.float64)
    runs = {
        "below": (stable, 0.5 * e, Failure.NONE),
        "above": (stable, 1.5 * e, Failure.ARTIFACT),
        "hopf": (hopf, 0.05, Failure.LOST_FIXED_POINT),
    }
    for name, (F, eps, expected) in runs.items():
        sol = relax(F, start, Euler(eps), tol=1e-9, max_steps=3000)
        verdict = Status.CONVERGED if expected == Failure.NONE else Status.CYCLING
        assert bool((sol.status == verdict).all()), (name, sol.summary())
        rep = classify_failures(F, sol, eps)
        assert rep.labels() == [expected.label] * 3, name
        assert bool(rep.fixed_point_found.all())
        torch.testing.assert_close(rep.z_best, F.c)  # the fixed point, not the orbit
    # a step budget too small: ε is fine, nothing is lost, still contracting: slow
    sol = relax(stable, start, Euler(0.5 * e), tol=1e-9, max_steps=100)
    assert bool((sol.status == Status.CONTRACTING).all()), sol.summary()
    assert classify_failures(stable, sol, 0.5 * e).labels() == ["slow"] * 3
    # ... and a bare state that did not contract, with ε fine: unexplained
    assert classify_failures(stable, start, 0.5 * e).labels() == ["unexplained"] * 3


# -- ε-sweep, fidelity, tracking, plots ---------------------------------------


def test_eps_sweep_status_changes_at_eps_crit(tmp_path):
    F = ShiftedCubic(-0.3, 2.0)
    e = eps_crit_of(-0.3, 2.0)
    g = torch.Generator().manual_seed(0)
    z0 = F.c + 0.5 * torch.randn(F.c.shape, generator=g, dtype=torch.float64)
    s = sweep_field(F, z0, [0.5 * e, 0.8 * e, 1.2 * e, 2.0 * e], steps=2500, tol=1e-6)
    assert s.status.shape == (4, 3) and s.traces.shape == (4, 3, 2501)
    assert (s.status[:2] == Status.CONVERGED).all() and (s.status[2:] == Status.CYCLING).all()
    assert (s.floor[:2] <= 1e-6).all() and (s.floor[2:] > 1e-3).all()
    assert [r["converged"] for r in s.rows()] == [3, 3, 0, 0]
    path = plot_residual_traces(s, tmp_path / "traces.png")
    assert path.stat().st_size > 10_000


def test_gradient_fidelity_vs_tolerance_and_plots(tmp_path):
    model, field, z = tiny_problem("asym", B=2, d_model=8, d_ff=16, seq_len=6)
    est = {"ep": EP(beta=1e-3, tol=1e-8, max_steps=2000),
           "asymep": AsymEP(beta=1e-3, tol=1e-8, max_steps=2000), "ift": IFT(tol=1e-10)}
    res = gradient_fidelity(model, (field.tokens, field.targets), est, tols=(1e-1, 1e-8),
                            solver=Euler(0.5), max_steps=3000)
    assert res.reference_residual < 1e-9
    loose, tight = ({r.estimator: r.cosine for r in res.rows if r.tol == t} for t in (1e-1, 1e-8))
    assert tight["ift"] > 1 - 1e-9 and tight["asymep"] > 0.999
    assert tight["ep"] < tight["asymep"] - 1e-3  # plain EP is biased on a non-symmetric J
    assert loose["ift"] < tight["ift"] - 1e-4  # an inexact free phase costs fidelity
    assert plot_fidelity(res, tmp_path / "fid.png").stat().st_size > 10_000
    r = eps_crit(field, z, method="dense")
    p = plot_spectrum(dense_spectrum(field, z), 0.5, tmp_path / "spec.png", critical=r.mode)
    assert p.stat().st_size > 10_000


def test_track_stability_reports_the_binding_sample():
    model, field, z = tiny_problem("asym", B=3, d_model=8, d_ff=16, seq_len=6)
    tracking = StabilityTracking(every=10, samples=3)
    assert tracking(model, field, z, step=5) == {}  # the training loop's hook, not due
    out = tracking(model, field, z, step=20)
    r = eps_crit(field, z, method="dense")
    i = int(r.eig.argmin())
    assert out["eps_crit_min"] == pytest.approx(float(r.eig[i]))
    assert out["crit_a"] == pytest.approx(float(r.mode[i].real))
    assert out["crit_b"] == pytest.approx(abs(float(r.mode[i].imag)))
    assert out["max_re"] == pytest.approx(float(r.max_real.max())) and out["max_re"] < 0
    assert out["unstable_frac"] == 0.0
    assert set(track_stability(model, field, z, samples=1)) == set(out)
    with pytest.raises(ConfigError, match="tracking.samples"):
        StabilityTracking(samples=0)


# -- eqprop diagnose ---------------------------------------------------------------


def test_eqprop_diagnose_on_a_tiny_trained_run(tmp_path, capsys):
    from eqprop.cli.main import main
    from eqprop.data import DataConfig
    from eqprop.models import ModelConfig
    from eqprop.train import EvalConfig, RunConfig, ScheduleConfig, TrainConfig, train

    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question:\n" * 30, encoding="utf-8")
    cfg = TrainConfig(
        model=ModelConfig(d_model=8, n_heads=2, d_ff=16, n_layers=1, seq_len=8),
        schedule=ScheduleConfig(steps=4, warmup=1),
        data=DataConfig(path=str(text), batch_size=4),
        eval=EvalConfig(every=4, batches=1, batch_size=2),
        run=RunConfig(out_dir=str(tmp_path / "runs"), device="cpu", threads=1, progress=False,
                      ckpt_every=0, sample_tokens=0),
    )
    run_dir = train(cfg).run_dir
    capsys.readouterr()
    argv = ["diagnose", str(run_dir), "--batch-size", "2", "--eps-sweep", "0.25", "4.0",
            "--steps", "60", "--tols", "1e-2", "1e-4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for header in ("eps_crit_bisect", "verdict", "floor_median", "cosine"):
        assert header in out, header
    folder = run_dir / "diagnose"
    for png in ("spectrum.png", "residual_traces.png", "fidelity.png"):
        assert (folder / png).stat().st_size > 10_000, png
    report = json.loads((folder / "diagnose.json").read_text())
    assert len(report["samples"]) == 2 and len(report["fidelity"]) == 2 * 3
    for s in report["samples"]:
        assert s["max_Re_mu"] < 0 and s["eps_crit_bisect"] == pytest.approx(s["eps_crit"], rel=1e-2)
    small, huge = report["sweep"]  # ε = 4 is far above every ε_crit: nothing converges
    assert max(s["eps_crit"] for s in report["samples"]) < 4.0 and huge["converged"] == 0
    assert main(["diagnose", str(run_dir), "--eps-sweep", "-1"]) == 2
    assert "--eps-sweep -1.0" in capsys.readouterr().err
