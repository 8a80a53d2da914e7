"""What a checkpoint holds of a trainer beyond the weights, and putting it back: the
optimizer, every rank's RNG streams, the counters and the state of the guard, the update
filter, the regularizer hooks, the moving average and the stability controller."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError
from .checkpoint import Checkpoint, save_checkpoint

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["restore_trainer", "save_trainer"]


def _rng_state(tr: Trainer) -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "data": tr.data_gen.get_state()}
    if tr.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_trainer(tr: Trainer, ck: Checkpoint) -> None:
    """Put a checkpoint's optimizer, RNG streams, counters and controller states into
    ``tr`` (whose model already holds its weights)."""
    try:
        tr.optimizer.load_state_dict(ck.state["optimizer"])
        rng = tr.dist.local_rng(ck.state["rng"], tr.cfg.run.seed, ck.step)
        torch.set_rng_state(rng["torch"])
        tr.data_gen.set_state(rng["data"])
        if tr.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state_all(rng["cuda"])
        extra = ck.state.get("extra", {})
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint of {str(ck.run_dir)!r} cannot be resumed: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                              ) from None
    tr.step = ck.step
    tr.skipped = int(extra.get("skipped", 0))
    tr.elapsed = float(extra.get("elapsed", 0.0))
    tr.config_hooks.load_state_dict(extra.get("hooks", {}))
    # the guard's escalations, re-applied (open_run_dir writes config.yaml afterwards)
    tr.apply(tr.guard.load_state_dict(extra.get("guard", {})), save=False)
    tr.update_filter.load_state_dict(extra.get("update_filter", {}))
    if tr.ema is not None and "ema" in extra:
        tr.ema.load_state_dict(extra["ema"])
    if tr.stability is not None and "stability" in extra:
        tr.stability.load_state_dict(extra["stability"])


def save_trainer(tr: Trainer) -> None:
    """Save a checkpoint now (refused, and logged, if a weight is non-finite)."""
    rng = tr.dist.gather_rng(_rng_state(tr))  # every rank's streams
    if not tr.dist.is_main:
        tr.ckpt_step = tr.step
        return
    try:
        save_checkpoint(tr.run_dir, model=tr.model, optimizer=tr.optimizer,
                        step=tr.step, vocab=tr.corpus.vocab, config=tr.cfg,
                        rng=rng,
                        extra={"skipped": tr.skipped, "elapsed": tr.elapsed,
                               "hooks": tr.config_hooks.state_dict(),
                               "guard": tr.guard.state_dict(),
                               "update_filter": tr.update_filter.state_dict(),
                               "data_sha256": tr.data_sha256, **_extra_state(tr)})
        tr.ckpt_step = tr.step
    except CheckpointError as e:
        tr.metrics.append({"step": tr.step, "event": "checkpoint_refused",
                             "detail": str(e)})
        tr.say(f"warning: {e}")

def _extra_state(tr: Trainer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if tr.ema is not None:
        if not tr.ema.finite():
            raise CheckpointError("the parameters' moving average is not finite")
        out["ema"] = tr.ema.state_dict()
    if tr.stability is not None:
        out["stability"] = tr.stability.state_dict()
    return out
