"""Optimizers, learning-rate schedules and gradient clipping, written on plain tensors.

Nothing here uses ``torch.optim``; the tests pin every update against it.

- ``SGD``: stochastic gradient descent with momentum and Nesterov momentum in the form
  PyTorch uses (Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and
  momentum in deep learning", ICML 2013, as reformulated in ``torch.optim.SGD``'s docs).
- ``AdamW``: Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015) with
  decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
  ICLR 2019), in ``torch.optim.AdamW``'s arithmetic.
- Schedules: ``constant_lr``, ``step_lr`` (``torch.optim.lr_scheduler.StepLR``) and
  ``cosine_lr`` (linear warmup then cosine decay, nanoGPT's ``get_lr`` exactly), each a
  callable ``lr_at(step) -> float``; ``set_lr`` writes an lr into an optimizer.
- ``clip_grad_norm_`` (``torch.nn.utils.clip_grad_norm_``) and ``grads_are_finite``.

Parameters are given as a list of tensors, or as a list of parameter groups like
``torch.optim``'s (``[{"params": decay, "weight_decay": 0.1}, {"params": no_decay,
"weight_decay": 0.0}]``); a group's keys override the optimizer's defaults. ``decay_groups``
builds the usual split (matrices decay; biases, norm gains, other vectors and any names it is
told to exclude do not).

Updates run under ``torch.no_grad`` with in-place ``torch._foreach_*`` ops, one call per
group instead of one per tensor; the per-parameter formula is written next to each.

Use::

    opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=3e-4)
    lr_at = cosine_lr(3e-4, warmup_steps=100, total_steps=5000, min_lr=3e-5)
    for it in range(5000):
        set_lr(opt, lr_at(it))
        loss = model(x, y)[1]; loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad()
"""


from customnn.optim.clip import clip_coefficient, clip_grad_norm_, grads_are_finite
from customnn.optim.muon import Muon, muon_groups, newton_schulz5
from customnn.optim.optimizers import SGD, AdamW, Optimizer, adamw_update_, decay_groups
from customnn.optim.schedule import (ConstantLR, CosineLR, StepLR, constant_lr, cosine_lr, set_lr,
                                     step_lr)

__all__ = ["Optimizer", "SGD", "AdamW", "Muon", "adamw_update_", "decay_groups", "muon_groups",
           "newton_schulz5", "ConstantLR", "StepLR", "CosineLR", "constant_lr", "step_lr", "cosine_lr",
           "set_lr", "clip_grad_norm_", "clip_coefficient", "grads_are_finite"]
