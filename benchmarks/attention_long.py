"""Long contexts: ``ops.attention`` (dense or tiled, as it chooses) timed against
``F.scaled_dot_product_attention`` and against the attention that kept the (T, S) weights,
forward+backward, and its peak memory up to T = 8192.

    python benchmarks/attention_long.py                  # 1 thread, torch's default count, memory (~6 min)
    python benchmarks/attention_long.py --threads 2,1    # thread counts, in this order
    python benchmarks/attention_long.py --sweep --threads 1 --clock cpu   # each path and tile size
    python benchmarks/attention_long.py --sizes 12x4x256x32 --no-memory  # other (B, nh, T, hs)
    python benchmarks/attention_long.py --no-time        # memory only

On a machine shared with other work, two threads wait on each other at every one of the
tiled path's operations, so its 2-thread times grow far more than SDPA's (one fused call):
the load average printed before and after each table says how busy the machine was.

Timing: forward + backward (``y.backward(dout)``) of each implementation on separate copies of
the same float32 q, k, v and dout, causal. The implementations take turns in one process (the
order rotates every sample); a sample times enough calls to last ``--sample-s``; the table shows
median milliseconds and the median over the samples of the pairwise ratio (below 1: ours is
faster), with its interquartile range in brackets.

``old`` is ``customnn/ops/attention.py`` as of commit ``OLD_REV`` (read with ``git show``): the
attention that formed the whole (B*nh, T, S) weight matrix and saved it for backward. Without
git history the column is left out.

Memory: each implementation runs in its own process (``--memory-child``) with glibc's mmap
threshold fixed, so that freed tensors leave RSS; the figure is the peak RSS (VmHWM, reset
through /proc/self/clear_refs) during one forward+backward above the RSS just before it, when
q, k, v and dout exist (without gradients) and one warm-up step has run; the step's own dq,
dk, dv count.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(REPO))

from customnn import ops  # noqa: E402

# The last commit that changed attention.py before the tiled path: every call formed the whole
# (B*nh, T, S) weight matrix and kept it for backward.
OLD_REV = "74d676e"

# (B, nh, T, hs): the GPT presets' attention (B=12, T=64 and 128), and T=256 at a batch that
# runs dense and one that runs tiled
GPT_SIZES = [(12, 4, 64, 32), (12, 4, 128, 32), (4, 4, 256, 32), (12, 4, 256, 32)]
LONG_SIZES = [(1, 4, 1024, 64), (4, 6, 1024, 64), (1, 4, 4096, 64)]
# where the dense path stops paying, and where one block size takes over from another
SWEEP_SIZES = [(1, 4, 256, 32), (8, 4, 256, 32), (12, 4, 192, 32), (4, 4, 384, 32), (1, 4, 512, 32), (1, 4, 768, 64)]
MEMORY_SIZE = (1, 4, 4096, 64)
MEMORY_SCALING = [(1, 4, 1024, 64), (1, 4, 2048, 64), (1, 4, 4096, 64), (1, 4, 8192, 64)]


def load_old():
    """``attention`` from customnn/ops/attention.py at OLD_REV, or None without git history."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_REV}:customnn/ops/attention.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("attention_old")
    exec(compile(src, f"{OLD_REV}:customnn/ops/attention.py", "exec"), mod.__dict__)
    return mod.attention


def sdpa(q, k, v, causal=True):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def fwd_bwd(fn, shape, seed=0):
    """A step: fresh grads, fn(q, k, v) forward, backward with a fixed dout. ``step.inputs``
    are q, k, v."""
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(shape, generator=g) for _ in range(4))
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))

    def step():
        for t in (q, k, v):
            t.grad = None
        fn(q, k, v).backward(dout)
    step.inputs = (q, k, v)
    return step


CLOCK = time.perf_counter  # --clock cpu: time.process_time (1 thread only: it counts every thread)


