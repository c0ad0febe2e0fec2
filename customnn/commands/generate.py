"""``customnn generate RUN --prompt TEXT``: sample text from a trained GPT, with a key/value cache.

The sampler of nanoGPT's ``sample.py`` / ``GPT.generate`` (temperature, top-k) plus nucleus
(top-p) sampling (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"),
made fast with a key/value cache: the prompt runs through the model once (a prefill), then
every new token runs a single position, its query attending to the cached keys and values of
all earlier positions (``customnn.models.gpt.KVCache``).

The context window. The model has learned position embeddings for positions
``0 .. block_size - 1`` only, so the context is at most ``block_size`` tokens, and a cache
cannot simply slide: dropping the oldest token shifts every other token's position, which
changes every cached key and value. nanoGPT recomputes the whole window for every token;
here, when the cache is full, it is rebuilt (re-prefilled) from the last ``keep`` tokens
(default ``3 * block_size // 4``), and generation continues one position at a time until it
is full again. Every token is therefore predicted from at least ``keep`` tokens of context
(and at most ``block_size``), and a rebuild costs one batched forward of ``keep`` positions
every ``block_size - keep`` tokens. ``keep = block_size`` is nanoGPT's exact sliding window.
The uncached path (``use_cache=False``) uses the same windows, so both give the same tokens.
A prompt longer than ``block_size`` keeps its last ``block_size`` characters as context.

stdout gets the prompt and its continuation, nothing else; messages go to stderr.

    customnn generate runs/gpt-20261127-120000 --prompt "ROMEO:" --max-new-tokens 500 --seed 1
"""

from __future__ import annotations

import sys

import torch

from customnn import ops
from customnn.errors import UserError


# --- sampling -----------------------------------------------------------------------------------
def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B,) int64.

    ``temperature == 0`` is greedy (argmax). ``top_k`` keeps the k most likely tokens;
    ``top_p`` keeps the smallest set of most likely tokens whose probability reaches p.
    """
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature  # (B, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        sorted_probs = ops.softmax(sorted_logits, dim=-1)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the tokens ranked above
        drop_sorted = before >= top_p  # the most likely token always stays (before = 0)
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = ops.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


@torch.inference_mode()
def generate(model, ids: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
             keep: int | None = None, on_token=None) -> list[int]:
    """Continue the token list ``ids`` by ``max_new_tokens`` tokens; returns the new tokens.

    ``keep`` is how many tokens a full context is cut back to (see the module docstring);
    ``on_token(tok)`` is called with each new token as soon as it is drawn (for streaming).
    """
    block = model.config.block_size
    keep = 3 * block // 4 if keep is None else keep
    if not 1 <= keep <= block:
        raise ValueError(f"keep must be in [1, block_size={block}], got {keep}")
    if not ids:
        raise ValueError("generation needs at least one token to start from")
    was_training = model.training
    model.eval()
    device = model.wte.device
    seq = list(ids)
    start = max(0, len(seq) - block)  # where the context window begins in seq
    new: list[int] = []

    def window() -> torch.Tensor:
        return torch.tensor([seq[start:]], dtype=torch.int64, device=device)  # (1, T)

    cache = model.new_cache(batch_size=1) if use_cache else None
    try:
        logits = model(window(), cache=cache, last_only=True)[0] if use_cache else None
        for i in range(max_new_tokens):
            if not use_cache:
                logits = model(window(), last_only=True)[0]  # the whole window, every token
            tok = int(sample_next(logits[:, -1, :], temperature, top_k, top_p, generator))
            seq.append(tok)
            new.append(tok)
            if on_token is not None:
                on_token(tok)
            if len(seq) - start > block:  # the window is full: cut it back to the last `keep`
                start = len(seq) - keep
                if use_cache and i + 1 < max_new_tokens:
                    cache.reset()
                    logits = model(window(), cache=cache, last_only=True)[0]  # re-prefill
                    continue
            if use_cache and i + 1 < max_new_tokens:
                step = torch.tensor([[tok]], dtype=torch.int64, device=device)  # (1, 1)
                logits = model(step, cache=cache, last_only=True)[0]  # one position
    finally:
        model.train(was_training)
    return new


# --- the command ------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a GPT run folder or a .safetensors checkpoint")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint of a run folder (default: best, else last)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500, help="characters to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="divide the logits by this; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely characters")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only from the most likely characters whose probability sums to p")
    p.add_argument("--seed", type=int, default=1337, help="random seed (default 1337)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token")


def check_sampling_args(max_new_tokens: int, temperature: float, top_k, top_p) -> None:
    if max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if not temperature >= 0 or temperature == float("inf"):
        raise UserError(f"--temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")


def run(args) -> int:
    from customnn.train.gpt_eval import load_model
    from customnn.train.run import check_seed, resolve_device

    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    check_seed(args.seed)
    if args.prompt == "":
        raise UserError("--prompt is empty: give at least one character to start from")
    device = resolve_device(args.device)
    model, vocab, path, meta = load_model(args.run, prefer=args.checkpoint, device=device)
    ids = vocab.encode(args.prompt)  # a character outside the vocabulary: UserError naming it
    print(f"generating {args.max_new_tokens} characters with {path} (step {meta.get('step')}) on {device}",
          file=sys.stderr, flush=True)
    g = torch.Generator(device=device).manual_seed(args.seed)
    out = sys.stdout
    out.write(args.prompt)
    out.flush()

    def emit(tok: int) -> None:
        out.write(vocab.chars[tok])
        out.flush()

    generate(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, g,
             use_cache=not args.no_cache, on_token=emit)
    out.write("\n")
    out.flush()
    return 0
