"""The GPT model against a twin built from torch.nn (nanoGPT's model.py) with copied weights:
same logits, loss and every gradient; causality; the KV cache; initialisation; config checks."""

from __future__ import annotations

import math

import pytest
import torch

from customnn.models.gpt import GPT, GPTConfig
from customnn_ref.twins import gpt_twin
from helpers import assert_same_gradients, gpt_linear_weights


def compare(cfg: GPTConfig, dtype, tol, grad_tol=None, B=3, T=None):
    """Logits and loss within ``tol``, every gradient within ``grad_tol`` (default ``tol``): keyword
    arguments of assert_close."""
    torch.manual_seed(0)
    model = GPT(cfg, seed=7).to(dtype=dtype)
    twin = gpt_twin(model)  # nanoGPT's model.py from torch.nn, our weights copied in
    T = T or cfg.block_size
    idx = torch.randint(cfg.vocab_size, (B, T))
    targets = torch.randint(cfg.vocab_size, (B, T))
    logits, loss = model(idx, targets)
    tlogits, tloss = twin(idx, targets)
    torch.testing.assert_close(logits, tlogits, **tol)
    torch.testing.assert_close(loss, tloss, **tol)
    loss.backward()
    tloss.backward()
    assert_same_gradients(model, twin, gpt_linear_weights(model), **(grad_tol or tol))


SMALL = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)
TIGHT, TIGHT_GRADS = dict(rtol=1e-12, atol=1e-12), dict(rtol=1e-10, atol=1e-12)  # float64


@pytest.mark.parametrize("bias,tie", [(True, True), (False, False), (True, False), (False, True)])
def test_same_logits_loss_and_gradients_as_torch_nn_twin_float64(bias, tie):
    compare(GPTConfig(**SMALL, bias=bias, tie_weights=tie), torch.float64, TIGHT, TIGHT_GRADS)


def test_same_logits_loss_and_gradients_as_torch_nn_twin_float32_nanogpt_size():
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    compare(cfg, torch.float32, dict(rtol=1e-4, atol=2e-5), B=4)


def test_training_steps_match_torch_nn_and_torch_optim():
    """nanoGPT's step (AdamW decaying every matrix, warmup + cosine lr, clipping at 1.0) for 25
    steps: our model and optimizer against the twin with ``torch.optim.AdamW`` and
    ``clip_grad_norm_``, float64, the same batches: the same loss at every step, the same weights
    at the end. (benchmarks/nanogpt_reference.py does this for nanoGPT's whole CPU run: identical
    val losses to four decimals at every evaluation.)"""
    from customnn.optim import AdamW, clip_grad_norm_, cosine_lr, set_lr

    cfg = GPTConfig(**SMALL, bias=False)
    model = GPT(cfg, seed=3).to(dtype=torch.float64)
    twin = gpt_twin(model)
    lr_at = cosine_lr(1e-2, 5, 25, 1e-3)

    def groups(params):
        params = list(params)
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

    ours = AdamW(groups(model.parameters()), lr=1e-2, betas=(0.9, 0.99))
    theirs = torch.optim.AdamW(groups(twin.parameters()), lr=1e-2, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(0)
    for step in range(25):
        idx = torch.randint(cfg.vocab_size, (4, 16), generator=g)
        targets = (3 * idx + 1) % cfg.vocab_size  # a rule to learn
        set_lr(ours, lr_at(step))
        for group in theirs.param_groups:
            group["lr"] = lr_at(step)
        _, loss = model(idx, targets)
        _, tloss = twin(idx, targets)
        torch.testing.assert_close(loss, tloss, rtol=1e-10, atol=1e-10, msg=f"step {step}")
        loss.backward()
        tloss.backward()
        norm, tnorm = clip_grad_norm_(model.parameters(), 1.0), torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        torch.testing.assert_close(norm, tnorm, rtol=1e-10, atol=1e-10)
        ours.step()
        theirs.step()
        ours.zero_grad()
        theirs.zero_grad()
    assert loss.item() < math.log(cfg.vocab_size) - 0.05  # it learned something: the test exercises the updates
    twin_after = gpt_twin(model)  # our final weights in the twin's layout
    for (name, p), q in zip(twin.named_parameters(), twin_after.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)


def test_shorter_sequences_than_block_size():
    compare(GPTConfig(**SMALL), torch.float64, TIGHT, TIGHT_GRADS, T=5)


def test_causal_a_later_token_never_changes_earlier_logits():
    cfg = GPTConfig(**SMALL)
    model = GPT(cfg, seed=3).to(dtype=torch.float64)
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size))
    base, _ = model(idx)
    for t in (0, 5, cfg.block_size - 1):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % cfg.vocab_size
        out, _ = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        assert (out[:, t] - base[:, t]).abs().max() > 1e-6  # the changed position itself does move


