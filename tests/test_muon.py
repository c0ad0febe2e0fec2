"""Muon (customnn/optim/muon.py): Newton-Schulz against the SVD's U V^T, updates computed by hand and by
a line-by-line transcription of the published ``muon_update`` on PyTorch's (out, in) layout, the
AdamW half equal to optim.AdamW, the standard split, one schedule for both halves through
set_lr, and a state_dict round trip that resumes bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from customnn import optim
from customnn.models.gpt import GPT, GPTConfig
from customnn.optim.muon import NS_COEFFICIENTS, Muon, muon_groups, newton_schulz5, state_keys


# --- Newton-Schulz -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (20, 36), (5, 3), (64, 128)])
def test_newton_schulz_is_an_approximate_u_v_transpose(shape):
    """NS5(G) = U p(S) V^T with G = U S V^T: the singular vectors of G exactly (float64), and
    each singular value mapped into the known band around 1 (about [0.68, 1.14] for these
    coefficients, for singular values not tiny against ||G||_F)."""
    G = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(shape[0] + shape[1]))
    X = newton_schulz5(G)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    assert (S / S.norm()).min() > 2e-3  # every singular value is far enough from 0 to converge
    D = U.T @ X @ Vh.T  # diagonal when X has G's singular vectors
    off = D - torch.diag(torch.diagonal(D))
    assert off.abs().max() < 1e-10
    sv = torch.diagonal(D)
    assert 0.68 <= sv.min() and sv.max() <= 1.2, sv
    assert torch.linalg.matrix_norm(X - U @ Vh, ord=2) <= 0.33  # within a third of U V^T, spectral norm
    torch.testing.assert_close(torch.linalg.svdvals(X), sv.sort(descending=True).values, rtol=1e-10, atol=1e-10)


def test_newton_schulz_of_a_rank_one_matrix_by_hand():
    """G = sigma u v^T: X = u v^T * x0, x0 = sigma / (sigma + 1e-7), then five times
    x <- a x + b x^3 + c x^5, in plain Python floats."""
    u = torch.tensor([3.0, 4.0], dtype=torch.float64) / 5  # unit vectors
    v = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3
    sigma = 2.5
    a, b, c = 3.4445, -4.7750, 2.0315
    x = sigma / (sigma + 1e-7)
    for _ in range(5):
        x = a * x + b * x ** 3 + c * x ** 5
    torch.testing.assert_close(newton_schulz5(sigma * torch.outer(u, v)), x * torch.outer(u, v), rtol=1e-13, atol=1e-15)
    assert NS_COEFFICIENTS == (a, b, c)
    assert 0.68 < x < 1.2


def test_newton_schulz_float32_close_to_float64_and_transpose_equivariant():
    G = torch.randn(24, 40, dtype=torch.float64)
    torch.testing.assert_close(newton_schulz5(G.float()).double(), newton_schulz5(G), rtol=0, atol=2e-5)
    assert newton_schulz5(G.float()).dtype == torch.float32
    torch.testing.assert_close(newton_schulz5(G.T), newton_schulz5(G).T, rtol=1e-12, atol=1e-12)


# --- the update ----------------------------------------------------------------------------------
def published_muon_update(grad, momentum, beta=0.95, ns_steps=5, nesterov=True):
    """Keller Jordan's ``muon_update`` (the Muon repository), with its zeropower function, on a
    PyTorch-layout (out, in) gradient, in the gradient's dtype instead of bfloat16."""
    def zeropower_via_newtonschulz5(G, steps):
        a, b, c = (3.4445, -4.7750, 2.0315)
        X = G
        if G.size(-2) > G.size(-1):
            X = X.mT
        X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
        for _ in range(steps):
            A = X @ X.mT
            B = b * A + c * A @ A
            X = a * X + B @ X
        if G.size(-2) > G.size(-1):
            X = X.mT
        return X

    momentum.lerp_(grad, 1 - beta)
    update = grad.lerp_(momentum, beta) if nesterov else momentum
    update = zeropower_via_newtonschulz5(update, steps=ns_steps)
    update *= max(1, grad.size(-2) / grad.size(-1)) ** 0.5
    return update


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])
def test_updates_equal_the_published_recipe_on_the_transposed_layout(nesterov, shape):
    """Our (in, out) weight against the recipe on PyTorch's (out, in) weight (the transpose),
    with decoupled weight decay, for 6 steps of random gradients."""
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(shape, dtype=torch.float64, generator=g)
    ours = w0.clone().requires_grad_()
    theirs, buf = w0.T.clone(), torch.zeros(shape[::-1], dtype=torch.float64)
    lr, wd = 0.02, 0.1
    opt = Muon([ours], lr=lr, weight_decay=wd, nesterov=nesterov)
    for _ in range(6):
        grad = torch.randn(shape, dtype=torch.float64, generator=g)
        ours.grad = grad.clone()
        opt.step()
        theirs.mul_(1 - lr * wd)  # the repository's Muon.step
        theirs.add_(published_muon_update(grad.T.clone(), buf, nesterov=nesterov), alpha=-lr)
        torch.testing.assert_close(ours.detach(), theirs.T, rtol=1e-12, atol=1e-14)
    assert set(opt.state[ours]) == {"momentum_buffer"}
    torch.testing.assert_close(opt.state[ours]["momentum_buffer"], buf.T, rtol=1e-14, atol=1e-15)


