"""Checkpoints: round trips, refusal of damaged or foreign files, and crash safety.

A checkpoint must survive a process killed at any moment during a save (SIGKILL), a failed
write (disk full) must keep the previous checkpoint, and no file from elsewhere is ever
unpickled or used damaged.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from customnn.core.errors import UserError
from customnn.train import checkpoint as ckptmod
from customnn.core import runtime
from customnn.train.checkpoint import load_checkpoint, save_checkpoint
from customnn.train.rundir import RunDir


def sample_state():
    return {
        "optim": {"state": {0: {"step": 3, "exp_avg": torch.randn(4)}, 2: {"step": 3, "exp_avg": torch.randn(2, 2)}},
                  "param_groups": [{"lr": 0.1, "betas": [0.9, 0.99], "params": [0, 1, 2]}]},
        "rng": runtime.rng_state({"data": torch.Generator().manual_seed(5)}),
        "epoch": 2, "best": float("inf"), "note": None,
    }


def test_round_trip_keeps_weights_meta_and_nested_state(tmp_path):
    weights = {"conv1.weight": torch.randn(6, 1, 5, 5), "fc.bias": torch.randn(10, dtype=torch.float64)}
    state = sample_state()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, weights, {"model": "cnn", "config": {"arch": "seed"}, "step": 7}, state)
    ck = load_checkpoint(path)
    assert ck.meta["model"] == "cnn" and ck.meta["config"] == {"arch": "seed"} and ck.meta["step"] == 7
    for k, v in weights.items():
        assert torch.equal(ck.model_state[k], v) and ck.model_state[k].dtype == v.dtype
    assert set(ck.state["optim"]["state"]) == {0, 2}  # int keys come back as ints
    assert torch.equal(ck.state["optim"]["state"][2]["exp_avg"], state["optim"]["state"][2]["exp_avg"])
    assert ck.state["epoch"] == 2 and ck.state["best"] == float("inf") and ck.state["note"] is None
    g = torch.Generator()
    runtime.set_rng_state(ck.state["rng"], {"data": g})
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("damage", ["truncate", "random", "empty", "foreign", "header"])
def test_damaged_or_foreign_files_are_refused_in_one_line(tmp_path, damage):
    path = tmp_path / "x.safetensors"
    save_checkpoint(path, {"w": torch.randn(100, 100)}, {"model": "gpt", "config": {}})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(5000))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":  # a valid safetensors file, but not ours
        from safetensors.torch import save_file

        save_file({"w": torch.randn(3)}, str(path))
    elif damage == "header":  # our header, corrupted in the middle
        path.write_bytes(data[:20] + b"\xff" * 10 + data[30:])
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_checkpoint_and_run_folder_are_clear(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="not found"):
        ckptmod.resolve_checkpoint(tmp_path / "no-run")
    with pytest.raises(UserError, match="no checkpoint"):
        ckptmod.resolve_checkpoint(tmp_path)
    with pytest.raises(UserError, match="not a run folder"):
        RunDir.open(tmp_path)


def test_a_header_over_the_bound_is_refused_in_one_line(tmp_path, monkeypatch):
    """A well-formed file whose header is past MAX_HEADER_BYTES is refused before the header is parsed."""
    import json

    from safetensors.torch import save

    path = tmp_path / "big.safetensors"
    meta = {"format": ckptmod.FORMAT, "version": ckptmod.FORMAT_VERSION, "model": "gpt", "config": {}, "step": 0,
            "padding": "x" * ckptmod.MAX_HEADER_BYTES}
    path.write_bytes(save({"model.w": torch.zeros(1)}, metadata={"customnn": json.dumps(meta)}))
    with pytest.raises(UserError, match=r"its header is 32\.0 MiB, more than the 32 MiB") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    # and none is written: a save that would pass the bound keeps the previous checkpoint
    save_checkpoint(path, {"w": torch.zeros(1)}, {"model": "cnn", "config": {}, "step": 1})
    monkeypatch.setattr(ckptmod, "MAX_HEADER_BYTES", 4096)
    with pytest.raises(UserError, match=r"its header would be .* MiB, more than the 0 MiB .* previous checkpoint"):
        save_checkpoint(path, {"w": torch.zeros(1)}, {"model": "cnn", "config": {}, "step": 2, "note": "x" * 5000})
    monkeypatch.undo()
    assert load_checkpoint(path).meta["step"] == 1


def test_the_largest_legitimate_header_loads(tmp_path):
    """A header near MAX_HEADER_BYTES, of what it is computed for: a GPT over every character the text
    loader accepts (1,112,064 Unicode scalar values), its tensors with AdamW's state (100 blocks: the
    1000 of the bound take seconds to save and load) and 100,000 evaluation rows."""
    from customnn.models.gpt import GPT, GPTConfig
    from customnn.optim import AdamW
    from customnn.train.tasks import load_model

    vocab = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert len(vocab) == 1_112_064
    config = GPTConfig(vocab_size=len(vocab), block_size=4, n_layer=100, n_head=1, n_embd=2)
    model = GPT(config, seed=0)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    rows = [{"step": 10 * i, "time": 12345.678, "train_time": 12000.123, "train_loss": 1.2345678901234567,
             "val_loss": 1.2345678901234567} for i in range(100_000)]  # as the engine's evaluation rows
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model.state_dict(), {"model": "gpt", "config": config.to_dict(), "vocab": vocab, "step": 0},
                    {"engine": {"evals": rows}, "optimizer": optimizer.state_dict()})
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
    assert 28 * 2**20 < size <= ckptmod.MAX_HEADER_BYTES
    model, loaded_vocab, _, ckpt = load_model(path)
    assert loaded_vocab.chars == vocab and model.config.vocab_size == len(vocab)
    assert ckpt.state["engine"]["evals"][-1] == rows[-1]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    good = {"w": torch.arange(10.0)}
    save_checkpoint(path, good, {"model": "cnn", "config": {}, "step": 1})
    before = path.read_bytes()

    real_open = open

    def full_disk_open(file, mode="r", *a, **k):
        if "w" in mode and str(file).endswith(f".tmp-{os.getpid()}"):
            f = real_open(file, mode, *a, **k)

            class Full:
                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    f.close()

                def write(self, data):
                    raise OSError(errno.ENOSPC, "No space left on device")

            return Full()
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(UserError, match="No space left on device"):
        save_checkpoint(path, {"w": torch.zeros(10)}, {"model": "cnn", "config": {}, "step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path).meta["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temporary left behind


def test_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"model": "cnn", "config": {}, "step": 1})

    def no_permission(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", no_permission)
    with pytest.raises(UserError, match="Permission denied"):
        save_checkpoint(path, {"w": torch.zeros(3)}, {"model": "cnn", "config": {}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path).meta["step"] == 1
    assert len(list(tmp_path.iterdir())) == 1


SAVER = textwrap.dedent("""
    import sys, torch
    from customnn.train.checkpoint import save_checkpoint
    path = sys.argv[1]
    step = 0
    print("ready", flush=True)
    while True:
        step += 1
        w = torch.full((1024, 1024), float(step))  # 4 MB: a save takes a while
        save_checkpoint(path, {"w": w}, {"model": "cnn", "config": {}, "step": step})
