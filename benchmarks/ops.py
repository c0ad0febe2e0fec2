"""Layer benchmark: each custom layer's forward+backward time against PyTorch's twin.

    python benchmarks/ops.py            # about a minute on a 2-core CPU
    python benchmarks/ops.py --quick    # a few seconds, fewer repetitions
    python benchmarks/ops.py --threads 0  # torch's default thread count (default here: 1)

Sizes are the ones the models use: the MNIST CNNs at batch 64 (the seed net's 5x5
convolutions, the bigger net's 3x3 padded convolutions with batch norm, and issue 25's net of
5x5 padded convolutions with 32 and 64 channels, ``conv5`` in benchmarks/textbook.py) and the GPT at
B=12, T=64, C=128 with 4 heads. For every layer both versions run on their own copies of
the same inputs, with the same upstream gradient, alternating custom / PyTorch in one
process; each sample times enough calls to last about 50 ms (21 samples each); the table
shows the median per call and the ratio custom / PyTorch (below 1: ours is faster).

``bench_layers(quick=False) -> list[dict]`` is importable (``customnn bench`` may reuse it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from customnn import ops

# (group, layer, shape description, builder); a builder returns (custom step, torch step),
# each a function that runs one forward and backward.
Case = tuple[str, str, str, Callable[[], tuple[Callable[[], None], Callable[[], None]]]]


def _step(fn, inputs, dout=None):
    """A function that runs fn(*inputs) forward and backward, grads reset each time."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if dout is None:
        dout = torch.randn_like(fn(*inputs))

    def step():
        for t in leaves:
            t.grad = None
        fn(*inputs).backward(dout)

    return step


def _pair(ours, theirs, *shapes, extra=None):
    """Steps for ours and PyTorch's on separate copies of the same random inputs.

    ``extra`` are non-differentiable inputs (indices, targets) appended to both.
    """
    base = [torch.randn(s) for s in shapes]
    a = [t.clone().requires_grad_(True) for t in base] + list(extra or [])
    b = [t.clone().requires_grad_(True) for t in base] + list(extra or [])
    y = ours(*a)
    dout = torch.randn_like(y)
    return _step(ours, a, dout), _step(theirs, b, dout)


def _linear(n_in, n_out, lead):
    """Our (in, out) weight against PyTorch's own (out, in) layout, same values."""
    x, w, bias = torch.randn(*lead, n_in), torch.randn(n_in, n_out) / n_in**0.5, torch.randn(n_out)
    a = [x.clone().requires_grad_(True), w.clone().requires_grad_(True), bias.clone().requires_grad_(True)]
    b = [x.clone().requires_grad_(True), w.T.contiguous().requires_grad_(True), bias.clone().requires_grad_(True)]
    dout = torch.randn(*lead, n_out)
    return _step(ops.linear, a, dout), _step(F.linear, b, dout)


def _batch_norm(shape):
    c = shape[1]
    rm_a, rv_a, rm_b, rv_b = torch.zeros(c), torch.ones(c), torch.zeros(c), torch.ones(c)
    return _pair(lambda x, w, b: ops.batch_norm(x, w, b, rm_a, rv_a, True),
                 lambda x, w, b: F.batch_norm(x, rm_b, rv_b, w, b, True), shape, (c,), (c,))


def _embedding(vocab, dim, idx_shape):
    idx = torch.randint(0, vocab, idx_shape)
    return _pair(lambda w, i: ops.embedding(i, w), lambda w, i: F.embedding(i, w), (vocab, dim), extra=[idx])


def _cross_entropy(n, c):
    target = torch.randint(0, c, (n,))
    return _pair(ops.cross_entropy, F.cross_entropy, (n, c), extra=[target])


