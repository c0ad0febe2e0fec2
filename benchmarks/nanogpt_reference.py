"""nanoGPT's own training loop for the ``nanogpt-cpu`` preset, built from torch.nn and torch.optim.

Issue 4 compares ``customnn train gpt --preset nanogpt-cpu`` with nanoGPT's documented CPU run
(val loss 1.886 in 69 s on our machine). nanoGPT itself cannot be fetched here, so this script
re-creates its train.py loop for that run line by line: ``torch.manual_seed(1337)``, batches
drawn with the global generator (``torch.randint(len(data) - block_size, (batch_size,))``), the
same generator feeding ``estimate_loss`` every ``eval_interval`` steps, ``get_lr`` with warmup
``(it + 1) / (warmup_iters + 1)``, AdamW decaying every parameter of two or more dimensions
(the tied token embedding and the position embedding included), ``clip_grad_norm_`` at 1.0,
nanoGPT's initialisation (normal 0.02, residual projections 0.02 / sqrt(2 n_layer)) and its model
(``customnn_ref.twins.TwinGPT`` is nanoGPT's model.py without bias).

With ``--model customnn`` the same loop trains our ``GPT`` with our ``AdamW`` and
``clip_grad_norm_``, starting from the very same weights (copied from the torch.nn model after
nanoGPT's initialisation) and drawing the very same batches: what it reaches is what our layers
and optimizer give on nanoGPT's own run.

It prints nanoGPT's ``step N: train loss X, val loss Y`` lines and the wall time, and then scores
the final model on a fixed set of validation batches (``--score-batches``, seeded, the same for
every model), with, if given, a customnn run's final checkpoint on the very same batches, so
that the two trainings are compared without the noise of nanoGPT's 20-batch estimate::

    OMP_NUM_THREADS=2 python benchmarks/nanogpt_reference.py --compare runs/gpt-...
    OMP_NUM_THREADS=2 python benchmarks/nanogpt_reference.py --model customnn
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from customnn.data.text import load_corpus
from customnn.models.gpt import GPTConfig
from customnn_ref.twins import TwinGPT, gpt_twin

N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12
MAX_ITERS, LR, MIN_LR, WARMUP, DECAY_ITERS = 2000, 1e-3, 1e-4, 100, 2000
BETAS, WEIGHT_DECAY, GRAD_CLIP, EVAL_INTERVAL, EVAL_ITERS = (0.9, 0.99), 0.1, 1.0, 250, 20


def get_lr(it: int) -> float:  # nanoGPT train.py
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > DECAY_ITERS:
        return MIN_LR
    ratio = (it - WARMUP) / (DECAY_ITERS - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def nanogpt_model(vocab_size: int) -> TwinGPT:
    cfg = GPTConfig(vocab_size=vocab_size, block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD,
                    dropout=0.0, bias=False)
    model = TwinGPT(cfg)
    for m in model.modules():  # nanoGPT's _init_weights
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                torch.nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * N_LAYER))
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


def batch(data, gen=None):
    ix = torch.randint(len(data) - BLOCK, (BATCH,), generator=gen)
    x = torch.stack([data[i:i + BLOCK] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + BLOCK] for i in ix])
    return x, y


@torch.no_grad()
def score(model, data, n_batches: int, seed: int = 12345) -> float:
    """Mean loss over ``n_batches`` validation batches from a generator seeded with ``seed``."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = sum(model(*batch(data, gen))[1].item() for _ in range(n_batches))
    model.train()
    return total / n_batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--score-batches", type=int, default=400)
    ap.add_argument("--compare", nargs="*", default=[], help="customnn GPT runs to score on the same batches")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--model", choices=("torch", "customnn"), default="torch",
                    help="train nanoGPT's torch.nn model with torch.optim (default), or ours from the same start")
    args = ap.parse_args()

    corpus = load_corpus(None, args.data_dir, BLOCK)
    train_data, val_data = corpus.train, corpus.val
    torch.manual_seed(args.seed)
    model = nanogpt_model(len(corpus.vocab))
    if args.model == "customnn":
        from customnn.optim import AdamW, clip_grad_norm_

        model = customnn_copy(model)
    else:
        AdamW, clip_grad_norm_ = torch.optim.AdamW, torch.nn.utils.clip_grad_norm_
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = AdamW(groups, lr=LR, betas=BETAS)

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split, data in (("train", train_data), ("val", val_data)):
            out[split] = sum(model(*batch(data))[1].item() for _ in range(EVAL_ITERS)) / EVAL_ITERS
        model.train()
        return out

    t0 = time.perf_counter()
    x, y = batch(train_data)
    it = 0
    while True:
        lr = get_lr(it)
        for g in opt.param_groups:
            g["lr"] = lr
        if it % EVAL_INTERVAL == 0:
            losses = estimate_loss()
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
        _, loss = model(x, y)
        x, y = batch(train_data)
        loss.backward()
        clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad()
        it += 1
        if it > MAX_ITERS:
            break
    elapsed = time.perf_counter() - t0
    print(f"nanoGPT loop, {args.model} model: {MAX_ITERS} steps in {elapsed:.1f} s ({torch.get_num_threads()} threads)")
    scored = model if args.model == "torch" else gpt_twin(model)
    print(f"score on {args.score_batches} fixed val batches: nanoGPT loop, {args.model} model "
          f"{score(scored, val_data, args.score_batches):.4f}")
    if args.compare:
        from customnn.train.gpt_eval import load_model

        for run in args.compare:
            ours, vocab, path, _ = load_model(run, prefer="last")
            if vocab.chars != corpus.vocab.chars:
                raise SystemExit(f"{path}: not trained on this text's vocabulary")
            print(f"score on {args.score_batches} fixed val batches: {path} {score(gpt_twin(ours), val_data, args.score_batches):.4f}")


if __name__ == "__main__":
    main()
