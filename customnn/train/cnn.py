"""``customnn train cnn``: the MNIST task, as the PyTorch MNIST example trains its net.

The loop is the PyTorch MNIST example's (github.com/pytorch/examples, mnist/main.py):
epochs over shuffled mini-batches, a ``Train Epoch`` line every ``log_interval`` batches, a
``Validation set`` line after each epoch, and the example's ``Test set`` line once, at the end.
The engine (``customnn/train/engine.py``) runs it; this
file holds only what is the task's own. Its model is CustomCNN (``customnn/models/cnn.py``,
settings ``--arch``, ``--width``, ``--dropout``), or any class of one's own
(``--model FILE.py:CLASS``, ``--model-arg NAME=VALUE``; it gets ``seed``, ``in_channels``
and ``num_classes`` if its constructor takes them) mapping ``(N, 1, 28, 28)`` images to
``(N, 10)`` logits:

- its settings (``CNNTrainConfig``, each field a flag), with defaults that depend on the
  architecture and optimizer (``resolved``);
- the data order and augmentation: each epoch a permutation of the training set from its own
  generator, random shifts (and, when asked, rotations and scalings: ``customnn/data/augment.py``)
  from another, dropout masks from a third; all three, and where in the epoch the run is, are
  saved in every checkpoint, so ``--resume`` continues exactly;
- one step (forward and backward of a batch); the evaluation after each epoch on the
  validation images (``--val-samples``, held out of the 60k training images:
  ``data/mnist.py``'s ``validation_split``), whose accuracy picks best.safetensors; and the
  test set, scored once after the last step with best.safetensors' weights, the run's figure.

Run::

    customnn train cnn --arch seed --epochs 3          # the seed's net, full MNIST
    customnn train cnn                                  # the default net
    customnn train cnn --resume runs/cnn-20261127-120000
    customnn train cnn --model examples/mnist_resnet.py:ResNet --model-arg width=8 --epochs 1

From Python (the demo does this)::

    from customnn.train.cnn import CNNTrainConfig, train
    result = train(CNNTrainConfig(arch="seed", train_samples=200, batch_size=32, epochs=5), quiet=True)
    result["test_accuracy"], result["val_accuracy"], result["run_dir"]
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch

from customnn import ops
from customnn.data.augment import augment
from customnn.data.mnist import SIZES, load_mnist, load_mnist_split
from customnn.core.errors import UserError
from customnn.models.cnn import CustomCNN
from customnn.optim import SGD, AdamW, constant_lr, cosine_lr, decay_groups
from customnn.core.progress import Progress
from customnn.core.runtime import seed_all
from customnn.train.cnn_config import (ARCH_DEFAULTS, BATCH_SIZE, DEFAULT_LR, MAX_WIDTH, OPTIMIZERS,  # noqa: F401
                                       SCHEDULES, CNNTrainConfig)  # (also customnn.train.cnn's)
from customnn.train.engine import train_with
from customnn.train.loading import check_weights, is_int, load_weights, own_model_from_checkpoint, saved_dtype
from customnn.train.trainer import Trainer
from customnn.train.usermodel import check_training_memory

# --- pieces of the loop ---------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: CustomCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             quiet: bool = True, what: str = "test") -> dict:
    """Average loss and accuracy over (x, y) in eval mode, as the PyTorch example's ``test()``; a
    long one is announced with its estimate and shows progress (``core/progress.py``)."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    progress = Progress(math.ceil(len(x) / batch_size), f"evaluating on {len(x)} {what} images", "batches", quiet)
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            logits, _ = model(xb)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # a sum of 1000 losses: not in bfloat16
            total_loss += ops.cross_entropy(logits, yb, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == yb).sum().item())
            progress.update()
    finally:
        progress.close()
        model.train(was_training)
    n = len(x)
    return {"loss": total_loss / n, "correct": correct, "n": n, "accuracy": 100.0 * correct / n}


def test_line(result: dict, name: str = "Test") -> str:
    """The example's line: ``Test set: Average loss: 0.0412, Accuracy: 9868/10000 (98.68%)``."""
    return (f"{name} set: Average loss: {result['loss']:.4f}, "
            f"Accuracy: {result['correct']}/{result['n']} ({result['accuracy']:.2f}%)")


