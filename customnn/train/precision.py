"""Mixed-precision training: ``--precision 32|bf16|fp16|auto``, and float16's dynamic loss scaler.

Micikevicius et al., "Mixed Precision Training" (2018): the weights, their gradients, the
optimizer's state and the checkpoints stay float32 ("master weights"); only the forward runs
under ``torch.autocast`` (bfloat16 or float16), where each layer of ``customnn.ops`` picks its
compute dtype as PyTorch's layers do (``customnn/ops/_autocast.py``). The casts are recorded by
autograd, so the backward returns float32 gradients, and a data-parallel run reduces them in
float32.

float16 has 5 exponent bits: gradients below 2^-24 flush to zero. ``LossScaler`` multiplies the
loss by a scale before the backward and divides the gradients by it after, with the semantics
of ``torch.amp.GradScaler`` (written here by hand): the scale starts at 2^16; a step whose
gradients hold an inf or a NaN is skipped (no optimizer step) and halves the scale; 2000 clean
steps in a row double it. bfloat16 has float32's exponent range and needs no scaler.

The engine uses a ``Precision`` at four places: the forward under ``autocast()``, the
backward through ``backward(loss)`` (``Trainer.backward``), ``unscale_`` after the gradients
are complete (after the data-parallel exchange, before clipping), and ``state_dict`` in every
checkpoint.
"""

from __future__ import annotations

import contextlib
import math

import torch

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MIN_SCALE = 2.0 ** -24  # a scale halved below this is a run whose gradients are never finite: diverged


class LossScaler:
    """GradScaler's dynamic loss scale: ``scale`` times the loss before backward, gradients
    divided by it after; ``update(found_inf)`` halves it on an overflow and doubles it after
    ``growth_interval`` clean steps in a row."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.growth_tracker = 0  # clean steps since the last change of scale

    def unscale_(self, grads: list[torch.Tensor]) -> bool:
        """Divide ``grads`` by the scale in place; True if any of them holds an inf or a NaN."""
        if not grads:
            return False
        torch._foreach_mul_(grads, 1.0 / self.scale)
        # one reduction per gradient and one sync: the sum of every |g| is finite iff every g is
        total = torch.stack([g.abs().sum(dtype=torch.float32) for g in grads]).sum()
        return not bool(torch.isfinite(total))

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.scale *= self.growth_factor
            self.growth_tracker = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker}

    def load_state_dict(self, state: dict) -> None:
        scale, tracker = state["scale"], state["growth_tracker"]
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0) \
                or not (isinstance(tracker, int) and 0 <= tracker < self.growth_interval):
            raise ValueError("loss scaler state")
        self.scale, self.growth_tracker = float(scale), tracker


def native_bf16(device_type: str) -> bool:
    """Whether the device computes bfloat16 matrix products natively, so that bf16 steps are
    faster than float32's: a CUDA GPU that supports bfloat16, or a CPU with AVX512_BF16 or AMX
    (oneDNN's bfloat16 kernels; elsewhere a bfloat16 product is emulated and slower)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def run_precision(cfg, device_type: str, own_model: bool = False) -> Precision:
    """The run's ``Precision`` from ``cfg.precision``. ``"auto"`` is bf16 where the device computes
    bfloat16 natively (``native_bf16``), for the built-in models; float32 elsewhere, under
    ``--dtype float64``, and for a model of one's own (``own_model``: its own layers may not follow
    autocast; ``--precision bf16`` asks for it). The name chosen replaces "auto" in ``cfg``, so
    config.json and the report say what ran."""
    name = getattr(cfg, "precision", "32")
    if name == "auto":
        native = getattr(cfg, "dtype", "float32") == "float32" and not own_model and native_bf16(device_type)
        cfg.precision = name = "bf16" if native else "32"
    return Precision(name, device_type)


class Precision:
    """A run's precision: ``"32"`` (float32 throughout), ``"bf16"`` or ``"fp16"`` (the forward under
    autocast to that dtype; fp16 with a ``LossScaler``) on ``device_type`` ("cpu" or "cuda")."""

    def __init__(self, name: str = "32", device_type: str = "cpu"):
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {name!r}")
        self.name, self.dtype, self.device_type = name, PRECISIONS[name], device_type
        self.scaler = LossScaler() if name == "fp16" else None

    def autocast(self):
        """The forward's context: autocast to the run's dtype, or nothing for float32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, outside autocast (each layer's backward runs in its saved dtypes), the
        loss multiplied by the scale under fp16."""
        if self.dtype is None:
            loss.backward()
            return
        with torch.autocast(self.device_type, enabled=False):
            (loss * self.scaler.scale if self.scaler is not None else loss).backward()

    def unscale_(self, grads: list[torch.Tensor], norm: torch.Tensor | None = None):
        """After the backward (and the gradient exchange): divide the gradients by the scale and
        decide. Returns ``(norm, skip)``: ``norm`` (the global gradient norm of ``--zero``, or None)
        divided by the scale too, and whether this step is skipped (an inf or NaN gradient while
        the scale can still fall). The scale is updated here. Without a scaler: ``(norm, False)``."""
        if self.scaler is None:
            return norm, False
        if norm is not None:  # --zero: the global norm says, the same on every rank
            torch._foreach_mul_(grads, 1.0 / self.scaler.scale)
            norm = norm / self.scaler.scale
            found_inf = not bool(torch.isfinite(norm))
        else:
            found_inf = self.scaler.unscale_(grads)
        skip = found_inf and self.scaler.scale * self.scaler.backoff_factor >= MIN_SCALE
        self.scaler.update(found_inf)
        return norm, skip

    def state_dict(self) -> dict:
        return {"precision": self.name, **(self.scaler.state_dict() if self.scaler is not None else {})}

    def load_state_dict(self, state: dict | None) -> None:
        """The saved scaler state (None, or a checkpoint of another precision: the initial one)."""
        if self.scaler is not None and isinstance(state, dict) and state.get("precision") == self.name:
            self.scaler.load_state_dict(state)


FLOAT32 = Precision("32")
