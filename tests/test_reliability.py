"""Faults, injected for real: bad input, bad data files, damaged or malicious checkpoints,
NaN/Inf in relaxation, loss, penalty, gradient or optimizer. (Kill -9 and the disk:
``test_faults.py``; the wall guard: ``test_guard.py``; fuzzing: ``test_fuzz.py``.)

Every test here is listed, with its outcome, in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from eqprop.cli.main import main
from eqprop.errors import CheckpointError, DataError
from eqprop.solvers import Euler
from eqprop.train import Trainer, load_run, resume_config, train
from eqprop.train.checkpoint import CKPT_DIR, _sha256, load_checkpoint
from eqprop.train.metrics import read_metrics
from tests.helpers import TEXT, TINY, one_line_error, spawn, tiny

# -- bad values on the command line: one line, exit code 2 ------------------------------------

@pytest.mark.parametrize("cmd, args, match", [
    ("train", ["--estimator.nudge.anderson.eps", "0"],
     "Anderson(eps=0.0): must be a finite number > 0 (from --estimator.nudge.anderson.eps 0)"),
    ("train", ["--estimator.nudge.eps", "0"], "--estimator.nudge.eps: solver settings live in "
     "their solver's section now: use --estimator.nudge.euler.eps or "),
    ("train", ["--optim.lr", "0"], "optim.lr=0.0: must be a number in (0, 10]"),
    ("train", ["--optim.lr", "nan"], "optim.lr=nan"),
    ("train", ["--estimator.beta", "inf"], "estimator.beta=inf: must be a finite number"),
    ("train", ["--model.n-heads", "5"], "not divisible by model.n_heads=5"),
    ("train", ["--solver.name", "magic"], "solver.name='magic': allowed values are euler"),
    ("train", ["--guard.policy", "maybe"], "guard.policy='maybe': allowed values are off, warn"),
    ("train", ["--run.name", "a/b"], "run.name='a/b': must be a plain folder name"),
    ("train", ["--run.seed", "-1"], "run.seed=-1: must be an integer in [0, "),
    ("train", ["--optim.lr", "abc"], "--optim.lr: could not convert string to float: 'abc'; "
                                     "expected --optim.lr FLOAT"),
    ("train", ["--bogus", "3"], "Unrecognized options: --bogus, 3"),
    ("train", ["--schedul.steps", "3"], "did you mean --schedule.steps INT?"),
    ("train", ["--optim.lr"], "Missing value for argument '--optim.lr'"),
    ("eval", ["r", "--split", "foo"], "invalid choice 'foo' for argument '--split'"),
    ("eval", [], "Missing from eqprop eval: RUN"),
    ("sample", ["r", "--top-k", "1.5"], "--top-k: no type matching"),
])
def test_bad_values_are_one_line_with_exit_code_2(capsys, tmp_path, cmd, args, match):
    assert main([cmd, *args, *(["--run.out-dir", str(tmp_path)] if cmd == "train" else [])]) == 2
    assert match in one_line_error(capsys, cmd)
    assert not list(tmp_path.iterdir())  # nothing was written


def test_help_still_works(capsys):
    assert main(["train", "--help"]) == 0
    assert "--guard.policy" in capsys.readouterr().out


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    p = spawn(["train", "--solver.euler.eps", "-1", "--run.out-dir", str(tmp_path)])
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and out == ""
    assert err.strip() == "eqprop train: error: Euler(eps=-1.0): must be a finite number > 0 " \
                          "(from --solver.euler.eps -1)"


# -- data -----------------------------------------------------------------------------------

def test_control_characters_mark_a_binary_file(tmp_path, capsys):
    p = tmp_path / "b.txt"
    p.write_bytes(bytes(range(1, 9)) * 200 + b"words\n")  # valid UTF-8, but not text
    assert main(["train", *TINY, "--data", str(p), "--run.out-dir", str(tmp_path / "r")]) == 2
    assert "is binary (1600 of 1606 characters are control characters)" in \
        one_line_error(capsys, "train")


def test_vocabulary_mismatch_on_resume(tmp_path, text_file, capsys):
    out = tmp_path / "runs"
    assert main(["train", *TINY, "--schedule.steps", "2", "--data", text_file,
                 "--run.out-dir", str(out), "--run.name", "v"]) == 0
    before = (out / "v" / "metrics.jsonl").read_text()
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper() + "Zebra ©\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "v"), "--data", str(other),
                 "--schedule.steps", "4"]) == 2
    err = one_line_error(capsys, "train")
    assert f"data file {str(other)!r} has characters outside the vocabulary: 'A', 'B'" in err
    assert "allowed are the" in err
    assert (out / "v" / "metrics.jsonl").read_text() == before  # the run is untouched


# -- checkpoints ------------------------------------------------------------------------------

class Evil:
    """Unpickling this would run code: it writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture
