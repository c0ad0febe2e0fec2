"""Multi-head scaled dot-product attention, forward and hand-written backward.

    y = softmax(q @ k^T / sqrt(hs) + mask) @ v            (Vaswani et al. 2017, section 3.2.1)

Matches ``torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p, is_causal)``
with its default scale ``1 / sqrt(hs)``. The causal mask is SDPA's: query ``i`` sees keys
``j <= i``, counted from the top-left corner even when ``Tq != Tk``. Generation with a
key/value cache calls it with one query against all cached keys and ``causal=False``.

Dimension letters used below:
    B   batch size
    nh  number of heads
    T   query length (Tq);  S  key/value length (Tk)
    hs  head size (C / nh)
    bq, bk   rows of a query block and of a key/value block (a tile is bq x bk)

Two ways to compute it, chosen by ``attention``:

**Tiled** (``TiledAttention``; FlashAttention, Dao et al. 2022, query blocks in the outer loop
as in FlashAttention-2): memory linear in T. The queries are cut into blocks Q_i of bq rows,
the keys and values into blocks K_j, V_j of bk rows; at most two (B*nh, bq, bk) tiles of
scores exist at a time, and only the output y and one log-sum-exp per query row are saved
for backward. Both passes loop over the query blocks i, and inside over the key blocks j
that block sees; each tile is a few whole-tensor operations over all B*nh heads at once.

Forward, for each query block i, over its key blocks j = 0, 1, ... (an online softmax):

    S_ij  = Q_i K_j^T * scale  (+ -inf above the diagonal)   (bq, bk)   scores of one tile
    m_i   = max(m_i', rowmax(S_ij))                          running row maximum (m_i' before this tile)
    P~_ij = exp(S_ij - m_i)                                  (bq, bk)
    l_i   = exp(m_i' - m_i) * l_i' + rowsum(P~_ij)           running row sum of exp
    O_i   = exp(m_i' - m_i) * O_i' + P~_ij V_j               (bq, hs) running unnormalised output

and after the last key block   y_i = O_i / l_i   and   L_i = m_i + log(l_i)   (the log-sum-exp
of row i's scores). Why it is exact: softmax(s) = exp(s - m) / sum(exp(s - m)) for any m, and
multiplying a sum formed with the old maximum m_i' by exp(m_i' - m_i) turns it into the same
sum formed with the new maximum, so one pass over the key blocks gives every row's softmax
without holding the row. The first tile of a row starts the recurrence (m_i' = -inf, l_i' = 0,
O_i' = 0); it holds key 0, which every query sees, so every row's maximum is finite from then on
and a row that a later tile masks completely gets exp(-inf) = 0 there.

Backward, from the saved L (P_ij = exp(S_ij - L_i) are the attention weights of the tile,
recomputed from the scores instead of stored) and dy = dout:

    dV_j += P_ij^T dY_i                                      (bk, hs)
    dP_ij = dY_i V_j^T                                       (bq, bk)
    dS_ij = P_ij * (dP_ij - D_i)                             softmax backward, D_i = rowsum(dY_i * Y_i)
    dQ_i += dS_ij K_j * scale,    dK_j += dS_ij^T Q_i * scale

Softmax's backward is dS = P * (dP - rowsum(P * dP)); its row sums need no (T, S) product:
sum_j P_ij dP_ij = sum_j P_ij (dy_i . v_j) = dy_i . (sum_j P_ij v_j) = dy_i . y_i, which is D.

Causal: a key block wholly above the diagonal (its first key after the block's last query) is
skipped in both directions; a tile that crosses the diagonal gets an additive -inf mask.

Base-2 units: the scores are formed as s2 = log2(e) * scale * q @ k^T (log2(e) * scale is
folded into one scaled copy of q), so that every exp(z) above becomes exp2(s2): the same
numbers. m and L are kept in these units. On this project's CPU (torch 2.13, AVX-512) exp2
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
    dq      = dscores @ k * scale,   dk = dscores^T @ q * scale

Entry point: ``customnn.ops.attention`` (see ``customnn/ops/__init__.py``).
"""

from __future__ import annotations

import math

import torch

from customnn.ops._checks import check_float, check_rank

_LOG2E = math.log2(math.e)  # exp(z) = exp2(z * log2(e))

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
    if torch.get_num_threads() > 1:
        while block < BLOCK_MAX and heads * block * block < THREADED_TILE:
            block *= 2
    return block


# Additive masks (0 where query i may see key j, -inf where j > i), built once per shape and
# offset so that a training loop does not rebuild the same triangle on every call.
_MASKS: dict[tuple, torch.Tensor] = {}


