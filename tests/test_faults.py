"""Faults of the process and the disk, injected for real: kill -9 (also in the middle of a
checkpoint write, by the test-only hook of :mod:`eqprop.train.checkpoint`), a read-only
or full run directory, ENOSPC in the middle of a write. After each, the last good
checkpoint loads and ``--resume`` ends with the same metrics and weights as an
uninterrupted run. Listed in ``docs/reliability.md``.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eqprop.cli.main import main
from eqprop.errors import StorageError
from eqprop.train import train
from eqprop.train.checkpoint import CKPT_DIR, FAULT_ENV, load_checkpoint
from eqprop.train.metrics import read_metrics
from tests.helpers import STEPS, TEXT, TINY, one_line_error, spawn, tiny, train_args, without_clock


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted CLI run of STEPS steps: (text file, run dir)."""
    d = tmp_path_factory.mktemp("reference")
    (d / "text.txt").write_text(TEXT, encoding="utf-8")
    assert main(train_args(str(d / "text.txt"), d / "runs", "ref")) == 0
    return str(d / "text.txt"), d / "runs" / "ref"


def assert_same_run(run: Path, ref: Path) -> None:
    """Same metrics (less the clock) and the same final weights as the reference."""
    assert without_clock(read_metrics(run / "metrics.jsonl")) == \
        without_clock(read_metrics(ref / "metrics.jsonl"))
    a, b = load_checkpoint(run), load_checkpoint(ref)
    assert a.step == b.step == STEPS
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in b.weights)
    assert not list((run / CKPT_DIR).glob("*.tmp"))


# -- kill -9 --------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["pt", pytest.param("safetensors", marks=pytest.mark.slow),
                                    pytest.param("json", marks=pytest.mark.slow)])
def test_kill_9_in_the_middle_of_a_checkpoint_write(tmp_path, reference, suffix):
    text_file, ref = reference
    out = tmp_path / "runs"
    p = spawn(train_args(text_file, out, "k"), **{FAULT_ENV: f"kill-in-checkpoint:4:{suffix}"})
    p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL
    run = out / "k"
    torn = sorted(x.name for x in (run / CKPT_DIR).glob("*.tmp"))
    assert torn == [("latest.json" if suffix == "json" else f"step_0000004.{suffix}") + ".tmp"]
    assert load_checkpoint(run).step == 2  # the last good checkpoint
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_run(run, ref)


def test_kill_9_at_a_random_moment(tmp_path, reference):
    text_file, ref = reference
    out = tmp_path / "runs"
    p = spawn(train_args(text_file, out, "r"))
    metrics, deadline = out / "r" / "metrics.jsonl", time.monotonic() + 300
    while not any(r.get("step", 0) >= 3 for r in read_metrics(metrics)):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    step = load_checkpoint(out / "r").step
    assert step in (2, 4, 6)
    assert main(["train", "--resume", str(out / "r")]) == 0
    assert_same_run(out / "r", ref)



# -- unwritable or full run directory ---------------------------------------------------------

@pytest.mark.parametrize("case", ["new run", "resume"])
def test_read_only_run_directory_fails_before_training(tmp_path, text_file, case, request):
    ro = tmp_path / "ro"
    request.addfinalizer(lambda: [p.chmod(0o755) for p in (ro, ro / "x") if p.exists()])
    args = ["train", *TINY, "--data", text_file, "--run.out-dir", str(ro), "--run.name", "x"]
    if case == "resume":
        assert main([*args, "--schedule.steps", "2"]) == 0
        args = ["train", "--resume", str(ro / "x"), "--schedule.steps", "4"]
        (ro / "x").chmod(0o555)
        before = sorted(p.name for p in (ro / "x").rglob("*"))
    else:
        ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permissions unless it drops CAP_DAC_OVERRIDE
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--",
               sys.executable, "-m", "eqprop", *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        code, err = p.returncode, p.stderr.strip().splitlines()[-1]
    else:
        code, err = main(args), None
    assert code == 2
    if case == "new run":
        assert not list(ro.iterdir())
        expect = f"cannot create a run directory under {str(ro)!r} (Permission denied): " \
                 "choose a writable --run.out-dir"
    else:
        assert sorted(p.name for p in (ro / "x").rglob("*")) == before
        assert load_checkpoint(ro / "x").step == 2
        expect = f"run directory {str(ro / 'x')!r} is not writable (Permission denied)"
    if err is not None:
        assert err.startswith(f"eqprop train: error: {expect}"), err


def test_full_disk_is_found_before_training(tmp_path, text_file, monkeypatch, capsys):
    import eqprop.train.rundir as rundir

    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: type("U", (), {"free": 4096})())
    assert main(["train", *TINY, "--data", text_file, "--run.out-dir", str(tmp_path),
                 "--run.name", "f"]) == 2
    assert "has 0.0 MiB free, checkpoints need about" in one_line_error(capsys, "train")
    assert not (tmp_path / "f" / "metrics.jsonl").exists()


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_during_a_checkpoint_write(tmp_path, reference, monkeypatch, capsys):
    text_file, ref = reference
    real_save = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 4:  # half a file, then the disk is full
            real_save(obj, f, *a, **k)
            Path(f).write_bytes(Path(f).read_bytes()[:1000])
            raise enospc(f)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "runs"
    assert main(train_args(text_file, out, "d")) == 2
    err = one_line_error(capsys, "train")
    assert "step_0000004.pt' (No space left on device); the previous checkpoint is intact" in err
    assert load_checkpoint(out / "d").step == 2 and not list((out / "d" / CKPT_DIR).glob("*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--resume", str(out / "d")]) == 0
    assert_same_run(out / "d", ref)


def test_disk_full_during_a_metrics_write(tmp_path, reference, monkeypatch, capsys):
    text_file, ref = reference
    real_open, seen = Path.open, []

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, data):
            raise enospc(self.f.name)

    def open_(self, mode="r", *a, **k):
        f = real_open(self, mode, *a, **k)
        if self.name == "metrics.jsonl" and "a" in mode:
            seen.append(1)
            return Full(f) if len(seen) == 5 else f
        return f

    monkeypatch.setattr(Path, "open", open_)
    out = tmp_path / "runs"
    assert main(train_args(text_file, out, "m")) == 2
    assert "metrics.jsonl' (No space left on device): free some space" in \
        one_line_error(capsys, "train")
    assert [r["step"] for r in read_metrics(out / "m" / "metrics.jsonl")] == [1, 2, 3, 4]
    monkeypatch.setattr(Path, "open", real_open)
    assert main(["train", "--resume", str(out / "m")]) == 0
    assert_same_run(out / "m", ref)


def test_disk_full_during_a_plot_write(tmp_path, text_file, monkeypatch):
    from matplotlib.figure import Figure

    def savefig(self, fname, *a, **k):
        Path(fname).write_bytes(b"\x89PNG")
        raise enospc(fname)

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(StorageError, match=r"ce.png' \(No space left on device\)"):
        train(tiny(text_file, tmp_path / "runs"))
    (run,) = (tmp_path / "runs").iterdir()
    assert not list((run / "plots").glob("*")) and load_checkpoint(run).step == 6
