"""Every fast layer equals its readable reference (``ops.<layer>_reference``): forward and every
gradient (autograd's through the reference, the hand-written backward through the fast layer),
in float64 (rel. err <= 1e-10), on awkward shapes: batch 1, odd sizes, strides, padding,
non-contiguous inputs. The loop references of conv2d, max_pool2d and attention are also
checked against PyTorch's layers, in float64 and float32 (<= 1e-5), and by gradcheck."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from customnn import ops
from customnn_ref.oracle import check_layer

DTYPES = [torch.float64, torch.float32]


def r(*shape, scale=1.0):
    """A random float64 leaf that wants its gradient."""
    return (torch.randn(shape, dtype=torch.float64) * scale).requires_grad_()


def with_zeros(*shape):
    """Like r, with some exact zeros (where relu's gradient is a convention)."""
    x = torch.randn(shape, dtype=torch.float64)
    x.view(-1)[::3] = 0.0
    return x.requires_grad_()


def targets(high, shape, ignored=False):
    t = torch.randint(0, high, shape)
    if ignored:
        t.view(-1)[::3] = -100  # every third row ignored (ignore_index); the others count
    return t


# (layer, inputs (a function: drawn after the test's seed is set), kwargs) for the layers that
# take the same arguments on both sides; batch_norm and dropout have their own tests below.
CASES = [
    ("pad2d", lambda: [r(2, 3, 5, 4)], dict(padding=(1, 2, 0, 3), value=0.5)),
    ("pad2d", lambda: [r(1, 1, 3, 3).transpose(2, 3)], dict(padding=2)),
    ("pad2d", lambda: [r(2, 6, 5)], dict(padding=(-1, 2, 3, -2))),  # negative amounts crop
    ("pad2d", lambda: [r(4, 3)], dict(padding=(0, 0, 1, 0), value=-2.0)),
    ("pad2d", lambda: [r(2, 5)], dict(padding=(2, -1))),  # the last dim only
    ("pad2d", lambda: [r(2, 3, 4, 2)], dict(padding=(1, 0, 0, 2, 3, -1), value=1.5)),  # the last three dims
    ("avg_pool2d", lambda: [r(2, 3, 8, 8)], dict(kernel_size=2)),
    ("avg_pool2d", lambda: [r(1, 2, 9, 11)], dict(kernel_size=3, stride=2, padding=1)),
    ("avg_pool2d", lambda: [r(2, 2, 7, 6)], dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0))),
    ("avg_pool2d", lambda: [r(1, 3, 5, 7)], dict(kernel_size=4, stride=(2, 3), padding=2)),
    ("avg_pool2d", lambda: [r(2, 3, 9, 11)], dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                                  count_include_pad=False)),
    ("avg_pool2d", lambda: [r(3, 7, 6)], dict(kernel_size=(3, 2), stride=2, ceil_mode=True, divisor_override=4)),
    ("relu", lambda: [with_zeros(1)], {}),
    ("relu", lambda: [with_zeros(3, 17)], {}),
    ("relu", lambda: [with_zeros(4, 2, 5).transpose(0, 2)], {}),
    ("gelu", lambda: [r(1)], {}),
    ("gelu", lambda: [r(3, 17, scale=3)], {}),
    ("gelu", lambda: [r(4, 2, 5, scale=3).transpose(0, 2)], dict(approximate="tanh")),
    ("gelu", lambda: [r(7, scale=3)], dict(approximate="tanh")),
    ("flatten", lambda: [r(1, 3)], {}),
    ("flatten", lambda: [r(2, 3, 4, 5).transpose(1, 3)], {}),
    ("flatten", lambda: [r(5, 1, 1, 1)], {}),
    ("linear", lambda: [r(7), r(7, 3), r(3)], {}),
    ("linear", lambda: [r(1, 5), r(5, 1)], {}),
    ("linear", lambda: [r(2, 3, 7).transpose(0, 1), r(7, 5), r(5)], {}),
    ("embedding", lambda: [torch.tensor([[4, 4, 4, 0, 10], [1, 2, 3, 4, 5]]), r(11, 6)], {}),  # row 4 thrice
    ("embedding", lambda: [torch.tensor([2], dtype=torch.int32), r(3, 1)], {}),
    ("embedding", lambda: [torch.tensor(0), r(1, 4)], {}),
    ("softmax", lambda: [r(5, scale=4)], dict(dim=0)),
    ("softmax", lambda: [r(1, 1)], dict(dim=-1)),
    ("softmax", lambda: [r(3, 7, scale=4)], dict(dim=0)),
    ("softmax", lambda: [r(4, 6, 5, scale=300).transpose(0, 2)], dict(dim=1)),  # exp would overflow unshifted
    ("log_softmax", lambda: [r(5, scale=4)], dict(dim=0)),
    ("log_softmax", lambda: [r(1, 1)], dict(dim=-1)),
    ("log_softmax", lambda: [r(2, 3, 5, scale=4)], dict(dim=1)),
    ("log_softmax", lambda: [r(4, 6, 5, scale=300).transpose(0, 2)], dict(dim=-1)),
    ("cross_entropy", lambda: [r(9, 7, scale=3), targets(7, (9,))], {}),
    ("cross_entropy", lambda: [r(1, 3), targets(3, (1,))], dict(reduction="sum", label_smoothing=0.1)),
    ("cross_entropy", lambda: [r(9, 7), targets(7, (9,))], dict(reduction="none")),
    ("cross_entropy", lambda: [r(9, 7), targets(7, (9,), ignored=True)], dict(label_smoothing=0.2)),
    ("cross_entropy", lambda: [r(9, 7), targets(7, (9,), ignored=True)], dict(reduction="none")),
    ("cross_entropy", lambda: [r(2, 5, 3, 4), targets(5, (2, 3, 4))], dict(label_smoothing=0.3)),
    ("cross_entropy", lambda: [r(4, 3, 5).transpose(1, 2), targets(5, (4, 3))], dict(reduction="none")),
    ("cross_entropy", lambda: [r(6), torch.tensor(2)], {}),
    ("cross_entropy", lambda: [r(9, 7), targets(7, (9,), ignored=True)], dict(weight=torch.rand(7, dtype=torch.float64),
                                                                              label_smoothing=0.2)),
    ("cross_entropy", lambda: [r(2, 5, 3), torch.rand(2, 5, 3, dtype=torch.float64).requires_grad_()],
     dict(label_smoothing=0.1, weight=torch.rand(5, dtype=torch.float64) + 0.5)),  # probability targets
    ("cross_entropy", lambda: [r(4, 3), torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1)], dict(reduction="none")),
    ("layer_norm", lambda: [r(5, scale=2), r(5), r(5)], {}),
    ("layer_norm", lambda: [r(1, 7), None, None], {}),
    ("layer_norm", lambda: [r(2, 3, 8, scale=3), r(8), None], dict(eps=1e-3)),
    ("layer_norm", lambda: [r(5, 3).T, None, r(5)], {}),
    ("layer_norm", lambda: [r(2, 3, 4, scale=2), r(3, 4), r(3, 4)], {}),  # over the weight's two dims
    ("layer_norm", lambda: [r(4, 2, 3).transpose(0, 2), None, None], dict(normalized_shape=(2, 4))),
    ("attention", lambda: [r(2, 3, 7, 8), r(2, 3, 7, 8), r(2, 3, 7, 8)], dict(causal=True)),
    ("attention", lambda: [r(1, 1, 1, 4), r(1, 1, 1, 4), r(1, 1, 1, 4)], dict(causal=True)),
    ("attention", lambda: [r(2, 2, 5, 4), r(2, 2, 9, 4), r(2, 2, 9, 4)], dict(causal=False)),
    ("attention", lambda: [r(1, 2, 6, 4), r(1, 2, 3, 4), r(1, 2, 3, 4)], dict(causal=True)),
    ("rms_norm", lambda: [r(5, scale=2), r(5)], {}),
    ("rms_norm", lambda: [r(1, 7), None], {}),
    ("rms_norm", lambda: [r(2, 3, 8, scale=3), r(8)], dict(eps=1e-3)),
    ("rms_norm", lambda: [r(5, 3).T, None], dict(eps=0.0)),
    ("silu", lambda: [r(1)], {}),
    ("silu", lambda: [r(3, 17, scale=3)], {}),
    ("silu", lambda: [r(4, 2, 5, scale=3).transpose(0, 2)], {}),
    ("rope", lambda: [r(2, 3, 7, 8), *ops.rope_tables(7, 8, dtype=torch.float64)], {}),
    ("rope", lambda: [r(1, 1, 1, 2), *ops.rope_tables(1, 2, dtype=torch.float64)], {}),
    ("rope", lambda: [r(2, 5, 3, 6).transpose(1, 2), *(t.requires_grad_() for t in ops.rope_tables(5, 6, 100.0,
                                                                                                dtype=torch.float64))], {}),
]