def _causal_mask(tq: int, tk: int, dtype: torch.dtype, device: torch.device, offset: int = 0) -> torch.Tensor:
    """(tq, tk) additive mask of a tile whose first key is ``offset`` positions after its first
    query: -inf where key position > query position (SDPA's top-left alignment)."""
    key = (tq, tk, offset, dtype, str(device))
    mask = _MASKS.get(key)
    if mask is None:
        above = torch.ones(tq, tk, dtype=torch.bool, device=device).triu_(1 - offset)
        mask = torch.zeros(tq, tk, dtype=dtype, device=device).masked_fill_(above, float("-inf"))  # (tq, tk)
        if len(_MASKS) > 64:  # keep the cache small when lengths vary (generation)
            _MASKS.clear()
        _MASKS[key] = mask
    return mask


class DenseAttention(torch.autograd.Function):
    """Attention on (B, nh, T, hs) tensors with the whole weight matrix, optional dropout on it.

    Batch and heads are merged into one dimension so that every product is one bmm.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, dropout_p: float, generator):
        B, nh, T, hs = q.shape
        S = k.shape[2]
        scale = 1.0 / math.sqrt(hs)
        # (B*nh, T, hs) and (B*nh, S, hs); a copy only when the heads are a strided view
        q3, k3, v3 = q.reshape(B * nh, T, hs), k.reshape(B * nh, S, hs), v.reshape(B * nh, S, hs)
        alpha = scale * _LOG2E  # scores in base-2 units (module docstring: why exp2)
        if causal:
            # mask + alpha * q @ k^T in one kernel (-inf stays -inf in any units)
            scores = torch.baddbmm(_causal_mask(T, S, q.dtype, q.device), q3, k3.transpose(1, 2), alpha=alpha)
        else:
            scores = torch.bmm(q3, k3.transpose(1, 2)).mul_(alpha)  # (B*nh, T, S)
        # softmax over the keys, the row maximum subtracted before exp2
        scores.sub_(scores.amax(dim=-1, keepdim=True))
        att = scores.exp2_()  # (B*nh, T, S), in place: the scores are not needed any more
        att.div_(att.sum(dim=-1, keepdim=True))
        if dropout_p > 0.0:
            # inverted dropout on the weights; the multiplier (0 or 1/(1-p)) is kept so that
            # backward uses exactly the same mask
            keep = torch.rand((B, nh, T, S), generator=generator, device=att.device, dtype=att.dtype)
            drop_mult = (keep >= dropout_p).to(att.dtype).div_(1.0 - dropout_p).view(B * nh, T, S)
            att_d = att * drop_mult
        else:
            drop_mult = None
            att_d = att
        y = torch.bmm(att_d, v3)  # (B*nh, T, hs)
        # Saved for backward: q, k, v in their (B*nh, ., hs) form, the output y (for the
        # softmax backward's row sums), the weights att (B*nh, T, S) and the dropout multiplier.
        ctx.save_for_backward(q3, k3, v3, y, att, drop_mult)
        ctx.scale = scale
        ctx.shapes = (q.shape, k.shape)
        return y.view(B, nh, T, hs)

    @staticmethod
    def backward(ctx, dout):
        q3, k3, v3, y3, att, drop_mult = ctx.saved_tensors
        q_shape, k_shape = ctx.shapes
        need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
        dq = dk = dv = None
        dout3 = dout.reshape(att.shape[0], att.shape[1], q3.shape[2])  # (B*nh, T, hs)
        if need_dv:
            att_d = att if drop_mult is None else att * drop_mult  # recomputed: one multiply
            dv = torch.bmm(att_d.transpose(1, 2), dout3).view(k_shape)  # (B, nh, S, hs)
        if need_dq or need_dk:
            datt = torch.bmm(dout3, v3.transpose(1, 2))  # (B*nh, T, S)
            if drop_mult is not None:
                datt.mul_(drop_mult)
            # dscores = att * (datt - D), D = dout . y (module docstring; it holds with dropout
            # too: sum_j datt_ij att_ij = sum_j (dout_i . v_j) att_d_ij = dout_i . y_i). Masked
            # entries have att = 0, so they get no gradient. The 1/sqrt(hs) of the scores is
            # applied to dq and dk, which are smaller than dscores when hs < S.
            row = (dout3 * y3).sum(dim=-1, keepdim=True)  # (B*nh, T, 1)
            dscores = datt.sub_(row).mul_(att)  # (B*nh, T, S)
            if need_dq:
                dq = torch.bmm(dscores, k3).mul_(ctx.scale).view(q_shape)  # (B, nh, T, hs)
            if need_dk:
                dk = torch.bmm(dscores.transpose(1, 2), q3).mul_(ctx.scale).view(k_shape)  # (B, nh, S, hs)
        return dq, dk, dv, None, None, None


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    """[(start, end), ...] cutting range(n) into blocks of ``size`` (the last one shorter)."""
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _blocks(x: torch.Tensor, size: int, scale: float | None = None) -> list[torch.Tensor]:
    """(BH, n, hs) -> contiguous (BH, size, hs) blocks along dim 1, optionally times ``scale``.

    Contiguous, because a bmm on a slice of a longer sequence (batch stride n * hs) takes a
    slower path than on a tensor of its own; the copy is linear in n, the tiles quadratic.
    """
    parts = x.split(size, dim=1)
    if scale is None:
        return [p.contiguous() for p in parts]
    return [p * scale for p in parts]


class TiledAttention(torch.autograd.Function):
    """Attention on (B, nh, T, hs) tensors in (bq, bk) tiles: an online softmax forward and a
    backward that recomputes the weights tile by tile from the saved log-sum-exp (module
    docstring). Batch and heads are merged, so that each tile is one bmm for all heads."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, bq: int, bk: int):
        B, nh, T, hs = q.shape
        S = k.shape[2]
        BH = B * nh
        scale = 1.0 / math.sqrt(hs)
        q3 = q.reshape(BH, T, hs)
        qb = _blocks(q3, bq, scale * _LOG2E)  # [(BH, bq, hs)]: scores in base-2 units
        kTb = [t.transpose(1, 2) for t in _blocks(k.reshape(BH, S, hs), bk)]  # [(BH, hs, bk)] K_j^T
        vb = _blocks(v.reshape(BH, S, hs), bk)  # [(BH, bk, hs)]
        ys, lses = [], []
        for i, (r0, r1) in enumerate(_spans(T, bq)):
            qi = qb[i]  # (BH, bq, hs)
            seen = min(r1, S) if causal else S  # keys that queries r0..r1-1 see; later blocks skipped
            for j, (c0, c1) in enumerate(_spans(seen, bk)):
                n = c1 - c0  # bk, or fewer in the last block or where the diagonal cuts it
                kTj = kTb[j] if n == bk else kTb[j][:, :, :n]  # (BH, hs, n)
                vj = vb[j] if n == bk else vb[j][:, :n]  # (BH, n, hs)
                s = torch.bmm(qi, kTj)  # (BH, bq, n) scores, base 2
                if causal and c1 - 1 > r0:  # the tile crosses the diagonal
                    s.add_(_causal_mask(r1 - r0, n, q.dtype, q.device, c0 - r0))
                m_tile = s.amax(dim=-1, keepdim=True)  # (BH, bq, 1)
                if j == 0:  # the recurrence's start; key 0 is visible to every query
                    m = m_tile
                    p = s.sub_(m).exp2_()  # (BH, bq, bk) P~
                    l = p.sum(dim=-1, keepdim=True)  # (BH, bq, 1)
                    o = torch.bmm(p, vj)  # (BH, bq, hs)
                else:
                    m_new = torch.maximum(m, m_tile)
                    rescale = (m - m_new).exp2_()  # (BH, bq, 1) exp(m' - m)
                    p = s.sub_(m_new).exp2_()
                    l = torch.addcmul(p.sum(dim=-1, keepdim=True), l, rescale)
                    o = o.mul_(rescale).baddbmm_(p, vj)
                    m = m_new
            ys.append(o.div_(l))  # (BH, bq, hs) y_i
            lses.append(l.log2_().add_(m))  # (BH, bq, 1) L_i, base 2
        y = torch.cat(ys, dim=1)  # (BH, T, hs)
        lse = torch.cat(lses, dim=1)  # (BH, T, 1)
        # Saved: the inputs (alive anyway), the output and one number per query row.
        ctx.save_for_backward(q, k, v, y, lse)
        ctx.config = (causal, bq, bk, scale)
        return y.view(B, nh, T, hs)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, y, lse = ctx.saved_tensors
        causal, bq, bk, scale = ctx.config
        need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
        B, nh, T, hs = q.shape
        S = k.shape[2]
        BH = B * nh
        dy = dout.reshape(BH, T, hs)
        D = (dy * y).sum(dim=-1, keepdim=True)  # (BH, T, 1) rowsum(dY * Y)
        qb = _blocks(q.reshape(BH, T, hs), bq, scale * _LOG2E)  # [(BH, bq, hs)], base 2 as in forward
        kb = _blocks(k.reshape(BH, S, hs), bk)  # [(BH, bk, hs)]
        kTb = [t.transpose(1, 2) for t in kb]  # [(BH, hs, bk)]
        vTb = [t.transpose(1, 2) for t in _blocks(v.reshape(BH, S, hs), bk)]  # [(BH, hs, bk)]
        dyb, lseb, Db = _blocks(dy, bq), _blocks(lse, bq), _blocks(D, bq)
        # dK_j and dV_j gather contributions from every query block: one accumulator each
        dks = [torch.zeros_like(t) for t in kb] if need_dk else None  # [(BH, bk, hs)]
        dvs = [torch.zeros_like(t) for t in kb] if need_dv else None
        dqs = []
        for i, (r0, r1) in enumerate(_spans(T, bq)):
            qi, dyi = qb[i], dyb[i]  # (BH, bq, hs)
            dqi = None  # (BH, bq, hs)
            seen = min(r1, S) if causal else S
            for j, (c0, c1) in enumerate(_spans(seen, bk)):
                n = c1 - c0
                full = n == bk
                # P_ij = exp2(S_ij - L_i), the tile's attention weights
                p = torch.bmm(qi, kTb[j] if full else kTb[j][:, :, :n]).sub_(lseb[i])  # (BH, bq, n)
                if causal and c1 - 1 > r0:
                    p.add_(_causal_mask(r1 - r0, n, p.dtype, p.device, c0 - r0))
                p.exp2_()
                if need_dv:  # dV_j += P^T dY_i
                    (dvs[j] if full else dvs[j][:, :n]).baddbmm_(p.transpose(1, 2), dyi)
                if need_dq or need_dk:
                    # dS_ij = P * (dY_i V_j^T - D_i), in natural units
                    ds = torch.bmm(dyi, vTb[j] if full else vTb[j][:, :, :n]).sub_(Db[i]).mul_(p)  # (BH, bq, n)
                    if need_dq:  # dQ_i += dS K_j
                        kj = kb[j] if full else kb[j][:, :n]
                        dqi = torch.bmm(ds, kj) if dqi is None else dqi.baddbmm_(ds, kj)
                    if need_dk:  # dK_j += dS^T Q_i
                        (dks[j] if full else dks[j][:, :n]).baddbmm_(ds.transpose(1, 2), qi)
            dqs.append(dqi)
        # The scale of the scores: dq carries it once; dk was formed with the scaled q, which
        # carries scale * log2(e), so the log2(e) is taken out again.
        dq = torch.cat(dqs, dim=1).mul_(scale).view(q.shape) if need_dq else None
        dk = torch.cat(dks, dim=1).mul_(1.0 / _LOG2E).view(k.shape) if need_dk else None
        dv = torch.cat(dvs, dim=1).view(v.shape) if need_dv else None
        return dq, dk, dv, None, None, None


