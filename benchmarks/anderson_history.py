"""Wall time of one Anderson step: the cat-based history it replaced vs the in-place ring buffer.

    python benchmarks/anderson_history.py [--m 5 10 20] [--batch 64] [--dim 16384]
        [--device cuda] [--dtype float32] [--repeats 20] [--warmup 5] [--graph]

Times what the relaxation loop does per step, ``state.where(go, solver.step(F, state))``
(``advance`` in solvers/loop.py), with a cheap elementwise field (a rotating linear field,
one pass over the state; timed alone in the ``F`` column) at the study size (B 64,
N = 128·128, fp32: one history is 84 MB at m = 20). ``old`` is the previous
implementation (``ΔZ``, ``ΔR`` rebuilt by ``torch.cat`` and ``torch.where`` every step,
the Gram matrix recomputed, every aux tensor selected by ``SolverState.where``), kept
here verbatim in its formulas; ``new`` is :class:`eqprop.solvers.Anderson`. ``passes``
is the step's time in units of one read of one history (half the time of copying one
history into a preallocated one): the history traffic the step costs, plus its state-sized
work (F, ``z + dz``, the masks), which weighs more at small m. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from eqprop.solvers import Anderson
from eqprop.solvers.base import Solver, SolverState, bcast, sample_norm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is no package
from study_step import median_ms  # noqa: E402


class OldAnderson(Anderson):
    """The previous implementation (newest column first, histories rebuilt every step)."""

    def init(self, F, z0: Tensor) -> SolverState:
        state = Solver.init(self, F, z0)
        B, N, dev = z0.shape[0], z0[0].numel(), z0.device
        hist = torch.zeros(B, self.m, N, dtype=z0.dtype, device=dev)
        aux = {"dZ": hist, "dR": hist.clone(),
               "count": torch.zeros(B, dtype=torch.long, device=dev),
               "restarts": torch.zeros(B, dtype=torch.long, device=dev)}
        eps = torch.full((B,), float(self.eps), dtype=z0.real.dtype, device=dev)
        return replace(state, eps=eps, aux=aux)

    def _old_mix(self, r: Tensor, dZ: Tensor, dR: Tensor, count: Tensor) -> Tensor:
        with torch.autocast(r.device.type, enabled=False):
            B, m, _ = dR.shape
            valid = torch.arange(m, device=r.device)[None, :] < count[:, None]  # (B, m)
            pair = valid[:, :, None] & valid[:, None, :]  # (B, m, m)
            H = torch.einsum("bin,bjn->bij", dR.conj(), dR)  # (B, m, m)
            scale = torch.diagonal(H, dim1=1, dim2=2).real.sum(1) / count.clamp_min(1)
            eye = torch.eye(m, dtype=H.dtype, device=H.device)
            ridge = (self.lam * scale).clamp_min(torch.finfo(scale.dtype).tiny)
            H = torch.where(pair, H, torch.zeros((), dtype=H.dtype, device=H.device))
            H = H + eye * torch.where(valid, ridge[:, None], 1.0).to(H.dtype)[:, None, :]
            rhs = torch.einsum("bin,bn->bi", dR.conj(), r) * valid  # (B, m)
            gamma = torch.linalg.solve_ex(H, rhs.unsqueeze(-1))[0].squeeze(-1)
        gamma = torch.nan_to_num(gamma) * valid
        return self.beta * r - torch.einsum("bi,bin->bn", gamma.to(dZ.dtype),
                                            dZ + self.beta * dR)

    def step(self, F, state: SolverState) -> SolverState:
        z, f, aux = state.z, state.f, state.aux
        r = (bcast(state.eps, z) * f).reshape(z.shape[0], -1)  # (B, N)
        count = aux["count"]
        dz = self._old_mix(r, aux["dZ"], aux["dR"], count)
        z_new = z + dz.reshape(z.shape)
        f_new = F(z_new)
        f0, f1 = sample_norm(f), sample_norm(f_new)
        ok = (count == 0) | (torch.isfinite(f1) & (f1 <= self.restart_growth * f0))
        r_new = (bcast(state.eps, z) * f_new).reshape(z.shape[0], -1)
        dZ = torch.cat([dz[:, None], aux["dZ"][:, :-1]], 1)  # (B, m, N)
        dR = torch.cat([(r_new - r)[:, None], aux["dR"][:, :-1]], 1)
        keep = ok[:, None, None]
        new_aux = {"dZ": torch.where(keep, dZ, torch.zeros_like(dZ)),
                   "dR": torch.where(keep, dR, torch.zeros_like(dR)),
                   "count": torch.where(ok, (count + 1).clamp_max(self.m),
                                        torch.zeros_like(count)),
                   "restarts": aux["restarts"] + ~ok}
        k = bcast(ok, z)
        return SolverState(z=torch.where(k, z_new, z), f=torch.where(k, f_new, f),
                           nfe=self.charge(state, F), eps=state.eps, aux=new_aux)


class Rotating:
    """``F(z) = A z + c`` with 2×2 blocks ``a ± ib`` (``Re μ`` in [-1, -0.01], ``|Im μ| ≤ 3``):
    elementwise, so that F costs about one pass over the state."""

    def __init__(self, B: int, N: int, dtype: torch.dtype, device: str):
        g = torch.Generator().manual_seed(0)
        K = N // 2
        self.a = (-torch.logspace(-2, 0, K, dtype=torch.float64)).to(dtype).to(device)
        self.b = (3 * torch.rand(K, generator=g, dtype=torch.float64)).to(dtype).to(device)
        self.c = torch.randn(B, 2 * K, generator=g, dtype=torch.float64).to(dtype).to(device)

    def __call__(self, z: Tensor) -> Tensor:
        x, y = z[:, 0::2], z[:, 1::2]
        out = torch.stack([self.a * x - self.b * y, self.b * x + self.a * y], -1)  # (B, K, 2)
        return out.flatten(1) + self.c


def time_solver(solver: Anderson, F, z0: Tensor, go: Tensor, device: str, repeats: int,
                warmup: int) -> float:
    """Median time of one loop step (step + ``SolverState.where``) with a full history."""
    box = [solver.init(F, z0)]

    def one() -> None:
        box[0] = box[0].where(go, solver.step(F, box[0]))

    for _ in range(solver.m):  # fill the history (steady state: count = m)
        one()
    return median_ms(one, device, repeats, warmup)


def time_graph(solver: Anderson, F, z0: Tensor, go: Tensor, device: str, repeats: int,
               warmup: int, k: int = 8) -> float:
    """As :func:`time_solver`, with ``k`` loop steps recorded as one CUDA graph and replayed
    (what a relaxation does): the launches cost nothing, the kernels' work remains."""
    box = [solver.init(F, z0)]

    def one() -> None:
        box[0] = box[0].where(go, solver.step(F, box[0]))

    for _ in range(solver.m):
        one()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture (lazy initialisations)
        for _ in range(3):
            one()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(k):
            one()
    return median_ms(graph.replay, device, repeats, warmup) / k


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, nargs="+", default=[5, 10, 20], help="history sizes")
    p.add_argument("--batch", type=int, default=64, help="B")
    p.add_argument("--dim", type=int, default=16384, help="N, the state size per sample")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=20, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--graph", action="store_true",
                   help="also time the steps replayed as a CUDA graph (CUDA only)")
    args = p.parse_args()
    if args.graph and not args.device.startswith("cuda"):
        p.error(f"--graph needs a CUDA --device, not {args.device!r}")
    dtype, dev = getattr(torch, args.dtype), args.device
    B, N = args.batch, args.dim
    F = Rotating(B, N, dtype, dev)
    z0 = torch.zeros(B, N, dtype=dtype, device=dev)
    go = torch.ones(B, dtype=torch.bool, device=dev)
    rows = []
    with torch.no_grad():
        t_f = median_ms(lambda: F(z0), dev, args.repeats, args.warmup)
        for m in args.m:
            hist = torch.randn(B, m, N, dtype=dtype, device=dev)
            dst = torch.empty_like(hist)  # preallocated: a copy is one read and one write
            t_read = 0.5 * median_ms(lambda h=hist, d=dst: d.copy_(h), dev, args.repeats,
                                     args.warmup)
            t_old = time_solver(OldAnderson(m=m), F, z0, go, dev, args.repeats, args.warmup)
            t_new = time_solver(Anderson(m=m), F, z0, go, dev, args.repeats, args.warmup)
            mb = hist.numel() * hist.element_size() / 1e6
            row = (f"| {m} | {mb:.0f} | {t_f:.2f} | {t_old:.2f} | {t_new:.2f} | "
                   f"{t_old / t_new:.1f}× | {t_old / t_read:.1f} | {t_new / t_read:.1f} |")
            if args.graph:
                g_old = time_graph(OldAnderson(m=m), F, z0, go, dev, args.repeats, args.warmup)
                g_new = time_graph(Anderson(m=m), F, z0, go, dev, args.repeats, args.warmup)
                row += f" {g_old:.3f} | {g_new:.3f} | {g_old / g_new:.1f}× |"
            rows.append(row)
            del hist, dst
    print(f"Anderson step + SolverState.where, B {B}, N {N}, {args.dtype}, on {device_name(dev)}, "
          f"torch {torch.__version__}")
    print(f"command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`\n")
    graph = " old, graph (ms) | new, graph (ms) | speed-up, graph |" if args.graph else ""
    print("| m | one history (MB) | F (ms) | old (ms) | new (ms) | speed-up | old passes "
          "| new passes |" + graph)
    print("|---|---|---|---|---|---|---|---|" + "---|" * (3 if args.graph else 0))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
