"""softmax, log_softmax and cross_entropy against torch.nn.functional: forward, gradients,
gradcheck (every reduction, ignore_index, label smoothing), errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from customnn_ref.oracle import check_layer

DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("ours,ref", [(ops.softmax, F.softmax), (ops.log_softmax, F.log_softmax)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((5,), 0), ((1, 1), -1), ((3, 7), 1), ((3, 7), 0), ((2, 3, 5), 1), ((12, 4, 9, 9), -1)])
def test_softmax_matches_functional(ours, ref, dtype, shape, dim):
    x = (torch.randn(shape, dtype=dtype) * 4).requires_grad_()
    check_layer(ours, ref, [x], {"dim": dim})


@pytest.mark.parametrize("ours,ref", [(ops.softmax, F.softmax), (ops.log_softmax, F.log_softmax)])
def test_softmax_non_contiguous_and_large_values(ours, ref):
    base = (torch.randn(4, 6, 5, dtype=torch.float64) * 300).requires_grad_()  # exp would overflow unshifted
    check_layer(lambda t, dim: ours(t.transpose(0, 2), dim), lambda t, dim: ref(t.transpose(0, 2), dim), [base], {"dim": 1})
    y = ours(base.detach().float() * 10, dim=-1)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("ours", [ops.softmax, ops.log_softmax])
def test_softmax_gradcheck(ours):
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ours(t, dim=1), (x,))
    assert torch.autograd.gradcheck(lambda t: ours(t, dim=-1), (x,))


def test_softmax_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        ops.softmax(torch.randn(2, 3), dim=2)


def _ce_case(logits_shape, dtype, ignore=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = logits_shape[0] if len(logits_shape) == 1 else logits_shape[1]
    logits = (torch.randn(logits_shape, generator=g, dtype=dtype) * 2).requires_grad_()
    t_shape = () if len(logits_shape) == 1 else logits_shape[:1] + logits_shape[2:]
    target = torch.randint(0, C, t_shape, generator=g)
    if ignore is not None and target.numel() > 1:
        target.view(-1)[:: 3] = ignore
    return logits, target


CE_SHAPES = [(7,), (1, 5), (6, 4), (4, 3, 5), (2, 4, 3, 2), (768, 65)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index,smoothing", [(-100, 0.0), (-100, 0.1), (2, 0.0), (-1, 0.25)])
def test_cross_entropy_matches_functional(dtype, shape, reduction, ignore_index, smoothing):
    logits, target = _ce_case(shape, dtype, ignore=ignore_index if ignore_index != -100 else None)
    kwargs = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    check_layer(ops.cross_entropy, F.cross_entropy, [logits, target], kwargs)


def test_cross_entropy_gpt_path_non_contiguous_logits():
    # logits.view(-1, V) of (B, T, V), and logits that are a transposed view
    base = torch.randn(65, 24, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 65, (24,))
    check_layer(lambda t, y: ops.cross_entropy(t.T, y), lambda t, y: F.cross_entropy(t.T, y), [base, target])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index,smoothing", [(-100, 0.0), (1, 0.0), (-100, 0.2), (1, 0.3)])
@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2)])
def test_cross_entropy_gradcheck(reduction, ignore_index, smoothing, shape):
    logits, target = _ce_case(shape, torch.float64, ignore=ignore_index if ignore_index != -100 else None)
    fn = lambda t: ops.cross_entropy(t, target, ignore_index, reduction, smoothing)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_all_ignored_as_pytorch(reduction, smoothing):
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    target = torch.full((4,), -100)
    ours = ops.cross_entropy(logits, target, reduction=reduction, label_smoothing=smoothing)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_logits, target, reduction=reduction, label_smoothing=smoothing)
    torch.testing.assert_close(ours, ref, equal_nan=True)  # mean: nan (0/0), as PyTorch
    ours.sum().backward()
    ref.sum().backward()
    assert torch.equal(logits.grad, ref_logits.grad)  # zeros
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_cross_entropy_target_without_grad_logits():
    logits, target = torch.randn(5, 3), torch.randint(0, 3, (5,))
    loss = ops.cross_entropy(logits, target)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))


def test_cross_entropy_bfloat16():
    logits = torch.randn(16, 10).bfloat16().requires_grad_()
    target = torch.randint(0, 10, (16,))
    loss = ops.cross_entropy(logits, target)
    assert loss.dtype == torch.bfloat16
    torch.testing.assert_close(loss.float(), F.cross_entropy(logits.float(), target), rtol=2e-2, atol=2e-2)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


def test_cross_entropy_errors():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"\[0, 3\).*\[3\]"):
        ops.cross_entropy(logits, torch.tensor([0, 1, 3, 2]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ops.cross_entropy(logits, torch.tensor([0, -2, 1, 2]))
    with pytest.raises(ValueError, match=r"target shape \(5,\)"):
        ops.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError, match=r"target shape"):
        ops.cross_entropy(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="class probabilities and must have the logits' shape"):
        ops.cross_entropy(logits, torch.rand(4))
    with pytest.raises(ValueError, match="integer class indices or float class probabilities"):
        ops.cross_entropy(logits, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="ignore_index does not apply"):
        ops.cross_entropy(logits, torch.rand(4, 3), ignore_index=0)
    with pytest.raises(ValueError, match=r"weight must be a \(3,\) tensor"):
        ops.cross_entropy(logits, torch.tensor([0, 1, 2, 0]), weight=torch.ones(4))
    with pytest.raises(ValueError, match="reduction"):
        ops.cross_entropy(logits, torch.tensor([0, 1, 2, 0]), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.cross_entropy(logits, torch.tensor([0, 1, 2, 0]), label_smoothing=1.5)
    # ignore_index itself is not out of range
    assert torch.isfinite(ops.cross_entropy(logits, torch.tensor([0, -100, 2, 0])))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_backward_twice_gives_the_same_gradient(reduction, smoothing):
    # The forward keeps probs - q for the backward; a second backward (retain_graph) must find
    # it unchanged, and an exp-path-sized input (more than a few thousand values) goes the exp2 way.
    for n, c in ((6, 5), (80, 65)):
        logits = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
        target = torch.randint(0, c, (n,))
        target[0] = -100
        loss = ops.cross_entropy(logits, target, reduction=reduction, label_smoothing=smoothing)
        dout = torch.rand_like(loss)
        (g1,) = torch.autograd.grad(loss, logits, dout, retain_graph=True)
        (g2,) = torch.autograd.grad(loss, logits, dout)
        assert torch.equal(g1, g2)
        ref = F.cross_entropy(logits, target, reduction=reduction, label_smoothing=smoothing)
        (gr,) = torch.autograd.grad(ref, logits, dout)
        torch.testing.assert_close(g1, gr, rtol=0, atol=1e-12)
        assert torch.all(g1[0] == 0)  # the ignored row gets no gradient


# ----------------------------------------------------------------------------- class weights, probability targets

def _options_case(shape, dtype, soft, ignore, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[0] if len(shape) == 1 else shape[1]
    logits = (torch.randn(shape, generator=g, dtype=dtype) * 2).requires_grad_()
    weight = torch.rand(C, generator=g, dtype=dtype) + 0.2
    if soft:  # class probabilities along the class dim, that want their gradient too
        target = torch.rand(shape, generator=g, dtype=dtype)
        target = (target / target.sum(0 if len(shape) == 1 else 1, keepdim=True)).requires_grad_()
    else:
        target = torch.randint(0, C, shape[:1] + shape[2:] if len(shape) > 1 else (), generator=g)
        if ignore and target.numel() > 1:
            target.view(-1)[::3] = 1
    return logits, target, weight


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (6, 4), (3, 5, 2), (2, 4, 3, 2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("kind", ["weight", "weight+ignore", "soft", "soft+weight"])
def test_cross_entropy_weight_and_probability_targets_match_functional(dtype, shape, reduction, smoothing, kind):
    soft, ignore = kind.startswith("soft"), kind.endswith("ignore")
    logits, target, weight = _options_case(shape, dtype, soft, ignore)
    kwargs = dict(reduction=reduction, label_smoothing=smoothing, weight=weight if "weight" in kind else None)
    if ignore:
        kwargs["ignore_index"] = 1
        if target.numel() == 1:
            return  # every row ignored: nan as PyTorch, tested elsewhere
    check_layer(ops.cross_entropy, F.cross_entropy, [logits, target], kwargs)
    if dtype == torch.float64:
        check_layer(ops.cross_entropy_reference, F.cross_entropy, [logits, target], kwargs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["weight+ignore", "soft", "soft+weight"])
def test_cross_entropy_options_gradcheck(reduction, kind):
    soft = kind.startswith("soft")
    logits, target, weight = _options_case((4, 3, 2), torch.float64, soft, ignore=not soft)
    if not soft:
        target.view(-1)[1:3] = torch.tensor([0, 2])  # some rows that count
    kwargs = dict(reduction=reduction, label_smoothing=0.1, weight=weight if "weight" in kind else None,
                  ignore_index=1 if not soft else -100)
    inputs = (logits, target) if soft else (logits,)
    fn = (lambda z, t: ops.cross_entropy(z, t, **kwargs)) if soft else (lambda z: ops.cross_entropy(z, target, **kwargs))
    assert torch.autograd.gradcheck(fn, inputs)


def test_cross_entropy_weighted_mean_divides_by_the_targets_weights():
    logits = torch.zeros(2, 3, dtype=torch.float64)  # every row's loss is log 3
    w = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    loss = ops.cross_entropy(logits, torch.tensor([0, 2]), weight=w)
    torch.testing.assert_close(loss, torch.tensor(math.log(3), dtype=torch.float64))  # (1 + 4) log 3 / (1 + 4)
