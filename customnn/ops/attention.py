"""Multi-head scaled dot-product attention, forward and hand-written backward.

    y = softmax(q @ k^T / sqrt(hs) + mask) @ v            (Vaswani et al. 2017, section 3.2.1)

Matches ``torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p,
is_causal)`` with its default scale ``1 / sqrt(hs)``. The causal mask is SDPA's: query ``i`` sees
keys ``j <= i``, counted from the top-left corner even when ``Tq != Tk``. Generation with a
key/value cache calls it with one query against all cached keys and ``causal=False``.

Dimension letters used below:
    B   batch size
    nh  number of heads
    T   query length (Tq);  S  key/value length (Tk)
    hs  head size (C / nh)
    bq, bk   rows of a query block and of a key/value block (a tile is bq x bk)

Two ways to compute it, chosen by ``attention``:

**Tiled** (``TiledAttention``, attention_tiled.py; FlashAttention, Dao et al. 2022, query
blocks in the outer loop as in FlashAttention-2): memory linear in T. The queries are cut into
blocks Q_i of bq rows, the keys and values into blocks K_j, V_j of bk rows; at most two
(B*nh, bq, bk) tiles of scores exist at a time, and only the output y and one log-sum-exp per
query row are saved for backward. Both passes loop over the query blocks i, and inside over
the key blocks j that block sees; each tile is a few whole-tensor operations over all B*nh
heads at once. The recurrences, why they are exact, and the backward: attention_tiled.py.

Base-2 units: the scores are formed as s2 = log2(e) * scale * q @ k^T (log2(e) * scale is
folded into one scaled copy of q), so that every exp(z) of the softmax becomes exp2(s2): the
same numbers. m and L are kept in these units. On this project's CPU (torch 2.13, AVX-512) exp2
takes about 1.5x exp's time on ordinary values, but keeps its speed on masked -inf entries and
on values far below the row maximum, where exp takes a slow path: a causal tile half -inf costs
exp about 12x its ordinary time, values that underflow to 0 over 100x. Masked tiles, and the
peaked rows of trained models, decide for exp2.

**Dense** (``DenseAttention``): the whole (B*nh, T, S) weight matrix, kept for backward, and
dropout on it. Used (1) for ``dropout_p > 0``, at any length: its mask is one (B, nh, T, S)
``torch.rand`` draw, so that a generator gives the mask the full-matrix formula draws (the GPT
trains with dropout 0 by default, so its long-context training runs tiled); (2) when the
matrix is small (T = S <= 128, or T = S <= 256 and 4 MB in all: ``DENSE_MAX_T2`` and the
others below), where keeping it is faster than recomputing it tile by tile. These bounds do
not grow with T, so memory still grows linearly with T.
Its backward (llm.c's ``attention_backward``):
    dv      = att_d^T @ dout
    datt_d  = dout @ v^T,   datt = datt_d * keep / (1 - p)        (dropout, same mask)
    dscores = att * (datt - sum(dout * y, -1))                    (softmax backward, as above)
(the row sums dout . y are FlashAttention's form, and that of SDPA's default CPU kernel, so a
model trains step for step as with SDPA; summing att * datt instead keeps float32 rows of
dscores closer to summing to 0 on large inputs, but moves the rounding off PyTorch's).
    dq      = dscores @ k * scale,   dk = dscores^T @ q * scale

**attn_mask** (attention_masks.py), as SDPA's: boolean (True: the key takes part) or float
(added to the scores), of shape (T, S), (B or 1, nh or 1, T or 1, S or 1) or anything else
that broadcasts to (B, nh, T, S). It becomes one additive term in base-2 units, bias = 0 / -inf
(boolean) or log2(e) * mask (float), added to every tile's scores (the tiled path slices it per
tile, the dense path adds it whole), so both paths take it. A float mask that requires grad gets
the gradient of the scores, dS (natural units), summed over the dims it is broadcast along:
    dmask = sum over broadcast dims of att * (datt - D)
A row whose keys are all masked has the maximum -inf, and exp(s - m) would be NaN: with a
mask, the maximum is raised to the dtype's lowest finite number and the row sum to at least 1,
so that row's weights, output and gradients are 0. That is what SDPA returns on the CPU (torch
2.13: its flash kernel, and its math kernel's safe softmax). ``attn_mask`` with ``causal=True``
is refused: SDPA documents the two as exclusive (its math kernel raises, though its CPU flash
kernel combines them), so the triangle goes into the mask.

**Shapes**: q (B, nh, T, hs), k and v (B, nh, S, hs), or all three unbatched (nh, T, hs),
run as a batch of one. Without keys (S = 0) the output is 0 (the empty sum, SDPA's value) and
with T, hs, B or nh 0 it is empty; every gradient is then 0 (``EmptyAttention``).

**NaN and infinities** flow as in the formula, which is also what PyTorch's math kernel does: a
NaN score makes its row NaN, inf - inf gives NaN, and a masked score (additive -inf) that is
NaN or +inf stays NaN. Where SDPA's default CPU kernel differs (tests/test_degenerate.py,
``KNOWN``): it gives 0, not NaN, for the output of a row whose scores hold a NaN (yet NaN
gradients); without a mask, a row whose every score is -inf through an infinite q or k is NaN
here and 0 there (the two guards above are left out of the maskless path, for speed); the
tiled path skips the key blocks above the diagonal, so a non-finite value reaches fewer of
the gradients; with no keys, a non-finite q or upstream gradient gives PyTorch NaN, ours 0.

Entry point: ``customnn.ops.attention`` (see ``customnn/ops/__init__.py``).
"""

