"""nanoGPT's ``train.py`` loop re-created from torch.nn and torch.optim: the reference run.

nanoGPT itself cannot be fetched here, so this module re-creates its training loop line by line
for a character-level run (``config/train_shakespeare_char.py`` on the CPU, bias off, no
gradient accumulation, no compile): ``torch.manual_seed(seed)``; nanoGPT's model
(``customnn_ref.twins.TwinGPT`` is its model.py) built and initialised with the global generator
(normal 0.02, residual projections 0.02 / sqrt(2 n_layer)); the first batch drawn; then every
``eval_interval`` steps ``estimate_loss`` on ``eval_iters`` batches of each split drawn from the
same global generator, and at every step ``get_lr`` (warmup ``(it + 1) / (warmup_iters + 1)``),
forward, the next batch drawn, backward, ``clip_grad_norm_``, AdamW decaying every parameter of
two or more dimensions (the tied embedding included).

``run(...)`` trains nanoGPT's torch.nn model with torch.optim (``model="torch"``), or our ``GPT``
with our AdamW and clipping from the very same weights on the very same batches
(``model="customnn"``). benchmarks/nanogpt_reference.py runs it for nanoGPT's documented CPU
run; tests/test_gpt_train.py checks on a small run that ``customnn train gpt --nanogpt-rng``
prints the evaluation lines this loop prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from customnn.models.gpt import GPTConfig
from customnn.optim import decay_groups
from customnn_ref.twins import TwinGPT


@dataclass(frozen=True)
class Settings:
    """The settings of a nanoGPT run that the loop uses (train.py's globals)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    batch_size: int = 12
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20


NANOGPT_CPU = Settings()  # nanoGPT's README, "I only have a macbook"


def get_lr(it: int, s: Settings) -> float:  # nanoGPT train.py
    if it < s.warmup_iters:
        return s.lr * (it + 1) / (s.warmup_iters + 1)
    if it > s.lr_decay_iters:
        return s.min_lr
    ratio = (it - s.warmup_iters) / (s.lr_decay_iters - s.warmup_iters)
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (s.lr - s.min_lr)


def nanogpt_model(vocab_size: int, s: Settings) -> TwinGPT:
    """nanoGPT's ``GPT(config)`` for these settings: built and initialised with the global generator."""
    cfg = GPTConfig(vocab_size=vocab_size, block_size=s.block_size, n_layer=s.n_layer, n_head=s.n_head,
                    n_embd=s.n_embd, dropout=0.0, bias=False)
    return nanogpt_init(TwinGPT(cfg))


def nanogpt_init(model: TwinGPT) -> TwinGPT:
    """nanoGPT's ``self.apply(self._init_weights)`` and residual scaling, with the global generator."""
    for m in model.modules():  # the same leaves in the same order as apply's
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                torch.nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * model.config.n_layer))
    return model


@torch.no_grad()
def customnn_copy(twin: TwinGPT):
    """Our ``GPT`` holding ``twin``'s weights (the inverse of ``customnn_ref.twins.copy_weights``)."""
    from customnn.models.gpt import GPT

    ours = GPT(twin.config, seed=0)
    theirs = twin.state_dict()
    linear = {f"{n}.weight" for n, m in twin.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, p in ours.named_parameters():
        src = name if name in theirs else f"{name}.weight"
        p.copy_(theirs[src].T if src in linear else theirs[src])
    return ours


def batch(data: torch.Tensor, s: Settings, gen: torch.Generator | None = None):
    """nanoGPT's ``get_batch``: ``batch_size`` random blocks from the global generator (or ``gen``)."""
    ix = torch.randint(len(data) - s.block_size, (s.batch_size,), generator=gen)
    x = torch.stack([data[i:i + s.block_size] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + s.block_size] for i in ix])
    return x, y


def run(train_data: torch.Tensor, val_data: torch.Tensor, vocab_size: int, s: Settings = NANOGPT_CPU,
        seed: int = 1337, model: str = "torch", on_eval=None):
    """nanoGPT's loop; returns the trained model and its evaluations ``[(step, train, val)]``.

    ``on_eval(step, train_loss, val_loss)`` is called after each evaluation (printing, say).
    The loop ends, as nanoGPT's, with the evaluation at ``max_iters``.
    """
    torch.manual_seed(seed)
    net = nanogpt_model(vocab_size, s)
    if model == "customnn":
        from customnn.optim import AdamW, clip_grad_norm_

        net = customnn_copy(net)
    elif model == "torch":
        AdamW, clip_grad_norm_ = torch.optim.AdamW, torch.nn.utils.clip_grad_norm_
    else:
        raise ValueError(f"model must be 'torch' or 'customnn', got {model!r}")
    # configure_optimizers: every tensor of rank >= 2 decays, the rest do not, in parameter order
    groups = decay_groups(net.named_parameters(), s.weight_decay, keep_empty=True)
    opt = AdamW(groups, lr=s.lr, betas=s.betas)

    @torch.no_grad()
    def estimate_loss():
        out = {}
        net.eval()
        for split, data in (("train", train_data), ("val", val_data)):
            out[split] = sum(net(*batch(data, s))[1].item() for _ in range(s.eval_iters)) / s.eval_iters
        net.train()
        return out

    evals = []
    x, y = batch(train_data, s)
    it = 0
    while True:
        lr = get_lr(it, s)
        for g in opt.param_groups:
            g["lr"] = lr
        if it % s.eval_interval == 0 or it == s.max_iters:  # (the second: as our trainer, whatever the interval)
            losses = estimate_loss()
            evals.append((it, losses["train"], losses["val"]))
            if on_eval is not None:
                on_eval(it, losses["train"], losses["val"])
        if it >= s.max_iters:  # nanoGPT takes one more step after this evaluation; it changes nothing printed
            break
        _, loss = net(x, y)
        x, y = batch(train_data, s)  # nanoGPT fetches the next batch while the step runs
        loss.backward()
        clip_grad_norm_(net.parameters(), s.grad_clip)
        opt.step()
        opt.zero_grad()
        it += 1
    return net, evals
