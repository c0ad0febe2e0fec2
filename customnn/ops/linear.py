"""Linear (fully connected) layer, flatten, and embedding lookup.

``linear(x, weight, bias)`` is the seed's ``x @ weight + bias`` with weight ``(in, out)``, so it
equals ``F.linear(x, weight.T, bias)``. Its backward is the matrix calculus of llm.c's
``matmul_backward``: dx = dout @ W^T, dW = x^T @ dout, db = sum of dout over the rows.
``flatten(x)`` is ``x.flatten(1)``; ``embedding(idx, weight)`` is ``F.embedding``: row lookup
forward, and a scatter-add of the upstream rows into dweight backward (llm.c's
``encoder_backward``; a row used by two tokens gets both contributions).

Dimension letters: N rows (all leading dimensions of x flattened together, e.g. B*T),
C in_features, OC out_features, V the number of embedding rows (vocabulary size).

    from customnn import ops
    y = ops.linear(x, w, b)          # x (B, T, C), w (C, OC), b (OC,) -> (B, T, OC)
    e = ops.embedding(idx, wte)      # idx (B, T) int64, wte (V, C) -> (B, T, C)

Above each fast version sits its readable reference (``linear_reference``, ``flatten_reference``,
``embedding_reference``): the definition as plain tensor math, for autograd to differentiate;
tests/test_reference.py compares the two.
"""

from __future__ import annotations

import math

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._checks import check_float, check_tensor, int_range


_NARROW = 16  # outputs at most this wide take the transposed forward product (see below)
_FEW = 8  # ... unless there are at most this many rows: then the one product costs least


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """out[..., o] = sum over c of x[..., c] * weight[c, o], plus bias[o]."""
    out = (x.unsqueeze(-1) * weight).sum(dim=-2)  # (..., C, 1) * (C, OC) summed over C -> (..., OC)
    return out if bias is None else out + bias


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        C, OC = weight.shape
        if not ctx.needs_input_grad[0] and not ctx.needs_input_grad[1] and bias is None and OC > _NARROW:
            # Nothing to keep for a backward (no grad: evaluation, generation): matmul folds the
            # leading dims into one product itself, with no view of x or of the result to make here.
            return torch.matmul(x, weight)  # (..., OC)
        lead = x.shape[:-1]
        rows = len(lead) == 1  # x is (N, C) already: no view to make, in or out
        # (N, C), a view when x is contiguous; N spelt out, as -1 is ambiguous when C or N is 0
        x2 = x if rows else x.reshape(math.prod(lead), C)
        if OC <= _NARROW and x2.shape[0] > _FEW:
            # A narrow output (a classifier head): the BLAS is several times faster at the
            # transposed product out^T = W^T x^T (OC, N) than at x W with only OC columns.
            out_t = weight.T @ x2.T if bias is None else torch.addmm(bias.unsqueeze(1), weight.T, x2.T)
            out = out_t.T.contiguous()  # (N, OC)
        elif bias is None:
            out = x2 @ weight  # (N, OC)
        else:
            out = torch.addmm(bias, x2, weight)  # (N, OC)
        # x (as 2-D rows) and W are what the backward's two matmuls need; the output is not kept.
        ctx.save_for_backward(x2, weight)
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return out if rows else out.view(*lead, OC)

    @staticmethod
    def backward(ctx, dout):
        x2, weight = ctx.saved_tensors
        OC = weight.shape[1]
        rows = dout.dim() == 2  # x was (N, C): no views to make
        dout2 = dout if rows else dout.reshape(x2.shape[0], OC)  # (N, OC)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = dout2 @ weight.T  # (N, C)
            dx = dx if rows else dx.view(ctx.x_shape)  # x's shape
        if ctx.needs_input_grad[1]:
            # dW = x^T dout (C, OC); when OC < C the BLAS is faster at (dout^T x)^T, the same
            # numbers in column-major order.
            dw = (dout2.T @ x2).T if OC < x2.shape[1] else x2.T @ dout2  # (C, OC)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dout2.sum(0)  # (OC,)
        return dx, dw, db


