"""Layer normalisation and batch normalisation, each with its full hand-written backward.

References: Ba, Kiros & Hinton, "Layer Normalization" (2016); Ioffe & Szegedy, "Batch
Normalization" (2015). The backward is llm.c's ``layernorm_backward`` (doc/layernorm/layernorm.py):
with xhat = (x - mean) * rstd and dxhat = dout * weight,
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
the means taken over the normalised elements: the last dimension for layer norm, and every
dimension except the channels for batch norm (whose batch statistics depend on the whole batch).

RMSNorm (Zhang & Sennrich, "Root Mean Square Layer Normalization", 2019) drops the centring
and the bias: y = x / sqrt(mean(x^2) + eps) * weight, dx = rstd * (dxhat - xhat * mean(dxhat *
xhat)) (derived above ``_RMSNorm``).

Entry points: ``layer_norm(x, weight, bias, eps, normalized_shape=None)`` (``F.layer_norm``:
over the last dimension, or over the trailing dims of the weight or of ``normalized_shape``), ``rms_norm(x, weight=None, eps=None)`` (``F.rms_norm`` with
``normalized_shape=(C,)``) and ``batch_norm(x, weight, bias, running_mean, running_var,
training, momentum, eps)`` (``F.batch_norm``; training mode updates the running statistics in
place).

Dimension letters: B, T leading dimensions (any number), C the normalised / channel dimension,
N the batch, H, W the spatial dimensions.

    from customnn import ops
    y = ops.layer_norm(x, w, b)  # x (B, T, C), w (C,), b (C,)

Above each fast version sits its readable reference (``layer_norm_reference``,
``batch_norm_reference``): y = (x - mean) / sqrt(var + eps) * weight + bias written out, for
autograd to differentiate; tests/test_reference.py compares the two.
"""

from __future__ import annotations

import math

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._checks import check_float, check_tensor
from customnn.ops._scalars import scalar


def _affine(xhat: torch.Tensor, weight, bias, shape) -> torch.Tensor:
    """xhat * weight + bias, each of weight and bias optional, viewed as ``shape`` to broadcast."""
    y = xhat if weight is None else xhat * weight.view(shape)
    return y if bias is None else y + bias.view(shape)


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float = 1e-5, normalized_shape=None) -> torch.Tensor:
    """Each row over the normalised trailing dims (see ``layer_norm``): (x - mean) /
    sqrt(var + eps) * weight + bias, the variance biased (divided by their number of values)."""
    shape = _normalized_shape(x, weight, bias, normalized_shape)
    dims = tuple(range(-len(shape), 0))
    mean = x.mean(dims, keepdim=True)  # (..., 1, ..., 1)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)  # (..., 1, ..., 1)
    return _affine((x - mean) / torch.sqrt(var + eps), weight, bias, shape)


