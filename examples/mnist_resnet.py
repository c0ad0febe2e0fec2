"""A small ResNet for MNIST, built from ``customnn.ops``: a model of your own, in your own file.

Residual blocks (He et al. 2016, "Deep Residual Learning for Image Recognition"): two 3x3
convolutions with batch norm, added to a shortcut (a 1x1 convolution where the block halves
the image or changes the width), then global average pooling and one linear layer::

    (N, 1, 28, 28) -> conv 3x3, BN, ReLU               (N, w, 28, 28)
                   -> block w -> w                      (N, w, 28, 28)
                   -> block w -> 2w, stride 2           (N, 2w, 14, 14)
                   -> block 2w -> 4w, stride 2          (N, 4w, 7, 7)
                   -> mean over H, W -> linear 4w->10   (N, 10)

Its constructor's arguments are its settings. Train it on the MNIST task, resume, evaluate::

    customnn train cnn --model examples/mnist_resnet.py:ResNet --model-arg width=8 --epochs 1
    customnn train cnn --model examples/mnist_resnet.py:ResNet --resume runs/cnn-...
    customnn eval runs/cnn-... --model examples/mnist_resnet.py:ResNet

or from Python::

    import customnn.train
    from mnist_resnet import ResNet
    result = customnn.train.fit(ResNet, task="mnist", model_args={"width": 8}, epochs=1)
"""

import torch

import customnn
from customnn import init, ops


class Conv(customnn.Module):
    """A k x k convolution without bias (batch norm follows), initialised as ``nn.Conv2d``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, g: torch.Generator):
        super().__init__()
        self.stride, self.padding = stride, k // 2
        self.weight = init.fan_in_uniform((cout, cin, k, k), cin * k * k, g)  # (O, C, k, k)

    def forward(self, x):
        return ops.conv2d(x, self.weight, None, stride=self.stride, padding=self.padding)


class BatchNorm(customnn.Module):
    """Per-channel gain and shift, and the running statistics used in eval mode."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight, self.bias = init.ones((channels,)), init.zeros((channels,))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.reduce = None  # under torchrun the engine sets it: statistics over the whole batch

    def forward(self, x):
        return ops.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, self.training,
                              reduce=self.reduce)


class Block(customnn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int, g: torch.Generator):
        super().__init__()
        self.conv1, self.bn1 = Conv(cin, cout, 3, stride, g), BatchNorm(cout)
        self.conv2, self.bn2 = Conv(cout, cout, 3, 1, g), BatchNorm(cout)
        self.shortcut = None if stride == 1 and cin == cout else Conv(cin, cout, 1, stride, g)

    def forward(self, x):
        out = ops.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return ops.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(customnn.Module):
    """MNIST classifier: ``forward(x, targets=None) -> (logits, loss)``."""

    def __init__(self, width: int = 16, num_classes: int = 10, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)  # the task passes --seed
        self.stem, self.bn = Conv(1, width, 3, 1, g), BatchNorm(width)
        self.blocks = [Block(width, width, 1, g), Block(width, 2 * width, 2, g), Block(2 * width, 4 * width, 2, g)]
        self.fc_weight = init.fan_in_uniform((4 * width, num_classes), 4 * width, g)  # (in, out)
        self.fc_bias = init.fan_in_uniform((num_classes,), 4 * width, g)

    def forward(self, x, targets=None):
        x = ops.relu(self.bn(self.stem(x)))  # (N, w, 28, 28)
        for block in self.blocks:
            x = block(x)  # (N, w, 28, 28), (N, 2w, 14, 14), (N, 4w, 7, 7)
        logits = ops.linear(x.mean(dim=(2, 3)), self.fc_weight, self.fc_bias)  # (N, 10)
        loss = None if targets is None else ops.cross_entropy(logits, targets)
        return logits, loss
