"""Our layers against PyTorch's own test samples: the OpInfo database PyTorch tests itself with.

For each OpInfo below (``torch.testing._internal.common_methods_invocations.op_db``), every
sample input PyTorch generates for it is translated to our argument conventions (``TRANSLATE``)
and run through our layer and PyTorch's, in float64 and float32, once with contiguous inputs
and once with every tensor laid out non-contiguously (a stride-2 copy): the forward outputs
(and extra outputs: indices, batch norm's running statistics) and the gradient of every input
that requires grad (one seeded random upstream gradient) must agree, NaNs in the same places,
within max |ours - theirs| <= tol * max(max |theirs|, 1), tol 1e-10 (float64) / 1e-5 (float32; attention 3e-5, see FLOAT32_TOL).
Then each op's ``error_inputs`` (arguments PyTorch refuses) must be refused by ours too, with
ValueError.

``nn.functional.scaled_dot_product_attention``'s samples with ``dropout_p > 0`` cannot be
replayed (SDPA draws its own dropout mask): ours, from a seeded generator, is checked against
SDPA's docstring formula with the mask drawn again from the same generator state. It has no
``error_inputs`` in torch 2.13.

A sample either passes or is refused, for a reason listed in ``REFUSED`` (each reason is
stated in the layer's docstring or, for translations, here): a ValueError from our layer
whose message matches the entry's pattern, or a sample the translation cannot express in our
API. Anything else fails the test: a mismatch, another exception, an unlisted refusal.

Subset: ``nn.functional.max_pool2d`` has 1440 samples per dtype (6 inputs x 240 option
combinations, cycled in order); every 7th is run (``samples[::MAX_POOL_EVERY]``, deterministic:
206 per dtype; 7 is prime to the cycle's lengths 2, 3, 4 and 5, so every value of every option
is still met, which a stride of 4 or 8 would not: return_indices alternates). Every other op
runs all its samples. ``rms_norm`` and ``silu`` run when ``ops.rms_norm`` /
``ops.silu`` exist (else their samples are skipped, noted in the printed line).

Each test prints its op's counts, in runs (a run: one sample, in one dtype, contiguous or
strided; so 4 runs a sample): passed, refused with each reason, and error inputs refused.

The import is private PyTorch API (present in torch 2.13, needing the ``expecttest``
package): when it fails, every test here fails saying so.
"""

from __future__ import annotations

import re

import pytest
import torch

from customnn import ops

try:
    from torch.testing._internal.common_methods_invocations import op_db
    IMPORT_ERROR = None
except Exception as exc:  # noqa: BLE001 - any failure of the private import is reported, not skipped
    op_db, IMPORT_ERROR = None, exc

DTYPES = (torch.float64, torch.float32)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# float32 tolerances of their own, with the reason. Attention's backward takes softmax's row sums
# as dout . y, FlashAttention's form and that of SDPA's default CPU kernel (so that a model trains
# step for step as with SDPA); y's rounding makes the float32 error of dq and dk reach 1.3e-5 of
# the largest value on OpInfo's samples, whose values reach 9.
FLOAT32_TOL = {"nn.functional.scaled_dot_product_attention": 3e-5}
MAX_POOL_EVERY = 7


class OutsideApi(Exception):
    """The sample cannot be said in our layer's arguments (its reason is in REFUSED)."""


# --- how each op's sample becomes a call of our layer -------------------------------------
# Each takes the sample's (input, args, kwargs), tensors already swapped for fresh leaves,
# and returns our layer's result. ``LEAF_TO_OURS`` says which leaves differ in layout.

def _softmax(fn):
    def call(x, args, kw):
        dtype = kw.pop("dtype", None)
        if dtype is not None and dtype != x.dtype:
            raise OutsideApi("dtype conversion")
        return fn(x, *args, **kw)
    return call


def _pad(x, args, kw):
    pad = args[0]  # F.pad(input, pad, mode="constant", value=None)
    mode = args[1] if len(args) > 1 else kw.get("mode", "constant")
    value = args[2] if len(args) > 2 else kw.get("value")
    return ops.pad2d(x, tuple(pad), 0.0 if value is None else value, mode=mode)


