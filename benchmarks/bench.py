"""``customnn bench``: our models and layers timed against PyTorch's own, side by side.

    customnn bench                     # everything, a few minutes on a 2-core CPU
    customnn bench --quick             # fewer repetitions, under a minute
    customnn bench --device cuda --json bench-results/bench-cuda.json
    customnn bench --only cnn,gpt      # some groups: cnn textbook gpt amp attention conv reference generate
                                       # memory calls layers
    python benchmarks/bench.py --quick # the same, without the command

Each comparison builds our version (``customnn.ops``, ``customnn.optim``) and PyTorch's twin
(``customnn_ref.twins``, ``torch.nn.functional``, ``torch.optim``) with the same weights and the
same batch, then runs them ALTERNATING in one process: a sample times enough calls to last
``sample_s``, ours and theirs take turns (which goes first alternates too), ``reps`` samples
each. The ratio is the median over the pairs of samples of custom / PyTorch (below 1: ours
is faster); the interquartile range of those ratios shows how noisy the machine was.

Groups:
- ``cnn``, ``gpt``: one training step (forward, loss, backward, AdamW step, zero_grad) of
  CustomCNN (seed, and default at the width `customnn train cnn` trains; batch 64) and GPT (``nanogpt-cpu`` and ``default``
  presets) against their torch.nn twins with ``torch.optim.AdamW``.
- ``textbook``: training steps (forward, loss, backward) of models written straight from
  ``ops`` calls in the textbook order (conv, ReLU, then pool), against the same code calling
  ``torch.nn.functional``: the seed CNN (and in our models' order), issue 25's 5x5 32/64-channel
  conv net, and a GPT of nanogpt-cpu's shape (benchmarks/textbook.py).
- ``amp``: the same steps with the forward under bfloat16 autocast (``--precision bf16``), ours
  against the twin under the same autocast, and ours in bf16 against ours in float32
  (benchmarks/bench_amp.py).
- ``attention``: causal attention forward+backward against ``F.scaled_dot_product_attention``
  at T = 64, 256, 1024 (nh=4, hs=32; batch 12, 3, 1, so 768 tokens each).
- ``conv``: conv2d forward+backward at every conv layer size of the two CNNs, batch 64.
- ``reference``: the readable loop versions (``conv2d_reference``, ``max_pool2d_reference``)
  against the fast layers at the seed's sizes, batch 64 (timed at the full batch: the loops
  run over output pixels, not samples, so a small batch scaled up would overstate them).
- ``generate``: tokens per second (and ms per token) generating 500 tokens from one token with
  and without the KV cache (``customnn.models.sampling.generate``; GPT default-preset width,
  block_size 256), with learned positions and with RoPE.
  Beside them, one token's cached step against the torch.nn twin's own cached step
  (benchmarks/token_step.py), ms per token.
- ``memory``: peak memory of a training step, ours and the twin's, each in its own process
  (CPU: peak RSS above the RSS before the step, from /proc/self/status VmHWM after resetting
  it through /proc/self/clear_refs, with glibc's mmap threshold fixed so freed tensors leave
  RSS; CUDA: ``torch.cuda.max_memory_allocated`` above the memory allocated before the step).
- ``calls``: the cost of a call, every public op on tiny inputs against F's, forward,
  forward+backward and no-grad forward, in microseconds (benchmarks/calls.py).
- ``layers``: benchmarks/ops.py's per-layer table (CPU only; not in the default set).

On the CPU every group runs twice by default (``--threads 1,0``): at one torch thread, steady
even on a machine shared with other work, and at torch's default thread count (``0``), what a
user gets, where a layer that does not use every core shows. Each thread count prints its own
table; the JSON holds every row with its ``threads``. On CUDA, one run (threads do not matter);
cuDNN's TF32 is turned off so both sides do float32 arithmetic (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(REPO))

from customnn import ops  # noqa: E402
from customnn.models.cnn import CustomCNN  # noqa: E402
from customnn.models.gpt import GPT, GPTConfig  # noqa: E402
from customnn.optim import AdamW  # noqa: E402
from customnn.train.cnn import CNNTrainConfig  # noqa: E402
from customnn_ref.twins import cnn_twin, gpt_twin  # noqa: E402
import bench_amp  # noqa: E402

GROUPS = ("cnn", "textbook", "gpt", "amp", "attention", "conv", "reference", "generate", "memory", "calls", "layers")
DEFAULT_GROUPS = GROUPS[:-1]
DEFAULT_JSON = "bench-results/bench.json"
VOCAB = 65  # Tiny Shakespeare's characters
CNN_BATCH = 64
# Issue 5's targets, custom / PyTorch (generation: cached / uncached).
TARGETS = {"cnn": 1.3, "gpt": 1.1, "generate": 5.0, "memory": 1.5}
# Issue 25's: models written from ops (CNN <= 1.2, GPT <= 1.1), each op's call <= 2x F's.
TEXTBOOK_TARGETS = {"seed": 1.2, "conv5": 1.2, "gpt": 1.1}


# --- timing -----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Callable[[], object], calls: int, device: torch.device) -> float:
    """Seconds per call of ``step``, over ``calls`` calls (synchronized on CUDA)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        step()
    _sync(device)
    return (time.perf_counter() - start) / calls