_FEW_ROWS = 8  # up to this many rows, layer_norm's statistics come from one var_mean


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        C = x.shape[-1]
        N = math.prod(x.shape[:-1])  # every leading position is a row (N spelt out for C == 0)
        if N <= _FEW_ROWS:  # a generated token: the dispatched operations are what costs (no views)
            var, mean = torch.var_mean(x, -1, correction=0, keepdim=True)  # (..., 1) each, in one call
            xhat = x - mean  # (..., C), centred now, normalised in place below
        else:  # two passes, the mean then the mean square about it: on CPU several times faster than Welford's
            x2 = x if x.dim() == 2 else x.reshape(N, C)  # (N, C)
            mean = x2.mean(1, keepdim=True)  # (N, 1)
            xhat = x2 - mean
            # the biased variance ||x - mean||^2 / C: one reduction kernel, no (N, C) tensor of squares
            var = torch.linalg.vector_norm(xhat, dim=1, keepdim=True).square_().div_(C)  # (N, 1)
        rstd = var.add_(scalar(eps, var)).rsqrt_()  # (N, 1) or (..., 1)
        xhat.mul_(rstd)
        if weight is None:
            y = xhat.clone() if bias is None else xhat + bias
        elif bias is None:
            y = xhat * weight
        else:
            y = torch.addcmul(bias, xhat, weight)  # xhat * w + b in one pass
        if any(ctx.needs_input_grad):  # xhat (N, C) and rstd (N, 1) are kept for backward (xhat
            # instead of x and mean: what both dx and dweight use, the same memory as x)
            rows = xhat.dim() == 2
            ctx.save_for_backward(xhat if rows else xhat.reshape(N, C), rstd if rows else rstd.reshape(N, 1), weight)
            ctx.has_bias = bias is not None
        return y if N <= _FEW_ROWS or x.dim() == 2 else y.view(x.shape)  # (N, C) in: no views, in or out

    @staticmethod
    def backward(ctx, dout):
        xhat, rstd, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        N, C = xhat.shape
        dout2 = dout if dout.dim() == 2 else dout.reshape(N, C)
        g = dout2 * xhat  # (N, C) dout * xhat: its column sums are dweight
        dw = g.sum(0) if weight is not None and need[1] else None  # (C,)
        db = dout2.sum(0) if ctx.has_bias and need[2] else None  # (C,)
        dx = None
        if need[0] and xhat.numel() == 0:  # no rows or no features (C == 0): an empty dx
            return dout.new_zeros(dout.shape), dw, db, None
        if need[0]:
            # dxhat = dout * w; the row means of dxhat and of dxhat * xhat are matrix-vector
            # products with -w / C, so dxhat itself is never stored.
            if weight is None:
                neg_mean_dxhat, neg_mean_dxhat_xhat = dout2.mean(1, keepdim=True).neg_(), g.mean(1, keepdim=True).neg_()
                dx = torch.add(dout2, neg_mean_dxhat, out=g)
            else:
                w_neg = weight.view(C, 1) * (-1.0 / C)  # (C, 1)
                neg_mean_dxhat = dout2 @ w_neg  # (N, 1)
                neg_mean_dxhat_xhat = g @ w_neg  # (N, 1)
                dx = torch.addcmul(neg_mean_dxhat, dout2, weight, out=g)  # g is free again: reuse it
            # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
            dx.addcmul_(xhat, neg_mean_dxhat_xhat).mul_(rstd)
            dx = dx if dout.dim() == 2 else dx.view(dout.shape)
        return dx, dw, db, None