""")


def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": torch.zeros(1024, 1024)}, {"model": "cnn", "config": {}, "step": 0})
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    last_step = 0
    for delay in [0.05, 0.13, 0.21, 0.34, 0.5, 0.08]:
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ck = load_checkpoint(path)  # never damaged
        step = ck.meta["step"]
        assert torch.equal(ck.model_state["w"], torch.full((1024, 1024), float(step)))
        last_step = max(last_step, step)
    assert last_step > 0, "the saver never completed a save; the test proves nothing"


def test_allocator_tuning_is_accepted_by_glibc():
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert runtime.tune_allocator() is True
    else:
        assert runtime.tune_allocator() in (True, False)


def test_release_free_memory_hands_freed_heap_pages_back():
    """Freed blocks kept inside malloc's heap (below the tuned mmap threshold, pinned by live
    blocks above them) stay resident until ``release_free_memory`` returns them."""
    import platform

    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        assert runtime.release_free_memory() in (True, False)
        return

    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    assert runtime.tune_allocator()  # blocks up to 32 MB come from the heap, which keeps 128 MB free
    blocks = [torch.ones(2**20) for _ in range(40)]  # 4 MB each, every page touched
    before_free = rss_mb()
    del blocks[::2]  # every other one: each freed block lies between two live ones
    held = rss_mb()
    assert runtime.release_free_memory() is True
    after = rss_mb()
    assert before_free - held < 40, "the heap gave the blocks back at once; the test proves nothing"
    assert held - after > 60, (before_free, held, after)  # 80 MB were free