from __future__ import annotations

import math

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._checks import check_float, check_rank, check_tensor
from customnn.ops._scalars import scalar
from customnn.ops.attention_masks import (LOG2E, EmptyAttention, additive_bias, causal_mask, floor_row_max,
                                          heads_last, nonzero_sums, output_row_sums, sum_to)
from customnn.ops.attention_tiled import TiledAttention
from customnn.ops.dropout import uniforms

# When each path runs, chosen by measurement: fwd+bwd time / SDPA's, at 1 thread (CPU time)
# and 2 threads, from ``benchmarks/attention_long.py --sweep`` (benchmarks/results/
# cpu-attention-long.txt). The dense path wins while its weight matrix is small:
# (1) T * S <= DENSE_MAX_T2 entries per head: up to T = S = 128 a tiled pass is a few tiles,
#     half of them masked waste, each paying Python's per-operation overhead (B=12, nh=4,
#     T=128: dense 0.99x SDPA's time, tiled 1.14x);
# (2) T * S <= DENSE_MAX_T2_FEW and B * nh * T * S <= DENSE_MAX entries in all (4 MB in
#     float32): up to T = S = 256, for a few sequences and heads (B=1, nh=4, T=256: dense
#     1.11x, tiled 1.37x; B=4, nh=4, T=256: dense 1.11x, tiled 1.12x at 1 thread, both 1.08x
#     at 2); for more of them the tiled pass is faster (B=12, nh=4, T=256: dense 1.27x, tiled
#     1.06x at 1 thread; 1.21x and 0.91x at 2). Past T = S = 256 the tiled pass wins or ties
#     (B=1, nh=4, T=512: dense 1.30x, tiled 1.04x at 1 thread; 0.97x and 1.05x at 2).
# These bounds keep the dense path's memory independent of how long T grows.
DENSE_MAX_T2 = 128 * 128
DENSE_MAX_T2_FEW = 256 * 256
DENSE_MAX = 2**20
# Tile sizes: square tiles of BLOCK_SHORT for T <= SHORT_T, else of BLOCK. A tile that crosses
# the diagonal computes its masked upper half for nothing (a fraction block / T of the work),
# and every tile costs about 20 tensor operations' Python overhead. At 1 thread 64 is the best
# compromise where T <= 256 runs tiled (B=12, nh=4, T=256: 64 gives 1.06x SDPA's time, 128
# 1.16x), 128 from T = 384 on (B=1, nh=4, T=1024: 128 gives 1.06x, 64 1.36x, 256 1.14x;
# T=4096: 128 1.14x, 256 1.23x). With more threads every operation also splits its work
# across the thread team and waits for all of it, so small tiles spend their time waiting:
# tiles double, up to BLOCK_MAX, while they hold fewer than THREADED_TILE scores over all
# B * nh heads (2 threads, B=1, nh=4, T=1024: 256 gives 1.03x, 128 1.23x; T=4096: 1.16x and
# 1.41x; B=12, nh=4, T=256 keeps 64: 0.91x, 128 1.02x).
BLOCK = 128
BLOCK_SHORT = 64
SHORT_T = 256
BLOCK_MAX = 256
THREADED_TILE = 2**17