def batch_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                         training: bool, momentum: float = 0.1, eps: float = 1e-5, *,
                         reduce=None) -> torch.Tensor:
    """Each channel (dimension 1) over every other dimension: (x - mean) / sqrt(var + eps) *
    weight + bias. Training uses the batch's mean and biased variance and moves the running
    statistics towards them in place, running = (1 - momentum) running + momentum batch (the
    unbiased variance, n / (n - 1) times the biased); eval uses the running statistics.
    ``reduce`` is refused: the reference is the definition on one process's batch, and a
    data-parallel run is checked against one process instead (tests/test_distributed.py)."""
    if reduce is not None:
        raise ValueError("batch_norm_reference computes one process's batch; reduce is not supported")
    C = x.shape[1]
    dims = [0] + list(range(2, x.dim()))  # every dimension but the channels
    shape = [1, C] + [1] * (x.dim() - 2)  # (1, C, 1, 1): a per-channel vector that broadcasts
    if training:
        mean = x.mean(dims, keepdim=True)  # (1, C, 1, 1)
        var = ((x - mean) ** 2).mean(dims, keepdim=True)  # (1, C, 1, 1), biased
        n = x.numel() // C  # values per channel
        with torch.no_grad():
            if running_mean is not None:
                running_mean.copy_((1 - momentum) * running_mean + momentum * mean.view(C))
            if running_var is not None:
                running_var.copy_((1 - momentum) * running_var + momentum * var.view(C) * n / (n - 1))
    else:
        mean, var = running_mean.view(shape), running_var.view(shape)
    return _affine((x - mean) / torch.sqrt(var + eps), weight, bias, shape)


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps, reduce):
        C = x.shape[1]
        if x.numel() == 0 and reduce is None:  # an empty batch or spatial size: nothing to normalise
            # As PyTorch: an empty output, the running statistics left as they are, and zero
            # gradients for weight and bias.
            ctx.empty, ctx.has_bias = True, bias is not None
            ctx.save_for_backward(weight)
            return x.new_empty(x.shape)
        ctx.empty = False
        dims = [0] + list(range(2, x.dim()))  # every dimension but the channels
        shape = [1, C] + [1] * (x.dim() - 2)  # (1, C, 1, 1) broadcasts a per-channel vector
        n = x.numel() // C  # values per channel (here; over every rank with ``reduce``)
        if training and reduce is not None:  # the statistics of the whole batch, held by several ranks
            # One exchange: the sums and sums of squares per channel and the count, so that
            # var = E[x^2] - mean^2 (one pass; one collective instead of two).
            sums = reduce(torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([n])]))  # (2C + 1,)
            n = int(sums[2 * C].item())
            mean = (sums[:C] / n).view(shape)  # (1, C, 1, 1)
            var = (sums[C:2 * C] / n).view(shape) - mean * mean  # (1, C, 1, 1) biased variance
            xhat, y = x - mean, None  # y: the output, made by addcmul below
        elif training:
            mean = x.mean(dims, keepdim=True)  # (1, C, 1, 1)
            xhat = x - mean  # (N, C, H, W) centred now, normalised in place below
            y = torch.mul(xhat, xhat)  # scratch for the squares; becomes the output below
            var = y.mean(dims, keepdim=True)  # (1, C, 1, 1) biased variance
        if training:
            if running_mean is not None or running_var is not None:
                with torch.no_grad():  # running = (1 - momentum) * running + momentum * batch
                    if running_mean is not None:
                        running_mean.mul_(1.0 - momentum).add_(mean.view(C), alpha=momentum)
                    if running_var is not None:  # the running variance is the unbiased one
                        running_var.mul_(1.0 - momentum).add_(var.view(C), alpha=momentum * n / (n - 1))
        else:
            xhat, var, y = x - running_mean.view(shape), running_var.view(shape), None
        rstd = (var + eps).rsqrt_()  # (1, C, 1, 1)
        xhat.mul_(rstd)
        w = torch.ones_like(rstd) if weight is None else weight.view(shape)
        b = torch.zeros_like(rstd) if bias is None else bias.view(shape)
        y = torch.addcmul(b, xhat, w, out=y)  # y = xhat * w + b, into the scratch y when there is one
        # xhat and rstd are kept for backward, as in layer norm.
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.training, ctx.has_bias, ctx.dims, ctx.reduce, ctx.n = training, bias is not None, dims, reduce, n
        return y

    @staticmethod
    def backward(ctx, dout):
        if ctx.empty:
            (weight,) = ctx.saved_tensors
            need = ctx.needs_input_grad
            C = dout.shape[1]
            dw = dout.new_zeros(C) if weight is not None and need[1] else None
            db = dout.new_zeros(C) if ctx.has_bias and need[2] else None
            return dout.new_zeros(dout.shape), dw, db, None, None, None, None, None, None
        xhat, rstd, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        dims = ctx.dims
        C = dout.shape[1]
        n = ctx.n  # values per channel
        g = dout * xhat  # (N, C, H, W): its per-channel sums are dweight
        sum_g = g.sum(dims, keepdim=True)  # (1, C, 1, 1)
        sum_dout = dout.sum(dims, keepdim=True)  # (1, C, 1, 1)
        dw = sum_g.view(C) if weight is not None and need[1] else None  # this rank's share: summed with
        db = sum_dout.view(C) if ctx.has_bias and need[2] else None  # the other gradients after backward
        if ctx.training and ctx.reduce is not None:  # dx needs the sums over the whole batch
            both = ctx.reduce(torch.cat([sum_g.view(C), sum_dout.view(C)]))
            sum_g, sum_dout = both[:C].view(sum_g.shape), both[C:].view(sum_dout.shape)
        dx = None
        if need[0]:
            scale = rstd if weight is None else rstd * weight.view(rstd.shape)  # w * rstd per channel
            if ctx.training:
                # dxhat = dout * w with w per channel, so mean(dxhat) = w sum(dout) / n and
                # mean(dxhat * xhat) = w sum(dout * xhat) / n:
                # dx = w rstd (dout - sum(dout) / n - xhat sum(dout * xhat) / n), written into g
                dx = torch.addcmul(scale * sum_dout / -n, dout, scale, out=g)
                dx.addcmul_(xhat, scale * sum_g / -n)
            else:  # eval mode: mean and rstd are constants, dx = dout * w * rstd
                dx = torch.mul(dout, scale, out=g)
        return dx, dw, db, None, None, None, None, None, None


