"""Attention in tiles: an online softmax forward and a backward that recomputes the weights tile
by tile from the saved log-sum-exp (FlashAttention, Dao et al. 2022; query blocks in the outer
loop as in FlashAttention-2). ``customnn.ops.attention`` chooses this path or the dense one
(attention.py's docstring: when, and why the scores are in base-2 units: exp2 below).

Dimension letters as in attention.py: B batch, nh heads, T queries, S keys, hs head size,
BH = B * nh, bq and bk the rows of a query block and of a key/value block.

Forward, for each query block i, over its key blocks j = 0, 1, ... (an online softmax):

    S_ij  = Q_i K_j^T * scale  (+ -inf above the diagonal, or + the mask's tile)   (bq, bk)
    m_i   = max(m_i', rowmax(S_ij))                          running row maximum (m_i' before this tile)
    P~_ij = exp(S_ij - m_i)                                  (bq, bk)
    l_i   = exp(m_i' - m_i) * l_i' + rowsum(P~_ij)           running row sum of exp
    O_i   = exp(m_i' - m_i) * O_i' + P~_ij V_j               (bq, hs) running unnormalised output

and after the last key block   y_i = O_i / l_i   and   L_i = m_i + log(l_i)   (the log-sum-exp
of row i's scores). Why it is exact: softmax(s) = exp(s - m) / sum(exp(s - m)) for any m, and
multiplying a sum formed with the old maximum m_i' by exp(m_i' - m_i) turns it into the same
sum formed with the new maximum, so one pass over the key blocks gives every row's softmax
without holding the row. The first tile of a row starts the recurrence (m_i' = -inf, l_i' = 0,
O_i' = 0); without attn_mask it holds key 0, which every query sees, so every row's maximum is
finite from then on and a row that a later tile masks completely gets exp(-inf) = 0 there.
With attn_mask (its slice added to each tile's scores), the first maximum is raised to a finite
floor and the final l to at least 1, so a row whose keys are all masked ends with y_i = 0.

Backward, from the saved L (P_ij = exp(S_ij - L_i) are the attention weights of the tile,
recomputed from the scores instead of stored) and dy = dout:

    dV_j += P_ij^T dY_i                                      (bk, hs)
    dP_ij = dY_i V_j^T                                       (bq, bk)
    dS_ij = P_ij * (dP_ij - D_i)                             softmax backward, D_i = rowsum(dY_i * Y_i)
    dQ_i += dS_ij K_j * scale,    dK_j += dS_ij^T Q_i * scale
    dmask_ij += dS_ij                                        summed over the dims the mask is broadcast along

Softmax's backward is dS = P * (dP - rowsum(P * dP)); its row sums need no (T, S) product:
sum_j P_ij dP_ij = sum_j P_ij (dy_i . v_j) = dy_i . (sum_j P_ij v_j) = dy_i . y_i, which is D.

Causal: a key block wholly above the diagonal (its first key after the block's last query) is
skipped in both directions; a tile that crosses the diagonal gets an additive -inf mask.
"""

from __future__ import annotations

import math

import torch

