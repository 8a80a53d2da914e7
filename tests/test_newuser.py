"""What a new user trips over: silent failures, unmeasured numbers, a moved corpus, the
backprop baseline, the Python API, and the small things (file modes, --version,
streaming, the bench help)."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from eqprop.cli.main import main
from eqprop.models import StandardLM
from eqprop.train import load_run
from eqprop.train.checkpoint import CKPT_DIR
from eqprop.train.metrics import read_metrics
from eqprop.train.plots import _skipped_spans, nfe_phases, plot_metrics
from eqprop.train.summary import TrainSummary
from tests.helpers import TEXT, TINY3

BACKPROP = ["--model.block", "standard", "--estimator.name", "backprop"]


def train_cli(text_file: str, out: Path, name: str, *extra: str) -> int:
    return main(["train", *TINY3, "--data", text_file, "--run.out-dir", str(out),
                 "--run.name", name, *extra])


# -- silent failures ------------------------------------------------------------------------

def test_skipped_updates_are_reported_without_the_progress_bar(tmp_path, text_file, capsys):
    # ε = 1e9: every relaxation blows up, every update is skipped
    assert train_cli(text_file, tmp_path, "s", "--solver.euler.eps", "1e9") == 4
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("eqprop train: warning: solver.euler.eps=1e+09 ≥ 2: ")
    assert sum(x.startswith("eqprop train: nonfinite at step ") for x in err) == 3
    assert "eqprop train: warning: 3 of 3 updates were skipped (3 non-finite, 0 by the wall "\
           "guard): nothing was learned" in err


def test_the_summary_does_not_print_a_ce_it_never_measured(tmp_path, text_file, capsys):
    train_cli(text_file, tmp_path, "u", "--solver.euler.eps", "1e9")
    out, err = capsys.readouterr()
    assert "train CE       n/a (no step had a finite free relaxation)" in out
    (val,) = [x for x in out.splitlines() if x.startswith("val CE")]
    assert val.startswith("val CE         n/a at the training solver's z* (no relaxation "
                          "converged: ")
    assert "no validation relaxation converged" in err
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    assert summary["val_status"]["converged"] == 0


def test_a_partly_failed_validation_says_how_many_converged():
    s = TrainSummary(run_dir=Path("r"), steps=1, skipped=0, train_ce=2.0, val_ce=2.5,
                     val_ce_ref=2.4, unigram_entropy=3.0, free_converged=1.0, free_nfe=10,
                     wall_time=1.0, val_status={"converged": 3, "contracting": 1, "cycling": 4},
                     ref_status={"converged": 6, "contracting": 2})
    (line,) = [x for x in s.format().splitlines() if x.startswith("val CE")]
    assert line == ("val CE         2.500 nats at the training solver's z* (converged 3 of 8), "
                    "2.400 after the reference solve")


@pytest.mark.parametrize("args, warning", [
    (["--optim.lr", "10"], "warning: optim.lr=10 is far above the usual 1e-4 to 1e-2"),
    (["--model.vocab-size", "7"], "warning: --model.vocab-size is ignored"),
])
def test_suspicious_settings_warn_also_without_progress(tmp_path, text_file, capsys, args,
                                                        warning):
    train_cli(text_file, tmp_path, "w", *args)
    assert f"eqprop train: {warning}" in capsys.readouterr().err


# -- eval of a moved or changed corpus -------------------------------------------------------

def test_eval_follows_a_moved_corpus_and_refuses_a_changed_one(tmp_path, text_file, capsys):
    assert train_cli(text_file, tmp_path, "m") == 0
    moved = tmp_path / "moved.txt"
    Path(text_file).rename(moved)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m")]) == 2
    assert "give the training text with --data PATH" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "m"), "--data", str(moved)]) == 0
    capsys.readouterr()
    moved.write_text(TEXT.replace("question", "questing"), encoding="utf-8")
    assert main(["eval", str(tmp_path / "m"), "--data", str(moved)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not the one the run was trained on (SHA-256 " in err
    assert main(["eval", str(tmp_path / "m"), "--data", str(moved),
                 "--allow-changed-data"]) == 0


# -- the backprop baseline -------------------------------------------------------------------

def test_the_backprop_baseline_trains_evaluates_samples_and_resumes(tmp_path, text_file,
                                                                    capsys):
    assert train_cli(text_file, tmp_path, "bp", *BACKPROP, "--run.ckpt-every", "1") == 0
    out = capsys.readouterr().out
    assert "(one forward pass: the backprop baseline)" in out
    assert "free phase     n/a (feed-forward, no relaxation)" in out
    records = [r for r in read_metrics(tmp_path / "bp" / "metrics.jsonl") if "event" not in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert "val_ce" in records[-1] and "status" not in records[-1]
    assert {p.name for p in (tmp_path / "bp" / "plots").iterdir()} >= {"ce.png", "status.png"}
    run = load_run(tmp_path / "bp")
    assert isinstance(run.model, StandardLM)
    assert main(["eval", str(tmp_path / "bp"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["eval_ce"] > 0 and "ref_status" not in m
    assert main(["sample", str(tmp_path / "bp"), "--prompt", "To", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("To")
    assert main(["train", "--resume", str(tmp_path / "bp"), "--schedule.steps", "5"]) == 0
    assert load_run(tmp_path / "bp").step == 5


def test_the_baseline_resumes_exactly(tmp_path, text_file):
    assert train_cli(text_file, tmp_path, "a", *BACKPROP, "--schedule.steps", "4") == 0
    assert train_cli(text_file, tmp_path, "b", *BACKPROP, "--schedule.steps", "2") == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--schedule.steps", "4"]) == 0
    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(),
                                                  b.model.state_dict().values(), strict=True))


@pytest.mark.parametrize("args, match", [
    (["--model.block", "standard"], "add --estimator.name backprop"),
    (["--estimator.name", "backprop"], "add --model.block standard"),
])
def test_the_baseline_needs_both_settings(tmp_path, text_file, capsys, args, match):
    assert train_cli(text_file, tmp_path, "x", *args) == 2
    assert match in capsys.readouterr().err


# -- the Python API --------------------------------------------------------------------------

def test_a_loaded_run_generates_and_gives_logits(tmp_path, text_file):
    assert train_cli(text_file, tmp_path, "api") == 0
    run = load_run(tmp_path / "api")
    g = run.generate("To", 7, seed=1)
    assert len(g.text) == 7 and g.text == run.generate("To", 7, seed=1).text
    logits = run.logits("To be")
    assert logits.shape == (1, 5, len(run.vocab))
    assert torch.isfinite(logits).all()
    assert run.logits(run.vocab.encode("To be")).shape == (1, 5, len(run.vocab))


def test_the_python_api_is_in_the_readme():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert 'run.generate("ROMEO", 200)' in readme and "run.logits(" in readme


# -- the small things ------------------------------------------------------------------------

def test_checkpoint_files_have_the_same_mode(tmp_path, text_file):
    old = os.umask(0o022)
    try:
        assert train_cli(text_file, tmp_path, "mode") == 0
    finally:
        os.umask(old)
    modes = {p.suffix: stat.S_IMODE(p.stat().st_mode)
             for p in (tmp_path / "mode" / CKPT_DIR).iterdir()}
    assert modes == {".safetensors": 0o644, ".pt": 0o644, ".json": 0o644}


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("eqprop 0.")


class _Writes(io.StringIO):
    """stdout that records each write (and each flush)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())
        super().flush()


