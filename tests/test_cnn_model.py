"""CustomCNN against a twin built from torch.nn with copied weights: logits, loss, gradients and
batch-norm running statistics (float32, and float64 to 1e-12), and a few training steps, for
both architectures, in train and eval mode. Also the hand-written initialisation against
PyTorch's defaults."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from customnn import init, ops
from customnn.models.cnn import CustomCNN
from customnn_ref.twins import cnn_twin
from helpers import assert_same_gradients


def dropout_mask(model: CustomCNN, shape, dtype) -> torch.Tensor:
    """The mask our model's next dropout call will draw (same generator state), as a multiplier."""
    g = torch.Generator().set_state(model.generator.get_state())
    return ops.dropout(torch.ones(shape, dtype=dtype), model.dropout, True, generator=g)


# What "the same" means per dtype, as keyword arguments of assert_close.
TIGHT = dict(rtol=1e-12, atol=1e-12)
TOLERANCES = {
    torch.float64: dict(logits=TIGHT, loss=TIGHT, grads=dict(rtol=1e-10, atol=1e-12), stats=TIGHT),
    torch.float32: dict(logits=dict(rtol=1e-5, atol=1e-5), loss=dict(rtol=1e-6, atol=1e-6),
                        grads=dict(rtol=1e-4, atol=1e-5), stats=dict(rtol=1e-5, atol=1e-6)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arch", ["seed", "default"])
@pytest.mark.parametrize("training", [True, False])
def test_model_matches_torch_twin(arch, training, dtype):
    torch.manual_seed(0)
    model = CustomCNN(arch, seed=3).to(dtype=dtype)
    model.generator = torch.Generator().manual_seed(7)
    if arch == "default" and not training:  # give eval mode non-trivial running statistics
        for s in model.stages:
            s.bn.running_mean.uniform_(-0.5, 0.5)
            s.bn.running_var.uniform_(0.5, 2.0)
    model.train(training)
    twin = cnn_twin(model)  # our weights, running statistics, dtype and mode
    assert twin.training == training and next(twin.parameters()).dtype == dtype
    x = torch.randn(16, 1, 28, 28, dtype=dtype)
    y = torch.randint(0, 10, (16,))
    if arch == "default":
        twin.mask = dropout_mask(model, (16, 36 * 24), dtype)
    tol = TOLERANCES[dtype]

    logits, loss = model(x, y)
    ref_logits, ref_loss = twin(x, y)
    torch.testing.assert_close(logits, ref_logits, **tol["logits"])
    torch.testing.assert_close(loss, ref_loss, **tol["loss"])

    loss.backward()
    ref_loss.backward()
    assert_same_gradients(model, twin, {"fc.weight"}, **tol["grads"])
    if arch == "default":  # batch norm's running statistics moved the same way (train) or not at all (eval)
        for s, ts in zip(model.stages, twin.stages):
            torch.testing.assert_close(s.bn.running_mean, ts.bn.running_mean, **tol["stats"])
            torch.testing.assert_close(s.bn.running_var, ts.bn.running_var, **tol["stats"])


@pytest.mark.parametrize("arch", ["seed", "default"])
def test_training_steps_match_the_twin(arch):
    """Five SGD steps (written out, same on both sides): the parameters stay together."""
    model = CustomCNN(arch, seed=5, dropout=0.0)
    twin = cnn_twin(model)
    lr = 0.05
    for step in range(5):
        x = torch.randn(8, 1, 28, 28)
        y = torch.randint(0, 10, (8,))
        _, loss = model(x, y)
        _, ref = twin(x, y)
        torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
        loss.backward()
        ref.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
                p.grad = None
            for p in twin.parameters():
                p -= lr * p.grad
                p.grad = None
    check = cnn_twin(model)  # our parameters after the steps, in the twin's layout
    for (name, a), b in zip(check.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_seed_arch_shapes_and_state_names():
    model = CustomCNN("seed")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {"conv1.weight": (6, 1, 5, 5), "conv1.bias": (6,), "conv2.weight": (12, 6, 5, 5),
                      "conv2.bias": (12,), "fc.weight": (192, 10), "fc.bias": (10,)}
    assert model.num_parameters() == 6 * 25 + 6 + 12 * 150 + 12 + 1920 + 10
    logits, loss = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10) and loss is None


def test_default_arch_has_batch_norm_buffers_and_dropout_only_in_training():
    model = CustomCNN("default", seed=0)
    buffers = dict(model.named_buffers())
    assert set(buffers) == {f"stages.{i}.bn.running_{s}" for i in range(3) for s in ("mean", "var")}
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    a, _ = model(x)
    b, _ = model(x)
    torch.testing.assert_close(a, b)  # eval: deterministic
    model.train()
    model.generator = torch.Generator().manual_seed(0)
    c, _ = model(x)
    d, _ = model(x)
    assert not torch.allclose(c, d)  # different dropout masks


def test_same_seed_same_weights_and_bad_arguments():
    a, b, c = CustomCNN("default", seed=1), CustomCNN("default", seed=1), CustomCNN("default", seed=2)
    for (k, v), w, u in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(v, w), k
    assert not torch.equal(a.stages[0].conv.weight, c.stages[0].conv.weight)
    with pytest.raises(ValueError, match="arch"):
        CustomCNN("resnet")
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        CustomCNN("seed")(torch.randn(2, 28, 28))


def test_init_matches_pytorch_default_bounds_and_statistics():
    g = torch.Generator().manual_seed(0)
    w = init.fan_in_uniform((64, 32, 3, 3), init.conv_fan_in((64, 32, 3, 3)), g)
    bound = 1 / math.sqrt(32 * 9)
    assert w.requires_grad and w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.02 * bound  # U(-b, b) has std b / sqrt(3)
    ref = nn.Conv2d(32, 64, 3)  # PyTorch's own default draws from the same interval
    assert ref.weight.abs().max() <= bound and ref.bias.abs().max() <= bound
    k = init.kaiming_uniform((1000, 100), 1000, g)
    assert abs(k.var().item() - 2 / 1000) < 2e-4  # He: variance 2 / fan_in
    assert init.linear_fan_in((192, 10)) == 192
    with pytest.raises(ValueError):
        init.fan_in_uniform((3,), 0)
