"""``--compile`` measured: a training step of our models, eager and through torch.compile, against
their torch.nn twins, eager and through torch.compile.

    python benchmarks/compile.py                    # nanogpt-cpu GPT, seed CNN, generation; 1 thread
    python benchmarks/compile.py --models gpt --reps 5 --out ""    # print only
    python benchmarks/compile.py --device cuda      # on a GPU: benchmarks/results/cuda-compile.txt

One step is forward, loss, backward, AdamW step, zero_grad (``benchmarks/bench.py``'s
training step): ours with ``customnn.optim.AdamW`` and ``customnn.train.loading.compile_model``
(what ``--compile`` does), the twin (``customnn_ref.twins``) with ``torch.optim.AdamW`` and
``torch.compile(twin)``. Only the model is compiled on either side, not the optimizer. All four
have the same weights and batch, and run ALTERNATING in one process (the order rotates every
round), ``reps`` samples each of about ``sample_s``; each figure is a median, and the ratios
are medians of the per-round ratios. The first call of a compiled step, which compiles the
forward and the backward, is timed apart ("compile s"), from an empty compile cache unless
``--warm``. ``generate``: the sampling loop of ``customnn generate --compile``, 500 tokens
with the KV cache, eager against compiled.

A training step of our models is one graph under torch.compile: the layers take traceable forms
while TorchDynamo traces (docs/api.md, "--compile").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/bench.py
from bench import CNN_BATCH, VOCAB, _sync, gpt_preset, machine, training_step  # noqa: E402
from customnn.models.cnn import CustomCNN  # noqa: E402
from customnn.models.gpt import GPT  # noqa: E402
from customnn.optim import AdamW  # noqa: E402
from customnn.train.loading import compile_model, compile_unavailable  # noqa: E402
from customnn_ref.twins import cnn_twin, gpt_twin  # noqa: E402

DEFAULT_OUT = "benchmarks/results/{device}-compile.txt"
KINDS = ("eager custom", "compiled custom", "eager torch.nn", "compiled torch.nn")


def steps(name: str, device: torch.device) -> tuple[dict, str]:
    """The four training steps of model ``name`` ("gpt": nanogpt-cpu preset, "cnn": seed arch)
    with the same weights and batch, on ``device``, and the batch's size."""
    g = torch.Generator().manual_seed(0)
    if name == "gpt":
        cfg, B = gpt_preset("nanogpt-cpu")
        make = lambda: GPT(cfg, seed=0).to(device)  # noqa: E731
        x = torch.randint(0, VOCAB, (B, cfg.block_size), generator=g)  # (B, T)
        y = torch.randint(0, VOCAB, (B, cfg.block_size), generator=g)  # (B, T)
        size = f"B={B} T={cfg.block_size} L={cfg.n_layer} C={cfg.n_embd}"
    else:
        make = lambda: CustomCNN("seed", seed=0).to(device)  # noqa: E731
        x = torch.randn(CNN_BATCH, 1, 28, 28, generator=g)  # (N, 1, 28, 28)
        y = torch.randint(0, 10, (CNN_BATCH,), generator=g)  # (N,)
        size = f"{CNN_BATCH}x1x28x28"
    x, y = x.to(device), y.to(device)
    ours, ours_c = make(), compile_model(make(), device)
    twin_of = gpt_twin if name == "gpt" else cnn_twin
    twin, twin_c = twin_of(make()), twin_of(make())

    def step(forward, optimizer):
        run = training_step(forward, optimizer, x, y)

        def synced():  # on a GPU, the step's kernels finished, not only queued
            run()
            _sync(device)
        return synced

    return {
        "eager custom": step(ours, AdamW(ours.parameters(), lr=1e-4, weight_decay=0.1)),
        "compiled custom": step(ours_c, AdamW(ours_c.parameters(), lr=1e-4, weight_decay=0.1)),
        "eager torch.nn": step(twin, torch.optim.AdamW(twin.parameters(), lr=1e-4, weight_decay=0.1)),
        "compiled torch.nn": step(torch.compile(twin_c), torch.optim.AdamW(twin_c.parameters(), lr=1e-4,
                                                                            weight_decay=0.1)),
    }, size


def measure(fns: dict, reps: int, sample_s: float) -> dict:
    """Compile time of the first call, then ``reps`` rounds of alternating samples."""
    first = {}
    for kind, fn in fns.items():
        start = time.perf_counter()
        fn()  # the compiled steps compile here, forward and backward
        first[kind] = time.perf_counter() - start
        fn()
    one = max(min(_time(fn, 1) for _ in range(3)) for fn in fns.values())
    calls = max(1, int(sample_s / one))
    times = {kind: [] for kind in fns}
    kinds = list(fns)
    for i in range(reps):
        for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:  # rotate who goes first
            times[kind].append(_time(fns[kind], calls))
    base = times["eager custom"]
    return dict(
        ms={k: statistics.median(v) * 1e3 for k, v in times.items()},
        vs_eager_custom={k: statistics.median(a / b for a, b in zip(v, base)) for k, v in times.items()},
        compiled_custom_vs={k: statistics.median(a / b for a, b in zip(times["compiled custom"], v))
                            for k, v in times.items()},
        compile_s={k: first[k] for k in ("compiled custom", "compiled torch.nn")},
        calls=calls, reps=reps)