def compare(ours: Callable, theirs: Callable, device: torch.device, reps: int, sample_s: float) -> dict:
    """Alternate ``reps`` samples of each; medians in ms and the median pairwise ratio."""
    for _ in range(2):  # warm up: allocations, kernel selection, optimizer state
        ours(), theirs()
    one = max(_time(ours, 1, device), _time(theirs, 1, device), 1e-6)
    calls = max(1, int(sample_s / one))
    t_ours, t_theirs = [], []
    for i in range(reps):
        pair = [(t_ours, ours), (t_theirs, theirs)]
        for times, fn in (pair if i % 2 == 0 else pair[::-1]):
            times.append(_time(fn, calls, device))
    ratios = sorted(a / b for a, b in zip(t_ours, t_theirs))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return dict(custom_ms=statistics.median(t_ours) * 1e3, torch_ms=statistics.median(t_theirs) * 1e3,
                ratio=statistics.median(ratios), ratio_q1=q[0], ratio_q3=q[2], calls=calls, reps=reps)


# --- training steps ---------------------------------------------------------------------------
def gpt_preset(name: str) -> tuple[GPTConfig, int]:
    """(model config, batch size) of a ``customnn train gpt`` preset."""
    try:
        from customnn.train.gpt import make_config
        cfg = make_config(name)
        return cfg.model_config(VOCAB), cfg.batch_size
    except ImportError:  # an optional dependency of the training code is missing: the presets' values
        fallback = {"nanogpt-cpu": (GPTConfig(VOCAB, 64, 4, 4, 128, 0.0, False), 12),
                    "default": (GPTConfig(VOCAB, 128, 4, 4, 128, 0.0, False), 16)}
        return fallback[name]


MODELS = {  # name -> what one training step sees
    "cnn seed": dict(group="cnn", arch="seed"),
    "cnn default": dict(group="cnn", arch="default"),
    "gpt nanogpt-cpu": dict(group="gpt", preset="nanogpt-cpu"),
    "gpt default": dict(group="gpt", preset="default"),
}


def training_pair(name: str, device: torch.device):
    """(our step, the twin's step, input size): forward, loss, backward, AdamW step, zero_grad."""
    model, opt, twin, topt, x, y, size = training_parts(name, device)
    return training_step(model, opt, x, y), training_step(twin, topt, x, y), size


