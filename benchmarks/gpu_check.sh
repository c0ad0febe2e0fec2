#!/usr/bin/env bash
# GPU check (issue 5): the layers against PyTorch's on CUDA, our models against their torch.nn
# twins on CUDA, then `customnn bench --device cuda`. One prepared script for a machine with a
# CUDA GPU and PyTorch installed; the package need not be installed and no network is needed.
#
#   bash benchmarks/gpu_check.sh               # from the repository root
#   OUT=/some/dir bash benchmarks/gpu_check.sh # logs and JSON there (default bench-results/gpu)
#   BENCH_ARGS=--quick bash benchmarks/gpu_check.sh   # a shorter CUDA bench
#   CPU_BENCH=0 ...                            # skip the closing CPU bench (on by default)
#
# Steps (each with its own time limit; about 8 minutes in all, most of it the CUDA bench and compiling):
#   env      python, torch, CUDA, GPU, and which optional packages are importable
#   check    python -m customnn check --device cuda       (every layer, float64 and float32)
#   pytest   tests selected by -k cuda (tests/test_autocast.py runs every layer under CUDA autocast)
#   twins    our CNN and GPT against customnn_ref.twins on CUDA: same logits
#   bench    python -m customnn bench --device cuda --json $OUT/bench-cuda.json
#   compile  python benchmarks/compile.py --device cuda: --compile against eager, ours and torch.nn's
#   nccl     train gpt nanogpt-cpu on cuda, 1 process and torchrun (NCCL) at world size 1: steps/s
#   precision  train gpt nanogpt-cpu on cuda 200 steps at --precision 32, bf16, fp16: steps/s, loss
#   cpu      python -m customnn bench --quick --device cpu --threads 0 (an unloaded many-core CPU)
# The exit code is 0 when every step passed; $OUT/summary.txt has one line per step.

set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUSTOMNN_DATA="${CUSTOMNN_DATA:-$PWD/../shared/data}"
PY="${PYTHON:-python3}"
LOG="${OUT:-bench-results/gpu}"
mkdir -p "$LOG"
: > "$LOG/summary.txt"
status=0

# step NAME SECONDS COMMAND...: run with a time limit, log to $LOG/NAME.log, show its tail.
step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($limit s max): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
    local rc=$?
    tail -n 45 "$LOG/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    echo "$name exit=$rc seconds=$((SECONDS - start))" >> "$LOG/summary.txt"
    return $rc
}

step env 60 "$PY" - <<'EOF' || status=1
import importlib, platform, sys
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu:", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
for name in ("customnn", "customnn_ref.twins", "safetensors", "numpy", "tqdm", "hypothesis", "pytest",
             "matplotlib", "PIL"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name:<20} ok   {getattr(mod, '__version__', '')}")
    except Exception as e:  # missing optional packages are reported, not fatal
        print(f"  {name:<20} MISSING ({type(e).__name__}: {e})")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
[ $status -eq 0 ] || { echo "no CUDA device: stopping"; exit 1; }

step check 150 "$PY" -m customnn check --device cuda || status=1

if "$PY" -c "import pytest" 2>/dev/null; then
    step pytest 120 "$PY" -m pytest -q -p no:cacheprovider -k cuda --continue-on-collection-errors tests/
    rc=$?
    if [ $rc -eq 5 ]; then
        echo "(no test is parametrized for CUDA yet: nothing selected by -k cuda)"
    elif [ $rc -ne 0 ]; then
        status=1
    fi
else
    echo "pytest is not installed here: CUDA pytest step skipped" | tee -a "$LOG/summary.txt"
fi

