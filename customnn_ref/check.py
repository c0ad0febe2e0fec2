"""``customnn check``: every layer against PyTorch's own and against its readable reference,
forward and every gradient, as a table.

    customnn check                      # float64 and float32, on the CPU (or CUDA if present)
    customnn check --dtype float64 --device cpu --seed 0
    customnn check --layers my_layers.py   # and the layers that file declares (check_user.py)

For each layer in ``customnn.ops`` it builds random inputs in a few awkward configurations
(odd sizes, batch 1, strides, padding, dilation, non-contiguous views) and prints, per dtype:

- a "PyTorch" row: our fast layer against ``torch.nn.functional``'s (and the three loop
  references, ``conv2d_reference``, ``max_pool2d_reference``, ``attention_reference``, against
  PyTorch's as well);
- a "reference" row: our fast layer against its readable reference in ``customnn.ops``
  (``conv2d_reference``, ...), the plain-math definition differentiated by autograd.

Each row holds the largest forward error and the largest gradient error for each input, over
all its configurations, measured by ``customnn.testing.compare`` (the harness the tests and
``check_layer`` use too): ``max |ours - ref| / max(max |ref|, 1)``; a row is OK when every error
is at most 1e-10 (float64) or 1e-5 (float32). The exit code is 0 when every row is OK, 1 otherwise.

This module calls ``torch.nn.functional``: PyTorch's layers are the reference here, as in the
tests and benchmarks. That is why it lives in ``customnn_ref``, the package of references
beside the library, and not in ``customnn/``, which never touches ``torch.nn``
(tests/test_purity.py checks every file there).

Entry points: ``add_arguments(parser)`` and ``run(args)``, wired into ``customnn/commands/cli.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from customnn_ref.check_options import option_trials
from customnn.testing import TOL, compare
from customnn_ref.twins import apply_rope, rope_cos_sin

DTYPES = {"float64": [torch.float64], "float32": [torch.float32], "both": [torch.float64, torch.float32]}
AGAINST = ("PyTorch", "reference")


@dataclass
class Trial:
    """One configuration of a layer: both functions, their named inputs and keyword arguments.

    ``inputs`` are (name, value, wants_grad); a value may be a tensor, None or a number.
    ``ours`` and ``ref`` take the values in order and ``kwargs``, and return the output, or a
    tuple (output, extra, ...) whose extras (batch norm's running statistics) are compared
    like the output but not differentiated.
    """

    ours: Callable
    ref: Callable
    inputs: list[tuple[str, object, bool]]
    kwargs: dict = field(default_factory=dict)


@dataclass
class Row:
    layer: str
    against: str  # "PyTorch" or "reference"
    dtype: torch.dtype
    forward: float = 0.0
    grads: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # an exception our layer raised, if any

    @property
    def ok(self) -> bool:
        tol = TOL[self.dtype]
        errs = [self.forward, *self.grads.values()]
        return self.error is None and all(e <= tol for e in errs)  # NaN is not <= tol: FAIL


SEED_MOD = 2**64  # a torch.Generator takes a seed as 64 bits: -2**63 <= seed < 2**64


def trial_seed(seed: int, i: int) -> int:
    """The seed of a row's i-th trial (its upstream gradient): ``seed + i`` taken modulo 2**64.
    ``--seed`` is checked to fit in 64 bits, ``seed + i`` need not (a seed near 2**64 gave an
    overflow in ``manual_seed`` from the second trial on); modulo 2**64 a seed that fits is
    unchanged, as a Generator reads it (-1 and 2**64 - 1 are the same state)."""
    return (seed + i) % SEED_MOD


def run_trial(trial: Trial, seed: int) -> tuple[float, dict[str, float]]:
    """Forward and backward through both (customnn.testing.compare); (forward error, gradient errors)."""
    values = [t.detach().requires_grad_(wants) if isinstance(t, torch.Tensor) else t for _, t, wants in trial.inputs]
    errors = compare(trial.ours, trial.ref, values, trial.kwargs, names=[n for n, _, _ in trial.inputs], seed=seed)
    return errors.pop("forward"), errors


# --- PyTorch's layers, called with our layers' arguments -----------------------------------

def _pytorch_layers(F) -> dict[str, Callable]:
    """Each layer's PyTorch counterpart, taking our layer's arguments (dropout: see _dropout_vs_pytorch)."""

    def pad(x, padding, value=0.0):
        return F.pad(x, (padding,) * 4 if isinstance(padding, int) else padding, value=value)

    def batch_norm(x, w, b, running_mean, running_var, training, momentum=0.1, eps=1e-5):
        return F.batch_norm(x, running_mean, running_var, w, b, training, momentum, eps)

    return {
        "conv2d": F.conv2d, "pad2d": pad, "max_pool2d": F.max_pool2d, "avg_pool2d": F.avg_pool2d,
        "relu": F.relu, "gelu": F.gelu, "flatten": lambda x: x.flatten(1),
        "linear": lambda x, w, b=None: F.linear(x, w.T, b),  # our weight is (in, out), F's (out, in)
        "embedding": F.embedding, "softmax": F.softmax, "log_softmax": F.log_softmax,
        "cross_entropy": F.cross_entropy,
        "layer_norm": lambda x, w, b, eps=1e-5, normalized_shape=None: F.layer_norm(
            x, normalized_shape or (w.shape if w is not None else x.shape[-1:]), w, b, eps),
        "batch_norm": batch_norm,
        # block_q / block_k, our tile sizes, change nothing in the result: not passed on
        "attention": lambda q, k, v, causal=True, attn_mask=None, block_q=None, block_k=None:
            F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal),
        "rms_norm": lambda x, w=None, eps=None: F.rms_norm(x, x.shape[-1:], w, eps),
        "rope": apply_rope,  # PyTorch has no rotary layer: the twin's plain form (rotate_half)
        "silu": F.silu,
    }


# --- the configurations ------------------------------------------------------------------------
# Each entry: row name -> (layer, trials), ``trials(ours, ref)`` returning a list of Trials of
# ``ours`` against ``ref``, both taking the layer's arguments. ``make(*shape)`` draws a random
# float64 tensor from the check's generator and casts it to the dtype and device.


def _configs(make, integers) -> dict[str, tuple[str, Callable[[Callable, Callable], list[Trial]]]]:
    def conv(ours, ref):
        x2 = make(1, 8, 8, 2).permute(0, 3, 1, 2)  # non-contiguous (channels last) input
        return [Trial(ours, ref, [("x", make(2, 3, 9, 7), True), ("w", make(4, 3, 3, 2), True), ("b", make(4), True)],
                      dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
                Trial(ours, ref, [("x", x2, True), ("w", make(3, 2, 5, 5), True), ("b", None, False)],
                      dict(stride=3, padding=2))]

    def pad(ours, ref):
        x = make(2, 3, 5, 4)
        return [Trial(ours, ref, [("x", x, True)], dict(padding=(1, 2, 0, 3), value=0.5)),
                Trial(ours, ref, [("x", x.transpose(2, 3), True)], dict(padding=2)),
                Trial(ours, ref, [("x", x, True)], dict(padding=(1, -1, 0, 2, 2, 0))),  # the last three dims
                Trial(ours, ref, [("x", x, True)], dict(padding=(-1, 2, 3, -2)))]  # negative amounts crop

    def max_pool(ours, ref):
        ties = make(2, 2, 6, 6).round()  # many equal values: PyTorch's tie-breaking
        return [Trial(ours, ref, [("x", make(2, 3, 9, 8), True)], dict(kernel_size=3, stride=2, padding=1)),
                Trial(ours, ref, [("x", make(1, 2, 7, 7), True)], dict(kernel_size=2)),
                Trial(ours, ref, [("x", ties, True)], dict(kernel_size=(3, 2), stride=(1, 2)))]

    def avg_pool(ours, ref):
        return [Trial(ours, ref, [("x", make(2, 3, 9, 8), True)], dict(kernel_size=3, stride=2, padding=1)),
                Trial(ours, ref, [("x", make(1, 2, 7, 7), True)], dict(kernel_size=2))]

    def elementwise(**kwargs):
        def trials(ours, ref):
            x = make(3, 17)
            x[0, :4] = 0.0  # exact zeros, where relu's gradient is a convention
            return [Trial(ours, ref, [("x", x, True)], kwargs),
                    Trial(ours, ref, [("x", make(4, 2, 5).transpose(0, 2), True)], kwargs)]
        return trials

    def flatten(ours, ref):
        return [Trial(ours, ref, [("x", make(2, 3, 4, 5).transpose(1, 3), True)])]

    def linear(ours, ref):
        return [Trial(ours, ref, [("x", make(5, 7), True), ("w", make(7, 3), True), ("b", make(3), True)]),
                Trial(ours, ref, [("x", make(2, 5, 7).transpose(0, 1), True), ("w", make(7, 1), True)])]

    def embedding(ours, ref):
        idx = integers(0, 11, (3, 5))
        idx[0, :3] = 4  # a row used several times: its gradient adds up
        return [Trial(ours, ref, [("idx", idx, False), ("w", make(11, 6), True)])]

    def softmaxes(ours, ref):
        return [Trial(ours, ref, [("x", make(4, 9) * 5, True)], dict(dim=-1)),
                Trial(ours, ref, [("x", make(2, 5, 3), True)], dict(dim=1))]

    def cross_entropy(ours, ref):
        n, c = 9, 7
        target = integers(0, c, (n,))
        ignored = target.clone()
        ignored[::3] = -100
        settings = ((dict(), target), (dict(reduction="sum", label_smoothing=0.1), target),
                    (dict(reduction="none"), target), (dict(ignore_index=-100, label_smoothing=0.2), ignored))
        trials = [Trial(ours, ref, [("logits", make(n, c) * 3, True), ("target", t, False)], kw) for kw, t in settings]
        trials.append(Trial(ours, ref, [("logits", make(3, c, 4), True), ("target", integers(0, c, (3, 4)), False)],
                            dict(reduction="none")))  # classes on dimension 1 of (N, C, d)
        return trials

    def layer_norm(ours, ref):
        return [Trial(ours, ref, [("x", make(4, 7, 10) * 2 + 1, True), ("w", make(10), True), ("b", make(10), True)]),
                Trial(ours, ref, [("x", make(3, 5).T, True), ("w", make(3), True), ("b", make(3), True)],
                      dict(eps=1e-3))]

    def batch_norm(training):
        def trials(ours, ref):
            def with_stats(f):  # the running statistics are outputs too: compared, not differentiated
                def g(x, w, b, rm, rv):
                    return f(x, w, b, rm, rv, training, momentum=0.2, eps=1e-4), rm, rv
                return g

            out = []
            for shape in ((4, 3, 5, 5), (6, 5)):
                c = shape[1]
                out.append(Trial(with_stats(ours), with_stats(ref),
                                 [("x", make(*shape) * 2 + 1, True), ("w", make(c), True), ("b", make(c), True),
                                  ("running_mean", make(c), False), ("running_var", make(c).abs() + 0.5, False)]))
            return out
        return trials

    def dropout(ours, ref):
        def seeded(f, p, training):  # each side draws from a fresh generator in the same state
            return lambda x: f(x, p, training, generator=torch.Generator(x.device).manual_seed(7))

        x = make(6, 50)
        return [Trial(seeded(ours, p, training), seeded(ref, p, training), [("x", x, True)])
                for p, training in ((0.3, True), (0.0, True), (0.5, False), (1.0, True))]

    def attention(ours, ref):
        def heads(f):  # a GPT's (B, T, 3C) projection, split into 3 heads of 5
            def g(z):
                q, k, v = (t.reshape(2, 7, 3, 5).transpose(1, 2) for t in z.split(15, dim=2))
                return f(q, k, v, causal=True)
            return g

        return [Trial(heads(ours), heads(ref), [("qkv", make(2, 7, 3 * 15), True)]),
                Trial(ours, ref, [("q", make(1, 2, 1, 4), True), ("k", make(1, 2, 6, 4), True),
                                  ("v", make(1, 2, 6, 4), True)], dict(causal=False)),
                Trial(ours, ref, [("q", make(3, 1, 5, 3), True), ("k", make(3, 1, 5, 3), True),
                                  ("v", make(3, 1, 5, 3), True)], dict(causal=True))]

    def qkv(*lead, T, S, hs):
        return [("q", make(*lead, T, hs), True), ("k", make(*lead, S, hs), True), ("v", make(*lead, S, hs), True)]

    def attention_tiled(ours, ref):  # small tiles force the tiled path: partial blocks, the diagonal
        return [Trial(ours, ref, qkv(2, 3, T=13, S=13, hs=5), dict(causal=True, block_q=4, block_k=3)),
                Trial(ours, ref, qkv(1, 2, T=7, S=11, hs=4), dict(causal=False, block_q=3, block_k=4)),
                Trial(ours, ref, qkv(2, T=9, S=9, hs=3), dict(causal=True, block_q=2, block_k=5))]  # unbatched

    def attention_mask(ours, ref):  # boolean and float (with a gradient) masks, broadcast; dense and tiled
        def masked(f, **tiles):
            return lambda q, k, v, attn_mask: f(q, k, v, causal=False, attn_mask=attn_mask, **tiles)

        keep = make(7, 9) > -0.5
        keep[2] = False  # a query with every key masked: output and gradients 0, as SDPA's
        bias = make(2, 1, 1, 9).masked_fill(make(2, 1, 1, 9) > 1.0, float("-inf"))  # (B, 1, 1, S) key padding
        return [Trial(masked(ours), masked(ref), qkv(2, 3, T=7, S=9, hs=4) + [("attn_mask", keep, False)]),
                Trial(masked(ours), masked(ref), qkv(2, 3, T=7, S=9, hs=4) + [("attn_mask", bias, True)]),
                Trial(masked(ours, block_q=3, block_k=4), masked(ref),
                      qkv(2, 3, T=7, S=9, hs=4) + [("attn_mask", make(3, 7, 9), True)]),
                Trial(masked(ours, block_q=2, block_k=2), masked(ref),
                      qkv(3, T=5, S=6, hs=4) + [("attn_mask", make(5, 6) > 0, False)])]  # unbatched, tiled

    options = option_trials(make, integers, Trial)  # the layers' options: customnn_ref/check_options.py

    def rms_norm(ours, ref):
        return [Trial(ours, ref, [("x", make(4, 7, 10) * 2 + 1, True), ("w", make(10), True)]),
                Trial(ours, ref, [("x", make(3, 5).T, True), ("w", None, False)], dict(eps=1e-3))]

    def rope(ours, ref):
        def tables(T, hs):  # RoPE's (cos, sin), (T, hs / 2), in the dtype and device of make's tensors
            like = make(1)
            return [t.to(dtype=like.dtype, device=like.device) for t in rope_cos_sin(T, hs, dtype=torch.float64)]

        cos, sin = tables(7, 8)
        cos1, sin1 = tables(3, 4)
        return [Trial(ours, ref, [("x", make(2, 3, 7, 8), True), ("cos", cos, False), ("sin", sin, False)]),
                Trial(ours, ref, [("x", make(1, 3, 2, 4).transpose(1, 2), True), ("cos", cos1, True),
                                  ("sin", sin1, True)])]

    return {
        "conv2d": ("conv2d", conv),
        "conv2d (groups, same)": ("conv2d", options["conv_options"]),
        "pad2d": ("pad2d", pad),
        "max_pool2d": ("max_pool2d", max_pool),
        "max_pool2d (options)": ("max_pool2d", options["max_pool_options"]),
        "avg_pool2d": ("avg_pool2d", avg_pool),
        "avg_pool2d (options)": ("avg_pool2d", options["avg_pool_options"]),
        "relu": ("relu", elementwise()),
        "gelu": ("gelu", elementwise()),
        "gelu (tanh)": ("gelu", elementwise(approximate="tanh")),
        "flatten": ("flatten", flatten),
        "linear": ("linear", linear),
        "embedding": ("embedding", embedding),
        "softmax": ("softmax", softmaxes),
        "log_softmax": ("log_softmax", softmaxes),
        "cross_entropy": ("cross_entropy", cross_entropy),
        "cross_entropy (weight)": ("cross_entropy", options["cross_entropy_weight"]),
        "cross_entropy (probs)": ("cross_entropy", options["cross_entropy_probs"]),
        "layer_norm": ("layer_norm", layer_norm),
        "layer_norm (2 dims)": ("layer_norm", options["layer_norm_dims"]),
        "batch_norm (train)": ("batch_norm", batch_norm(True)),
        "batch_norm (eval)": ("batch_norm", batch_norm(False)),
        "dropout": ("dropout", dropout),
        "attention": ("attention", attention),
        "attention (tiled)": ("attention", attention_tiled),
        "attention (attn_mask)": ("attention", attention_mask),
        "rms_norm": ("rms_norm", rms_norm),
        "rope": ("rope", rope),
        "silu": ("silu", elementwise()),
    }


def _dropout_vs_pytorch(ops, F, make) -> list[Trial]:
    """Dropout against PyTorch: F.dropout draws its own mask, so with p > 0 the mask our layer
    drew is read back from its output (x has no zeros) and PyTorch's formula applied with it."""
    p, kept = 0.3, {}

    def ours(x):
        y = ops.dropout(x, p, True)
        kept["mask"] = y.detach() != 0
        return y

    def ref(x):  # PyTorch's inverted dropout with our mask
        return x * kept["mask"] / (1 - p)

    x = make(6, 50)
    return [Trial(ours, ref, [("x", x, True)]),
            Trial(lambda x: ops.dropout(x, 0.0, True), lambda x: F.dropout(x, 0.0, True), [("x", x, True)]),
            Trial(lambda x: ops.dropout(x, 0.5, False), lambda x: F.dropout(x, 0.5, False), [("x", x, True)]),
            Trial(lambda x: ops.dropout(x, 1.0, True), lambda x: F.dropout(x, 1.0, True), [("x", x, True)])]


def _rows(ops, F, make, integers) -> list[tuple[str, str, Callable[[], list[Trial]]]]:
    """(row name, against, trials) for every row of the table, in order."""
    torch_fns, configs = _pytorch_layers(F), _configs(make, integers)

    def vs(fast, ref, trials):
        return lambda: trials(fast, ref)

    rows = []
    for name, (layer, trials) in configs.items():
        if layer == "dropout":  # F.dropout's own mask cannot be replayed: see _dropout_vs_pytorch
            rows.append((name, "PyTorch", lambda: _dropout_vs_pytorch(ops, F, make)))
        else:
            rows.append((name, "PyTorch", vs(getattr(ops, layer), torch_fns[layer], trials)))
    for layer in ("conv2d", "max_pool2d", "attention"):  # the loop references against PyTorch too
        rows.append((f"{layer}_reference", "PyTorch",
                     vs(getattr(ops, f"{layer}_reference"), torch_fns[layer], configs[layer][1])))
    for name, (layer, trials) in configs.items():
        rows.append((name, "reference", vs(getattr(ops, layer), getattr(ops, f"{layer}_reference"), trials)))
    return rows


def check_layers(dtypes, device, seed: int = 0) -> list[Row]:
    """Run every layer against PyTorch's and against its reference; one Row per row and dtype."""
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

        table = _rows(ops, F, make, integers)
        for name, against, trials in table:
            row = Row(name, against, dtype)
            try:
                for i, trial in enumerate(trials()):
                    forward, grads = run_trial(trial, trial_seed(seed, i))
                    row.forward = max(row.forward, forward)
                    for k, v in grads.items():
                        row.grads[k] = max(row.grads.get(k, 0.0), v)
            except Exception as exc:  # a layer that raises is a FAIL, and the table goes on
                row.error = f"{type(exc).__name__}: {exc}"
            rows.append(row)
    order = {(name, against): i for i, (name, against, _) in enumerate(table)}
    rows.sort(key=lambda r: (order[(r.layer, r.against)], dtypes.index(r.dtype)))
    return rows


def _fmt(err: float) -> str:
    return "0" if err == 0 else f"{err:.0e}"


def format_table(rows: list[Row]) -> str:
    lines = [f"{'layer':<22} {'against':<9} {'dtype':<8} {'forward':>8}  {'gradients':<40} status"]
    for r in rows:
        dtype = str(r.dtype).replace("torch.", "")
        if r.error is not None:
            forward, grads = "-", r.error[:200]
        else:
            forward = _fmt(r.forward)
            grads = " ".join(f"{k} {_fmt(v)}" for k, v in r.grads.items())
        lines.append(f"{r.layer:<22} {r.against:<9} {dtype:<8} {forward:>8}  {grads:<40} {'OK' if r.ok else 'FAIL'}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``customnn check``."""
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="both",
                        help="precision to check in (default: both, float64 then float32)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run (auto: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default: 0)")
    parser.add_argument("--layers", action="append", default=[], metavar="FILE.py",
                        help="also check the layers FILE.py declares in LAYERS (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Print the table; 0 when every row is OK, 1 when any row FAILs."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from customnn.core.errors import UserError

        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu")
    dtypes = DTYPES[args.dtype]
    start = time.perf_counter()
    from customnn_ref.check_user import declared, user_rows

    theirs = declared(args.layers)  # a file missing, failing to import or declaring nothing: exit 2 now
    rows = check_layers(dtypes, torch.device(device), args.seed)
    rows += user_rows(theirs, dtypes, torch.device(device), args.seed, Row)
    yours = f" and the layers of {', '.join(args.layers)} against their declared references" if args.layers else ""
    print(f"customnn check: every layer against PyTorch's and against its readable reference{yours} on {device}, "
          f"seed {args.seed}")
    print("errors: max |ours - ref| / max(|ref|, 1), ref = PyTorch's layer or the layer's _reference; "
          "tolerance 1e-10 (float64), 1e-5 (float32)\n")
    print(format_table(rows))
    failed = [r for r in rows if not r.ok]
    took = time.perf_counter() - start
    if failed:
        print(f"\n{len(failed)} of {len(rows)} rows FAIL ({took:.1f} s)")
        return 1
    print(f"\nall {len(rows)} rows OK ({took:.1f} s)")
    return 0
