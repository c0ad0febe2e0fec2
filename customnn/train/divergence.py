"""The one divergence rule of every run, and the error it raises.

A step diverged when its loss is not finite, or above ``EXPLODED_LOSS``, or a gradient is not
finite. The engine (``train/engine.py``) checks it after clipping, on every step, stops the
run with the step named and keeps the last good checkpoint as it was.
"""

from __future__ import annotations

import math

from customnn.core.errors import UserError

# Cross-entropy starts near ln(classes): 2.3 for 10 digits, 4.2 for 65 characters. A batch loss
# above this means the run has blown up even while the numbers are still finite (Adam's bounded
# steps keep them finite at a huge lr, and the loss then sits at 1e6..1e20). No healthy run of a
# classifier or language model comes near it.
EXPLODED_LOSS = 1e3


class Diverged(UserError):
    """Training produced a loss or gradient that is not finite, or a loss that exploded."""


def loss_is_healthy(value: float) -> bool:
    return math.isfinite(value) and value < EXPLODED_LOSS


def what_diverged(value: float) -> str:
    """What went wrong in a step whose loss is ``value`` (a gradient, when the loss is healthy)."""
    if not math.isfinite(value):
        return f"the loss is {value}"
    if value >= EXPLODED_LOSS:
        return f"the loss exploded to {value:.3g}"
    return "a gradient is not finite"


def diverged_message(step: int, where: str, what: str, kept: str, cfg_lr: float | None, lr: float) -> str:
    """The one line a diverged run ends with; ``cfg_lr`` is the run's --lr, where it has one."""
    used = f"this run used --lr {cfg_lr:g}, " if cfg_lr is not None else "the learning rate was "
    return (f"training diverged at step {step + 1}{where}: {what}; {kept}; try a lower --lr "
            f"({used}{lr:.3g} at this step)")