def from_checkpoint(ckpt, path, device="cpu", model=None) -> tuple:
    """(the model a checkpoint of the MNIST task holds, in eval mode on ``device``, None): CustomCNN,
    or, given ``model`` (``--model``'s ``ModelSpec``), the class of one's own it was trained as."""
    cfg = ckpt.meta.get("config")
    if ckpt.meta.get("model") != "cnn" or not isinstance(cfg, dict):
        raise UserError(f"{path} is not a CNN checkpoint")
    provided = {"seed": 0, "in_channels": 1, "num_classes": 10}
    own = own_model_from_checkpoint(ckpt, path, model, provided, "cnn", device)
    if own is not None:
        return own, None
    if not isinstance(cfg.get("arch"), str) or cfg["arch"] not in ARCH_DEFAULTS:
        raise UserError(f"{path} is not a CNN checkpoint")
    width, dropout = cfg.get("width", 24), cfg.get("dropout", 0.0)
    if not is_int(width, 1, MAX_WIDTH):
        raise UserError(f"{path}: checkpoint is damaged: width {width!r} is not an integer in 1..{MAX_WIDTH}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UserError(f"{path}: checkpoint is damaged: dropout {dropout!r} is not a number in [0, 1)")
    built = CustomCNN(cfg["arch"], seed=0, dropout=dropout, width=width)  # small: bounded by MAX_WIDTH
    built.to(dtype=saved_dtype(ckpt.model_state))
    load_weights(built, ckpt.model_state, path)
    check_weights(ckpt.model_state, path)
    return built.to(device).eval(), None


# --- the task's part of the engine ---------------------------------------------------------------
class CNNTrainer(Trainer):
    """The MNIST task: images in, ten logits out."""

    name = "cnn"
    default_model = CustomCNN
    provided_names = ("seed", "in_channels", "num_classes")
    eval_at_start = False  # a Validation set line after each epoch, as the example's Test set line
    best_metric, best_mode = "accuracy", "max"  # on the validation images
    plot_series = {"val loss": "loss"}
    test_split = "test"  # scored once, after the last step

    @classmethod
    def prepare_config(cls, cfg: CNNTrainConfig) -> CNNTrainConfig:
        return cfg.resolved()

    def setup(self, device, ckpt) -> None:
        cfg = self.cfg
        self.check_memory(device)  # one line, not an out-of-memory crash
        (x_train, y_train), (x_val, y_val) = load_mnist_split(cfg.data_dir, cfg.val_samples, cfg.train_samples)
        x_test, y_test = load_mnist("test", cfg.data_dir, cfg.test_samples)
        self.x_train, self.y_train = x_train.to(device, cfg.torch_dtype), y_train.to(device)
        self.x_val, self.y_val = x_val.to(device, cfg.torch_dtype), y_val.to(device)
        self.x_test, self.y_test = x_test.to(device, cfg.torch_dtype), y_test.to(device)
        self.device = device
        self.n_train = len(x_train)
        self.batches = math.ceil(self.n_train / cfg.batch_size)  # per epoch
        self.eval_interval = self.batches  # evaluate after each epoch
        self.total_steps = cfg.epochs * self.batches
        self.warmup_steps = cfg.warmup_steps
        seed_all(cfg.seed)
        self.model = self.build_model().to(device, cfg.torch_dtype)
        if ckpt is not None:
            check_weights(ckpt.model_state, ckpt.path)  # no NaN or inf weight is trained on
            load_weights(self.model, ckpt.model_state, ckpt.path)
        self.model.generator = torch.Generator(device=device).manual_seed(cfg.seed + 2)  # dropout masks
        self.generators = {"shuffle": torch.Generator().manual_seed(cfg.seed),  # data order
                           "shift": torch.Generator().manual_seed(cfg.seed + 1),  # every augmentation draw
                           "dropout": self.model.generator}
        groups = decay_groups(self.model.named_parameters(), cfg.weight_decay)  # no decay on biases and BN
        self.optimizer = (AdamW(groups, lr=cfg.lr) if cfg.optimizer == "adamw"
                          else SGD(groups, lr=cfg.lr, momentum=cfg.momentum))
        self.order, self.order_epoch = None, 0  # this epoch's permutation of the training set
        if self.dist.active and cfg.sync_bn:  # batch norm's statistics are those of the whole batch, over every rank
            for m in self.model.modules():
                if hasattr(m, "reduce"):
                    m.reduce = self.dist.sum_

    def provided(self) -> dict:
        return {"seed": self.cfg.seed, "in_channels": 1, "num_classes": 10}

    def check_memory(self, device, measure: bool = True) -> None:
        """A one-line refusal of a run that cannot fit, before anything is allocated: the model's
        step at the training batch and at the evaluation batch, and the images."""
        cfg = self.cfg
        n_train, n_test = SIZES["train"], cfg.test_samples or SIZES["test"]  # training and validation images
        size = torch.empty((), dtype=cfg.torch_dtype).element_size()
        images = (1 + size) * 28 * 28 * (n_train + n_test)  # as bytes and as numbers
        advice = ("use a smaller --batch-size or --eval-batch-size, or smaller --model-arg settings"
                  if self.user_model else "use a smaller --batch-size, --eval-batch-size or --width")

        def probe(n):
            g = torch.Generator().manual_seed(0)
            return (torch.randn(n, 1, 28, 28, generator=g).to(device, cfg.torch_dtype),
                    torch.arange(n, device=device) % 10)

        batch = max(1, cfg.batch_size // self.dist.world)  # this process's rows
        check_training_memory(self.spec, self.provided(), batch, device, cfg.torch_dtype, task="MNIST",
                              extra=images, eval_batch=min(cfg.eval_batch_size, n_test), advice=advice,
                              probe=probe if measure else None)

    def schedule(self, total_steps: int):
        cfg = self.cfg
        if cfg.schedule == "cosine":
            return cosine_lr(cfg.lr, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1), min_lr=0.0)
        return constant_lr(cfg.lr)

    def epoch_of(self, step: int) -> tuple[int, int]:
        """(epoch from 1, batch within it from 0) of 0-based step ``step``."""
        return step // self.batches + 1, step % self.batches

    def before_step(self, step: int) -> None:
        epoch, _ = self.epoch_of(step)
        if self.order_epoch != epoch and step < self.total_steps:  # a new epoch: a new order
            self.order = torch.randperm(self.n_train, generator=self.generators["shuffle"])
            self.order_epoch = epoch

    def train_step(self, step: int) -> torch.Tensor:
        cfg = self.cfg
        _, batch = self.epoch_of(step)
        idx = self.order[batch * cfg.batch_size:(batch + 1) * cfg.batch_size].to(self.device)
        xb, yb = self.x_train[idx], self.y_train[idx]  # (B, 1, 28, 28), (B,)
        rows = None
        if self.dist.active:  # this process's rows; dropout draws the whole batch's masks and keeps these
            rows = self.dist.rows(len(idx))
            yb = yb[rows]
            self.model.batch = (rows, len(idx))
        # drawn for the whole batch, as one process draws them, and applied to this process's rows
        xb = augment(xb, self.generators["shift"], cfg.shift, cfg.rotate, cfg.scale, rows=rows)
        logits, loss = self.model(xb, None if cfg.label_smoothing else yb)
        if cfg.label_smoothing:  # the model's own loss is plain cross-entropy
            loss = ops.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
        if self.dist.active:  # its share of the batch's mean loss: the ranks' shares sum to it
            loss = loss * (len(yb) / len(idx))
        self.backward(loss)
        return loss

    def train_row(self, step, loss, lr):
        epoch, batch = self.epoch_of(step)
        if batch % self.cfg.log_interval:
            return None, None
        value = loss.item()
        line = (f"Train Epoch: {epoch} [{batch * self.cfg.batch_size}/{self.n_train} "
                f"({100.0 * batch / self.batches:.0f}%)]\tLoss: {value:.6f}")
        return {"step": step + 1, "epoch": epoch - 1 + (batch + 1) / self.batches, "loss": value, "lr": lr}, line

    def evaluate(self, step: int) -> dict:
        result = evaluate(self.model, self.x_val, self.y_val, self.cfg.eval_batch_size, self.quiet, "validation")
        return {**result, "epoch": math.ceil(step / self.batches)}

    def test(self, step: int) -> dict:
        result = evaluate(self.model, self.x_test, self.y_test, self.cfg.eval_batch_size, self.quiet, "test")
        return {**result, "split": "test"}

    def eval_line(self, step, result) -> str:
        return test_line(result, "Test" if result.get("split") == "test" else "Validation")

    def progress(self, step: int) -> str:
        return f"epoch {min(self.epoch_of(step)[0], self.cfg.epochs)}/{self.cfg.epochs}"

    def where(self, n: int) -> str:
        if n == 0:
            return ""
        epoch, batch = self.epoch_of(n - 1)
        return f" (epoch {epoch}, batch {batch + 1})"

    def model_name(self) -> str:
        return self.spec.cls.__name__ if self.user_model else f"CustomCNN ({self.cfg.arch})"

    def intro_line(self, run) -> str:
        what = f"model {self.spec.name}" if self.user_model else f"arch {self.cfg.arch}"
        return (f"run folder: {run.path}  ({what}, {self.model.num_parameters()} parameters, "
                f"{self.n_train} training images, {len(self.x_val)} validation images, device {self.device})")

    def plot_title(self) -> str:
        return f"{self.model_name()} on MNIST"

    def checkpoint_meta(self, step: int) -> dict:
        epoch, batch = self.epoch_of(step)
        return {"model": "cnn", "config": asdict(self.cfg), "step": step, "epoch": epoch, "batch": batch,
                **self.model_record()}

    def extra_state(self, step: int) -> dict:
        order = self.order if self.order is not None else torch.zeros(0, dtype=torch.int64)
        return {"order": order, "order_epoch": self.order_epoch}

    def load_extra_state(self, state: dict, step: int) -> None:
        order, order_epoch = state["order"], state["order_epoch"]
        if not (isinstance(order, torch.Tensor) and order.dtype == torch.int64 and isinstance(order_epoch, int)):
            raise ValueError("data order")
        if order.numel():
            if order.shape != (self.n_train,) or not torch.equal(order.sort().values, torch.arange(self.n_train)):
                raise ValueError("data order")
            self.order, self.order_epoch = order, order_epoch

    def report(self, run, evals, step, seconds, finished) -> list[str]:
        cfg = self.cfg
        lines = [f"# CNN run {run.path.name}", "",
                 (f"- model: `{self.spec.name}` {self.spec.args or ''}" if self.user_model
                  else f"- architecture: `{cfg.arch}`") + f" ({self.model.num_parameters()} parameters)",
                 f"- data: {self.n_train} training images, {cfg.val_samples} validation images (held out of the "
                 f"training set), {cfg.test_samples or SIZES['test']} test images; augmentation: shift {cfg.shift} px, "
                 f"rotate {cfg.rotate:g} degrees, scale {cfg.scale:g}; label smoothing {cfg.label_smoothing:g}",
                 f"- optimizer: {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}), batch {cfg.batch_size}, "
                 f"weight decay {cfg.weight_decay:g}; seed {cfg.seed}",
                 f"- steps: {step}; precision {cfg.precision} ({cfg.dtype} weights)", "",
                 "| epoch | val loss | val accuracy | train time (s) |", "| --- | --- | --- | --- |"]
        lines += [f"| {t['epoch']} | {t['loss']:.4f} | {t['correct']}/{t['n']} ({t['accuracy']:.2f}%) | "
                  f"{e:.2f} |" for t, e in zip(evals, self.epoch_times(evals))]
        if (test := self.test_result) is not None:
            best = next((r["epoch"] for r in evals if r["step"] == test["best_step"]), "?")
            lines += ["", f"Final: {test_line(test)}, scored once after training with the weights of epoch {best} "
                      f"(best.safetensors, by validation accuracy); training time {evals[-1]['train_time']:.1f} s."]
        elif evals:
            lines += ["", "The test set was not scored (the run stopped before its end); `customnn eval` scores it."]
        return lines + [""]

    @staticmethod
    def epoch_times(evals: list[dict]) -> list[float]:
        """Seconds of training between consecutive evaluations (one per epoch)."""
        times = [r["train_time"] for r in evals]
        return [b - a for a, b in zip([0.0] + times, times)]


def train(cfg: CNNTrainConfig, quiet: bool = False, given: dict | None = None, model=None) -> dict:
    """Train (or, with ``cfg.resume``, continue) one run; return its figures and the model.

    Returns a dict with ``run_dir``, ``test_loss``, ``test_accuracy`` (percent), ``correct``,
    ``n_test`` (the test set, scored once at the end with best.safetensors' weights; NaN and 0
    when the run stopped before its end), ``val_accuracy`` (the last epoch's), ``epoch_times``
    (seconds of training per epoch), ``vals`` (the validation result of each epoch), ``step``,
    ``interrupted`` (True when Ctrl-C/SIGTERM stopped it early), ``finished`` (False after
    Ctrl-C or ``max_steps``: the run can be resumed), ``config`` and ``model``.
    Raises ``UserError`` for bad settings and on divergence (``engine.Diverged``). ``model``: a
    ``ModelSpec`` of a class of one's own (``customnn/train/usermodel.py``); None: CustomCNN.
    """
    out = train_with(CNNTrainer, cfg, quiet, given, model)
    vals = out["evals"]
    test = out.get("test") or {"loss": float("nan"), "accuracy": float("nan"), "correct": 0, "n": 0}
    return {**out, "vals": vals, "epoch_times": CNNTrainer.epoch_times(vals),
            "val_accuracy": vals[-1]["accuracy"] if vals else float("nan"), "test_loss": test["loss"],
            "test_accuracy": test["accuracy"], "correct": test["correct"], "n_test": test["n"]}



Task, Config = CNNTrainer, CNNTrainConfig  # what customnn/train/tasks.py finds in a task's module
