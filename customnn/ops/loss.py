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

Above the fast versions sit their readable references (``softmax_reference``,
``log_softmax_reference``, ``cross_entropy_reference``): the formulas above as plain tensor
math, for autograd to differentiate; tests/test_reference.py compares the two.
"""

from __future__ import annotations

import math

import torch

from customnn.ops._apply import apply
from customnn.ops._autocast import autocast_call, autocast_on
from customnn.ops._checks import check_float, check_tensor, int_range
from customnn.ops.cross_entropy_soft import NoClassesCrossEntropy, SoftCrossEntropy, no_classes_loss

_REDUCTIONS = ("mean", "sum", "none")
_LOG2E = math.log2(math.e)
# Up to this many values the exp of a softmax is taken directly. exp2 costs a third of exp per
# value on CPU, but the multiply by log2(e) it needs is one more dispatched op (~3 us), which
# is more than exp's extra cost on a few thousand values (e.g. a 64 x 10 classifier head).
_SMALL = 4096


def softmax_reference(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x) / sum(exp(x)) along dim, with the maximum subtracted first (the same ratio, no overflow)."""
    e = torch.exp(x - x.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def log_softmax_reference(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(softmax(x)) = x - m - log(sum(exp(x - m))) along dim, m the maximum."""
    shifted = x - x.amax(dim, keepdim=True)
    return shifted - torch.log(torch.exp(shifted).sum(dim, keepdim=True))


def cross_entropy_reference(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
                            reduction: str = "mean", label_smoothing: float = 0.0,
                            weight: torch.Tensor | None = None) -> torch.Tensor:
    """loss = -sum over classes c of w_c q_c log softmax(logits)_c, with w the class weights
    (all 1 without). Class indices: q = (1 - eps) onehot + eps / C, rows whose target is
    ignore_index count for nothing, and "mean" divides by the sum of the counted rows' target
    weights w[y]. Probabilities (a float target of the logits' shape): q = (1 - eps) target +
    eps / C, and "mean" divides by the number of rows."""
    soft = target.is_floating_point()
    target_shape = target.shape[1:] if soft and logits.dim() == 1 else target.shape
    if logits.dim() == 1:  # one prediction: logits (C,), target () or (C,)
        logits, target = logits.unsqueeze(0), target.unsqueeze(0)
    logp = log_softmax_reference(logits, dim=1).movedim(1, -1)  # (N, d1, ..., C)
    C = logp.shape[-1]
    w = torch.ones(C, dtype=logp.dtype, device=logp.device) if weight is None else weight  # (C,)
    if soft:
        q = (1 - label_smoothing) * target.movedim(1, -1) + label_smoothing / C  # (N, d1, ..., C)
        loss = -(q * w * logp).sum(-1)  # (N, d1, ...)
        if reduction == "mean":
            return loss.sum() / loss.numel()
        return loss.sum() if reduction == "sum" else loss.reshape(target_shape[:1] + target_shape[2:])
    valid = target != ignore_index  # (N, d1, ...)
    classes = torch.arange(C, device=target.device)
    onehot = (torch.where(valid, target, 0).unsqueeze(-1) == classes).to(logp.dtype)  # (N, d1, ..., C)
    q = (1 - label_smoothing) * onehot * w + label_smoothing / C * w  # (N, d1, ..., C)
    loss = -(q * logp).sum(-1) * valid  # (N, d1, ...)
    if reduction == "mean":
        return loss.sum() / ((onehot * w).sum(-1) * valid).sum()
    if reduction == "sum":
        return loss.sum()
    return loss.reshape(target_shape)  # "none": one loss per prediction


def _shifted_exp(x: torch.Tensor, dim: int):
    """x - max(x), its exp, and the sum of that along dim: the stable core of every softmax here."""
    shifted = x - x.amax(dim, keepdim=True)  # the row maximum goes first, always
    if shifted.numel() <= _SMALL:
        e = shifted.exp()  # a few values: one dispatched op is what counts
    else:
        e = torch.mul(shifted, _LOG2E).exp2_()  # exp(z) = 2^(z log2 e): exp2 is the faster kernel on CPU
    s = e.sum(dim, keepdim=True)
    return shifted, e, s


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        if x.numel() == 0:  # nothing to normalise (amax refuses an empty dim): an empty result
            y = x.clone()
            ctx.save_for_backward(y)
            ctx.dim = dim
            return y
        y = x - x.amax(dim, keepdim=True)  # the row maximum goes first, always
        if y.numel() <= _SMALL:  # exp in place: one new tensor in all
            y.exp_()
        else:
            y.mul_(_LOG2E).exp2_()  # exp(z) = 2^(z log2 e)
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
        if x.numel() == 0:  # nothing to normalise (amax refuses an empty dim): an empty result
            y = x.clone()
            ctx.save_for_backward(y)
            ctx.dim = dim
            return y
        shifted, e, s = _shifted_exp(x, dim)
        y = shifted.sub_(s.log_())  # x - max - log(sum(exp(x - max)))
        # Only the output is kept; softmax = exp(y) is recomputed in backward rather than stored.
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, dout):
        (y,) = ctx.saved_tensors
        dx = y.exp() if y.numel() <= _SMALL else (y * _LOG2E).exp2_()  # softmax = exp(y)
        dx.mul_(dout.sum(ctx.dim, keepdim=True).neg_()).add_(dout)  # dout - softmax * sum(dout)
        return dx, None


class _CrossEntropy(torch.autograd.Function):
    """Softmax + negative log-likelihood on rows (N, C), forward and one fused backward.

    The forward computes the loss only, keeping exp(logits - max) and its row sums; backward
    forms the gradient's one big term, probs - q (N, C), from them (evaluation never forms it).
    """

    @staticmethod
    def forward(ctx, logits, target, ignore_index, reduction, label_smoothing, may_ignore, weight):
        ctx.logits_shape, ctx.logits_dtype, target_shape = logits.shape, logits.dtype, target.shape
        logits, target = _as_rows(logits, target)  # (N, C), (N,)
        N, C = logits.shape
        if may_ignore:  # some target may equal ignore_index: mask those rows out
            valid = target != ignore_index  # (N,) rows that count
            safe = torch.where(valid, target, 0).unsqueeze(1)  # (N, 1) gather-able even when ignored
            n_valid = valid.sum()  # mean divides by the rows that count, as PyTorch does
        else:  # the common case (the caller has seen no target equal to ignore_index)
            valid, safe, n_valid = None, target.view(N, 1), N
        shifted, e, s = _shifted_exp(logits, 1)  # (N, C), (N, C), (N, 1)
        eps = label_smoothing
        if weight is not None:
            return _weighted_forward(ctx, shifted, e, s, safe, valid, weight.to(shifted.dtype), reduction, eps,
                                     target_shape)
        if eps > 0.0:
            # -mean over classes of log p = lse - mean(shifted)
            smooth = shifted.mean(1, keepdim=True)  # (N, 1), taken before lse below
        lse = s.log()  # (N, 1) log-sum-exp of the shifted logits
        nll = lse.sub(shifted.gather(1, safe))  # (N, 1) -log p[target]
        # (1 - eps) nll + eps smooth (not lerp: nll + eps (smooth - nll) is NaN when both are inf)
        loss = nll.mul(1.0 - eps).add_(lse.sub_(smooth), alpha=eps) if eps > 0.0 else nll
        if valid is not None:  # ignored rows count for nothing, even when their logits are NaN or inf
            loss = torch.where(valid.unsqueeze(1), loss, 0.0)
        # loss is (N, 1) here
        if reduction == "mean":  # over the rows that count (0/0 = nan if all are ignored, as PyTorch)
            out = loss.mean() if valid is None else loss.sum() / n_valid
        elif reduction == "sum":
            out = loss.sum()
        else:
            out = loss.view(target_shape)
        # Kept: e and s, for probs = e / s in backward (PyTorch keeps its log-softmax output, the
        # size of e), and the targets (as PyTorch's nll_loss keeps them).
        kept = (e, s, safe) if valid is None else (e, s, safe, valid, n_valid)
        ctx.save_for_backward(*kept)
        ctx.reduction, ctx.n, ctx.weighted, ctx.eps = reduction, N, False, eps
        return out if out.dtype == ctx.logits_dtype else out.to(ctx.logits_dtype)

    @staticmethod
    def backward(ctx, dout):
        # Weighted: the forward kept the gradient (scaled into a new tensor); else made here, scaled in place.
        grad, *n_valid = ctx.saved_tensors if ctx.weighted else _probs_minus_q(ctx)
        scale = grad.mul if ctx.weighted else grad.mul_
        if dout.dtype != grad.dtype:  # half-precision logits were computed in float32
            dout = dout.to(grad.dtype)
        # dlogits = (probs - q) * dloss, dloss the gradient reaching each row's loss
        if ctx.reduction == "none":
            dlogits = scale(dout.reshape(-1, 1))  # (N, C) * (N, 1)
        elif ctx.reduction == "mean" and ctx.weighted:  # divided by the rows' total weight
            dlogits = scale(dout / torch.where(n_valid[0] == 0, 1.0, n_valid[0]))
        elif ctx.reduction == "mean":
            dlogits = scale(dout / (n_valid[0].clamp_min(1) if n_valid else ctx.n))
        else:
            dlogits = scale(dout)
        shape = ctx.logits_shape
        if len(shape) == 1:
            dlogits = dlogits.view(shape)
        elif len(shape) > 2:  # back to (N, C, d1, ...)
            dlogits = dlogits.view(shape[0], *shape[2:], shape[1]).movedim(-1, 1)
        if dlogits.dtype != ctx.logits_dtype:
            dlogits = dlogits.to(ctx.logits_dtype)
        return dlogits, None, None, None, None, None, None


def _probs_minus_q(ctx):
    """probs - q (N, C) in a new tensor (0 on ignored rows), then the number of rows that count
    when some may be ignored: a tuple of one or two, from what _CrossEntropy's forward kept."""
    (e, s, safe, *ignored), eps = ctx.saved_tensors, ctx.eps
    grad = e / s  # probs (a new tensor: e stays as it was, for a second backward)
    if eps > 0.0:
        grad.sub_(eps / e.shape[1])
    grad.scatter_(1, safe, eps - 1.0, reduce="add")  # -(1 - eps) at each row's target
    if not ignored:
        return (grad,)
    valid, n_valid = ignored
    return grad.mul_(valid.unsqueeze(1)), n_valid  # ignored rows get no gradient


def _weighted_forward(ctx, shifted, e, s, safe, valid, w, reduction, eps, target_shape):
    """_CrossEntropy's forward with class weights w (C,), as PyTorch weighs (module docstring):
    q = (1 - eps) w[y] onehot + (eps / C) w; loss = -sum_c q_c log p_c; grad = (sum_c q_c) p - q;
    "mean" divides by W = the sum of w[y] over the rows that count."""
    N, C = shifted.shape
    wy = w.gather(0, safe.view(-1)).unsqueeze(1)  # (N, 1) each row's target weight
    if valid is not None:
        wy = wy * valid.unsqueeze(1)  # ignored rows weigh nothing
    lse = s.log()  # (N, 1)
    loss = wy * (lse - shifted.gather(1, safe))  # (N, 1) w[y] * -log p[y]
    if valid is not None:  # ignored rows count for nothing, even when their logits are NaN or inf
        loss = torch.where(valid.unsqueeze(1), loss, 0.0)
    total = wy.sum()  # W
    sum_q = wy * (1.0 - eps)  # (N, 1)
    if eps > 0.0:
        smooth = (lse * w.sum() - shifted @ w.unsqueeze(1)) * (eps / C)  # (N, 1) (eps/C) sum_c w_c (-log p_c)
        if valid is not None:
            smooth = torch.where(valid.unsqueeze(1), smooth, 0.0)
        loss = loss * (1.0 - eps) + smooth
        sum_q = sum_q + (eps / C) * w.sum()
    grad = e.div_(s).mul_(sum_q)  # (N, C): (sum_c q_c) p
    if eps > 0.0:
        grad.sub_(w * (eps / C))
    grad.scatter_add_(1, safe, wy * (eps - 1.0))  # -(1 - eps) w[y] at each row's target
    if valid is not None:
        grad.mul_(valid.unsqueeze(1))  # ignored rows get no gradient
    if reduction == "mean":
        out = loss.sum() / total
    elif reduction == "sum":
        out = loss.sum()
    else:
        out = loss.view(target_shape)
    ctx.save_for_backward(grad, total)
    ctx.reduction, ctx.n, ctx.weighted = reduction, N, True
    return out if out.dtype == ctx.logits_dtype else out.to(ctx.logits_dtype)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x) / sum(exp(x)) along dim, as ``F.softmax``."""
    if autocast_on(x):
        return autocast_call("softmax", softmax, x, dim)
    check_tensor(x, "x")
    check_float(x, "x")
    _check_dim(x, dim)
    return apply(_Softmax, x, dim)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x - log(sum(exp(x))) along dim, as ``F.log_softmax``."""
    if autocast_on(x):
        return autocast_call("log_softmax", log_softmax, x, dim)
    check_tensor(x, "x")
    check_float(x, "x")
    _check_dim(x, dim)
    return apply(_LogSoftmax, x, dim)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy, as ``F.cross_entropy`` (``weight`` comes last here, so that the existing
    positional calls keep working; pass it by name).

    logits (N, C) with target (N,), or logits (N, C, d1, ...) with target (N, d1, ...) (classes
    on dimension 1), or logits (C,) with a 0-d target: class indices. Targets equal to
    ``ignore_index`` count for nothing; ``reduction="mean"`` divides by the number of the others,
    or, with ``weight`` (C,), by the sum of their targets' weights (PyTorch's weighted mean).
    A floating-point target of the logits' own shape holds class probabilities instead
    (``cross_entropy_soft.py``; "mean" then divides by the number of predictions, and
    ignore_index must stay -100). ``label_smoothing`` eps mixes eps / C into every class.
    Ignored predictions count for nothing even with NaN or infinite logits. With no classes
    (C == 0) the loss is PyTorch's constant (``no_classes_loss``) and the gradients are empty.

    Refuses (ValueError): non-float logits; a bool or complex target; an integer target whose
    shape is not logits' without dimension 1, or with a value outside [0, C) other than
    ignore_index; a float target not of logits' shape or dtype, or with an ignore_index other than
    -100 (as PyTorch); a weight not a (C,) tensor of logits' dtype; an unknown reduction;
    label_smoothing outside [0, 1].
    """
    if autocast_on(logits):
        return autocast_call("cross_entropy", cross_entropy, logits, target, ignore_index, reduction,
                             label_smoothing, weight=weight)
    check_tensor(logits, "logits")
    check_tensor(target, "target")
    check_float(logits, "logits")
    if target.dtype.is_complex or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices or float class probabilities, got dtype {target.dtype}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if logits.dim() == 0:
        raise ValueError("logits must have at least 1 dimension (the classes), got a 0-d tensor")
    C = logits.shape[0] if logits.dim() == 1 else logits.shape[1]
    if weight is not None:
        check_tensor(weight, "weight")
        if weight.shape != (C,) or weight.dtype != logits.dtype:
            raise ValueError(f"weight must be a ({C},) tensor of dtype {logits.dtype} for logits {tuple(logits.shape)}, "
                             f"got shape {tuple(weight.shape)} and dtype {weight.dtype}")
    if target.dtype.is_floating_point:  # class probabilities
        if target.shape != logits.shape or target.dtype != logits.dtype:
            raise ValueError(f"a floating-point target holds class probabilities and must have the logits' shape "
                             f"{tuple(logits.shape)} and dtype {logits.dtype}, got {tuple(target.shape)} and {target.dtype}")
        if ignore_index != -100:
            raise ValueError(f"ignore_index does not apply to class-probability targets (as in PyTorch), "
                             f"got ignore_index={ignore_index}")
        if C == 0:
            loss = no_classes_loss(logits, target, reduction, 0.0, soft=True)
            return apply(NoClassesCrossEntropy, logits, target, loss)
        return apply(SoftCrossEntropy, logits, target, weight, reduction, float(label_smoothing))
    if logits.dim() == 1 and target.dim() != 0 or logits.dim() >= 2 and (
        target.shape != logits.shape[:1] + logits.shape[2:]
    ):
        want = "()" if logits.dim() == 1 else str(tuple(logits.shape[:1] + logits.shape[2:]))
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            f"expected target of shape {want} (logits carry the classes on dimension 1)"
        )
    may_ignore = False
    if target.numel() > 0 and torch.compiler.is_compiling():
        # No .item() while TorchDynamo traces (a graph break, and on a GPU a sync each step):
        # the range is asserted on the device, and every row is masked as if it might be ignored.
        torch._assert_async(((target == ignore_index) | ((target >= 0) & (target < C))).all(),
                            "cross_entropy: a target value is outside [0, C) and is not ignore_index")
        may_ignore = True
    elif target.numel() > 0:
        lo, hi = int_range(target)
        if lo < 0 or hi >= C:  # out of range, unless it is ignore_index
            bad = target[(target != ignore_index) & ((target < 0) | (target >= C))]
            if bad.numel() > 0:
                raise ValueError(
                    f"target values must be in [0, {C}) (or ignore_index={ignore_index}) for logits "
                    f"{tuple(logits.shape)}, got {bad[:5].tolist()}"
                )
        may_ignore = lo <= ignore_index <= hi
    if C == 0:  # no classes: every target (if any) is ignore_index, checked above
        loss = no_classes_loss(logits, target, reduction, label_smoothing, soft=False)
        return apply(NoClassesCrossEntropy, logits, None, loss)
    out = apply(_CrossEntropy, logits, target, ignore_index, reduction, float(label_smoothing), may_ignore, weight)
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
