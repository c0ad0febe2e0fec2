"""customnn.optim pinned against torch.optim: each optimizer, run side by side with its torch
twin on the same small MLP problem in float64, must leave the same parameters after 20 steps;
schedules are pinned against torch's schedulers and nanoGPT's get_lr, clipping against
torch.nn.utils.clip_grad_norm_, and a state_dict round trip must resume bit-identically."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from customnn import optim

STEPS = 20


def make_problem(seed: int = 0):
    """A 2-layer MLP regression on random data: (initial parameters, loss function)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    params = [torch.randn(5, 8, generator=g, dtype=torch.float64) * 0.5,  # w1
              torch.randn(8, generator=g, dtype=torch.float64) * 0.1,  # b1
              torch.randn(8, 3, generator=g, dtype=torch.float64) * 0.5,  # w2
              torch.randn(3, generator=g, dtype=torch.float64) * 0.1]  # b2

    def loss_fn(ps):
        w1, b1, w2, b2 = ps
        return ((torch.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2).mean()

    return params, loss_fn


def fresh(params):
    return [p.detach().clone().requires_grad_(True) for p in params]


def groups_of(ps, spec):
    """Apply a group spec (list of (indices, overrides)) to a parameter list, or return ps."""
    if spec is None:
        return ps
    return [{"params": [ps[i] for i in idx], **over} for idx, over in spec]


def run(make_opt, params, loss_fn, steps, lr_at=None, drop_grad=None, opt=None):
    """Train ``params`` in place for ``steps`` steps; return the optimizer."""
    opt = opt if opt is not None else make_opt(params)
    for it in range(steps):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(it)
        loss_fn(params).backward()
        if drop_grad is not None and it % 2 == 1:  # this parameter gets no gradient on odd steps
            params[drop_grad].grad = None
        opt.step()
        opt.zero_grad()
    return opt


def assert_same_params(ours, theirs, rtol=1e-6):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-12)


def moved(p0, p1):
    return sum((a - b).abs().sum().item() for a, b in zip(p0, p1))


# --- each optimizer against torch.optim --------------------------------------------------
SGD_CASES = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "weight_decay": dict(lr=0.1, momentum=0.8, weight_decay=0.05),
    "dampening": dict(lr=0.1, momentum=0.9, dampening=0.3),
}
ADAMW_CASES = {
    "no_decay": (dict(lr=0.01, weight_decay=0.0), None),
    "decay": (dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), None),
    "two_groups": (dict(lr=0.01, weight_decay=0.2), [([0, 2], {}), ([1, 3], {"weight_decay": 0.0, "lr": 0.003})]),
}


@pytest.mark.parametrize("name", SGD_CASES)
def test_sgd_matches_torch(name):
    kw = SGD_CASES[name]
    p0, loss_fn = make_problem()
    ours, theirs = fresh(p0), fresh(p0)
    run(lambda ps: optim.SGD(ps, **kw), ours, loss_fn, STEPS)
    run(lambda ps: torch.optim.SGD(ps, **kw), theirs, loss_fn, STEPS)
    assert moved(p0, ours) > 1e-2
    assert_same_params(ours, theirs)


@pytest.mark.parametrize("name", ADAMW_CASES)
def test_adamw_matches_torch(name):
    kw, spec = ADAMW_CASES[name]
    p0, loss_fn = make_problem(1)
    ours, theirs = fresh(p0), fresh(p0)
    run(lambda ps: optim.AdamW(groups_of(ps, spec), **kw), ours, loss_fn, STEPS)
    run(lambda ps: torch.optim.AdamW(groups_of(ps, spec), **kw), theirs, loss_fn, STEPS)
    assert moved(p0, ours) > 1e-2
    assert_same_params(ours, theirs)