def _block_size(T: int, heads: int) -> int:
    """The default square tile's side for T queries and ``heads`` = B * nh (see above)."""
    block = BLOCK_SHORT if T <= SHORT_T else BLOCK
    # (TorchDynamo cannot put the thread count into a graph: a compiled graph keeps 1 thread's tile)
    if not torch.compiler.is_compiling() and torch.get_num_threads() > 1:
        while block < BLOCK_MAX and heads * block * block < THREADED_TILE:
            block *= 2
    return block


MASK_WITH_CAUSAL = ("attn_mask with causal=True: F.scaled_dot_product_attention documents the two as exclusive "
                    "(its math kernel raises); pass causal=False and put the causal triangle into attn_mask")


def attention_reference(q, k, v, causal=True, dropout_p=0.0, *, attn_mask=None, generator=None, block_q=None,
                        block_k=None, batch=None):
    """Scaled dot-product attention, one query position at a time, as
    ``F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=causal)``: the plain
    definition, differentiated by autograd, that ``attention`` is tested against.

    q (B, nh, T, hs), k (B, nh, S, hs), v (B, nh, S, hv), or all three without B. Query t looks
    at keys 0..t when causal (the mask is aligned top-left, as PyTorch's is_causal), at all keys
    otherwise; ``attn_mask`` drops keys (boolean False) or adds to the scores (float). A query
    whose keys are all masked gets the output 0, as SDPA's on the CPU. Without dropout only
    (dropout_p must be 0); ``generator``, ``block_q``, ``block_k`` and ``batch`` change nothing here: they
    are taken so that both have one signature."""
    if dropout_p != 0.0:
        raise ValueError(f"attention_reference supports dropout_p=0 only, got dropout_p={dropout_p}")
    check_rank(q, "q", (3, 4), "(B, nh, T, hs) or unbatched (nh, T, hs)")
    for name, t in (("k", k), ("v", v)):
        check_rank(t, name, q.dim(), "like q")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(t, name)
    if attn_mask is not None:
        _check_mask(attn_mask, q, k.shape[-2])
        if causal:
            raise ValueError(MASK_WITH_CAUSAL)
    if q.dim() == 3:  # unbatched: a batch of one (a mask of up to 3 dims broadcasts the same)
        return attention_reference(q[None], k[None], v[None], causal, attn_mask=attn_mask)[0]
    B, nh, T, hs = q.shape
    S = k.shape[2]
    if k.shape[:2] != (B, nh) or v.shape[:2] != (B, nh) or k.shape[3] != hs or v.shape[2] != S:
        raise ValueError(f"q, k, v shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         f"(want q (B, nh, T, hs), k (B, nh, S, hs), v (B, nh, S, hv))")
    bias = None  # (B, nh, T, S): the term added to the scores
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # a dropped key (False) adds -inf
        bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf"))
        bias = bias.expand(B, nh, T, S)
    elif attn_mask is not None:
        bias = attn_mask.to(q.dtype).expand(B, nh, T, S)
    scale = 1.0 / math.sqrt(hs) if hs else math.inf
    outs = [v[:, :, :0]]  # (B, nh, 0, hv): the start, so that T = 0 gives an empty output
    for t in range(T):
        seen = min(t + 1, S) if causal else S  # how many keys query t may look at
        scores = (q[:, :, t: t + 1, :] @ k[:, :, :seen, :].transpose(-2, -1)) * scale  # (B, nh, 1, seen)
        if bias is not None:
            scores = scores + bias[:, :, t: t + 1, :seen]
        weights = scores  # no keys (S = 0): no weights, and the output is the empty sum 0
        if seen > 0:
            # subtract the max before exp; a row with every key masked has max -inf: use a
            # finite floor there, then its weights are exp(-inf) = 0 and so is its output
            top = scores.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).min)
            weights = torch.exp(scores - top)
            total = weights.sum(dim=-1, keepdim=True)
            weights = weights / torch.where(total == 0, 1.0, total)  # softmax over the keys
        outs.append(weights @ v[:, :, :seen, :])  # (B, nh, 1, hv)
    return torch.cat(outs, dim=2)  # (B, nh, T, hv)