def _layer_norm(x, args, kw):
    shape, w, b = (list(args) + [None, None])[:3]
    return ops.layer_norm(x, w, b, kw.get("eps", 1e-5), normalized_shape=shape)


def _batch_norm(x, args, kw):
    rm, rv, w, b = (list(args) + [None] * 4)[:4]
    y = ops.batch_norm(x, w, b, rm, rv, kw.get("training", False), kw.get("momentum", 0.1), kw.get("eps", 1e-5))
    return (y, rm, rv)


def _rms_norm(x, args, kw):
    shape, w, eps = (list(args) + [None, None])[:3]
    eps = kw.get("eps", eps)
    if tuple(shape) != tuple(x.shape[-1:]):
        raise OutsideApi("rms_norm over more than the last dim")
    return ops.rms_norm(x, w, eps)


def _embedding(weight, args, kw):
    if kw:
        raise OutsideApi("embedding options")
    return ops.embedding(args[0], weight)


def _sdpa(q, args, kw):
    """F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
    is_causal=False, ...) as ops.attention(q, k, v, causal, dropout_p, attn_mask=...)."""
    k, v, *rest = args
    names = ("attn_mask", "dropout_p", "is_causal")
    kw = {**dict(zip(names, rest)), **kw}
    return ops.attention(q, k, v, kw.pop("is_causal", False), kw.pop("dropout_p", 0.0), **kw)


TRANSLATE = {
    "nn.functional.conv2d": lambda x, a, k: ops.conv2d(x, *a, **k),
    "nn.functional.max_pool2d": lambda x, a, k: ops.max_pool2d(x, *a, **k),
    "nn.functional.avg_pool2d": lambda x, a, k: ops.avg_pool2d(x, *a, **k),
    "nn.functional.relu": lambda x, a, k: ops.relu(x, *a, **k),
    "nn.functional.gelu": lambda x, a, k: ops.gelu(x, *a, **k),
    "nn.functional.silu": lambda x, a, k: ops.silu(x, *a, **k),
    "nn.functional.linear": lambda x, a, k: ops.linear(x, *a, **k),  # a[0] arrives as (in, out): LEAF_TO_OURS
    "nn.functional.embedding": _embedding,
    "softmax": _softmax(ops.softmax),
    "log_softmax": _softmax(ops.log_softmax),
    "nn.functional.cross_entropy": lambda x, a, k: ops.cross_entropy(x, *a, **k),
    "nn.functional.layer_norm": _layer_norm,
    "nn.functional.rms_norm": _rms_norm,
    "nn.functional.batch_norm": _batch_norm,
    "nn.functional.dropout": lambda x, a, k: ops.dropout(x, *a, **k),
    "nn.functional.pad": _pad,
    "nn.functional.scaled_dot_product_attention": _sdpa,
}
NEEDS = {"nn.functional.rms_norm": "rms_norm", "nn.functional.silu": "silu"}  # run only if ops has it

# linear: PyTorch's weight is (out, in), ours (in, out). Leaf 1 (the weight) is handed to us
# transposed (a real (in, out) leaf), and our gradient transposed back before comparing.
LEAF_TO_OURS = {"nn.functional.linear": {1: lambda t: t.T}}

# --- the refused classes: (op, pattern of our ValueError's message, or the OutsideApi text, reason) ---
REFUSED = [
    # An empty batch-norm input (0,): batch_norm takes (N, C, ...) with N and C (docstring).
    ("nn.functional.batch_norm", r"x must be \(N, C\)", "x of shape (0,): batch_norm needs (N, C, ...)"),
    # F.pad's other modes: pad2d pads with a constant only (its docstring).
    ("nn.functional.pad", r"only mode='constant'", "reflect / replicate / circular padding not implemented"),
    # softmax(x, dim, dtype=...) with a dtype other than x's: our softmax has no dtype
    # argument (cast x first). A dtype equal to x's is dropped and the sample runs.
    ("softmax", "dtype conversion", "dtype= other than x's: no dtype argument"),
    ("log_softmax", "dtype conversion", "dtype= other than x's: no dtype argument"),
    # rms_norm normalises over the last dim only (its docstring).
    ("nn.functional.rms_norm", "rms_norm over more than the last dim", "normalized_shape over several dims"),
    # embedding's padding_idx / max_norm / scale_grad_by_freq / sparse: not part of ops.embedding.
    ("nn.functional.embedding", "embedding options", "padding_idx / max_norm / ... not implemented"),
    # A 3-D query with 4-D key and value, which SDPA broadcasts against the keys' batch: ours
    # takes q, k, v of one rank, all (B, nh, ., hs) or all unbatched (nh, ., hs) (its docstring).
    ("nn.functional.scaled_dot_product_attention", r"k must be 4-D .* like q|k must be 3-D .* like q",
     "q 3-D with k, v 4-D: q, k, v must have one rank"),
]

