"""Training steps under bf16 autocast timed by CPU time of this thread (``time.thread_time``),
steadier than wall time on a machine other jobs share: ours against the torch.nn twin (both
under autocast), and ours bf16 against ours float32, alternating, median of ``--pairs`` pairs.

    python benchmarks/amp_thread_time.py --threads 1 --pairs 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import MODELS, training_parts  # noqa: E402
from bench_amp import amp_step  # noqa: E402


def cpu_ms(step) -> float:
    t = time.thread_time()
    step()
    return (time.thread_time() - t) * 1e3


def pair(a, b, pairs: int) -> tuple[float, float, float]:
    a(), b(), a(), b()
    ta, tb = [], []
    for i in range(pairs):
        for times, fn in ((ta, a), (tb, b)) if i % 2 == 0 else ((tb, b), (ta, a)):
            times.append(cpu_ms(fn))
    return statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pairs", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"thread CPU ms per step, {args.threads} thread(s), median of {args.pairs} alternating pairs")
    for name in MODELS:
        model, opt, twin, topt, x, y, _ = training_parts(name, cpu)
        ours, theirs, full = amp_step(model, opt, x, y, cpu), amp_step(twin, topt, x, y, cpu), \
            amp_step(model, opt, x, y, cpu, dtype=None)
        a, b, r = pair(ours, theirs, args.pairs)
        print(f"  {name:<16} bf16 ours {a:8.1f}  twin {b:8.1f}  ours/twin {r:5.2f}", end="", flush=True)
        a, b, r = pair(ours, full, args.pairs)
        print(f"   | ours f32 {b:8.1f}  bf16/f32 {r:5.2f}", flush=True)


if __name__ == "__main__":
    main()