class DenseAttention(torch.autograd.Function):
    """Attention on (B, nh, T, hs) tensors with the whole weight matrix, optional dropout on it.

    Batch and heads are merged into one dimension so that every product is one bmm. ``mask``:
    None, or the 4-D ``attn_mask`` (Bm, nhm, Tm, Sm), broadcast to (B, nh, T, S).
    """

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, dropout_p: float, generator, mask=None, batch=None):
        B, nh, T, hs = q.shape
        S = k.shape[2]
        scale = 1.0 / math.sqrt(hs)
        # (B*nh, T, hs) and (B*nh, S, hs); a copy only when the heads are a strided view
        q3, k3, v3 = q.reshape(B * nh, T, hs), k.reshape(B * nh, S, hs), v.reshape(B * nh, S, hs)
        alpha = scale * LOG2E  # scores in base-2 units (module docstring: why exp2)
        if causal:
            # mask + alpha * q @ k^T in one kernel (-inf stays -inf in any units)
            scores = torch.baddbmm(causal_mask(T, S, q.dtype, q.device), q3, k3.transpose(1, 2), alpha=alpha)
        else:
            scores = torch.bmm(q3, k3.transpose(1, 2)).mul_(scalar(alpha, q3))  # (B*nh, T, S)
        if mask is not None:  # attn_mask in base-2 units, broadcast over batch and heads
            scores.view(B, nh, T, S).add_(additive_bias(mask, q.dtype))
        # softmax over the keys, the row maximum subtracted before exp2 (with a mask, a row whose
        # keys are all masked gets a finite maximum and the sum 1, so its weights are 0; the two
        # guards are left out without one, where they would cost a generation step 15%)
        m = scores.amax(dim=-1, keepdim=True)  # (B*nh, T, 1)
        scores.sub_(m if mask is None else floor_row_max(m))
        att = scores.exp2_()  # (B*nh, T, S), in place: the scores are not needed any more
        total = att.sum(dim=-1, keepdim=True)
        att.div_(total if mask is None else nonzero_sums(total))
        if dropout_p > 0.0:
            # inverted dropout on the weights; the multiplier (0 or 1/(1-p)) is kept so that
            # backward uses exactly the same mask
            keep = uniforms((B, nh, T, S), generator, att.device, att.dtype, batch)  # (B, nh, T, S)
            drop_mult = (keep >= dropout_p).to(att.dtype).div_(1.0 - dropout_p).view(B * nh, T, S)
            att_d = att * drop_mult
        else:
            drop_mult = None
            att_d = att
        y3 = torch.bmm(att_d, v3)  # (B*nh, T, hs)
        y = heads_last(y3.view(B, nh, T, hs))  # (B, nh, T, hs), stored (B, T, nh, hs)
        # Saved for backward: q, k, v in their (B*nh, ., hs) form, the output y (for the
        # softmax backward's row sums; stored heads-last, it is also the storage the next
        # layer keeps), the weights att (B*nh, T, S) and the dropout multiplier.
        ctx.save_for_backward(q3, k3, v3, y, att, drop_mult)
        ctx.scale = scale
        ctx.shapes = (q.shape, k.shape)
        ctx.mask = None if mask is None else (mask.shape, mask.dtype)
        return y

    @staticmethod
    def backward(ctx, dout):
        q3, k3, v3, y, att, drop_mult = ctx.saved_tensors
        q_shape, k_shape = ctx.shapes
        need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
        need_dmask = ctx.mask is not None and ctx.needs_input_grad[6]
        dq = dk = dv = dmask = None
        dout3 = dout.reshape(att.shape[0], att.shape[1], q3.shape[2])  # (B*nh, T, hs)
        if need_dv:
            att_d = att if drop_mult is None else att * drop_mult  # recomputed: one multiply
            dv = torch.bmm(att_d.transpose(1, 2), dout3).view(k_shape)  # (B, nh, S, hs)
        if need_dq or need_dk or need_dmask:
            datt = torch.bmm(dout3, v3.transpose(1, 2))  # (B*nh, T, S)
            if drop_mult is not None:
                datt.mul_(drop_mult)
            # dscores = att * (datt - D), D = dout . y (module docstring; it holds with dropout
            # too: sum_j datt_ij att_ij = sum_j (dout_i . v_j) att_d_ij = dout_i . y_i). Masked
            # entries have att = 0, so they get no gradient. The 1/sqrt(hs) of the scores is
            # applied to dq and dk, which are smaller than dscores when hs < S.
            row = output_row_sums(dout3, y)  # (B*nh, T, 1)
            dscores = datt.sub_(row).mul_(att)  # (B*nh, T, S)
            if need_dq:
                dq = torch.bmm(dscores, k3).mul_(ctx.scale).view(q_shape)  # (B, nh, T, hs)
            if need_dk:
                dk = torch.bmm(dscores.transpose(1, 2), q3).mul_(ctx.scale).view(k_shape)  # (B, nh, S, hs)
            if need_dmask:  # the mask is added to the scores: dmask = dscores, summed where broadcast
                mask_shape, mask_dtype = ctx.mask
                dmask = sum_to(dscores.view(*q_shape[:3], k_shape[2]), mask_shape).to(mask_dtype)
        return dq, dk, dv, None, None, None, dmask, None


