"""Parameters without ``torch.nn``: a small base class for models built from ``customnn.ops``.

A ``Module`` finds its parameters by looking at its own attributes, the way
micrograd's ``Module.parameters()`` does:

- a ``torch.Tensor`` attribute with ``requires_grad=True`` is a parameter;
- a tensor registered with ``register_buffer`` is state that is saved but not trained
  (batch norm's running statistics);
- an attribute that is a ``Module``, or a list/tuple of ``Module``s, is a child, and its
  names are prefixed (``blocks.0.attn.c_attn.weight``).

Names follow attribute order, so a model's ``state_dict()`` keys are stable and can be
checked against a checkpoint (names, shapes and dtypes) before anything is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class Module:
    """Base class: named parameters and buffers, train/eval mode, state dicts, devices."""

    def __init__(self) -> None:
        self.training = True
        self._buffer_names: list[str] = []

    # --- what a model defines -------------------------------------------------------------
    def forward(self, *args, **kwargs):  # pragma: no cover - every model overrides it
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # --- discovery ------------------------------------------------------------------------
    def register_buffer(self, name: str, tensor: torch.Tensor) -> None:
        """Keep ``tensor`` as saved, untrained state (it never requires grad)."""
        if "_buffer_names" not in self.__dict__:
            raise RuntimeError("call Module.__init__() before register_buffer")
        setattr(self, name, tensor.detach())
        if name not in self._buffer_names:
            self._buffer_names.append(name)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, value in self.__dict__.items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(m, Module) for m in value):
                for i, m in enumerate(value):
                    yield f"{name}.{i}", m

    def modules(self) -> Iterator[Module]:
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def _own_tensors(self) -> Iterator[tuple[str, torch.Tensor, bool]]:
        """(name, tensor, is_buffer) for the tensors held directly by this module."""
        buffers = set(self.__dict__.get("_buffer_names", ()))
        for name, value in self.__dict__.items():
            if isinstance(value, torch.Tensor):
                if name in buffers:
                    yield name, value, True
                elif value.requires_grad:
                    yield name, value, False

    def _named_tensors(self, prefix: str = "") -> Iterator[tuple[str, torch.Tensor, bool, Module, str]]:
        for name, t, is_buffer in self._own_tensors():
            yield prefix + name, t, is_buffer, self, name
        for cname, child in self.named_children():
            yield from child._named_tensors(prefix + cname + ".")

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        seen: set[int] = set()
        for name, t, is_buffer, _, _ in self._named_tensors():
            if not is_buffer and id(t) not in seen:  # a tied weight is listed once
                seen.add(id(t))
                yield name, t

    def parameters(self) -> list[torch.Tensor]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, t, is_buffer, _, _ in self._named_tensors():
            if is_buffer:
                yield name, t

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- mode -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers by name, detached (tied tensors appear once)."""
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for name, t, _, _, _ in self._named_tensors():
            if id(t) in seen:
                continue
            seen.add(id(t))
            out[name] = t.detach()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``state`` into this module, in place, after checking names, shapes and dtypes.

        Raises ``ValueError`` naming every missing, unexpected or mismatched entry; nothing
        is copied unless everything matches.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        problems = []
        if missing:
            problems.append(f"missing: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected: {', '.join(unexpected)}")
        for k, t in own.items():
            if k in state:
                s = state[k]
                if not isinstance(s, torch.Tensor):
                    problems.append(f"{k}: not a tensor")
                elif tuple(s.shape) != tuple(t.shape):
                    problems.append(f"{k}: shape {tuple(s.shape)} in the checkpoint, {tuple(t.shape)} in the model")
                elif s.dtype != t.dtype:
                    problems.append(f"{k}: dtype {s.dtype} in the checkpoint, {t.dtype} in the model")
        if problems:
            raise ValueError("state does not match the model (" + "; ".join(problems) + ")")
        with torch.no_grad():
            for k, t in own.items():
                t.copy_(state[k])

    def to(self, device=None, dtype=None) -> Module:
        """Move (and optionally cast) every parameter and buffer, keeping tied tensors tied."""
        moved: dict[int, torch.Tensor] = {}
        for _, t, is_buffer, owner, attr in list(self._named_tensors()):
            if id(t) not in moved:
                new = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else None)
                if not is_buffer:
                    new.requires_grad_(True)
                moved[id(t)] = new
            setattr(owner, attr, moved[id(t)])
        return self
