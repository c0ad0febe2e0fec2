"""A model of one's own, in one's own file, trained by the engine through ``--model FILE.py:CLASS``:
trained, resumed exactly, evaluated, predicted or sampled, under torchrun, and every refusal
along the way one line naming what to change (exit 2). The files are written here as a user
writes them, without ``from __future__ import annotations``."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from customnn.commands.cli import main
from customnn.train.checkpoint import load_checkpoint
from helpers import REPO, customnn_env, train_losses
from test_cli_cnn import digit_png

MNIST_NET = '''
import torch
import customnn
from customnn import init, ops


class TinyNet(customnn.Module):
    """flatten -> linear 784->hidden -> relu -> dropout -> linear hidden->10"""

    def __init__(self, hidden: int = 16, dropout: float = 0.1, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dropout = dropout
        self.w1 = init.fan_in_uniform((784, hidden), 784, g)
        self.b1 = init.zeros((hidden,))
        self.w2 = init.fan_in_uniform((hidden, 10), hidden, g)
        self.b2 = init.zeros((10,))

    def forward(self, x, targets=None):
        h = ops.relu(ops.linear(ops.flatten(x), self.w1, self.b1))
        h = ops.dropout(h, self.dropout, self.training)  # the global generator: saved in checkpoints
        logits = ops.linear(h, self.w2, self.b2)
        return logits, None if targets is None else ops.cross_entropy(logits, targets)


class NotAModel:
    pass
'''

TEXT_NET = '''
import torch
import customnn
from customnn import init, ops


class Bigram(customnn.Module):
    def __init__(self, vocab_size: int, block_size: int, scale: float = 0.02, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.block_size = block_size
        self.table = (torch.randn(vocab_size, vocab_size, generator=g) * scale).requires_grad_()

    def forward(self, idx, targets=None):
        logits = ops.embedding(idx, self.table)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss
'''

CNN = ["train", "cnn", "--train-samples", 96, "--test-samples", 50, "--batch-size", 32, "--epochs", 2,
       "--log-interval", 1, "--device", "cpu", "--quiet"]
GPT = ["train", "gpt", "--preset", "tiny", "--max-iters", 6, "--eval-interval", 3, "--eval-iters", 2,
       "--log-interval", 1, "--device", "cpu", "--quiet"]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *args, fragments=()):
    code, _, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("customnn: error:"), (code, err)
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "mynet.py"
    path.write_text(MNIST_NET)
    return path


def only_run(folder):
    (run,) = folder.iterdir()
    return run


def test_a_model_of_one_s_own_trains_resumes_exactly_evaluates_and_predicts(tmp_path, net, capsys):
    model = f"{net}:TinyNet"
    code, _, _ = cli(capsys, *CNN, "--model", model, "--model-arg", "hidden=12", "--out", tmp_path / "whole")
    assert code == 0
    whole = only_run(tmp_path / "whole")
    config = json.loads((whole / "config.json").read_text())
    assert config["model_file"] == str(net) and config["model_class"] == "TinyNet"
    assert config["model_args"] == {"hidden": 12}
    header = load_checkpoint(whole / "last.safetensors").meta
    assert (header["model_file"], header["model_class"], header["model_args"]) == (str(net), "TinyNet", {"hidden": 12})
    for name in ("metrics.jsonl", "loss.png", "report.md", "best.safetensors"):
        assert (whole / name).is_file()

    code, _, err = cli(capsys, *CNN, "--model", model, "--model-arg", "hidden=12", "--max-steps", 4,
                       "--out", tmp_path / "parts")
    part = only_run(tmp_path / "parts")
    assert code == 0 and f"customnn train cnn --model {net}:TinyNet --resume {part}" in err
    refused(capsys, "train", "cnn", "--resume", part, fragments=(f"{net}:TinyNet", "--model"))
    code, _, _ = cli(capsys, "train", "cnn", "--model", model, "--resume", part, "--quiet")
    assert code == 0
    assert train_losses(part) == train_losses(whole)  # the same losses, dropout included

    code, out, _ = cli(capsys, "eval", part, "--model", model, "--test-samples", 50, "--quiet")
    assert code == 0 and out.startswith("Test set: Average loss:")
    refused(capsys, "eval", part, fragments=(f"{net}:TinyNet", "--model"))
    digit_png(tmp_path / "seven.png", 0, invert=True, scale=3)
    code, out, _ = cli(capsys, "predict", part, tmp_path / "seven.png", "--model", model)
    assert code == 0 and out.startswith(f"{tmp_path / 'seven.png'}: ") and out.strip().endswith("%)")
    refused(capsys, "predict", part, tmp_path / "seven.png", fragments=("--model",))


def test_from_python_in_a_few_lines(tmp_path, net):
    import customnn.train

    result = customnn.train.fit(f"{net}:TinyNet", task="mnist", model_args={"hidden": 8}, epochs=1,
                                train_samples=64, test_samples=32, batch_size=32, out=str(tmp_path), quiet=True)
    assert result["finished"] and result["step"] == 2 and type(result["model"]).__name__ == "TinyNet"
    assert 0 <= result["test_accuracy"] <= 100


def test_refusals_are_one_line(tmp_path, net, capsys):
    base = [*CNN, "--out", tmp_path]
    refused(capsys, *base, "--model", tmp_path / "missing.py:Net", fragments=("no file", "missing.py"))
    refused(capsys, *base, "--model", str(net), fragments=("FILE.py:CLASS",))
    refused(capsys, *base, "--model", f"{net}:Nope", fragments=("has no class Nope", "TinyNet"))
    refused(capsys, *base, "--model", f"{net}:NotAModel", fragments=("not a customnn.Module",))
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('my bug')\n")
    refused(capsys, *base, "--model", f"{broken}:Net", fragments=("importing", "RuntimeError: my bug"))
    refused(capsys, *base, "--model", f"{net}:TinyNet", "--model-arg", "hiden=3",
            fragments=("hiden", "hidden, dropout, seed"))
    refused(capsys, *base, "--model", f"{net}:TinyNet", "--model-arg", "hidden=wide",
            fragments=("hidden", "int", "'wide'"))
    refused(capsys, *base, "--model", f"{net}:TinyNet", "--model-arg", "hidden", fragments=("NAME=VALUE",))
    refused(capsys, *base, "--model", f"{net}:TinyNet", "--width", 8, fragments=("--width", "--model-arg"))
    refused(capsys, *base, "--model-arg", "hidden=3", fragments=("--model",))
    assert not list(tmp_path.glob("cnn-*"))


def test_a_class_that_does_not_fit_the_checkpoint_is_named_before_loading(tmp_path, net, capsys):
    code, _, _ = cli(capsys, *CNN, "--model", f"{net}:TinyNet", "--max-steps", 1, "--out", tmp_path / "r")
    run = only_run(tmp_path / "r")
    other = tmp_path / "other.py"
    other.write_text(MNIST_NET.replace("(hidden, 10)", "(hidden, 11)").replace("(10,)", "(11,)"))
    line = refused(capsys, "eval", run, "--checkpoint", "last", "--model", f"{other}:TinyNet",
                   fragments=("does not fit", "w2 (16, 10) in the checkpoint, (16, 11) in the class"))
    assert "b2" in line
    refused(capsys, "train", "cnn", "--resume", run, "--model", f"{net}:TinyNet", "--model-arg", "hidden=3",
            fragments=("--model-arg hidden cannot change",))
    refused(capsys, "train", "cnn", "--resume", run, "--model", f"{other}:TinyNet", "--quiet",
            fragments=("does not fit",))


def test_a_text_model_of_one_s_own_trains_resumes_and_generates(tmp_path, capsys):
    path = tmp_path / "bigram.py"
    path.write_text(TEXT_NET)
    model = f"{path}:Bigram"
    assert cli(capsys, *GPT, "--model", model, "--out", tmp_path / "whole")[0] == 0
    whole = only_run(tmp_path / "whole")
    code, _, err = cli(capsys, *GPT, "--model", model, "--max-steps", 4, "--out", tmp_path / "part")
    part = only_run(tmp_path / "part")
    assert code == 0 and f"--model {path}:Bigram --resume" in err
    assert cli(capsys, "train", "gpt", "--model", model, "--resume", part, "--quiet")[0] == 0
    assert train_losses(part) == train_losses(whole)
    code, out, _ = cli(capsys, "generate", part, "--model", model, "--prompt", "ROMEO:", "--max-new-tokens", 20)
    assert code == 0 and out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 20 + 1
    refused(capsys, "generate", part, "--prompt", "A", fragments=(model, "--model"))
    code, out, _ = cli(capsys, "eval", part, "--model", model, "--quiet")
    assert code == 0 and "val loss" in out
    refused(capsys, *GPT, "--model", model, "--n-layer", 3, fragments=("--n-layer", "--model-arg"))


def test_a_model_of_one_s_own_trains_under_torchrun(tmp_path, net):
    import subprocess

    args = [*CNN, "--model", f"{net}:TinyNet", "--model-arg", "dropout=0.0", "--dtype", "float64", "--epochs", 1]
    one = subprocess.run([sys.executable, "-m", "customnn", *map(str, args), "--out", tmp_path / "one"], cwd=REPO,
                         env=customnn_env(), capture_output=True, text=True, timeout=240)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "customnn", *map(str, args), "--out", tmp_path / "two"], cwd=REPO,
                         env=customnn_env(), capture_output=True, text=True, timeout=240)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    a, b = train_losses(only_run(tmp_path / "one")), train_losses(only_run(tmp_path / "two"))
    assert [s for s, _ in a] == [s for s, _ in b]
    assert all(abs(x - y) <= 1e-10 for (_, x), (_, y) in zip(a, b))


def test_the_file_needs_no_future_import_and_any_config_resumes(tmp_path, capsys):
    """train/config.py reads resolved type hints: a config dataclass in a file without
    ``from __future__ import annotations`` resumes; a config without ``lr`` still diverges in one line."""
    from customnn.train.config import field_types
    from customnn.train.cnn_config import CNNTrainConfig

    src = textwrap.dedent('''
        from dataclasses import dataclass
        from customnn.train.config import TrainConfig, setting

        @dataclass
        class MyConfig(TrainConfig):
            steps: int = setting(3, "steps")
            scale: float | None = setting(None, "a scale")
    ''')
    path = tmp_path / "cfg.py"
    path.write_text(src)
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg_probe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cfg_probe"] = module
    spec.loader.exec_module(module)
    types_ = field_types(module.MyConfig)
    assert types_["steps"] == (int, False) and types_["scale"] == (float, True) and types_["lr"] == (float, True)
    assert field_types(CNNTrainConfig)["epochs"] == (int, True)


def test_a_trainer_of_one_s_own_without_lr_diverges_in_one_line(tmp_path):
    """The engine declares what it reads (``TrainConfig.lr``, default None): a config that does not
    set it still gets the divergence message, naming the learning rate at that step."""
    from dataclasses import dataclass

    import torch

    from customnn.optim import SGD, constant_lr
    from customnn.train.config import TrainConfig
    from customnn.train.engine import Diverged, train_with
    from customnn.train.trainer import Trainer

    @dataclass
    class PlainConfig(TrainConfig):
        pass

    class Blowup(Trainer):
        name = "blowup"

        def setup(self, device, ckpt):
            import customnn

            self.model = customnn.Module()
            self.model.w = torch.ones(3, requires_grad=True)
            self.optimizer = SGD(self.model.parameters(), lr=0.5)
            self.generators, self.total_steps, self.eval_interval, self.warmup_steps = {}, 5, 100, 0

        def schedule(self, total_steps):
            return constant_lr(0.5)

        def train_step(self, step):
            loss = (self.model.w * float("inf")).sum() if step == 2 else self.model.w.sum()
            loss.backward()
            return loss

        def evaluate(self, step):
            return {"loss": 1.0}

        def eval_line(self, step, result):
            return f"step {step}"

        def checkpoint_meta(self, step):
            return {"model": "blowup", "step": step}

    with pytest.raises(Diverged, match=r"^training diverged at step 3: the loss is nan; .* try a lower --lr "
                                       r"\(the learning rate was 0\.5 at this step\)$"):
        train_with(Blowup, PlainConfig(out=str(tmp_path)), quiet=True)
