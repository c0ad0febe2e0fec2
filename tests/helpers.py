"""Helpers shared by several test files: comparing a model's gradients with its torch.nn twin's,
and running ``python -m customnn`` in a subprocess.

Test files import them as ``from helpers import ...`` (pytest puts tests/ on the path, as for
``oracle``).
"""

from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def assert_same_gradients(model, twin, transposed_names, rtol, atol) -> None:
    """Every parameter's gradient in ``model`` equals its twin counterpart's (customnn_ref/twins.py).

    The twin's tensor for our ``name`` is ``name`` or ``name.weight`` (our bare ``wte`` is an
    ``nn.Embedding`` there); the names in ``transposed_names`` are linear weights, ours
    ``(in, out)``, PyTorch's ``(out, in)``.
    """
    theirs = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        t = theirs[name] if name in theirs else theirs[f"{name}.weight"]
        g = t.grad.T if name in transposed_names else t.grad
        torch.testing.assert_close(p.grad, g, rtol=rtol, atol=atol, msg=lambda m, n=name: f"gradient of {n}: {m}")


def gpt_linear_weights(model) -> set[str]:
    """The names of a GPT's linear weights (``blocks.0.attn.c_attn.weight``, ... and an untied
    ``lm_head``): the ones stored transposed in its twin."""
    names = {n for n, _ in model.named_parameters() if n.endswith(".weight") and "ln" not in n}
    return names | {"lm_head"}
