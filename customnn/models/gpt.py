"""A decoder-only Transformer (GPT) for character-level language modelling, built from ``customnn.ops``.

The architecture of GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners") as nanoGPT's ``model.py`` writes it: token and learned position embeddings,
``n_layer`` pre-norm blocks

    x = x + attn(ln_1(x))          causal multi-head self-attention (Vaswani et al. 2017)
    x = x + mlp(ln_2(x))           linear C -> 4C, GELU, linear 4C -> C

a final layer norm and a projection to the vocabulary, by default tied to the token
embedding (Press & Wolf 2017). Initialisation as GPT-2: every weight normal(0, 0.02), biases
zero, and the projections that write into the residual stream normal(0, 0.02 / sqrt(2 *
n_layer)), so the residual's variance does not grow with depth.

Every layer is one of ``customnn.ops``; only reshapes, splits and residual additions are
plain tensor operations. Weights of linear layers are ``(in_features, out_features)``.

Generation uses a key/value cache (``KVCache``): the prompt is run once (a prefill), then
each new token runs one position through the network, its query attending to every cached
key. Positions are absolute (learned position embeddings), so a cache holds at most
``block_size`` positions; what to do when it is full is the sampler's choice
(``customnn.models.sampling.generate`` rebuilds the cache from the last tokens).

Dimension letters: B batch, T sequence length, C n_embd, nh n_head, hs head size C / nh,
V vocab_size, S cached length.

    model = GPT(GPTConfig(vocab_size=65), seed=1337)
    logits, loss = model(idx, targets)       # idx, targets (B, T) int64 -> (B, T, V), scalar
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from customnn import ops
from customnn.module import Module


@dataclass
class GPTConfig:
    vocab_size: int = 65  # characters in Tiny Shakespeare; set from the corpus at training time
    block_size: int = 64  # the longest context: sets the position table and the KV cache size
    n_layer: int = 4  # Transformer blocks; 4 is nanoGPT's CPU setting, enough for character-level
    n_head: int = 4  # attention heads; head size n_embd / n_head = 32
    n_embd: int = 128  # width of the residual stream; 128 keeps a CPU step in milliseconds
    dropout: float = 0.0  # off: small models trained for a few thousand steps do not overfit
    bias: bool = True  # biases in linear layers and layer norms, as GPT-2
    tie_weights: bool = True  # the output projection reuses the token embedding (GPT-2, nanoGPT)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        for name in ("bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The name and shape of every tensor in ``GPT(self).state_dict()``: what a checkpoint is
        checked against before a model of its configuration is allocated.

        The shapes come from the model itself, built on PyTorch's ``meta`` device, whose tensors
        have a shape and no storage: nothing is allocated and nothing is drawn, so even a forged
        configuration (``n_embd=10**6``) costs only the Python objects of its ``n_layer`` blocks.
        """
        with torch.device("meta"):
            model = GPT(self)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _normal(shape, std: float, g: torch.Generator) -> torch.Tensor:
    """normal(0, std) drawn from ``g``; on the meta device (``state_shapes``) only the shape: a
    meta tensor has no values to draw, and its first draw would load PyTorch's meta kernels (1.5 s)."""
    t = torch.empty(shape)
    if not t.is_meta:
        t.normal_(0.0, std, generator=g)
    return t.requires_grad_()


def _zeros(shape) -> torch.Tensor:
    return torch.zeros(shape).requires_grad_()


class Linear(Module):
    """``x @ weight + bias`` with weight (in, out), as ``ops.linear``."""

    def __init__(self, n_in: int, n_out: int, bias: bool, std: float, g: torch.Generator):
        super().__init__()
        self.weight = _normal((n_in, n_out), std, g)  # (in, out)
        self.bias = _zeros((n_out,)) if bias else None

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias)


class LayerNorm(Module):
    """Layer norm over the last dimension with a gain (ones) and an optional bias (zeros)."""

    def __init__(self, n: int, bias: bool):
        super().__init__()
        self.weight = torch.ones(n).requires_grad_()
        self.bias = _zeros((n,)) if bias else None

    def forward(self, x):
        return ops.layer_norm(x, self.weight, self.bias)


