"""Attention against F.scaled_dot_product_attention: forward and dq/dk/dv, on awkward shapes,
float64 and float32, gradcheck, the loop reference, dropout's mask, and each ValueError."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from oracle import TOL, check_layer, max_rel_err


def sdpa(q, k, v, causal=True, dropout_p=0.0):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)


def qkv(B, nh, T, hs, S=None, dtype=torch.float64, requires_grad=True):
    S = T if S is None else S
    q = torch.randn(B, nh, T, hs, dtype=dtype)
    k = torch.randn(B, nh, S, hs, dtype=dtype)
    v = torch.randn(B, nh, S, hs, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


SHAPES = [  # (B, nh, T, hs)
    (2, 4, 16, 8),
    (1, 3, 7, 5),  # batch 1, odd T, odd head size
    (3, 2, 1, 4),  # T = 1
    (2, 1, 33, 3),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_sdpa(shape, causal, dtype):
    errors = check_layer(ops.attention, sdpa, qkv(*shape, dtype=dtype), dict(causal=causal))
    assert set(errors) == {"forward", "grad0", "grad1", "grad2"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_contiguous_views_as_in_a_gpt(dtype):
    # q, k, v as a GPT makes them: one (B, T, 3C) projection, split, viewed as heads, transposed
    B, T, nh, hs = 2, 11, 3, 6
    C = nh * hs

    def heads(fn):
        def run(qkv_proj, **kw):
            q, k, v = qkv_proj.split(C, dim=2)
            q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            assert not q.is_contiguous()
            return fn(q, k, v, **kw)
        return run

    x = torch.randn(B, T, 3 * C, dtype=dtype, requires_grad=True)
    check_layer(heads(ops.attention), heads(sdpa), [x], dict(causal=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_query_against_cached_keys(dtype):
    # the GPT's KV-cache generation: one new query, all cached keys, no mask
    check_layer(ops.attention, sdpa, qkv(2, 4, 1, 8, S=9, dtype=dtype), dict(causal=False))


@pytest.mark.parametrize("T,S", [(3, 8), (8, 3)])
def test_causal_with_different_lengths_matches_sdpa_top_left(T, S):
    check_layer(ops.attention, sdpa, qkv(2, 2, T, 4, S=S), dict(causal=True))


def test_input_without_requires_grad():
    q, k, v = qkv(2, 2, 5, 4)
    k.requires_grad_(False)
    errors = check_layer(ops.attention, sdpa, [q, k, v], dict(causal=True))
    assert "grad1" not in errors and "grad0" in errors and "grad2" in errors


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck(causal):
    q, k, v = qkv(2, 2, 5, 3)
    assert torch.autograd.gradcheck(lambda q, k, v: ops.attention(q, k, v, causal=causal), (q, k, v))


def test_gradcheck_with_dropout():
    q, k, v = qkv(1, 2, 4, 3)

    def fn(q, k, v):  # same seed on every call, so the mask is fixed
        g = torch.Generator().manual_seed(7)
        return ops.attention(q, k, v, causal=True, dropout_p=0.4, generator=g)

    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("causal", [True, False])
def test_equals_loop_reference(causal):
    q, k, v = qkv(2, 3, 6, 4)
    check_layer(ops.attention, ops.attention_reference, [q, k, v], dict(causal=causal))


def test_dropout_uses_one_mask_in_forward_and_backward():
    B, nh, T, hs, p = 2, 2, 6, 4, 0.3
    q, k, v = qkv(B, nh, T, hs)
    y = ops.attention(q, k, v, causal=True, dropout_p=p, generator=torch.Generator().manual_seed(3))
    # manual computation with the mask the same generator draws
    keep = torch.rand(B, nh, T, T, generator=torch.Generator().manual_seed(3), dtype=q.dtype) >= p
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    scores = q2 @ k2.transpose(-2, -1) / math.sqrt(hs)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y2 = (F.softmax(scores, dim=-1) * keep / (1 - p)) @ v2
    assert max_rel_err(y, y2) <= TOL[torch.float64]
    dout = torch.randn_like(y)
    y.backward(dout)
    y2.backward(dout)
    for ours, ref in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        assert max_rel_err(ours, ref) <= TOL[torch.float64]
    # and the mask really drops something, so the test could fail
    assert 0 < (~keep).sum() < keep.numel()
    y_nodrop = ops.attention(q, k, v, causal=True)
    assert max_rel_err(y, y_nodrop) > 1e-3


def test_dropout_rate_and_scaling():
    q, k, v = qkv(4, 4, 32, 8, requires_grad=False)
    v = torch.ones_like(v)  # each output = sum of kept weights / (1 - p): mean 1
    y = ops.attention(q, k, v, causal=False, dropout_p=0.5, generator=torch.Generator().manual_seed(0))
    assert abs(y.mean().item() - 1.0) < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_bfloat16_runs_close_to_float32(dtype):
    q, k, v = qkv(2, 2, 9, 8, dtype=torch.float32, requires_grad=False)
    y = ops.attention(q.to(dtype), k.to(dtype), v.to(dtype))
    assert y.dtype == dtype
    assert max_rel_err(y.float(), sdpa(q, k, v)) < 3e-2


@pytest.mark.parametrize(
    "shapes,kwargs,match",
    [
        (((2, 4, 8), (2, 2, 4, 8), (2, 2, 4, 8)), {}, "q must be 4-D"),
        (((2, 2, 4, 8), (2, 2, 4), (2, 2, 4, 8)), {}, "k must be 4-D"),
        (((2, 2, 4, 8), (2, 2, 4, 8), (2, 2, 4, 8, 1)), {}, "v must be 4-D"),
        (((2, 2, 4, 8), (2, 2, 5, 8), (2, 2, 4, 8)), {}, "k and v must have the same shape"),
        (((2, 2, 4, 8), (2, 2, 4, 6), (2, 2, 4, 6)), {}, "head size"),
        (((2, 2, 4, 8), (3, 2, 4, 8), (3, 2, 4, 8)), {}, "batch"),
        (((2, 3, 4, 8), (2, 2, 4, 8), (2, 2, 4, 8)), {}, "heads"),
        (((2, 2, 4, 8),) * 3, dict(dropout_p=1.0), "dropout_p"),
        (((2, 2, 4, 8),) * 3, dict(dropout_p=-0.1), "dropout_p"),
    ],
)
def test_value_errors(shapes, kwargs, match):
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        ops.attention(q, k, v, **kwargs)


def test_value_error_for_integer_inputs():
    q = torch.ones(1, 1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="floating-point"):
        ops.attention(q, q, q)


def test_gradcheck_with_dropout_not_causal_and_longer_keys():
    # The backward's softmax row sums are dout . y, which holds with dropout on the weights
    # and for any mask: checked here without the causal mask, with S != T.
    torch.manual_seed(0)
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v):  # same seed on every call, so the mask is fixed
        g = torch.Generator().manual_seed(11)
        return ops.attention(q, k, v, causal=False, dropout_p=0.3, generator=g)

    assert torch.autograd.gradcheck(fn, (q, k, v))
