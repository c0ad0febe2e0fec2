"""The Module base class: parameter discovery, buffers, tied weights, state dicts, devices."""

from __future__ import annotations

import pytest
import torch

from customnn.core.module import Module


class Leaf(Module):
    def __init__(self, n):
        super().__init__()
        self.w = torch.randn(n, n, requires_grad=True)
        self.b = torch.zeros(n, requires_grad=True)
        self.register_buffer("running_mean", torch.zeros(n))
        self.scale = torch.ones(n)  # a plain tensor: neither parameter nor buffer

    def forward(self, x):
        return x @ self.w + self.b


class Net(Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.randn(5, 3, requires_grad=True)
        self.blocks = [Leaf(3), Leaf(3)]
        self.head = Leaf(3)
        self.tied = self.embed  # the same tensor twice: listed once

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_names_follow_attribute_order_and_tied_tensors_appear_once():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["embed", "blocks.0.w", "blocks.0.b", "blocks.1.w", "blocks.1.b", "head.w", "head.b"]
    assert [n for n, _ in net.named_buffers()] == ["blocks.0.running_mean", "blocks.1.running_mean", "head.running_mean"]
    assert list(net.state_dict()) == ["embed", "blocks.0.w", "blocks.0.b", "blocks.0.running_mean",
                                      "blocks.1.w", "blocks.1.b", "blocks.1.running_mean",
                                      "head.w", "head.b", "head.running_mean"]
    assert net.num_parameters() == 15 + 3 * 12


def test_train_eval_propagates_and_zero_grad_clears():
    net = Net()
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net(torch.randn(2, 3)).sum().backward()
    assert net.head.w.grad is not None
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_load_state_dict_copies_in_place_and_refuses_mismatches_naming_them():
    a, b = Net(), Net()
    w_before = b.head.w
    b.load_state_dict(a.state_dict())
    assert b.head.w is w_before and torch.equal(b.head.w, a.head.w)
    sd = a.state_dict()
    sd["head.w"] = torch.randn(4, 3)
    del sd["head.b"]
    sd["extra"] = torch.zeros(1)
    sd["embed"] = sd["embed"].double()
    with pytest.raises(ValueError) as e:
        b.load_state_dict(sd)
    msg = str(e.value)
    assert "missing: head.b" in msg and "unexpected: extra" in msg
    assert "head.w: shape (4, 3)" in msg and "embed: dtype torch.float64" in msg
    assert torch.equal(b.head.w, a.head.w)  # nothing copied when anything mismatches


def test_to_casts_keeps_ties_and_requires_grad():
    net = Net().to(dtype=torch.float64)
    assert net.embed.dtype == torch.float64 and net.tied is net.embed
    assert all(p.requires_grad and p.is_leaf for p in net.parameters())
    assert not net.head.running_mean.requires_grad and net.head.running_mean.dtype == torch.float64
