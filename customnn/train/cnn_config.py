"""The MNIST task's settings (``customnn train cnn``'s flags) and their defaults per architecture.

``CNNTrainConfig`` is every setting a run of the MNIST task depends on, each field a flag of the
same name (``customnn/train/config.py`` makes the flags); ``resolved`` fills in the defaults
that depend on the architecture and optimizer. The task that uses them is ``customnn/train/cnn.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from customnn.core.errors import UserError
from customnn.data.mnist import SIZES
from customnn.models.cnn import ARCHS
from customnn.train.config import TrainConfig, flag_name, setting, time_budget_setting

MAX_WIDTH = 256  # --width, and a checkpoint's: far above any useful MNIST net (24 reaches 99.5%)
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