# Error inputs (arguments PyTorch refuses) that our translation cannot express are counted
# apart ("by the translation"): rms_norm's normalized_shape () and (1, 2, 3).


def _reason(op_name: str, message: str) -> str | None:
    for op, pattern, reason in REFUSED:
        if op == op_name and re.search(pattern, message):
            return reason
    return None


# --- running one sample ----------------------------------------------------------------------

def _strided_copy(t: torch.Tensor) -> torch.Tensor:
    """The same values in memory spaced out by 2 (a non-contiguous leaf when t has 2+ elements)."""
    if t.dim() == 0:
        return t.clone()
    strides, step = [], 2
    for n in reversed(t.shape):
        strides.insert(0, step)
        step *= max(n, 1)
    out = torch.empty_strided(t.shape, strides, dtype=t.dtype)
    out.copy_(t)
    return out


def _leaves(sample):
    """The sample's top-level tensors in order: input, then args, then kwargs values."""
    return [t for t in (sample.input, *sample.args, *sample.kwargs.values()) if isinstance(t, torch.Tensor)]


def _rebuild(sample, new):
    """The sample's (input, args, kwargs) with its top-level tensors replaced by ``new``, in order."""
    it = iter(new)

    def swap(v):
        return next(it) if isinstance(v, torch.Tensor) else v

    x = swap(sample.input)
    args = [swap(a) for a in sample.args]
    kwargs = {k: swap(v) for k, v in sample.kwargs.items()}
    return x, args, kwargs


def _fresh(leaves, contiguous, to_ours=None, ref_dtype=None):
    out = []
    for i, t in enumerate(leaves):
        t = t.detach()
        if ref_dtype is not None and t.is_floating_point():
            t = t.to(ref_dtype)
        if to_ours and i in to_ours:
            t = to_ours[i](t)
        t = t.clone().contiguous() if contiguous else _strided_copy(t.contiguous())
        wants = leaves[i].requires_grad and t.is_floating_point()
        out.append(t.requires_grad_(wants))
    return out


