"""``customnn bench``: the custom layers and models timed against PyTorch's built-in twins.

The benchmarks build twins from ``torch.nn`` (the reference), so they live outside the
library, in the ``benchmarks/`` folder of a source checkout; this command finds that
folder and runs ``benchmarks/bench.py`` in-process with the same arguments.

    customnn bench --quick                       # under a minute
    customnn bench --device cuda --json bench.json
    customnn bench --only cnn,gpt --threads 0    # some groups, at torch's default thread count only

Groups: cnn, gpt (training steps), textbook (models written from ops in the textbook order,
against the same code on torch.nn.functional), attention, conv, reference (the loop versions),
generate (KV cache), memory (peak memory, one process each), calls (the cost of a call: every
op on tiny inputs against F's), layers (benchmarks/ops.py; not by default).
By default every group runs at 1 thread and then at torch's default thread count (``--threads
1,0``), each with its own table. Results go to bench-results/bench.json unless ``--json`` says
otherwise.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from customnn.core import validate
from customnn.core.errors import UserError

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
GROUPS = ("cnn", "textbook", "gpt", "amp", "attention", "conv", "reference", "generate", "memory", "calls", "layers")
MAX_REPS = 10_000


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (under a minute)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="write the results to this JSON file (default bench-results/bench.json)")
    p.add_argument("--only", default=None,
                   help="comma-separated groups: " + ", ".join(GROUPS))
    p.add_argument("--threads", default=None,
                   help="comma-separated torch thread counts on the CPU, one run each (0: torch's default; "
                        "default 1,0: one thread, then torch's default)")
    p.add_argument("--reps", type=int, default=None, help="alternating samples per side (default 5 quick, 15 full)")


def check_args(args) -> None:
    """Every flag checked here, before the benchmarks start (``customnn/core/validate.py``)."""
    validate.device(args.device)
    if args.threads is not None:
        validate.thread_counts(args.threads)
    if args.reps is not None:
        validate.count(args.reps, "--reps", 1, MAX_REPS)
    if args.json is not None:
        validate.output_file(validate.text(args.json, "--json"), "--json")
    if args.only is not None:
        groups = [g.strip() for g in validate.text(args.only, "--only").split(",") if g.strip()]
        unknown = [g for g in groups if g not in GROUPS]
        if unknown or not groups:
            raise UserError(f"--only: unknown group(s) {', '.join(map(repr, unknown)) or repr(args.only)}; "
                            f"choose from {', '.join(GROUPS)}")


def run(args) -> int:
    check_args(args)
    script = BENCH_DIR / "bench.py"
    if not script.is_file():
        raise UserError(f"customnn bench needs a source checkout: {script} not found")
    argv = ["bench.py"]
    if args.quick:
        argv.append("--quick")
    argv += ["--device", args.device]
    if args.json:
        argv += ["--json", args.json]
    if args.only:
        argv += ["--only", args.only]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if args.reps is not None:
        argv += ["--reps", str(args.reps)]
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = argv
    sys.path.insert(0, str(BENCH_DIR))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:  # argparse's usage errors, the script's own exit codes or messages
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 2
        return int(e.code or 0)
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return 0
