"""nanoGPT's own training loop for the ``nanogpt-cpu`` preset, built from torch.nn and torch.optim.

Issue 4 compares ``customnn train gpt --preset nanogpt-cpu`` with nanoGPT's documented CPU run
(val loss 1.886 in 69 s on our machine). nanoGPT itself cannot be fetched here, so
``customnn_ref.nanogpt`` re-creates its train.py loop for that run line by line (its docstring
lists what is re-created); this script runs it and prints nanoGPT's
``step N: train loss X, val loss Y`` lines and the wall time.

With ``--model customnn`` the same loop trains our ``GPT`` with our ``AdamW`` and
``clip_grad_norm_``, starting from the very same weights and drawing the very same batches.
``customnn train gpt --preset nanogpt-cpu`` replays the same stream with our own trainer
(``--nanogpt-rng``, on in that preset), so for any ``--seed`` the three print the same lines.

It then scores the final model on a fixed set of validation batches (``--score-batches``,
seeded, the same for every model), with, if given, customnn runs' final checkpoints on the very
same batches, so that trainings are compared without the noise of nanoGPT's 20-batch estimate::

    OMP_NUM_THREADS=2 python benchmarks/nanogpt_reference.py --compare runs/gpt-...
    OMP_NUM_THREADS=2 python benchmarks/nanogpt_reference.py --model customnn --seed 3
"""
from __future__ import annotations

import argparse
import time

import torch

from customnn.data.text import load_corpus
from customnn_ref.nanogpt import NANOGPT_CPU, batch, run
from customnn_ref.twins import gpt_twin


@torch.no_grad()
def score(model, data, n_batches: int, seed: int = 12345) -> float:
    """Mean loss over ``n_batches`` validation batches from a generator seeded with ``seed``."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = sum(model(*batch(data, NANOGPT_CPU, gen))[1].item() for _ in range(n_batches))
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

    corpus = load_corpus(None, args.data_dir, NANOGPT_CPU.block_size)
    train_ids, val_ids = (torch.from_numpy(split.astype("int64")) for split in (corpus.train, corpus.val))  # (N,)
    t0 = time.perf_counter()
    model, _ = run(train_ids, val_ids, len(corpus.vocab), NANOGPT_CPU, args.seed, args.model,
                   on_eval=lambda it, tr, va: print(f"step {it}: train loss {tr:.4f}, val loss {va:.4f}", flush=True))
    elapsed = time.perf_counter() - t0
    print(f"nanoGPT loop, {args.model} model: {NANOGPT_CPU.max_iters} steps in {elapsed:.1f} s "
          f"({torch.get_num_threads()} threads)")
    scored = model if args.model == "torch" else gpt_twin(model)
    print(f"score on {args.score_batches} fixed val batches: nanoGPT loop, {args.model} model "
          f"{score(scored, val_ids, args.score_batches):.4f}")
    if args.compare:
        from customnn.train.tasks import load_model

        for path in args.compare:
            ours, vocab, ckpt_path, _ = load_model(path, prefer="last", kind="gpt")
            if vocab.chars != corpus.vocab.chars:
                raise SystemExit(f"{ckpt_path}: not trained on this text's vocabulary")
            print(f"score on {args.score_batches} fixed val batches: {ckpt_path} "
                  f"{score(gpt_twin(ours), val_ids, args.score_batches):.4f}")


if __name__ == "__main__":
    main()
