"""Attention against F.scaled_dot_product_attention: forward and dq/dk/dv, on awkward shapes,
float64 and float32, gradcheck, the loop reference, dropout's mask, and each ValueError; the
dense and the tiled path; attn_mask (boolean, float with its gradient, broadcast shapes, rows
with every key masked), unbatched and empty inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from oracle import TOL, check_layer, max_rel_err

# Small tensors: one thread is as fast, and on a busy shared machine much faster (two threads
# wait on each other at every one of the tiled path's many small operations).
pytestmark = pytest.mark.usefixtures("one_thread")


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


def gpt_heads(fn, B, T, nh, hs):
    """``fn`` called on q, k, v as a GPT makes them from one (B, T, 3C) projection: split, viewed
    as heads, transposed, so (B, nh, T, hs) views that are not contiguous."""
    C = nh * hs

    def run(qkv_proj, **kw):
        q, k, v = qkv_proj.split(C, dim=2)
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        assert not q.is_contiguous()
        return fn(q, k, v, **kw)
    return run


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_contiguous_views_as_in_a_gpt(dtype):
    B, T, nh, hs = 2, 11, 3, 6
    x = torch.randn(B, T, 3 * nh * hs, dtype=dtype, requires_grad=True)
    check_layer(gpt_heads(ops.attention, B, T, nh, hs), gpt_heads(sdpa, B, T, nh, hs), [x], dict(causal=True))


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
        (((4, 8), (4, 8), (4, 8)), {}, "q must be 3-D or 4-D"),
        (((2, 4, 8), (2, 2, 4, 8), (2, 2, 4, 8)), {}, "k must be 3-D"),  # SDPA broadcasts q; ours: one rank
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


# --- the tiled path (online softmax forward, recomputing backward) ----------------------------
# Small block sizes force the tiled path at small T, so that every case below has several
# query and key blocks, partial last blocks and tiles that cross the diagonal.
TIGHT = 1e-12  # float64: the tiled sums differ from SDPA's only in rounding

TILED_CASES = [  # (B, nh, T, S, hs, block_q, block_k)
    (2, 3, 37, 37, 5, 8, 8),  # T not a multiple of the block, odd head size
    (1, 2, 37, 37, 4, 8, 16),  # batch 1; key blocks longer than query blocks
    (2, 2, 37, 37, 3, 16, 4),  # query blocks longer: rows wholly masked inside a tile
    (2, 2, 1, 1, 4, 4, 4),  # T = 1
    (1, 1, 16, 16, 8, 4, 4),  # T a multiple of the block
    (2, 2, 5, 13, 4, 4, 3),  # fewer queries than keys
    (2, 2, 13, 5, 4, 3, 4),  # more queries than keys
]


def tiled(**blocks):
    def run(q, k, v, **kw):
        return ops.attention(q, k, v, **kw, **blocks)
    return run


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,nh,T,S,hs,bq,bk", TILED_CASES)
def test_tiled_matches_sdpa(B, nh, T, S, hs, bq, bk, causal, dtype):
    tol = TIGHT if dtype == torch.float64 else None
    errors = check_layer(tiled(block_q=bq, block_k=bk), sdpa, qkv(B, nh, T, hs, S=S, dtype=dtype),
                         dict(causal=causal), tol=tol)
    assert set(errors) == {"forward", "grad0", "grad1", "grad2"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tiled_kv_cache_shapes(dtype):
    tol = TIGHT if dtype == torch.float64 else None
    # generation: one new query against S cached keys, no mask
    check_layer(tiled(block_q=4, block_k=8), sdpa, qkv(2, 4, 1, 8, S=37, dtype=dtype), dict(causal=False), tol=tol)
    # a prefill from an empty cache: T = S, causal
    check_layer(tiled(block_q=8, block_k=8), sdpa, qkv(2, 4, 21, 8, S=21, dtype=dtype), dict(causal=True), tol=tol)


def test_tiled_through_the_gpt_cache():
    # the cache's k and v are the first T positions of (B, nh, block_size, hs) buffers: strided views
    B, nh, T, hs, block_size = 2, 3, 19, 4, 32
    q = torch.randn(B, nh, T, hs, dtype=torch.float64)
    k_buf, v_buf = torch.randn(2, B, nh, block_size, hs, dtype=torch.float64).unbind(0)
    k, v = k_buf[:, :, :T], v_buf[:, :, :T]
    assert not k.is_contiguous()
    for causal in (True, False):
        y = ops.attention(q, k, v, causal=causal, block_q=8, block_k=8)
        assert max_rel_err(y, sdpa(q, k, v, causal)) <= TIGHT


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T,S,bq,bk", [(7, 7, 3, 2), (4, 9, 2, 4), (9, 4, 4, 2)])
def test_tiled_gradcheck(T, S, bq, bk, causal):
    q, k, v = qkv(1, 2, T, 3, S=S)
    assert torch.autograd.gradcheck(
        lambda q, k, v: ops.attention(q, k, v, causal=causal, block_q=bq, block_k=bk), (q, k, v))


@pytest.mark.parametrize("causal", [True, False])
def test_tiled_equals_loop_reference(causal):
    q, k, v = qkv(2, 3, 21, 4)
    check_layer(tiled(block_q=8, block_k=4), ops.attention_reference, [q, k, v], dict(causal=causal), tol=TIGHT)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,nh,T", [(8, 4, 200), (2, 4, 300)])
def test_tiled_default_blocks_at_longer_contexts(B, nh, T, dtype):
    # sizes where ops.attention tiles on its own, with its own block sizes: BLOCK_SHORT up to
    # SHORT_T, BLOCK beyond
    q, k, v = qkv(B, nh, T, 4, dtype=dtype)
    assert type(ops.attention(q, k, v).grad_fn).__name__ == "TiledAttentionBackward"
    check_layer(ops.attention, sdpa, [q, k, v], dict(causal=True), tol=TIGHT if dtype == torch.float64 else None)


def test_which_path_runs():
    def path(B, nh, T, S, **kw):
        q, k, v = qkv(B, nh, T, 2, S=S, requires_grad=False)
        q.requires_grad_(True)
        return type(ops.attention(q, k, v, causal=False, **kw).grad_fn).__name__

    assert path(12, 4, 128, 128) == "DenseAttentionBackward"  # T * S <= DENSE_MAX_T2
    assert path(4, 4, 256, 256) == "DenseAttentionBackward"  # and B * nh * T * S <= DENSE_MAX
    assert path(5, 4, 256, 256) == "TiledAttentionBackward"
    assert path(1, 1, 257, 257) == "TiledAttentionBackward"  # T * S > DENSE_MAX_T2_FEW
    assert path(1, 4, 1, 256) == "DenseAttentionBackward"  # the GPT's generation step
    assert path(1, 1, 8, 8, block_q=4) == "TiledAttentionBackward"  # a block size asks for tiles
    assert path(5, 4, 256, 256, dropout_p=0.1) == "DenseAttentionBackward"  # dropout: the full-matrix mask


def test_tiled_skips_key_blocks_above_the_diagonal(monkeypatch):
    # 4 x 4 blocks: causal visits the 10 tiles on and below the diagonal, not 16. Counted are
    # the products whose second factor is (hs, b): q_i @ k_j^T in forward and backward, and
    # dy_i @ v_j^T in backward.
    hs, b = 3, 4
    q, k, v = qkv(1, 1, 4 * b, hs)
    products = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, c: products.append(c.shape[1] == hs) or bmm(a, c))
    for causal, tiles in ((True, 10), (False, 16)):
        products.clear()
        y = ops.attention(q, k, v, causal=causal, block_q=b, block_k=b)
        assert sum(products) == tiles
        y.sum().backward()
        assert sum(products) == 3 * tiles


def test_default_tile_sizes():
    # the tile's side by T, B * nh and thread count (attention.py: _block_size)
    import importlib

    block_size = importlib.import_module("customnn.ops.attention")._block_size
    assert (block_size(200, 32), block_size(1024, 4), block_size(1024, 24)) == (64, 128, 128)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # fewer, larger tiles where B * nh is small
        assert (block_size(256, 48), block_size(1024, 4), block_size(1024, 24)) == (64, 256, 128)
    finally:
        torch.set_num_threads(threads)
    # and the tiled path runs with it: its backward node keeps (causal, block_q, block_k, scale)
    q, k, v = qkv(8, 4, 200, 2, requires_grad=False)
    assert ops.attention(q.requires_grad_(True), k, v).grad_fn.config[1:3] == (64, 64)


def test_tiled_saves_no_t_by_s_tensor():
    # What backward keeps is linear in T: q, k, v, y and one log-sum-exp per row.
    B, nh, T, hs = 1, 2, 64, 4
    q, k, v = qkv(B, nh, T, hs)
    y = ops.attention(q, k, v, causal=True, block_q=16, block_k=16)
    saved = y.grad_fn.saved_tensors
    assert max(t.numel() for t in saved) == B * nh * T * hs
    assert sum(t.numel() for t in saved) == 4 * B * nh * T * hs + B * nh * T


@pytest.mark.parametrize("blocks", [{}, dict(block_q=16, block_k=16)], ids=["dense", "tiled"])
def test_output_is_stored_heads_last_and_saved_once(blocks):
    # y (B, nh, T, hs) stored as (B, T, nh, hs), as SDPA's CPU kernels store it: merging the
    # heads is a view, so the output projection keeps the storage attention keeps for its
    # backward (the row sums dout . y), not a copy of it. One query: stored so already.
    for T in (40, 1):
        q, k, v = qkv(2, 3, T, 8)
        y = ops.attention(q, k, v, **blocks)
        merged = y.transpose(1, 2).reshape(2, T, 24)  # (B, T, C)
        assert merged.data_ptr() == y.data_ptr()
        saved = {t.untyped_storage().data_ptr() for t in y.grad_fn.saved_tensors if t is not None}
        assert y.untyped_storage().data_ptr() in saved


def test_tiled_online_softmax_rescales_when_a_later_tile_has_the_maximum():
    # Scores grow along the keys, so every key block raises each row's running maximum; large
    # enough that exp without the maximum would overflow float32 (exp(100) > 3.4e38).
    T, hs = 24, 2
    q = torch.full((1, 1, T, hs), 10.0, dtype=torch.float64)
    k = torch.linspace(0.0, 15.0, T, dtype=torch.float64).view(1, 1, T, 1).expand(1, 1, T, hs).contiguous()
    v = torch.randn(1, 1, T, hs, dtype=torch.float64)
    for causal in (True, False):
        q32, k32, v32 = (t.float().requires_grad_(True) for t in (q, k, v))
        y = ops.attention(q32, k32, v32, causal=causal, block_q=8, block_k=4)
        y.sum().backward()
        assert torch.isfinite(y).all() and all(torch.isfinite(t.grad).all() for t in (q32, k32, v32))
        check_layer(tiled(block_q=8, block_k=4), sdpa, [t.clone().requires_grad_(True) for t in (q, k, v)],
                    dict(causal=causal))
    # and in reverse: the first tile holds the maximum, later tiles underflow to 0
    check_layer(tiled(block_q=8, block_k=4), sdpa, [t.clone().requires_grad_(True) for t in (q, k.flip(2), v)],
                dict(causal=False))


def test_tiled_input_without_requires_grad():
    q, k, v = qkv(2, 2, 11, 4)
    v.requires_grad_(False)
    errors = check_layer(tiled(block_q=4, block_k=4), sdpa, [q, k, v], dict(causal=True), tol=TIGHT)
    assert "grad2" not in errors and "grad0" in errors and "grad1" in errors


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tiled_non_contiguous_views_as_in_a_gpt(dtype):
    B, T, nh, hs = 2, 23, 3, 6
    x = torch.randn(B, T, 3 * nh * hs, dtype=dtype, requires_grad=True)
    check_layer(gpt_heads(tiled(block_q=8, block_k=8), B, T, nh, hs), gpt_heads(sdpa, B, T, nh, hs), [x],
                dict(causal=True), tol=TIGHT if dtype == torch.float64 else None)


def test_tiled_bfloat16_runs_close_to_float32():
    q, k, v = qkv(2, 2, 40, 8, dtype=torch.float32, requires_grad=False)
    y = ops.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), block_q=16, block_k=16)
    assert y.dtype == torch.bfloat16
    assert max_rel_err(y.float(), sdpa(q, k, v)) < 3e-2


@pytest.mark.parametrize("block", [0, -1, 2.0, True])
def test_block_size_value_errors(block):
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(ValueError, match="block_q"):
        ops.attention(q, q, q, block_q=block)
    with pytest.raises(ValueError, match="block_k"):
        ops.attention(q, q, q, block_k=block)


def test_gpt_trains_through_the_tiled_path_as_its_torch_nn_twin(monkeypatch):
    # A GPT whose attention is large enough to tile on its own (B * nh * T * T > DENSE_MAX):
    # logits, loss and every gradient as nanoGPT's model with SDPA, and a cached prefill
    # giving the same logits.
    import importlib

    from customnn.models.gpt import GPT, GPTConfig
    from customnn_ref.twins import gpt_twin
    from helpers import assert_same_gradients, gpt_linear_weights

    attention_module = importlib.import_module("customnn.ops.attention")  # ops.attention is the function
    tiled_calls = []  # the q of every tiled forward, through autograd or not (ops/_apply.py)
    forward = attention_module.TiledAttention.forward
    monkeypatch.setattr(attention_module.TiledAttention, "forward",
                        staticmethod(lambda ctx, *a: tiled_calls.append(a[0].shape) or forward(ctx, *a)))
    cfg = GPTConfig(vocab_size=11, block_size=144, n_layer=1, n_head=2, n_embd=8)
    model = GPT(cfg, seed=7).to(dtype=torch.float64)
    twin = gpt_twin(model)
    B = 32
    idx = torch.randint(cfg.vocab_size, (B, cfg.block_size))
    targets = torch.randint(cfg.vocab_size, (B, cfg.block_size))
    logits, loss = model(idx, targets)
    assert tiled_calls == [(B, 2, 144, 4)]
    tlogits, tloss = twin(idx, targets)
    torch.testing.assert_close(logits, tlogits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, tloss, rtol=1e-12, atol=1e-12)
    loss.backward()
    tloss.backward()
    assert_same_gradients(model, twin, gpt_linear_weights(model), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        cached, _ = model(idx, cache=model.new_cache(B))
    assert len(tiled_calls) == 2
    torch.testing.assert_close(cached, logits.detach(), rtol=1e-12, atol=1e-12)


# --- attn_mask, unbatched inputs ---------------------------------------------------------------
# attn_mask as SDPA's: boolean (True takes part) or float (added to the scores), broadcast over
# batch and heads; on the dense path and on the tiled one (small tiles), against SDPA, float64
# within 1e-10 and float32 within 1e-5, the float mask's gradient included.

def sdpa_masked(q, k, v, attn_mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def masked(**blocks):
    def run(q, k, v, attn_mask):
        return ops.attention(q, k, v, causal=False, attn_mask=attn_mask, **blocks)
    return run


def make_mask(kind, shape, dtype=torch.float64, requires_grad=True):
    """A random mask of ``shape``: boolean with about 30% of the keys dropped, or float with
    random values and -inf where the boolean one drops; the query row 1 (when there is one)
    drops every key."""
    keep = torch.rand(shape) > 0.3
    if shape[-2] > 1:
        keep[..., 1, :] = False
    if kind == "bool":
        return keep
    return torch.randn(shape, dtype=dtype).masked_fill(~keep, float("-inf")).requires_grad_(requires_grad)


MASK_SHAPES = [(7, 9), (1, 1, 7, 9), (2, 1, 7, 9), (2, 3, 7, 9), (2, 1, 1, 9), (3, 7, 9), (7, 1), (1, 9)]
PATHS = {"dense": {}, "tiled": dict(block_q=3, block_k=4)}  # 7 queries, 9 keys: partial last blocks


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_mask_matches_sdpa(shape, kind, path, dtype):
    q, k, v = qkv(2, 3, 7, 5, S=9, dtype=dtype)  # odd T, S and head size
    mask = make_mask(kind, shape, dtype)
    errors = check_layer(masked(**PATHS[path]), sdpa_masked, [q, k, v, mask],
                         tol=1e-10 if dtype == torch.float64 else None)
    assert set(errors) == {"forward", "grad0", "grad1", "grad2"} | ({"grad3"} if kind == "float" else set())


@pytest.mark.parametrize("path", sorted(PATHS))
def test_mask_batch_one_and_a_float32_mask_on_float64_inputs(path):
    # SDPA takes a float32 mask whatever q's dtype; its gradient comes back in float32
    q, k, v = qkv(1, 2, 7, 3, S=9)
    mask = make_mask("float", (1, 2, 7, 9)).detach().float().requires_grad_(True)
    check_layer(masked(**PATHS[path]), sdpa_masked, [q, k, v, mask], tol=1e-10)
    y = ops.attention(q, k, v, causal=False, attn_mask=mask, **PATHS[path])
    y.sum().backward()
    assert mask.grad.dtype == torch.float32


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_a_query_with_every_key_masked_gets_zeros_as_sdpa(kind, path):
    # SDPA on the CPU gives such a row the output 0 (not NaN), and ours its gradients 0. On the
    # tiled path row 4 is masked in the first key blocks only, row 1 in all of them.
    q, k, v = qkv(2, 2, 7, 4, S=9)
    mask = make_mask(kind, (7, 9))
    with torch.no_grad():
        if kind == "bool":
            mask[4, :5] = False
        else:
            mask[4, :5] = float("-inf")
    y = ops.attention(q, k, v, causal=False, attn_mask=mask, **PATHS[path])
    assert torch.equal(y[:, :, 1], torch.zeros_like(y[:, :, 1]))
    assert torch.isfinite(y).all()
    y.backward(torch.randn_like(y))
    assert torch.equal(q.grad[:, :, 1], torch.zeros_like(q.grad[:, :, 1]))
    if kind == "float":
        assert torch.equal(mask.grad[1], torch.zeros(9, dtype=mask.dtype))
    check_layer(masked(**PATHS[path]), sdpa_masked, [q, k, v, mask], tol=1e-10)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("shape", [(5, 6), (2, 1, 5, 6), (2, 1, 1, 6), (1, 6)])
def test_mask_gradcheck(shape, path):
    q, k, v = qkv(2, 2, 5, 3, S=6)
    mask = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(masked(**PATHS[path]), (q, k, v, mask))


def test_mask_with_dropout_uses_the_formula_with_the_same_dropout_mask():
    B, nh, T, S, hs, p = 2, 2, 5, 6, 4, 0.3
    q, k, v = qkv(B, nh, T, hs, S=S)
    mask = torch.randn(B, 1, T, S, dtype=q.dtype).masked_fill(torch.rand(B, 1, T, S) < 0.3, float("-inf"))
    mask[..., 0] = 0.0  # every query keeps a key: softmax below has no 0 / 0
    mask.requires_grad_(True)
    y = ops.attention(q, k, v, causal=False, dropout_p=p, attn_mask=mask, generator=torch.Generator().manual_seed(3))
    keep = torch.rand(B, nh, T, S, generator=torch.Generator().manual_seed(3), dtype=q.dtype) >= p
    q2, k2, v2, m2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v, mask))
    weights = torch.softmax(q2 @ k2.transpose(-2, -1) / math.sqrt(hs) + m2, dim=-1)
    y2 = (weights * keep / (1 - p)) @ v2
    assert max_rel_err(y, y2) <= 1e-12
    dout = torch.randn_like(y)
    y.backward(dout)
    y2.backward(dout)
    for ours, ref in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad), (mask.grad, m2.grad)):
        assert max_rel_err(ours, ref) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("causal", [True, False])
def test_unbatched_matches_sdpa(causal, path, dtype):
    q, k, v = (t[0].detach().requires_grad_(True) for t in qkv(1, 3, 7, 5, S=7 if causal else 9, dtype=dtype))
    y = ops.attention(q, k, v, causal=causal, **PATHS[path])
    assert y.shape == (3, 7, 5)
    check_layer(tiled(**PATHS[path]), sdpa, [q, k, v], dict(causal=causal),
                tol=1e-10 if dtype == torch.float64 else None)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_unbatched_with_masks(path):
    q, k, v = (t[0].detach().requires_grad_(True) for t in qkv(1, 3, 7, 5, S=9))
    for shape in ((7, 9), (3, 7, 9), (1, 1, 9)):
        check_layer(masked(**PATHS[path]), sdpa_masked, [q, k, v, make_mask("float", shape)], tol=1e-10)
    assert torch.autograd.gradcheck(masked(**PATHS[path]), (q, k, v, make_mask("float", (3, 1, 9))))


def test_empty_inputs_give_empty_outputs_and_zero_gradients():
    # no keys: the weighted sum over nothing is 0 (SDPA's value); no queries or a head size 0: empty
    for (B, nh, T, S, hs) in ((2, 2, 3, 0, 4), (2, 2, 0, 3, 4), (2, 2, 3, 3, 0), (0, 2, 3, 3, 4), (2, 2, 0, 0, 4)):
        q, k, v = qkv(B, nh, T, hs, S=S)
        y = ops.attention(q, k, v, causal=False)
        assert type(y.grad_fn).__name__ == "EmptyAttentionBackward"
        assert y.shape == (B, nh, T, hs) and not y.any()
        check_layer(ops.attention, sdpa, [q, k, v], dict(causal=True))
        check_layer(masked(), sdpa_masked, [q, k, v, torch.randn(T, S, dtype=torch.float64) > 0])
        mask = torch.randn(T, S, dtype=torch.float64, requires_grad=True)  # SDPA gives it no gradient: ours 0
        ops.attention(q, k, v, causal=False, attn_mask=mask).sum().backward()
        assert mask.grad.shape == (T, S) and not mask.grad.any()


@pytest.mark.parametrize(
    "mask,kwargs,match",
    [
        (torch.ones(4, 6, dtype=torch.bool), dict(causal=True), "attn_mask with causal=True"),
        (torch.ones(4, 6, dtype=torch.long), {}, "attn_mask must be boolean, float32 or q's dtype"),
        (torch.ones(4, 6, dtype=torch.float16), {}, "attn_mask must be boolean, float32 or q's dtype"),
        (torch.ones(3, 6, dtype=torch.bool), {}, r"attn_mask of shape \(3, 6\) must broadcast .* \(2, 2, 4, 6\)"),
        (torch.ones(6, dtype=torch.bool), {}, r"attn_mask of shape \(6,\) must broadcast"),
        (torch.ones(1, 1, 1, 4, 6, dtype=torch.bool), {}, "attn_mask of shape"),
        (torch.ones(3, 2, 4, 6, dtype=torch.bool), {}, "attn_mask of shape"),
        ("not a tensor", {}, "attn_mask must be a torch.Tensor"),
    ],
)
def test_mask_value_errors(mask, kwargs, match):
    q = torch.randn(2, 2, 4, 8, dtype=torch.float64)
    k = torch.randn(2, 2, 6, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        ops.attention(q, k, k, **{"causal": False, **kwargs}, attn_mask=mask)
    if isinstance(mask, torch.Tensor) and not kwargs:  # PyTorch refuses them too
        with pytest.raises((RuntimeError, IndexError)):
            sdpa_masked(q, k, k, mask)


def test_unbatched_mask_of_more_dims_than_q_is_refused():
    q = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(1, 2, 4, 4\) must broadcast .* \(2, 4, 4\)"):
        ops.attention(q, q, q, causal=False, attn_mask=torch.ones(1, 2, 4, 4, dtype=torch.bool))


def test_the_reference_takes_masks_and_unbatched_inputs():
    q, k, v = qkv(2, 3, 6, 4, S=8)
    mask = make_mask("float", (2, 1, 6, 8))
    check_layer(lambda *a: ops.attention_reference(*a[:3], causal=False, attn_mask=a[3]), sdpa_masked,
                [q, k, v, mask])
    check_layer(ops.attention_reference, sdpa, [t[0].detach().requires_grad_(True) for t in (q, k, v)], dict(causal=True))