def test_group_weight_decay_zero_really_excludes_decay():
    """With zero gradients, AdamW's only move is decay: group 0 shrinks, group 1 stays put."""
    a = torch.ones(3, dtype=torch.float64, requires_grad=True)
    b = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = optim.AdamW([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=0.1, weight_decay=0.5)
    a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.95, dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.ones(3, dtype=torch.float64))


def twins(which, sgd, adamw):
    """(our optimizer factory, torch's) for "sgd" or "adamw" with the given arguments."""
    if which == "sgd":
        return (lambda ps: optim.SGD(ps, **sgd)), (lambda ps: torch.optim.SGD(ps, **sgd))
    return (lambda ps: optim.AdamW(ps, **adamw)), (lambda ps: torch.optim.AdamW(ps, **adamw))


@pytest.mark.parametrize("which", ["sgd", "adamw"])
def test_lr_changed_mid_run_by_schedule_matches_torch(which):
    p0, loss_fn = make_problem(2)
    ours, theirs = fresh(p0), fresh(p0)
    lr_at = optim.cosine_lr(0.02, warmup_steps=5, total_steps=15, min_lr=0.002)
    mk_ours, mk_theirs = twins(which, sgd=dict(lr=1.0, momentum=0.9), adamw=dict(lr=1.0))
    opt = run(mk_ours, ours, loss_fn, STEPS, lr_at=lr_at)
    run(mk_theirs, theirs, loss_fn, STEPS, lr_at=lr_at)
    assert opt.param_groups[0]["lr"] == 0.002
    assert_same_params(ours, theirs)


@pytest.mark.parametrize("which", ["sgd", "adamw"])
def test_parameter_without_grad_is_skipped_like_torch(which):
    """A parameter whose grad is None is left alone and (AdamW) its step count does not advance."""
    p0, loss_fn = make_problem(3)
    ours, theirs = fresh(p0), fresh(p0)
    mk_ours, mk_theirs = twins(which, sgd=dict(lr=0.05, momentum=0.9), adamw=dict(lr=0.01))
    opt = run(mk_ours, ours, loss_fn, STEPS, drop_grad=1)
    run(mk_theirs, theirs, loss_fn, STEPS, drop_grad=1)
    assert_same_params(ours, theirs)
    if which == "adamw":
        assert opt.state[ours[1]]["step"] == STEPS // 2
        assert opt.state[ours[0]]["step"] == STEPS


def test_zero_grad_sets_none():
    p0, loss_fn = make_problem()
    ps = fresh(p0)
    opt = optim.SGD(ps, lr=0.1)
    loss_fn(ps).backward()
    assert all(p.grad is not None for p in ps)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


# --- state dicts -------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd_nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adamw_groups": lambda ps: optim.AdamW([{"params": ps[::2]}, {"params": ps[1::2], "weight_decay": 0.0}],
                                           lr=0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_resumes_exactly(name):
    make = OPTIMIZERS[name]
    p0, loss_fn = make_problem(4)
    lr_at = optim.step_lr(0.02, step_size=7, gamma=0.5)

    straight = fresh(p0)
    opt = make(straight)
    for it in range(STEPS):
        optim.set_lr(opt, lr_at(it))
        loss_fn(straight).backward()
        opt.step()
        opt.zero_grad()

    first = fresh(p0)
    opt1 = make(first)
    for it in range(10):
        optim.set_lr(opt1, lr_at(it))
        loss_fn(first).backward()
        opt1.step()
        opt1.zero_grad()
    saved = opt1.state_dict()
    resumed = [p.detach().clone().requires_grad_(True) for p in first]  # the checkpointed weights
    snapshot = copy.deepcopy(saved)
    loss_fn(first).backward()  # keep training the first optimizer: the saved dict must not change
    opt1.step()
    for k, s in saved["state"].items():
        for key, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(snapshot["state"][k][key]))

    opt2 = make(resumed)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == saved["param_groups"][0]["lr"]
    for it in range(10, STEPS):
        optim.set_lr(opt2, lr_at(it))
        loss_fn(resumed).backward()
        opt2.step()
        opt2.zero_grad()
    for a, b in zip(resumed, straight):
        assert torch.equal(a, b)