class KVCache:
    """Keys and values of every layer for the positions seen so far, for one batch of sequences.

    One tensor per layer holds both, allocated once at ``block_size``; ``length`` positions
    are filled. A forward pass with a cache writes its keys and values at ``length ...
    length + T - 1`` in every layer, then advances ``length`` by T.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (2, batch_size, config.n_head, config.block_size, hs)  # (k|v, B, nh, block_size, hs)
        self.kv = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def store(self, layer: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys and values kv (2, B, nh, T, hs); return every cached k, v
        (B, nh, S, hs) so far."""
        end = self.length + kv.shape[3]
        cached = self.kv[layer]
        cached[:, :, :, self.length:end] = kv  # one copy for both
        return cached[0, :, :, :end], cached[1, :, :, :end]


class CausalSelfAttention(Module):
    """Multi-head self-attention: one linear to q, k, v, causal attention, an output projection."""

    def __init__(self, config: GPTConfig, layer: int, g: torch.Generator):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.layer = layer  # index into a KVCache
        self.c_attn = Linear(C, 3 * C, config.bias, 0.02, g)  # (C, 3C): q, k, v side by side
        self.c_proj = Linear(C, C, config.bias, 0.02 / math.sqrt(2 * config.n_layer), g)  # into the residual

    def forward(self, x, cache: KVCache | None = None):
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x).view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs): q, k, v
        q, k, v = qkv.unbind(0)  # (B, nh, T, hs) each
        causal = True
        if cache is not None:
            # A prefill starts at position 0, where SDPA's top-left causal mask is right; a
            # single new token attends to every cached key, so it needs no mask.
            k, v = cache.store(self.layer, qkv[1:])  # (B, nh, S, hs)
            causal = T > 1
        p = self.dropout if self.training else 0.0
        y = ops.attention(q, k, v, causal=causal, dropout_p=p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        y = self.c_proj(y)
        if p > 0.0:
            y = ops.dropout(y, p, self.training)
        return y


class MLP(Module):
    """Linear C -> 4C, GELU, linear 4C -> C (the position-wise feed-forward network)."""

    def __init__(self, config: GPTConfig, g: torch.Generator):
        super().__init__()
        C = config.n_embd
        self.dropout = config.dropout
        self.c_fc = Linear(C, 4 * C, config.bias, 0.02, g)  # (C, 4C)
        self.c_proj = Linear(4 * C, C, config.bias, 0.02 / math.sqrt(2 * config.n_layer), g)  # into the residual

    def forward(self, x):
        y = self.c_proj(ops.gelu(self.c_fc(x)))
        if self.dropout > 0.0 and self.training:
            y = ops.dropout(y, self.dropout, self.training)
        return y


class Block(Module):
    """Pre-norm Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer: int, g: torch.Generator):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.attn = CausalSelfAttention(config, layer, g)
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config, g)

    def forward(self, x, cache: KVCache | None = None):
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(Module):
    """The language model: ``forward(idx, targets=None) -> (logits, loss)``."""

    def __init__(self, config: GPTConfig, seed: int = 1337):
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(seed)  # initialisation is reproducible on its own
        C = config.n_embd
        self.wte = _normal((config.vocab_size, C), 0.02, g)  # (V, C) token embedding
        self.wpe = _normal((config.block_size, C), 0.02, g)  # (block_size, C) position embedding
        self.blocks = [Block(config, i, g) for i in range(config.n_layer)]
        self.ln_f = LayerNorm(C, config.bias)
        # Untied: a separate (C, V) projection. Tied: the head is wte itself, used as wte^T.
        self.lm_head = None if config.tie_weights else _normal((C, config.vocab_size), 0.02, g)

    def head_weight(self) -> torch.Tensor:
        return self.wte.T if self.lm_head is None else self.lm_head  # (C, V)

    def forward(self, idx, targets=None, *, cache: KVCache | None = None, last_only: bool = False):
        """Logits for every position of idx (B, T), and the mean cross-entropy against targets.

        With ``cache``, idx continues the cached positions (a prefill from an empty cache, or
        one token at a time) and its keys and values are added to the cache. With
        ``last_only``, only the last position's logits (B, 1, V) are computed, which is all
        sampling needs.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} positions is longer than block_size "
                             f"{self.config.block_size}")
        if cache is not None and T > 1 and start > 0:
            raise ValueError("a cached forward takes either a prefill into an empty cache or one token")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = ops.embedding(idx, self.wte) + ops.embedding(pos, self.wpe)  # (B, T, C)
        if self.config.dropout > 0.0 and self.training:
            x = ops.dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += T
        x = self.ln_f(x)  # (B, T, C)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = ops.linear(x, self.head_weight())  # (B, T, V)
        loss = None
        if targets is not None:
            loss = ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def new_cache(self, batch_size: int = 1) -> KVCache:
        return KVCache(self.config, batch_size, self.wte.device, self.wte.dtype)
