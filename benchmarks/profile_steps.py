"""Profile one model training step, ours against the torch.nn twin: where does the time go?

    python benchmarks/profile_steps.py                      # every model, top 25 ops each
    python benchmarks/profile_steps.py --only "cnn default" --top 40 --shapes
    python benchmarks/profile_steps.py --time               # also: alternating CPU-time ratio

The steps are ``benchmarks/bench.py``'s (forward, loss, backward, AdamW step, zero_grad, same
weights and batch). ``torch.profiler`` records a few steps of each on one thread; the table
lists the aten operations by *self* CPU time (time in the op itself, not its children), summed
over the steps, per step. Our hand-written backwards show up as the ops they call (their
autograd node is ``<Name>Backward``); PyTorch's as its fused kernels (``native_layer_norm``,
``convolution_backward``, ...). Comparing the two lists shows which layer loses time and
whether the loss is arithmetic (a few big ops) or dispatch overhead (many small ones).

``--time`` times the two steps alternating in one process with ``time.thread_time`` (CPU time
of this thread: steadier than wall time on a machine other jobs share), median of many
pairs, and prints the ratio custom / torch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench import MODELS, training_pair  # noqa: E402


def profile_step(step, steps: int, shapes: bool):
    """Aggregated profiler events of ``steps`` calls of ``step`` (after two warm-up calls)."""
    step(), step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages(group_by_input_shape=shapes)


def table(events, steps: int, top: int, shapes: bool) -> str:
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / steps / 1e3
    lines = [f"  self CPU per step: {total:.2f} ms",
             f"  {'op':<42} {'ms/step':>8} {'calls/step':>10}" + ("  input shapes" if shapes else "")]
    for e in rows[:top]:
        line = f"  {e.key[:42]:<42} {e.self_cpu_time_total / steps / 1e3:>8.3f} {e.count / steps:>10.1f}"
        if shapes:
            line += "  " + str(e.input_shapes)[:90]
        lines.append(line)
    return "\n".join(lines)


def time_pair(ours, theirs, reps: int) -> tuple[float, float, float]:
    """Median thread CPU ms of each step and the median of the pairwise ratios."""
    for _ in range(2):
        ours(), theirs()
    t_ours, t_theirs = [], []
    for i in range(reps):
        order = [(t_ours, ours), (t_theirs, theirs)]
        for times, fn in (order if i % 2 == 0 else order[::-1]):
            start = time.thread_time()
            fn()
            times.append(time.thread_time() - start)
    ratio = statistics.median(a / b for a, b in zip(t_ours, t_theirs))
    return statistics.median(t_ours) * 1e3, statistics.median(t_theirs) * 1e3, ratio


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per model")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--shapes", action="store_true", help="group by input shapes")
    parser.add_argument("--time", action="store_true", help="alternating CPU-time comparison")
    parser.add_argument("--reps", type=int, default=40, help="pairs of steps for --time")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiler tables")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        ours, theirs, size = training_pair(name, torch.device("cpu"))
        print(f"== {name} ({size})")
        if not args.no_profile:
            for label, step in (("custom", ours), ("torch", theirs)):
                print(f" {label}:")
                print(table(profile_step(step, args.steps, args.shapes), args.steps, args.top, args.shapes))
        if args.time:
            a, b, r = time_pair(ours, theirs, args.reps)
            print(f" CPU time per step: custom {a:.2f} ms, torch {b:.2f} ms, ratio {r:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