from customnn.ops.attention_masks import (LOG2E, additive_bias, bias_tile, causal_mask, floor_row_max, nonzero_sums,
                                          output_row_sums, sum_to)


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
    """Attention on (B, nh, T, hs) tensors in (bq, bk) tiles. Batch and heads are merged, so
    that each tile is one bmm for all heads. ``mask``: None, or the 4-D ``attn_mask`` (Bm, nhm,
    T or 1, S or 1), added tile by tile (never with ``causal``: ``attention`` refuses both)."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, bq: int, bk: int, mask=None):
        B, nh, T, hs = q.shape
        S = k.shape[2]
        BH = B * nh
        scale = 1.0 / math.sqrt(hs)
        bias = None if mask is None else additive_bias(mask, q.dtype)  # (Bm, nhm, Tm, Sm), base 2
        q3 = q.reshape(BH, T, hs)
        qb = _blocks(q3, bq, scale * LOG2E)  # [(BH, bq, hs)]: scores in base-2 units
        kTb = [t.transpose(1, 2) for t in _blocks(k.reshape(BH, S, hs), bk)]  # [(BH, hs, bk)] K_j^T
        vb = _blocks(v.reshape(BH, S, hs), bk)  # [(BH, bk, hs)]
        y = q.new_empty(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs), stored (B, T, nh, hs): see heads_last
        lses = []
        for i, (r0, r1) in enumerate(_spans(T, bq)):
            qi = qb[i]  # (BH, bq, hs)
            seen = min(r1, S) if causal else S  # keys that queries r0..r1-1 see; later blocks skipped
            for j, (c0, c1) in enumerate(_spans(seen, bk)):
                n = c1 - c0  # bk, or fewer in the last block or where the diagonal cuts it
                kTj = kTb[j] if n == bk else kTb[j][:, :, :n]  # (BH, hs, n)
                vj = vb[j] if n == bk else vb[j][:, :n]  # (BH, n, hs)
                s = torch.bmm(qi, kTj)  # (BH, bq, n) scores, base 2
                if causal and c1 - 1 > r0:  # the tile crosses the diagonal
                    s.add_(causal_mask(r1 - r0, n, q.dtype, q.device, c0 - r0))
                if bias is not None:
                    s.view(B, nh, r1 - r0, n).add_(bias_tile(bias, r0, r1, c0, c1))
                m_tile = s.amax(dim=-1, keepdim=True)  # (BH, bq, 1)
                if j == 0:  # the recurrence's start. Without a mask it holds key 0, which every
                    # query sees, so every row's maximum is finite from here on; with one, a row's
                    # keys may all be masked, and its maximum is kept finite (attention_masks.py)
                    m = m_tile if bias is None else floor_row_max(m_tile)
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
            if bias is not None:
                nonzero_sums(l)  # a row with every key masked: the weights and the output 0, as SDPA
            y[:, :, r0:r1].copy_(o.div_(l).view(B, nh, r1 - r0, hs))  # y_i, (BH, bq, hs) as (B, nh, bq, hs)
            lses.append(l.log2_().add_(m))  # (BH, bq, 1) L_i, base 2
        lse = torch.cat(lses, dim=1)  # (BH, T, 1)
        # Saved: the inputs (alive anyway), the output, one number per query row, and the
        # mask's additive form (the size of the mask given).
        ctx.save_for_backward(q, k, v, y, lse, *([] if bias is None else [bias]))
        ctx.config = (causal, bq, bk, scale)
        ctx.mask_dtype = None if mask is None else mask.dtype
        return y

    @staticmethod
    def backward(ctx, dout):
        q, k, v, y, lse, *masked = ctx.saved_tensors
        bias = masked[0] if masked else None
        causal, bq, bk, scale = ctx.config
        need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
        need_dmask = bias is not None and ctx.needs_input_grad[6]
        B, nh, T, hs = q.shape
        S = k.shape[2]
        BH = B * nh
        dy = dout.reshape(BH, T, hs)
        D = output_row_sums(dy, y)  # (BH, T, 1) rowsum(dY * Y)
        qb = _blocks(q.reshape(BH, T, hs), bq, scale * LOG2E)  # [(BH, bq, hs)], base 2 as in forward
        kb = _blocks(k.reshape(BH, S, hs), bk)  # [(BH, bk, hs)]
        kTb = [t.transpose(1, 2) for t in kb]  # [(BH, hs, bk)]
        vTb = [t.transpose(1, 2) for t in _blocks(v.reshape(BH, S, hs), bk)]  # [(BH, hs, bk)]
        dyb, lseb, Db = _blocks(dy, bq), _blocks(lse, bq), _blocks(D, bq)
        # dK_j and dV_j gather contributions from every query block: one accumulator each; so
        # does the mask's gradient where it is broadcast over the queries
        dks = [torch.zeros_like(t) for t in kb] if need_dk else None  # [(BH, bk, hs)]
        dvs = [torch.zeros_like(t) for t in kb] if need_dv else None
        dbias = torch.zeros_like(bias) if need_dmask else None  # (Bm, nhm, Tm, Sm)
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
                    p.add_(causal_mask(r1 - r0, n, p.dtype, p.device, c0 - r0))
                if bias is not None:
                    p.view(B, nh, r1 - r0, n).add_(bias_tile(bias, r0, r1, c0, c1))
                p.exp2_()
                if need_dv:  # dV_j += P^T dY_i
                    (dvs[j] if full else dvs[j][:, :n]).baddbmm_(p.transpose(1, 2), dyi)
                if need_dq or need_dk or need_dmask:
                    # dS_ij = P * (dY_i V_j^T - D_i), in natural units
                    ds = torch.bmm(dyi, vTb[j] if full else vTb[j][:, :, :n]).sub_(Db[i]).mul_(p)  # (BH, bq, n)
                    if need_dq:  # dQ_i += dS K_j
                        kj = kb[j] if full else kb[j][:, :n]
                        dqi = torch.bmm(ds, kj) if dqi is None else dqi.baddbmm_(ds, kj)
                    if need_dk:  # dK_j += dS^T Q_i
                        (dks[j] if full else dks[j][:, :n]).baddbmm_(ds.transpose(1, 2), qi)
                    if need_dmask:  # dmask += dS, summed over the dims the mask is broadcast along
                        bias_tile(dbias, r0, r1, c0, c1).add_(sum_to(ds.view(B, nh, r1 - r0, n), dbias.shape))
            dqs.append(dqi)
        # The scale of the scores: dq carries it once; dk was formed with the scaled q, which
        # carries scale * log2(e), so the log2(e) is taken out again.
        dq = torch.cat(dqs, dim=1).mul_(scale).view(q.shape) if need_dq else None
        dk = torch.cat(dks, dim=1).mul_(1.0 / LOG2E).view(k.shape) if need_dk else None
        dv = torch.cat(dvs, dim=1).view(v.shape) if need_dv else None
        dmask = dbias.to(ctx.mask_dtype) if need_dmask else None
        return dq, dk, dv, None, None, None, dmask