def test_cached_forward_equals_full_forward():
    cfg = GPTConfig(**SMALL)
    model = GPT(cfg, seed=5).to(dtype=torch.float64).eval()
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size))
    full, _ = model(idx)
    cache = model.new_cache(batch_size=2)
    with torch.no_grad():
        pre, _ = model(idx[:, :6], cache=cache)  # prefill 6 positions
        outs = [pre]
        for t in range(6, cfg.block_size):  # then one position at a time
            out, _ = model(idx[:, t:t + 1], cache=cache)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full.detach(), rtol=1e-10, atol=1e-10)
    assert cache.length == cfg.block_size
    with pytest.raises(ValueError, match="longer than block_size"):
        model(idx[:, :1], cache=cache)


@pytest.mark.parametrize("name", ["gpt2", "rope"])
def test_cache_is_preallocated_and_written_in_place(name, monkeypatch):
    """One (B, nh, block_size, hs) buffer per layer for keys and one for values, allocated with the
    cache; a token writes its own key and value there and concatenates nothing."""
    cfg = GPTConfig(**SMALL, **({} if name == "gpt2" else OPTION_SETS[name]))
    model = GPT(cfg, seed=5).to(dtype=torch.float64).eval()
    cache = model.new_cache(batch_size=2)
    hs = cfg.n_embd // cfg.n_head
    assert len(cache.k) == len(cache.v) == cfg.n_layer
    assert all(t.shape == (2, cfg.n_head, cfg.block_size, hs) for t in cache.k + cache.v)
    storage = [t.data_ptr() for t in cache.k + cache.v]
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size))
    calls = []
    with torch.no_grad():
        model(idx[:, :5], cache=cache)
        for fn in ("cat", "stack"):  # from here on, one position per call: no copy of the cache
            original = getattr(torch, fn)
            monkeypatch.setattr(torch, fn, lambda *a, _f=original, _n=fn, **k: calls.append(_n) or _f(*a, **k))
        for t in range(5, 9):
            model(idx[:, t:t + 1], cache=cache)
    monkeypatch.undo()
    assert calls == [] and cache.length == 9
    assert [t.data_ptr() for t in cache.k + cache.v] == storage
    # the buffers hold the keys and values of the positions seen, and nothing past them
    assert all(bool(t[:, :, :9].abs().sum(-1).gt(0).all()) for t in cache.k + cache.v)
    assert all(bool((t[:, :, 9:] == 0).all()) for t in cache.k + cache.v)
    cache.reset()
    with torch.no_grad():  # a re-prefill after a reset writes over the same buffers
        again, _ = model(idx[:, 3:10], cache=cache)
    full, _ = model(idx[:, 3:10])
    torch.testing.assert_close(again, full.detach(), rtol=1e-10, atol=1e-10)
    assert [t.data_ptr() for t in cache.k + cache.v] == storage


def test_last_only_gives_the_last_positions_logits():
    cfg = GPTConfig(**SMALL)
    model = GPT(cfg, seed=5).to(dtype=torch.float64)
    idx = torch.randint(cfg.vocab_size, (2, 9))
    full, _ = model(idx)
    last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, cfg.vocab_size)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-12, atol=1e-12)


