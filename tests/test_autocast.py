"""Every layer of ``customnn.ops.LAYERS`` under ``torch.autocast`` against PyTorch's layer under
the same autocast.

For each layer, device present (the CPU, and CUDA where there is one), autocast dtype (bfloat16,
float16) and mix of input dtypes (float32 activations and weights, as autocast training gives
them; low-precision activations with float32 weights; float32 activations with low-precision
weights), with the same inputs and the same upstream gradient:

- the output dtype equals PyTorch's (where PyTorch accepts the mix; where it refuses, ours
  returns the activation's dtype or the autocast dtype as its policy says);
- outputs and every input gradient are close to PyTorch's, within a few low-precision ulps of
  the largest value;
- every gradient comes back in its input's dtype (float32 weights get float32 gradients);
- against the float64 truth (PyTorch's layer on the same values in float64, no autocast), ours
  is at least as accurate as PyTorch's autocast result: err_ours <= 2 err_torch + 2 ulp of the
  largest value.
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from customnn import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LOW = (torch.bfloat16, torch.float16)
# (activations, weights): "f" float32, "l" the autocast dtype
MIXES = ("ff", "lf", "fl")
# |ours - torch| <= CLOSE[dtype] * max(1, max |torch|); a few ulps of each dtype (2^-8, 2^-11)
CLOSE = {torch.bfloat16: 4 * 2.0 ** -8, torch.float16: 8 * 2.0 ** -11}


def _rope_torch(x, cos, sin):
    """The plain rotary formula (ops.rope has no F twin), in x's dtype."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def _rope_torch_cast(x, cos, sin):
    # the result in x's dtype, as ours returns it (its computation is float32 either way)
    return _rope_torch(x.float(), cos.float(), sin.float()).to(x.dtype)


# name -> (our call, torch's call, input specs); a spec is (shape, role): "a" activation, "w"
# weight (both floating, requiring grad), "i<N>" integers in [0, N), "s" a buffer (float32, no grad)
CASES = {
    "conv2d": (lambda x, w, b: ops.conv2d(x, w, b, padding=1),
               lambda x, w, b: F.conv2d(x, w, b, padding=1),
               [((2, 3, 7, 7), "a"), ((4, 3, 3, 3), "w"), ((4,), "w")]),
    "pad2d": (lambda x: ops.pad2d(x, (1, 2, 0, 1)), lambda x: F.pad(x, (1, 2, 0, 1)), [((2, 3, 5, 5), "a")]),
    "max_pool2d": (lambda x: ops.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), [((2, 3, 6, 6), "a")]),
    "avg_pool2d": (lambda x: ops.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2), [((2, 3, 6, 6), "a")]),
    "relu": (ops.relu, F.relu, [((4, 9), "a")]),
    "gelu": (ops.gelu, F.gelu, [((4, 9), "a")]),
    "gelu_tanh": (lambda x: ops.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh"), [((4, 9), "a")]),
    "silu": (ops.silu, F.silu, [((4, 9), "a")]),
    "flatten": (ops.flatten, lambda x: x.flatten(1), [((2, 3, 4), "a")]),
    "linear": (lambda x, w, b: ops.linear(x, w, b), lambda x, w, b: F.linear(x, w.T, b),
               [((2, 5, 16), "a"), ((16, 24), "w"), ((24,), "w")]),
    "linear_narrow": (lambda x, w: ops.linear(x, w), lambda x, w: F.linear(x, w.T),
                      [((6, 16), "a"), ((16, 3), "w")]),
    "embedding": (ops.embedding, F.embedding, [((2, 5), "i10"), ((10, 8), "w")]),
    "softmax": (ops.softmax, lambda x: F.softmax(x, -1), [((4, 9), "a")]),
    "log_softmax": (ops.log_softmax, lambda x: F.log_softmax(x, -1), [((4, 9), "a")]),
    "cross_entropy": (ops.cross_entropy, F.cross_entropy, [((6, 9), "a"), ((6,), "i9")]),
    "layer_norm": (lambda x, w, b: ops.layer_norm(x, w, b), lambda x, w, b: F.layer_norm(x, (16,), w, b),
                   [((2, 5, 16), "a"), ((16,), "w"), ((16,), "w")]),
    "batch_norm": (lambda x, w, b, m, v: ops.batch_norm(x, w, b, m, v, True),
                   lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, True),
                   [((4, 3, 5, 5), "a"), ((3,), "w"), ((3,), "w"), ((3,), "s"), ((3,), "s")]),
    "dropout": (lambda x: ops.dropout(x, 0.0, True), lambda x: F.dropout(x, 0.0, True), [((4, 9), "a")]),
    "attention": (lambda q, k, v: ops.attention(q, k, v, causal=True),
                  lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                  [((1, 2, 6, 8), "a"), ((1, 2, 6, 8), "a"), ((1, 2, 6, 8), "a")]),
    "attention_tiled": (lambda q, k, v: ops.attention(q, k, v, causal=True, block_q=4, block_k=4),
                        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                        [((1, 2, 10, 8), "a"), ((1, 2, 10, 8), "a"), ((1, 2, 10, 8), "a")]),
    "rms_norm": (lambda x, w: ops.rms_norm(x, w, 1e-5), lambda x, w: F.rms_norm(x, (16,), w, 1e-5),
                 [((2, 5, 16), "a"), ((16,), "w")]),
    "rope": (ops.rope, _rope_torch_cast, [((1, 2, 6, 8), "a"), ((6, 4), "w"), ((6, 4), "w")]),
}


