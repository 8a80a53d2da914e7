"""The ``eqprop train / eval / sample`` commands: exit codes, outputs, one-line errors."""

from __future__ import annotations

import json

import pytest

from eqprop.cli.main import main
from eqprop.train import load_run
from eqprop.train.metrics import read_metrics
from tests.helpers import TINY3, one_line_error


def without(args: list[str], *flags: str) -> list[str]:
    """``args`` less the given flags and their values."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = not a.startswith("--run.no-")
        else:
            out.append(a)
    return out


@pytest.fixture
def trained(tmp_path, text_file, capsys):
    """A run trained by the CLI, and what the command printed."""
    out = tmp_path / "runs"
    assert main(["train", *TINY3, "--data", text_file, "--run.out-dir", str(out),
                 "--run.name", "r"]) == 0
    return out / "r", capsys.readouterr().out


@pytest.fixture
def run_dir(trained):
    return trained[0]


def test_train_prints_a_summary_and_writes_the_run(trained):
    run_dir, out = trained
    assert "val CE" in out and "unigram" in out and str(run_dir) in out
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "plots" / "ce.png").is_file()


def test_config_file_and_overrides(tmp_path, text_file):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nd_model = 12\nn_heads = 3\n[optim]\nlr = 0.02\n'
                   '[estimator]\nname = "ep"\n')
    out = tmp_path / "runs"
    args = without(TINY3, "--model.d-model", "--model.n-heads")
    assert main(["train", *args, "--config", str(cfg), "--optim.lr", "0.005", "--data",
                 text_file, "--run.out-dir", str(out), "--run.name", "c"]) == 0
    config = load_run(out / "c").config
    assert config.model.d_model == 12 and config.estimator.name == "ep"  # from the file
    assert config.optim.lr == 0.005  # the flag beats the file
    assert config.model.seq_len == 8  # flags the file does not mention


def test_yaml_config_file(tmp_path, text_file):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("schedule:\n  steps: 2\n")
    out = tmp_path / "runs"
    assert main(["train", *without(TINY3, "--schedule.steps"), "--config", str(cfg), "--data",
                 text_file, "--run.out-dir", str(out), "--run.name", "y"]) == 0
    assert load_run(out / "y").step == 2
    # a flag that differs from the default beats the file
    assert main(["train", *TINY3, "--config", str(cfg), "--data", text_file, "--run.out-dir",
                 str(out), "--run.name", "z"]) == 0
    assert load_run(out / "z").step == 3


def test_resume_extends_a_run(run_dir, capsys):
    assert main(["train", "--resume", str(run_dir), "--schedule.steps", "5",
                 "--run.no-progress"]) == 0
    assert "schedule.steps 3 -> 5" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert load_run(run_dir).step == 5


@pytest.mark.parametrize("args, match", [
    (["--data", "/nonexistent/plays.txt"], "data file '/nonexistent/plays.txt' does not exist"),
    (["--config", "/nonexistent.toml"], "config file '/nonexistent.toml' does not exist"),
    (["--resume", "/nonexistent-run"], "run '/nonexistent-run' does not exist"),
])
def test_train_errors_are_one_line(capsys, tmp_path, args, match):
    assert main(["train", *TINY3, "--run.out-dir", str(tmp_path), *args]) == 2
    assert match in one_line_error(capsys, "train")


def test_invalid_setting_on_the_command_line(capsys, tmp_path):
    # validation inside a config section runs while tyro builds it: exit code 2 either way
    try:
        code = main(["train", *TINY3, "--run.out-dir", str(tmp_path), "--estimator.name", "magic"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())  # tyro may box it
    assert "estimator name='magic': allowed values are asymep, ep, ift, bptt" in err
    assert not list(tmp_path.iterdir())


def test_train_refuses_an_existing_run_and_config_with_resume(run_dir, capsys, text_file):
    out = str(run_dir.parent)
    assert main(["train", *TINY3, "--data", text_file, "--run.out-dir", out, "--run.name",
                 "r"]) == 2
    assert "exists already" in one_line_error(capsys, "train")
    assert main(["train", "--resume", str(run_dir), "--config", "x.toml"]) == 2
    assert "cannot be combined" in one_line_error(capsys, "train")


def test_bad_data_file_is_one_line(capsys, tmp_path):
    p = tmp_path / "b.bin"
    p.write_bytes(b"\x00\x01\x02" * 100)
    assert main(["train", *TINY3, "--data", str(p), "--run.out-dir", str(tmp_path)]) == 2
    assert "is binary" in one_line_error(capsys, "train")


def test_eval_table_and_json(run_dir, capsys):
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--batches", "1", "--batch-size", "2",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "CE" in out and "reference" in out and "free phase" in out
    assert main(["eval", str(run_dir), "--json", "--batches", "1", "--batch-size", "2",
                 "--device", "cpu"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["step"] == 3 and m["eval_ce"] > 0 and sum(m["eval_status"].values()) == 2


def test_eval_missing_run_is_one_line(capsys, tmp_path):
    assert main(["eval", str(tmp_path / "none")]) == 2
    assert "does not exist" in one_line_error(capsys, "eval")


def test_eval_bad_batches_is_one_line(run_dir, capsys):
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--batches", "0", "--device", "cpu"]) == 2
    assert "eval.batches=0: must be an integer ≥ 1" in one_line_error(capsys, "eval")


def test_sample(run_dir, capsys):
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--prompt", "To be", "--tokens", "12",
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    text = captured.out.rstrip("\n")
    assert text.startswith("To be") and len(text) == len("To be") + 12
    assert "mean NFE per character" in captured.err


@pytest.mark.parametrize("args, match", [
    (["--prompt", "Zebra é"], "the prompt has characters outside the vocabulary: 'Z', 'é'"),
    (["--prompt", ""], "the prompt is empty"),
    (["--tokens", "0"], "--tokens=0"),
])
def test_sample_errors_are_one_line(run_dir, capsys, args, match):
    capsys.readouterr()
    assert main(["sample", str(run_dir), *args, "--device", "cpu"]) == 2
    assert match in one_line_error(capsys, "sample")


def test_progress_text_shows_the_relaxation_phases():
    from eqprop.train.metrics import format_progress

    nfe = {"free": 19.0, "nudged+": 30.4, "nudged-": 31.0, "residual": 1.0}
    text = format_progress({"train_ce": 2.5, "res_max": 1e-4, "nfe": nfe,
                            "status": {"converged": 15, "cycling": 1}})
    assert text == "ce 2.500 | res 1.0e-04 | nfe 19/30/31 | [conv 15 cycl 1]/16"
