"""The CNN training loop on real MNIST: it learns, it leaves a complete run folder, it resumes
exactly (mid-epoch and at an epoch boundary, with dropout, shifts and batch norm in play), it
stops cleanly on divergence keeping the last good checkpoint, and it refuses bad settings."""

from __future__ import annotations

import json
import re

import pytest
import torch

from customnn.data.augment import random_shift
from customnn.core.errors import UserError
from customnn.models.cnn import CustomCNN
from customnn.train import cnn
from customnn.train.cnn import CNNTrainConfig, train
from customnn.train.checkpoint import load_checkpoint
from helpers import train_losses

TRAIN_LINE = re.compile(r"^Train Epoch: \d+ \[\d+/\d+ \(\d+%\)\]\tLoss: \d+\.\d{6}$")
TEST_LINE = re.compile(r"^(Test|Validation) set: Average loss: \d+\.\d{4}, Accuracy: \d+/\d+ \(\d+\.\d{2}%\)$")


pytestmark = pytest.mark.usefixtures("one_thread")  # small steps: one thread


def test_real_short_training_learns_and_writes_the_run_folder(tmp_path, capsys):
    result = train(CNNTrainConfig(arch="seed", train_samples=2560, test_samples=1000, epochs=2,
                                  out=str(tmp_path)), quiet=False)
    assert result["test_accuracy"] > 85.0  # chance is 10%
    assert result["n_test"] == 1000 and 850 < result["correct"] <= 1000
    assert len(result["epoch_times"]) == 2 and result["finished"] and not result["interrupted"]
    run = result["run_dir"]
    for name in ("config.json", "metrics.jsonl", "train.log", "last.safetensors", "best.safetensors",
                 "loss.png", "report.md"):
        assert (run / name).is_file(), name
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    log = (run / "train.log").read_text().splitlines()
    train_lines = [line for line in log if line.startswith("Train Epoch")]
    val_lines = [line for line in log if line.startswith("Validation set")]
    test_lines = [line for line in log if line.startswith("Test set")]
    assert len(val_lines) == 2 and all(TEST_LINE.match(line) for line in val_lines)  # after each epoch
    assert len(test_lines) == 1 and TEST_LINE.match(test_lines[0]) and log[-1] == test_lines[0]  # once, at the end
    assert val_lines[-1].endswith(f"/5000 ({result['val_accuracy']:.2f}%)")
    assert len(train_lines) == 2 * 4 and all(TRAIN_LINE.match(line) for line in train_lines)  # 40 batches, every 10th
    assert train_lines[1].startswith("Train Epoch: 1 [640/2560 (25%)]")
    assert test_lines[-1] in capsys.readouterr().out  # the same lines on stdout
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "cnn" and config["lr"] == cnn.DEFAULT_LR[("seed", "adamw")]
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt.meta["model"] == "cnn" and ckpt.meta["config"]["arch"] == "seed" and ckpt.meta["step"] == 80
    assert f"{result['correct']}/1000" in (run / "report.md").read_text()


def test_same_seed_same_run(tmp_path):
    cfg = dict(arch="default", width=4, train_samples=256, test_samples=100, epochs=1, batch_size=32,
               log_interval=1, out=str(tmp_path))
    a = train(CNNTrainConfig(**cfg), quiet=True)
    b = train(CNNTrainConfig(**cfg), quiet=True)
    c = train(CNNTrainConfig(**cfg, seed=2), quiet=True)
    assert train_losses(a["run_dir"]) == train_losses(b["run_dir"])
    assert train_losses(a["run_dir"]) != train_losses(c["run_dir"])


@pytest.mark.parametrize("stop_after", [5, 8])  # mid-epoch, and exactly at the end of epoch 1
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, stop_after):
    cfg = dict(arch="default", width=4, train_samples=256, test_samples=200, epochs=2, batch_size=32,
               log_interval=1, dropout=0.3, shift=2, schedule="cosine", out=str(tmp_path))
    full = train(CNNTrainConfig(**cfg), quiet=True)
    part = train(CNNTrainConfig(**cfg, max_steps=stop_after), quiet=True)
    assert not part["finished"] and part["step"] == stop_after
    assert len(train_losses(part["run_dir"])) == stop_after
    resumed = train(CNNTrainConfig(resume=str(part["run_dir"])), quiet=True)
    assert resumed["finished"] and resumed["run_dir"] == part["run_dir"] and resumed["step"] == 16
    assert train_losses(resumed["run_dir"]) == train_losses(full["run_dir"])  # exactly, step for step
    assert [t["loss"] for t in resumed["vals"]] == [t["loss"] for t in full["vals"]]
    assert resumed["test_accuracy"] == full["test_accuracy"]
    a, b = load_checkpoint(full["run_dir"] / "last.safetensors"), load_checkpoint(resumed["run_dir"] / "last.safetensors")
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k


