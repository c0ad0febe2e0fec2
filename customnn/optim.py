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

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


# --- the optimizer base: parameter groups, state, state dicts ----------------------------
class Optimizer:
    """Parameter groups, per-parameter state and ``torch.optim``-shaped state dicts."""

    def __init__(self, params, defaults: dict) -> None:
        groups = list(params) if not isinstance(params, (torch.Tensor, dict)) else [params]
        if not groups:
            raise ValueError("params is empty: the optimizer got no parameters to train")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[torch.Tensor, dict] = {}  # keyed by the parameter tensor itself
        seen: set[int] = set()
        for i, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise ValueError(f"param group {i} must be a dict with a 'params' key, got {type(group).__name__}")
            plist = group["params"]
            plist = [plist] if isinstance(plist, torch.Tensor) else list(plist)
            for p in plist:
                if not isinstance(p, torch.Tensor):
                    raise ValueError(f"param group {i}: params must be tensors, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"param group {i}: a parameter of shape {tuple(p.shape)} appears twice")
                seen.add(id(p))
            full = {**self.defaults, **group, "params": plist}
            self._check_hyperparameters(full)
            self.param_groups.append(full)
        # An empty group beside others is kept (as torch.optim keeps it: ``decay_groups(...,
        # keep_empty=True)`` relies on it); an optimizer with nothing to train is a mistake.
        if not seen:
            raise ValueError("params is empty: every param group has an empty 'params' list")

    def _check_hyperparameters(self, group: dict) -> None:
        if group["lr"] < 0.0:
            raise ValueError(f"lr must be >= 0, got {group['lr']}")
        if group["weight_decay"] < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']}")

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        """Drop every gradient (``None``, as torch does by default): the next backward writes fresh ones."""
        for p in self._params():
            p.grad = None

    def state_dict(self) -> dict:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}`` as torch.optim.

        Parameters are numbered in group order. The state tensors are copies, so the dict
        stays a snapshot while training continues.
        """
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[id(p)]: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
                 for p, s in self.state.items()}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters (lr included) and state saved by ``state_dict``; the
        parameters stay this optimizer's own. Group counts and sizes must match."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups, "
                             f"the optimizer has {len(self.param_groups)}")
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"param group {i}: state_dict has {len(saved['params'])} params, "
                                 f"the optimizer has {len(group['params'])}")
        new_state: dict[torch.Tensor, dict] = {}
        for saved, group in zip(saved_groups, self.param_groups):
            for idx, p in zip(saved["params"], group["params"]):
                s = state_dict["state"].get(idx, state_dict["state"].get(str(idx)))
                if s is not None:
                    new_state[p] = {k: self._restore(k, v, p) for k, v in s.items()}
        for saved, group in zip(saved_groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = new_state

    @staticmethod
    def _restore(key: str, value, param: torch.Tensor):
        if key == "step":  # torch.optim keeps it as a tensor; we keep a Python int
            return int(value.item()) if isinstance(value, torch.Tensor) else int(value)
        if isinstance(value, torch.Tensor):  # a private copy on the parameter's device and dtype
            if value.shape != param.shape:
                raise ValueError(f"state '{key}' has shape {tuple(value.shape)}, parameter has {tuple(param.shape)}")
            return value.to(device=param.device, dtype=param.dtype, copy=True)
        return value

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient, group by group; parameters whose
        gradient is ``None`` are skipped and their state left as it is, as in torch."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_group(group, params, [p.grad for p in params])

    def _step_group(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """The optimizer's update of ``params`` (with their ``grads``) under ``group``'s hyperparameters."""
        raise NotImplementedError


# --- SGD ---------------------------------------------------------------------------------
class SGD(Optimizer):
    """SGD with momentum, Nesterov momentum, L2 weight decay and dampening, as torch.optim.SGD.

    Per parameter p with gradient g, at each step::

        g = g + weight_decay * p                       # L2 decay, folded into the gradient
        b = g                       on the first step   # momentum buffer
        b = momentum * b + (1 - dampening) * g   after
        d = g + momentum * b if nesterov else b        (d = g when momentum == 0)
        p = p - lr * d
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, dampening: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, dampening=dampening))

    def _check_hyperparameters(self, group: dict) -> None:
        super()._check_hyperparameters(group)
        if group["momentum"] < 0.0:
            raise ValueError(f"momentum must be >= 0, got {group['momentum']}")
        if group["nesterov"] and (group["momentum"] <= 0.0 or group["dampening"] != 0.0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening == 0, "
                             f"got momentum={group['momentum']}, dampening={group['dampening']}")

    def _step_group(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        d = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else grads  # new tensors: grads untouched
        if momentum != 0:
            bufs = []
            old_bufs, old_d = [], []
            for p, dp in zip(params, d):
                s = self.state.setdefault(p, {})
                if "momentum_buffer" not in s:  # first step: the buffer is the gradient itself
                    s["momentum_buffer"] = dp.clone().detach()
                else:
                    old_bufs.append(s["momentum_buffer"])
                    old_d.append(dp)
                bufs.append(s["momentum_buffer"])
            if old_bufs:  # b = momentum * b + (1 - dampening) * g
                torch._foreach_mul_(old_bufs, momentum)
                torch._foreach_add_(old_bufs, old_d, alpha=1 - group["dampening"])
            d = torch._foreach_add(d, bufs, alpha=momentum) if group["nesterov"] else bufs
        torch._foreach_add_(params, d, alpha=-lr)  # p = p - lr * d


# --- AdamW -------------------------------------------------------------------------------
class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW.

    Per parameter p with gradient g, at step t = 1, 2, ...::

        p = p * (1 - lr * weight_decay)                # decay, not through the moments
        m = beta1 * m + (1 - beta1) * g                # exp_avg   (torch: m.lerp_(g, 1 - beta1))
        v = beta2 * v + (1 - beta2) * g * g            # exp_avg_sq
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    The step count t is kept per parameter (a parameter skipped because its gradient was
    ``None`` does not advance), as in torch.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _check_hyperparameters(self, group: dict) -> None:
        super()._check_hyperparameters(group)
        betas = group["betas"]
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if group["eps"] < 0.0:
            raise ValueError(f"eps must be >= 0, got {group['eps']}")

    def _step_group(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        states = [self.state.setdefault(p, {}) for p in params]
        for p, s in zip(params, states):
            if not s:  # zeros_like keeps p's memory format
                s.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            s["step"] += 1
        adamw_update_(group, params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                      [s["step"] for s in states])


@torch.no_grad()
def adamw_update_(group: dict, params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                  exp_avg_sqs: list[torch.Tensor], steps: list[int]) -> None:
    """AdamW's update of ``params`` and their moments at step counts ``steps`` (already advanced), in
    place, under ``group``'s hyperparameters: on whole parameters here, on slices in train/zero.py."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd)  # decoupled decay
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)  # m = beta1 m + (1 - beta1) g
    torch._foreach_mul_(exp_avg_sqs, beta2)  # v = beta2 v + (1 - beta2) g^2
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    bias_correction1 = [1 - beta1 ** t for t in steps]
    bias_correction2_sqrt = [(1 - beta2 ** t) ** 0.5 for t in steps]
    step_size = [-lr / bc for bc in bias_correction1]
    denom = torch._foreach_sqrt(exp_avg_sqs)  # sqrt(v) / sqrt(1 - beta2^t) + eps
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)  # p -= lr / bc1 * m / denom


def decay_groups(named_params: Iterable[tuple[str, torch.Tensor]], weight_decay: float, *,
                 exclude: Iterable[str] = (), keep_empty: bool = False) -> list[dict]:
    """The decay / no-decay split of nanoGPT's ``configure_optimizers``, as two param groups.

    Tensors of rank >= 2 (matmul and conv weights, embeddings) go into the first group, with
    ``weight_decay``; rank < 2 (biases, norm gains) into the second, with 0. A name in
    ``exclude`` (``("wte", "wpe")``: the embeddings) never decays, whatever its rank. Both
    groups keep the order of ``named_params``; tensors that do not require grad are left out.

    An empty group is dropped, unless ``keep_empty``: then there are always two groups, so an
    optimizer's state dict has the same shape for every configuration of a model (a GPT
    checkpoint's optimizer state is loaded group by group).
    """
    excluded = set(exclude)
    decay, no_decay = [], []
    for name, p in named_params:
        if p.requires_grad:
            (decay if p.dim() >= 2 and name not in excluded else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return groups if keep_empty else [g for g in groups if g["params"]]


# --- learning-rate schedules -------------------------------------------------------------
@dataclass(frozen=True)
class ConstantLR:
    """The same lr at every step."""
    base_lr: float

    def __call__(self, step: int) -> float:
        return self.base_lr


@dataclass(frozen=True)
class StepLR:
    """``base_lr * gamma ** (step // step_size)``, torch's StepLR after ``step`` scheduler steps."""
    base_lr: float
    step_size: int
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


@dataclass(frozen=True)
class CosineLR:
    """Linear warmup, then cosine decay to ``min_lr`` at ``total_steps``, then ``min_lr``.

    This is nanoGPT's ``get_lr(it)`` line for line (``lr_decay_iters`` = ``total_steps``).
    Warmup follows nanoGPT's current convention, ``base_lr * (step + 1) / (warmup + 1)``, so
    step 0 already takes a small non-zero step and warmup never quite reaches ``base_lr``;
    the cosine part starts at ``base_lr`` exactly at ``step == warmup_steps``. With no warmup
    it is CosineAnnealingLR's closed form with ``T_max = total_steps``, ``eta_min = min_lr``.
    """
    base_lr: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:  # 1) linear warmup
            return self.base_lr * (step + 1) / (self.warmup_steps + 1)
        if step > self.total_steps:  # 2) after the decay, min_lr
            return self.min_lr
        decay_ratio = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)  # 3) cosine
        coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
        return self.min_lr + coeff * (self.base_lr - self.min_lr)


def _check_lr(name: str, value: float) -> None:
    if not value >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def constant_lr(base_lr: float) -> ConstantLR:
    _check_lr("base_lr", base_lr)
    return ConstantLR(base_lr)


def step_lr(base_lr: float, step_size: int, gamma: float = 0.1) -> StepLR:
    _check_lr("base_lr", base_lr)
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    return StepLR(base_lr, step_size, gamma)


def cosine_lr(base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> CosineLR:
    _check_lr("base_lr", base_lr)
    _check_lr("min_lr", min_lr)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps must be > warmup_steps, "
                         f"got total_steps={total_steps}, warmup_steps={warmup_steps}")
    return CosineLR(base_lr, warmup_steps, total_steps, min_lr)


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr``, times the group's ``lr_scale`` where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# --- gradient clipping -------------------------------------------------------------------
def _grads(params) -> list[torch.Tensor]:
    params = [params] if isinstance(params, torch.Tensor) else params
    return [p.grad for p in params if p.grad is not None]


@torch.no_grad()
def clip_grad_norm_(params, max_norm: float) -> torch.Tensor:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: ``total = ||(||g_1||, ||g_2||, ...)||``, every
    gradient is multiplied by ``min(1, max_norm / (total + 1e-6))``. Returns ``total``, the
    norm before clipping, as a 0-dim tensor (no device sync here; it is inf or nan when a
    gradient is).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    grads = _grads(params)
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    norms = torch._foreach_norm(grads)  # one L2 norm per gradient
    total_norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
    clip_coef = clip_coefficient(total_norm, max_norm)
    for dev in {g.device for g in grads}:  # multiply on each gradient's own device
        torch._foreach_mul_([g for g in grads if g.device == dev], clip_coef.to(dev))
    return total_norm


def clip_coefficient(total_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """What every gradient is multiplied by to clip a global norm ``total_norm`` to ``max_norm``."""
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


@torch.no_grad()
def grads_are_finite(params) -> bool:
    """True when every gradient is free of inf and nan (parameters without one are skipped)."""
    grads = _grads(params)
    if not grads:
        return True
    device = grads[0].device
    return bool(torch.stack([torch.isfinite(g).all().to(device) for g in grads]).all())
