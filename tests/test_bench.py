"""The benchmark harness: copying weights into a torch.nn twin refuses one of another shape;
``customnn bench`` runs in-process and writes a JSON file of ratios; the memory probe sees a
training step's memory. (That the twins compute what our models compute is tested in
tests/test_cnn_model.py and tests/test_gpt_model.py.)"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from customnn.commands.cli import main as cli_main
from customnn.models.gpt import GPT, GPTConfig
from customnn_ref.twins import TwinGPT, copy_weights

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_copy_weights_refuses_a_twin_of_another_shape():
    small = GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=1, n_head=2, n_embd=16))
    wider = TwinGPT(GPTConfig(vocab_size=13, block_size=16, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(ValueError, match="shape"):
        copy_weights(small, wider)
    deeper = TwinGPT(GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16))
    with pytest.raises(KeyError, match="no counterpart"):
        copy_weights(small, deeper)


def test_customnn_bench_quick_writes_json_with_ratios(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "b.json"
    code = cli_main(["bench", "--quick", "--only", "attention", "--reps", "2", "--json", str(out)])
    assert code == 0
    assert torch.get_num_threads() == threads  # the in-process run put the thread count back
    result = json.loads(out.read_text())
    assert result["groups"] == ["attention"]
    # by default at 1 thread, then at torch's default thread count (what a user gets)
    assert result["machine"]["torch"] == torch.__version__ and result["threads"] == [1, threads]
    rows = result["results"]
    names = ["attention T=64", "attention T=256", "attention T=1024"]
    assert [(r["name"], r["threads"]) for r in rows] == [(n, t) for t in (1, threads) for n in names]
    for r in rows:
        assert r["custom_ms"] > 0 and r["torch_ms"] > 0 and r["reps"] == 2
        assert r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"]
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
    printed = capsys.readouterr().out
    assert "attention T=1024" in printed and "custom ms" in printed
    assert "1 thread(s)" in printed and f"{threads} thread(s)" in printed


def test_customnn_bench_rejects_an_unknown_group(capsys):
    assert cli_main(["bench", "--only", "cnn,speedy"]) == 2
    assert "speedy" in capsys.readouterr().err


def test_memory_probe_sees_a_training_step(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench

    got = bench.memory_child("cnn seed", "custom", torch.device("cpu"), steps=1)
    assert got["peak_mb"] >= got["base_mb"] > 50  # torch itself is loaded
    assert got["step_mb"] >= 0 and got["how"] == "VmHWM after clear_refs"
    sys.modules.pop("bench", None)
