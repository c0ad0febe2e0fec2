"""``customnn check``: every layer against PyTorch's own, forward and every gradient, as a table.

    customnn check                      # float64 and float32, on the CPU (or CUDA if present)
    customnn check --dtype float64 --device cpu --seed 0

For each layer in ``customnn.ops`` (and the three readable loop references) it builds random
inputs in a few awkward configurations (odd sizes, batch 1, strides, padding, dilation,
non-contiguous views), runs our layer and PyTorch's twin on fresh copies of the same inputs,
pushes one random upstream gradient through both, and prints one row per layer and dtype:
the largest forward error and the largest gradient error for each input, over all its
configurations. An error is ``max |ours - torch| / max(max |torch|, 1)`` (as in
``tests/oracle.py``); a row is OK when every error is at most 1e-10 (float64) or 1e-5
(float32). The exit code is 0 when every row is OK, 1 otherwise.

This module calls ``torch.nn.functional``: PyTorch's layers are the *reference* here,
exactly as in the tests and benchmarks (DESIGN.md: "Tests and benchmarks use PyTorch's
layers freely, as the reference"). That is why it lives in ``customnn_ref``, the package of
PyTorch references beside the library, and not in ``customnn/``, which never touches
``torch.nn`` (tests/test_purity.py checks every file there).

Entry points: ``add_arguments(parser)`` and ``run(args)``, wired into ``customnn/cli.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
DTYPES = {"float64": [torch.float64], "float32": [torch.float32], "both": [torch.float64, torch.float32]}


@dataclass
class Trial:
    """One configuration of a layer: both functions and their named inputs.

    ``inputs`` are (name, tensor, wants_grad). ``ours`` and ``ref`` take the tensors in
    order and return the output, or a tuple (output, extra, ...) whose extras (batch norm's
    running statistics) are compared like the output but not differentiated.
    """

    ours: Callable
    ref: Callable
    inputs: list[tuple[str, torch.Tensor, bool]]


@dataclass
class Row:
    layer: str
    dtype: torch.dtype
    forward: float = 0.0
    grads: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # an exception our layer raised, if any

    @property
    def ok(self) -> bool:
        tol = TOL[self.dtype]
        errs = [self.forward, *self.grads.values()]
        return self.error is None and all(e <= tol for e in errs)  # NaN is not <= tol: FAIL


def max_rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of the reference."""
    if ours.shape != ref.shape:
        raise ValueError(f"output shape {tuple(ours.shape)} != PyTorch's {tuple(ref.shape)}")
    if ref.numel() == 0:
        return 0.0
    scale = ref.detach().abs().max().item()
    diff = (ours.detach().double() - ref.detach().double()).abs().max().item()
    return diff / max(scale, 1.0)


def run_trial(trial: Trial, seed: int) -> tuple[float, dict[str, float]]:
    """Forward and backward through both on fresh leaf copies; (forward error, grad errors)."""

    def leaves():
        return [t.detach().clone().requires_grad_(g) if g else t.clone() for _, t, g in trial.inputs]

    a, b = leaves(), leaves()
    out_a, out_b = trial.ours(*a), trial.ref(*b)
    out_a = out_a if isinstance(out_a, tuple) else (out_a,)
    out_b = out_b if isinstance(out_b, tuple) else (out_b,)
    forward = max(max_rel_err(x, y) for x, y in zip(out_a, out_b))
    ya, yb = out_a[0], out_b[0]
    grads = {}
    if yb.requires_grad:
        g = torch.Generator().manual_seed(seed)
        dout = torch.randn(yb.shape, generator=g, dtype=torch.float64).to(yb.dtype).to(yb.device)
        if not ya.requires_grad:
            raise ValueError("our output does not require grad")
        ya.backward(dout)
        yb.backward(dout)
        for (name, _, wants), ta, tb in zip(trial.inputs, a, b):
            if wants:
                if ta.grad is None:
                    raise ValueError(f"our layer gave no gradient for {name}")
                grads["d" + name] = max_rel_err(ta.grad, tb.grad)
    return forward, grads


# --- the layers and their configurations ---------------------------------------------------
# Each entry: row name -> function(make) returning a list of Trials. ``make(*shape)`` draws
# a random float64 tensor from the check's generator and casts it to the dtype and device.