def training_parts(name: str, device: torch.device):
    """(our model, its AdamW, the torch.nn twin, torch's AdamW, x, y, input size) of one model."""
    spec = MODELS[name]
    g = torch.Generator().manual_seed(0)
    if spec["group"] == "cnn":
        width = CNNTrainConfig(arch=spec["arch"]).resolved().width  # what `customnn train cnn` trains
        model = CustomCNN(spec["arch"], seed=0, width=width).to(device)
        twin = cnn_twin(model)
        x = torch.randn(CNN_BATCH, 1, 28, 28, generator=g).to(device)  # (N, 1, 28, 28)
        y = torch.randint(0, 10, (CNN_BATCH,), generator=g).to(device)  # (N,)
        size = f"{CNN_BATCH}x1x28x28" + (f" w={width}" if spec["arch"] == "default" else "")
    else:
        cfg, B = gpt_preset(spec["preset"])
        model = GPT(cfg, seed=0).to(device)
        twin = gpt_twin(model)
        x = torch.randint(0, VOCAB, (B, cfg.block_size), generator=g).to(device)  # (B, T)
        y = torch.randint(0, VOCAB, (B, cfg.block_size), generator=g).to(device)  # (B, T)
        size = f"B={B} T={cfg.block_size} L={cfg.n_layer} C={cfg.n_embd}"
    opt = AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    topt = torch.optim.AdamW(twin.parameters(), lr=1e-4, weight_decay=0.1)
    return model, opt, twin, topt, x, y, size


def training_step(net, optimizer, x, y):
    """One training step of ``net`` on the batch (x, y) as a function of no arguments: forward,
    loss, backward, optimizer step, zero_grad."""
    def run():
        _, loss = net(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return run


def bench_training(names, device, reps, sample_s) -> list[dict]:
    rows = []
    for name in names:
        ours, theirs, size = training_pair(name, device)
        rows.append(dict(group=MODELS[name]["group"], name=name, size=size,
                         **compare(ours, theirs, device, reps, sample_s)))
        _progress(rows[-1])
    return rows


# --- single layers ----------------------------------------------------------------------------
def layer_pair(ours: Callable, theirs: Callable, shapes, device: torch.device, seed: int = 0):
    """Forward+backward steps of ours and theirs on separate copies of the same inputs and dout."""
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=g).to(device) for s in shapes]
    a = [t.clone().requires_grad_(True) for t in base]
    b = [t.clone().requires_grad_(True) for t in base]
    dout = torch.randn(ours(*a).shape, generator=g).to(device)

    def step(fn, inputs):
        def run():
            for t in inputs:
                t.grad = None
            fn(*inputs).backward(dout)
        return run

    return step(ours, a), step(theirs, b)


ATTENTION_SIZES = [(12, 64), (3, 256), (1, 1024)]  # (B, T): 768 tokens each, nh=4, hs=32


def bench_attention(device, reps, sample_s) -> list[dict]:
    sdpa = F.scaled_dot_product_attention
    rows = []
    for B, T in ATTENTION_SIZES:
        shape = (B, 4, T, 32)  # (B, nh, T, hs)
        ours, theirs = layer_pair(ops.attention, lambda q, k, v: sdpa(q, k, v, is_causal=True),
                                  [shape] * 3, device)
        rows.append(dict(group="attention", name=f"attention T={T}", size="x".join(map(str, shape)),
                         **compare(ours, theirs, device, reps, sample_s)))
        _progress(rows[-1])
    return rows


# (label, input shape, weight shape, padding): every convolution of the two CNNs at batch 64
CONV_SIZES = [
    ("seed conv1 5x5", (64, 1, 28, 28), (6, 1, 5, 5), 0),
    ("seed conv2 5x5", (64, 6, 12, 12), (12, 6, 5, 5), 0),
    ("default conv1 3x3", (64, 1, 28, 28), (32, 1, 3, 3), 1),
    ("default conv2 3x3", (64, 32, 14, 14), (64, 32, 3, 3), 1),
    ("default conv3 3x3", (64, 64, 7, 7), (128, 64, 3, 3), 1),
]


def bench_conv(device, reps, sample_s) -> list[dict]:
    rows = []
    for label, xs, ws, pad in CONV_SIZES:
        ours, theirs = layer_pair(lambda x, w, b, p=pad: ops.conv2d(x, w, b, padding=p),
                                  lambda x, w, b, p=pad: F.conv2d(x, w, b, padding=p),
                                  [xs, ws, ws[:1]], device)
        rows.append(dict(group="conv", name=f"conv2d {label}", size=f"{'x'.join(map(str, xs))} -> {ws[0]}",
                         **compare(ours, theirs, device, reps, sample_s)))
        _progress(rows[-1])
    return rows


