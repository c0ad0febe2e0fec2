"""rope and rope_tables: equal to the plain formula (its reference and the torch.nn twin's
rotate_half form) forward and backward, gradcheck, the rotation keeps norms, q.k after RoPE
depends only on the offset between positions, the tables, errors."""

from __future__ import annotations

import math

import pytest
import torch

from customnn import ops
from customnn_ref.oracle import check_layer
from customnn_ref.twins import apply_rope, rope_cos_sin

DTYPES = [torch.float64, torch.float32]


def tables(T, hs, dtype, base=10000.0, grad=False):
    return [t.requires_grad_(grad) for t in ops.rope_tables(T, hs, base, dtype=dtype)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 7, 8), (4, 2, 64, 32), (5, 6), (2, 3, 4, 5, 6)])
@pytest.mark.parametrize("ref", [ops.rope_reference, apply_rope], ids=["reference", "twin"])
def test_rope_equals_the_plain_formula(dtype, shape, ref):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    check_layer(ops.rope, ref, [x, *tables(shape[-2], shape[-1], dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_gradients_of_the_tables_and_a_non_contiguous_input(dtype):
    base = torch.randn(2, 7, 3, 8, dtype=dtype, requires_grad=True)  # (B, T, nh, hs) seen as (B, nh, T, hs)
    check_layer(lambda b, c, s: ops.rope(b.transpose(1, 2), c, s), lambda b, c, s: apply_rope(b.transpose(1, 2), c, s),
                [base, *tables(7, 8, dtype, grad=True)])


def test_rope_gradcheck():
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.rope, (x, *tables(5, 6, torch.float64, grad=True)))
    assert torch.autograd.gradcheck(ops.rope, (x, *tables(5, 6, torch.float64)))


def test_rope_keeps_the_norm_of_every_pair_and_position_0_is_the_identity():
    x = torch.randn(3, 2, 9, 16, dtype=torch.float64)
    y = ops.rope(x, *tables(9, 16, torch.float64))
    pairs = lambda t: t[..., :8] ** 2 + t[..., 8:] ** 2  # noqa: E731  squared norm of pair i
    torch.testing.assert_close(pairs(y), pairs(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-13, atol=0)
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0], rtol=0, atol=0)  # angle 0 at position 0


def test_q_dot_k_after_rope_depends_only_on_the_offset():
    hs, T = 16, 24
    q, k = torch.randn(hs, dtype=torch.float64), torch.randn(hs, dtype=torch.float64)
    cos, sin = tables(T, hs, torch.float64)
    # the same q at every position, the same k at every position
    rq = ops.rope(q.expand(T, hs).contiguous(), cos, sin)  # (T, hs)
    rk = ops.rope(k.expand(T, hs).contiguous(), cos, sin)
    scores = rq @ rk.T  # (T, T): scores[t, s] = R(t) q . R(s) k
    for offset in range(-T + 1, T):
        diag = torch.diagonal(scores, offset=-offset)  # every (t, s) with t - s = offset
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), rtol=1e-12, atol=1e-12)
    assert (scores[0, 0] - scores[5, 0]).abs() > 1e-3  # and it does depend on the offset


def test_rope_tables():
    cos, sin = ops.rope_tables(6, 8, base=100.0, dtype=torch.float64)
    assert cos.shape == sin.shape == (6, 4) and cos.dtype == torch.float64
    for t in range(6):
        for i in range(4):
            angle = t * 100.0 ** (-2 * i / 8)
            assert cos[t, i].item() == pytest.approx(math.cos(angle), abs=1e-15)
            assert sin[t, i].item() == pytest.approx(math.sin(angle), abs=1e-15)
    for dtype in DTYPES:  # the twin's own tables are the same numbers, to rounding
        for a, b in zip(ops.rope_tables(50, 32, dtype=dtype), rope_cos_sin(50, 32, dtype=dtype)):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    assert ops.rope_tables(0, 4)[0].shape == (0, 2)


def test_rope_without_grad_and_half_precision():
    x = torch.randn(2, 3, 5, 8)
    y = ops.rope(x, *tables(5, 8, torch.float32))
    assert not y.requires_grad
    xb = x.bfloat16()
    yb = ops.rope(xb, *tables(5, 8, torch.bfloat16))
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), y, rtol=3e-2, atol=3e-2)


def test_rope_errors():
    cos, sin = tables(5, 8, torch.float32)
    with pytest.raises(ValueError, match="hs even"):
        ops.rope(torch.randn(2, 5, 7), cos, sin)
    with pytest.raises(ValueError, match=r"cos must have shape \(4, 4\)"):
        ops.rope(torch.randn(2, 4, 8), cos, sin)
    with pytest.raises(ValueError, match="dtype"):
        ops.rope(torch.randn(2, 5, 8, dtype=torch.float64), cos, sin)
    with pytest.raises(ValueError, match="floating-point"):
        ops.rope(torch.zeros(2, 5, 8, dtype=torch.int64), cos, sin)
    with pytest.raises(ValueError, match="hs must be an even"):
        ops.rope_tables(5, 7)
    with pytest.raises(ValueError, match="T must be"):
        ops.rope_tables(-1, 8)
    with pytest.raises(ValueError, match="base"):
        ops.rope_tables(5, 8, base=1.0)