@pytest.mark.parametrize("layer,inputs,kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_fast_layer_equals_its_reference(layer, inputs, kwargs):
    check_layer(getattr(ops, layer), getattr(ops, f"{layer}_reference"), inputs(), kwargs)


@pytest.mark.parametrize("training,stats", [(True, True), (True, False), (False, True)],
                         ids=["train", "train-no-stats", "eval"])
@pytest.mark.parametrize("shape", [(2, 3), (7, 5), (1, 3, 2, 2), (2, 3, 5, 4), (4, 2, 7)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_equals_its_reference(shape, training, stats, affine):
    C = shape[1]

    def with_stats(f):  # the running statistics, updated in place in training, are compared too
        def g(x, w, b, rm, rv):
            y = f(x, w, b, rm, rv, training, momentum=0.2, eps=1e-4)
            return (y, rm, rv) if stats else y
        return g

    w, b = (r(C), r(C)) if affine else (None, None)
    rm, rv = (torch.randn(C, dtype=torch.float64), torch.rand(C, dtype=torch.float64) + 0.5) if stats else (None, None)
    check_layer(with_stats(ops.batch_norm), with_stats(ops.batch_norm_reference), [r(*shape, scale=2), w, b, rm, rv])


@pytest.mark.parametrize("p,training", [(0.1, True), (0.5, True), (0.9, True), (0.0, True), (0.5, False), (1.0, True),
                                        (1.0, False)])
@pytest.mark.parametrize("make_x", [lambda: r(40, 50), lambda: r(1), lambda: r(3, 4, 5).transpose(0, 2)])
def test_dropout_equals_its_reference_given_the_same_generator(p, training, make_x):
    # Both draw their uniforms the same way, so the same generator state gives the same mask:
    # the outputs and gradients agree to the last bit (tolerance 0).
    def seeded(f):
        return lambda x: f(x, p, training, generator=torch.Generator().manual_seed(3))

    x = make_x()
    check_layer(seeded(ops.dropout), seeded(ops.dropout_reference), [x], tol=0.0)
    torch.manual_seed(5)  # and from the default generator, in the same state
    y = ops.dropout(x.detach(), p, training)
    torch.manual_seed(5)
    assert torch.equal(y, ops.dropout_reference(x.detach(), p, training))


def test_every_layer_has_a_reference_with_the_same_arguments_and_a_test():
    def args(f):
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]

    for layer in ops.LAYERS:
        assert args(getattr(ops, layer)) == args(getattr(ops, f"{layer}_reference")), layer
    tested = {c[0] for c in CASES} | {"conv2d", "max_pool2d", "batch_norm", "dropout"}
    assert tested == set(ops.LAYERS)

CONV_CONFIGS = [
    ((2, 3, 7, 6), (4, 3, 3, 3), {}),
    ((1, 2, 9, 8), (3, 2, 3, 2), dict(stride=(2, 3), padding=(1, 2))),
    ((2, 2, 8, 8), (2, 2, 3, 3), dict(dilation=2, padding=1, stride=2)),
    ((1, 1, 6, 6), (2, 1, 5, 5), dict(padding=2)),
    ((2, 4, 7, 6), (6, 2, 3, 2), dict(groups=2, padding="same")),  # grouped; even kernel: the extra pixel
    ((4, 6, 5), (4, 1, 3, 3), dict(groups=4, stride=2, padding="valid")),  # unbatched depthwise
]

POOL_CONFIGS = [
    ((2, 3, 8, 8), dict(kernel_size=2)),
    ((1, 2, 9, 11), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 2, 7, 6), dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0))),
    ((2, 3, 9, 11), dict(kernel_size=3, stride=2, padding=1, dilation=(2, 1), ceil_mode=True, return_indices=True)),
    ((3, 7, 6), dict(kernel_size=2, ceil_mode=True, return_indices=True)),  # unbatched
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,ws,kwargs", CONV_CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_reference_equals_torch_and_fast(xs, ws, kwargs, dtype, bias):
    x = torch.randn(xs, dtype=dtype, requires_grad=True)
    w = torch.randn(ws, dtype=dtype, requires_grad=True)
    b = torch.randn(ws[0], dtype=dtype, requires_grad=True) if bias else None
    check_layer(ops.conv2d_reference, F.conv2d, [x, w, b], kwargs)
    check_layer(ops.conv2d_reference, ops.conv2d, [x, w, b], kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs,kwargs", POOL_CONFIGS)
def test_max_pool2d_reference_equals_torch_and_fast(xs, kwargs, dtype):
    for x in (torch.randn(xs, dtype=dtype), torch.randint(0, 3, xs).to(dtype), torch.zeros(xs, dtype=dtype)):
        x.requires_grad_(True)  # random values, then many ties, then all ties
        check_layer(ops.max_pool2d_reference, F.max_pool2d, [x], kwargs)
        check_layer(ops.max_pool2d_reference, ops.max_pool2d, [x], kwargs)


def sdpa(q, k, v, causal=True, dropout_p=0.0):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shapes", [
    ((2, 3, 7, 8), (2, 3, 7, 8), (2, 3, 7, 8)),
    ((1, 1, 1, 4), (1, 1, 1, 4), (1, 1, 1, 4)),          # one position
    ((2, 2, 5, 4), (2, 2, 9, 4), (2, 2, 9, 6)),          # more keys than queries, other value size
    ((1, 2, 6, 4), (1, 2, 3, 4), (1, 2, 3, 4)),          # fewer keys than queries
])
def test_attention_reference_equals_torch(shapes, causal, dtype):
    q, k, v = (torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes)
    check_layer(ops.attention_reference, sdpa, [q, k, v], dict(causal=causal))