REFERENCE_SIZES = [  # the seed's layers at batch 64
    ("conv2d 1->6 5x5", ops.conv2d_reference, ops.conv2d, [(64, 1, 28, 28), (6, 1, 5, 5), (6,)]),
    ("conv2d 6->12 5x5", ops.conv2d_reference, ops.conv2d, [(64, 6, 12, 12), (12, 6, 5, 5), (12,)]),
    ("max_pool2d 2", lambda x: ops.max_pool2d_reference(x, 2), lambda x: ops.max_pool2d(x, 2), [(64, 6, 24, 24)]),
    ("max_pool2d 2", lambda x: ops.max_pool2d_reference(x, 2), lambda x: ops.max_pool2d(x, 2), [(64, 12, 8, 8)]),
]


def bench_reference(device, reps, sample_s) -> list[dict]:
    """The loop references against our fast layers: ratio = how many times faster the fast one is."""
    rows = []
    for label, ref, fast, shapes in REFERENCE_SIZES:
        slow_step, fast_step = layer_pair(ref, fast, shapes, device)
        r = compare(slow_step, fast_step, device, reps, sample_s)
        rows.append(dict(group="reference", name=label, size="x".join(map(str, shapes[0])),
                         reference_ms=r["custom_ms"], fast_ms=r["torch_ms"], speedup=r["ratio"],
                         speedup_q1=r["ratio_q1"], speedup_q3=r["ratio_q3"], calls=r["calls"], reps=reps))
        _progress(rows[-1])
    return rows


# --- generation -------------------------------------------------------------------------------
GEN_CONFIG = dict(vocab_size=VOCAB, block_size=256, n_layer=4, n_head=4, n_embd=128, bias=False)
GEN_TOKENS = 500


def bench_generate(device, reps) -> list[dict]:
    """Tokens per second with and without the KV cache, for learned positions (the default
    preset) and RoPE; both ways must draw the same tokens. Cached and uncached take turns."""
    from customnn.models.sampling import generate

    rows = []
    for pos in ("learned", "rope"):
        model = GPT(GPTConfig(**GEN_CONFIG, pos=pos), seed=0).to(device)
        times = {True: [], False: []}
        tokens = {}
        for i in range(reps):
            for use_cache in ((True, False) if i % 2 == 0 else (False, True)):
                g = torch.Generator(device=device).manual_seed(1)
                _sync(device)
                start = time.perf_counter()
                tokens[use_cache] = generate(model, [0], GEN_TOKENS, temperature=1.0, generator=g,
                                             use_cache=use_cache)
                _sync(device)
                times[use_cache].append(time.perf_counter() - start)
        cached, uncached = (GEN_TOKENS / statistics.median(times[c]) for c in (True, False))
        name = f"generate {GEN_TOKENS} tokens" + ("" if pos == "learned" else ", rope")
        rows.append(dict(group="generate", name=name, pos=pos,
                         size=f"block {GEN_CONFIG['block_size']} L={GEN_CONFIG['n_layer']} C={GEN_CONFIG['n_embd']}",
                         cached_tok_s=cached, uncached_tok_s=uncached, speedup=cached / uncached,
                         cached_ms_per_token=1e3 / cached, uncached_ms_per_token=1e3 / uncached,
                         same_tokens=tokens[True] == tokens[False], reps=reps))
        _progress(rows[-1])
    return rows


# --- peak memory, one process per measurement -------------------------------------------------
def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name: str, impl: str, device: torch.device, steps: int = 2) -> dict:
    """Peak memory of training steps of one model (impl "custom" or "torch"), above what was
    held before the step (weights, optimizer state, batch and the library itself)."""
    ours, theirs, _ = training_pair(name, device)
    step = ours if impl == "custom" else theirs
    step()  # warm-up: optimizer state, thread pools, kernel caches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        how = "torch.cuda.max_memory_allocated"
    else:
        base = _proc_status_kb("VmRSS") * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            how = "VmHWM after clear_refs"
        except OSError:
            how = "VmHWM (not reset: includes the warm-up step)"
        for _ in range(steps):
            step()
        peak = _proc_status_kb("VmHWM") * 1024
    return dict(base_mb=base / 2**20, peak_mb=peak / 2**20, step_mb=(peak - base) / 2**20, how=how)