def flatten_reference(x: torch.Tensor) -> torch.Tensor:
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...), the values in row-major order."""
    return x.reshape(x.shape[0], -1)


class _Flatten(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.x_shape = x.shape  # only the shape is needed to undo the reshape
        return x.flatten(1)  # (N, prod(rest)): a view when the strides allow it

    @staticmethod
    def backward(ctx, dout):
        return dout.reshape(ctx.x_shape)


def embedding_reference(idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Row idx of weight (V, C), written as a one-hot vector times the table: then dweight is
    onehot^T @ dout, which adds up the gradients of a row picked by several tokens."""
    V = weight.shape[0]
    onehot = (idx.unsqueeze(-1) == torch.arange(V, device=idx.device)).to(weight.dtype)  # (*idx.shape, V)
    return onehot @ weight  # (*idx.shape, C)


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, weight, idx_shape):
        V, C = weight.shape
        out = weight.index_select(0, flat)  # (N, C), flat the indices (N,)
        # The indices are kept for backward (small: one integer per token); the weight is not
        # needed, only its shape.
        ctx.save_for_backward(flat)
        ctx.weight_shape = weight.shape
        return out if len(idx_shape) == 1 else out.view(*idx_shape, C)

    @staticmethod
    def backward(ctx, dout):
        (flat,) = ctx.saved_tensors
        dw = None
        if ctx.needs_input_grad[1]:
            V, C = ctx.weight_shape
            dw = torch.zeros((V, C), dtype=dout.dtype, device=dout.device)
            # Add, don't assign: a row used by several tokens gets every contribution.
            dw.index_add_(0, flat, dout.reshape(flat.shape[0], C))  # (N, C), N spelt out for C == 0
        return None, dw, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight + bias`` for x (..., C), weight (C, OC), bias (OC,) -> (..., OC)."""
    if autocast_on(x):
        return autocast_call("linear", linear, x, weight, bias)
    # Each check costs a test of values already at hand; the messages are built only to refuse.
    if not isinstance(x, torch.Tensor):
        check_tensor(x, "x")
    if not isinstance(weight, torch.Tensor):
        check_tensor(weight, "weight")
    if not x.is_floating_point():
        check_float(x, "x")
    xs, ws = x.shape, weight.shape
    if len(ws) != 2:
        raise ValueError(f"weight must be 2-D (in_features, out_features), got shape {tuple(ws)}")
    if not xs:
        raise ValueError(f"x must have at least 1 dimension, got shape {tuple(xs)}")
    if xs[-1] != ws[0]:
        raise ValueError(
            f"linear: x's last dimension ({xs[-1]}) must equal weight's first (in_features, "
            f"{ws[0]}); got x {tuple(xs)} and weight {tuple(ws)}"
        )
    if x.dtype != weight.dtype:
        raise ValueError(f"x and weight must have the same dtype, got {x.dtype} and {weight.dtype}")
    if bias is not None:
        check_tensor(bias, "bias")
        if bias.shape != ws[1:]:
            raise ValueError(
                f"bias must have shape ({ws[1]},) to match weight {tuple(ws)}, "
                f"got {tuple(bias.shape)}"
            )
        if bias.dtype != x.dtype:
            raise ValueError(f"bias must have x's dtype {x.dtype}, got {bias.dtype}")
    return apply(_Linear, x, weight, bias)


def flatten(x: torch.Tensor) -> torch.Tensor:
    """``x.flatten(1)``: keep the batch dimension, merge the rest."""
    if autocast_on(x):
        return autocast_call("flatten", flatten, x)
    check_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"flatten needs x with at least 2 dimensions (batch, ...), got shape {tuple(x.shape)}")
    return apply(_Flatten, x)


def embedding(idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows of weight (V, C) picked by integer indices idx (any shape) -> (*idx.shape, C)."""
    if autocast_on(idx):
        return autocast_call("embedding", embedding, idx, weight)
    check_tensor(idx, "idx")
    check_tensor(weight, "weight")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ValueError(f"idx must be an integer tensor of indices, got dtype {idx.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (num_embeddings, embedding_dim), got shape {tuple(weight.shape)}")
    V = weight.shape[0]
    flat = idx.reshape(-1)  # (N,)
    if idx.numel() > 0 and torch.compiler.is_compiling():  # asserted on the device: no .item() in a graph
        torch._assert_async(((idx >= 0) & (idx < V)).all(), "embedding: an index is outside [0, V)")
    elif idx.numel() > 0:
        lo, hi = int_range(flat)
        if lo < 0 or hi >= V:
            raise ValueError(
                f"idx values must be in [0, {V}) for weight of shape {tuple(weight.shape)}, "
                f"got values in [{lo}, {hi}]"
            )
    if idx.dtype not in (torch.int32, torch.int64):
        flat = flat.long()
    return apply(_Embedding, flat, weight, idx.shape)