def test_three_steps_by_hand_on_a_rank_one_gradient():
    """A constant rank-one gradient G = 4 u v^T on a (2, 3) matrix, (in, out) = (2, 3): the
    momentum buffer stays along u v^T, so every step moves the weight by lr * s * scale * u v^T,
    s = the Newton-Schulz map of 1 (by hand, below) and scale = max(1, 3 / 2) ** 0.5."""
    u = torch.tensor([0.6, 0.8], dtype=torch.float64)
    v = torch.tensor([2.0, 1.0, 2.0], dtype=torch.float64) / 3
    W = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    opt = Muon([W], lr=0.1, momentum=0.9)
    a, b, c = NS_COEFFICIENTS
    for step in range(1, 4):
        W.grad = 4.0 * torch.outer(u, v)
        opt.step()
        # b_k = (1 - 0.9^k) * G; Nesterov u_k = 0.1 G + 0.9 b_k: still sigma u v^T with sigma > 0
        sigma = 4.0 * (0.1 + 0.9 * (1 - 0.9 ** step))
        x = sigma / (sigma + 1e-7)
        for _ in range(5):
            x = a * x + b * x ** 3 + c * x ** 5
        if step == 1:
            moved = 0.0
        moved += 0.1 * x * 1.5 ** 0.5
        torch.testing.assert_close(W.detach(), -moved * torch.outer(u, v), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(opt.state[W]["momentum_buffer"], (1 - 0.9 ** step) * 4.0 * torch.outer(u, v))


def test_the_adamw_groups_are_optim_adamw():
    g = torch.Generator().manual_seed(2)
    w, b = torch.randn(4, 5, dtype=torch.float64, generator=g), torch.randn(5, dtype=torch.float64, generator=g)
    ours = [t.clone().requires_grad_() for t in (w, b)]
    ref = [t.clone().requires_grad_() for t in (w, b)]
    opt = Muon([{"params": ours, "use_muon": False}], lr=0.01, weight_decay=0.1, betas=(0.9, 0.99))
    adamw = optim.AdamW(ref, lr=0.01, weight_decay=0.1, betas=(0.9, 0.99))
    for _ in range(5):
        grads = [torch.randn(t.shape, dtype=torch.float64, generator=g) for t in ours]
        for t, r, gr in zip(ours, ref, grads):
            t.grad, r.grad = gr.clone(), gr.clone()
        opt.step()
        adamw.step()
    for t, r in zip(ours, ref):
        assert torch.equal(t, r)


# --- the split, the schedule, the state ----------------------------------------------------------
def test_muon_groups_is_the_standard_split_of_a_gpt():
    for tie in (True, False):
        model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, tie_weights=tie,
                              qk_norm=True, mlp="swiglu"))
        groups = muon_groups(model.named_parameters(), lr=3e-3, muon_lr=0.02, weight_decay=0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        hidden = {names[id(p)] for p in groups[0]["params"]}
        rest = {names[id(p)] for p in groups[1]["params"]}
        assert hidden == {f"blocks.{i}.{m}.{l}.weight" for i in range(2)
                          for m, l in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj"))}
        assert rest == set(names.values()) - hidden
        assert {"wte", "wpe"} <= rest and ("lm_head" in rest) == (not tie)
        assert groups[0]["use_muon"] and not groups[1]["use_muon"]
        assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
        opt = Muon(groups, lr=3e-3)
        assert [g["lr"] for g in opt.param_groups] == [0.02, 3e-3]
        optim.set_lr(opt, 1.5e-3)  # one schedule drives both
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01) and opt.param_groups[1]["lr"] == 1.5e-3


def make_problem():
    g = torch.Generator().manual_seed(4)

    def randn(*shape):
        return torch.randn(shape, generator=g, dtype=torch.float64)

    x, y = randn(32, 5), randn(32, 3)
    params = [randn(5, 8) * 0.5, randn(8), randn(8, 3) * 0.5, randn(3)]  # w1, b1, w2, b2

    def loss_fn(ps):
        w1, b1, w2, b2 = ps
        return ((torch.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2).mean()

    return params, loss_fn


def make_muon(ps):
    return Muon(muon_groups(zip(("w1", "b1", "w2", "b2"), ps), lr=0.01, muon_lr=0.05, weight_decay=0.01), lr=0.01)


def train(opt, ps, loss_fn, steps, lr_at):
    for it in steps:
        optim.set_lr(opt, lr_at(it))
        loss_fn(ps).backward()
        opt.step()
        opt.zero_grad()


def test_state_dict_round_trip_resumes_exactly():
    p0, loss_fn = make_problem()
    lr_at = optim.cosine_lr(0.01, 3, 20, 1e-3)
    straight = [p.clone().requires_grad_() for p in p0]
    train(make_muon(straight), straight, loss_fn, range(20), lr_at)

    first = [p.clone().requires_grad_() for p in p0]
    opt1 = make_muon(first)
    train(opt1, first, loss_fn, range(10), lr_at)
    saved = opt1.state_dict()
    snapshot = copy.deepcopy(saved)
    resumed = [p.detach().clone().requires_grad_() for p in first]
    train(opt1, first, loss_fn, range(10, 12), lr_at)  # the saved dict is a snapshot
    for k, s in saved["state"].items():
        for key, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(snapshot["state"][k][key]))
    assert set(saved["state"][0]) == {"momentum_buffer"} and set(saved["state"][2]) == {"step", "exp_avg", "exp_avg_sq"}
    for group in opt1.param_groups:
        assert all(set(opt1.state[p]) == state_keys(group) for p in group["params"])

    opt2 = make_muon(resumed)
    opt2.load_state_dict(saved)
    train(opt2, resumed, loss_fn, range(10, 20), lr_at)
    for a, b in zip(resumed, straight):
        assert torch.equal(a, b)
    assert loss_fn(straight) < loss_fn(p0)  # it trained


def test_a_small_gpt_learns_with_muon():
    cfg = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, norm="rmsnorm", pos="rope")
    model = GPT(cfg, seed=0).to(dtype=torch.float64)
    opt = Muon(muon_groups(model.named_parameters(), lr=1e-2, muon_lr=0.02), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        idx = torch.randint(11, (4, 16), generator=g)
        _, loss = model(idx, (3 * idx + 1) % 11)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(momentum=1.0), "momentum"),
    (dict(ns_steps=0), "ns_steps"),
    (dict(nesterov=1), "nesterov"),
    (dict(lr=-1.0), "lr"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon([torch.zeros(2, 3, requires_grad=True)], **kwargs)


def test_a_muon_group_takes_matrices_only():
    with pytest.raises(ValueError, match="2-D tensors only"):
        Muon([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz5(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="lr must be > 0"):
        muon_groups([("w", torch.zeros(2, 2, requires_grad=True))], lr=0.0)
