"""Softmax, log-softmax and the cross-entropy loss, with the fused softmax/cross-entropy backward.

Reference: llm.c's ``softmax_forward`` / ``crossentropy_forward`` and
``crossentropy_softmax_backward`` (train_gpt2.c): the row maximum is subtracted before ``exp``,
always, and the gradient of the loss with respect to the logits is one expression,
    dlogits = (probs - onehot) * dloss,
never a softmax Jacobian times a log gradient. With label smoothing eps (Szegedy et al. 2016,
"Rethinking the Inception Architecture", as PyTorch defines it) the one-hot target becomes
    q = (1 - eps) * onehot + eps / C.

Entry points match ``torch.nn.functional``: ``softmax(x, dim)``, ``log_softmax(x, dim)``,
``cross_entropy(logits, target, ignore_index, reduction, label_smoothing)``.

Dimension letters: N rows (one per prediction; for logits (N, C, d1, ...) every position is a
row), C classes.

    from customnn import ops
    loss = ops.cross_entropy(logits.view(-1, V), targets.view(-1))
"""

from __future__ import annotations

import math

import torch

from customnn.ops._checks import check_float, check_tensor

_REDUCTIONS = ("mean", "sum", "none")
_LOG2E = math.log2(math.e)


def _shifted_exp(x: torch.Tensor, dim: int):
    """x - max(x), its exp, and the sum of that along dim: the stable core of every softmax here."""
    shifted = x - x.amax(dim, keepdim=True)  # the row maximum goes first, always
    e = torch.mul(shifted, _LOG2E).exp2_()  # exp(z) = 2^(z log2 e): exp2 is the faster kernel on CPU
    s = e.sum(dim, keepdim=True)
    return shifted, e, s


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        y = x - x.amax(dim, keepdim=True)  # the row maximum goes first, always
        y.mul_(_LOG2E).exp2_()  # exp(z) = 2^(z log2 e), in place: one new tensor in all
        y.div_(y.sum(dim, keepdim=True))
        # The output is all backward needs: dx = y * (dout - sum(dout * y)).
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, dout):
        (y,) = ctx.saved_tensors
        dx = dout * y
        dx.addcmul_(y, dx.sum(ctx.dim, keepdim=True), value=-1.0)  # y * dout - y * sum(dout * y)
        return dx, None


class _LogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        shifted, e, s = _shifted_exp(x, dim)
        y = shifted.sub_(s.log_())  # x - max - log(sum(exp(x - max)))
        # Only the output is kept; softmax = exp(y) is recomputed in backward rather than stored.
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, dout):
        (y,) = ctx.saved_tensors
        dx = (y * _LOG2E).exp2_()  # softmax = exp(y)
        dx.mul_(dout.sum(ctx.dim, keepdim=True).neg_()).add_(dout)  # dout - softmax * sum(dout)
        return dx, None