def test_sample_streams_its_characters(tmp_path, text_file, monkeypatch):
    assert train_cli(text_file, tmp_path, "st") == 0
    out = _Writes()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["sample", str(tmp_path / "st"), "--prompt", "To", "--tokens", "20"]) == 0
    # flushed after the prompt and after every character, not once at the end
    seen = [x for i, x in enumerate(out.flushed) if i == 0 or x != out.flushed[i - 1]]
    assert seen[0] == "To" and len(seen) >= 21 and out.getvalue().startswith(seen[-2])


def test_bench_help_differs_per_benchmark(capsys):
    helps = []
    for target in ("solvers", "train"):
        assert main(["bench", target, "--help"]) == 0
        helps.append(capsys.readouterr().out)
    assert helps[0] != helps[1]
    assert "--solvers.cases" in helps[0] and "--solvers.cases" not in helps[1]
    assert "--train.d-model" in helps[1] and "--train.d-model" not in helps[0]


def test_bench_train_says_what_it_times(capsys):
    assert main(["bench", "train", "--train.d-model", "16", "--train.n-heads", "2",
                 "--train.d-ff", "32", "--train.seq-len", "8", "--train.batch-size", "2",
                 "--train.repeats", "1", "--train.warmup", "0", "--train.device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "eqprop bench train: timing asymep (1/4, " in err


def test_skipped_updates_are_drawn(tmp_path):
    records = [{"step": s, "train_ce": 3.0, "skipped": s in (3, 4, 7),
                "status_frac": {"converged": 1.0}} for s in range(1, 9)]
    assert _skipped_spans(records) == [(2, 4), (6, 7)]
    plot_metrics(records, tmp_path, unigram_entropy=3.0)
    assert (tmp_path / "ce.png").stat().st_size > 0


def test_nfe_png_leaves_out_the_flat_residual_line():
    records = [{"step": 1, "nfe": {"free": 20.0, "nudged+": 19.0, "residual": 1.0}}]
    assert nfe_phases(records) == ["free", "nudged+"]