def trained(tmp_path, text_file):
    return train(tiny(text_file, tmp_path)).run_dir


@pytest.mark.parametrize("form", ["torch.save", "raw pickle"])
@pytest.mark.parametrize("fix_checksum", [False, True])
def test_malicious_pickle_never_runs(trained, tmp_path, form, fix_checksum):
    marker = tmp_path / "MARKER"
    state = trained / CKPT_DIR / "step_0000006.pt"
    payload = {"format": "eqprop-checkpoint/1", "step": 6, "x": Evil(marker)}
    if form == "torch.save":
        torch.save(payload, state)
    else:
        state.write_bytes(pickle.dumps(payload, protocol=2))
    if fix_checksum:  # a crafted run directory comes with a matching latest.json
        latest = trained / CKPT_DIR / "latest.json"
        pointer = json.loads(latest.read_text())
        pointer["sha256"][state.name] = _sha256(state)
        latest.write_text(json.dumps(pointer))
    with pytest.raises(CheckpointError, match="truncated, corrupted or unsafe"):
        load_run(trained)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        train(tiny(str(trained.parent / "text.txt"), trained.parent), resume=trained)
    assert not marker.exists()


def test_flipped_bit_fails_the_checksum(trained):
    p = trained / CKPT_DIR / "step_0000006.safetensors"
    raw = bytearray(p.read_bytes())
    raw[-3] ^= 0x10  # inside the tensor data: the file still parses
    p.write_bytes(bytes(raw))
    load_file(str(p))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_run(trained)


@pytest.mark.parametrize("damage, match", [
    ("nan weights", "hold NaN or Inf"),
    ("state without entries", "is not an eqprop-checkpoint/1 file of step 6"),
    ("path in latest.json", "latest.json' is corrupted"),
    ("missing state", "truncated, corrupted or unsafe"),
])
def test_crafted_checkpoints_are_clear_errors(trained, damage, match):
    folder = trained / CKPT_DIR
    if damage == "nan weights":
        w = load_file(str(folder / "step_0000006.safetensors"))
        w[next(iter(w))][0] = float("nan")
        save_file(w, str(folder / "step_0000006.safetensors"))
        latest = json.loads((folder / "latest.json").read_text())
        latest.pop("sha256")
        (folder / "latest.json").write_text(json.dumps(latest))
    elif damage == "state without entries":
        torch.save({"format": "eqprop-checkpoint/1", "step": 6}, folder / "step_0000006.pt")
    elif damage == "path in latest.json":
        (folder / "latest.json").write_text(json.dumps({"step": 6, "stem": "../../etc/x"}))
    else:
        (folder / "step_0000006.pt").unlink()
    with pytest.raises(CheckpointError, match=match):
        load_run(trained)


def test_resume_with_another_model_shape(capsys, tmp_path, text_file):
    out = tmp_path / "runs"
    assert main(["train", *TINY, "--schedule.steps", "2", "--data", text_file,
                 "--run.out-dir", str(out), "--run.name", "m"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "m"), "--model.d-model", "16"]) == 2
    assert one_line_error(capsys, "train") == (
        "eqprop train: error: model.d_model 8 -> 16: the model of a run cannot change when it "
        "is resumed; start a new run (--run.name) for another model")
    # from Python, the checkpoint names the tensors that differ (no cut-off message)
    with pytest.raises(CheckpointError, match=r"is for another model \(pos is \(8, 8\) in the "
                       r"checkpoint, \(8, 16\) here; .*\): the model settings"):
        train(replace(resume_config(out / "m"), model=replace(resume_config(out / "m").model,
                                                              d_model=16)), resume=out / "m")


# -- NaN / Inf ------------------------------------------------------------------------------

def nan_grad(field, z_star, sol):  # a finite value (0) whose gradient is NaN
    return sum((p * 0).sqrt().sum() for p in field.model.parameters())


