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

Options of ``GPTConfig``, each off by default (the defaults are the model above, bit for bit):

- ``norm="rmsnorm"``: RMSNorm (Zhang & Sennrich 2019, ``ops.rms_norm``) with a gain and no bias
  for ln_1, ln_2 and ln_f, instead of layer norm;
- ``pos="rope"``: rotary position embedding (Su et al. 2021, RoFormer; ``ops.rope``, halves
  convention) applied to q and k in every attention layer, and no position table ``wpe``;
- ``mlp="swiglu"``: the SwiGLU feed-forward network (Shazeer 2020, "GLU Variants Improve
  Transformer"): c_fc C -> 2H split into gate and up, silu(gate) * up, c_proj H -> C, with
  H = round(8C / 3) so that its 3CH weights are about the 8C^2 of the 4C GELU MLP;
- ``qk_norm=True``: RMSNorm of q and of k over each head (a gain (hs,) each, shared by the
  heads of a layer) before RoPE and attention (QK-norm: Dehghani et al. 2023, "Scaling Vision
  Transformers to 22 Billion Parameters", with RMSNorm as in OLMo 2 and Qwen3).

Every layer is one of ``customnn.ops``; only reshapes, splits, residual additions, SwiGLU's
gating product and the slice of the position table (positions are consecutive rows) are plain
tensor operations. Weights of linear layers are ``(in_features,
out_features)``.

Generation uses a key/value cache (``KVCache``): the prompt is run once (a prefill), then
each new token runs one position through the network, its query attending to every cached
key (with RoPE, the new query and key are rotated for position ``cache.length``). A cache
holds at most ``block_size`` positions (the length of the position table and of the RoPE
tables); what to do when it is full is the sampler's choice
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
from customnn.core.module import Module


# The architecture options and their defaults (the GPT-2 model), and the values each may take.
OPTIONS = {"norm": "layernorm", "pos": "learned", "mlp": "gelu", "qk_norm": False}
CHOICES = {"norm": ("layernorm", "rmsnorm"), "pos": ("learned", "rope"), "mlp": ("gelu", "swiglu")}


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
    # The options below are written into a checkpoint's configuration only when they are not
    # the default (``to_dict``), so the original model's configuration has no such keys.
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (a gain, no bias)
    pos: str = "learned"  # "learned" position table (GPT-2) or "rope" (rotary q and k, no table)
    mlp: str = "gelu"  # "gelu" (C -> 4C -> C) or "swiglu" (hidden width round(8C / 3))
    qk_norm: bool = False  # RMSNorm of q and k over each head before attention

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
        for name in ("bias", "tie_weights", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"GPTConfig.{name} must be one of {', '.join(map(repr, choices))}, "
                                 f"got {getattr(self, name)!r}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos='rope' needs an even head size, got n_embd / n_head = {self.n_embd // self.n_head}")

    def to_dict(self) -> dict:
        """Every field, but the options (``OPTIONS``) that have their default value: a checkpoint
        of the original model keeps the configuration it always had."""
        return {k: v for k, v in asdict(self).items() if not (k in OPTIONS and v == OPTIONS[k])}

    def swiglu_hidden(self) -> int:
        """H of the SwiGLU MLP: round(8C / 3), so that its 3CH weights are about the 4C GELU MLP's 8C^2."""
        return round(8 * self.n_embd / 3)

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


class RMSNorm(Module):
    """RMSNorm over the last dimension with a gain (ones) and no bias, as ``ops.rms_norm``."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = torch.ones(n).requires_grad_()

    def forward(self, x):
        return ops.rms_norm(x, self.weight)


def make_norm(config: GPTConfig) -> Module:
    return RMSNorm(config.n_embd) if config.norm == "rmsnorm" else LayerNorm(config.n_embd, config.bias)


class KVCache:
    """Keys and values of every layer for the positions seen so far, for one batch of sequences.

    Two buffers per layer, keys and values, each (B, nh, block_size, hs), allocated once;
    ``length`` positions are filled. A forward pass with a cache writes its keys and values in
    place at ``length ... length + T - 1`` in every layer, then advances ``length`` by T: a new
    token costs one write of its own key and value, never a copy of the ones before it.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, hs)  # (B, nh, block_size, hs)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys and values k, v (B, nh, T, hs) in place; return every cached
        k, v (B, nh, S, hs) so far (views of the buffers)."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


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
        hs = C // config.n_head
        self.q_norm = RMSNorm(hs) if config.qk_norm else None  # (hs,) gains, shared by the heads
        self.k_norm = RMSNorm(hs) if config.qk_norm else None

    def forward(self, x, cache: KVCache | None = None, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                batch=None):
        """``rope``: the (cos, sin) tables (T, hs / 2) of this call's positions, or None; ``batch``:
        the dropout masks' (rows, total), as ``GPT.batch``."""
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x).view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs): q, k, v
        q, k, v = qkv.unbind(0)  # (B, nh, T, hs) each
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = ops.rope(q, *rope), ops.rope(k, *rope)
        elif rope is not None:  # q and k turned in one call (a generated token costs ~40 calls)
            q, k = ops.rope(qkv[:2], *rope).unbind(0)  # (B, nh, T, hs) each
        causal = True
        if cache is not None:
            # A prefill starts at position 0, where SDPA's top-left causal mask is right; a
            # single new token attends to every cached key, so it needs no mask.
            k, v = cache.store(self.layer, k, v)  # (B, nh, S, hs)
            causal = T > 1
        p = self.dropout if self.training else 0.0
        y = ops.attention(q, k, v, causal=causal, dropout_p=p, batch=batch)  # (B, nh, T, hs)
        # (B, T, C): heads side by side again; a view, as attention stores y as (B, T, nh, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        y = self.c_proj(y)
        if p > 0.0:
            y = ops.dropout(y, p, self.training, batch=batch)
        return y