def test_affine_augmentation_and_label_smoothing_train_and_resume_exactly(tmp_path, monkeypatch):
    """Rotations, scalings and fractional shifts come from the checkpointed augmentation generator,
    and the training loss is smoothed (the test loss is not): a resumed run is the same run."""
    smoothing = []
    cross_entropy = cnn.ops.cross_entropy

    def spy(logits, target, *args, **kwargs):
        smoothing.append(kwargs.get("label_smoothing", 0.0))
        return cross_entropy(logits, target, *args, **kwargs)

    monkeypatch.setattr(cnn.ops, "cross_entropy", spy)
    cfg = dict(arch="default", width=4, train_samples=256, test_samples=200, epochs=2, batch_size=32,
               log_interval=1, shift=2, rotate=12.0, scale=0.1, label_smoothing=0.1, out=str(tmp_path))
    full = train(CNNTrainConfig(**cfg), quiet=True)
    assert smoothing.count(0.1) == 16 and set(smoothing) == {0.0, 0.1}  # every step smoothed, the tests not
    part = train(CNNTrainConfig(**cfg, max_steps=5), quiet=True)
    resumed = train(CNNTrainConfig(resume=str(part["run_dir"])), quiet=True)
    assert resumed["finished"] and train_losses(resumed["run_dir"]) == train_losses(full["run_dir"])
    assert resumed["test_accuracy"] == full["test_accuracy"]
    plain = train(CNNTrainConfig(**{**cfg, "rotate": 0.0, "scale": 0.0, "label_smoothing": 0.0}), quiet=True)
    assert train_losses(plain["run_dir"]) != train_losses(full["run_dir"])
    assert "rotate 12 degrees, scale 0.1; label smoothing 0.1" in (full["run_dir"] / "report.md").read_text()


def test_resume_refuses_new_settings_and_missing_runs(tmp_path):
    part = train(CNNTrainConfig(arch="seed", train_samples=64, test_samples=10, max_steps=1, out=str(tmp_path / "r")),
                 quiet=True)
    with pytest.raises(UserError, match="--lr cannot change when resuming"):
        train(CNNTrainConfig(resume=str(part["run_dir"]), lr=0.1), quiet=True)
    resumed = train(CNNTrainConfig(resume=str(part["run_dir"]), test_samples=20), quiet=True)  # a free setting
    assert resumed["finished"] and resumed["n_test"] == 20
    with pytest.raises(UserError, match="run folder not found"):
        train(CNNTrainConfig(resume=str(tmp_path / "nope")), quiet=True)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no last.safetensors"):
        train(CNNTrainConfig(resume=str(tmp_path)), quiet=True)


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = dict(arch="seed", train_samples=128, test_samples=100, epochs=3, batch_size=32, out=str(tmp_path))
    good = train(CNNTrainConfig(**cfg, max_steps=4), quiet=True)  # what epoch 1's checkpoint holds
    calls = {"n": 0}
    forward = CustomCNN.forward

    def poisoned(self, x, targets=None):  # step 6 (epoch 2, batch 2) produces a NaN loss
        logits, loss = forward(self, x, targets)
        calls["n"] += targets is not None  # training steps only, not evaluation
        if calls["n"] == 6 and targets is not None:
            loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(CustomCNN, "forward", poisoned)
    with pytest.raises(UserError) as e:
        train(CNNTrainConfig(**cfg), quiet=True)
    message = str(e.value)
    assert "diverged at step 6 (epoch 2, batch 2)" in message and "lower --lr" in message and "nan" in message
    runs = sorted(p for p in tmp_path.iterdir() if p != good["run_dir"])
    kept = load_checkpoint(runs[-1] / "last.safetensors")
    assert kept.meta["step"] == 4 and kept.meta["epoch"] == 2  # the end of epoch 1, untouched
    ref = load_checkpoint(good["run_dir"] / "last.safetensors")
    for k, v in ref.model_state.items():
        assert torch.equal(v, kept.model_state[k]), k
    assert "diverged at step 6" in (runs[-1] / "train.log").read_text()


def test_huge_learning_rate_is_reported_as_divergence(tmp_path):
    with pytest.raises(UserError, match=r"diverged at step \d+ .*no checkpoint had been saved yet.*lower --lr"):
        train(CNNTrainConfig(arch="seed", train_samples=256, test_samples=100, epochs=1, lr=1e6,
                             out=str(tmp_path)), quiet=True)