def test_state_dict_has_torch_shape_and_loads_torch_state():
    """Our state dict looks like torch.optim's, and torch's AdamW state loads into ours."""
    p0, loss_fn = make_problem(5)
    ours, theirs = fresh(p0), fresh(p0)
    t_opt = run(lambda ps: torch.optim.AdamW(ps, lr=0.01), theirs, loss_fn, 10)
    ours = [p.detach().clone().requires_grad_(True) for p in theirs]
    opt = optim.AdamW(ours, lr=0.01)
    opt.load_state_dict(t_opt.state_dict())
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and sd["state"][0]["step"] == 10
    run(None, ours, loss_fn, 10, opt=opt)
    run(None, theirs, loss_fn, 10, opt=t_opt)
    assert_same_params(ours, theirs)


def test_load_state_dict_rejects_a_mismatched_layout():
    p0, _ = make_problem()
    sd = optim.AdamW(fresh(p0)).state_dict()
    with pytest.raises(ValueError, match="param groups"):
        optim.AdamW([{"params": fresh(p0)[:2]}, {"params": fresh(p0)[2:]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="params"):
        optim.AdamW(fresh(p0)[:3]).load_state_dict(sd)


# --- schedules ---------------------------------------------------------------------------
def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's train.py get_lr, copied verbatim."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_constant_lr():
    lr_at = optim.constant_lr(0.3)
    assert [lr_at(i) for i in (0, 1, 1000)] == [0.3, 0.3, 0.3]


def test_step_lr_matches_torch_steplr():
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(dummy, step_size=3, gamma=0.5)
    lr_at = optim.step_lr(0.4, step_size=3, gamma=0.5)
    for it in range(20):
        assert lr_at(it) == pytest.approx(sched.get_last_lr()[0], rel=1e-12)
        dummy.step()
        sched.step()
    assert lr_at(19) == pytest.approx(0.4 * 0.5 ** 6)


@pytest.mark.parametrize("warmup,total,min_lr", [(10, 100, 6e-5), (0, 50, 1e-4), (3, 4, 0.0)])
def test_cosine_lr_matches_nanogpt(warmup, total, min_lr):
    lr_at = optim.cosine_lr(6e-4, warmup_steps=warmup, total_steps=total, min_lr=min_lr)
    for it in range(total + 10):
        assert lr_at(it) == nanogpt_get_lr(it, 6e-4, warmup, total, min_lr)
    assert lr_at(warmup) == pytest.approx(6e-4)
    assert lr_at(total) == pytest.approx(min_lr) and lr_at(total + 5) == min_lr


def test_cosine_lr_without_warmup_is_cosine_annealing():
    base, total, eta_min = 0.1, 30, 0.01
    lr_at = optim.cosine_lr(base, warmup_steps=0, total_steps=total, min_lr=eta_min)
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(dummy, T_max=total, eta_min=eta_min)
    for it in range(total + 1):
        closed = eta_min + (base - eta_min) * (1 + math.cos(math.pi * it / total)) / 2
        assert lr_at(it) == pytest.approx(closed, rel=1e-12)
        assert lr_at(it) == pytest.approx(sched.get_last_lr()[0], rel=1e-9, abs=1e-12)
        dummy.step()
        sched.step()


def test_set_lr_uses_lr_scale():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = optim.AdamW([{"params": [a]}, {"params": [b], "lr_scale": 0.1}], lr=1.0)
    optim.set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, pytest.approx(0.05)]
    assert opt.state_dict()["param_groups"][1]["lr_scale"] == 0.1


# --- clipping and finiteness -------------------------------------------------------------
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    g = torch.Generator().manual_seed(7)
    shapes = [(4, 5), (5,), (3, 2, 2)]
    grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    ours = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    theirs = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    for p, q, gr in zip(ours, theirs, grads):
        p.grad, q.grad = gr.clone(), gr.clone()
    extra = torch.zeros(3, requires_grad=True)  # no grad: ignored by both
    n_ours = optim.clip_grad_norm_(ours + [extra], max_norm)
    n_theirs = torch.nn.utils.clip_grad_norm_(theirs + [extra], max_norm)
    assert n_ours.dim() == 0
    torch.testing.assert_close(n_ours, n_theirs, rtol=1e-12, atol=0)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours]))
    if max_norm < n_ours:
        assert after == pytest.approx(max_norm, rel=1e-5)
    else:
        assert torch.equal(ours[0].grad, grads[0])


