"""Muon: SGD momentum whose update is orthogonalised by a Newton-Schulz iteration, for the hidden
matrices of a network; AdamW for every other tensor, in the same optimizer.

Reference: Keller Jordan, Yuchen Jin, Vlado Boza, Jiacheng You, Franz Cesista, Laker Newhouse
and Jeremy Bernstein, "Muon: An optimizer for hidden layers in neural networks" (blog post,
2024), and its code (modded-nanogpt; the ``muon_update`` and ``MuonWithAuxAdam`` of the Muon
repository). Per matrix parameter p with gradient g, at each step::

    b = beta * b + (1 - beta) * g                  # momentum buffer, zeros at first (beta = 0.95)
    u = (1 - beta) * g + beta * b   (Nesterov)     # or u = b without Nesterov
    o = NewtonSchulz5(u)                           # ~ U V^T of u = U S V^T: every singular value ~ 1
    p = p * (1 - lr * weight_decay)                # decoupled decay, as AdamW's
    p = p - lr * max(1, fan_out / fan_in) ** 0.5 * o

NewtonSchulz5 (``newton_schulz5``) divides u by its Frobenius norm (so every singular value is
at most 1), then applies 5 times X <- a X + (b A + c A^2) X with A = X X^T and (a, b, c) =
(3.4445, -4.7750, 2.0315): an odd polynomial of X, so it keeps the singular vectors and maps each
singular value s through p(s) = a s + b s^3 + c s^5, five times. The coefficients make p steep
at 0 and keep the iterates in a band around 1 (about [0.7, 1.2]) instead of converging to 1 exactly:
fewer steps, and the same benefit for training. It runs in the parameter's dtype here (the
published code casts to bfloat16 on the GPU).

Layout: our linear weights are (in, out) (``ops.linear``), PyTorch's (out, in). The published
scale ``max(1, rows / cols) ** 0.5`` is on (out, in) weights, i.e. ``max(1, fan_out / fan_in)``,
so here it is ``max(1, cols / rows) ** 0.5`` of our (in, out) matrix; the orthogonalisation itself
does not care (NewtonSchulz5(u^T) = NewtonSchulz5(u)^T).

Only 2-D tensors can take the Muon update. Embeddings, the output head, gains and biases take
AdamW's (``optim.AdamW``, the same arithmetic): each param group has ``use_muon`` True or False.
``muon_groups`` builds the standard split from a model's named parameters, always as two groups
(Muon, AdamW), with an ``lr_scale`` on the Muon group so that one schedule drives both through
``optim.set_lr`` (each group's lr = the schedule's lr * its lr_scale).

    opt = Muon(muon_groups(model.named_parameters(), lr=3e-3, muon_lr=0.02, weight_decay=0.0),
               lr=3e-3, betas=(0.9, 0.95))
    set_lr(opt, lr_at(step)); loss.backward(); opt.step(); opt.zero_grad()

The state of a Muon parameter is ``{"momentum_buffer"}``; of an AdamW one, ``{"step",
"exp_avg", "exp_avg_sq"}``. ``state_dict`` / ``load_state_dict`` are ``optim.Optimizer``'s.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from customnn.optim.optimizers import AdamW, Optimizer

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # (a, b, c) of the quintic a s + b s^3 + c s^5


def newton_schulz5(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The approximate orthogonalisation of the matrix G (m, n): G / (||G||_F + eps), then ``steps``
    quintic Newton-Schulz iterations, in G's dtype. The result has G's singular vectors and
    singular values in about [0.7, 1.2] (those of G not tiny against ||G||_F)."""
    if G.dim() != 2:
        raise ValueError(f"Newton-Schulz needs a matrix, got shape {tuple(G.shape)}")
    a, b, c = NS_COEFFICIENTS
    tall = G.shape[0] > G.shape[1]
    X = G.T if tall else G  # (r, k) with r <= k: A = X X^T is the smaller Gram matrix (r, r)
    X = X / (torch.linalg.matrix_norm(X) + eps)  # Frobenius norm: every singular value <= 1
    for _ in range(steps):
        A = X @ X.T  # (r, r)
        B = torch.addmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.addmm(X, B, X, beta=a)  # a X + B X
    return X.T if tall else X