MEMORY_MODELS_QUICK = ["cnn default", "gpt nanogpt-cpu"]


def bench_memory(names, device, threads: int) -> list[dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    rows = []
    for name in names:
        got = {}
        for impl in ("custom", "torch"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, impl,
                   "--device", str(device), "--threads", str(threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"memory child {name} {impl} failed:\n{out.stderr[-2000:]}")
            got[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        c, t = got["custom"], got["torch"]
        rows.append(dict(group="memory", name=f"{name} step", size=MODELS[name]["group"],
                         custom_mb=c["step_mb"], torch_mb=t["step_mb"], ratio=c["step_mb"] / max(t["step_mb"], 1e-9),
                         custom_peak_mb=c["peak_mb"], torch_peak_mb=t["peak_mb"], how=c["how"]))
        _progress(rows[-1])
    return rows


# --- the machine, the table, the targets ------------------------------------------------------
def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)),
                torch=torch.__version__, threads=torch.get_num_threads(), python=platform.python_version(),
                platform=platform.platform(), device=str(device),
                load_average=[round(x, 2) for x in os.getloadavg()],
                date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["tf32"] = dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32)
    return info


def _progress(row: dict) -> None:
    print(f"  ... {row['group']}: {row['name']} done", file=sys.stderr, flush=True)


def format_table(rows: list[dict]) -> str:
    out = []
    sections = [
        ("cnn", "training step: forward, backward, AdamW (custom vs torch.nn twin)", "custom ms", "torch ms", "ratio"),
        ("textbook", "models written from ops in the textbook order: fwd, loss, bwd (ops vs F)",
         "custom ms", "torch ms", "ratio"),
        ("gpt", None, None, None, None),
        ("amp", "training step under bf16 autocast (custom vs torch.nn twin, both autocast)", "custom ms", "torch ms",
         "ratio"),
        ("amp-self", "custom training step, bf16 autocast vs float32", "bf16 ms", "f32 ms", "ratio"),
        ("attention", "causal attention fwd+bwd (custom vs F.scaled_dot_product_attention)",
         "custom ms", "torch ms", "ratio"),
        ("conv", "conv2d fwd+bwd (custom vs F.conv2d)", "custom ms", "torch ms", "ratio"),
        ("reference", "loop references vs fast layers, fwd+bwd", "loops ms", "fast ms", "speed-up"),
        ("generate", "generation (custom GPT, temperature 1)", "cached tok/s", "uncached", "speed-up"),
        ("token", "one token with the KV cache, no grad (custom vs the torch.nn twin's cached step)",
         "custom ms", "torch ms", "ratio"),
        ("memory", "peak memory above the pre-step RSS, one process each", "custom MB", "torch MB", "ratio"),
    ]
    for group, title, a, b, r in sections:
        group_rows = [row for row in rows if row["group"] == group]
        if not group_rows:
            continue
        if title:
            out += ["", title, f"  {'':<24} {'size':<26} {a:>12} {b:>12} {r:>9}  {'(IQR)':>11}"]
        for row in group_rows:
            if group == "reference":
                vals = row["reference_ms"], row["fast_ms"], row["speedup"], (row["speedup_q1"], row["speedup_q3"])
            elif group == "generate":
                vals = row["cached_tok_s"], row["uncached_tok_s"], row["speedup"], None
            elif group == "memory":
                vals = row["custom_mb"], row["torch_mb"], row["ratio"], None
            else:
                vals = row["custom_ms"], row["torch_ms"], row["ratio"], (row["ratio_q1"], row["ratio_q3"])
            iqr = f"{vals[3][0]:5.2f}-{vals[3][1]:<5.2f}" if vals[3] else ""
            out.append(f"  {row['name']:<24} {row['size']:<26} {vals[0]:>12.3f} {vals[1]:>12.3f} {vals[2]:>9.2f}  {iqr:>11}")
            if group == "generate":
                out.append(f"    ms per token: cached {row['cached_ms_per_token']:.3f}, uncached "
                           f"{row['uncached_ms_per_token']:.3f}; same tokens: {row['same_tokens']}")
    return "\n".join(out)


