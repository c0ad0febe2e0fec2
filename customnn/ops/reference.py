"""Where each layer's readable reference lives, and attention's own.

Every layer in ``customnn.ops`` has a reference with the same arguments, named
``<layer>_reference``: the definition written as plain tensor math (or explicit loops over
output pixels), obviously right rather than fast, with no hand-written backward: autograd
differentiates it, which makes it an independent check of the fast layer's forward AND its
backward (tests/test_reference.py, and the "reference" rows of ``customnn check``).

    from customnn import ops
    y = ops.conv2d_reference(x, w, b, stride=1, padding=2)   # equals ops.conv2d and F.conv2d

Each reference sits in its layer's file, just above the fast version:

    pad.py         pad2d_reference (an index per output position)
    conv.py        conv2d_reference (a loop over output pixels and groups)
    pool.py        max_pool2d_reference (a loop over output pixels, in _pool_geometry.py)
    avg_pool.py    avg_pool2d_reference (the same loop, and each window's divisor by its definition)
    activation.py  relu_reference, gelu_reference
    linear.py      linear_reference, flatten_reference, embedding_reference (one-hot @ table)
    loss.py        softmax_reference, log_softmax_reference, cross_entropy_reference
    norm.py        layer_norm_reference, batch_norm_reference
    dropout.py     dropout_reference (draws the same mask as dropout from the same generator)
    reference.py   attention_reference (below: a loop over query positions)

They are all imported here too, so ``customnn.ops.reference`` holds the whole set.

Dimension letters for attention: B batch, nh heads, T query positions, S key positions,
hs head size, hv value size.
"""

from __future__ import annotations

import math

import torch

from customnn.ops._checks import check_float, check_rank
from customnn.ops.activation import gelu_reference, relu_reference
from customnn.ops.conv import conv2d_reference, pad2d_reference
from customnn.ops.dropout import dropout_reference
from customnn.ops.linear import embedding_reference, flatten_reference, linear_reference
from customnn.ops.loss import cross_entropy_reference, log_softmax_reference, softmax_reference
from customnn.ops.norm import batch_norm_reference, layer_norm_reference
from customnn.ops.pool import avg_pool2d_reference, max_pool2d_reference

__all__ = [
    "attention_reference", "avg_pool2d_reference", "batch_norm_reference", "conv2d_reference",
    "cross_entropy_reference", "dropout_reference", "embedding_reference", "flatten_reference",
    "gelu_reference", "layer_norm_reference", "linear_reference", "log_softmax_reference",
    "max_pool2d_reference", "pad2d_reference", "relu_reference", "softmax_reference",
]


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        causal: bool = True, dropout_p: float = 0.0, *, generator=None, block_q=None,
                        block_k=None) -> torch.Tensor:
    """Scaled dot-product attention, one query position at a time, as
    ``F.scaled_dot_product_attention(q, k, v, is_causal=causal)``. (``block_q`` and ``block_k``,
    the fast version's tile sizes, change nothing here: they are taken so both have one signature.)

    q (B, nh, T, hs), k (B, nh, S, hs), v (B, nh, S, hv). Query t looks at keys 0..t when
    causal (the mask is aligned top-left, as PyTorch's is_causal), at all keys otherwise.
    Without dropout only (dropout_p must be 0), so ``generator``, there to take the same
    arguments as ``attention``, is never used."""
    if dropout_p != 0.0:
        raise ValueError(f"attention_reference supports dropout_p=0 only, got dropout_p={dropout_p}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_rank(t, name, 4, "(B, nh, T, hs)")
        check_float(t, name)
    B, nh, T, hs = q.shape
    S = k.shape[2]
    if k.shape[:2] != (B, nh) or v.shape[:2] != (B, nh) or k.shape[3] != hs or v.shape[2] != S:
        raise ValueError(f"q, k, v shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         f"(want q (B, nh, T, hs), k (B, nh, S, hs), v (B, nh, S, hv))")
    if S == 0:
        raise ValueError(f"attention needs at least one key, got k {tuple(k.shape)}")
    scale = 1.0 / math.sqrt(hs)
    outs = []
    for t in range(T):
        seen = min(t + 1, S) if causal else S  # how many keys query t may look at
        scores = (q[:, :, t: t + 1, :] @ k[:, :, :seen, :].transpose(-2, -1)) * scale  # (B, nh, 1, seen)
        scores = scores - scores.max(dim=-1, keepdim=True).values  # subtract the max before exp
        weights = torch.exp(scores)
        weights = weights / weights.sum(dim=-1, keepdim=True)  # softmax over the keys
        outs.append(weights @ v[:, :, :seen, :])  # (B, nh, 1, hv)
    return torch.cat(outs, dim=2)  # (B, nh, T, hv)
