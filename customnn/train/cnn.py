"""``customnn train cnn``: CustomCNN on MNIST, as the PyTorch MNIST example trains it.

The loop is the PyTorch MNIST example's (github.com/pytorch/examples, mnist/main.py):
epochs over shuffled mini-batches, a ``Train Epoch`` line every ``log_interval`` batches, a
``Validation set`` line after each epoch, and the example's ``Test set`` line once, at the end.
The engine (``customnn/train/engine.py``) runs it; this file holds only what is the CNN's own:

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

From Python (the demo does this)::

    from customnn.train.cnn import CNNTrainConfig, train
    result = train(CNNTrainConfig(arch="seed", train_samples=200, batch_size=32, epochs=5), quiet=True)
    result["test_accuracy"], result["val_accuracy"], result["run_dir"]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from customnn import ops
from customnn.data.augment import augment
from customnn.data.mnist import SIZES, load_mnist, load_mnist_split
from customnn.core.errors import UserError
from customnn.core.memory import check_training_memory
from customnn.models.cnn import ARCHS, CustomCNN
from customnn.optim import SGD, AdamW, constant_lr, cosine_lr, decay_groups
from customnn.core.progress import Progress
from customnn.core.runtime import seed_all
from customnn.train.config import TrainConfig, flag_name, setting, time_budget_setting
from customnn.train.engine import train_with
from customnn.train.loading import MAX_WIDTH, check_weights
from customnn.train.trainer import Trainer

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine")

# What ``None`` in the config means, per architecture; each value is explained in CNNTrainConfig.
ARCH_DEFAULTS = {
    "seed": dict(epochs=3, weight_decay=0.0, shift=0, rotate=0.0, scale=0.0, label_smoothing=0.0, width=24),
    "default": dict(epochs=30, weight_decay=5e-4, shift=2, rotate=10.0, scale=0.1, label_smoothing=0.1, width=32),
}
DEFAULT_LR = {("seed", "adamw"): 1e-2, ("seed", "sgd"): 0.05,
              ("default", "adamw"): 3e-3, ("default", "sgd"): 0.05}
BATCH_SIZE = 64  # the PyTorch example's: small nets need many steps


@dataclass
class CNNTrainConfig(TrainConfig):
    """One CNN training run; every field is a ``customnn train cnn`` flag of the same name."""

    arch: str = setting("default", "network: the seed's, or the stronger default",
                        choices=ARCHS)  # the stronger net; "seed" is the seed's exact network
    epochs: int | None = setting(None, "passes over the training set (seed: 3, default: 30, cut to what fits in "
                                 "--time-budget)", resume="free")
    # None: seed 3 (the seed's target setting), default 30: as many as fit in the ten minutes of
    # --time-budget, at most 30 (about 16 to 18 on a 2-core CPU)
    batch_size: int | None = setting(None, f"training batch size (default: {BATCH_SIZE}, or all the training "
                                     f"images when fewer)")  # None: BATCH_SIZE, or one batch of fewer images
    lr: float | None = setting(None, "learning rate (AdamW: seed 1e-2, default 3e-3; SGD: 0.05)")
    # None: AdamW seed 1e-2 (the tiny net wants big steps), default 3e-3; SGD 0.05
    optimizer: str = setting("adamw", "adamw or sgd (momentum 0.9)", choices=OPTIMIZERS)
    # Adam gets the seed net past 98.3% in 3 epochs, the example's SGD(0.01, 0.5) does not
    momentum: float = setting(0.9, "SGD momentum")  # SGD only: the usual value; the example's 0.5 is slow
    weight_decay: float | None = setting(None, "decoupled weight decay (seed: 0, default: 5e-4)")
    # None: seed 0 (3 epochs cannot overfit), default 5e-4 (decoupled, weights only)
    schedule: str = setting("cosine", "lr schedule (cosine to 0)", choices=SCHEDULES)
    # decay to 0 over the run: +0.8% for the seed net in 3 epochs over a constant lr
    warmup_steps: int = setting(0, "cosine schedule warmup steps")  # Adam with batch norm needs no warmup here
    shift: int | None = setting(None, "random-shift augmentation in pixels (seed: 0, default: 2): whole "
                                "pixels, or any fraction with --rotate or --scale")
    rotate: float | None = setting(None, "random-rotation augmentation: up to this many degrees either way "
                                   "(seed: 0, default: 10)")
    # None: seed 0 (the seed's setting), default 10: small rotations, scalings and shifts (Simard et
    # al. 2003) with label smoothing and width 32 give 99.60% and 99.62% on two seeds in ten minutes,
    # where the width-24 net gives 99.53-99.60% (benchmarks/results/cpu-mnist-augment.txt)
    scale: float | None = setting(None, "random-scaling augmentation: a factor in [1 - SCALE, 1 + SCALE] "
                                  "(seed: 0, default: 0.1)")  # None: as --rotate
    label_smoothing: float | None = setting(None, "label smoothing of the training loss: this much of each target "
                                            "spread evenly over the classes (seed: 0, default: 0.1)")
    # None: the seed's plain cross-entropy, 0.1 for the default net; the test loss is always plain cross-entropy
    width: int | None = setting(None, "default net: channels of the first stage (default: 32)")
    # None: 32 (24 reaches 99.5% in 8 epochs but not 99.6% in ten minutes; 16 not 99.5%); the seed net has no width
    dropout: float = setting(0.3, "dropout before the classifier (default net)")  # enough with shifts
    sync_bn: bool = setting(True, "under torchrun, batch norm's statistics over the whole batch, from every "
                            "process (--no-sync-bn: each process's own rows, as DDP's default; faster, but not "
                            "what one process trains)", resume="free")
    # True: N processes train what one process trains; each of the default net's three batch norms
    # then waits for the other processes twice a step (its sums in forward and in backward)
    val_samples: int = setting(5000, "training images held out (a fixed, seeded choice) to pick best.safetensors "
                               "and for each epoch's figure")
    # 5000: a 0.1% accuracy step is 5 images; the test set is then scored once, at the end
    train_samples: int | None = setting(None, "train on the first N of the training images left after --val-samples "
                                        "(default: all of them)")
    test_samples: int | None = setting(None, "score the first N test images at the end (default: all 10000)",
                                       resume="free")
    eval_batch_size: int = setting(1000, "evaluation batch size", resume="free")  # the example's: no gradients kept
    seed: int = setting(1, "random seed")  # the PyTorch example's seed
    time_budget: float | None = time_budget_setting(580.0)
    # ten minutes with margin, as the GPT's default: the default net's 30 epochs are cut to what fits

    def resolved(self) -> CNNTrainConfig:
        """A copy with every ``None`` default filled in for the chosen architecture, optimizer and data
        (``--train-samples`` below the batch size, batch size not given: one batch of them all)."""
        if self.arch not in ARCHS:
            raise UserError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        values = asdict(self)
        for key, value in ARCH_DEFAULTS[self.arch].items():
            if values[key] is None:
                values[key] = value
        if values["lr"] is None:
            values["lr"] = DEFAULT_LR[(self.arch, self.optimizer)]
        if values["batch_size"] is None:
            n = self.train_samples
            values["batch_size"] = n if isinstance(n, int) and 1 <= n < BATCH_SIZE else BATCH_SIZE
        cfg = CNNTrainConfig(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        """One-line errors for settings that cannot run (after ``resolved``)."""
        super().check()
        for name in ("epochs", "batch_size", "width", "val_samples", "train_samples", "test_samples",
                     "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{flag_name(name)} must be >= 1, got {value}")
        if self.width > MAX_WIDTH:
            raise UserError(f"--width must be <= {MAX_WIDTH}, got {self.width}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.shift <= 8:
            raise UserError(f"--shift must be between 0 and 8 pixels, got {self.shift}")
        if not (math.isfinite(self.rotate) and 0 <= self.rotate <= 180):
            raise UserError(f"--rotate must be between 0 and 180 degrees, got {self.rotate}")
        if not (math.isfinite(self.scale) and 0 <= self.scale < 1):
            raise UserError(f"--scale must be in [0, 1), got {self.scale}")
        if not (math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_steps < 0:
            raise UserError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        left = SIZES["train"] - self.val_samples
        if left < 1:
            raise UserError(f"--val-samples {self.val_samples} leaves no training images: MNIST's training set has "
                            f"{SIZES['train']}")
        if self.train_samples is not None and self.train_samples > left:
            raise UserError(f"--train-samples {self.train_samples} is more than the {left} training images left "
                            f"after --val-samples {self.val_samples}")
        if self.test_samples is not None and self.test_samples > SIZES["test"]:
            raise UserError(f"--test-samples {self.test_samples} is more than the {SIZES['test']} images of "
                            f"MNIST's test set")
        n_train = self.train_samples or left
        if self.batch_size > n_train:
            raise UserError(f"--batch-size {self.batch_size} is larger than the {n_train} training images")


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


def build_model(cfg: dict) -> CustomCNN:
    return CustomCNN(cfg["arch"], seed=cfg["seed"], dropout=cfg["dropout"], width=cfg.get("width", 24))


# --- the CNN's part of the engine ---------------------------------------------------------------
class CNNTrainer(Trainer):
    name = "cnn"
    eval_at_start = False  # a Validation set line after each epoch, as the example's Test set line
    best_metric, best_mode = "accuracy", "max"  # on the validation images
    plot_series = {"val loss": "loss"}
    test_split = "test"  # scored once, after the last step

    @classmethod
    def prepare_config(cls, cfg: CNNTrainConfig) -> CNNTrainConfig:
        return cfg.resolved()

    def setup(self, device, ckpt) -> None:
        cfg = self.cfg
        check_training_memory("cnn", cfg, device, mnist_sizes=(SIZES["train"], SIZES["test"]))  # one line, not OOM
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
        self.model = build_model(asdict(cfg)).to(device, cfg.torch_dtype)
        if ckpt is not None:
            check_weights(ckpt.model_state, ckpt.path)  # no NaN or inf weight is trained on
            try:
                self.model.load_state_dict(ckpt.model_state)
            except ValueError as e:
                raise UserError(f"checkpoint does not fit the model: {e}") from None
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
        loss.backward()
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

    def intro_line(self, run) -> str:
        return (f"run folder: {run.path}  (arch {self.cfg.arch}, {self.model.num_parameters()} parameters, "
                f"{self.n_train} training images, {len(self.x_val)} validation images, device {self.device})")

    def plot_title(self) -> str:
        return f"CustomCNN ({self.cfg.arch}) on MNIST"

    def checkpoint_meta(self, step: int) -> dict:
        epoch, batch = self.epoch_of(step)
        return {"model": "cnn", "config": asdict(self.cfg), "step": step, "epoch": epoch, "batch": batch}

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
                 f"- architecture: `{cfg.arch}` ({self.model.num_parameters()} parameters)",
                 f"- data: {self.n_train} training images, {cfg.val_samples} validation images (held out of the "
                 f"training set), {cfg.test_samples or SIZES['test']} test images; augmentation: shift {cfg.shift} px, "
                 f"rotate {cfg.rotate:g} degrees, scale {cfg.scale:g}; label smoothing {cfg.label_smoothing:g}",
                 f"- optimizer: {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}), batch {cfg.batch_size}, "
                 f"weight decay {cfg.weight_decay:g}; seed {cfg.seed}",
                 f"- steps: {step}", "",
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


def train(cfg: CNNTrainConfig, quiet: bool = False, given: dict | None = None) -> dict:
    """Train (or, with ``cfg.resume``, continue) one run; return its figures and the model.

    Returns a dict with ``run_dir``, ``test_loss``, ``test_accuracy`` (percent), ``correct``,
    ``n_test`` (the test set, scored once at the end with best.safetensors' weights; NaN and 0
    when the run stopped before its end), ``val_accuracy`` (the last epoch's), ``epoch_times``
    (seconds of training per epoch), ``vals`` (the validation result of each epoch), ``step``,
    ``interrupted`` (True when Ctrl-C/SIGTERM stopped it early), ``finished`` (False after
    Ctrl-C or ``max_steps``: the run can be resumed), ``config`` and ``model``.
    Raises ``UserError`` for bad settings and on divergence (``engine.Diverged``).
    """
    out = train_with(CNNTrainer, cfg, quiet, given)
    vals = out["evals"]
    test = out.get("test") or {"loss": float("nan"), "accuracy": float("nan"), "correct": 0, "n": 0}
    return {**out, "vals": vals, "epoch_times": CNNTrainer.epoch_times(vals),
            "val_accuracy": vals[-1]["accuracy"] if vals else float("nan"), "test_loss": test["loss"],
            "test_accuracy": test["accuracy"], "correct": test["correct"], "n_test": test["n"]}