def test_gpt2_initialisation_is_seeded_and_scaled():
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    a, b, c = GPT(cfg, seed=1), GPT(cfg, seed=1), GPT(cfg, seed=2)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
        if "weight" in name and "ln" not in name:
            assert not torch.equal(p, r), name
    sd = a.state_dict()
    assert abs(sd["blocks.0.attn.c_attn.weight"].std().item() - 0.02) < 0.002
    assert abs(sd["blocks.0.mlp.c_proj.weight"].std().item() - 0.02 / math.sqrt(8)) < 0.001
    assert abs(sd["blocks.1.attn.c_proj.weight"].std().item() - 0.02 / math.sqrt(8)) < 0.001
    assert torch.equal(sd["blocks.0.ln_1.weight"], torch.ones(128))
    assert torch.equal(sd["blocks.0.attn.c_attn.bias"], torch.zeros(384))
    assert "lm_head" not in sd  # tied to wte
    # parameter count of nanoGPT's CPU model (its count excludes the position table)
    assert a.num_parameters() - cfg.block_size * cfg.n_embd == 801_664


def test_uniform_loss_at_initialisation():
    cfg = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(65, (8, 32), generator=g)
    targets = torch.randint(65, (8, 32), generator=g)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(65)) < 0.05


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(n_layer=0), "n_layer"),
    (dict(dropout=1.0), "dropout"),
    (dict(vocab_size=2.5), "vocab_size"),
])
def test_config_is_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


def test_dropout_only_in_training_mode():
    cfg = GPTConfig(**SMALL, dropout=0.5)
    model = GPT(cfg, seed=0)
    idx = torch.randint(cfg.vocab_size, (2, 8))
    model.eval()
    a, _ = model(idx)
    b, _ = model(idx)
    assert torch.equal(a, b)
    model.train()
    c, _ = model(idx)
    assert not torch.allclose(a, c)


# --- the architecture options: RMSNorm, RoPE, SwiGLU, QK-norm -------------------------------------
OPTION_SETS = {
    "rmsnorm": dict(norm="rmsnorm"),
    "rope": dict(pos="rope"),
    "swiglu": dict(mlp="swiglu"),
    "qk_norm": dict(qk_norm=True),
    "all": dict(norm="rmsnorm", pos="rope", mlp="swiglu", qk_norm=True),
}


@pytest.mark.parametrize("bias,tie", [(True, True), (False, False)])
@pytest.mark.parametrize("name", OPTION_SETS)
def test_each_option_matches_the_torch_nn_twin_float64(name, bias, tie):
    compare(GPTConfig(**SMALL, **OPTION_SETS[name], bias=bias, tie_weights=tie), torch.float64, TIGHT, TIGHT_GRADS)


def test_all_options_match_the_twin_float32_and_on_shorter_sequences():
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64, **OPTION_SETS["all"])
    compare(cfg, torch.float32, dict(rtol=1e-4, atol=2e-5), B=2)
    compare(GPTConfig(**SMALL, **OPTION_SETS["all"]), torch.float64, TIGHT, TIGHT_GRADS, T=5)


@pytest.mark.parametrize("name", ["rope", "all"])
def test_cached_forward_equals_full_forward_with_rope(name):
    """With RoPE the new token's query and key are rotated for position cache.length."""
    cfg = GPTConfig(**SMALL, **OPTION_SETS[name])
    model = GPT(cfg, seed=5).to(dtype=torch.float64).eval()
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size))
    full, _ = model(idx)
    cache = model.new_cache(batch_size=2)
    with torch.no_grad():
        outs = [model(idx[:, :6], cache=cache)[0]]
        outs += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(6, cfg.block_size)]
    torch.testing.assert_close(torch.cat(outs, dim=1), full.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["rope", "all"])