@pytest.mark.parametrize("causal", [True, False])
def test_attention_reference_equals_fast_attention(causal):
    q, k, v = (torch.randn(2, 4, 9, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    check_layer(ops.attention_reference, ops.attention, [q, k, v], dict(causal=causal))


def test_attention_reference_large_scores_are_stable():
    # Without subtracting the maximum, exp(1000) would overflow to inf and give nan.
    q = torch.full((1, 1, 3, 2), 30.0, dtype=torch.float64)
    k = torch.full((1, 1, 3, 2), 30.0, dtype=torch.float64)
    v = torch.randn(1, 1, 3, 2, dtype=torch.float64)
    y = ops.attention_reference(q, k, v, causal=False)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, sdpa(q, k, v, causal=False))


def test_references_gradcheck():
    # Small sizes: each gradcheck column reruns the Python loops.
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d_reference(x, w, b, padding=1, stride=(1, 2)), (x, w, b))
    xp = (torch.randperm(12).to(torch.float64) / 7).view(1, 1, 3, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.max_pool2d_reference(x, 2, 1, 1), (xp,))
    q, k, v = (torch.randn(1, 1, 3, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(ops.attention_reference, (q, k, v))


def test_reference_errors():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"x has 3 channels but weight expects 2"):
        ops.conv2d_reference(x, torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"kernel height 9"):
        ops.conv2d_reference(x, torch.randn(4, 3, 9, 9))
    with pytest.raises(ValueError, match=r"stride must be >= 1"):
        ops.conv2d_reference(x, w, stride=0)
    with pytest.raises(ValueError, match=r"padding \(2, 2\) must be at most half"):
        ops.max_pool2d_reference(x, 3, 1, 2)
    with pytest.raises(ValueError, match=r"x must be 3-D or 4-D"):
        ops.max_pool2d_reference(x[0, 0], 2)
    q = torch.randn(2, 2, 4, 8)
    with pytest.raises(ValueError, match=r"dropout_p=0 only"):
        ops.attention_reference(q, q, q, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"q, k, v shapes do not match.*\(2, 2, 4, 8\).*\(2, 2, 4, 7\)"):
        ops.attention_reference(q, torch.randn(2, 2, 4, 7), q)
    with pytest.raises(ValueError, match=r"q, k, v shapes do not match"):
        ops.attention_reference(q, q, torch.randn(2, 2, 5, 8))
    with pytest.raises(ValueError, match=r"k must be 4-D"):
        ops.attention_reference(q, q[0], q)