def test_grads_are_finite():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    a.grad = torch.ones(3)
    assert optim.grads_are_finite([a, b])
    b.grad = torch.tensor([1.0, float("nan")])
    assert not optim.grads_are_finite([a, b])
    b.grad = torch.tensor([float("inf"), 0.0])
    assert not optim.grads_are_finite([a, b])


def test_decay_groups_split_matrices_from_vectors():
    p0, _ = make_problem()
    ps = fresh(p0)
    groups = optim.decay_groups([(f"p{i}", p) for i, p in enumerate(ps)], 0.1)
    assert [len(g["params"]) for g in groups] == [2, 2]
    assert groups[0]["params"][0] is ps[0] and groups[1]["params"][0] is ps[1]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def _ids(groups):
    return [[id(p) for p in g["params"]] for g in groups]


def test_decay_groups_exclude_keeps_named_matrices_out_of_decay():
    w, e, b, frozen = (torch.zeros(3, 2, requires_grad=True), torch.zeros(5, 2, requires_grad=True),
                       torch.zeros(2, requires_grad=True), torch.zeros(2, 2))
    named = [("w", w), ("emb", e), ("b", b), ("frozen", frozen)]
    groups = optim.decay_groups(named, 0.1, exclude=("emb",))
    assert _ids(groups) == [[id(w)], [id(e), id(b)]]  # in the order given; no frozen tensor
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert _ids(optim.decay_groups(iter(named), 0.1)) == [[id(w), id(e)], [id(b)]]  # any iterable


def test_decay_groups_drops_an_empty_group_unless_keep_empty():
    w, e = torch.zeros(3, 2, requires_grad=True), torch.zeros(5, 2, requires_grad=True)
    named = [("w", w), ("e", e)]
    assert _ids(optim.decay_groups(named, 0.1)) == [[id(w), id(e)]]
    kept = optim.decay_groups(named, 0.1, keep_empty=True)
    assert _ids(kept) == [[id(w), id(e)], []] and [g["weight_decay"] for g in kept] == [0.1, 0.0]
    everything_excluded = optim.decay_groups(named, 0.1, exclude=("w", "e"), keep_empty=True)
    assert _ids(everything_excluded) == [[], [id(w), id(e)]]


def test_an_empty_group_beside_others_trains_and_round_trips_as_torch():
    p0, loss_fn = make_problem(3)
    ours, theirs = fresh(p0), fresh(p0)

    def spec(ps):
        return [{"params": ps[:2]}, {"params": [], "weight_decay": 0.0}, {"params": ps[2:], "lr": 0.003}]

    opt = run(lambda ps: optim.AdamW(spec(ps), lr=0.01, weight_decay=0.1), ours, loss_fn, STEPS // 2)
    run(lambda ps: torch.optim.AdamW(spec(ps), lr=0.01, weight_decay=0.1), theirs, loss_fn, STEPS // 2)
    assert_same_params(ours, theirs)
    again = optim.AdamW(spec(fresh(ours)), lr=0.01, weight_decay=0.1)
    again.load_state_dict(opt.state_dict())  # three groups, the middle one empty
    assert [len(g["params"]) for g in again.param_groups] == [2, 0, 2]


def test_decay_groups_is_the_gpt_split():
    """Embeddings excluded: the GPT trainer's split; nothing excluded: nanoGPT's (every rank >= 2)."""
    from customnn.models.gpt import GPT, GPTConfig

    for bias in (True, False):
        model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, bias=bias))
        named = list(model.named_parameters())
        matrices = [p for n, p in named if p.dim() >= 2 and n not in ("wte", "wpe")]
        rest = [p for n, p in named if p.dim() < 2 or n in ("wte", "wpe")]
        groups = optim.decay_groups(named, 0.1, exclude=("wte", "wpe"), keep_empty=True)
        assert _ids(groups) == _ids([{"params": matrices}, {"params": rest}])
        assert "wte" not in {n for n, p in named if any(p is q for q in groups[0]["params"])}


