"""Group normalization written by hand: a new layer, its readable reference, and its check.

    python examples/group_norm.py                      # check_layer's summary, one line per check
    customnn check --layers examples/group_norm.py     # the same layer as rows of customnn's table

Group norm (Wu and He, 2018, https://arxiv.org/abs/1803.08494) normalizes each sample's channels
in ``num_groups`` groups: every group of C / G channels (and all their positions) gets mean 0 and
variance 1, then each channel is scaled by ``weight`` and shifted by ``bias``. It equals
``torch.nn.functional.group_norm(x, num_groups, weight, bias, eps)``, argument for argument.

Shapes: N batch, C channels, G groups, M = (C / G) * (the positions) values per group.
"""

import torch

from customnn import ops
from customnn.testing import check_layer


def group_norm_reference(x, num_groups, weight, bias, eps=1e-5):
    """The definition, group by group, in plain tensor math; autograd differentiates it."""
    N, C = x.shape[:2]
    per_group = C // num_groups
    parts = []
    for g in range(num_groups):
        part = x[:, g * per_group:(g + 1) * per_group]  # (N, C/G, ...)
        flat = part.reshape(N, -1)  # (N, M)
        mean = flat.mean(dim=1)
        var = ((flat - mean[:, None]) ** 2).mean(dim=1)  # biased variance, as PyTorch's
        shape = (N,) + (1,) * (x.dim() - 1)
        parts.append((part - mean.view(shape)) / torch.sqrt(var.view(shape) + eps))
    xhat = torch.cat(parts, dim=1)  # (N, C, ...)
    channel = (1, C) + (1,) * (x.dim() - 2)
    return xhat * weight.view(channel) + bias.view(channel)


class GroupNorm(torch.autograd.Function):
    """Forward and backward of group norm, on every group at once."""

    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps):
        N, C = x.shape[:2]
        channel = (1, C) + (1,) * (x.dim() - 2)
        xg = x.reshape(N, num_groups, -1)  # (N, G, M)
        mean = xg.mean(dim=2, keepdim=True)  # (N, G, 1)
        xc = xg - mean
        rstd = torch.rsqrt((xc * xc).mean(dim=2, keepdim=True) + eps)  # (N, G, 1)
        xhat = (xc * rstd).reshape(x.shape)  # (N, C, ...)
        # xhat and rstd are kept for the backward pass: with them it needs no second pass over x
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.num_groups = num_groups
        return xhat * weight.view(channel) + bias.view(channel)

    @staticmethod
    def backward(ctx, dout):
        xhat, rstd, weight = ctx.saved_tensors
        N, C = xhat.shape[:2]
        channel = (1, C) + (1,) * (xhat.dim() - 2)
        others = [d for d in range(xhat.dim()) if d != 1]  # batch and positions: summed per channel
        dweight = (dout * xhat).sum(dim=others) if ctx.needs_input_grad[2] else None  # (C,)
        dbias = dout.sum(dim=others) if ctx.needs_input_grad[3] else None  # (C,)
        dx = None
        if ctx.needs_input_grad[0]:
            # xhat = (x - mean) * rstd within a group of M values, so
            # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), means over the group
            dxhat = (dout * weight.view(channel)).reshape(N, ctx.num_groups, -1)  # (N, G, M)
            xg = xhat.reshape(N, ctx.num_groups, -1)
            dx = rstd * (dxhat - dxhat.mean(dim=2, keepdim=True) - xg * (dxhat * xg).mean(dim=2, keepdim=True))
            dx = dx.reshape(xhat.shape)
        return dx, None, dweight, dbias, None  # one per input of forward, in its order


def group_norm(x, num_groups, weight, bias, eps=1e-5):
    """Group norm of x (N, C, ...) with C divisible by num_groups; weight and bias (C,)."""
    if x.dim() < 2 or x.shape[1] % num_groups:
        raise ValueError(f"group_norm: x of shape {tuple(x.shape)} needs (N, C, ...) with C divisible by "
                         f"num_groups={num_groups}")
    return ops.apply(GroupNorm, x, num_groups, weight, bias, eps)  # forward alone where no gradient flows


def example_inputs(N=2, C=6, H=3, W=4, num_groups=3):
    """Small inputs: gradcheck differentiates every element by finite differences."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64) * 2 + 0.5
    weight = torch.randn(C, generator=g, dtype=torch.float64)
    bias = torch.randn(C, generator=g, dtype=torch.float64)
    return x, num_groups, weight, bias


# What `customnn check --layers examples/group_norm.py` checks: (name, layer, reference, inputs).
LAYERS = [
    ("group_norm", group_norm, group_norm_reference, example_inputs),
]


if __name__ == "__main__":
    import torch.nn.functional as F  # PyTorch's own group norm, as a second reference (not in the layer)

    print(check_layer(group_norm, group_norm_reference, *example_inputs()))
    print(check_layer(group_norm, F.group_norm, *example_inputs()))