class MLP(Module):
    """The position-wise feed-forward network: linear C -> 4C, GELU, linear 4C -> C; or SwiGLU:
    linear C -> 2H (gate | up), silu(gate) * up, linear H -> C."""

    def __init__(self, config: GPTConfig, g: torch.Generator):
        super().__init__()
        C = config.n_embd
        self.dropout = config.dropout
        self.hidden = config.swiglu_hidden() if config.mlp == "swiglu" else None  # H, or None for GELU
        n_fc, n_in = (2 * self.hidden, self.hidden) if self.hidden else (4 * C, 4 * C)
        self.c_fc = Linear(C, n_fc, config.bias, 0.02, g)  # (C, 4C), or (C, 2H): gate and up side by side
        self.c_proj = Linear(n_in, C, config.bias, 0.02 / math.sqrt(2 * config.n_layer), g)  # into the residual

    def forward(self, x, batch=None):
        if self.hidden:
            gate, up = self.c_fc(x).split(self.hidden, dim=-1)  # (B, T, H) each
            y = self.c_proj(ops.silu(gate) * up)
        else:
            y = self.c_proj(ops.gelu(self.c_fc(x)))
        if self.dropout > 0.0 and self.training:
            y = ops.dropout(y, self.dropout, self.training, batch=batch)
        return y


class Block(Module):
    """Pre-norm Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer: int, g: torch.Generator):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer, g)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config, g)

    def forward(self, x, cache: KVCache | None = None, rope=None, batch=None):
        x = x + self.attn(self.ln_1(x), cache, rope, batch)
        x = x + self.mlp(self.ln_2(x), batch)
        return x


class GPT(Module):
    """The language model: ``forward(idx, targets=None) -> (logits, loss)``."""

    def __init__(self, config: GPTConfig, seed: int = 1337):
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(seed)  # initialisation is reproducible on its own
        # Data-parallel training: this process's rows of the global batch, (rows, total), so that
        # its dropout masks are those rows of the whole batch's (customnn/train/distributed.py).
        self.batch: tuple[slice, int] | None = None
        C = config.n_embd
        self.wte = _normal((config.vocab_size, C), 0.02, g)  # (V, C) token embedding
        # (block_size, C) position embedding; none with RoPE, whose tables are built on first use
        self.wpe = _normal((config.block_size, C), 0.02, g) if config.pos == "learned" else None
        self._rope_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (device, dtype) -> (cos, sin)
        self.blocks = [Block(config, i, g) for i in range(config.n_layer)]
        self.ln_f = make_norm(config)
        # Untied: a separate (C, V) projection. Tied: the head is wte itself, used as wte^T.
        self.lm_head = None if config.tie_weights else _normal((C, config.vocab_size), 0.02, g)

    @staticmethod
    def memory_estimate(settings: dict, batch_size: int, training: bool = True, element_bytes: int = 4):
        """(bytes a step of a GPT of these settings needs, what it is in words): a lower bound
        from its sizes (``customnn/models/gpt_memory.py``), known before anything is built."""
        from customnn.models.gpt_memory import gpt_bytes

        s = settings
        need = gpt_bytes(s["vocab_size"], s["block_size"], s["n_layer"], s["n_head"], s["n_embd"], batch_size,
                         training, s["dropout"], s["bias"], s["tie_weights"], s["pos"] == "learned", element_bytes)
        return need, f"a GPT of {s['n_layer']} layers, width {s['n_embd']}, context {s['block_size']}"

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
        rope = None
        if self.wpe is not None:
            # positions start .. start + T - 1 are consecutive rows of the table: a slice, (T, C)
            x = ops.embedding(idx, self.wte) + self.wpe[start:start + T]  # (B, T, C)
        else:
            x = ops.embedding(idx, self.wte)  # (B, T, C)
            cos, sin = self.rope_tables()
            rope = (cos[start:start + T], sin[start:start + T])  # (T, hs / 2) each: positions start..
        if self.config.dropout > 0.0 and self.training:
            x = ops.dropout(x, self.config.dropout, self.training, batch=self.batch)
        for block in self.blocks:
            x = block(x, cache, rope, self.batch)
        if cache is not None:
            cache.length += T
        x = self.ln_f(x)  # (B, T, C)
        if last_only and T > 1:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = ops.linear(x, self.head_weight())  # (B, T, V)
        loss = None
        if targets is not None:
            loss = ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE's (cos, sin), each (block_size, hs / 2), in the weights' dtype and device; built
        once for each dtype and device."""
        key = (self.wte.device, self.wte.dtype)
        if key not in self._rope_tables:
            hs = self.config.n_embd // self.config.n_head
            with torch.inference_mode(False):  # built once, maybe during an evaluation: usable by training too
                self._rope_tables[key] = ops.rope_tables(self.config.block_size, hs, device=key[0], dtype=key[1])
        return self._rope_tables[key]

    def new_cache(self, batch_size: int = 1) -> KVCache:
        return KVCache(self.config, batch_size, self.wte.device, self.wte.dtype)
