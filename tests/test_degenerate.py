"""Every layer on degenerate input (issue 14, class 6): empty tensors and non-finite values.

Generated, layer by layer (every layer of ``ops.LAYERS``): each layer has a list
of small input builders, and from them come the cases:

- **zero sizes**: a zero-size batch, zero features / channels / classes / positions where the
  layer has them, zero spatial size; PyTorch's layer either gives an empty (or a well-defined)
  result, and then ours must give the same result and gradients of the same shapes and values,
  or it raises, and then ours must raise ValueError (nothing else);
- **non-finite values**: each floating-point input of each builder in turn gets a NaN, a +inf
  or a -inf in one entry (and, in float64 on non-empty inputs, in a whole row of the last dim),
  and the upstream gradient gets NaN and inf entries: the forward values, NaN and infinity
  positions included (``torch.testing.assert_close(..., equal_nan=True)``), and every input's
  gradient must equal PyTorch's.

Each builder runs in float64 and float32, within ``customnn_ref.oracle.TOL``. PyTorch's layer is
the reference (``F.*``; rope: the torch.nn twin's formula, ``customnn_ref.twins.apply_rope``;
flatten: ``torch.flatten``). PyTorch's float32 kernels disagree with its float64 ones on a few
non-finite inputs, so there ours may equal either (``_check_any_dtype``). Where ours knowingly
differs from PyTorch, the case is listed in ``KNOWN`` with the reason and must keep failing in
the way stated (a strict xfail), so that a change on either side is seen.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from customnn_ref.oracle import TOL
from customnn_ref.twins import apply_rope

# One thread: the tensors are tiny, and a second thread only adds its hand-over to every call.
pytestmark = pytest.mark.usefixtures("one_thread")

NAN, INF = float("nan"), float("inf")
SPECIALS = {"nan": NAN, "inf": INF, "-inf": -INF}
DTYPES = (torch.float64, torch.float32)
COVERED = tuple(ops.LAYERS)


class Case:
    """One call of our layer and PyTorch's on the same inputs.

    ``inputs``: tensors (and other values) handed to both as positional arguments; floating-point
    tensors in ``grad`` (their positions) require grad. ``poison``: the positions of the inputs
    that get non-finite values in the generated variants (default: every float tensor in grad)."""

    def __init__(self, layer, name, ours, ref, inputs, grad=None, poison=None, dout=True):
        self.layer, self.name, self.ours, self.ref, self.inputs = layer, name, ours, ref, list(inputs)
        floats = [i for i, t in enumerate(self.inputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        self.grad = floats if grad is None else list(grad)
        self.poison = self.grad if poison is None else list(poison)
        self.dout_special = None  # set on the variants whose upstream gradient holds NaN / inf
        self.dout = dout  # False: no non-finite upstream gradient variant

    def variant(self, name, inputs=None, dout_special=None):
        c = Case(self.layer, f"{self.name}/{name}", self.ours, self.ref, inputs or self.inputs, self.grad, [], False)
        c.dout_special = dout_special
        return c


def _rand(shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _builders(dtype):
    """The base cases and the zero-size cases of every layer, in ``dtype``."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0):
        return _rand(shape, dtype, g, scale)

    cases = []

    def add(layer, name, ours, ref, inputs, **kw):
        cases.append(Case(layer, name, ours, ref, inputs, **kw))

    # -- conv2d: ours and F.conv2d take the same arguments
    for name, xs, ws, bias, kw in [
        ("base", (2, 3, 5, 5), (4, 3, 3, 3), True, dict(padding=1)),
        ("strided", (1, 2, 6, 5), (3, 2, 2, 3), False, dict(stride=2, dilation=(1, 2))),
        ("groups", (2, 4, 4, 4), (4, 2, 3, 3), True, dict(groups=2, padding="same")),
        ("unbatched", (3, 5, 5), (4, 3, 3, 3), True, {}),
        ("zero-batch", (0, 3, 5, 5), (4, 3, 3, 3), True, dict(padding=1)),
        ("zero-in-channels", (2, 0, 5, 5), (4, 0, 3, 3), True, {}),
        ("zero-out-channels", (2, 3, 5, 5), (0, 3, 3, 3), True, {}),
        ("zero-out-channels-unbatched", (3, 5, 5), (0, 3, 3, 3), False, {}),
        ("zero-height", (2, 3, 0, 5), (4, 3, 1, 1), True, {}),
        ("zero-height-padded", (2, 3, 0, 5), (4, 3, 1, 1), True, dict(padding=1)),
        ("zero-height-kernel-too-big", (2, 3, 0, 5), (4, 3, 3, 3), True, dict(padding=1)),
        ("zero-kernel", (2, 3, 5, 5), (4, 3, 0, 3), True, {}),
        ("zero-groups-channels", (2, 0, 4, 4), (4, 0, 3, 3), True, dict(groups=2)),
    ]:
        inputs = [r(*xs), r(*ws), r(ws[0]) if bias else None]
        add("conv2d", name, lambda x, w, b, kw=kw: ops.conv2d(x, w, b, **kw),
            lambda x, w, b, kw=kw: F.conv2d(x, w, b, **kw), inputs)

    # -- pad2d(x, padding, value) == F.pad(x, padding, value=value)
    for name, xs, pad, value in [
        ("base", (2, 3, 4, 5), (1, 1, 2, 2), 0.0),
        ("crop", (2, 3, 4, 5), (-1, 2, 0, -2), 1.5),
        ("nan-value", (2, 3, 4, 5), (1, 0, 0, 1), NAN),
        ("inf-value", (2, 3, 4, 5), (1, 0, 0, 1), INF),
        ("zero-batch", (0, 3, 4, 5), (1, 1, 2, 2), 0.0),
        ("zero-channels", (2, 0, 4, 5), (1, 1, 2, 2), 0.0),
        ("zero-height", (2, 3, 0, 5), (1, 1, 2, 2), 0.5),
        ("zero-height-crop", (2, 3, 0, 5), (1, 1, -1, 0), 0.0),
        ("zero-width-to-zero", (2, 3, 4, 2), (-1, -1), 0.0),
        ("empty-1d", (0,), (2, 1), 3.0),
    ]:
        add("pad2d", name, lambda x, pad=pad, value=value: ops.pad2d(x, pad, value),
            lambda x, pad=pad, value=value: F.pad(x, pad, value=value), [r(*xs)])

    # -- max_pool2d / avg_pool2d: the same arguments as F's
    for name, xs, kw in [
        ("base", (2, 3, 6, 6), dict(kernel_size=3, stride=2, padding=1)),
        ("ceil", (1, 2, 5, 7), dict(kernel_size=2, ceil_mode=True)),
        ("unbatched", (3, 4, 4), dict(kernel_size=2)),
        ("zero-batch", (0, 3, 6, 6), dict(kernel_size=2)),
        ("zero-channels", (2, 0, 6, 6), dict(kernel_size=2)),
        ("zero-height", (2, 3, 0, 6), dict(kernel_size=1)),
        ("zero-height-padded", (2, 3, 0, 6), dict(kernel_size=3, padding=1)),
        ("zero-width", (2, 3, 6, 0), dict(kernel_size=2)),
        ("unbatched-zero-channels", (0, 4, 4), dict(kernel_size=2)),
    ]:
        add("max_pool2d", name, lambda x, kw=kw: ops.max_pool2d(x, **kw),
            lambda x, kw=kw: F.max_pool2d(x, **kw), [r(*xs)])
        add("max_pool2d", name + "-indices", lambda x, kw=kw: ops.max_pool2d(x, **kw, return_indices=True),
            lambda x, kw=kw: F.max_pool2d(x, **kw, return_indices=True), [r(*xs)])
        add("avg_pool2d", name, lambda x, kw=kw: ops.avg_pool2d(x, **kw),
            lambda x, kw=kw: F.avg_pool2d(x, **kw), [r(*xs)])
        if kw.get("padding"):
            add("avg_pool2d", name + "-no-pad-count", lambda x, kw=kw: ops.avg_pool2d(x, **kw, count_include_pad=False),
                lambda x, kw=kw: F.avg_pool2d(x, **kw, count_include_pad=False), [r(*xs)])

    # -- elementwise activations
    acts = [("relu", ops.relu, F.relu), ("gelu", ops.gelu, F.gelu),
            ("gelu", lambda x: ops.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
            ("silu", ops.silu, F.silu)]
    for i, (layer, ours, ref) in enumerate(acts):
        tag = "tanh-" if i == 2 else ""
        for name, xs in [("base", (3, 4)), ("scalar", ()), ("zero-batch", (0, 4)), ("zero-features", (3, 0)),
                         ("empty-1d", (0,))]:
            add(layer, tag + name, ours, ref, [r(*xs, scale=4.0)])

    # -- flatten(x) == x.flatten(1)
    for name, xs in [("base", (2, 3, 4)), ("zero-batch", (0, 3, 4)), ("zero-channels", (2, 0, 4)),
                     ("zero-last", (2, 3, 0)), ("2d-zero", (0, 0))]:
        add("flatten", name, ops.flatten, lambda x: torch.flatten(x, 1), [r(*xs)])

    # -- linear(x, w (in, out), b) == F.linear(x, w.T, b); narrow (<= 16 outputs) and wide paths
    for name, xs, (cin, cout), bias in [
        ("base", (3, 4), (4, 5), True),
        ("wide", (2, 3, 4), (4, 20), True),
        ("no-bias", (3, 4), (4, 5), False),
        ("zero-batch", (0, 4), (4, 5), True),
        ("zero-batch-wide", (0, 4), (4, 20), False),
        ("zero-features", (3, 0), (0, 5), True),
        ("zero-features-no-bias", (2, 3, 0), (0, 5), False),
        ("zero-features-wide", (3, 0), (0, 20), True),
        ("zero-features-1d", (0,), (0, 5), True),
        ("zero-out", (3, 4), (4, 0), True),
        ("zero-everything", (0, 0), (0, 0), True),
        ("1d", (4,), (4, 5), True),
    ]:
        add("linear", name, lambda x, w, b: ops.linear(x, w, b), lambda x, w, b: F.linear(x, w.T, b),
            [r(*xs), r(cin, cout), r(cout) if bias else None])

    # -- embedding(idx, w) == F.embedding(idx, w)
    for name, idx, ws in [
        ("base", torch.tensor([[0, 4, 2], [2, 2, 1]]), (5, 4)),
        ("zero-tokens", torch.zeros(0, dtype=torch.long), (5, 4)),
        ("zero-tokens-2d", torch.zeros(2, 0, dtype=torch.long), (5, 4)),
        ("zero-dim", torch.tensor([1, 0, 1]), (3, 0)),
        ("zero-vocab", torch.zeros(0, dtype=torch.long), (0, 4)),
        ("zero-vocab-index", torch.tensor([0]), (0, 4)),
    ]:
        add("embedding", name, ops.embedding, F.embedding, [idx, r(*ws)])

    # -- softmax / log_softmax
    for layer in ("softmax", "log_softmax"):
        ours, ref = getattr(ops, layer), getattr(F, layer)
        for name, xs, dim in [("base", (3, 4), -1), ("dim0", (3, 4), 0), ("scalar", (), 0),
                              ("zero-batch", (0, 4), -1), ("zero-dim", (3, 0), -1), ("zero-dim0", (0, 4), 0),
                              ("zero-both", (0, 0), 1), ("empty-1d", (0,), 0), ("zero-middle", (2, 0, 3), 1)]:
            add(layer, name, lambda x, dim=dim, ours=ours: ours(x, dim), lambda x, dim=dim, ref=ref: ref(x, dim),
                [r(*xs, scale=3.0)])

    # -- cross_entropy, class indices and probabilities
    def ce(name, logits, target, grad=None, **kw):
        add("cross_entropy", name, lambda l, t, kw=kw: ops.cross_entropy(l, t, **kw),
            lambda l, t, kw=kw: F.cross_entropy(l, t, **kw), [logits, target], grad=grad)

    tgt = torch.tensor([1, 0, 4])
    for red in ("mean", "sum", "none"):
        ce(f"base-{red}", r(3, 5), tgt, reduction=red)
        ce(f"smooth-{red}", r(3, 5), tgt, reduction=red, label_smoothing=0.2)
        ce(f"weighted-{red}", r(3, 5), tgt, reduction=red, weight=r(5).abs())
        ce(f"ignore-{red}", r(3, 5), torch.tensor([1, -100, 4]), reduction=red)
        ce(f"probs-{red}", r(3, 5), r(3, 5).softmax(1), reduction=red)
        ce(f"zero-batch-{red}", r(0, 5), torch.zeros(0, dtype=torch.long), reduction=red)
        ce(f"zero-batch-smooth-{red}", r(0, 5), torch.zeros(0, dtype=torch.long), reduction=red, label_smoothing=0.1)
        ce(f"zero-batch-weighted-{red}", r(0, 5), torch.zeros(0, dtype=torch.long), reduction=red, weight=r(5).abs())
        ce(f"zero-batch-probs-{red}", r(0, 5), r(0, 5), reduction=red)
        ce(f"zero-spatial-{red}", r(2, 5, 0), torch.zeros(2, 0, dtype=torch.long), reduction=red)
        ce(f"zero-classes-{red}", r(0, 0), torch.zeros(0, dtype=torch.long), reduction=red)
        ce(f"zero-classes-probs-{red}", r(3, 0), r(3, 0), reduction=red)
        ce(f"all-ignored-{red}", r(2, 5), torch.tensor([-100, -100]), reduction=red)
    ce("zero-classes-index", r(3, 0), tgt.clamp(max=0))
    ce("1d", r(5), torch.tensor(3))

    # -- layer_norm(x, w, b, eps, normalized_shape) == F.layer_norm(x, shape, w, b, eps)
    for name, xs, shape, affine in [
        ("base", (3, 4), (4,), True), ("no-affine", (3, 4), (4,), False), ("2-dims", (2, 3, 4), (3, 4), True),
        ("zero-batch", (0, 4), (4,), True), ("zero-features", (3, 0), (0,), True),
        ("zero-features-no-affine", (2, 3, 0), (0,), False), ("zero-features-2-dims", (3, 2, 0), (2, 0), True),
        ("zero-everything", (0, 0), (0,), True), ("1d-zero", (0,), (0,), True),
    ]:
        w, b = (r(*shape), r(*shape)) if affine else (None, None)
        add("layer_norm", name, lambda x, w, b, shape=shape: ops.layer_norm(x, w, b, 1e-5, normalized_shape=shape),
            lambda x, w, b, shape=shape: F.layer_norm(x, shape, w, b, 1e-5), [r(*xs), w, b])

    # -- rms_norm(x, w, eps) == F.rms_norm(x, (C,), w, eps)
    for name, xs, affine, eps in [("base", (3, 4), True, None), ("no-affine", (3, 4), False, 1e-6),
                                  ("zero-batch", (0, 4), True, None), ("zero-features", (3, 0), True, None),
                                  ("zero-features-no-affine", (2, 3, 0), False, 1e-6), ("1d-zero", (0,), True, None)]:
        add("rms_norm", name, lambda x, w, eps=eps: ops.rms_norm(x, w, eps),
            lambda x, w, eps=eps: F.rms_norm(x, (x.shape[-1],), w, eps), [r(*xs), r(xs[-1]) if affine else None])

    # -- batch_norm: ours (x, w, b, rm, rv, training, momentum, eps), F's (x, rm, rv, w, b, ...);
    # the running statistics (updated in place when training) are compared as extra outputs
    def bn_ours(x, w, b, rm, rv, training):
        return ops.batch_norm(x, w, b, rm, rv, training, 0.1, 1e-5), rm, rv

    def bn_ref(x, w, b, rm, rv, training):
        return F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5), rm, rv

    for training in (True, False):
        mode = "train" if training else "eval"
        for name, xs in [("base", (4, 3, 2, 2)), ("2d", (5, 3)), ("zero-batch", (0, 3, 2, 2)),
                         ("zero-batch-2d", (0, 3)), ("zero-channels", (4, 0, 2, 2)), ("zero-spatial", (4, 3, 0)),
                         ("one-value", (1, 3))]:
            C = xs[1]
            add("batch_norm", f"{mode}-{name}", bn_ours, bn_ref,
                [r(*xs), r(C), r(C), r(C), r(C).abs() + 0.5, training], grad=[0, 1, 2],
                poison=[0, 1, 2] + ([] if training else [3, 4]))

    # -- dropout: F.dropout draws its own mask, so p in {0, 1} and eval mode are compared with
    # F.dropout, and 0 < p < 1 with PyTorch's formula x * mask / (1 - p) on our mask (drawn again
    # from the same generator)
    def drop_ours(x, p, training):
        return ops.dropout(x, p, training, generator=torch.Generator().manual_seed(7))

    def drop_ref(x, p, training):
        if training and 0 < p < 1:
            keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32) >= p
            return x * keep.to(x.dtype) * (1.0 / (1.0 - p))
        return F.dropout(x, p, training)

    for name, xs in [("base", (3, 4)), ("zero-batch", (0, 4)), ("zero-features", (3, 0)), ("scalar", ())]:
        for p, training in ((0.5, True), (0.0, True), (1.0, True), (0.5, False)):
            add("dropout", f"{name}-p{p}-{'train' if training else 'eval'}", drop_ours, drop_ref, [r(*xs), p, training])

    # -- rope(x, cos, sin) == the twin's rotate_half formula; the tables may want gradients too
    for name, lead, T, hs in [("base", (2, 3), 3, 4), ("zero-batch", (0, 3), 3, 4), ("zero-positions", (2, 3), 0, 4),
                              ("zero-head-size", (2, 3), 3, 0), ("no-lead", (), 3, 4), ("zero-lead", (0,), 0, 2)]:
        add("rope", name, ops.rope, apply_rope, [r(*lead, T, hs), r(T, hs // 2), r(T, hs // 2)])

    # -- attention(q, k, v, causal, attn_mask=m) == F.scaled_dot_product_attention(q, k, v, m, is_causal=causal);
    # "tiled": small blocks force the tiled path. Masks: boolean (not poisoned: no NaN to hold) or
    # float requiring grad with -inf entries; both drop every key of query 1.
    def att(causal, **blocks):
        return (lambda q, k, v, m: ops.attention(q, k, v, causal, attn_mask=m, **blocks),
                lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal))

    def att_mask(kind, shape):
        keep = torch.rand(shape, generator=g) > 0.3
        keep[..., 1, :] = False
        if kind == "bool":
            return keep
        return r(*shape).masked_fill(~keep, -INF)

    tiles = dict(block_q=2, block_k=3)
    for name, lead, T, S, hs, mask in [
        ("base", (2, 2), 5, 5, 4, None), ("longer-keys", (1, 2), 4, 7, 3, None), ("unbatched", (2,), 5, 6, 4, None),
        ("bool-mask", (2, 2), 5, 7, 4, ("bool", (5, 7))), ("float-mask", (2, 2), 5, 7, 4, ("float", (2, 1, 5, 7))),
        ("unbatched-float-mask", (2,), 4, 5, 3, ("float", (4, 5))),
        ("zero-batch", (0, 2), 5, 5, 4, None), ("zero-heads", (2, 0), 5, 5, 4, None),
        ("zero-queries", (2, 2), 0, 5, 4, None), ("zero-keys", (2, 2), 5, 0, 4, None),
        ("zero-head-size", (2, 2), 5, 5, 0, None), ("zero-both", (2, 2), 0, 0, 4, None),
        ("unbatched-zero-queries", (2,), 0, 4, 3, None), ("zero-keys-float-mask", (2, 2), 3, 0, 4, ("float", (3, 0))),
        ("zero-head-size-float-mask", (1, 2), 3, 4, 0, ("float", (3, 4))),
    ]:
        m = None if mask is None else att_mask(*mask)
        for causal in ((False,) if mask else (True, False)):
            for path, blocks in (("", {}), ("tiled-", tiles)):
                ours, ref = att(causal, **blocks)
                add("attention", f"{path}{name}-{'causal' if causal else 'full'}", ours, ref,
                    [r(*lead, T, hs), r(*lead, S, hs), r(*lead, S, hs), m])

    return cases


def _all_cases():
    """Every case, in both dtypes, with its generated non-finite variants: (id, dtype, case)."""
    out = []
    for dtype in DTYPES:
        for case in _builders(dtype):
            cid = f"{case.layer}-{case.name}-{str(dtype)[6:]}"
            out.append((cid, case))
            if not any(isinstance(t, torch.Tensor) and t.numel() for t in case.inputs):
                continue  # an empty case has no entry to make non-finite
            # A whole row only in float64 and for inputs that are not empty; float32 and the
            # zero-size cases get one entry (enough to see NaN reach an empty result's gradients).
            empty = any(isinstance(t, torch.Tensor) and t.numel() == 0 for t in case.inputs)
            places = ("one", "row") if dtype == torch.float64 and not empty else ("one",)
            if empty and dtype != torch.float64:
                places = ()
            for i in case.poison:
                t = case.inputs[i]
                if not isinstance(t, torch.Tensor) or t.numel() == 0:
                    continue
                for sname, v in SPECIALS.items():
                    for where in places:
                        bad = t.clone()
                        flat = bad.view(-1) if where == "one" else bad.view(-1, bad.shape[-1] if bad.dim() else 1)
                        flat[min(1, flat.shape[0] - 1)] = v  # the 2nd entry (or row), the 1st when alone
                        inputs = list(case.inputs)
                        inputs[i] = bad
                        out.append((f"{cid}/in{i}-{where}-{sname}", case.variant(f"in{i}-{where}-{sname}", inputs)))
            if case.dout:
                out.append((f"{cid}/dout-nonfinite", case.variant("dout-nonfinite", dout_special=True)))
    return out


CASES = _all_cases()


def _fresh(case, dtype=None):
    out = []
    for i, t in enumerate(case.inputs):
        if isinstance(t, torch.Tensor):
            t = t.detach().clone()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            t.requires_grad_(i in case.grad)
        out.append(t)
    return out


def _tuple(y):
    return y if isinstance(y, tuple) else (y,)


def _tol(t: torch.Tensor):
    tol = TOL.get(t.dtype, 0.0)
    return dict(rtol=tol, atol=tol)


def _upstream(y: torch.Tensor, special: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    if special and dout.numel():
        flat = dout.view(-1)
        for k, v in enumerate((NAN, INF, -INF)):
            flat[(3 * k) % flat.numel()] = v
    return dout


def check(case, ref_dtype=None):
    """Ours against PyTorch's on the case: both refuse (ours with ValueError), or the same forward
    values (NaN and infinities in the same places) and the same gradient for every input. With
    ``ref_dtype``, PyTorch's side runs on the same values in that dtype."""
    a, b = _fresh(case), _fresh(case, ref_dtype)
    try:
        theirs = _tuple(case.ref(*b))
    except Exception as exc:  # noqa: BLE001 - PyTorch refuses: ours must refuse with ValueError
        with pytest.raises(ValueError):
            case.ours(*a)
        return f"both refuse ({type(exc).__name__})"
    ours = _tuple(case.ours(*a))
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs):
        if ref_dtype is not None and t.is_floating_point():
            t = t.to(o.dtype)
        assert o.shape == t.shape and o.dtype == t.dtype, (o.shape, t.shape, o.dtype, t.dtype)
        torch.testing.assert_close(o, t, equal_nan=True, **_tol(t))
    y, ty = ours[0], theirs[0]
    leaves_b = [t for i, t in enumerate(b) if i in case.grad and isinstance(t, torch.Tensor)]
    leaves_a = [t for i, t in enumerate(a) if i in case.grad and isinstance(t, torch.Tensor)]
    if not ty.requires_grad:
        assert not y.requires_grad or not leaves_a
        return "forward"
    assert y.requires_grad, "ours gives no gradient where PyTorch does"
    dout = _upstream(y, case.dout_special)
    g_theirs = torch.autograd.grad(ty, leaves_b, dout.to(ty.dtype), allow_unused=True)
    g_ours = torch.autograd.grad(y, leaves_a, dout, allow_unused=True)
    for k, (go, gt, leaf) in enumerate(zip(g_ours, g_theirs, leaves_a)):
        go = torch.zeros_like(leaf) if go is None else go
        gt = torch.zeros_like(leaf) if gt is None else gt.to(leaf.dtype)
        assert go.shape == leaf.shape, f"gradient {k}: shape {tuple(go.shape)}, input {tuple(leaf.shape)}"
        torch.testing.assert_close(go, gt, equal_nan=True, **_tol(gt), msg=lambda m, k=k: f"gradient {k}: {m}")
    return "equal"


# Attention cases where PyTorch's default CPU kernel gives 0 for a row of NaN scores and ours NaN
ATTENTION_FLASH_NAN_ROWS = (
    r"^attention-(base-causal-.*/(in0-.*|in1-(one-(inf|nan)|row-.*))|"
    r"longer-keys-causal-.*/(in0-.*|in1-(one-(nan|-inf)|row-.*))|"
    r"base-full-.*/in0-(one-nan|row-(-inf|nan))|longer-keys-full-.*/in0-(one-nan|row-(inf|nan))|"
    r"tiled-base-full-.*/in0-(one-nan|row-.*)|tiled-longer-keys-full-.*/in0-(one-nan|row-(-inf|nan)))$")


# Where ours and PyTorch's knowingly differ: (pattern of the case id, why). Each such case must
# still differ (strict xfail), so a change on either side is noticed.
KNOWN = [  # (pattern, the exception the case raises, why)
    (r"^conv2d-zero-(in|groups)-channels", ValueError, "zero input channels: PyTorch returns an (N, 0, Ho, Wo) tensor, not the "
     "(N, O, Ho, Wo) a convolution gives; ours refuses with ValueError (empty x or weight)"),
    (r"^(batch_norm-(train|eval)-(base|2d)-.*/in1-.*|batch_norm-eval-one-value-.*/in1-.*|"
     r"layer_norm-(base|2-dims)-.*/in1-one)-(inf|-inf)$", AssertionError, "an infinite affine weight: PyTorch folds the "
     "weight into other terms (batch norm: x * (w rstd) + (b - mean w rstd); layer norm's dx: sums of dout * w), so "
     "its inf - inf NaNs fall elsewhere than in ours, which keeps xhat * w + b and the textbook dx"),
    (r"^relu-(base|scalar)-.*/dout-nonfinite$", AssertionError, "a NaN or inf upstream gradient at x <= 0: PyTorch's mask selects "
     "(0), ours multiplies (0 * NaN = NaN); a select costs 3-5x the multiply on CPU, and the gradient is NaN anyway"),
    (r"^cross_entropy-(?!zero-).*/dout-nonfinite$", AssertionError, "a NaN upstream gradient of the loss (the root of the graph): "
     "PyTorch composes nll_loss's and log_softmax's backwards, ours is one fused (p - q) * dloss, NaN in other places"),
    # attention: the cases each pattern names are checked against SDPA's math kernel below
    (ATTENTION_FLASH_NAN_ROWS, AssertionError, "a query whose scores hold a NaN (or inf - inf): PyTorch's default CPU kernel "
     "(flash attention) returns 0 for its output, as for a fully masked row (its row maximum skips NaN), yet NaN "
     "gradients; ours gives NaN, as the docstring's formula and PyTorch's own math kernel do"),
    (r"^attention-tiled-(unbatched-causal-.*/(in[012]-.*|dout-nonfinite)|base-causal-.*/(in0-.*|in1-(one-(nan|inf)|row-.*)|"
     r"in2-(one|row)-(-?inf)|dout-nonfinite)|longer-keys-causal-.*/(in[012]-.*|dout-nonfinite))$", AssertionError, "a NaN or infinite q, k, v or upstream gradient with causal=True on the tiled "
     "path: it skips the key blocks above the diagonal, so the value reaches the gradients of later keys only through "
     "the tiles it shares with them, where PyTorch multiplies it by their zero weights (0 * inf = NaN) everywhere"),
    (r"^attention-(base-causal-.*/in1-one--inf|(unbatched|longer-keys)-causal-.*/in1-one-inf)$", AssertionError,
     "an infinite k that makes every score of a query -inf, without a mask: PyTorch's safe softmax gives the row 0, "
     "ours NaN (exp(-inf - (-inf))); the guard that gives masked rows 0 is left out of the maskless path, where its "
     "two operations would cost a generation step 15%"),
    (r"^attention-(tiled-)?zero-keys-.*/(in0-.*|dout-nonfinite)$", AssertionError, "no keys (S = 0) with a NaN or "
     "infinite q or upstream gradient: PyTorch's output or dq is NaN over the head; the weighted sum over no keys is "
     "0, and ours gives 0 and zero gradients whatever q and dout hold"),
    (r"^attention-(tiled-)?unbatched-float-mask-full-.*/dout-nonfinite$", AssertionError, "a NaN or infinite "
     "upstream gradient reaching a float mask's gradient: ours forms softmax's row sums as dout . y "
     "(FlashAttention's form, attention.py's docstring), PyTorch's math kernel as sum(P * dP), so inf - inf gives "
     "NaN elsewhere"),
]


def _marks(cid: str) -> list:
    for pattern, raises, why in KNOWN:
        if re.search(pattern, cid):
            return [pytest.mark.xfail(strict=True, raises=raises, reason=why)]
    return []


def _check_any_dtype(cid, case):
    """float32 on non-finite values: PyTorch's own float32 kernels differ from its float64 ones
    (gelu(+inf) is NaN in its vectorised float32 kernel; its float32 convolution skips the zero
    padding that a NaN or infinite weight would multiply), so ours may equal either."""
    try:
        check(case)
    except AssertionError as first:
        dtype = next(t.dtype for t in case.inputs if isinstance(t, torch.Tensor) and t.is_floating_point())
        if dtype != torch.float32 or "/" not in cid:
            raise
        try:
            check(case, ref_dtype=torch.float64)
        except (Exception, pytest.fail.Exception):  # not equal to float64 either (or it cannot run): the first
            raise first from None


@pytest.mark.parametrize("cid,case", [pytest.param(cid, c, id=cid, marks=_marks(cid)) for cid, c in CASES])
def test_degenerate(cid, case):
    _check_any_dtype(cid, case)


FLASH_NAN_ROWS = [(cid, c) for cid, c in CASES if re.search(ATTENTION_FLASH_NAN_ROWS, cid)]


@pytest.mark.parametrize("cid,case", [pytest.param(cid, c, id=cid) for cid, c in FLASH_NAN_ROWS])
def test_attention_on_nan_scores_equals_pytorchs_math_kernel(cid, case):
    # The KNOWN reason for these cases: ours equals SDPA as its math kernel computes it.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        check(case)


def test_every_layer_has_zero_size_and_non_finite_cases():
    layers = {c.layer for _, c in CASES}
    assert layers == set(COVERED), set(COVERED) ^ layers
    for layer in COVERED:
        names = [cid for cid, c in CASES if c.layer == layer]
        assert any("zero" in n or "empty" in n for n in names), layer
        for s in SPECIALS:
            assert any(n.endswith(f"-{s}") for n in names), (layer, s)
        assert any(n.endswith("dout-nonfinite") for n in names), layer