def cases() -> list[Case]:
    B, T, C, nh, V = 12, 64, 128, 4, 65  # the GPT's default preset
    N = 64  # MNIST batch
    sdpa = F.scaled_dot_product_attention
    return [
        ("cnn seed", "conv2d 1->6 5x5", "64x1x28x28",
         lambda: _pair(ops.conv2d, F.conv2d, (N, 1, 28, 28), (6, 1, 5, 5), (6,))),
        ("cnn seed", "relu", "64x6x24x24", lambda: _pair(ops.relu, F.relu, (N, 6, 24, 24))),
        ("cnn seed", "max_pool2d 2", "64x6x24x24",
         lambda: _pair(lambda x: ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), (N, 6, 24, 24))),
        ("cnn seed", "conv2d 6->12 5x5", "64x6x12x12",
         lambda: _pair(ops.conv2d, F.conv2d, (N, 6, 12, 12), (12, 6, 5, 5), (12,))),
        ("cnn seed", "max_pool2d 2", "64x12x8x8",
         lambda: _pair(lambda x: ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), (N, 12, 8, 8))),
        ("cnn seed", "flatten", "64x12x4x4", lambda: _pair(ops.flatten, lambda x: x.flatten(1), (N, 12, 4, 4))),
        ("cnn seed", "linear 192->10", "64x192", lambda: _linear(192, 10, (N,))),
        ("cnn seed", "cross_entropy", "64x10", lambda: _cross_entropy(N, 10)),
        ("cnn big", "conv2d 1->32 3x3 p1", "64x1x28x28",
         lambda: _pair(lambda x, w, b: ops.conv2d(x, w, b, padding=1), lambda x, w, b: F.conv2d(x, w, b, padding=1),
                       (N, 1, 28, 28), (32, 1, 3, 3), (32,))),
        ("cnn big", "batch_norm train", "64x32x28x28", lambda: _batch_norm((N, 32, 28, 28))),
        ("cnn big", "max_pool2d 2", "64x32x28x28",
         lambda: _pair(lambda x: ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), (N, 32, 28, 28))),
        ("cnn big", "conv2d 32->64 3x3 p1", "64x32x14x14",
         lambda: _pair(lambda x, w, b: ops.conv2d(x, w, b, padding=1), lambda x, w, b: F.conv2d(x, w, b, padding=1),
                       (N, 32, 14, 14), (64, 32, 3, 3), (64,))),
        ("cnn big", "batch_norm train", "64x64x14x14", lambda: _batch_norm((N, 64, 14, 14))),
        ("cnn big", "avg_pool2d 2", "64x64x14x14",
         lambda: _pair(lambda x: ops.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2), (N, 64, 14, 14))),
        ("conv5", "conv2d 1->32 5x5 p2", "64x1x28x28",
         lambda: _pair(lambda x, w, b: ops.conv2d(x, w, b, padding=2), lambda x, w, b: F.conv2d(x, w, b, padding=2),
                       (N, 1, 28, 28), (32, 1, 5, 5), (32,))),
        ("conv5", "relu", "64x32x28x28", lambda: _pair(ops.relu, F.relu, (N, 32, 28, 28))),
        ("conv5", "max_pool2d 2", "64x32x28x28",
         lambda: _pair(lambda x: ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), (N, 32, 28, 28))),
        ("conv5", "conv2d 32->64 5x5 p2", "64x32x14x14",
         lambda: _pair(lambda x, w, b: ops.conv2d(x, w, b, padding=2), lambda x, w, b: F.conv2d(x, w, b, padding=2),
                       (N, 32, 14, 14), (64, 32, 5, 5), (64,))),
        ("conv5", "relu", "64x64x14x14", lambda: _pair(ops.relu, F.relu, (N, 64, 14, 14))),
        ("conv5", "max_pool2d 2", "64x64x14x14",
         lambda: _pair(lambda x: ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), (N, 64, 14, 14))),
        ("conv5", "linear 3136->256", "64x3136", lambda: _linear(3136, 256, (N,))),
        ("conv5", "relu", "64x256", lambda: _pair(ops.relu, F.relu, (N, 256))),
        ("conv5", "linear 256->10", "64x256", lambda: _linear(256, 10, (N,))),
        ("gpt", "embedding 65x128", "12x64", lambda: _embedding(V, C, (B, T))),
        ("gpt", "layer_norm", "12x64x128",
         lambda: _pair(ops.layer_norm, lambda x, w, b: F.layer_norm(x, (C,), w, b), (B, T, C), (C,), (C,))),
        ("gpt", "linear 128->384", "12x64x128", lambda: _linear(C, 3 * C, (B, T))),
        ("gpt", "linear 128->512", "12x64x128", lambda: _linear(C, 4 * C, (B, T))),
        ("gpt", "linear 512->128", "12x64x512", lambda: _linear(4 * C, C, (B, T))),
        ("gpt", "gelu", "12x64x512", lambda: _pair(ops.gelu, F.gelu, (B, T, 4 * C))),
        ("gpt", "gelu tanh", "12x64x512",
         lambda: _pair(lambda x: ops.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"),
                       (B, T, 4 * C))),
        ("gpt", "attention causal", "12x4x64x32",
         lambda: _pair(ops.attention, lambda q, k, v: sdpa(q, k, v, is_causal=True),
                       *[(B, nh, T, C // nh)] * 3)),
        ("gpt", "softmax", "12x4x64x64", lambda: _pair(ops.softmax, lambda x: F.softmax(x, dim=-1), (B, nh, T, T))),
        ("gpt", "cross_entropy 65", "768x65", lambda: _cross_entropy(B * T, V)),
    ]


def _time(step: Callable[[], None], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls


def bench_layers(quick: bool = False, threads: int | None = None) -> list[dict]:
    """Median milliseconds per forward+backward of each custom layer and PyTorch's, alternating.

    ``threads`` sets ``torch.set_num_threads`` for the run (restored afterwards); None keeps it.
    """
    reps, sample_s = (5, 0.01) if quick else (21, 0.05)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(cases(), reps, sample_s)
    finally:
        torch.set_num_threads(old_threads)


def _bench(all_cases: list[Case], reps: int, sample_s: float) -> list[dict]:
    torch.manual_seed(0)
    results = []
    for group, layer, shape, build in all_cases:
        ours, theirs = build()
        ours(), theirs()  # warm up (allocations, caches)
        # calls per sample so that one sample lasts about sample_s
        one = max(_time(ours, 1), _time(theirs, 1), 1e-6)
        calls = max(1, int(sample_s / one))
        t_ours, t_theirs = [], []
        for _ in range(reps):
            t_ours.append(_time(ours, calls))
            t_theirs.append(_time(theirs, calls))
        custom, pytorch = statistics.median(t_ours), statistics.median(t_theirs)
        results.append(dict(group=group, layer=layer, shape=shape, custom_ms=custom * 1e3,
                            torch_ms=pytorch * 1e3, ratio=custom / pytorch, calls=calls, reps=reps,
                            threads=torch.get_num_threads()))
    return results


def format_table(results: list[dict]) -> str:
    lines = [f"{'model':<9} {'layer':<22} {'input':<13} {'custom ms':>10} {'torch ms':>9} {'ratio':>6}",
             "-" * 74]
    for r in results:
        lines.append(f"{r['group']:<9} {r['layer']:<22} {r['shape']:<13} {r['custom_ms']:>10.3f} "
                     f"{r['torch_ms']:>9.3f} {r['ratio']:>6.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadier on a shared machine; 0 = torch's default)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = bench_layers(quick=args.quick, threads=args.threads or None)
    print(f"forward+backward, float32, CPU, torch {torch.__version__}, {results[0]['threads']} thread(s); "
          f"median of {results[0]['reps']} alternating samples")
    print(format_table(results))
    worst = max(results, key=lambda r: r["ratio"])
    print(f"slowest relative to PyTorch: {worst['layer']} ({worst['group']}) at {worst['ratio']:.2f}x; "
          f"took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