def _err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max(max |ref|, 1) over the finite entries; inf if shapes, dtypes' kinds,
    NaN or infinity positions differ."""
    if ours.shape != ref.shape or ours.is_floating_point() != ref.is_floating_point():
        return float("inf")
    if ref.numel() == 0:
        return 0.0
    a, b = ours.detach().double(), ref.detach().double()
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return float("inf")
    finite = torch.isfinite(b)
    if not torch.equal(a[~finite & ~torch.isnan(b)], b[~finite & ~torch.isnan(b)]):
        return float("inf")
    if not finite.any():
        return 0.0
    diff = (a[finite] - b[finite]).abs().max().item()
    return diff / max(b[finite].abs().max().item(), 1.0)


def _as_tuple(y):
    return y if isinstance(y, tuple) else (y,)


def _run_dropout(sample, dtype, contiguous):
    """F.dropout draws its own mask: ours is checked against PyTorch's formula with the mask
    read back from our output (x has no zeros), and equal to F.dropout when p is 0 or 1 or
    when not training."""
    (x,) = _fresh(_leaves(sample), contiguous)
    p, training = sample.kwargs.get("p", 0.5), sample.kwargs.get("training", True)
    y = ops.dropout(x, p, training)
    keep = (y.detach() != 0).to(dtype)
    want = x.detach() * keep / (1 - p) if training and 0 < p < 1 else torch.nn.functional.dropout(x.detach(), p, training)
    dout = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    errors = [_err(y, want)]
    if y.requires_grad:
        y.backward(dout)
        scale = keep / (1 - p) if training and 0 < p < 1 else (torch.zeros_like(dout) if training and p == 1 else 1.0)
        errors.append(_err(x.grad, dout * scale))
    return max(errors)


def _run_sdpa_dropout(sample, dtype, contiguous):
    """SDPA with dropout_p > 0 draws its own mask: ours, drawing from a seeded generator, is
    checked against SDPA's docstring formula, softmax(q k^T / sqrt(hs) + causal mask), times
    the mask drawn again from the same generator state (torch.rand (B, nh, T, S) >= p) / (1 - p),
    @ v, differentiated by autograd."""
    q, k, v, *rest = _fresh(_leaves(sample), contiguous)
    kw = {**dict(zip(("attn_mask", "dropout_p", "is_causal"), sample.args[2:])), **sample.kwargs}
    if rest or kw.get("attn_mask") is not None or set(kw) - {"dropout_p", "is_causal"}:
        raise OutsideApi("a dropout sample with other arguments")  # none in torch 2.13
    p, causal = kw["dropout_p"], kw.get("is_causal", False)
    y = _sdpa(q, [k, v], dict(kw, generator=torch.Generator().manual_seed(5)))
    q2, k2, v2 = (t.detach().clone().requires_grad_(t.requires_grad) for t in (q, k, v))
    T, S, hs = q2.shape[-2], k2.shape[-2], q2.shape[-1]
    keep = torch.rand((*y.shape[:-2], T, S), generator=torch.Generator().manual_seed(5), dtype=dtype) >= p
    scores = q2 @ k2.transpose(-2, -1) / hs ** 0.5
    if causal:
        scores = scores.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(1), float("-inf"))
    want = (torch.softmax(scores, dim=-1) * keep / (1 - p)) @ v2
    errors = [_err(y, want)]
    dout = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    y.backward(dout)
    want.backward(dout)
    errors += [_err(a.grad, b.grad) for a, b in ((q, q2), (k, k2), (v, v2)) if b.requires_grad]
    return max(errors)


def run_sample(op, sample, dtype, contiguous, ref_dtype=None) -> float:
    """Our layer against PyTorch's on one sample; the largest error (forward and gradients).
    With ``ref_dtype``, PyTorch's side runs on the same values in that dtype."""
    if op.name == "nn.functional.dropout":
        return _run_dropout(sample, dtype, contiguous)
    if op.name == "nn.functional.scaled_dot_product_attention" and sample.kwargs.get("dropout_p", 0.0) > 0:
        return _run_sdpa_dropout(sample, dtype, contiguous)
    leaves = _leaves(sample)
    theirs_in = _fresh(leaves, contiguous, ref_dtype=ref_dtype)
    to_ours = LEAF_TO_OURS.get(op.name)
    ours_in = _fresh(leaves, contiguous, to_ours)
    x, a, k = _rebuild(sample, ours_in)
    ours = _as_tuple(TRANSLATE[op.name](x, a, k))
    tx, ta, tk = _rebuild(sample, theirs_in)
    theirs = _as_tuple(op.op(tx, *ta, **tk))
    if op.name == "nn.functional.batch_norm":  # the running statistics (when given), updated in place
        ours, theirs = (ours[0], *[t for t in ours[1:] if t is not None]), (theirs[0], *[ta[i] for i in (0, 1) if ta[i] is not None])
    if len(ours) != len(theirs):
        return float("inf")
    errors = [_err(o, t) for o, t in zip(ours, theirs)]
    y, ty = ours[0], theirs[0]
    if ty.requires_grad:
        if not y.requires_grad:
            return float("inf")
        dout = torch.randn(ty.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(ty.dtype)
        y.backward(dout)
        ty.backward(dout)
        for i, (o, t) in enumerate(zip(ours_in, theirs_in)):
            if t.requires_grad:
                if t.grad is None:
                    continue  # PyTorch gave it no gradient (an input the output does not depend on)
                g = o.grad
                if g is None:
                    return float("inf")
                errors.append(_err(to_ours[i](g) if to_ours and i in to_ours else g, t.grad))
    return max(errors)


# --- the tests ---------------------------------------------------------------------------------

OP_NAMES = sorted(set(TRANSLATE))


def _op_infos(name):
    if op_db is None:
        pytest.fail(f"cannot import PyTorch's OpInfo database (torch.testing._internal.common_methods_invocations, "
                    f"private API; it needs the expecttest package): {IMPORT_ERROR!r}")
    found = [op for op in op_db if op.name == name and dtype_ok(op)]
    assert found, f"PyTorch {torch.__version__} has no OpInfo named {name!r}"
    return found


def dtype_ok(op) -> bool:
    return all(d in op.supported_dtypes("cpu") for d in DTYPES)


def test_the_opinfo_database_imports():
    _op_infos("nn.functional.conv2d")


@pytest.mark.parametrize("name", OP_NAMES)
def test_opinfo_samples(name, capsys):
    infos = _op_infos(name)
    passed, refused, failures, against64 = 0, {}, [], 0
    missing = NEEDS.get(name)
    if missing and not hasattr(ops, missing):
        with capsys.disabled():
            print(f"\n[opinfo] {name}: skipped, ops.{missing} does not exist yet")
        return
    torch.manual_seed(0)
    for op in infos:
        for dtype in DTYPES:
            samples = list(op.sample_inputs("cpu", dtype, requires_grad=True))
            if name == "nn.functional.max_pool2d":
                samples = samples[::MAX_POOL_EVERY]
            for i, sample in enumerate(samples):
                for contiguous in (True, False):
                    tag = f"{op.variant_test_name or '-'} {dtype} #{i} {'contiguous' if contiguous else 'strided'}"
                    try:
                        err = run_sample(op, sample, dtype, contiguous)
                    except (ValueError, OutsideApi) as exc:
                        reason = _reason(name, str(exc))
                        if reason is None:
                            failures.append(f"{tag}: refused, reason not in REFUSED: {exc}")
                        else:
                            refused[reason] = refused.get(reason, 0) + 1
                        continue
                    except Exception as exc:  # noqa: BLE001 - any other exception is a failure, named
                        failures.append(f"{tag}: {type(exc).__name__}: {exc}")
                        continue
                    tol = FLOAT32_TOL.get(name, TOL[dtype]) if dtype == torch.float32 else TOL[dtype]
                    if not err <= tol and dtype == torch.float32:
                        # Ill-conditioned in float32 (e.g. layer norm over one value: rstd =
                        # 1/sqrt(eps) = 316 times the roundoff): then ours must be within tol of
                        # PyTorch's float64 result on the same values, the exact answer.
                        err = run_sample(op, sample, dtype, contiguous, ref_dtype=torch.float64)
                        against64 += err <= tol
                    if not err <= tol:
                        failures.append(f"{tag}: error {err:.2e} > {tol:g} ({sample.summary() if hasattr(sample, 'summary') else sample})")
                    else:
                        passed += 1
    errors_refused, error_failures = _error_inputs(name, infos)
    with capsys.disabled():
        why = "; ".join(f"{n} refused: {r}" for r, n in refused.items())
        print(f"\n[opinfo] {name}: {passed} runs passed" + (f" ({against64} against PyTorch's float64)" if against64 else "")
              + (f"; {why}" if why else "")
              + f"; error inputs refused: {errors_refused['ValueError']} with ValueError"
              + (f", {errors_refused['translation']} by the translation" if errors_refused["translation"] else ""))
    assert not failures + error_failures, f"{len(failures + error_failures)} unexpected:\n" + "\n".join(
        (failures + error_failures)[:20])


def _error_inputs(name, infos):
    refused, failures = {"ValueError": 0, "translation": 0}, []
    for op in infos:
        if op.error_inputs_func is None:
            continue
        for e in op.error_inputs("cpu"):
            s = e.sample_input
            x, a, k = s.input, list(s.args), dict(s.kwargs)
            try:
                TRANSLATE[name](x, a, k)
            except ValueError:
                refused["ValueError"] += 1
                continue
            except OutsideApi:  # e.g. rms_norm's normalized_shape=(): not expressible in our arguments
                refused["translation"] += 1
                continue
            except Exception as exc:  # noqa: BLE001
                failures.append(f"error input {e.error_regex!r}: ours raised {type(exc).__name__}: {exc}")
                continue
            failures.append(f"error input {e.error_regex!r}: ours accepted it")
    return refused, failures