def check_targets(rows: list[dict]) -> list[dict]:
    """Issue 5's targets against the measured figures."""
    checks = []
    for row in rows:
        g = row["group"]
        if g in ("cnn", "gpt"):
            checks.append(dict(what=f"{row['name']} training step, custom / torch", value=row["ratio"],
                               target=f"<= {TARGETS[g]}", met=row["ratio"] <= TARGETS[g]))
        elif g == "textbook":
            target = TEXTBOOK_TARGETS[row["name"].split()[0]]
            checks.append(dict(what=f"{row['name']} step (issue 25), ops / F", value=row["ratio"],
                               target=f"<= {target}", met=row["ratio"] <= target))
        elif g == "token":
            checks.append(dict(what="cached token, custom / twin's cached step (issue 25)", value=row["ratio"],
                               target="<= 1.2", met=row["ratio"] <= 1.2))
        elif g == "calls":
            worst = max(row["fwd_ratio"], row["fwd_bwd_ratio"])
            checks.append(dict(what=f"call {row['name']}, worst of fwd, fwd+bwd (issue 25)", value=worst,
                               target="<= 2", met=worst <= 2.0))
        elif g == "generate":
            pos = "" if row.get("pos", "learned") == "learned" else f" ({row['pos']})"
            checks.append(dict(what=f"generation{pos}, cached / uncached tokens per second", value=row["speedup"],
                               target=f">= {TARGETS['generate']}", met=row["speedup"] >= TARGETS["generate"]))
        elif g == "memory":
            checks.append(dict(what=f"{row['name']} peak memory, custom / torch", value=row["ratio"],
                               target=f"<= {TARGETS['memory']}", met=row["ratio"] <= TARGETS["memory"]))
    return checks + bench_amp.check_targets(rows)