def _time(step, calls):
    start = CLOCK()
    for _ in range(calls):
        step()
    return (CLOCK() - start) / calls


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def sample(steps: dict, reps: int, sample_s: float) -> dict:
    """Seconds per call of each step, ``reps`` samples each, the steps taking turns (the order
    rotates every sample); a sample times enough calls to last ``sample_s``."""
    for step in steps.values():  # warm up
        step(), step()
    one = max(_time(s, 1) for s in steps.values())
    calls = max(1, int(sample_s / one))
    names = list(steps)
    times = {n: [] for n in names}
    for i in range(reps):
        for n in names[i % len(names):] + names[:i % len(names)]:
            times[n].append(_time(steps[n], calls))
    return times


def compare(steps: dict, reps: int, sample_s: float) -> dict:
    """Median milliseconds of each step, and the ratios ours / sdpa and ours / old, sample by
    sample: (median, first quartile, third quartile)."""
    times = sample(steps, reps, sample_s)
    out = {f"{n}_ms": statistics.median(t) * 1e3 for n, t in times.items()}
    for a, b in (("ours", "sdpa"), ("ours", "old")):
        if a in times and b in times:
            r = sorted(x / y for x, y in zip(times[a], times[b]))
            q = statistics.quantiles(r, n=4) if len(r) > 1 else r * 3
            out[f"{a}/{b}"] = (statistics.median(r), q[0], q[2])
    return out


def fmt_ratio(r):
    return f"{r[0]:5.2f} [{r[1]:.2f}-{r[2]:.2f}]" if r else "    -"


def time_table(sizes, threads, reps, sample_s, old):
    torch.set_num_threads(threads)
    print(f"\n{threads} thread(s), fwd+bwd, causal, float32 ({reps} samples each; {load()} before)")
    print(f"  {'B x nh x T x hs':18} {'ours ms':>9} {'sdpa ms':>9} {'old ms':>9}   "
          f"{'ours/sdpa':>17}   {'ours/old':>17}")
    rows = []
    for shape in sizes:
        steps = {"ours": fwd_bwd(lambda q, k, v: ops.attention(q, k, v, causal=True), shape),
                 "sdpa": fwd_bwd(sdpa, shape)}
        if old is not None:
            steps["old"] = fwd_bwd(old, shape)
        res = compare(steps, reps, sample_s)
        name = "x".join(map(str, shape))
        old_ms = f"{res['old_ms']:9.2f}" if "old_ms" in res else f"{'-':>9}"
        print(f"  {name:18} {res['ours_ms']:9.2f} {res['sdpa_ms']:9.2f} {old_ms}   "
              f"{fmt_ratio(res.get('ours/sdpa')):>17}   {fmt_ratio(res.get('ours/old')):>17}", flush=True)
        rows.append(dict(shape=shape, threads=threads, **res))
    print(f"  ({load()} after)")
    return rows


def sweep(sizes, threads, reps, sample_s, blocks):
    """Each way of computing attention, relative to SDPA in the same samples: the dense path
    (the whole weight matrix kept) and the tiled path at each (block_q, block_k)."""
    from customnn.ops.attention import DenseAttention

    torch.set_num_threads(threads)
    print(f"\n{threads} thread(s): time / SDPA's, fwd+bwd, causal, float32 ({reps} samples each; {load()} before)")
    for shape in sizes:
        steps = {"sdpa": fwd_bwd(sdpa, shape)}
        if shape[2] <= 1024:  # beyond, the dense path is slow and large
            steps["dense"] = fwd_bwd(lambda q, k, v: DenseAttention.apply(q, k, v, True, 0.0, None), shape)
        for bq, bk in blocks:
            if bq < shape[2] or bk < shape[2]:
                steps[f"{bq}x{bk}"] = fwd_bwd(
                    lambda q, k, v, bq=bq, bk=bk: ops.attention(q, k, v, causal=True, block_q=bq, block_k=bk), shape)
        times = sample(steps, reps, sample_s)
        names = list(steps)
        cells = []
        for n in names[1:]:
            r = statistics.median(a / b for a, b in zip(times[n], times["sdpa"]))
            cells.append(f"{n} {r:.2f}")
        print(f"  {'x'.join(map(str, shape)):16} sdpa {statistics.median(times['sdpa']) * 1e3:8.2f} ms | "
              + "  ".join(cells), flush=True)


