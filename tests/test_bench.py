"""The training-step benchmark and its baseline model (timings are never asserted)."""

from __future__ import annotations

import torch

from eqprop.bench.train_step import (
    TrainBenchConfig,
    bench_relax_loop,
    bench_train_step,
    flops_per_eval,
)
from eqprop.cli.main import main
from eqprop.models import EquilibriumLM, ModelConfig
from eqprop.models.standard import StandardLM

TINY = dict(d_model=16, n_heads=2, d_ff=32, seq_len=8, batch_size=2, repeats=1, warmup=0,
            device="cpu")


def test_standard_baseline_has_the_same_parameters_and_is_one_pass():
    cfg = ModelConfig(vocab_size=11, d_model=16, n_heads=2, d_ff=32, n_layers=2, seq_len=8)
    eq, std = EquilibriumLM(cfg), StandardLM(cfg)
    assert [(n, p.shape) for n, p in eq.named_parameters()] == \
        [(n, p.shape) for n, p in std.named_parameters()]
    std.load_state_dict(eq.state_dict())
    tokens = torch.randint(0, 11, (2, 8))
    h = std.embed(tokens)
    for blk in std.blocks:
        h = h + blk(h)
    torch.testing.assert_close(std(tokens), std.logits(h.unsqueeze(1)))


def test_bench_train_step_reports_every_kind():
    rows = bench_train_step(TrainBenchConfig(**TINY))
    assert [r["kind"] for r in rows] == ["asymep", "ift", "bptt", "standard"]
    for r in rows:
        assert r["step"] > 0 and r["tokens_per_s"] > 0 and r["nfe"] >= 3
    # B·T·L tokens × (QKVO 8D² + FFN 4·D·d_ff + causal attention 2·T·D) matmul FLOPs
    assert flops_per_eval(TrainBenchConfig(**TINY)) == 2 * 8 * 2 * (
        8 * 16 * 16 + 4 * 16 * 32 + 2 * 8 * 16)


def test_bench_train_cli_runs_and_rejects_bad_precision(capsys):
    args = ["bench", "train", "--train.d-model", "16", "--train.n-heads", "2", "--train.d-ff",
            "32", "--train.seq-len", "8", "--train.batch-size", "2", "--train.repeats", "1",
            "--train.warmup", "0", "--train.device", "cpu"]
    assert main(args) == 0
    assert "| asymep |" in capsys.readouterr().out
    assert main(args + ["--train.precision", "fp8"]) == 2


def test_bench_relax_loop_rows_on_cpu():
    rows = bench_relax_loop(TrainBenchConfig(**TINY), steps=4, chunk=2)
    # the CUDA-graph variant is skipped on CPU
    assert [(r["solver"], r["variant"]) for r in rows] == [
        (s, v) for s in ("euler", "adaptive", "anderson")
        for v in ("host check every step", "check every 2")]
    for r in rows:
        assert r["call_ms"] > 0 and r["kernel_ms"] > 0
