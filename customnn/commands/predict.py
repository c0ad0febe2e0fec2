"""``customnn predict RUN IMAGE...``: classify everyday pictures of digits with a trained CNN.

Each picture is turned into MNIST's form (``customnn/data/images.py``: grayscale, ink white on
black, cropped, scaled to 20 pixels, centred by its centre of mass in 28x28), normalised like
the training images and classified. Prints one line per image, ``PATH: DIGIT (PROB%)``::

    customnn predict runs/cnn-20261127-120000 my_seven.png photo_of_a_3.jpg
    customnn predict runs/cnn-20261208-010000 my_seven.png --model examples/mnist_resnet.py:ResNet
"""

from __future__ import annotations

import numpy as np
import torch

from customnn import ops
from customnn.data.images import load_image, to_mnist
from customnn.data.mnist import MEAN, STD
from customnn.core.errors import UserError
from customnn.commands.evaluate import add_model_argument
from customnn.commands.train import model_spec
from customnn.train.tasks import load_model
from customnn.core.validate import device as resolve_device
from customnn.core.validate import shown


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a CNN run folder or a .safetensors checkpoint")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="PNG/JPEG pictures of single digits")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint of a run folder (default: best, else last)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    add_model_argument(p)


def run(args) -> int:
    device = resolve_device(args.device)
    model, _, _, _ = load_model(args.run, prefer=args.checkpoint, device=device, kind="cnn", model=model_spec(args))
    # Read every picture first, so a bad one stops the command before any output.
    images = np.stack([to_mnist(load_image(p), str(p)) for p in args.images])  # (N, 28, 28)
    x = ((torch.from_numpy(images) - MEAN) / STD).unsqueeze(1).to(device)  # (N, 1, 28, 28)
    with torch.no_grad():
        logits, _ = model(x)
        probs = ops.softmax(logits, dim=1)  # (N, 10)
    bad = (~torch.isfinite(probs).all(dim=1)).nonzero().flatten().tolist()
    if bad:  # no NaN is printed as an answer
        raise UserError(f"the model's output for {shown(args.images[bad[0]])} is not a number (NaN): its weights "
                        "overflow on this picture, so it has no answer; use another checkpoint")
    best, digit = probs.max(dim=1)
    for name, d, pr in zip(args.images, digit.tolist(), best.tolist()):
        print(f"{shown(name)}: {d} ({100 * pr:.1f}%)")
    return 0