# --- main -------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (under a minute)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--json", default=DEFAULT_JSON, metavar="PATH", help=f"results file (default {DEFAULT_JSON})")
    p.add_argument("--only", default=None, help=f"comma-separated groups from: {', '.join(GROUPS)}")
    p.add_argument("--threads", default="1,0",
                   help="comma-separated torch thread counts on the CPU, one run each (0: torch's default; "
                        "default 1,0)")
    p.add_argument("--reps", type=int, default=None, help="samples of each side (default 5 quick, 15 full)")
    p.add_argument("--memory-child", nargs=2, metavar=("MODEL", "IMPL"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda, but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"bench: --device must be cpu, cuda or auto, got {name!r}")
    return device


def thread_counts(text: str, device: torch.device) -> list[int]:
    """``--threads``: "1,0" -> [1, 0] (0: torch's default); one run on CUDA."""
    from customnn.core.errors import UserError
    from customnn.core.validate import thread_counts as checked

    try:
        counts = checked(text)
    except UserError as e:
        raise SystemExit(f"bench: {e}") from None
    return counts[:1] if device.type == "cuda" else list(dict.fromkeys(counts))


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    counts = thread_counts(args.threads, device)
    old_threads = torch.get_num_threads()
    runs = []
    # Same arithmetic on both sides: cuDNN convolutions would otherwise round through TF32
    # (PyTorch's default) while ours are float32 matrix products. The context manager puts the
    # caller's setting back (`customnn bench` runs in-process), as the finally does the threads.
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            for n in counts:
                torch.set_num_threads(n or old_threads)
                code, result = run(args, device, n)
                if code or result is None:
                    return code
                runs.append(result)
    finally:
        torch.set_num_threads(old_threads)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        first = runs[0]  # the machine, groups and settings; every run's rows, each with its threads
        combined = dict(first, results=[r for run_ in runs for r in run_["results"]],
                        targets=[t for run_ in runs for t in run_["targets"]],
                        seconds=sum(run_["seconds"] for run_ in runs),
                        threads=[run_["machine"]["threads"] for run_ in runs])
        path.write_text(json.dumps(combined, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def run(args: argparse.Namespace, device: torch.device, threads: int) -> tuple[int, dict | None]:
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child, device)))
        return 0, None
    groups = DEFAULT_GROUPS if args.only is None else [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        print(f"bench: unknown group(s) {unknown or args.only!r}; choose from {', '.join(GROUPS)}", file=sys.stderr)
        return 2, None
    reps = args.reps or (5 if args.quick else 15)
    sample_s = 0.02 if args.quick else 0.1
    info = machine(device)
    print(f"customnn bench on {info['device']}: {info['cpu']}, {info['usable_cores']} of {info['cores']} cores, "
          f"torch {info['torch']}, {info['threads']} thread(s), load average {info['load_average']}"
          + (f", GPU {info['gpu']}" if device.type == "cuda" else ""))
    print(f"median of {reps} alternating samples (~{sample_s * 1e3:.0f} ms each) per side; "
          f"ratio = custom / PyTorch, below 1 ours is faster", flush=True)
    start = time.perf_counter()
    torch.manual_seed(0)
    rows: list[dict] = []
    group_seconds: dict[str, float] = {}
    for group in groups:
        group_start = time.perf_counter()
        if group in ("cnn", "gpt"):
            rows += bench_training([n for n in MODELS if MODELS[n]["group"] == group], device, reps, sample_s)
        elif group == "textbook":
            from textbook import bench_textbook  # benchmarks/textbook.py
            rows += bench_textbook(device, reps, sample_s)
        elif group == "calls":
            if device.type != "cpu":
                print("bench: the calls group runs on the CPU only; skipped", file=sys.stderr)
                continue
            from calls import bench_calls, format_table as calls_table  # benchmarks/calls.py
            call_rows = bench_calls(threads=threads or None, quick=args.quick)
            print("\nthe cost of a call, tiny inputs, us (benchmarks/calls.py)\n" + calls_table(call_rows))
            rows += call_rows
        elif group == "amp":
            rows += bench_amp.bench_amp(list(MODELS), device, reps, sample_s, training_parts, compare, _progress)
        elif group == "attention":
            rows += bench_attention(device, reps, sample_s)
        elif group == "conv":
            rows += bench_conv(device, reps, sample_s)
        elif group == "reference":
            rows += bench_reference(device, 3 if args.quick else 5, sample_s)
        elif group == "generate":
            rows += bench_generate(device, args.reps or (1 if args.quick else 3))
            from token_step import bench_token_step  # benchmarks/token_step.py
            rows += bench_token_step(device, reps, sample_s)
        elif group == "memory":
            rows += bench_memory(MEMORY_MODELS_QUICK if args.quick else list(MODELS), device, threads)
        elif group == "layers":
            if device.type != "cpu":
                print("bench: the layers group runs on the CPU only; skipped", file=sys.stderr)
                continue
            from ops import bench_layers, format_table as layer_table  # benchmarks/ops.py
            layer_rows = bench_layers(quick=args.quick, threads=threads or None)
            print("\nper-layer forward+backward (benchmarks/ops.py)\n" + layer_table(layer_rows))
            rows += [dict(r, group="layers", name=r["layer"], model=r["group"]) for r in layer_rows]
        group_seconds[group] = round(time.perf_counter() - group_start, 1)
    targets = check_targets(rows)
    print(format_table(rows))
    if targets:
        print("\ntargets")
        for t in targets:
            print(f"  {t['what']:<58} {t['value']:>7.2f}  target {t['target']:<7} {'met' if t['met'] else 'NOT met'}")
    elapsed = time.perf_counter() - start
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\ntook {elapsed:.0f} s ({', '.join(f'{g} {t:.0f} s' for g, t in group_seconds.items())}); "
          f"load average after: {info['load_average_after']}")
    for row in rows:
        row["threads"] = info["threads"]
    result = dict(machine=info, quick=args.quick, reps=reps, sample_s=sample_s, groups=groups,
                  seconds=elapsed, group_seconds=group_seconds, results=rows, targets=targets)
    return 0, result


if __name__ == "__main__":
    raise SystemExit(main())
