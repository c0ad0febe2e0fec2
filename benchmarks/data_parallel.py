"""Steps per second of data-parallel training: 2 processes of 1 thread against 1 process of 1
thread and 1 process of 2 threads, on the same global batch (GPT ``nanogpt-cpu`` with a global
batch of 24, and the default CNN with its batch of 64, with batch norm's statistics over every
process and, ``--no-sync-bn``, each process's own).

    python benchmarks/data_parallel.py                 # 3 alternating rounds, about 5 minutes on 2 cores
    python benchmarks/data_parallel.py --rounds 1 --steps 20

Each configuration trains ``--steps`` steps with ``--max-steps`` and is read back from its last
checkpoint: the engine's ``train_time`` is the time spent in training steps (rank 0's, the
gradient exchange included), without start-up, data loading or evaluation. The configurations
alternate within each round so that a machine's changing load falls on all of them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from customnn.train.checkpoint import load_checkpoint  # noqa: E402

MODELS = {
    "gpt nanogpt-cpu, batch 24": ["train", "gpt", "--preset", "nanogpt-cpu", "--batch-size", "24",
                                  "--eval-iters", "1", "--eval-interval", "100000"],
    # the same with AdamW's moments sharded across the processes (ZeRO stage 1)
    "gpt nanogpt-cpu --zero, 24": ["train", "gpt", "--preset", "nanogpt-cpu", "--batch-size", "24",
                                   "--eval-iters", "1", "--eval-interval", "100000", "--zero"],
    # the default recipe: width 32, random rotations, scalings and shifts, label smoothing
    "cnn default, batch 64": ["train", "cnn", "--arch", "default", "--time-budget", "0"],
    # the same with each process's own batch-norm statistics: no exchange in the forward pass
    "cnn default --no-sync-bn, 64": ["train", "cnn", "--arch", "default", "--time-budget", "0", "--no-sync-bn"],
}
CONFIGS = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}


def steps_per_second(args: list[str], procs: int, threads: int, steps: int, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
              if procs > 1 else [sys.executable])
    cmd = [*launch, "-m", "customnn", *args, "--max-steps", str(steps), "--device", "cpu", "--quiet", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    (run,) = out.iterdir()
    engine = load_checkpoint(run / "last.safetensors").state["engine"]
    return engine["step"] / engine["train_time"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--only", choices=("gpt", "cnn"), default=None, help="one model only")
    args = p.parse_args()
    if args.only:
        for m in [m for m in MODELS if not m.startswith(args.only)]:
            del MODELS[m]
    results = {(m, c): [] for m in MODELS for c in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mi, (m, margs) in enumerate(MODELS.items()):
                order = list(CONFIGS.items()) if r % 2 == 0 else list(reversed(CONFIGS.items()))
                for c, (procs, threads) in order:
                    out = Path(tmp) / f"{r}-{len(results[(m, c)])}-{procs}-{threads}-{mi}"
                    results[(m, c)].append(steps_per_second(margs, procs, threads, args.steps, out))
    print(f"steps per second, median of {args.rounds} rounds of {args.steps} steps "
          f"({os.cpu_count()} cores; rank 0's time in training steps)")
    for m in MODELS:
        base = statistics.median(results[(m, "1 process x 1 thread")])
        for c in CONFIGS:
            v = statistics.median(results[(m, c)])
            runs = ", ".join(f"{x:.2f}" for x in results[(m, c)])
            print(f"  {m:28s} {c:24s} {v:7.2f} steps/s  {v / base:4.2f}x  ({runs})")


if __name__ == "__main__":
    main()
