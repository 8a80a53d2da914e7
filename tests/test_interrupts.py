"""What a new user meets first: Ctrl-C, SIGTERM and kill -9 (real subprocesses and
signals), the run-directory lock, runs stopped before their first checkpoint, and a
flag on the command line winning over a ``--config`` file or a resumed run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from eqprop.cli.main import main
from eqprop.errors import ConfigError
from eqprop.train import load_run, train
from eqprop.train.checkpoint import CKPT_DIR, load_checkpoint
from eqprop.train.metrics import read_metrics
from eqprop.train.rundir import LOCK_FILE, RunLock
from tests.helpers import TINY, TINY3, spawn, tiny


def long_run(text_file: str, out: Path, name: str, *extra: str) -> list[str]:
    """A run far too long to finish during a test: it is stopped by a signal. It writes no
    checkpoint of its own (ckpt-every 0: only at the end)."""
    return ["train", *TINY, "--schedule.steps", "100000", "--run.ckpt-every", "0",
            "--data", text_file, "--run.out-dir", str(out), "--run.name", name, *extra]


def wait_for_steps(run: Path, n: int, proc) -> None:
    """Until ``metrics.jsonl`` has ``n`` step records (the process must still run)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if len([r for r in read_metrics(run / "metrics.jsonl") if "event" not in r]) >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not start")