@pytest.mark.parametrize("where, penalty, match", [
    ("gradient", nan_grad, "gradient norm nan"),
    ("penalty", lambda f, z, s: torch.tensor(float("inf")), "penalty inf"),
])
def test_nonfinite_gradient_or_penalty_is_skipped(tmp_path, text_file, where, penalty, match):
    calls = []

    def at_step_3(field, z_star, sol):
        calls.append(1)
        return penalty(field, z_star, sol) if len(calls) == 3 else None

    s = train(tiny(text_file, tmp_path), penalty=at_step_3)
    events = [r for r in read_metrics(s.run_dir / "metrics.jsonl") if r.get("event")]
    assert [(e["step"], e["event"]) for e in events] == [(3, "nonfinite")]
    assert match in events[0]["detail"] and s.skipped == 1
    assert json.loads((s.run_dir / "summary.json").read_text())["skipped"] == 1


def test_nonfinite_relaxation_is_skipped_and_never_checkpointed(tmp_path, text_file):
    cfg = tiny(text_file, tmp_path)
    cfg = replace(cfg, model=replace(cfg.model, init_scale=3.0),
                  solver=replace(cfg.solver, euler=Euler(eps=2.5)),
                  guard=replace(cfg.guard, policy="off"))
    t = Trainer(cfg)
    w0 = {k: v.clone() for k, v in t.model.state_dict().items()}
    s = t.run()
    records = read_metrics(s.run_dir / "metrics.jsonl")
    events = [r for r in records if r.get("event") == "nonfinite"]
    assert len(events) == s.skipped == 6
    assert all("free relaxation non-finite in 4/4 samples" in e["detail"] for e in events)
    # ‖F‖ overflowed while LayerNorm kept the loss finite: skipped all the same
    assert all(r["skip_reason"] == "nonfinite" for r in records if "event" not in r)
    w = load_checkpoint(s.run_dir).weights
    assert all(torch.equal(w[k], w0[k]) for k in w0)  # no update was applied


def test_nan_in_the_optimizer_is_never_checkpointed(tmp_path, text_file):
    trainer = None

    def poison_at_3(model, field, z_star, step):
        if step == 3:
            for st in trainer.optimizer.state.values():
                st["exp_avg"].fill_(float("nan"))
        return {}

    cfg = tiny(text_file, tmp_path / "runs")
    trainer = Trainer(replace(cfg, run=replace(cfg.run, ckpt_every=2)), trackers=[poison_at_3])
    s = trainer.run()
    events = [r for r in read_metrics(s.run_dir / "metrics.jsonl") if r.get("event")]
    refused = [e["step"] for e in events if e["event"] == "checkpoint_refused"]
    assert refused == [4, 6] and "non-finite values in" in events[0]["detail"]
    ck = load_checkpoint(s.run_dir)
    assert ck.step == 2 and all(torch.isfinite(w).all() for w in ck.weights.values())
    # the end-of-run sample through NaN weights stops with a note (it crashed in multinomial)
    assert "gave non-finite logits (status nonfinite): generation stopped" in \
        (s.run_dir / "samples.txt").read_text()


def test_sampling_stops_at_nonfinite_logits(trained, monkeypatch, capsys):
    from eqprop.models import EquilibriumLM

    real, calls = EquilibriumLM.logits, []

    def logits(self, z):  # the third character's relaxation goes NaN
        calls.append(1)
        out = real(self, z)
        return out * float("nan") if len(calls) == 3 else out

    monkeypatch.setattr(EquilibriumLM, "logits", logits)
    assert main(["sample", str(trained), "--prompt", "To", "--tokens", "10",
                 "--device", "cpu"]) == 2
    assert len(capsys.readouterr().out.strip()) == len("To") + 2  # what was generated
    monkeypatch.setattr(EquilibriumLM, "logits", logits)
    calls.clear()
    assert main(["sample", str(trained), "--prompt", "To", "--device", "cpu"]) == 2
    assert "error: the relaxation of character 3 gave non-finite logits" in \
        one_line_error(capsys, "sample")


def test_data_errors_are_data_errors_for_any_bytes(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from eqprop.data import DataConfig, load_corpus

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=400))
    def check(raw):
        p = tmp_path / "x.txt"
        p.write_bytes(raw)
        try:
            load_corpus(DataConfig(path=str(p)), seq_len=4)
        except DataError as e:
            assert "\n" not in str(e) and str(p) in str(e)

    check()


@pytest.mark.parametrize("z0, label", [(float("nan"), "nonfinite"), (0.0, "converged")])
def test_relaxation_that_ends_at_its_start(z0, label):
    """A relaxation decided at step 0 (a NaN start, or one already at z*) has a one-column
    residual trace: it is classified, not a crash (it crashed the nudged phase after a
    NaN free phase)."""
    from eqprop.solvers import Euler, relax

    sol = relax(lambda z: -z, torch.full((3, 4), z0), Euler(0.5), tol=1e-4)
    assert sol.counts()[label] == 3