def attention(q, k, v, causal=True, dropout_p=0.0, *, generator=None, block_q=None, block_k=None):
    """Scaled dot-product attention, ``F.scaled_dot_product_attention(q, k, v, dropout_p, is_causal=causal)``.

    q: (B, nh, T, hs); k, v: (B, nh, S, hs). Returns (B, nh, T, hs). With ``causal=True``
    query i attends to keys 0..i (top-left aligned, as SDPA). ``dropout_p`` drops attention
    weights (inverted scaling) with ``torch.rand`` from ``generator`` if given.

    Without dropout, and unless the weight matrix is small (``DENSE_MAX_T2`` and the others),
    it runs tiled, in memory linear in T, with square tiles whose side depends on T, B * nh and
    the thread count (``_block_size``); ``block_q`` and ``block_k`` set the tile (queries x keys)
    and ask for the tiled path at any size (the tests use small tiles to exercise it at small T).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_rank(t, name, 4, "(B, nh, T, hs)")
        check_float(t, name)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    B, nh, T, hs = q.shape
    S = k.shape[2]
    if (B, nh, hs) != (k.shape[0], k.shape[1], k.shape[3]):
        raise ValueError(
            f"q and k must agree in batch, heads and head size (B, nh, _, hs), "
            f"got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"{name} must be a positive int or None, got {b!r}")
    forced = block_q is not None or block_k is not None
    small = T * S <= DENSE_MAX_T2 or (T * S <= DENSE_MAX_T2_FEW and B * nh * T * S <= DENSE_MAX)
    if dropout_p > 0.0 or T * S == 0 or (small and not forced):
        return DenseAttention.apply(q, k, v, bool(causal), float(dropout_p), generator)
    block = _block_size(T, B * nh)
    return TiledAttention.apply(q, k, v, bool(causal), block_q or block, block_k or block)