@pytest.mark.parametrize("change, message", [
    (dict(epochs=0), "--epochs must be >= 1"),
    (dict(epochs=-3), "--epochs must be >= 1"),
    (dict(batch_size=500, train_samples=100), "larger than the 100 training images"),
    (dict(arch="resnet"), "--arch must be one of"),
    (dict(optimizer="lbfgs"), "--optimizer must be one of"),
    (dict(lr=-1.0), "--lr must be a positive number"),
    (dict(lr=float("nan")), "--lr must be a positive number"),
    (dict(train_samples=70000), "--train-samples 70000 is more than the 55000 training images left after "
                                "--val-samples 5000"),
    (dict(val_samples=5000, train_samples=55001), "more than the 55000 training images left"),
    (dict(val_samples=60000), "--val-samples 60000 leaves no training images: MNIST's training set has 60000"),
    (dict(val_samples=70000), "--val-samples 70000 leaves no training images"),
    (dict(val_samples=0), "--val-samples must be >= 1"),
    (dict(test_samples=0), "--test-samples must be >= 1"),
    (dict(shift=20), "--shift"),
    (dict(dropout=1.0), "--dropout"),
    (dict(rotate=-5.0), "--rotate must be between 0 and 180"),
    (dict(rotate=float("nan")), "--rotate must be between 0 and 180"),
    (dict(scale=1.0), "--scale must be in [0, 1)"),
    (dict(label_smoothing=1.0), "--label-smoothing must be in [0, 1)"),
])
def test_bad_settings_are_one_line_errors(change, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        CNNTrainConfig(**change).resolved()
    assert "\n" not in str(e.value)


def test_arch_defaults_fill_only_what_was_not_given():
    seed = CNNTrainConfig(arch="seed").resolved()
    assert (seed.epochs, seed.shift, seed.lr) == (3, 0, cnn.DEFAULT_LR[("seed", "adamw")])
    default = CNNTrainConfig(arch="default", epochs=2, optimizer="sgd").resolved()
    assert default.epochs == 2 and default.shift == 2 and default.lr == cnn.DEFAULT_LR[("default", "sgd")]
    # the recipe that reached 99.6% on two seeds in ten minutes (README)
    assert (default.rotate, default.scale, default.label_smoothing, default.width) == (10.0, 0.1, 0.1, 32)
    assert CNNTrainConfig().resolved().time_budget == 580.0 and CNNTrainConfig().resolved().epochs == 30
    assert (seed.rotate, seed.scale, seed.label_smoothing) == (0.0, 0.0, 0.0)  # the seed's plain training
    given = CNNTrainConfig(rotate=0.0, scale=0.0, label_smoothing=0.0, width=24).resolved()
    assert (given.rotate, given.scale, given.label_smoothing, given.width) == (0.0, 0.0, 0.0, 24)


def test_random_shift_moves_whole_images_within_bounds():
    g = torch.Generator().manual_seed(0)
    x = torch.full((64, 1, 28, 28), -0.4242)
    x[:, :, 10:18, 10:18] = 2.0  # a centred square
    y = random_shift(x, 2, g)
    assert y.shape == x.shape
    ink = (y[:, 0] > 1).nonzero()
    for n in range(64):
        rows, cols = ink[ink[:, 0] == n, 1], ink[ink[:, 0] == n, 2]
        assert len(rows) == 64  # nothing cut off, nothing added
        assert 8 <= rows.min() <= 12 and 8 <= cols.min() <= 12
    assert len({(int(r.min()), int(c.min())) for r, c in
                ((ink[ink[:, 0] == n, 1], ink[ink[:, 0] == n, 2]) for n in range(64))}) > 10  # varied offsets


def test_time_budget_and_grad_clip_come_from_the_engine_for_the_cnn_too(tmp_path, capsys):
    """The engine's features are every model's: the CNN plans its steps to a time budget (its
    cosine schedule fitted to them) and ends with a closing evaluation, as the GPT does."""
    budget = 10.0  # the planner keeps 5 s for the closing outputs
    result = train(CNNTrainConfig(arch="seed", train_samples=2560, test_samples=200, epochs=1000, grad_clip=1.0,
                                  time_budget=budget, out=str(tmp_path)), quiet=False)
    out = capsys.readouterr().out
    assert "time budget 10 s: " in out and " steps planned at step 15" in out
    assert 15 < result["step"] < 1000 * 40 and result["finished"]
    assert result["time_s"] < budget + 3
    assert out.splitlines()[-1].startswith("Test set: ")  # the closing evaluation, mid-epoch
    ckpt = load_checkpoint(result["run_dir"] / "last.safetensors")
    assert ckpt.state["engine"]["total_steps"] == result["step"] == ckpt.meta["step"]