def _check_mask(attn_mask, q: torch.Tensor, S: int) -> None:
    """attn_mask as SDPA takes it: boolean, float32 or q's dtype, with 2 to q.dim() dims that
    broadcast to the weights' shape (B, nh, T, S) (unbatched: (nh, T, S))."""
    check_tensor(attn_mask, "attn_mask")
    if attn_mask.dtype not in (torch.bool, torch.float32, q.dtype):
        raise ValueError(f"attn_mask must be boolean, float32 or q's dtype {q.dtype}, got {attn_mask.dtype}")
    weights = (*q.shape[:-1], S)
    if not 2 <= attn_mask.dim() <= q.dim() or any(
            m not in (1, w) for m, w in zip(reversed(attn_mask.shape), reversed(weights))):
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} must broadcast to the attention weights' "
                         f"shape {weights} ({'B, ' if q.dim() == 4 else ''}nh, T, S), from at least (T, S)")


def _usual(q, k, v, dropout_p, attn_mask, block_q, block_k) -> bool:
    """A model's call, which every check of ``_check_arguments`` accepts, told in a few tests (a
    generated token calls attention once per layer): 4-D tensors q, k, v of one floating dtype
    that agree in B, nh and hs, k and v of one shape, a float dropout_p in [0, 1), no mask and
    no tile sizes."""
    if attn_mask is not None or block_q is not None or block_k is not None or type(dropout_p) is not float:
        return False
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        return False
    qs, ks = q.shape, k.shape
    return (len(qs) == 4 and len(ks) == 4 and ks == v.shape and qs[0] == ks[0] and qs[1] == ks[1]
            and qs[3] == ks[3] and q.dtype == k.dtype == v.dtype and q.is_floating_point()
            and 0.0 <= dropout_p < 1.0)


def _check_arguments(q, k, v, causal, dropout_p, attn_mask, block_q, block_k) -> None:
    """``attention``'s refusals (its docstring), one ValueError each, before any work."""
    if _usual(q, k, v, dropout_p, attn_mask, block_q, block_k):
        return
    check_rank(q, "q", (3, 4), "(B, nh, T, hs) or unbatched (nh, T, hs)")
    for name, t in (("k", k), ("v", v)):
        check_rank(t, name, q.dim(), "(B, nh, S, hs) like q" if q.dim() == 4 else "(nh, S, hs) like q")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(t, name)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must agree in batch, heads and head size (B, nh, _, hs), "
            f"got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"{name} must be a positive int or None, got {b!r}")
    if attn_mask is not None:
        _check_mask(attn_mask, q, k.shape[-2])
        if causal:
            raise ValueError(MASK_WITH_CAUSAL)


