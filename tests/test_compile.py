"""``--compile``: torch.compile over our own layers (their forwards and hand-written backwards)
gives the eager model's loss, gradients and next step to float32 tolerance, for a tiny GPT
and tiny CNNs; where compiling cannot work, the command refuses in one line.

The models are tiny so that the compile (TorchInductor's C++ build of each graph) stays in
seconds; PyTorch caches the built graphs, so a second run of this file is faster still.
"""

from __future__ import annotations

import os

import pytest
import torch

from customnn import ops
from customnn.core.errors import UserError
from customnn.models.cnn import CustomCNN
from customnn.models.gpt import GPT, GPTConfig
from customnn.optim import SGD
from customnn.train.loading import check_compile, compile_model, compile_unavailable
from helpers import run_customnn

pytestmark = pytest.mark.usefixtures("one_thread")

UNAVAILABLE = compile_unavailable("cpu")
needs_compile = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"torch.compile: {UNAVAILABLE}")
TOL = dict(rtol=1e-5, atol=1e-6)  # float32: the compiled kernels may sum in another order


def same_steps(make_model, x, y):
    """One training step (forward, loss, backward, SGD) and the next loss, eager and compiled,
    from the same weights: the losses, every gradient and the buffers agree. (SGD, because
    Adam's first step moves every weight by about lr whatever its gradient's size, so a
    gradient that is zero up to rounding, such as a conv bias before batch norm, would move
    each side by a different +-lr.)"""
    eager, compiled = make_model(), compile_model(make_model(), "cpu")
    results = []
    for model in (eager, compiled):
        opt = SGD(model.parameters(), lr=0.1)
        _, loss = model(x, y)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        opt.step()
        opt.zero_grad()
        _, after = model(x, y)  # the updated weights, seen through the same compiled graph
        results.append((loss.detach(), grads, after.detach(), dict(model.named_buffers())))
    (loss, grads, after, buffers), (c_loss, c_grads, c_after, c_buffers) = results
    torch.testing.assert_close(c_loss, loss, **TOL)
    assert grads.keys() == c_grads.keys()
    for name in grads:
        torch.testing.assert_close(c_grads[name], grads[name], **TOL, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(c_after, after, **TOL)
    for name in buffers:  # batch norm's running statistics, updated inside the compiled graph
        torch.testing.assert_close(c_buffers[name], buffers[name], **TOL)
    assert float(after) < float(loss)  # the step did something


@needs_compile
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_compiled_gpt_step_equals_eager(pos):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, pos=pos)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(11, (2, 8), generator=g), torch.randint(11, (2, 8), generator=g)
    same_steps(lambda: GPT(cfg, seed=3), x, y)


@needs_compile
@pytest.mark.parametrize("arch", ["seed", "default"])
def test_compiled_cnn_step_equals_eager(arch):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 1, 28, 28, generator=g), torch.randint(10, (4,), generator=g)
    same_steps(lambda: CustomCNN(arch, seed=0, dropout=0.0, width=2), x, y)


@needs_compile
@pytest.mark.parametrize("model", ["gpt learned", "gpt rope", "cnn seed", "cnn default"])
def test_every_model_traces_into_one_graph(model):
    """A training step's forward and backward are one graph (fullgraph: no break): no
    ``.item()`` and no branch on data while TorchDynamo traces (the bounds checks of embedding
    and cross-entropy are asserted on the device, max-pool and ReLU take their NaN rules at
    once). ``aot_eager`` traces without generating code."""
    import torch._dynamo

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    if model.startswith("gpt"):
        net = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, pos=model.split()[1]), seed=3)
        x, y = torch.randint(11, (2, 8), generator=g), torch.randint(11, (2, 8), generator=g)
    else:
        net = CustomCNN(model.split()[1], seed=0, dropout=0.0, width=2)
        x, y = torch.randn(4, 1, 28, 28, generator=g), torch.randint(10, (4,), generator=g)
    step = torch.compile(lambda a, b: net(a, b)[1], backend="aot_eager", fullgraph=True)
    loss = step(x, y)
    loss.backward()
    torch.testing.assert_close(loss.detach(), net(x, y)[1].detach(), **TOL)


