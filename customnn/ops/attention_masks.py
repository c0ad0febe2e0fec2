"""Attention's masks and empty shapes, shared by the dense path (attention.py) and the tiled
one (attention_tiled.py).

- the causal triangle as an additive tile, cached per shape;
- ``attn_mask`` (boolean: True takes part; or float: added to the scores) as one additive bias
  in the base-2 units the scores are formed in (attention.py's docstring: why exp2), its slice
  for one tile, and the gradient of the scores summed back to the mask's shape;
- the guards that give a row whose keys are all masked the weights 0, as SDPA on the CPU;
- the output's memory layout, heads side by side in each position's row (``heads_last``), and
  the backward's row sums read in that layout (``output_row_sums``);
- ``EmptyAttention``: no keys (S = 0) or an empty output.

Dimension letters as in attention.py: B batch, nh heads, T queries, S keys, hs head size; a
mask is (Bm, nhm, Tm, Sm), each of them 1 or the full size (broadcast).
"""

from __future__ import annotations

import math

import torch

LOG2E = math.log2(math.e)  # exp(z) = exp2(z * log2(e))

# Additive masks (0 where query i may see key j, -inf where j > i), built once per shape and
# offset so that a training loop does not rebuild the same triangle on every call.
_MASKS: dict[tuple, torch.Tensor] = {}


def causal_mask(tq: int, tk: int, dtype: torch.dtype, device: torch.device, offset: int = 0) -> torch.Tensor:
    """(tq, tk) additive mask of a tile whose first key is ``offset`` positions after its first
    query: -inf where key position > query position (SDPA's top-left alignment)."""
    key = (tq, tk, offset, dtype, str(device))
    mask = _MASKS.get(key)
    if mask is None:
        above = torch.ones(tq, tk, dtype=torch.bool, device=device).triu_(1 - offset)
        mask = torch.zeros(tq, tk, dtype=dtype, device=device).masked_fill_(above, float("-inf"))  # (tq, tk)
        if torch.compiler.is_compiling():  # the graph builds it (a constant): no cache to fill while tracing
            return mask
        if len(_MASKS) > 64:  # keep the cache small when lengths vary (generation)
            _MASKS.clear()
        _MASKS[key] = mask
    return mask


def additive_bias(attn_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The (Bm, nhm, Tm, Sm) mask as a term added to the base-2 scores: 0 / -inf for a boolean
    mask, log2(e) * mask for a float one (the scores are log2(e) times SDPA's)."""
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill_(
            attn_mask.logical_not(), float("-inf"))
    return attn_mask.to(dtype) * LOG2E


def bias_tile(bias: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """The bias of queries r0..r1-1 and keys c0..c1-1, a view; a dim of size 1 (broadcast) is
    kept whole."""
    rows = slice(r0, r1) if bias.shape[2] > 1 else slice(None)
    cols = slice(c0, c1) if bias.shape[3] > 1 else slice(None)
    return bias[:, :, rows, cols]


def sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` (B, nh, T', S') summed over the dims where ``shape`` (as long) has a 1: the gradient
    of a term broadcast from ``shape``."""
    dims = [d for d, n in enumerate(shape) if n == 1 and t.shape[d] != 1]
    return t.sum(dim=dims, keepdim=True) if dims else t


def floor_row_max(m: torch.Tensor) -> torch.Tensor:
    """Row maxima with -inf (a row whose keys are all masked) raised to the dtype's lowest
    finite number, in place, so that exp2(s - m) is exp2(-inf) = 0 there and not NaN; NaN stays."""
    return m.clamp_min_(torch.finfo(m.dtype).min)


def nonzero_sums(l: torch.Tensor) -> torch.Tensor:
    """Row sums of exp2(s - m) raised to 1, in place: a row whose every score is -inf has the
    sum 0, and then its weights and output are 0 (what SDPA returns on the CPU) and its
    log-sum-exp finite. Any other row sums to 1 or more already (its maximum contributes
    exp2(0) = 1, the other terms are not negative), and NaN stays NaN."""
    return l.clamp_min_(1.0)


def heads_last(y: torch.Tensor) -> torch.Tensor:
    """The contiguous output y (B, nh, T, hs) with its values stored as (B, T, nh, hs), the
    layout SDPA's CPU kernels return: y itself where the two layouts are one (one query or one
    head, as in a generation step with the KV cache), else a copy.

    A model that puts the heads side by side again, ``y.transpose(1, 2).reshape(B, T, C)``,
    then gets a view, not a copy, and the layer it feeds (the output projection) keeps for its
    backward the storage attention keeps (y, for the row sums D = dout . y): one (B, T, C)
    tensor per layer, not two. The tiled path writes its blocks into such a tensor directly.
    """
    if y.shape[1] == 1 or y.shape[2] == 1:  # no tensor calls: they cost a cached generation step ~2%
        return y
    return y.transpose(1, 2).contiguous().transpose(1, 2)


def output_row_sums(dout3: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """D_i = dout_i . y_i, each query's upstream gradient dotted with its output (the softmax
    backward's row sums, both paths): dout3 (B*nh, T, hs), y (B, nh, T, hs) as stored by
    ``heads_last`` -> (B*nh, T, 1)."""
    return (dout3.view(y.shape) * y).sum(dim=-1, keepdim=True).reshape(dout3.shape[0], -1, 1)


class EmptyAttention(torch.autograd.Function):
    """Attention with nothing to weigh or nothing to output: no keys (S = 0: every output 0,
    SDPA's value), or an empty q (B, nh, T or hs 0). The output is zeros, every gradient 0."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        ctx.inputs = [(t.shape, t.dtype) if t is not None else None for t in (q, k, v, mask)]
        return q.new_zeros(q.shape)  # (B, nh, T, hs)

    @staticmethod
    def backward(ctx, dout):
        return tuple(dout.new_zeros(spec[0], dtype=spec[1]) if need and spec is not None else None
                     for need, spec in zip(ctx.needs_input_grad, ctx.inputs))