def _layers(ops, F, make, integers) -> dict[str, Callable[[], list[Trial]]]:
    def conv():
        x, w, b = make(2, 3, 9, 7), make(4, 3, 3, 2), make(4)
        x2 = make(1, 8, 8, 2).permute(0, 3, 1, 2)  # non-contiguous (channels last) input
        w2 = make(3, 2, 5, 5)
        return [
            Trial(lambda x, w, b: ops.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
                  lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
                  [("x", x, True), ("w", w, True), ("b", b, True)]),
            Trial(lambda x, w: ops.conv2d(x, w, None, stride=3, padding=2),
                  lambda x, w: F.conv2d(x, w, None, stride=3, padding=2),
                  [("x", x2, True), ("w", w2, True)]),
        ]

    def conv_ref():
        x, w, b = make(1, 2, 6, 5), make(3, 2, 3, 2), make(3)
        return [Trial(lambda x, w, b: ops.conv2d_reference(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2)),
                      lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=1, dilation=(1, 2)),
                      [("x", x, True), ("w", w, True), ("b", b, True)])]

    def pad():
        x = make(2, 3, 5, 4)
        return [
            Trial(lambda x: ops.pad2d(x, (1, 2, 0, 3), value=0.5), lambda x: F.pad(x, (1, 2, 0, 3), value=0.5),
                  [("x", x, True)]),
            Trial(lambda x: ops.pad2d(x, 2), lambda x: F.pad(x, (2, 2, 2, 2)), [("x", x.transpose(2, 3), True)]),
        ]

    def max_pool():
        ties = make(2, 2, 6, 6).round()  # many equal values: PyTorch's tie-breaking
        return [
            Trial(lambda x: ops.max_pool2d(x, 3, stride=2, padding=1), lambda x: F.max_pool2d(x, 3, stride=2, padding=1),
                  [("x", make(2, 3, 9, 8), True)]),
            Trial(lambda x: ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), [("x", make(1, 2, 7, 7), True)]),
            Trial(lambda x: ops.max_pool2d(x, (3, 2), stride=(1, 2)), lambda x: F.max_pool2d(x, (3, 2), stride=(1, 2)),
                  [("x", ties, True)]),
        ]

    def max_pool_ref():
        return [Trial(lambda x: ops.max_pool2d_reference(x, 3, stride=2, padding=1),
                      lambda x: F.max_pool2d(x, 3, stride=2, padding=1), [("x", make(1, 2, 7, 6), True)])]

    def avg_pool():
        return [
            Trial(lambda x: ops.avg_pool2d(x, 3, stride=2, padding=1), lambda x: F.avg_pool2d(x, 3, stride=2, padding=1),
                  [("x", make(2, 3, 9, 8), True)]),
            Trial(lambda x: ops.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2), [("x", make(1, 2, 7, 7), True)]),
        ]

    def elementwise(ours, ref):
        def trials():
            x = make(3, 17)
            x[0, :4] = 0.0  # exact zeros, where relu's gradient is a convention
            return [Trial(ours, ref, [("x", x, True)]), Trial(ours, ref, [("x", make(4, 2, 5).transpose(0, 2), True)])]
        return trials

    def flatten():
        return [Trial(lambda x: ops.flatten(x), lambda x: x.flatten(1), [("x", make(2, 3, 4, 5).transpose(1, 3), True)])]

    def linear():
        return [
            Trial(lambda x, w, b: ops.linear(x, w, b), lambda x, w, b: F.linear(x, w.T, b),
                  [("x", make(5, 7), True), ("w", make(7, 3), True), ("b", make(3), True)]),
            Trial(lambda x, w: ops.linear(x, w), lambda x, w: F.linear(x, w.T),
                  [("x", make(2, 5, 7).transpose(0, 1), True), ("w", make(7, 1), True)]),
        ]

    def embedding():
        idx = integers(0, 11, (3, 5))
        idx[0, :3] = 4  # a row used several times: its gradient adds up
        return [Trial(lambda i, w: ops.embedding(i, w), lambda i, w: F.embedding(i, w),
                      [("idx", idx, False), ("w", make(11, 6), True)])]

    def softmaxes(ours, ref):
        def trials():
            return [Trial(lambda x: ours(x, dim=-1), lambda x: ref(x, dim=-1), [("x", make(4, 9) * 5, True)]),
                    Trial(lambda x: ours(x, dim=1), lambda x: ref(x, dim=1), [("x", make(2, 5, 3), True)])]
        return trials

    def cross_entropy():
        n, c = 9, 7
        target = integers(0, c, (n,))
        ignored = target.clone()
        ignored[::3] = -100
        trials = []
        for kw, t in ((dict(), target), (dict(reduction="sum", label_smoothing=0.1), target),
                      (dict(reduction="none"), target), (dict(ignore_index=-100, label_smoothing=0.2), ignored)):
            trials.append(Trial(lambda x, t, kw=kw: ops.cross_entropy(x, t, **kw),
                                lambda x, t, kw=kw: F.cross_entropy(x, t, **kw),
                                [("logits", make(n, c) * 3, True), ("target", t, False)]))
        return trials

    def layer_norm():
        return [Trial(lambda x, w, b: ops.layer_norm(x, w, b), lambda x, w, b: F.layer_norm(x, (10,), w, b),
                      [("x", make(4, 7, 10) * 2 + 1, True), ("w", make(10), True), ("b", make(10), True)]),
                Trial(lambda x, w, b: ops.layer_norm(x, w, b, eps=1e-3),
                      lambda x, w, b: F.layer_norm(x, (3,), w, b, eps=1e-3),
                      [("x", make(3, 5).T, True), ("w", make(3), True), ("b", make(3), True)])]

    def batch_norm(training):
        def trials():
            out = []
            for shape in ((4, 3, 5, 5), (6, 5)):
                c = shape[1]
                rm, rv = make(c), make(c).abs() + 0.5

                def ours(x, w, b, rm, rv):
                    y = ops.batch_norm(x, w, b, rm, rv, training, momentum=0.2, eps=1e-4)
                    return y, rm, rv

                def ref(x, w, b, rm, rv):
                    y = F.batch_norm(x, rm, rv, w, b, training, momentum=0.2, eps=1e-4)
                    return y, rm, rv

                out.append(Trial(ours, ref, [("x", make(*shape) * 2 + 1, True), ("w", make(c), True),
                                             ("b", make(c), True), ("running_mean", rm, False),
                                             ("running_var", rv, False)]))
            return out
        return trials

    def dropout():
        p = 0.3
        kept = {}

        def ours(x):
            y = ops.dropout(x, p, True)
            kept["mask"] = y.detach() != 0  # x has no zeros, so this is the mask our layer drew
            return y

        def ref(x):  # PyTorch's inverted dropout with the mask recovered from ours
            return x * kept["mask"] / (1 - p)

        x = make(6, 50)
        return [Trial(ours, ref, [("x", x, True)]),
                Trial(lambda x: ops.dropout(x, 0.0, True), lambda x: F.dropout(x, 0.0, True), [("x", x, True)]),
                Trial(lambda x: ops.dropout(x, 0.5, False), lambda x: F.dropout(x, 0.5, False), [("x", x, True)])]

    def attention(fn):
        def trials():
            qkv = make(2, 7, 3 * 15)  # a GPT's (B, T, 3C) projection, split into 3 heads of 5

            def heads(f, causal):
                def g(z):
                    q, k, v = (t.reshape(2, 7, 3, 5).transpose(1, 2) for t in z.split(15, dim=2))
                    return f(q, k, v, causal)
                return g

            sdpa = F.scaled_dot_product_attention
            return [
                Trial(heads(fn, True), heads(lambda q, k, v, c: sdpa(q, k, v, is_causal=c), True), [("qkv", qkv, True)]),
                Trial(lambda q, k, v: fn(q, k, v, False), lambda q, k, v: sdpa(q, k, v, is_causal=False),
                      [("q", make(1, 2, 1, 4), True), ("k", make(1, 2, 6, 4), True), ("v", make(1, 2, 6, 4), True)]),
                Trial(lambda q, k, v: fn(q, k, v, True), lambda q, k, v: sdpa(q, k, v, is_causal=True),
                      [("q", make(3, 1, 5, 3), True), ("k", make(3, 1, 5, 3), True), ("v", make(3, 1, 5, 3), True)]),
            ]
        return trials

    return {
        "conv2d": conv,
        "pad2d": pad,
        "max_pool2d": max_pool,
        "avg_pool2d": avg_pool,
        "relu": elementwise(lambda x: ops.relu(x), F.relu),
        "gelu": elementwise(lambda x: ops.gelu(x), F.gelu),
        "gelu (tanh)": elementwise(lambda x: ops.gelu(x, approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
        "flatten": flatten,
        "linear": linear,
        "embedding": embedding,
        "softmax": softmaxes(lambda x, dim: ops.softmax(x, dim), F.softmax),
        "log_softmax": softmaxes(lambda x, dim: ops.log_softmax(x, dim), F.log_softmax),
        "cross_entropy": cross_entropy,
        "layer_norm": layer_norm,
        "batch_norm (train)": batch_norm(True),
        "batch_norm (eval)": batch_norm(False),
        "dropout": dropout,
        "attention": attention(lambda q, k, v, c: ops.attention(q, k, v, causal=c)),
        "conv2d_reference": conv_ref,
        "max_pool2d_reference": max_pool_ref,
        "attention_reference": attention(lambda q, k, v, c: ops.attention_reference(q, k, v, causal=c)),
    }


def check_layers(dtypes, device, seed: int = 0) -> list[Row]:
    """Run every layer against PyTorch's; one Row per layer and dtype."""
    import torch.nn.functional as F  # the reference (see the module docstring)

    from customnn import ops  # looked up at call time, so a test can replace a layer

    rows = []
    for dtype in dtypes:
        torch.manual_seed(seed)  # the default generator, which dropout uses
        gen = torch.Generator().manual_seed(seed)

        def make(*shape):
            return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

        def integers(low, high, shape):
            return torch.randint(low, high, shape, generator=gen).to(device)

        layers = _layers(ops, F, make, integers)
        for name, trials in layers.items():
            row = Row(name, dtype)
            try:
                for i, trial in enumerate(trials()):
                    forward, grads = run_trial(trial, seed + i)
                    row.forward = max(row.forward, forward)
                    for k, v in grads.items():
                        row.grads[k] = max(row.grads.get(k, 0.0), v)
            except Exception as exc:  # a layer that raises is a FAIL, and the table goes on
                row.error = f"{type(exc).__name__}: {exc}"
            rows.append(row)
    order = {name: i for i, name in enumerate(layers)}
    rows.sort(key=lambda r: (order[r.layer], dtypes.index(r.dtype)))
    return rows


def _fmt(err: float) -> str:
    return "0" if err == 0 else f"{err:.0e}"


def format_table(rows: list[Row]) -> str:
    lines = [f"{'layer':<22} {'dtype':<8} {'forward':>8}  {'gradients':<40} status"]
    for r in rows:
        dtype = str(r.dtype).replace("torch.", "")
        if r.error is not None:
            forward, grads = "-", r.error[:200]
        else:
            forward = _fmt(r.forward)
            grads = " ".join(f"{k} {_fmt(v)}" for k, v in r.grads.items())
        lines.append(f"{r.layer:<22} {dtype:<8} {forward:>8}  {grads:<40} {'OK' if r.ok else 'FAIL'}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``customnn check``."""
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="both",
                        help="precision to check in (default: both, float64 then float32)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run (auto: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default: 0)")


def run(args: argparse.Namespace) -> int:
    """Print the table; 0 when every row is OK, 1 when any row FAILs."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from customnn.errors import UserError

        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu")
    dtypes = DTYPES[args.dtype]
    start = time.perf_counter()
    rows = check_layers(dtypes, torch.device(device), args.seed)
    print(f"customnn check: every layer against PyTorch's on {device}, seed {args.seed}")
    print("errors: max |ours - torch| / max(|torch|, 1); tolerance 1e-10 (float64), 1e-5 (float32)\n")
    print(format_table(rows))
    failed = [r for r in rows if not r.ok]
    took = time.perf_counter() - start
    if failed:
        print(f"\n{len(failed)} of {len(rows)} rows FAIL ({took:.1f} s)")
        return 1
    print(f"\nall {len(rows)} rows OK ({took:.1f} s)")
    return 0
