"""The cost of a call: every public op on tiny inputs against ``torch.nn.functional``'s twin.

    python benchmarks/calls.py                 # 1 thread, then torch's default thread count
    python benchmarks/calls.py --threads 1 --quick
    python benchmarks/calls.py --threads 1 --clock thread   # CPU time: steadier on a loaded machine
    customnn bench --only calls

On inputs this small (a 2x3x6x6 image, a 4x8 matrix) the arithmetic is nothing and a call
costs what its Python entry and PyTorch's dispatcher cost: argument checks, geometry, path
choices, any host synchronisation, ``autograd.Function.apply``. A small model's training step,
and every token generated with a KV cache, pays that dozens of times. For each op three
timings, ours and F's alternating in one process (median of ``reps`` samples, each a loop of
calls lasting about ``sample_s``):

- ``fwd``: the forward on inputs that require grad (what a training step meets);
- ``fwd+bwd``: that forward, then ``backward`` with a fixed upstream gradient;
- ``no_grad``: the forward under ``torch.no_grad()`` (what evaluation and generation meet).

``rope`` has no F twin: its twin is the rotation written in plain tensor operations
(``x * cos + rotate_half(x) * sin``), as a user would write it.

``bench_calls(threads, quick) -> list[dict]`` is importable (``benchmarks/bench.py`` uses it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(REPO))

from customnn import ops  # noqa: E402

TARGET = 2.0  # issue 25: each op's call at most about 2x F's


def _rope_plain(x, cos, sin):
    """The rotation in plain tensor operations, halves convention (no F twin exists)."""
    h = x.shape[-1] // 2
    c, s = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    rotated = torch.cat((-x[..., h:], x[..., :h]), -1)
    return x * c + rotated * s


def cases(g: torch.Generator) -> list[tuple[str, str, Callable, Callable, list, list]]:
    """(name, size, ours, F's, float inputs that take a gradient, other arguments)."""
    def r(*shape):
        return torch.randn(*shape, generator=g)

    idx = torch.randint(0, 10, (4, 8), generator=g)
    tgt = torch.randint(0, 10, (4,), generator=g)
    rm_a, rv_a, rm_b, rv_b = torch.zeros(3), torch.ones(3), torch.zeros(3), torch.ones(3)
    cos, sin = ops.rope_tables(8, 8)
    return [
        ("conv2d", "2x3x6x6 * 4x3x3x3", ops.conv2d, F.conv2d, [r(2, 3, 6, 6), r(4, 3, 3, 3), r(4)], []),
        ("conv2d padding=1", "2x3x6x6 * 4x3x3x3", lambda x, w, b: ops.conv2d(x, w, b, padding=1),
         lambda x, w, b: F.conv2d(x, w, b, padding=1), [r(2, 3, 6, 6), r(4, 3, 3, 3), r(4)], []),
        ("pad2d", "2x3x6x6", lambda x: ops.pad2d(x, (1, 1, 1, 1)), lambda x: F.pad(x, (1, 1, 1, 1)),
         [r(2, 3, 6, 6)], []),
        ("max_pool2d", "2x3x6x6, 2", lambda x: ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2),
         [r(2, 3, 6, 6)], []),
        ("avg_pool2d", "2x3x6x6, 2", lambda x: ops.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2),
         [r(2, 3, 6, 6)], []),
        ("relu", "2x3x6x6", ops.relu, F.relu, [r(2, 3, 6, 6)], []),
        ("gelu", "4x8", ops.gelu, F.gelu, [r(4, 8)], []),
        ("gelu tanh", "4x8", lambda x: ops.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh"), [r(4, 8)], []),
        ("silu", "4x8", ops.silu, F.silu, [r(4, 8)], []),
        ("flatten", "2x3x6x6", ops.flatten, lambda x: x.flatten(1), [r(2, 3, 6, 6)], []),
        ("linear", "4x8 @ 8x16", ops.linear, lambda x, w, b: F.linear(x, w.T, b), [r(4, 8), r(8, 16), r(16)], []),
        ("embedding", "10x8[4x8]", lambda w, i: ops.embedding(i, w), lambda w, i: F.embedding(i, w),
         [r(10, 8)], [idx]),
        ("softmax", "4x8", ops.softmax, lambda x: F.softmax(x, -1), [r(4, 8)], []),
        ("log_softmax", "4x8", ops.log_softmax, lambda x: F.log_softmax(x, -1), [r(4, 8)], []),
        ("cross_entropy", "4x10", ops.cross_entropy, F.cross_entropy, [r(4, 10)], [tgt]),
        ("layer_norm", "4x8", ops.layer_norm, lambda x, w, b: F.layer_norm(x, (8,), w, b),
         [r(4, 8), r(8), r(8)], []),
        ("rms_norm", "4x8", ops.rms_norm, lambda x, w: F.rms_norm(x, (8,), w), [r(4, 8), r(8)], []),
        ("batch_norm train", "4x3x2x2", lambda x, w, b: ops.batch_norm(x, w, b, rm_a, rv_a, True),
         lambda x, w, b: F.batch_norm(x, rm_b, rv_b, w, b, True), [r(4, 3, 2, 2), r(3), r(3)], []),
        ("dropout", "4x8, p=0.1", lambda x: ops.dropout(x, 0.1, True), lambda x: F.dropout(x, 0.1, True),
         [r(4, 8)], []),
        ("attention causal", "1x2x8x4", ops.attention,
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
         [r(1, 2, 8, 4), r(1, 2, 8, 4), r(1, 2, 8, 4)], []),
        ("rope", "1x2x8x8", lambda x: ops.rope(x, cos, sin), lambda x: _rope_plain(x, cos, sin),
         [r(1, 2, 8, 8)], []),
    ]


