"""Sampling text from a GPT: temperature, top-k and nucleus (top-p), made fast by a key/value cache.

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

    ids = generate(model, vocab.encode("ROMEO:"), 500, temperature=0.8, generator=g)
"""

from __future__ import annotations

import math

import torch

from customnn import ops
from customnn.core.errors import UserError


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B,) int64.

    ``temperature == 0`` is greedy (argmax). ``top_k`` keeps the k most likely tokens;
    ``top_p`` keeps the smallest set of most likely tokens whose probability reaches p.

    Defined for every temperature >= 0, every ``top_k >= 1`` and every ``top_p`` in (0, 1]:
    a temperature so small that the scaled logits overflow float32 is the limit it tends to,
    greedy decoding (so is a row with a +inf logit); a ``top_p`` so small that it keeps nothing
    (it may round to 0 in float32) keeps the most likely token; a ``top_k`` at or above the
    vocabulary keeps every token. Logits that are NaN are a ``UserError`` (the model's weights
    overflow), never a NaN probability.
    """
    logits = logits.float()
    if temperature == 0:
        _refuse_nan(logits)
        return logits.argmax(dim=-1)
    scaled = logits / temperature  # (B, V)
    overflow = None
    # The usual case, every scaled logit finite, in one reduction and one host synchronisation:
    # a finite sum has no inf or NaN term. Otherwise (or when the sum itself overflows) NaN logits
    # are refused, and each row with a non-finite scaled logit (a vanishing temperature, or an
    # infinite logit) takes its limit, the argmax.
    if not math.isfinite(scaled.sum()):
        _refuse_nan(logits)
        overflow = torch.isinf(scaled).any(dim=-1) | torch.isnan(scaled).any(dim=-1)  # (B,)
        greedy = logits.argmax(dim=-1)
        if bool(overflow.all()):
            return greedy
        scaled = torch.where(overflow[:, None], torch.zeros_like(scaled), scaled)
    logits = scaled
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        sorted_probs = ops.softmax(sorted_logits, dim=-1)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the tokens ranked above
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False  # the most likely token always stays, even if top_p rounds to 0
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = ops.softmax(logits, dim=-1)  # (B, V)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    if overflow is not None:
        tokens = torch.where(overflow, greedy, tokens)
    return tokens


def _refuse_nan(logits: torch.Tensor) -> None:
    if torch.isnan(logits).any():
        raise UserError("the model's output is not a number (NaN): its weights overflow, so it cannot sample; "
                        "use another checkpoint")


@torch.inference_mode()
def generate(model, ids: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
             keep: int | None = None, on_token=None, block_size: int | None = None) -> list[int]:
    """Continue the token list ``ids`` by ``max_new_tokens`` tokens; returns the new tokens.

    ``keep`` is how many tokens a full context is cut back to (see the module docstring);
    ``on_token(tok)`` is called with each new token as soon as it is drawn (for streaming).
    Any model whose ``forward(idx)`` returns ``(logits (B, T, V), loss)`` samples: the GPT's
    ``config.block_size`` is its context unless ``block_size`` is given, and a model without a
    ``new_cache`` (a model of one's own) recomputes its window for every token.
    """
    block = model.config.block_size if block_size is None else block_size
    use_cache = use_cache and hasattr(model, "new_cache")
    fast = hasattr(model, "new_cache")  # the GPT's forward takes last_only: just the last position's logits

    def last(x, **kwargs):
        return model(x, last_only=True, **kwargs)[0] if fast else model(x)[0][:, -1:, :]  # (1, 1, V)

    keep = 3 * block // 4 if keep is None else keep
    if not 1 <= keep <= block:
        raise ValueError(f"keep must be in [1, block_size={block}], got {keep}")
    if not ids:
        raise ValueError("generation needs at least one token to start from")
    was_training = model.training
    model.eval()
    device = model.parameters()[0].device
    seq = list(ids)
    start = max(0, len(seq) - block)  # where the context window begins in seq
    new: list[int] = []

    def window() -> torch.Tensor:
        return torch.tensor([seq[start:]], dtype=torch.int64, device=device)  # (1, T)

    cache = model.new_cache(batch_size=1) if use_cache else None
    try:
        logits = last(window(), cache=cache) if use_cache else None
        for i in range(max_new_tokens):
            if not use_cache:
                logits = last(window())  # the whole window, every token
            tok_t = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (1,)
            tok = int(tok_t)
            seq.append(tok)
            new.append(tok)
            if on_token is not None:
                on_token(tok)
            if len(seq) - start > block:  # the window is full: cut it back to the last `keep`
                start = len(seq) - keep
                if use_cache and i + 1 < max_new_tokens:
                    cache.reset()
                    logits = last(window(), cache=cache)  # re-prefill
                    continue
            if use_cache and i + 1 < max_new_tokens:
                logits = last(tok_t.view(1, 1), cache=cache)  # one position
    finally:
        model.train(was_training)
    return new