def test_every_layer_has_a_case():
    """A layer added to LAYERS without a case here fails, so none goes untested under autocast."""
    assert set(ops.LAYERS) <= set(CASES)


def _inputs(specs, mix, low, device, seed):
    """Fresh leaves: float32 values rounded to the low dtype once, so that every dtype and the
    float64 truth see the same numbers."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, role in specs:
        if role.startswith("i"):
            out.append(torch.randint(0, int(role[1:]), shape, generator=g).to(device))
            continue
        t = torch.randn(shape, generator=g).to(low).float()
        if role == "s":
            out.append(t.abs().add(0.5).to(device) if len(out) == 4 else t.to(device))
            continue
        dtype = low if mix[0 if role == "a" else 1] == "l" else torch.float32
        out.append(t.to(device=device, dtype=dtype).requires_grad_())
    return out


def _clone(inputs, dtype=None):
    out = []
    for t in inputs:
        c = t.detach().clone()
        if dtype is not None and t.is_floating_point():
            c = c.to(dtype)
        out.append(c.requires_grad_(t.requires_grad))
    return out


def _run(fn, inputs, device, low, dout_seed, autocast=True):
    """The output and each grad-requiring input's gradient, upstream gradient seeded."""
    with torch.autocast(device, dtype=low, enabled=autocast):
        out = fn(*inputs)
    g = torch.Generator().manual_seed(dout_seed)
    dout = torch.randn(out.shape, generator=g).to(device=device, dtype=out.dtype)
    leaves = [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad(out, leaves, dout, allow_unused=True) if out.requires_grad else [None] * len(leaves)
    return out, list(grads), leaves


def _err(a, truth):
    return (a.double() - truth).abs().max().item() if a.numel() else 0.0


def _mixes(name):
    """A layer without weights has two mixes: "fl" would be "ff" again."""
    return MIXES if any(role == "w" for _, role in CASES[name][2]) else MIXES[:2]


@pytest.mark.parametrize("low", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,mix", [(n, m) for n in sorted(CASES) for m in _mixes(n)])
def test_layer_under_autocast(name, mix, device, low):
    ours_fn, torch_fn, specs = CASES[name]
    inputs = _inputs(specs, mix, low, device, seed=zlib.crc32(name.encode()) % 1000)
    ours, d_ours, leaves = _run(ours_fn, _clone(inputs), device, low, 7)
    try:
        theirs, d_theirs, _ = _run(torch_fn, _clone(inputs), device, low, 7)
    except RuntimeError:  # PyTorch refuses this mix of dtypes (e.g. layer_norm's low-precision weight)
        theirs = d_theirs = None
    ulp = CLOSE[low]
    if theirs is not None:
        assert ours.dtype == theirs.dtype, f"{name}: output dtype {ours.dtype}, PyTorch's {theirs.dtype}"
    else:
        assert ours.dtype in (inputs[0].dtype, low), f"{name}: output dtype {ours.dtype}"
    for leaf, d in zip(leaves, d_ours):
        assert d is None or d.dtype == leaf.dtype, f"{name}: gradient {d.dtype} for an input of {leaf.dtype}"
    truth, d_truth, _ = _run(torch_fn, _clone(inputs, torch.float64), device, low, 7, autocast=False)
    scale = max(1.0, truth.abs().max().item()) if truth.numel() else 1.0
    if theirs is not None:
        diff = (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.0
        assert diff <= ulp * max(1.0, theirs.double().abs().max().item()), f"{name}: output differs by {diff}"
        assert _err(ours, truth) <= 2 * _err(theirs, truth) + 2 * ulp * scale, (
            f"{name}: error {_err(ours, truth)} against float64, PyTorch's {_err(theirs, truth)}")
    else:
        assert _err(ours, truth) <= 4 * ulp * scale, f"{name}: error {_err(ours, truth)} against float64"
    for i, (d, dt) in enumerate(zip(d_ours, d_truth)):
        if dt is None:
            continue
        gscale = max(1.0, dt.abs().max().item())
        if theirs is not None and d_theirs[i] is not None:
            dth = d_theirs[i]
            diff = (d.double() - dth.double()).abs().max().item()
            assert diff <= 2 * ulp * max(1.0, dth.double().abs().max().item()), f"{name}: gradient {i} differs by {diff}"
            assert _err(d, dt) <= 2 * _err(dth, dt) + 2 * ulp * gscale, (
                f"{name}: gradient {i} error {_err(d, dt)} against float64, PyTorch's {_err(dth, dt)}")
        else:
            assert _err(d, dt) <= 8 * ulp * gscale, f"{name}: gradient {i} error {_err(d, dt)} against float64"


@pytest.mark.parametrize("low", LOW, ids=["bf16", "fp16"])
def test_conv_weight_gradient_summed_over_chunks_in_float32(low, monkeypatch):
    """The convolution forms its columns a chunk of the batch at a time and sums the weight's
    gradient over the chunks: under autocast that sum is float32, so 64 chunks stay within one
    low-precision ulp of the float64 truth's largest value (summed in the low precision they
    were 4 to 8 ulps off; PyTorch's CPU float16 convolution is too)."""
    from customnn.ops import conv

    monkeypatch.setattr(conv, "MAX_COLUMN_BYTES", 1)  # one image per chunk
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, 10, 10, generator=g).to(low).float()
    w = (torch.randn(12, 8, 3, 3, generator=g) / 8).to(low).float().requires_grad_()
    dout = torch.randn(64, 12, 10, 10, generator=g).to(low)
    with torch.autocast("cpu", dtype=low):
        out = ops.conv2d(x, w, None, 1, 1)
    out.backward(dout.to(out.dtype))
    w64 = w.detach().double().requires_grad_()
    F.conv2d(x.double(), w64, None, 1, 1).backward(dout.double())
    assert w.grad.dtype == torch.float32
    ulp = CLOSE[low] / (4 if low == torch.bfloat16 else 8)  # 2^-8, 2^-11
    assert _err(w.grad, w64.grad) <= ulp * w64.grad.abs().max().item()


@pytest.mark.parametrize("low", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("device", DEVICES)
def test_dropout_under_autocast_keeps_dtype_and_scales(device, low):
    """With p > 0 the masks differ from PyTorch's: the dtype is PyTorch's, and each element is
    0 or x / (1 - p) (x's dtype)."""
    x = torch.randn(64, 32, device=device).to(low).requires_grad_()
    with torch.autocast(device, dtype=low):
        y = ops.dropout(x, 0.5, True)
        want = F.dropout(x, 0.5, True).dtype
    assert y.dtype == want
    kept = y != 0
    assert torch.equal(y[kept], (x * 2)[kept].detach())
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert dx.dtype == x.dtype and torch.equal(dx, kept.to(low) * 2)


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_for_another_device_leaves_the_layer_alone(device, monkeypatch):
    """Autocast on for another device only (on a machine without CUDA, simulated: the "any
    autocast on" test says yes while this device's is off): the layer runs as outside autocast,
    without casting and without calling itself again."""
    from customnn.ops import _autocast

    monkeypatch.setattr(_autocast, "_any_enabled", lambda: True)
    x, w = torch.randn(3, 8, device=device), torch.randn(8, 4, device=device)
    y = ops.linear(x, w)
    assert y.dtype == torch.float32 and torch.allclose(y, x @ w)
    assert ops.layer_norm(x, None, None).dtype == torch.float32


@pytest.mark.parametrize("low", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_in_low_precision_without_autocast(name, device, low):
    """Every input in bfloat16 (or float16), no autocast (a model cast with ``--dtype bfloat16``):
    PyTorch's output dtype, and at least PyTorch's accuracy against float64 (err <= 2 err_torch
    + 2 ulp), for the output and every gradient."""
    ours_fn, torch_fn, specs = CASES[name]
    inputs = _inputs(specs, "ll", low, device, seed=zlib.crc32(name.encode()) % 1000)
    # buffers (batch norm's running statistics) too, as Module.to(dtype) casts them
    inputs = [t.to(low) if t.is_floating_point() and not t.requires_grad else t for t in inputs]
    ours, d_ours, leaves = _run(ours_fn, _clone(inputs), device, low, 7, autocast=False)
    theirs, d_theirs, _ = _run(torch_fn, _clone(inputs), device, low, 7, autocast=False)
    truth, d_truth, _ = _run(torch_fn, _clone(inputs, torch.float64), device, low, 7, autocast=False)
    ulp = CLOSE[low]
    assert ours.dtype == theirs.dtype
    scale = max(1.0, truth.abs().max().item()) if truth.numel() else 1.0
    assert _err(ours, truth) <= 2 * _err(theirs, truth) + 2 * ulp * scale, (
        f"{name}: error {_err(ours, truth)} against float64, PyTorch's {_err(theirs, truth)}")
    for i, (d, dth, dt) in enumerate(zip(d_ours, d_theirs, d_truth)):
        if dt is None:
            continue
        assert d.dtype == leaves[i].dtype
        gscale = max(1.0, dt.abs().max().item())
        assert _err(d, dt) <= 2 * _err(dth, dt) + 2 * ulp * gscale, (
            f"{name}: gradient {i} error {_err(d, dt)} against float64, PyTorch's {_err(dth, dt)}")
