"""docs/api.md's examples run as written: the Module example builds a model that trains, and
the optimizer example steps it (with the names the page imports)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_module_and_optimizer_examples_train():
    from customnn.optim import AdamW, clip_grad_norm_, cosine_lr, decay_groups, set_lr

    module_block = next(b for b in python_blocks() if "class MLP(customnn.Module)" in b)
    optim_block = next(b for b in python_blocks() if "opt = AdamW(" in b)
    ns: dict = {}
    exec(module_block, ns)
    model = ns["MLP"](hidden=16)
    assert [n for n, _ in model.named_parameters()] == ["w1", "b1", "w2", "b2"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    before = model(x, y)[1].item()
    steps = optim_block.replace("range(2000)", "range(30)")
    exec(steps, dict(AdamW=AdamW, decay_groups=decay_groups, cosine_lr=cosine_lr, set_lr=set_lr,
                     clip_grad_norm_=clip_grad_norm_, model=model, x=x, y=y))
    assert model(x, y)[1].item() < 0.5 * before  # 30 steps on one batch: it learns