def test_decay_groups_is_nanogpts_configure_optimizers():
    """customnn_ref/nanogpt.py builds its groups with decay_groups: the same tensors in the same
    order as nanoGPT's rule (rank >= 2 decays), for its torch.nn model and for ours."""
    from customnn.models.gpt import GPTConfig
    from customnn_ref.nanogpt import customnn_copy
    from customnn_ref.twins import TwinGPT

    for bias in (True, False):
        twin = TwinGPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, bias=bias))
        for net in (twin, customnn_copy(twin)):
            params = list(net.parameters())
            nanogpt = [{"params": [p for p in params if p.dim() >= 2]}, {"params": [p for p in params if p.dim() < 2]}]
            groups = optim.decay_groups(net.named_parameters(), 0.1, keep_empty=True)
            assert _ids(groups) == _ids(nanogpt)
            assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


# --- argument checks ---------------------------------------------------------------------
def _p():
    return [torch.zeros(2, requires_grad=True)]


BAD = {
    "sgd lr < 0": (lambda: optim.SGD(_p(), lr=-0.1), "lr"),
    "sgd momentum < 0": (lambda: optim.SGD(_p(), lr=0.1, momentum=-0.5), "momentum"),
    "nesterov without momentum": (lambda: optim.SGD(_p(), lr=0.1, nesterov=True), "nesterov"),
    "nesterov with dampening": (lambda: optim.SGD(_p(), lr=0.1, momentum=0.9, nesterov=True, dampening=0.1),
                                "nesterov"),
    "sgd weight_decay < 0": (lambda: optim.SGD(_p(), lr=0.1, weight_decay=-1), "weight_decay"),
    "empty params": (lambda: optim.SGD([], lr=0.1), "empty"),
    "empty group": (lambda: optim.AdamW([{"params": []}]), "empty"),
    "duplicate param": (lambda: optim.AdamW(_p() * 2), "twice"),
    "adamw lr < 0": (lambda: optim.AdamW(_p(), lr=-1e-3), "lr"),
    "beta1 = 1": (lambda: optim.AdamW(_p(), betas=(1.0, 0.999)), "betas"),
    "beta2 < 0": (lambda: optim.AdamW(_p(), betas=(0.9, -0.1)), "betas"),
    "group beta override": (lambda: optim.AdamW([{"params": _p(), "betas": (0.9, 1.5)}]), "betas"),
    "eps < 0": (lambda: optim.AdamW(_p(), eps=-1e-8), "eps"),
    "cosine total <= warmup": (lambda: optim.cosine_lr(1e-3, 10, 10), "total_steps"),
    "cosine warmup < 0": (lambda: optim.cosine_lr(1e-3, -1, 10), "warmup_steps"),
    "step_lr step_size 0": (lambda: optim.step_lr(1e-3, 0), "step_size"),
    "constant lr < 0": (lambda: optim.constant_lr(-1.0), "base_lr"),
    "clip max_norm 0": (lambda: optim.clip_grad_norm_(_p(), 0.0), "max_norm"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_raise_value_error(case):
    make, word = BAD[case]
    with pytest.raises(ValueError, match=word):
        make()
