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

The backward goes through the softmax by hand (llm.c's ``attention_backward``):
    dv      = att_d^T @ dout
    datt_d  = dout @ v^T,   datt = datt_d * keep / (1 - p)        (dropout, same mask)
    dscores = att * (datt - sum(dout * y, -1))                    (softmax backward)
    dq      = dscores @ k * scale,   dk = dscores^T @ q * scale

Entry point: ``customnn.ops.attention`` (see ``customnn/ops/__init__.py``).
"""

from __future__ import annotations

import math

import torch

from customnn.ops._checks import check_float, check_rank

# Additive causal masks (0 where query i may see key j, -inf where j > i), one per
# (Tq, Tk, dtype, device), so that a training loop does not rebuild the same triangle on
# every call; added to the scores inside the same baddbmm that computes them.
_CAUSAL_MASKS: dict[tuple, torch.Tensor] = {}
_LOG2E = math.log2(math.e)  # exp(z) = exp2(z * log2(e))


def _causal_mask(tq: int, tk: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(T, S) additive mask: -inf where key j > query i (SDPA's top-left alignment)."""
    key = (tq, tk, dtype, str(device))
    mask = _CAUSAL_MASKS.get(key)
    if mask is None:
        above = torch.ones(tq, tk, dtype=torch.bool, device=device).triu_(1)
        mask = torch.zeros(tq, tk, dtype=dtype, device=device).masked_fill_(above, float("-inf"))  # (T, S)
        if len(_CAUSAL_MASKS) > 64:  # keep the cache small when lengths vary (generation)
            _CAUSAL_MASKS.clear()
        _CAUSAL_MASKS[key] = mask
    return mask


class Attention(torch.autograd.Function):
    """Scaled dot-product attention on (B, nh, T, hs) tensors, optional dropout on the weights.

    Batch and heads are merged into one dimension so that every product is one bmm.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, dropout_p: float, generator):
        B, nh, T, hs = q.shape
        S = k.shape[2]
        scale = 1.0 / math.sqrt(hs)
        # (B*nh, T, hs) and (B*nh, S, hs); a copy only when the heads are a strided view
        q3, k3, v3 = q.reshape(B * nh, T, hs), k.reshape(B * nh, S, hs), v.reshape(B * nh, S, hs)
        # The scores are formed in base-2 units, s2 = log2(e) * scale * q @ k^T, so that the
        # softmax's exp(z) becomes exp2(s2): the same numbers, and exp2 is about 3x faster than
        # exp on CPU (the exp of the (B*nh, T, S) scores is attention's costliest elementwise op).
        alpha = scale * _LOG2E
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
        # Saved for backward: q, k, v in their (B*nh, ., hs) form, the output y (small, for the
        # softmax backward's row sums), the attention weights att and the dropout multiplier.
        # att is (B, nh, T, S): at our models' sizes (T <= 1024, e.g. 12 x 4 x 64 x 64
        # floats = 0.8 MB for the GPT) storing it is cheaper than recomputing q @ k^T and the
        # softmax; a flash-attention style recompute would pay off only for much longer
        # sequences.
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
            # softmax backward: dscores = att * (datt - sum(datt * att)); masked entries
            # have att = 0, so they get no gradient. The 1/sqrt(hs) of the scores is
            # applied to dq and dk, which are smaller than dscores when hs < S.
            # The row sums need no (T, S) product (flash attention's trick): with or without
            # dropout, sum_j datt_ij att_ij = sum_j (dout_i . v_j) att_d_ij = dout_i . y_i.
            row = (dout3 * y3).sum(dim=-1, keepdim=True)  # (B*nh, T, 1)
            dscores = datt.sub_(row).mul_(att)  # (B*nh, T, S)
            if need_dq:
                dq = torch.bmm(dscores, k3).mul_(ctx.scale).view(q_shape)  # (B, nh, T, hs)
            if need_dk:
                dk = torch.bmm(dscores.transpose(1, 2), q3).mul_(ctx.scale).view(k_shape)  # (B, nh, S, hs)
        return dq, dk, dv, None, None, None


def attention(q, k, v, causal=True, dropout_p=0.0, *, generator=None):
    """Scaled dot-product attention, ``F.scaled_dot_product_attention(q, k, v, dropout_p, is_causal=causal)``.

    q: (B, nh, T, hs); k, v: (B, nh, S, hs). Returns (B, nh, T, hs). With ``causal=True``
    query i attends to keys 0..i (top-left aligned, as SDPA). ``dropout_p`` drops attention
    weights (inverted scaling) with ``torch.rand`` from ``generator`` if given.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_rank(t, name, 4, "(B, nh, T, hs)")
        check_float(t, name)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    bq, hq, _, sq = q.shape
    bk, hk, _, sk = k.shape
    if (bq, hq, sq) != (bk, hk, sk):
        raise ValueError(
            f"q and k must agree in batch, heads and head size (B, nh, _, hs), "
            f"got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    return Attention.apply(q, k, v, bool(causal), float(dropout_p), generator)
