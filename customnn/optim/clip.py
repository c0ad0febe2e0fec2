"""Gradient clipping by global norm (``torch.nn.utils.clip_grad_norm_``) and a finiteness check."""

from __future__ import annotations

import torch


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