class _CrossEntropy(torch.autograd.Function):
    """Softmax + negative log-likelihood on rows (N, C), forward and one fused backward."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index, reduction, label_smoothing, may_ignore):
        ctx.logits_shape, ctx.logits_dtype, target_shape = logits.shape, logits.dtype, target.shape
        logits, target = _as_rows(logits, target)  # (N, C), (N,)
        N, C = logits.shape
        if may_ignore:  # some target may equal ignore_index: mask those rows out
            valid = target != ignore_index  # (N,) rows that count
            safe = torch.where(valid, target, 0).unsqueeze(1)  # (N, 1) gather-able even when ignored
            n_valid = valid.sum()  # mean divides by the rows that count, as PyTorch does
        else:  # the common case (the caller has seen no target equal to ignore_index)
            valid, safe, n_valid = None, target.unsqueeze(1), N
        shifted, e, s = _shifted_exp(logits, 1)  # (N, C), (N, C), (N, 1)
        # probs (N, C) is the one big tensor kept: the fused backward is probs - q. (PyTorch
        # keeps its log-softmax output, the same size.)
        probs = e.div_(s)
        lse = s.log_()  # (N, 1) log-sum-exp of the shifted logits
        if label_smoothing > 0.0:
            # -mean over classes of log p = lse - mean(shifted)
            smooth = lse - shifted.mean(1, keepdim=True)  # (N, 1)
            loss = torch.lerp(lse - shifted.gather(1, safe), smooth, label_smoothing)  # (1 - eps) nll + eps smooth
        else:
            loss = lse.sub_(shifted.gather(1, safe))  # (N, 1) -log p[target]
        loss = loss.view(N)
        if valid is not None:
            loss = loss * valid
        if reduction == "mean":  # over the rows that count (0/0 = nan if all are ignored, as PyTorch)
            out = loss.mean() if valid is None else loss.sum() / n_valid
        elif reduction == "sum":
            out = loss.sum()
        else:
            out = loss.view(target_shape)
        if valid is None:
            ctx.save_for_backward(probs, safe)
        else:
            ctx.save_for_backward(probs, safe, valid, n_valid)
        ctx.reduction, ctx.label_smoothing, ctx.n = reduction, label_smoothing, N
        return out if out.dtype == ctx.logits_dtype else out.to(ctx.logits_dtype)

    @staticmethod
    def backward(ctx, dout):
        probs, safe, *masked = ctx.saved_tensors
        if dout.dtype != probs.dtype:  # half-precision logits were computed in float32
            dout = dout.to(probs.dtype)
        eps = ctx.label_smoothing
        C = probs.shape[1]
        # dloss: the gradient reaching each row's loss, (N, 1) or a scalar
        if ctx.reduction == "none":
            dloss = dout.reshape(-1, 1)
        elif ctx.reduction == "mean":
            dloss = dout / (masked[1].clamp_min(1) if masked else ctx.n)
        else:
            dloss = dout
        if masked:  # ignored rows get no gradient
            dloss = masked[0].unsqueeze(1) * dloss
        # dlogits = (probs - q) * dloss, q = (1 - eps) onehot + eps / C
        dlogits = (probs - eps / C).mul_(dloss) if eps > 0.0 else probs * dloss  # (N, C)
        at_target = (dloss * (eps - 1.0)).expand(probs.shape[0], 1)  # -(1 - eps) dloss, (N, 1)
        dlogits.scatter_add_(1, safe, at_target)
        shape = ctx.logits_shape
        if len(shape) == 1:
            dlogits = dlogits.view(shape)
        elif len(shape) > 2:  # back to (N, C, d1, ...)
            dlogits = dlogits.view(shape[0], *shape[2:], shape[1]).movedim(-1, 1)
        if dlogits.dtype != ctx.logits_dtype:
            dlogits = dlogits.to(ctx.logits_dtype)
        return dlogits, None, None, None, None, None


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x) / sum(exp(x)) along dim, as ``F.softmax``."""
    check_tensor(x, "x")
    check_float(x, "x")
    _check_dim(x, dim)
    return _Softmax.apply(x, dim)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x - log(sum(exp(x))) along dim, as ``F.log_softmax``."""
    check_tensor(x, "x")
    check_float(x, "x")
    _check_dim(x, dim)
    return _LogSoftmax.apply(x, dim)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of class-index targets, as ``F.cross_entropy``.

    logits (N, C) with target (N,), or logits (N, C, d1, ...) with target (N, d1, ...) (classes
    on dimension 1), or logits (C,) with a 0-d target. Targets equal to ``ignore_index`` count
    for nothing; ``reduction="mean"`` divides by the number of the others.
    """
    check_tensor(logits, "logits")
    check_tensor(target, "target")
    check_float(logits, "logits")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise ValueError(
            f"target must hold integer class indices, got dtype {target.dtype} "
            "(class-probability targets are not supported)"
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if logits.dim() == 0 or logits.dim() == 1 and target.dim() != 0 or logits.dim() >= 2 and (
        target.shape != logits.shape[:1] + logits.shape[2:]
    ):
        want = "()" if logits.dim() == 1 else str(tuple(logits.shape[:1] + logits.shape[2:]))
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            f"expected target of shape {want} (logits carry the classes on dimension 1)"
        )
    C = logits.shape[0] if logits.dim() == 1 else logits.shape[1]
    may_ignore = False
    if target.numel() > 0:
        lo, hi = (int(v) for v in torch.aminmax(target))  # one pass, one sync
        if lo < 0 or hi >= C:  # out of range, unless it is ignore_index
            bad = target[(target != ignore_index) & ((target < 0) | (target >= C))]
            if bad.numel() > 0:
                raise ValueError(
                    f"target values must be in [0, {C}) (or ignore_index={ignore_index}) for logits "
                    f"{tuple(logits.shape)}, got {bad[:5].tolist()}"
                )
        may_ignore = lo <= ignore_index <= hi
    out = _CrossEntropy.apply(logits, target, ignore_index, reduction, float(label_smoothing), may_ignore)
    return out


def _as_rows(logits: torch.Tensor, target: torch.Tensor):
    """Classes to the last dimension and every prediction to one row: (N, C) and (N,) int64.
    Half-precision logits are computed in float32 (the sums need the range)."""
    if logits.dim() == 1:
        rows, flat = logits.unsqueeze(0), target.reshape(1)
    elif logits.dim() == 2:
        rows, flat = logits, target
    else:
        rows, flat = logits.movedim(1, -1).reshape(-1, logits.shape[1]), target.reshape(-1)
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows = rows.float()
    return rows, flat.long()


def _check_dim(x: torch.Tensor, dim: int) -> None:
    n = max(x.dim(), 1)
    if not -n <= dim < n:
        raise ValueError(f"dim must be in [{-n}, {n}) for x of shape {tuple(x.shape)}, got {dim}")
