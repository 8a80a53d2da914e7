"""Data-parallel training (torchrun, gloo on CPU): gradients, metrics, NaN skip, resume, CLI.

One ``torch.multiprocessing.spawn`` of 2 gloo ranks runs every in-process scenario
(a module fixture, so the ~5 s start is paid once); the tests compare its results
with one process on the concatenated batch.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from eqprop.data import DataConfig
from eqprop.diagnostics.tracking import StabilityTracking
from eqprop.models import ModelConfig
from eqprop.regularizers import RegularizerConfig
from eqprop.train import (
    DistContext,
    EvalConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    Trainer,
    init_distributed,
    train,
)
from eqprop.train.checkpoint import load_checkpoint
from eqprop.train.config import GuardConfig
from eqprop.train.distributed import rank_seed
from eqprop.train.guard import WallGuard
from eqprop.train.metrics import read_metrics
from tests.helpers import without_clock, write_text

ESTIMATORS = ("asymep", "ep", "ift", "bptt", "holoep")
WORLD, B = 2, 3  # ranks, sequences per rank


def tiny(text_file: str, out_dir, *, estimator: str = "asymep", **run) -> TrainConfig:
    cfg = TrainConfig(
        model=ModelConfig(d_model=8, n_heads=2, d_ff=16, n_layers=1, seq_len=8),
        schedule=ScheduleConfig(steps=6, warmup=2),
        data=DataConfig(path=text_file, batch_size=B),
        eval=EvalConfig(every=3, batches=1, batch_size=2),
        run=RunConfig(**{"out_dir": str(out_dir), "device": "cpu", "threads": 1,
                         "progress": False, "ckpt_every": 3, "sample_tokens": 5, **run}),
        tracking=StabilityTracking(every=0),
    )
    return replace(cfg, estimator=replace(cfg.estimator, name=estimator, bptt_steps=5,
                                          ift_tol=1e-12))


def one_step(trainer: Trainer, tokens, targets) -> dict:
    """One float64 train_step; the gradients the optimizer would apply, and the record."""
    trainer.model.double()
    grads: dict[str, torch.Tensor] = {}

    def capture(*args, **kwargs):  # replaces AdamW.step: keep the averaged, clipped grads
        grads.update({n: p.grad.detach().clone()
                      for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer.optimizer.step = capture
    record = trainer.train_step(tokens, targets)
    return {"grads": grads, "record": record}


def global_batch(trainer: Trainer):
    gen = torch.Generator().manual_seed(7)
    return trainer.corpus.get_batch("train", WORLD * B, trainer.cfg.model.seq_len, gen)


# -- the spawned ranks -----------------------------------------------------------------------

def _gradients(rank: int, text_file: str, out: Path) -> dict:
    res = {}
    for name in ESTIMATORS:
        trainer = Trainer(tiny(text_file, out / "grad", estimator=name))
        tokens, targets = global_batch(trainer)
        part = slice(rank * B, (rank + 1) * B)  # this rank's shard of the global batch
        res[name] = one_step(trainer, tokens[part], targets[part])
    return res


def _nonfinite(rank: int, text_file: str, out: Path) -> dict:
    calls: list[int] = []

    def nan_on_rank1_at_2(field, z_star, sol):  # NaN penalty value, finite gradients
        calls.append(1)
        bad = rank == 1 and len(calls) == 2
        return torch.tensor(float("nan") if bad else 0.0)

    trainer = Trainer(tiny(text_file, out / "nan"), penalty=nan_on_rank1_at_2)
    skipped, batches = [], []
    for _ in range(3):
        tokens, targets = trainer.corpus.get_batch("train", B, 8, trainer.data_gen)
        batches.append(tokens)
        skipped.append(bool(trainer.train_step(tokens, targets).get("skipped")))
    weights = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    return {"skipped": skipped, "weights": weights, "batches": batches}


def _guard_skip(rank: int, ctx) -> list[bool]:
    """A tripped ``skip`` guard (threshold 50 %): rank 1's own batch fails 3 of 4, the
    global batch 3 of 8. Returns [decision on the global counts, on the rank's own]."""
    guard = WallGuard(GuardConfig(policy="skip", threshold=0.5))
    guard.tripped = True
    own = {"converged": 4, "cycling": 0} if rank == 0 else {"converged": 1, "cycling": 3}
    return [guard.allow_update(ctx.sum_counts(own)), guard.allow_update(own)]


def _resume(rank: int, text_file: str, out: Path) -> None:
    def cfg_in(name: str) -> TrainConfig:
        c = tiny(text_file, out / "resume", name=name, ckpt_every=2,
                 sample_tokens=0)
        return replace(c, regularizer=RegularizerConfig(name="jacreg", weight=0.1, adaptive=True),
                       tracking=StabilityTracking(every=2, samples=1, method="dense"),
                       schedule=ScheduleConfig(steps=4, warmup=1), eval=replace(c.eval, every=0))

    def interrupt(model, field, z_star, step):  # on every rank at the same step
        if step == 3:
            raise KeyboardInterrupt
        return {}

    train(cfg_in("full"))
    try:
        train(cfg_in("cut"), trackers=[interrupt])
    except KeyboardInterrupt:
        pass
    train(cfg_in("cut"), resume=out / "resume" / "cut")


def _worker(rank: int, port: int, text_file: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")  # kept open across the scenarios' trainers
    try:
        results = {"gradients": _gradients(rank, text_file, Path(out)),
                   "nonfinite": _nonfinite(rank, text_file, Path(out)),
                   "guard_skip": _guard_skip(rank, ctx)}
        _resume(rank, text_file, Path(out))
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        ctx.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """One text file for the module (the child processes read it)."""
    return write_text(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, text_file):
    """Run every scenario on 2 gloo ranks; returns (out folder, [rank 0, rank 1] results)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), text_file, str(out)), nprocs=WORLD, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# -- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ESTIMATORS)
def test_gradient_equals_one_process_on_the_concatenated_batch(ddp, tmp_path, text_file, name):
    _, ranks = ddp
    single = Trainer(tiny(text_file, tmp_path, estimator=name))
    tokens, targets = global_batch(single)
    ref = one_step(single, tokens, targets)
    half = one_step(Trainer(tiny(text_file, tmp_path, estimator=name)), tokens[:B], targets[:B])
    got = ranks[0]["gradients"][name]
    assert set(got["grads"]) == set(ref["grads"])
    for k, g in ref["grads"].items():
        assert torch.equal(got["grads"][k], ranks[1]["gradients"][name]["grads"][k]), k
        assert (got["grads"][k] - g).abs().max() <= 1e-6 * max(1.0, g.abs().max()), k
    # not vacuous: rank 0's shard alone gives another gradient
    assert max((half["grads"][k] - g).abs().max() for k, g in ref["grads"].items()) > 1e-3
    r, s = got["record"], ref["record"]
    assert r["train_ce"] == pytest.approx(s["train_ce"], abs=1e-9)
    assert r["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-9)
    assert r["status"] == s["status"] and sum(r["status"].values()) == WORLD * B
    assert r["res_max"] == pytest.approx(s["res_max"], rel=1e-9)
    assert r["nfe"] == pytest.approx(s["nfe"], rel=1e-6)  # float32 means


def test_nonfinite_on_one_rank_skips_on_every_rank(ddp):
    _, ranks = ddp
    assert ranks[0]["nonfinite"]["skipped"] == ranks[1]["nonfinite"]["skipped"] == [
        False, True, False]
    assert torch.equal(ranks[0]["nonfinite"]["weights"], ranks[1]["nonfinite"]["weights"])
    # each rank drew its own batches
    assert not torch.equal(ranks[0]["nonfinite"]["batches"][0], ranks[1]["nonfinite"]["batches"][0])


def test_skip_guard_judges_the_global_batch(ddp):
    _, ranks = ddp
    # 3/8 failed globally < 50 %: every rank applies the update, although rank 1's own
    # batch (3/4 failed) would have been skipped
    assert [r["guard_skip"] for r in ranks] == [[True, True], [True, False]]


def test_resume_under_two_ranks_continues_exactly(ddp):
    out, _ = ddp
    full, cut = out / "resume" / "full", out / "resume" / "cut"
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(cut / "metrics.jsonl")
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    assert all(sum(r["status"].values()) == WORLD * B for r in a)
    assert len({r["reg_weight"] for r in a}) > 1  # the adaptive weight moved (same on all ranks)
    assert without_clock(a) == without_clock(b)
    wa, wb = load_checkpoint(full).weights, load_checkpoint(cut).weights
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(load_checkpoint(cut).state["rng"]["ranks"]) == WORLD


def test_one_process_context_is_a_no_op():
    ctx = DistContext()
    assert not ctx.active and ctx.is_main and ctx.device is None
    record = {"train_ce": 1.5, "status": {"converged": 3}, "res_max": 0.1}
    assert ctx.reduce_record(dict(record)) == record
    assert ctx.all_true(True) and not ctx.all_true(False)
    assert ctx.mean(2.0) == 2.0 and ctx.min(3.0) == 3.0 and math.isnan(ctx.min(math.nan))
    assert ctx.on_main(lambda: 7) == 7
    assert rank_seed(5, 0) == 5 and len({rank_seed(5, r) for r in range(8)}) == 8


def test_torchrun_cli_writes_one_run_with_rank0_artifacts(tmp_path, text_file):
    """``torchrun --nproc_per_node=2 -m eqprop train``: one run directory, one summary."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "eqprop", "train", "--data", text_file, "--model.d-model", "8",
           "--model.n-heads", "2", "--model.d-ff", "16", "--model.n-layers", "1",
           "--model.seq-len", "8", "--schedule.steps", "4", "--schedule.warmup", "1",
           "--data.batch-size", str(B), "--eval.every", "2", "--eval.batches", "1",
           "--eval.batch-size", "2", "--run.out-dir", str(tmp_path / "runs"),
           "--run.device", "cpu", "--run.ckpt-every", "2", "--run.sample-tokens", "5",
           "--tracking.every", "0", "--run.no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()  # rank 1 made no directory of its own
    assert p.stdout.count("train CE") == 1  # only rank 0 prints the summary
    for name in ("config.yaml", "metrics.jsonl", "samples.txt", "summary.json"):
        assert (run / name).is_file(), name
    assert sorted(x.name for x in (run / "checkpoints").iterdir()) == [
        "latest.json", "step_0000004.pt", "step_0000004.safetensors"]
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # one line per step, not per rank
    assert all(sum(r["status"].values()) == WORLD * B for r in records)
    assert p.stdout.count("eqprop train") == 0 and p.stderr.count("run directory") == 0