def measure_generation(reps: int, device: torch.device) -> dict:
    """``generate --compile``: 500 tokens with the KV cache (``benchmarks/bench.py``'s generation
    setting), eager and compiled, alternating; the first compiled run, which compiles every
    shape the cache goes through, is timed apart."""
    from bench import GEN_CONFIG, GEN_TOKENS
    from customnn.models.gpt import GPTConfig
    from customnn.models.sampling import generate

    eager = GPT(GPTConfig(**GEN_CONFIG), seed=0).to(device)
    compiled = compile_model(GPT(GPTConfig(**GEN_CONFIG), seed=0).to(device), device, generation=True)
    models = {"eager": eager, "compiled": compiled}

    def run(model):
        return generate(model, [0], GEN_TOKENS, temperature=1.0,
                        generator=torch.Generator(device=device).manual_seed(1))

    start = time.perf_counter()
    tokens = {"compiled": run(compiled)}
    first = time.perf_counter() - start
    times = {k: [] for k in models}
    for i in range(reps):
        for k in (("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")):
            start = time.perf_counter()
            tokens[k] = run(models[k])
            times[k].append(time.perf_counter() - start)
    ms = {k: statistics.median(v) * 1e3 / GEN_TOKENS for k, v in times.items()}
    return dict(ms_per_token=ms, first_s=first, same_tokens=tokens["eager"] == tokens["compiled"],
                speedup=statistics.median(a / b for a, b in zip(times["eager"], times["compiled"])))


def _time(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def report(rows: list[dict], gen: dict | None, info: dict, args, seconds: float) -> str:
    lines = [f"# python benchmarks/compile.py --models {','.join(args.models)} --device {args.device} "
             f"--threads {args.threads} --reps {args.reps}" + (" --warm" if args.warm else ""),
             f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {info['cpu']}, {info['usable_cores']} of "
             f"{info['cores']} cores" + (f", {info['gpu']} (CUDA {info['cuda']})" if "gpu" in info else "")
             + f", torch {info['torch']}, {torch.get_num_threads()} thread(s), "
             f"load average before {info['load_average']} after {[round(x, 2) for x in os.getloadavg()]}",
             f"# one training step (forward, loss, backward, AdamW); medians of {args.reps} alternating "
             f"samples of ~{args.sample_s * 1e3:.0f} ms each; took {seconds:.0f} s; compile cache "
             f"{'as it was (--warm)' if args.warm else 'empty at the start'}", ""]
    lines.append(f"{'model':<20} {'size':<24} " + " ".join(f"{k + ' ms':>20}" for k in KINDS))
    for r in rows:
        lines.append(f"{r['name']:<20} {r['size']:<24} " + " ".join(f"{r['ms'][k]:>20.3f}" for k in KINDS))
    lines += ["", "time / eager custom's (per-round ratio, median)"]
    for r in rows:
        lines.append(f"{r['name']:<20} {'':<24} " + " ".join(f"{r['vs_eager_custom'][k]:>20.3f}" for k in KINDS))
    lines += ["", "compiled custom / each (below 1: compiled custom is faster)"]
    for r in rows:
        lines.append(f"{r['name']:<20} {'':<24} " + " ".join(f"{r['compiled_custom_vs'][k]:>20.3f}" for k in KINDS))
    lines += ["", "first call, compiling forward and backward (s)"]
    for r in rows:
        lines.append(f"{r['name']:<20} compiled custom {r['compile_s']['compiled custom']:.1f} s, "
                     f"compiled torch.nn {r['compile_s']['compiled torch.nn']:.1f} s")
    if gen is not None:
        lines += ["", f"generation, 500 tokens with the KV cache (block 256, L=4, C=128), medians of {args.reps}",
                  f"  eager {gen['ms_per_token']['eager']:.3f} ms/token, compiled "
                  f"{gen['ms_per_token']['compiled']:.3f} ms/token: compiled {gen['speedup']:.2f}x eager's speed; "
                  f"same tokens: {gen['same_tokens']}; first compiled run (compiling) {gen['first_s']:.1f} s"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gpt,cnn,generate",
                   help="comma-separated: gpt (nanogpt-cpu), cnn (seed), generate (500 tokens, KV cache)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--reps", type=int, default=9, help="samples of each step (default 9)")
    p.add_argument("--sample-s", type=float, default=0.3, help="seconds per sample (default 0.3)")
    p.add_argument("--warm", action="store_true",
                   help="use PyTorch's compile cache as it is (default: an empty one, so compiling is timed cold)")
    p.add_argument("--out", default=None, help=f"results file (default {DEFAULT_OUT}; empty: print only)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.out is None:
        args.out = DEFAULT_OUT.format(device=device.type)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if any(m not in ("gpt", "cnn", "generate") for m in args.models):
        p.error("--models takes gpt, cnn and/or generate")
    if not args.warm:  # an empty cache: "compile s" is what a first run on a new machine pays
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="customnn-compile-bench-")
    reason = compile_unavailable(device)
    if reason is not None:
        print(f"compile benchmark: {reason}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    info = machine(device)
    start = time.perf_counter()
    rows, gen = [], None
    for name in args.models:
        if name == "generate":
            gen = measure_generation(args.reps, device)
            print("  ... generate done", file=sys.stderr, flush=True)
            continue
        fns, size = steps(name, device)
        rows.append(dict(name=f"{name} {'nanogpt-cpu' if name == 'gpt' else 'seed'}", size=size,
                         **measure(fns, args.reps, args.sample_s)))
        print(f"  ... {name} done", file=sys.stderr, flush=True)
    text = report(rows, gen, info, args, time.perf_counter() - start)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
