"""Learning-rate schedules, each a callable ``lr_at(step) -> float``, and ``set_lr``.

``constant_lr``; ``step_lr`` (``torch.optim.lr_scheduler.StepLR``); ``cosine_lr``: linear
warmup then cosine decay to ``min_lr``, nanoGPT's ``get_lr`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from customnn.optim.optimizers import Optimizer


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