@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "Ctrl-C (SIGINT)"),
                                             (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_checkpoints_the_step_and_says_where_to_resume(tmp_path, text_file, sig, code,
                                                                name):
    out = tmp_path / "runs"
    proc = spawn(long_run(text_file, out, "r"))
    wait_for_steps(out / "r", 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    (line,) = err.strip().splitlines()
    ck = load_checkpoint(out / "r")
    assert line == (f"eqprop train: interrupted by {name} at step {ck.step} (checkpoint saved); "
                    f"continue from step {ck.step} with: eqprop train --resume {out / 'r'}")
    steps = [r["step"] for r in read_metrics(out / "r" / "metrics.jsonl") if "event" not in r]
    assert ck.step >= 3 and steps[-1] == ck.step  # at a step boundary, nothing lost
    # the printed command continues it
    assert main(["train", "--resume", str(out / "r"), "--schedule.steps", str(ck.step + 2)]) == 0
    assert load_checkpoint(out / "r").step == ck.step + 2


def test_kill_9_before_the_first_checkpoint_resumes_from_step_0(tmp_path, text_file, capsys):
    out = tmp_path / "runs"
    proc = spawn(long_run(text_file, out, "k"))
    wait_for_steps(out / "k", 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (out / "k" / CKPT_DIR).exists()
    # the lock of the killed process does not block; the run restarts from step 0
    assert main(["train", "--resume", str(out / "k"), "--schedule.steps", "4"]) == 0
    steps = [r["step"] for r in read_metrics(out / "k" / "metrics.jsonl") if "event" not in r]
    assert steps == [1, 2, 3, 4]  # the killed attempt's records are replaced
    assert load_run(out / "k").step == 4


def test_an_empty_run_directory_can_be_used_again(tmp_path, text_file, capsys):
    out = tmp_path / "runs"
    (out / "e").mkdir(parents=True)  # killed between mkdir and config.yaml
    assert main(["train", *TINY3, "--data", text_file, "--run.out-dir", str(out),
                 "--run.name", "e"]) == 0
    assert load_run(out / "e").step == 3


def test_a_run_without_a_checkpoint_names_resume_when_its_name_is_reused(tmp_path, text_file,
                                                                          capsys):
    out = tmp_path / "runs"
    proc = spawn(long_run(text_file, out, "n"))
    wait_for_steps(out / "n", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert main(["train", *TINY3, "--data", text_file, "--run.out-dir", str(out),
                 "--run.name", "n"]) == 2
    err = capsys.readouterr().err
    assert f"continue it with --resume {out / 'n'}" in err
    assert main(["train", "--resume", str(out / "n"), "--schedule.steps", "3"]) == 0  # works


def test_a_busy_run_directory_is_refused_with_its_holder(tmp_path, text_file, capsys):
    out = tmp_path / "runs"
    assert main(["train", *TINY3, "--data", text_file, "--run.out-dir", str(out),
                 "--run.name", "b"]) == 0
    before = (out / "b" / "metrics.jsonl").read_bytes()
    lock = RunLock(out / "b")  # another process would hold it the same way
    try:
        assert main(["train", "--resume", str(out / "b"), "--schedule.steps", "6"]) == 2
        (err,) = capsys.readouterr().err.strip().splitlines()[-1:]
        assert err.startswith("eqprop train: error: run directory ") and \
            f"is in use by pid {os.getpid()} on " in err
        assert (out / "b" / "metrics.jsonl").read_bytes() == before  # nothing touched
    finally:
        lock.release()
    assert main(["train", "--resume", str(out / "b"), "--schedule.steps", "6"]) == 0


def test_two_resumes_at_once_one_is_refused(tmp_path, text_file):
    out = tmp_path / "runs"
    assert main(["train", *TINY3, "--data", text_file, "--run.out-dir", str(out),
                 "--run.name", "two"]) == 0
    procs = [spawn(["train", "--resume", str(out / "two"), "--schedule.steps", "100000"])
             for _ in range(2)]
    deadline = time.monotonic() + 120
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    (refused,) = [p for p in procs if p.poll() is not None]
    (running,) = [p for p in procs if p is not refused]
    _, err = refused.communicate()
    assert refused.returncode == 2 and "is in use by pid " in err, err
    wait_for_steps(out / "two", 6, running)
    running.send_signal(signal.SIGTERM)
    running.communicate(timeout=120)
    assert running.returncode == 143
    steps = [r["step"] for r in read_metrics(out / "two" / "metrics.jsonl") if "event" not in r]
    assert steps == list(range(1, len(steps) + 1))  # no step written twice
    assert (out / "two" / LOCK_FILE).exists()


def test_the_python_api_releases_the_lock(tmp_path, text_file):
    s = train(tiny(text_file, tmp_path))
    lock = RunLock(s.run_dir)  # free again once train() returned: this one gets it
    assert lock._fd is not None
    with pytest.raises(ConfigError, match="is in use by pid"):  # and it does exclude
        RunLock(s.run_dir)
    lock.release()


# -- a flag given on the command line wins -----------------------------------------------

def test_flags_equal_to_the_defaults_override_a_config_file(tmp_path, text_file):
    f = tmp_path / "f.yaml"
    f.write_text(yaml.safe_dump({"schedule": {"steps": 5}, "optim": {"lr": 0.05}}))
    out = tmp_path / "runs"
    # 3 steps and lr 0.01 (the default) on the command line beat the file's 5 and 0.05
    assert main(["train", *TINY3, "--config", str(f), "--optim.lr", "0.01", "--data", text_file,
                 "--run.out-dir", str(out), "--run.name", "c"]) == 0
    cfg = load_run(out / "c").config
    assert cfg.schedule.steps == 3 and cfg.optim.lr == 0.01
    # a setting the command line leaves out keeps the file's value
    assert main(["train", *[a for a in TINY3 if a != "--run.no-progress"], "--run.no-progress",
                 "--config", str(f), "--data", text_file, "--run.out-dir", str(out),
                 "--run.name", "d"]) == 0
    assert load_run(out / "d").config.optim.lr == 0.05


def test_flags_equal_to_the_defaults_override_a_resumed_run(tmp_path, text_file, capsys):
    out = tmp_path / "runs"
    assert main(["train", *TINY3, "--optim.lr", "0.05", "--data", text_file,
                 "--run.out-dir", str(out), "--run.name", "r"]) == 0
    assert main(["train", "--resume", str(out / "r"), "--schedule.steps", "4",
                 "--optim.lr", "0.01"]) == 0
    assert "optim.lr 0.05 -> 0.01" in capsys.readouterr().err
    assert load_run(out / "r").config.optim.lr == 0.01


def test_resume_with_fewer_steps_is_refused_and_writes_nothing(tmp_path, text_file, capsys):
    out = tmp_path / "runs"
    assert main(["train", *TINY3, "--data", text_file, "--run.out-dir", str(out),
                 "--run.name", "f"]) == 0
    before = (out / "f" / "config.yaml").read_text()
    assert main(["train", "--resume", str(out / "f"), "--schedule.steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("eqprop train: error: schedule.steps=2 is below the 3 steps the run has "
                   "done: give --schedule.steps 3 or more")
    assert (out / "f" / "config.yaml").read_text() == before
