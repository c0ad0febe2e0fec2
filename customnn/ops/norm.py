"""Layer normalisation and batch normalisation, each with its full hand-written backward.

References: Ba, Kiros & Hinton, "Layer Normalization" (2016); Ioffe & Szegedy, "Batch
Normalization" (2015). The backward is llm.c's ``layernorm_backward`` (doc/layernorm/layernorm.py):
with xhat = (x - mean) * rstd and dxhat = dout * weight,
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
the means taken over the normalised elements: the last dimension for layer norm, and every
dimension except the channels for batch norm (whose batch statistics depend on the whole batch).

Entry points: ``layer_norm(x, weight, bias, eps)`` (over the last dimension; ``F.layer_norm``
with ``normalized_shape=(C,)``) and ``batch_norm(x, weight, bias, running_mean, running_var,
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

import torch

from customnn.ops._checks import check_float, check_tensor


def _affine(xhat: torch.Tensor, weight, bias, shape) -> torch.Tensor:
    """xhat * weight + bias, each of weight and bias optional, viewed as ``shape`` to broadcast."""
    y = xhat if weight is None else xhat * weight.view(shape)
    return y if bias is None else y + bias.view(shape)


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float = 1e-5) -> torch.Tensor:
    """Each row over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias, the
    variance biased (divided by C)."""
    mean = x.mean(-1, keepdim=True)  # (..., 1)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # (..., 1)
    return _affine((x - mean) / torch.sqrt(var + eps), weight, bias, (-1,))


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        C = x.shape[-1]
        x2 = x.reshape(-1, C)  # (N, C): every leading position is a row
        # Two passes (the mean, then the mean square about it): exact enough, and several times
        # faster on CPU than torch.var_mean's one-pass Welford.
        mean = x2.mean(1, keepdim=True)  # (N, 1)
        xhat = x2 - mean  # (N, C), centred now, normalised in place below
        # The biased variance is ||x - mean||^2 / C: the row norm is one reduction kernel, with
        # no (N, C) tensor of squares to allocate and then average.
        var = torch.linalg.vector_norm(xhat, dim=1, keepdim=True).square_().div_(C)  # (N, 1)
        rstd = var.add_(eps).rsqrt_()  # (N, 1)
        xhat.mul_(rstd)
        if weight is None:
            y = xhat.clone() if bias is None else xhat + bias
        elif bias is None:
            y = xhat * weight
        else:
            y = torch.addcmul(bias, xhat, weight)  # xhat * w + b in one pass
        # xhat and rstd are kept for backward (xhat instead of x and mean: it is what both dx
        # and dweight use, and it costs the same memory as x).
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.has_bias = bias is not None
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dout):
        xhat, rstd, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        N, C = xhat.shape
        dout2 = dout.reshape(N, C)
        g = dout2 * xhat  # (N, C) dout * xhat: its column sums are dweight
        dw = g.sum(0) if weight is not None and need[1] else None  # (C,)
        db = dout2.sum(0) if ctx.has_bias and need[2] else None  # (C,)
        dx = None
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
            dx = dx.view(dout.shape)
        return dx, dw, db, None


def batch_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                         training: bool, momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """Each channel (dimension 1) over every other dimension: (x - mean) / sqrt(var + eps) *
    weight + bias. Training uses the batch's mean and biased variance and moves the running
    statistics towards them in place, running = (1 - momentum) running + momentum batch (the
    unbiased variance, n / (n - 1) times the biased); eval uses the running statistics."""
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
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        C = x.shape[1]
        dims = [0] + list(range(2, x.dim()))  # every dimension but the channels
        shape = [1, C] + [1] * (x.dim() - 2)  # (1, C, 1, 1) broadcasts a per-channel vector
        if training:
            mean = x.mean(dims, keepdim=True)  # (1, C, 1, 1)
            xhat = x - mean  # (N, C, H, W) centred now, normalised in place below
            y = torch.mul(xhat, xhat)  # scratch for the squares; becomes the output below
            var = y.mean(dims, keepdim=True)  # (1, C, 1, 1) biased variance
            if running_mean is not None or running_var is not None:
                n = x.numel() // C  # values per channel
                with torch.no_grad():  # running = (1 - momentum) * running + momentum * batch
                    if running_mean is not None:
                        running_mean.mul_(1.0 - momentum).add_(mean.view(C), alpha=momentum)
                    if running_var is not None:  # the running variance is the unbiased one
                        running_var.mul_(1.0 - momentum).add_(var.view(C), alpha=momentum * n / (n - 1))
        else:
            xhat, var = x - running_mean.view(shape), running_var.view(shape)
            y = torch.empty_like(xhat)
        rstd = (var + eps).rsqrt_()  # (1, C, 1, 1)
        xhat.mul_(rstd)
        w = torch.ones_like(rstd) if weight is None else weight.view(shape)
        b = torch.zeros_like(rstd) if bias is None else bias.view(shape)
        torch.addcmul(b, xhat, w, out=y)  # y = xhat * w + b
        # xhat and rstd are kept for backward, as in layer norm.
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.training, ctx.has_bias, ctx.dims = training, bias is not None, dims
        return y

    @staticmethod
    def backward(ctx, dout):
        xhat, rstd, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        dims = ctx.dims
        C = dout.shape[1]
        n = dout.numel() // C  # values per channel
        g = dout * xhat  # (N, C, H, W): its per-channel sums are dweight
        sum_g = g.sum(dims, keepdim=True)  # (1, C, 1, 1)
        sum_dout = dout.sum(dims, keepdim=True)  # (1, C, 1, 1)
        dw = sum_g.view(C) if weight is not None and need[1] else None
        db = sum_dout.view(C) if ctx.has_bias and need[2] else None
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
        return dx, dw, db, None, None, None, None, None


def _check_param(p, name: str, C: int, x: torch.Tensor, what: str) -> None:
    if p is None:
        return
    check_tensor(p, name)
    if p.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) to match {what} of x {tuple(x.shape)}, got {tuple(p.shape)}")


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5) -> torch.Tensor:
    """Normalise over the last dimension, then scale by weight (C,) and shift by bias (C,)."""
    check_tensor(x, "x")
    check_float(x, "x")
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension, got shape {tuple(x.shape)}")
    C = x.shape[-1]
    _check_param(weight, "weight", C, x, "the last dimension")
    _check_param(bias, "bias", C, x, "the last dimension")
    return _LayerNorm.apply(x, weight, bias, eps)


def batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               training: bool, momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each channel of x (N, C) or (N, C, H, W) over every other dimension.

    Training mode uses the batch's statistics (biased variance) and blends them into
    running_mean / running_var in place (unbiased variance), as PyTorch does; eval mode
    normalises with the running statistics.
    """
    check_tensor(x, "x")
    check_float(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got shape {tuple(x.shape)}")
    C = x.shape[1]
    for p, name in ((weight, "weight"), (bias, "bias"), (running_mean, "running_mean"), (running_var, "running_var")):
        _check_param(p, name, C, x, "the channels (dimension 1)")
    if training:
        if x.numel() // max(C, 1) <= 1:
            raise ValueError(f"batch_norm in training mode needs more than 1 value per channel, got x {tuple(x.shape)}")
    elif running_mean is None or running_var is None:
        raise ValueError("batch_norm in eval mode (training=False) needs running_mean and running_var")
    return _BatchNorm.apply(x, weight, bias, running_mean, running_var, bool(training), float(momentum), eps)
