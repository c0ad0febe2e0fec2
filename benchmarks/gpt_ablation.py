"""The GPT's options, one at a time and together, in the default preset's 580 s budget.

Two parts, so that a shared machine does not decide the result:

1. ``speed``: the wall time of one training step (forward, backward, clip, optimizer) of each
   configuration at torch's default thread count, measured alternating in one process, and the
   steps each fits in the 580 s budget (the closing reserve and evaluations taken out as the
   planner in customnn/train/budget.py does):

       python benchmarks/gpt_ablation.py speed > benchmarks/results/cpu-gpt-ablation-speed.json

2. ``run NAME SEED SPEED.json [FRACTION]``: that configuration trained for its step count
   (``--time-budget 0 --max-iters N``; times FRACTION for a shorter budget), so the loss
   reached does not depend on what else the machine runs:

       python benchmarks/gpt_ablation.py run rope 1337 benchmarks/results/cpu-gpt-ablation-speed.json

   prints one JSON line: name, seed, steps, final val loss and bits per byte, wall seconds.

3. ``table RESULTS.jsonl SPEED.json``: the README's table from those lines.

A name ``NAME@DIR`` is configuration NAME trained on the corpus DIR (``--text DIR``) instead of
Tiny Shakespeare, e.g. ``default@/tmp/pytext`` (benchmarks/text_tokens.py writes that corpus).
"""
import json, statistics, subprocess, sys, time

CONFIGS = {  # name -> flags of `customnn train gpt` over the default preset
    "default": [],
    "rmsnorm": ["--norm", "rmsnorm"],
    "rope": ["--pos", "rope"],
    "swiglu": ["--mlp", "swiglu"],
    "qk-norm": ["--qk-norm"],
    "muon": ["--optimizer", "muon"],
    "rope+muon": ["--pos", "rope", "--optimizer", "muon"],
    "all": ["--norm", "rmsnorm", "--pos", "rope", "--mlp", "swiglu", "--qk-norm", "--optimizer", "muon"],
    # byte-level BPE instead of characters (compare them in bits per byte, not loss per token)
    "bpe-512": ["--tokenizer", "bpe", "--vocab-size", "512"],
    "bpe-1024": ["--tokenizer", "bpe", "--vocab-size", "1024"],
    "bpe-2048": ["--tokenizer", "bpe", "--vocab-size", "2048"],
    # the forward under bfloat16 autocast (float32 master weights): more steps against rounding
    "bf16": ["--precision", "bf16"],
    "bpe-2048-bf16": ["--tokenizer", "bpe", "--vocab-size", "2048", "--precision", "bf16"],
    "rope+muon-bf16": ["--pos", "rope", "--optimizer", "muon", "--precision", "bf16"],
    "bpe-2048-bf16-drop0.2": ["--tokenizer", "bpe", "--vocab-size", "2048", "--precision", "bf16", "--dropout", "0.2"],
}
BUDGET_S, RESERVE_S = 580.0, 5.0


def flags_of(name):
    """The flags of configuration ``name``, or of ``NAME@DIR``: NAME's on the corpus DIR."""
    name, _, text = name.partition("@")
    return CONFIGS[name] + (["--text", text] if text else [])


def number(key, value):
    """A flag's value as the config's field holds it: a string field keeps it (``--precision 32``)."""
    from dataclasses import fields

    from customnn.train.gpt_config import GPTTrainConfig

    kind = {f.name: str(f.type) for f in fields(GPTTrainConfig)}.get(key, "")
    for name, cast in (("str", str), ("int", int), ("float", float)):
        if kind.startswith(name):
            return cast(value)
    return value


def overrides(flags):
    out, i = {}, 0
    while i < len(flags):
        key = flags[i][2:].replace("-", "_")
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            value = flags[i + 1]
            out[key], i = number(key, value), i + 2
        else:
            out[key], i = True, i + 1
    return out


