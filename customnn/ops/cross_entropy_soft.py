"""Cross-entropy against class probabilities ("soft" targets), forward and hand-written backward.

``ops.cross_entropy(logits, target)`` comes here when ``target`` is a floating-point tensor
of the logits' shape: target[n, c] is the probability of class c for prediction n, as in
``F.cross_entropy`` with probability targets. With label smoothing eps and class weights w
(all 1 without), as PyTorch defines them:

    q      = (1 - eps) * target + eps / C                  (N, C)
    loss_n = -sum_c w_c q_nc log p_nc,   p = softmax(logits)
    mean   = sum_n loss_n / N             (N predictions: the weights do NOT divide here)

    dlogits_nc = (sum_k w_k q_nk) p_nc - w_c q_nc          (times the gradient reaching loss_n)
    dtarget_nc = -(1 - eps) w_c log p_nc                   (the target may require grad too)

ignore_index does not apply to probability targets (other than its default -100 it is refused,
as PyTorch refuses it). The weight
gets no gradient. Rows: classes on dimension 1 of logits (N, C, d1, ...) as for class
indices; every position is a row (``_as_rows``). Tested with ``cross_entropy_reference``.
"""

from __future__ import annotations

import torch


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C); (N, C) as is; (N, C, d1, ...) -> (N*d1*..., C), classes last."""
    if t.dim() == 1:
        return t.unsqueeze(0)
    if t.dim() == 2:
        return t
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _from_rows(rows: torch.Tensor, shape) -> torch.Tensor:
    """The inverse of ``_as_rows`` for a tensor of the logits' shape."""
    if len(shape) == 1:
        return rows.view(shape)
    if len(shape) == 2:
        return rows
    return rows.view(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


class SoftCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, target, weight, reduction, label_smoothing):
        shape = logits.shape
        z, t = _as_rows(logits), _as_rows(target)  # (N, C) each
        N, C = z.shape
        shifted = z - z.amax(1, keepdim=True)  # the row maximum goes first, always
        e = shifted.exp()  # (N, C)
        s = e.sum(1, keepdim=True)  # (N, 1)
        logp = shifted.sub_(s.log())  # (N, C) log-softmax, in place
        eps = label_smoothing
        q = t * (1.0 - eps) + eps / C if eps > 0.0 else t  # (N, C)
        qw = q * weight if weight is not None else q  # (N, C)
        loss = -(qw * logp).sum(1)  # (N,)
        grad = e.div_(s).mul_(qw.sum(1, keepdim=True)).sub_(qw)  # (N, C): (sum w q) p - w q
        dtarget = None
        if ctx.needs_input_grad[1]:
            dtarget = logp.mul_(-(1.0 - eps))  # (N, C), logp is not needed after this
            if weight is not None:
                dtarget.mul_(weight)
        if reduction == "mean":
            out = loss.sum() / N if N > 0 else loss.sum() * float("nan")
        elif reduction == "sum":
            out = loss.sum()
        else:
            out = loss.view(shape[:1] + shape[2:] if len(shape) > 1 else ())
        ctx.save_for_backward(grad, dtarget)
        ctx.shape, ctx.reduction, ctx.n = shape, reduction, N
        return out

    @staticmethod
    def backward(ctx, dout):
        grad, dtarget = ctx.saved_tensors
        if ctx.reduction == "none":
            scale = dout.reshape(-1, 1)  # (N, 1): each row's own upstream gradient
        elif ctx.reduction == "mean":
            scale = dout / max(ctx.n, 1)
        else:
            scale = dout
        dlogits = _from_rows(grad * scale, ctx.shape) if ctx.needs_input_grad[0] else None
        dt = _from_rows(dtarget * scale, ctx.shape) if dtarget is not None else None
        return dlogits, dt, None, None, None


# --- no classes at all (C == 0), for class indices and probabilities alike ----------------------
def no_classes_loss(logits, target, reduction, label_smoothing, soft) -> torch.Tensor:
    """PyTorch's loss for logits with no classes (C == 0): no term to sum, so each prediction's
    loss is 0 (-0.0 for probabilities), or 0/0 = NaN with label smoothing on class indices
    (its eps / C share); "mean" divides by the number of predictions counted: NaN."""
    rows = (target.shape if not soft else logits.shape[:1] + logits.shape[2:] if logits.dim() > 1 else ())
    per_row = float("nan") if label_smoothing > 0.0 and not soft else (-0.0 if soft else 0.0)
    if reduction == "none":
        return logits.new_full(rows, per_row)
    if reduction == "sum":
        return logits.new_full((), per_row)
    return logits.new_full((), float("nan"))


class NoClassesCrossEntropy(torch.autograd.Function):
    """cross_entropy with C == 0: the loss is a constant (``no_classes_loss``), and the logits
    (and a probability target), which have no elements, get empty gradients."""

    @staticmethod
    def forward(ctx, logits, target, loss):
        ctx.shapes = (logits.shape, None if target is None else target.shape)
        return loss

    @staticmethod
    def backward(ctx, dout):
        logits_shape, target_shape = ctx.shapes
        dt = None if target_shape is None else dout.new_zeros(target_shape)
        return dout.new_zeros(logits_shape), dt, None
