"""Property-based: every layer, called with random shapes and arguments, either gives
PyTorch's answer (forward and gradients) or raises ValueError, never another exception and
never a silently wrong result (issue 6, item 5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from customnn import ops

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)


def compare(ours, ref, tensors, tol=1e-9):
    """Run both on leaf copies; ValueError from ours is fine, anything else must match PyTorch."""
    a = [t.clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t for t in tensors]
    b = [t.clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t for t in tensors]
    try:
        ya = ours(*a)
    except ValueError as e:
        assert str(e), "a ValueError must say what is wrong"
        return "rejected"
    try:
        yb = ref(*b)
    except Exception as e:  # PyTorch refuses: then ours must have refused too
        pytest.fail(f"PyTorch raises {type(e).__name__}: {e}, but ours returned a result of shape {tuple(ya.shape)}")
    assert ya.shape == yb.shape
    torch.testing.assert_close(ya, yb, rtol=tol, atol=tol, equal_nan=True)
    if yb.requires_grad and yb.numel() and torch.isfinite(yb).all():
        g = torch.randn_like(yb)
        ya.backward(g)
        yb.backward(g)
        for ta, tb in zip(a, b):
            if isinstance(ta, torch.Tensor) and ta.requires_grad:
                torch.testing.assert_close(ta.grad, tb.grad, rtol=tol, atol=tol)
    return "equal"


small = st.integers(1, 5)
# Mostly valid arguments (so most draws are compared with PyTorch), sometimes invalid ones.
sometimes = st.sampled_from([False, False, False, True])
pos_pair = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
any_pair = st.one_of(st.integers(-1, 4), st.tuples(st.integers(-1, 4), st.integers(-1, 4)))
maybe_pair = st.one_of(pos_pair, pos_pair, pos_pair, any_pair)
pad_pair = st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)), any_pair)


@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(3, 10), w=st.integers(3, 10),
       oc=st.integers(1, 3), wrong_c=sometimes, kh=small, kw=small, rank=st.sampled_from([3, 4, 4, 4, 4]),
       stride=maybe_pair, padding=pad_pair, dilation=maybe_pair, bias=st.booleans())
def test_conv2d(n, c, h, w, oc, wrong_c, kh, kw, rank, stride, padding, dilation, bias):
    wc = c + 1 if wrong_c else c
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    if rank == 3:
        x = x[0]
    wt = torch.randn(oc, wc, kh, kw, dtype=torch.float64)
    b = torch.randn(oc, dtype=torch.float64) if bias else None
    compare(lambda x, wt, b: ops.conv2d(x, wt, b, stride, padding, dilation),
            lambda x, wt, b: F.conv2d(x, wt, b, stride, padding, dilation), [x, wt, b])


@SETTINGS
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(2, 9), w=st.integers(2, 9),
       k=maybe_pair, stride=st.one_of(st.none(), maybe_pair), padding=st.one_of(st.just(0), st.just(1), any_pair),
       kind=st.sampled_from(["max", "avg"]), ints=st.booleans())
def test_pooling(n, c, h, w, k, stride, padding, kind, ints):
    x = torch.randint(0, 3, (n, c, h, w)).double() if ints else torch.randn(n, c, h, w, dtype=torch.float64)
    ours, ref = (ops.max_pool2d, F.max_pool2d) if kind == "max" else (ops.avg_pool2d, F.avg_pool2d)
    compare(lambda x: ours(x, k, stride, padding), lambda x: ref(x, k, stride, padding), [x])


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), fin=st.integers(1, 6), wrong=sometimes,
       fout=st.integers(1, 6), bias=st.booleans())
def test_linear(shape, fin, wrong, fout, bias):
    win = fin + 1 if wrong else fin
    x = torch.randn((*shape, fin), dtype=torch.float64)
    wt = torch.randn(win, fout, dtype=torch.float64)
    b = torch.randn(fout, dtype=torch.float64) if bias else None
    compare(lambda x, wt, b: ops.linear(x, wt, b), lambda x, wt, b: F.linear(x, wt.T, b), [x, wt, b])


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), lo=st.integers(-3, 0), hi=st.integers(1, 12),
       vocab=st.integers(1, 8), dim=st.integers(1, 5))
def test_embedding(shape, lo, hi, vocab, dim):
    idx = torch.randint(lo, hi, shape)
    wt = torch.randn(vocab, dim, dtype=torch.float64)
    compare(lambda i, wt: ops.embedding(i, wt), lambda i, wt: F.embedding(i, wt), [idx, wt])


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), dim=st.integers(-5, 4),
       which=st.sampled_from(["softmax", "log_softmax"]), scale=st.sampled_from([1.0, 100.0]))
def test_softmax_family(shape, dim, which, scale):
    x = torch.randn(tuple(shape), dtype=torch.float64) * scale
    compare(lambda x: getattr(ops, which)(x, dim), lambda x: getattr(F, which)(x, dim), [x])


@SETTINGS
@given(n=st.integers(1, 6), c=st.integers(1, 6), extra=st.lists(st.integers(1, 3), max_size=2),
       lo=st.integers(-2, 0), hi=st.integers(1, 8), ignore=st.sampled_from([-100, 0, 1]),
       reduction=st.sampled_from(["mean", "sum", "none", "avg"]), smoothing=st.sampled_from([0.0, 0.1, 0.5, 1.5]))
def test_cross_entropy(n, c, extra, lo, hi, ignore, reduction, smoothing):
    logits = torch.randn(n, c, *extra, dtype=torch.float64)
    target = torch.randint(lo, hi, (n, *extra))
    compare(lambda l, t: ops.cross_entropy(l, t, ignore_index=ignore, reduction=reduction, label_smoothing=smoothing),
            lambda l, t: F.cross_entropy(l, t, ignore_index=ignore, reduction=reduction, label_smoothing=smoothing),
            [logits, target])


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), wdim=st.integers(1, 5),
       affine=st.booleans(), eps=st.sampled_from([1e-5, 1e-3]))
def test_layer_norm(shape, wdim, affine, eps):
    x = torch.randn(tuple(shape), dtype=torch.float64)
    wt = torch.randn(wdim, dtype=torch.float64) if affine else None
    b = torch.randn(wdim, dtype=torch.float64) if affine else None
    compare(lambda x, wt, b: ops.layer_norm(x, wt, b, eps),
            lambda x, wt, b: F.layer_norm(x, (x.shape[-1],), wt, b, eps), [x, wt, b])


@SETTINGS
@given(n=st.integers(1, 4), c=st.integers(1, 4), wrong=sometimes, hw=st.sampled_from([(), (3,), (2, 3)]),
       training=st.booleans(), momentum=st.sampled_from([0.1, 0.5]))
def test_batch_norm(n, c, wrong, hw, training, momentum):
    wc = c + 1 if wrong else c
    x = torch.randn(n, c, *hw, dtype=torch.float64)
    wt, b = torch.randn(wc, dtype=torch.float64), torch.randn(wc, dtype=torch.float64)
    rm, rv = torch.randn(wc, dtype=torch.float64), torch.rand(wc, dtype=torch.float64) + 0.5
    rm2, rv2 = rm.clone(), rv.clone()
    result = compare(lambda x, wt, b: ops.batch_norm(x, wt, b, rm, rv, training, momentum),
                     lambda x, wt, b: F.batch_norm(x, rm2, rv2, wt, b, training, momentum), [x, wt, b])
    if result == "equal":
        torch.testing.assert_close(rm, rm2)
        torch.testing.assert_close(rv, rv2)


@SETTINGS
@given(b=st.integers(1, 2), nh=st.integers(1, 3), tq=st.integers(1, 6), tk=st.integers(1, 6), hs=st.integers(1, 5),
       wrong=sometimes, causal=st.booleans(), rank=st.sampled_from([3, 4, 4, 4]))
def test_attention(b, nh, tq, tk, hs, wrong, causal, rank):
    hs_k = hs + 1 if wrong else hs
    q = torch.randn(b, nh, tq, hs, dtype=torch.float64)
    k = torch.randn(b, nh, tk, hs_k, dtype=torch.float64)
    v = torch.randn(b, nh, tk, hs, dtype=torch.float64)
    if rank == 3:
        q, k, v = q[0], k[0], v[0]
    compare(lambda q, k, v: ops.attention(q, k, v, causal=causal),
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal), [q, k, v])


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=3), approximate=st.sampled_from(["none", "tanh"]))
def test_activations(shape, approximate):
    x = torch.randn(tuple(shape), dtype=torch.float64) * 4
    compare(ops.relu, F.relu, [x])
    compare(lambda x: ops.gelu(x, approximate), lambda x: F.gelu(x, approximate=approximate), [x])


@SETTINGS
@given(p=st.floats(-1.0, 2.0), training=st.booleans())
def test_dropout_probability(p, training):
    x = torch.randn(50, dtype=torch.float64)
    try:
        y = ops.dropout(x, p, training)
    except ValueError:
        assert not 0.0 <= p <= 1.0
        return
    assert 0.0 <= p <= 1.0
    if training and p == 1.0:  # every element dropped
        assert torch.equal(y, torch.zeros_like(x))
        return
    kept = y != 0
    torch.testing.assert_close(y[kept], (x / (1 - p) if training else x)[kept])


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), wdim=st.integers(1, 5), affine=st.booleans(),
       eps=st.sampled_from([None, 1e-6, 1e-2]), scale=st.sampled_from([1.0, 1e-3, 1e3]))
def test_rms_norm(shape, wdim, affine, eps, scale):
    x = torch.randn(tuple(shape), dtype=torch.float64) * scale
    wt = torch.randn(wdim, dtype=torch.float64) if affine else None
    compare(lambda x, wt: ops.rms_norm(x, wt, eps), lambda x, wt: F.rms_norm(x, (x.shape[-1],), wt, eps), [x, wt])


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=3))
def test_silu(shape):
    compare(ops.silu, F.silu, [torch.randn(tuple(shape), dtype=torch.float64) * 4])


@SETTINGS
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), T=st.integers(1, 6), hs=st.integers(1, 8),
       table_T=st.integers(1, 6), base=st.sampled_from([10.0, 10000.0]))
def test_rope(lead, T, hs, table_T, base):
    # Odd head sizes and tables of another length must be refused; otherwise it is the plain
    # rotate_half formula of customnn_ref.twins.apply_rope (the torch.nn twin's RoPE).
    from customnn_ref.twins import apply_rope

    x = torch.randn(*lead, T, hs, dtype=torch.float64)
    if hs % 2:
        with pytest.raises(ValueError, match="hs even"):
            ops.rope(x, *ops.rope_tables(T, 2, dtype=torch.float64))
        return
    cos, sin = ops.rope_tables(table_T, hs, base, dtype=torch.float64)
    result = compare(ops.rope, apply_rope, [x, cos, sin])
    assert result == ("equal" if table_T == T and x.dim() >= 2 else "rejected")