# --- memory ---------------------------------------------------------------------------------
def _status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(impl: str, shape) -> dict:
    fn = {"ours": ops.attention, "sdpa": sdpa, "old": load_old()}[impl]
    step = fwd_bwd(fn, shape)
    step()  # warm-up: thread pools, the first allocations
    for t in step.inputs:
        t.grad = None  # so that the measured step's gradients count in full
    gc.collect()
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    step()
    peak = _status_kb("VmHWM")
    return dict(impl=impl, base_mib=base / 1024, step_mib=(peak - base) / 1024)


def memory_table(shape, impls):
    B, nh, T, hs = shape
    one_matrix = B * nh * T * T * 4 / 2**20
    print(f"\npeak memory of one fwd+bwd above the RSS before it, {B}x{nh}x{T}x{hs} float32, causal "
          f"(one (B*nh, T, T) float32 matrix = {one_matrix:.0f} MiB, {T * T * 4 / 2**20:.0f} MiB a head; "
          f"the step's dq, dk, dv alone = {3 * B * nh * T * hs * 4 / 2**20:.0f} MiB)")
    for impl in impls:
        r = _memory_run(impl, shape)
        print(f"  {impl:5} {r['step_mib']:8.1f} MiB  ({r['step_mib'] / one_matrix:.3f} x one T x T matrix)", flush=True)


def _memory_run(impl, shape) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", impl, "x".join(map(str, shape))]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"memory child {impl} {shape} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_scaling(sizes):
    print("\nours against T (peak above the RSS before, as above; one (B*nh, T, T) float32 matrix for scale)")
    for shape in sizes:
        B, nh, T, hs = shape
        r = _memory_run("ours", shape)
        matrix = B * nh * T * T * 4 / 2**20
        print(f"  {'x'.join(map(str, shape)):16} {r['step_mib']:8.1f} MiB   T x T matrix {matrix:8.0f} MiB", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and torch's default)")
    ap.add_argument("--sample-s", type=float, default=0.25, help="seconds per sample")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time, which a busy machine inflates less (1 thread only)")
    ap.add_argument("--sweep", action="store_true", help="time the dense path and each tile size instead")
    ap.add_argument("--sizes", default=None,
                    help="comma-separated BxNHxTxHS to time instead of the built-in lists, e.g. 12x4x256x32")
    ap.add_argument("--no-time", action="store_true", help="memory only")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", nargs=2, metavar=("IMPL", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        impl, shape = args.memory_child
        print(json.dumps(memory_child(impl, tuple(int(s) for s in shape.split("x")))))
        return
    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.process_time
    default_threads = torch.get_num_threads()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, default_threads})
    if args.clock == "cpu" and max(threads) > 1:
        ap.error("--clock cpu counts every thread's time: use it with --threads 1")
    reps = 5 if args.quick else 11
    old = load_old()
    print(f"torch {torch.__version__}, default threads {default_threads}, {os.cpu_count()} CPUs, "
          f"{args.clock} clock, old = attention.py at {OLD_REV}" + ("" if old else " (not found: no git history)"))
    sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")] if args.sizes else None
    if args.sweep:
        blocks = [(64, 64), (128, 128), (128, 256), (256, 256)]
        for t in threads:
            sweep(sizes or GPT_SIZES + SWEEP_SIZES + LONG_SIZES, t, reps, args.sample_s, blocks)
        return
    if not args.no_time:
        for t in threads:
            for table in ([sizes] if sizes else [GPT_SIZES, LONG_SIZES]):
                time_table(table, t, reps, args.sample_s, old)
    if not args.no_memory:
        memory_table(MEMORY_SIZE, ["ours", "sdpa"] + (["old"] if old else []))
        memory_scaling(MEMORY_SCALING)


if __name__ == "__main__":
    main()