def speed(names, rounds=12, steps=10):
    import torch
    from customnn.optim import clip_grad_norm_
    from customnn.core.runtime import tune_allocator
    from customnn.train.gpt import GPTTrainer, make_config
    from customnn.train.precision import run_precision

    tune_allocator()
    trainers = {}
    for name in names:
        t = GPTTrainer(make_config("default", **overrides(flags_of(name))))
        t.setup(torch.device("cpu"), None)
        t.precision = run_precision(t.cfg, "cpu")  # as the engine sets it
        trainers[name] = t

    def run(t, n):
        start = time.perf_counter()
        for s in range(n):
            t.before_step(s)
            with t.precision.autocast():
                t.train_step(s)
            clip_grad_norm_(t.model.parameters(), 1.0)
            t.optimizer.step()
            t.optimizer.zero_grad()
        return (time.perf_counter() - start) / n

    def evaluation(t):
        start = time.perf_counter()
        t.evaluate(0)
        return time.perf_counter() - start

    for t in trainers.values():
        run(t, 20)  # warm up
    times = {n: [] for n in names}
    for _ in range(rounds):
        for n, t in trainers.items():
            times[n].append(run(t, steps))
    evals = {n: statistics.median(evaluation(t) for _ in range(3)) for n, t in trainers.items()}
    out = {"threads": torch.get_num_threads(), "budget_s": BUDGET_S, "configs": {}}
    for n in names:
        step_s = statistics.median(times[n])
        every = trainers[n].cfg.eval_interval
        # steps N with N * step + (N / every + 1) * eval <= budget - reserve
        fits = int((BUDGET_S - RESERVE_S - evals[n]) / (step_s + evals[n] / every))
        ratio = statistics.median(a / b for a, b in zip(times[n], times[names[0]]))  # vs the first named
        out["configs"][n] = {"step_ms": round(step_s * 1e3, 2), "eval_s": round(evals[n], 3),
                             "vs_default": round(ratio, 3), "steps": fits}
    return out


def train_one(name, seed, speed_file, fraction=1.0):
    steps = int(json.load(open(speed_file))["configs"][name]["steps"] * fraction)
    cmd = [sys.executable, "-m", "customnn", "train", "gpt", *flags_of(name), "--seed", str(seed),
           "--time-budget", "0", "--max-iters", str(steps), "--out", f"/tmp/ablation/{name.replace('/', '_')}-{seed}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    evals = [l for l in proc.stdout.splitlines() if l.startswith("step ") and "val loss" in l]
    figures = dict(part.strip().rsplit(" ", 1) for part in evals[-1].split(":", 1)[1].split(","))
    return {"name": name, "seed": seed, "steps": steps, "val_loss": float(figures["val loss"]),
            "val_bpb": float(figures.get("val bpb", "nan")), "wall_s": round(wall, 1), "last_eval": evals[-1]}


def table(results_file, speed_file):
    speed = json.load(open(speed_file))["configs"]
    runs = [json.loads(line) for line in open(results_file) if line.strip()]
    seeds = sorted({r["seed"] for r in runs}, key=lambda s: (s != 1337, s))
    lines = ["| configuration | flags | step time vs default | steps in 580 s | "
             + " | ".join(f"val loss, seed {s}" for s in seeds) + " | mean |",
             "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in seeds) + " | ---: |"]
    for name in CONFIGS:
        got = {r["seed"]: r["val_loss"] for r in runs if r["name"] == name}
        if not got:
            continue
        cells = [f"{got[s]:.4f}" if s in got else "" for s in seeds]
        mean = f"{statistics.mean(got.values()):.4f}" if len(got) == len(seeds) else ""
        flags = " ".join(CONFIGS[name]) or "(the default preset)"
        lines.append(f"| {name} | `{flags}` | {speed[name]['vs_default']:.2f}x | {speed[name]['steps']} | "
                     + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "table":
        print(table(sys.argv[2], sys.argv[3]))
    elif sys.argv[1] == "speed":
        print(json.dumps(speed(sys.argv[2:] or list(CONFIGS)), indent=1))
    else:
        fraction = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
        print(json.dumps(train_one(sys.argv[2], int(sys.argv[3]), sys.argv[4], fraction)), flush=True)