def attention(q, k, v, causal=True, dropout_p=0.0, *, attn_mask=None, generator=None, block_q=None, block_k=None,
              batch=None):
    """Scaled dot-product attention, ``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p,
    is_causal=causal)``.

    q: (B, nh, T, hs); k, v: (B, nh, S, hs). Returns (B, nh, T, hs), stored as (B, T, nh, hs) as
    SDPA's CPU kernels store it (``heads_last``: ``y.transpose(1, 2)`` is contiguous). Unbatched
    q, k, v (nh, T, hs) and (nh, S, hs) give (nh, T, hs). With ``causal=True`` query i attends to keys 0..i
    (top-left aligned, as SDPA). ``dropout_p`` drops attention weights (inverted scaling) with
    ``torch.rand`` from ``generator`` if given; ``batch = (rows, total)``: q, k, v are rows
    ``rows`` of a batch of ``total``, and the mask is those rows of the whole batch's
    (data-parallel training, as ``ops.dropout``'s).

    ``attn_mask`` (keyword only: the fourth place is ``causal``'s), as SDPA's: boolean (True: the
    key takes part) or float (added to the scores; float32 or q's dtype; it may require grad),
    of 2 to 4 dims that broadcast to (B, nh, T, S), e.g. (T, S), (1, 1, T, S), (B, 1, T, S),
    (B, 1, 1, S). A query whose keys are all masked gets the output 0 and gradients 0, as SDPA
    returns on the CPU (not NaN). Needs ``causal=False``.

    Without dropout, and unless the weight matrix is small (``DENSE_MAX_T2`` and the others),
    it runs tiled, in memory linear in T, with square tiles whose side depends on T, B * nh and
    the thread count (``_block_size``); ``block_q`` and ``block_k`` set the tile (queries x keys)
    and ask for the tiled path at any size (the tests use small tiles to exercise it at small T).
    Either path takes ``attn_mask``. Empty inputs give empty outputs; no keys (S = 0) give 0.

    Refused with ValueError: q not 3-D or 4-D; k, v not of q's rank (SDPA would broadcast q
    over k's batch); k and v of different shapes (a value size other than hs); batch, heads or
    head size that differ between q and k; dtypes that differ or are not floating point;
    ``dropout_p`` outside [0, 1); block sizes below 1; an ``attn_mask`` that is not boolean,
    float32 or q's dtype, or does not broadcast to (B, nh, T, S), or comes with ``causal=True``
    (SDPA documents the two as exclusive).
    """
    if autocast_on(q):
        return autocast_call("attention", attention, q, k, v, causal, dropout_p, attn_mask=attn_mask,
                             generator=generator, block_q=block_q, block_k=block_k, batch=batch)
    _check_arguments(q, k, v, causal, dropout_p, attn_mask, block_q, block_k)
    unbatched = q.dim() == 3
    if unbatched:  # (nh, T, hs): a batch of one
        q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
    mask = None
    if attn_mask is not None:  # (Bm, nhm, Tm, Sm): leading 1s, a view (its gradient flows back through it)
        mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    B, nh, T, hs = q.shape
    S = k.shape[2]
    forced = block_q is not None or block_k is not None
    small = T * S <= DENSE_MAX_T2 or (T * S <= DENSE_MAX_T2_FEW and B * nh * T * S <= DENSE_MAX)
    if B * nh * T * hs == 0 or S == 0:  # nothing to output, or no keys: zeros
        y = apply(EmptyAttention, q, k, v, mask)
    elif dropout_p > 0.0 or (small and not forced):
        y = apply(DenseAttention, q, k, v, bool(causal), float(dropout_p), generator, mask, batch)
    else:
        block = _block_size(T, B * nh)
        y = apply(TiledAttention, q, k, v, bool(causal), block_q or block, block_k or block, mask)
    return y.squeeze(0) if unbatched else y
