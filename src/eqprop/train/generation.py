"""Autoregressive generation through the equilibrium, warm-started from the prefix's.

Attention is causal, so appending a token does not move the earlier positions'
equilibrium (asym block): the new state is the prefix's ``z*`` with the new
position initialised from its input drive, and the relaxation only has to
settle that position. When the context outgrows ``seq_len`` it is cropped to
the last ``seq_len`` tokens; positions then shift, so the shifted ``z*`` is only
an approximate warm start. The feed-forward baseline
(:class:`~eqprop.models.StandardLM`) has no equilibrium: its logits come from one
forward pass over the context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data import Vocab
from ..errors import ConfigError, DataError
from ..models import EquilibriumLM, StandardLM
from ..solvers import Solution, Solver
from ..solvers.relaxation import Relaxation
from ..solvers.status import Status

__all__ = ["Generation", "generate"]


@dataclass
class Generation:
    """Generated text and what each relaxation cost.

    Attributes:
        text: the generated characters (without the prompt).
        nfe: NFE of the relaxation that produced each new character (empty for the
            feed-forward baseline).
        status: status counts over those relaxations (all zero for the baseline).
        stopped: why generation ended before ``tokens`` characters (a relaxation whose
            logits are NaN/Inf: nothing can be sampled from them), else None.
    """

    text: str
    nfe: list[int]
    status: dict[str, int]
    stopped: str | None = None

    @property
    def mean_nfe(self) -> float:
        """Mean NFE per generated character (0 without relaxations)."""
        return sum(self.nfe) / max(1, len(self.nfe))


def _next_token(logits: Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> Tensor:
    """Sample from ``logits (V,)``; temperature 0 is greedy. Returns a ``(1,)`` long tensor."""
    if temperature == 0:
        return logits.argmax().view(1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.double().cpu(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)


def _generate_forward(model: StandardLM, vocab: Vocab, ctx: Tensor, tokens: int,
                      temperature: float, top_k: int | None, generator: torch.Generator | None,
                      on_text: Callable[[str], None] | None) -> Generation:
    """Generation by the feed-forward baseline: one forward pass per character."""
    T, out, stopped = model.cfg.seq_len, [], None
    for i in range(tokens):
        logits = model(ctx[:, -T:])[0, -1]  # (V,)
        if not bool(torch.isfinite(logits).all()):
            stopped = f"the forward pass of character {i + 1} gave non-finite logits"
            break
        nxt = _next_token(logits, temperature, top_k, generator)  # (1,)
        out.append(int(nxt))
        if on_text is not None:
            on_text(vocab.decode(nxt.cpu()))
        ctx = torch.cat([ctx, nxt[None]], dim=1)
    return Generation(text=vocab.decode(torch.tensor(out, dtype=torch.long)), nfe=[],
                      status={s.label: 0 for s in Status}, stopped=stopped)


@torch.no_grad()
def generate(model: EquilibriumLM, vocab: Vocab, prompt: str, tokens: int, *,
             solver: Solver | None = None, tol: float = 1e-4, max_steps: int = 100,
             temperature: float = 1.0, top_k: int | None = None, warm_start: bool = True,
             generator: torch.Generator | None = None,
             on_text: Callable[[str], None] | None = None) -> Generation:
    """Generate ``tokens`` characters after ``prompt``.

    :meth:`eqprop.train.LoadedRun.generate` calls this with the run's own solver.

    Args:
        model: a trained model (an :class:`EquilibriumLM`, or the feed-forward
            :class:`StandardLM`, which needs no solver).
        vocab: its vocabulary.
        prompt: the text to continue (at least one character of the vocabulary).
        tokens: number of characters to generate.
        solver: relaxation solver (usually the run's free-phase solver); required for
            an equilibrium model.
        tol: relaxation tolerance.
        max_steps: relaxation step budget.
        temperature: softmax temperature; 0 picks the most likely character.
        top_k: sample among the k most likely characters only.
        warm_start: start each relaxation from the previous equilibrium (else from
            the input drive, for comparison).
        generator: CPU random generator for reproducible samples.
        on_text: called with each new character as soon as it is chosen (streaming).

    Returns:
        A :class:`Generation`; shorter than ``tokens`` (with ``stopped`` saying why)
        when a relaxation yields non-finite logits.

    Raises:
        DataError: an empty prompt or one with characters outside the vocabulary.
        ConfigError: no solver for an equilibrium model.
    """
    if not prompt:
        raise DataError("the prompt is empty: give at least one character")
    if temperature < 0:
        raise DataError(f"temperature={temperature}: must be ≥ 0")
    device = next(model.parameters()).device
    T = model.cfg.seq_len
    ctx = vocab.encode(prompt, what="the prompt")[-T:].to(device)[None]  # (1, t)
    if isinstance(model, StandardLM):
        return _generate_forward(model, vocab, ctx, tokens, temperature, top_k, generator,
                                 on_text)
    if solver is None:
        raise ConfigError("generate() needs solver= for an equilibrium model (or use "
                          "load_run(...).generate(...), which takes the run's solver)")
    out: list[int] = []
    nfe: list[int] = []
    status = {s.label: 0 for s in Status}
    stopped = None
    # one relaxation for every character (no CUDA graphs: the context grows by one a call)
    relaxation = Relaxation(solver, tol=tol, max_steps=max_steps)
    field = model.field(ctx)
    sol: Solution = relaxation.run(field, field.initial_state())
    for i in range(tokens):
        nfe.append(int(sol.nfe[0]))
        status[Status(int(sol.status[0])).label] += 1
        logits = model.logits(sol.z)[0, -1]  # (V,)
        if not bool(torch.isfinite(logits).all()):
            stopped = (f"the relaxation of character {i + 1} gave non-finite logits (status "
                       f"{Status(int(sol.status[0])).label}): generation stopped")
            break
        nxt = _next_token(logits, temperature, top_k, generator)  # (1,)
        out.append(int(nxt))
        if on_text is not None:
            on_text(vocab.decode(nxt.cpu()))
        if i == tokens - 1:
            break
        z_prev = sol.z  # (1, L, t, D)
        ctx = torch.cat([ctx, nxt[None]], dim=1)
        if ctx.shape[1] > T:  # crop: the oldest position leaves the window
            ctx, z_prev = ctx[:, -T:], z_prev[:, :, 1:]
        field = model.field(ctx)
        z0 = field.initial_state()  # (1, L, t+1, D): every layer at the drive
        if warm_start:
            z0 = torch.cat([z_prev, z0[:, :, -1:]], dim=2)
        sol = relaxation.run(field, z0)
    return Generation(text=vocab.decode(torch.tensor(out, dtype=torch.long)), nfe=nfe,
                      status=status, stopped=stopped)
