"""Helpers shared by several test files: comparing a model's gradients with its torch.nn twin's,
running ``python -m customnn`` in a subprocess (and pressing Ctrl-C in it), reading run folders.

Test files import them as ``from helpers import ...`` (pytest puts tests/ on the path, as for
``oracle``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    names = {n for n, _ in model.named_parameters()
             if n.endswith(".weight") and "ln" not in n and "_norm" not in n}  # not a norm's gain
    return names | {"lm_head"}


# --- the command line in a subprocess -------------------------------------------------------
def customnn_env() -> dict[str, str]:
    """The environment for ``python -m customnn``: one thread (the test models are tiny, and on a
    busy shared machine more threads only fight for cores), and this checkout on the path."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run_customnn(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m customnn ARGS`` from the repository root; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "customnn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=customnn_env())


def interrupt_once_training(args, folder: Path, metrics_glob: str, rows: int, wait_s: float):
    """Start ``python -m customnn ARGS``; once a ``metrics.jsonl`` matching ``folder / metrics_glob``
    has ``rows`` lines, press Ctrl-C (SIGINT) and wait (60 s at most) for the process to end.

    Returns ``(metrics.jsonl, exit code, stdout, stderr)``; the path is None, and the process
    killed, when no such file had ``rows`` lines after ``wait_s`` seconds.
    """
    proc = subprocess.Popen([sys.executable, "-m", "customnn", *map(str, args)], cwd=REPO, env=customnn_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + wait_s
    while time.time() < deadline:  # wait until training is under way
        found = list(folder.glob(metrics_glob))
        if found and len(found[0].read_text().splitlines()) >= rows:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
            return found[0], proc.returncode, out, err
        time.sleep(0.05)
    proc.kill()
    out, err = proc.communicate()
    return None, proc.returncode, out, err


# --- run folders ------------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, loss)`` of every training row of a CNN run's ``metrics.jsonl``."""
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r["kind"] == "train"]