def test_generation_with_the_cache_equals_generation_without_it_with_rope(name):
    from customnn.models.sampling import generate

    cfg = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16, **OPTION_SETS[name])
    model = GPT(cfg, seed=4).to(dtype=torch.float64)
    for prompt_len, keep in ((3, None), (3, 1), (40, 16)):
        prompt = torch.randint(13, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
        outs = [generate(model, prompt, 50, generator=torch.Generator().manual_seed(123), use_cache=use_cache,
                         keep=keep) for use_cache in (True, False)]
        assert outs[0] == outs[1] and len(outs[0]) == 50


def test_rope_model_has_no_position_table_and_each_option_its_tensors():
    shapes = GPTConfig(**SMALL, **OPTION_SETS["all"]).state_shapes()  # on the meta device
    assert "wpe" not in shapes and shapes["wte"] == (11, 16)
    assert shapes["blocks.0.attn.q_norm.weight"] == shapes["blocks.0.attn.k_norm.weight"] == (8,)
    assert shapes["blocks.0.mlp.c_fc.weight"] == (16, 2 * 43) and shapes["blocks.0.mlp.c_proj.weight"] == (43, 16)
    assert "blocks.0.ln_1.bias" not in shapes and shapes["ln_f.weight"] == (16,)  # RMSNorm: a gain only
    model = GPT(GPTConfig(**SMALL, **OPTION_SETS["all"]))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert set(GPTConfig(**SMALL).state_shapes()) == set(GPT(GPTConfig(**SMALL)).state_dict())


def test_swiglu_keeps_about_the_parameters_of_the_gelu_mlp():
    for C in (64, 128, 384):
        cfg = GPTConfig(n_embd=C, n_head=4, bias=False)
        assert cfg.swiglu_hidden() == round(8 * C / 3)
        gelu = GPT(GPTConfig(n_embd=C, n_head=4, bias=False)).num_parameters()
        swiglu = GPT(GPTConfig(n_embd=C, n_head=4, bias=False, mlp="swiglu")).num_parameters()
        assert abs(swiglu - gelu) / gelu < 0.005


def test_defaults_are_the_original_model_and_its_configuration():
    """A configuration without the option keys (every checkpoint written before them) is the
    original model, and ``to_dict`` writes no option key while it has its default."""
    old = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True, tie_weights=True)
    cfg = GPTConfig(**old)
    assert cfg.to_dict() == old
    assert (cfg.norm, cfg.pos, cfg.mlp, cfg.qk_norm) == ("layernorm", "learned", "gelu", False)
    a, b = GPT(cfg, seed=3), GPT(GPTConfig(**old, norm="layernorm", pos="learned", mlp="gelu", qk_norm=False), seed=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    new = GPTConfig(**old, pos="rope", qk_norm=True)
    assert new.to_dict() == {**old, "pos": "rope", "qk_norm": True}
    assert GPTConfig(**new.to_dict()) == new


@pytest.mark.parametrize("kwargs,match", [
    (dict(norm="batchnorm"), "norm must be one of 'layernorm', 'rmsnorm'"),
    (dict(pos="alibi"), "pos must be one of"),
    (dict(mlp="relu"), "mlp must be one of"),
    (dict(qk_norm="yes"), "qk_norm must be True or False"),
    (dict(pos="rope", n_embd=6, n_head=2), "even head size"),
])
def test_option_values_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


def test_a_checkpoint_of_a_model_with_every_option_loads_back(tmp_path):
    from customnn.train.checkpoint import load_checkpoint, save_checkpoint
    from customnn.train.gpt import gpt_from_checkpoint

    cfg = GPTConfig(vocab_size=5, block_size=8, n_layer=2, n_head=2, n_embd=8, **OPTION_SETS["all"])
    model = GPT(cfg, seed=2)
    path = tmp_path / "gpt.safetensors"
    save_checkpoint(path, model.state_dict(), {"model": "gpt", "config": cfg.to_dict(), "vocab": "abcde", "step": 0})
    loaded, vocab = gpt_from_checkpoint(load_checkpoint(path), path)
    assert loaded.config == cfg and vocab.chars == "abcde"
    idx = torch.randint(5, (2, 8))
    torch.testing.assert_close(loaded(idx)[0], model.eval()(idx)[0], rtol=0, atol=0)