def _check_param(p, name: str, C: int, x: torch.Tensor, what: str) -> None:
    if p is None:
        return
    check_tensor(p, name)
    if p.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) to match {what} of x {tuple(x.shape)}, got {tuple(p.shape)}")


def _normalized_shape(x, weight, bias, normalized_shape) -> tuple[int, ...]:
    """The trailing dims layer_norm normalises over: ``normalized_shape`` when given, else the
    shape of a weight (or bias) of more than one dim, else the last dim; checked against x,
    weight and bias (ValueError)."""
    check_tensor(x, "x")
    if normalized_shape is not None:
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape or any(isinstance(n, bool) or not isinstance(n, int) for n in shape):
            raise ValueError(f"normalized_shape must be an int or a non-empty sequence of ints, got {normalized_shape!r}")
    else:
        given = next((p for p in (weight, bias) if isinstance(p, torch.Tensor) and p.dim() > 1), None)
        shape = tuple(given.shape) if given is not None else tuple(x.shape[-1:])
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"normalized_shape {shape} must equal the last dims of x, got x of shape {tuple(x.shape)}")
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None:
            check_tensor(p, name)
            if tuple(p.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} to match the normalised dims of x "
                                 f"{tuple(x.shape)}, got {tuple(p.shape)}")
    return shape


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5, normalized_shape=None) -> torch.Tensor:
    """Normalise over the trailing dims ``normalized_shape``, then scale by weight and shift by
    bias (each of that shape, or None): ``F.layer_norm(x, normalized_shape, weight, bias, eps)``.

    The normalised dims are ``normalized_shape`` when given; else weight's (or bias's) shape when
    it has more than one dim; else the last dim. Why not F.layer_norm's order (x,
    normalized_shape, weight, ...): every caller here passes the weight second, and a weight
    already says which dims it scales, so ``normalized_shape`` is a keyword needed only when
    weight and bias are both None. Several dims are flattened into one (a view when x's strides
    allow) and normalised as one row.

    Refuses (ValueError): non-float or 0-d x; a normalized_shape that is empty or not ints, or
    that is not x's trailing shape; a weight or bias not of that shape."""
    if autocast_on(x):
        return autocast_call("layer_norm", layer_norm, x, weight, bias, eps, normalized_shape)
    check_tensor(x, "x")
    check_float(x, "x")
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension, got shape {tuple(x.shape)}")
    if normalized_shape is None and (weight is None or weight.dim() == 1) and (bias is None or bias.dim() == 1):
        C = x.shape[-1]  # the common case: the last dimension, as before any option
        _check_param(weight, "weight", C, x, "the last dimension")
        _check_param(bias, "bias", C, x, "the last dimension")
        return apply(_LayerNorm, x, weight, bias, eps)
    shape = _normalized_shape(x, weight, bias, normalized_shape)
    if len(shape) == 1:
        return apply(_LayerNorm, x, weight, bias, eps)
    xf = x.flatten(x.dim() - len(shape))  # (..., C): the normalised dims as one
    flat = [None if p is None else p.reshape(-1) for p in (weight, bias)]  # (C,) each
    return apply(_LayerNorm, xf, *flat, eps).view(x.shape)


def batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               training: bool, momentum: float = 0.1, eps: float = 1e-5, *, reduce=None) -> torch.Tensor:
    """Normalise each channel of x (N, C) or (N, C, H, W) over every other dimension.

    Training mode uses the batch's statistics (biased variance) and blends them into
    running_mean / running_var in place (unbiased variance), as PyTorch does; eval mode
    normalises with the running statistics. ``reduce`` (a function summing a tensor over the
    ranks of a data-parallel run) makes the statistics, and the sums backward needs, those of
    the whole batch: the sums and sums of squares per channel and the count, in one exchange
    (var = E[x^2] - mean^2, which differs from one process's two-pass variance in the last bits).

    An empty x (zero batch or spatial size) gives an empty output, leaves the running statistics
    as they are and gives weight and bias zero gradients, as PyTorch. Refuses (ValueError): x of
    fewer than 2 dims or with no channel (PyTorch raises too), parameters not (C,), training with
    exactly one value per channel, eval without running statistics.
    """
    if autocast_on(x):
        return autocast_call("batch_norm", batch_norm, x, weight, bias, running_mean, running_var, training,
                             momentum, eps, reduce=reduce)
    check_tensor(x, "x")
    check_float(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got shape {tuple(x.shape)}")
    C = x.shape[1]
    if C == 0:  # PyTorch raises too
        raise ValueError(f"batch_norm needs at least one channel (dimension 1), got x {tuple(x.shape)}")
    for p, name in ((weight, "weight"), (bias, "bias"), (running_mean, "running_mean"), (running_var, "running_var")):
        _check_param(p, name, C, x, "the channels (dimension 1)")
    if training:
        # One value per channel has no variance; none at all (an empty batch) gives an empty
        # output, as PyTorch.
        if x.numel() // C == 1:
            raise ValueError(f"batch_norm in training mode needs more than 1 value per channel, got x {tuple(x.shape)}")
    elif running_mean is None or running_var is None:
        raise ValueError("batch_norm in eval mode (training=False) needs running_mean and running_var")
    return apply(_BatchNorm, x, weight, bias, running_mean, running_var, bool(training), float(momentum), eps,
                            reduce)


# --- RMSNorm (Zhang & Sennrich 2019) ------------------------------------------------------------
def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float | None = None) -> torch.Tensor:
    """Each row over the last dimension: x / sqrt(mean(x^2) + eps) * weight; eps None is the
    dtype's machine epsilon (``torch.finfo(x.dtype).eps``), as ``F.rms_norm``."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


class _RMSNorm(torch.autograd.Function):
    """y = xhat * weight, xhat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps) over the last
    dimension (C): layer norm without the centring and without a bias.

    Backward, with dxhat = dout * weight: y_i depends on x_j through x_i and through rstd, whose
    derivative is d rstd / dx_j = -rstd^3 x_j / C, so
        dx_i = rstd dxhat_i - x_i rstd^3 / C * sum_j dxhat_j x_j
             = rstd * (dxhat_i - xhat_i * mean(dxhat * xhat))      (rstd^3 x_i x_j = rstd xhat_i xhat_j),
    layer norm's formula less its mean(dxhat) term; dweight = the column sums of dout * xhat.
    """

    @staticmethod
    def forward(ctx, x, weight, eps):
        C = x.shape[-1]
        x2 = x.reshape(math.prod(x.shape[:-1]), C)  # (N, C): every leading position is a row (N spelt out for C == 0)
        # mean(x^2) = ||x||^2 / C: one reduction kernel, no (N, C) tensor of squares
        ms = torch.linalg.vector_norm(x2, dim=1, keepdim=True).square_().div_(scalar(C, x2))  # (N, 1)
        rstd = ms.add_(scalar(eps, ms)).rsqrt_()  # (N, 1)
        xhat = x2 * rstd  # (N, C)
        y = xhat if weight is None else xhat * weight
        ctx.save_for_backward(xhat, rstd, weight)  # xhat: what both dx and dweight use
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dout):
        xhat, rstd, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        N, C = xhat.shape
        dout2 = dout.reshape(N, C)
        dw = (dout2 * xhat).sum(0) if weight is not None and need[1] else None  # (C,)
        dx = None
        if need[0]:
            dxhat = dout2 if weight is None else dout2 * weight  # (N, C)
            neg_mean = (dxhat * xhat).mean(1, keepdim=True).neg_()  # (N, 1) -mean(dxhat * xhat)
            # dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
            dx = torch.addcmul(dxhat, xhat, neg_mean).mul_(rstd).view(dout.shape)
        return dx, dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float | None = None) -> torch.Tensor:
    """RMS-normalise over the last dimension, then scale by weight (C,); as ``F.rms_norm(x, (C,),
    weight, eps)``, eps None meaning ``torch.finfo(x.dtype).eps``."""
    check_tensor(x, "x")
    check_float(x, "x")
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension, got shape {tuple(x.shape)}")
    _check_param(weight, "weight", x.shape[-1], x, "the last dimension")
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    if autocast_on(x):  # after eps: None is the input dtype's epsilon, as F.rms_norm
        return autocast_call("rms_norm", rms_norm, x, weight, eps)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0 or None, got {eps!r}")
    return apply(_RMSNorm, x, weight, float(eps))
