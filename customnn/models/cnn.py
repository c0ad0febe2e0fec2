"""CustomCNN: the seed's MNIST network, and a stronger default, built only from ``customnn.ops``.

``arch="seed"`` is the seed's network exactly (LeNet-like, after LeCun et al. 1998,
"Gradient-based learning applied to document recognition")::

    (N, 1, 28, 28) -> conv 1->6 5x5 -> ReLU -> max-pool 2   (N, 6, 12, 12)
                   -> conv 6->12 5x5 -> ReLU -> max-pool 2  (N, 12, 4, 4)
                   -> flatten (N, 192) -> linear 192->10    (N, 10)

``arch="default"`` is three 3x3 conv stages with batch norm (Ioffe & Szegedy 2015) and
max-pooling, channels doubling as the image halves (w = ``width``, 24 by default), then
dropout (Srivastava et al. 2014) and one linear layer::

    (N, 1, 28, 28) -> [conv 1->w 3x3 pad 1, BN, ReLU, max-pool 2]     (N, w, 14, 14)
                   -> [conv w->2w 3x3 pad 1, BN, ReLU, max-pool 2]    (N, 2w, 7, 7)
                   -> [conv 2w->4w 3x3 pad 1, BN, ReLU, max-pool 2]   (N, 4w, 3, 3)
                   -> flatten (N, 36w) -> dropout -> linear 36w->10   (N, 10)

At w = 24 (the constructor's default) it has 61k parameters and costs about 20 times the seed's
arithmetic per image; with random shifts (done by the training loop) it reaches 99.5% on MNIST's
test set in 8 epochs. ``customnn train cnn`` trains it at w = 32 (105k parameters) with random
rotations, scalings and shifts and label smoothing, which reaches 99.6% in ten minutes on 2 cores.

Parameters are initialised as PyTorch's ``nn.Conv2d`` / ``nn.Linear`` defaults
(``customnn.core.init.fan_in_uniform``) from a seeded generator; batch norm starts at gain 1,
shift 0. Dropout draws its masks from ``model.generator`` when set (the training loop sets
a dedicated, checkpointed generator so a resumed run draws the same masks).

    model = CustomCNN("seed", seed=1)
    logits, loss = model(x, targets)   # x (N, 1, 28, 28), targets (N,) int64
"""

from __future__ import annotations

import torch

from customnn import init, ops
from customnn.core.module import Module

ARCHS = ("seed", "default")


class Conv2d(Module):
    """A convolution's weight ``(O, C, k, k)`` and bias ``(O,)``."""

    def __init__(self, cin: int, cout: int, k: int, padding: int, generator: torch.Generator):
        super().__init__()
        self.padding = padding
        fan_in = init.conv_fan_in((cout, cin, k, k))
        self.weight = init.fan_in_uniform((cout, cin, k, k), fan_in, generator)
        self.bias = init.fan_in_uniform((cout,), fan_in, generator)

    def forward(self, x):
        return ops.conv2d(x, self.weight, self.bias, stride=1, padding=self.padding)


class Linear(Module):
    """A linear layer's weight, in the seed's ``(in_features, out_features)`` layout, and bias."""

    def __init__(self, fin: int, fout: int, generator: torch.Generator):
        super().__init__()
        self.weight = init.fan_in_uniform((fin, fout), fin, generator)
        self.bias = init.fan_in_uniform((fout,), fin, generator)

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias)


class BatchNorm2d(Module):
    """Per-channel gain and shift, and the running statistics used in eval mode."""

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = init.ones((channels,))
        self.bias = init.zeros((channels,))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.reduce = None  # data-parallel training: sums a tensor over the ranks (whole-batch statistics)

    def forward(self, x):
        return ops.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                              self.training, self.momentum, self.eps, reduce=self.reduce)


class ConvStage(Module):
    """conv 3x3 (same padding) -> batch norm -> ReLU -> max-pool 2: one stage of the default net."""

    def __init__(self, cin: int, cout: int, generator: torch.Generator):
        super().__init__()
        self.conv = Conv2d(cin, cout, 3, padding=1, generator=generator)
        self.bn = BatchNorm2d(cout)

    def forward(self, x):
        # ReLU then max-pool, computed as max-pool then ReLU: relu(max(a, b)) = max(relu(a),
        # relu(b)) since ReLU never decreases, so the output and every gradient are the same, and
        # ReLU's forward and backward touch a quarter of the values.
        return ops.relu(ops.max_pool2d(self.bn(self.conv(x)), 2))


class CustomCNN(Module):
    """MNIST classifier; ``forward(x, targets=None) -> (logits, loss)`` (loss is None without targets)."""

    def __init__(self, arch: str = "seed", seed: int = 0, dropout: float = 0.3, width: int = 24):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.arch, self.width = arch, width
        self.generator: torch.Generator | None = None  # dropout masks; None: the global RNG
        # Data-parallel training: this process's rows of the global batch, (rows, total), so that
        # its dropout masks are those rows of the whole batch's (customnn/train/distributed.py).
        self.batch: tuple[slice, int] | None = None
        g = torch.Generator().manual_seed(seed)
        if arch == "seed":
            self.conv1 = Conv2d(1, 6, 5, padding=0, generator=g)
            self.conv2 = Conv2d(6, 12, 5, padding=0, generator=g)
            self.fc = Linear(12 * 4 * 4, 10, generator=g)
        else:
            if width < 1:
                raise ValueError(f"width must be >= 1, got {width}")
            c1, c2, c3 = width, 2 * width, 4 * width  # channels double as the images halve
            self.dropout = dropout
            self.stages = [ConvStage(1, c1, g), ConvStage(c1, c2, g), ConvStage(c2, c3, g)]
            self.fc = Linear(c3 * 3 * 3, 10, generator=g)

    @staticmethod
    def memory_estimate(settings: dict, batch_size: int, training: bool = True, element_bytes: int = 4):
        """(a lower bound on the bytes a step needs on a batch of 28x28 images, what the net is in
        words): the activations of each stage kept for backward (conv output, batch norm, ReLU:
        about 3 maps per stage) and the weights (and, training, gradients and optimizer state)."""
        arch, w = settings["arch"], settings["width"]
        if arch == "seed":
            maps = 6 * 24 * 24 + 12 * 8 * 8
            params = 6 * 25 + 6 + 12 * 6 * 25 + 12 + 192 * 10 + 10
        else:
            maps = w * 28 * 28 + 2 * w * 14 * 14 + 4 * w * 7 * 7
            params = 9 * (w + 2 * w * w + 8 * w * w) + 4 * w * 9 * 10
        per_image = (3 if training else 1) * maps
        return element_bytes * (per_image * batch_size + (4 if training else 1) * params), \
            f"a {arch} CNN of width {w}"

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"x must be (N, 1, 28, 28) images, got shape {tuple(x.shape)}")
        if self.arch == "seed":
            x = ops.relu(ops.max_pool2d(self.conv1(x), 2))  # (N, 6, 12, 12): ReLU after the pool, as in ConvStage
            x = ops.relu(ops.max_pool2d(self.conv2(x), 2))  # (N, 12, 4, 4)
            logits = self.fc(ops.flatten(x))  # (N, 10)
        else:
            for stage in self.stages:
                x = stage(x)  # (N, w, 14, 14), (N, 2w, 7, 7), (N, 4w, 3, 3)
            x = ops.dropout(ops.flatten(x), self.dropout, self.training, generator=self.generator,
                            batch=self.batch)  # (N, 36w)
            logits = self.fc(x)  # (N, 10)
        loss = None if targets is None else ops.cross_entropy(logits, targets)
        return logits, loss