@needs_compile
def test_a_bad_index_is_refused_under_compile_too():
    """Compiled, embedding's and cross-entropy's bounds are checked on the device: an index
    out of range is still an error, not a silent read."""
    import torch._dynamo

    torch._dynamo.reset()
    net = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16), seed=3)
    step = torch.compile(lambda a, b: net(a, b)[1], backend="aot_eager", fullgraph=True)
    good = torch.randint(11, (2, 8), generator=torch.Generator().manual_seed(0))
    step(good, good)
    for x, y, what in ((good.masked_fill(good == good[0, 0], 11), good, "embedding"),
                       (good, good.masked_fill(good == good[0, 0], -3), "cross_entropy")):
        with pytest.raises(RuntimeError, match=what):
            step(x, y)


@needs_compile
@pytest.mark.parametrize("case", ["dense", "dense strided", "dense mask", "tiled", "tiled strided"])
def test_attention_traces_into_one_graph(case):
    """TorchDynamo traces ``ops.attention`` whole (fullgraph: no break, nothing run eagerly
    between graphs), both paths, with inputs that are views (as the GPT's q, k, v) or not, and
    the traced forward and hand-written backward give the eager results. ``aot_eager`` runs the
    traced graphs without generating code, which keeps the test fast."""
    import torch._dynamo

    from customnn.ops import attention_masks

    torch._dynamo.reset()
    attention_masks._MASKS.clear()  # the causal masks are made (not read from the cache) while tracing
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(2, 3, 20, 8, generator=g, requires_grad=True) for _ in range(3)]  # (B, nh, T, hs)
    kwargs = {"block_q": 8, "block_k": 8} if "tiled" in case else {}
    if "mask" in case:
        kwargs = {"causal": False, "attn_mask": torch.rand(20, 20, generator=g) > 0.3}

    def f(q, k, v):
        return ops.attention(q, k, v, **kwargs)

    results = []
    for fn in (torch.compile(f, backend="aot_eager", fullgraph=True), f):
        for t in leaves:
            t.grad = None
        # strided: stored (B, T, nh, hs) and seen as (B, nh, T, hs), as the GPT's q, k, v
        q, k, v = [t.transpose(1, 2).contiguous().transpose(1, 2) if "strided" in case else t for t in leaves]
        y = fn(q, k, v)
        y.backward(torch.ones_like(y))
        results.append([y.detach(), *(t.grad for t in leaves)])
    for traced, eager in zip(*results):
        torch.testing.assert_close(traced, eager, **TOL)


@needs_compile
def test_compiled_generation_draws_the_eager_tokens():
    from customnn.models.sampling import generate

    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)
    prompt = [1, 2, 3]
    eager = generate(GPT(cfg, seed=3), prompt, 12, generator=torch.Generator().manual_seed(0))
    compiled = compile_model(GPT(cfg, seed=3), "cpu", generation=True)
    assert generate(compiled, prompt, 12, generator=torch.Generator().manual_seed(0)) == eager
    training = compile_model(GPT(cfg, seed=3), "cpu")  # the cached path stays eager
    assert generate(training, prompt, 12, generator=torch.Generator().manual_seed(0)) == eager


def test_without_a_compiler_compile_is_refused_in_one_line(monkeypatch, tmp_path):
    import torch._inductor.cpp_builder as cpp_builder

    def missing():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(UserError, match="--compile: no C\\+\\+ compiler found") as err:
        check_compile("cpu")
    assert "\n" not in str(err.value)
    # the command: a PATH with no compiler on it, refused before any data is read
    env_path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path))
    r = run_customnn("train", "cnn", "--compile", "--max-steps", 1, "--device", "cpu", "--out", tmp_path)
    monkeypatch.setenv("PATH", env_path)
    assert r.returncode == 2, r.stderr
    assert "--compile: no C++ compiler found" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not any(tmp_path.glob("cnn-*"))  # no run folder
