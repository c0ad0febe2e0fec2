"""The benchmark harness: the torch.nn twins (customnn_ref/twins.py) compute what our models
compute, in float64; ``customnn bench`` runs in-process and writes a JSON file of ratios; the
memory probe sees a training step's memory."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from customnn.cli import main as cli_main
from customnn.models.cnn import CustomCNN
from customnn.models.gpt import GPT, GPTConfig
from customnn_ref.twins import cnn_twin, copy_weights, gpt_twin, TwinGPT
from helpers import assert_same_gradients, gpt_linear_weights

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("arch,training", [("seed", True), ("default", True), ("default", False)])
def test_cnn_twin_matches_our_model_float64(arch, training):
    # Dropout draws its own masks in the twin, so training mode compares without it.
    model = CustomCNN(arch, seed=2, dropout=0.0 if training else 0.3).to(dtype=torch.float64)
    if arch == "default" and not training:  # eval mode uses the running statistics: make them non-trivial
        for s in model.stages:
            s.bn.running_mean.uniform_(-0.5, 0.5)
            s.bn.running_var.uniform_(0.5, 2.0)
    model.train(training)
    twin = cnn_twin(model)
    assert twin.training == training and next(twin.parameters()).dtype == torch.float64
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    logits, loss = model(x, y)
    tlogits, tloss = twin(x, y)
    torch.testing.assert_close(logits, tlogits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, tloss, rtol=1e-12, atol=1e-12)
    loss.backward()
    tloss.backward()
    assert_same_gradients(model, twin, {"fc.weight"}, rtol=1e-10, atol=1e-12)
    if arch == "default" and training:  # batch norm's running statistics moved the same way
        for s, ts in zip(model.stages, twin.stages):
            torch.testing.assert_close(s.bn.running_var, ts.bn.running_var, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias,tie", [(True, True), (False, True), (True, False)])
def test_gpt_twin_matches_our_model_float64(bias, tie):
    cfg = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=bias, tie_weights=tie)
    model = GPT(cfg, seed=4).to(dtype=torch.float64)
    twin = gpt_twin(model)
    idx = torch.randint(0, 13, (3, 12))
    targets = torch.randint(0, 13, (3, 12))
    logits, loss = model(idx, targets)
    tlogits, tloss = twin(idx, targets)
    torch.testing.assert_close(logits, tlogits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, tloss, rtol=1e-12, atol=1e-12)
    loss.backward()
    tloss.backward()
    assert_same_gradients(model, twin, gpt_linear_weights(model), rtol=1e-10, atol=1e-12)


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
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["threads"] == 1
    rows = result["results"]
    assert [r["name"] for r in rows] == ["attention T=64", "attention T=256", "attention T=1024"]
    for r in rows:
        assert r["custom_ms"] > 0 and r["torch_ms"] > 0 and r["reps"] == 2
        assert r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"]
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
    printed = capsys.readouterr().out
    assert "attention T=1024" in printed and "custom ms" in printed


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