# Clocks: "wall" (time.perf_counter_ns) is what a user waits; "thread" (time.thread_time_ns, the
# CPU time of this thread) leaves out the time spent waiting for a core, so it is the steadier one
# on a loaded machine, at 1 thread only (a second OpenMP thread's work is not this thread's time,
# and some VMs account thread time in ticks of several ms, which a short sample cannot resolve).
CLOCKS = {"wall": time.perf_counter_ns, "thread": time.thread_time_ns}


def _loop(fn: Callable[[], object], calls: int, clock=time.perf_counter_ns) -> float:
    start = clock()
    for _ in range(calls):
        fn()
    return (clock() - start) / calls / 1e3  # us per call


def _modes(fn, inputs, extra, dout):
    """fwd, fwd+bwd and no-grad forward of fn on its own inputs, as functions of no arguments."""
    args = [*inputs, *extra]

    def fwd():
        return fn(*args)

    def fwd_bwd():
        for t in inputs:
            t.grad = None
        fn(*args).backward(dout)

    def no_grad():
        with torch.no_grad():
            return fn(*args)

    return dict(fwd=fwd, fwd_bwd=fwd_bwd, no_grad=no_grad)


def bench_calls(threads: int | None = None, quick: bool = False, names=None, clock: str = "wall") -> list[dict]:
    """Microseconds per call of each op and its twin in each mode, and the ratios (median over
    alternating pairs of samples); ``clock`` names one of ``CLOCKS``."""
    tick = CLOCKS[clock]
    reps, sample_s = (5, 0.005) if quick else (9, 0.02)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    try:
        for name, size, ours, theirs, inputs, extra in cases(g):
            if names and name not in names:
                continue
            a = [t.clone().requires_grad_(True) for t in inputs]
            b = [t.clone().requires_grad_(True) for t in inputs]
            out = ours(*a, *extra)
            dout = torch.randn(out.shape, generator=g)
            mine, twin = _modes(ours, a, extra, dout), _modes(theirs, b, extra, dout)
            row = dict(group="calls", name=name, size=size, threads=torch.get_num_threads())
            for mode in ("fwd", "fwd_bwd", "no_grad"):
                for fn in (mine[mode], twin[mode]):  # warm up
                    fn(), fn()
                one = max(_loop(mine[mode], 3), _loop(twin[mode], 3), 1.0)  # wall: a first guess
                calls = max(3, int(sample_s * 1e6 / one))
                t_ours, t_theirs = [], []
                for i in range(reps):
                    pair = [(t_ours, mine[mode]), (t_theirs, twin[mode])]
                    for times, fn in (pair if i % 2 == 0 else pair[::-1]):
                        times.append(_loop(fn, calls, tick))
                ratios = [x / y for x, y in zip(t_ours, t_theirs)]
                row[f"{mode}_us"] = statistics.median(t_ours)
                row[f"{mode}_torch_us"] = statistics.median(t_theirs)
                row[f"{mode}_ratio"] = statistics.median(ratios)
            rows.append(row)
    finally:
        torch.set_num_threads(old)
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"  {'op':<18} {'size':<19} {'fwd us':>7} {'F us':>6} {'ratio':>5}  {'f+b us':>7} {'F us':>6} "
            f"{'ratio':>5}  {'nograd':>7} {'F us':>6} {'ratio':>5}")
    out = [head]
    for r in rows:
        cells = "  ".join(f"{r[m + '_us']:>7.1f} {r[m + '_torch_us']:>6.1f} {r[m + '_ratio']:>5.2f}"
                          for m in ("fwd", "fwd_bwd", "no_grad"))
        out.append(f"  {r['name']:<18} {r['size']:<19} {cells}")
    worst = {m: max(rows, key=lambda r: r[m + "_ratio"]) for m in ("fwd", "fwd_bwd", "no_grad")}
    out.append("  worst: " + ", ".join(f"{m} {w['name']} {w[m + '_ratio']:.2f}" for m, w in worst.items())
               + f" (target <= {TARGET:g})")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", default="1,0", help="comma-separated thread counts (0: torch's default)")
    p.add_argument("--only", default=None, help="comma-separated op names")
    p.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                   help="wall: perf_counter; thread: this thread's CPU time (steadier on a loaded machine, 1 thread)")
    args = p.parse_args(argv)
    names = set(args.only.split(",")) if args.only else None
    for n in (int(t) for t in args.threads.split(",")):
        rows = bench_calls(n or None, args.quick, names, args.clock)
        print(f"per-call cost, us (ours vs torch.nn.functional), {rows[0]['threads']} thread(s), {args.clock} clock, "
              f"torch {torch.__version__}")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