class Muon(AdamW):
    """Muon for the groups with ``use_muon=True`` (2-D tensors only), AdamW for the others.

    ``lr``, ``weight_decay`` and ``use_muon`` are defaults for groups that do not set them;
    ``momentum``, ``nesterov`` and ``ns_steps`` are Muon's, ``betas`` and ``eps`` AdamW's.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, use_muon: bool = True) -> None:
        Optimizer.__init__(self, params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                              weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                                              use_muon=use_muon))

    def _check_hyperparameters(self, group: dict) -> None:
        super()._check_hyperparameters(group)
        if not 0.0 <= group["momentum"] < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {group['momentum']}")
        steps = group["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"ns_steps must be an integer >= 1, got {steps!r}")
        for name in ("nesterov", "use_muon"):
            if not isinstance(group[name], bool):
                raise ValueError(f"{name} must be True or False, got {group[name]!r}")
        if group["use_muon"]:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"a Muon group (use_muon=True) takes 2-D tensors only, got shape "
                                     f"{tuple(p.shape)}: give it use_muon=False (AdamW)")

    def _step_group(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        if not group["use_muon"]:
            super()._step_group(group, params, grads)  # AdamW
            return
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p, g in zip(params, grads):
            s = self.state.setdefault(p, {})
            if not s:
                s["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = s["momentum_buffer"]
            buf.lerp_(g, 1 - beta)  # b = beta b + (1 - beta) g
            u = torch.lerp(g, buf, beta) if group["nesterov"] else buf  # (1 - beta) g + beta b
            o = newton_schulz5(u, group["ns_steps"])  # (in, out)
            scale = max(1.0, p.shape[1] / p.shape[0]) ** 0.5  # max(1, fan_out / fan_in) ** 0.5
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(o, alpha=-lr * scale)


def state_keys(group: dict) -> set[str]:
    """The keys of a parameter's state in ``group``: Muon's buffer, or AdamW's step and moments."""
    return {"momentum_buffer"} if group["use_muon"] else {"step", "exp_avg", "exp_avg_sq"}


def muon_groups(named_params: Iterable[tuple[str, torch.Tensor]], lr: float, muon_lr: float = 0.02,
                weight_decay: float = 0.0, *,
                adamw_names: Iterable[str] = ("wte", "wpe", "lm_head")) -> list[dict]:
    """The standard split, as two param groups for ``Muon``, in this order:

    1. Muon: every 2-D tensor whose name is not in ``adamw_names`` (the hidden matrices: a GPT's
       attention and MLP weights), with ``weight_decay``, lr ``muon_lr`` and lr_scale
       ``muon_lr / lr``, so that ``set_lr(opt, lr_at(step))`` gives it ``muon_lr`` wherever the
       schedule gives ``lr``;
    2. AdamW: the rest (embeddings, output head, gains, biases), no weight decay, lr ``lr``.

    Both groups are always there, even empty (a checkpoint's optimizer state is loaded group by
    group); tensors that do not require grad are left out.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0 (the Muon group's lr_scale is muon_lr / lr), got {lr}")
    if not muon_lr >= 0:
        raise ValueError(f"muon_lr must be >= 0, got {muon_lr}")
    adamw = set(adamw_names)
    hidden, rest = [], []
    for name, p in named_params:
        if p.requires_grad:
            (hidden if p.dim() == 2 and name not in adamw else rest).append(p)
    return [{"params": hidden, "use_muon": True, "lr": muon_lr, "lr_scale": muon_lr / lr,
             "weight_decay": weight_decay},
            {"params": rest, "use_muon": False, "lr": lr, "weight_decay": 0.0}]
