"""The optimizers: a base with parameter groups and state dicts, ``SGD`` and ``AdamW``.

``SGD`` follows ``torch.optim.SGD`` (momentum and Nesterov momentum; Sutskever, Martens, Dahl &
Hinton, ICML 2013, as reformulated in PyTorch's docs); ``AdamW`` is Adam (Kingma & Ba, ICLR 2015)
with decoupled weight decay (Loshchilov & Hutter, ICLR 2019) in ``torch.optim.AdamW``'s
arithmetic. ``decay_groups`` builds the usual parameter groups (matrices decay; biases, norm
gains and other vectors do not). Updates run under ``torch.no_grad`` with in-place
``torch._foreach_*`` ops, one call per group; the per-parameter formula is written next to each.
"""

from __future__ import annotations

from collections.abc import Iterable

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