step twins 90 "$PY" - <<'EOF' || status=1
import torch
from customnn.models.cnn import CustomCNN
from customnn.models.gpt import GPT, GPTConfig
from customnn_ref.twins import cnn_twin, gpt_twin
dev = torch.device("cuda")
worst = 0.0
for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for arch in ("seed", "default"):
        model = CustomCNN(arch, seed=0, dropout=0.0).to(dev, dtype)
        x = torch.randn(16, 1, 28, 28, device=dev, dtype=dtype)
        err = (model(x)[0] - cnn_twin(model)(x)[0]).abs().max().item()
        print(f"cnn {arch:<8} {str(dtype):<14} max |ours - twin| = {err:.2e}")
        assert err < tol, (arch, dtype, err)
    for bias in (True, False):
        model = GPT(GPTConfig(vocab_size=65, block_size=64, bias=bias), seed=0).to(dev, dtype)
        idx = torch.randint(0, 65, (4, 64), device=dev)
        err = (model(idx)[0] - gpt_twin(model)(idx)[0]).abs().max().item()
        print(f"gpt bias={bias!s:<5} {str(dtype):<14} max |ours - twin| = {err:.2e}")
        assert err < tol, (bias, dtype, err)
print("twins OK")
EOF

# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
step bench 330 "$PY" -m customnn bench --device cuda --json "$LOG/bench-cuda.json" ${BENCH_ARGS:-} || status=1

step compile 300 "$PY" benchmarks/compile.py --device cuda --reps 5 --out "$LOG/cuda-compile.txt" || status=1

step nccl 240 "$PY" - "$LOG/nccl" <<'EOF' || status=1
import subprocess, sys
from pathlib import Path
from customnn.train.checkpoint import load_checkpoint
out = Path(sys.argv[1])
args = ["-m", "customnn", "train", "gpt", "--preset", "nanogpt-cpu", "--device", "cuda", "--max-steps", "200",
        "--eval-interval", "100000", "--eval-iters", "1", "--quiet"]
for name, launch in (("1 process", [sys.executable]),
                     ("torchrun, NCCL, world size 1", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       "--nproc-per-node=1"])):
    folder = out / name.split(",")[0].replace(" ", "-")
    p = subprocess.run([*launch, *args, "--out", str(folder)], capture_output=True, text=True, timeout=200)
    if p.returncode != 0:
        print(name, "FAILED", p.stderr[-2000:])
        sys.exit(1)
    (run,) = folder.iterdir()
    e = load_checkpoint(run / "last.safetensors").state["engine"]
    print(f"{name:<30} {e['step'] / e['train_time']:8.1f} steps/s ({e['step']} steps in {e['train_time']:.2f} s)")
EOF

step precision 240 "$PY" - "$LOG/precision" <<'EOF' || status=1
import subprocess, sys
from pathlib import Path
from customnn.train.checkpoint import load_checkpoint
out = Path(sys.argv[1])
for precision in ("32", "bf16", "fp16"):
    folder = out / precision
    p = subprocess.run([sys.executable, "-m", "customnn", "train", "gpt", "--preset", "nanogpt-cpu", "--device", "cuda",
                        "--max-steps", "200", "--eval-interval", "100000", "--eval-iters", "1", "--quiet",
                        "--precision", precision, "--out", str(folder)], capture_output=True, text=True, timeout=70)
    if p.returncode != 0:
        print(precision, "FAILED", p.stderr[-2000:])
        sys.exit(1)
    (run,) = folder.iterdir()
    state = load_checkpoint(run / "last.safetensors").state
    e, rows = state["engine"], (run / "metrics.jsonl").read_text().splitlines()
    last = ([r for r in rows if '"train"' in r] or ["none"])[-1]
    print(f"--precision {precision:<5} {e['step'] / e['train_time']:8.1f} steps/s; last train row {last}; "
          f"scaler {state.get('precision')}")
EOF

if [ "${CPU_BENCH:-1}" != "0" ]; then
    step cpu 120 "$PY" -m customnn bench --quick --device cpu --threads 0 --json "$LOG/bench-cpu-quick.json" \
        || status=1
fi

echo "=== summary ($LOG/summary.txt)"
cat "$LOG/summary.txt"
exit $status
