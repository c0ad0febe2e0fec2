"""``customnn bench``'s mixed-precision rows: each model's training step under bfloat16 autocast.

Two rows per model (``bench.py``'s MODELS, the batches of ``customnn train``):

- ``amp``: ours under ``torch.autocast(dtype=torch.bfloat16)`` against the torch.nn twin under
  the same autocast (float32 weights and AdamW on both sides, as ``--precision bf16`` trains);
- ``amp-self``: ours in bf16 autocast against ours in float32, the same model and optimizer,
  alternating (below 1: mixed precision is faster).

    python benchmarks/bench.py --only amp --threads 1,0
"""

from __future__ import annotations

import torch

# the targets: ours / twin under bf16 autocast, and the default CNN's bf16 / float32 step
TARGETS = {"cnn": 1.2, "gpt": 1.1, "cnn default self": 1 / 1.5}


def amp_step(net, optimizer, x, y, device: torch.device, dtype=torch.bfloat16):
    """One training step with the forward under autocast to ``dtype`` (None: float32 throughout)."""
    def run():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            _, loss = net(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return run


def bench_amp(names, device, reps, sample_s, parts, compare, progress) -> list[dict]:
    """The ``amp`` and ``amp-self`` rows of ``names``; ``parts``, ``compare`` and ``progress`` are
    bench.py's ``training_parts``, ``compare`` and ``_progress``."""
    rows = []
    for name in names:
        model, opt, twin, topt, x, y, size = parts(name, device)
        ours, theirs = amp_step(model, opt, x, y, device), amp_step(twin, topt, x, y, device)
        rows.append(dict(group="amp", name=f"{name} bf16", size=size, **compare(ours, theirs, device, reps, sample_s)))
        progress(rows[-1])
        full = amp_step(model, opt, x, y, device, dtype=None)
        rows.append(dict(group="amp-self", name=f"{name} bf16/f32", size=size,
                         **compare(ours, full, device, reps, sample_s)))
        progress(rows[-1])
    return rows


def check_targets(rows: list[dict]) -> list[dict]:
    checks = []
    for row in rows:
        model = row["name"].split(" bf16")[0]
        if row["group"] == "amp":
            target = TARGETS[model.split()[0]]
            checks.append(dict(what=f"{model} training step in bf16 autocast, custom / torch", value=row["ratio"],
                               target=f"<= {target}", met=row["ratio"] <= target))
        elif row["group"] == "amp-self" and f"{model} self" in TARGETS:
            target = TARGETS[f"{model} self"]
            checks.append(dict(what=f"{model} training step, custom bf16 / custom float32", value=row["ratio"],
                               target=f"<= {target:.3f}", met=row["ratio"] <= target))
    return checks
