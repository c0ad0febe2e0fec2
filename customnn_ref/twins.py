"""The two models rebuilt from PyTorch's own layers, with our weights copied in: the twins.

``customnn bench`` times our models against these, and tests compare logits and gradients
with them. The twins follow the reference implementations the models cite: the CNN is the
same stack of ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``F.max_pool2d`` / ``nn.Linear``, the GPT is
nanoGPT's ``model.py`` (``nn.Embedding``, ``nn.LayerNorm``, ``nn.Linear``,
``F.scaled_dot_product_attention``, exact ``F.gelu``, a head tied to the token embedding). The
GPT's options use PyTorch's layers too: ``nn.RMSNorm`` (``norm="rmsnorm"``, ``qk_norm``),
``F.silu`` (``mlp="swiglu"``), and RoPE (``pos="rope"``) written plainly in Hugging Face's
``rotate_half`` form (``apply_rope``; PyTorch has no rotary layer).

Each twin keeps our models' parameter names (``blocks.0.attn.c_attn.weight``, ``stages.1.bn``,
``fc.weight``...), so copying is by name; the one difference in layout is the linear weight,
ours ``(in, out)``, PyTorch's ``(out, in)``: ``twin.weight = ours.T``. A twin's ``forward``
has our models' signature, ``forward(x, targets=None) -> (logits, loss)``.

    from customnn_ref.twins import cnn_twin, gpt_twin
    twin = gpt_twin(model)            # same weights, dtype and device as model
    logits, loss = twin(idx, targets)

Dropout draws its own masks here (``nn.Dropout``), so in training mode with dropout > 0 the
twin costs the same as our model but does not give the same numbers, unless it is handed the
mask our model draws: ``TwinCNN.mask`` (tests/test_cnn_model.py does this).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from customnn.models.cnn import CustomCNN
from customnn.models.gpt import GPT, GPTConfig


# --- CNN ------------------------------------------------------------------------------------
class TwinConvStage(nn.Module):
    """conv 3x3 (same padding) -> batch norm -> ReLU -> max-pool 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(F.max_pool2d(self.bn(self.conv(x)), 2))  # pool then ReLU, as CustomCNN


class TwinCNN(nn.Module):
    """``CustomCNN`` (``arch`` "seed" or "default") from torch.nn layers.

    ``mask``: None (``nn.Dropout`` draws its own), or a ``(N, 36w)`` multiplier of zeros and
    ``1 / (1 - p)`` that training-mode dropout uses instead, such as the one our model is about
    to draw, so that both sides drop the same units.
    """

    def __init__(self, arch: str = "seed", dropout: float = 0.3, width: int = 24):
        super().__init__()
        self.arch = arch
        if arch == "seed":
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 12, 5)
            self.fc = nn.Linear(12 * 4 * 4, 10)
        else:
            c1, c2, c3 = width, 2 * width, 4 * width
            self.stages = nn.ModuleList([TwinConvStage(1, c1), TwinConvStage(c1, c2), TwinConvStage(c2, c3)])
            self.drop = nn.Dropout(dropout)
            self.fc = nn.Linear(c3 * 3 * 3, 10)
        self.mask: torch.Tensor | None = None

    def forward(self, x, targets=None):
        if self.arch == "seed":
            x = F.relu(F.max_pool2d(self.conv1(x), 2))  # (N, 6, 12, 12)
            x = F.relu(F.max_pool2d(self.conv2(x), 2))  # (N, 12, 4, 4)
            logits = self.fc(x.flatten(1))  # (N, 10)
        else:
            for stage in self.stages:
                x = stage(x)
            x = x.flatten(1)  # (N, 36w)
            x = x * self.mask if self.training and self.mask is not None else self.drop(x)
            logits = self.fc(x)  # (N, 10)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss


# --- GPT (nanoGPT's model.py) ----------------------------------------------------------------
def rope_cos_sin(T: int, hs: int, base: float = 10000.0, device=None, dtype=torch.float32):
    """RoPE's cos and sin of t * base^(-2i / hs), (T, hs / 2) each, formed in float64."""
    inv_freq = 1.0 / base ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs / 2,)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (T, hs / 2)
    return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def apply_rope(x, cos, sin):
    """Rotary embedding, halves convention, as Hugging Face's Llama: x * cos + rotate_half(x) * sin
    with the (T, hs / 2) tables repeated to (T, hs) and rotate_half(x) = [-x2, x1]."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)  # (T, hs)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def twin_norm(cfg: GPTConfig, n: int) -> nn.Module:
    return nn.RMSNorm(n) if cfg.norm == "rmsnorm" else nn.LayerNorm(n, bias=cfg.bias)


class TwinAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        hs = cfg.n_embd // cfg.n_head
        self.q_norm = nn.RMSNorm(hs) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(hs) if cfg.qk_norm else None
        self.rope = cfg.pos == "rope"

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            cos, sin = rope_cos_sin(T, C // self.n_head, device=x.device, dtype=x.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        return self.resid_drop(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class TwinMLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        hidden = cfg.swiglu_hidden() if self.swiglu else 4 * cfg.n_embd
        self.c_fc = nn.Linear(cfg.n_embd, 2 * hidden if self.swiglu else hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if self.swiglu:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            return self.drop(self.c_proj(F.silu(gate) * up))
        return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


class TwinBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = twin_norm(cfg, cfg.n_embd)
        self.attn = TwinAttention(cfg)
        self.ln_2 = twin_norm(cfg, cfg.n_embd)
        self.mlp = TwinMLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TwinGPT(nn.Module):
    """``GPT`` from torch.nn layers (nanoGPT's model), ``forward(idx, targets=None) -> (logits, loss)``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TwinBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = twin_norm(cfg, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + (self.wpe(pos) if self.wpe is not None else 0))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        return logits, loss


# --- copying our weights in ------------------------------------------------------------------
def copy_weights(model, twin: nn.Module) -> nn.Module:
    """Copy every parameter and buffer of our ``model`` into the twin of the same names.

    Our ``name`` maps to the twin's ``name`` or ``name.weight`` (a bare tensor attribute such
    as GPT's ``wte`` is an ``nn.Embedding`` there); weights of ``nn.Linear`` are transposed.
    Every twin parameter must receive a value (tied ones once); shapes must agree.
    """
    theirs = twin.state_dict(keep_vars=True)
    linear_weights = {f"{n}.weight" for n, m in twin.named_modules() if isinstance(m, nn.Linear)}
    filled = set()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            target = name if name in theirs else f"{name}.weight"
            if target not in theirs:
                raise KeyError(f"the twin has no tensor for our {name!r}")
            if target in linear_weights:
                value = value.T  # ours (in, out), PyTorch's (out, in)
            if theirs[target].shape != value.shape:
                raise ValueError(f"{name}: our shape {tuple(value.shape)} vs twin's {tuple(theirs[target].shape)}")
            theirs[target].copy_(value)
            filled.add(id(theirs[target]))
    missing = [n for n, p in twin.named_parameters() if id(p) not in filled]
    if missing:
        raise KeyError(f"twin parameters with no counterpart in our model: {missing}")
    return twin


def _like(model, twin: nn.Module) -> nn.Module:
    p = next(iter(model.parameters()))
    twin = twin.to(device=p.device, dtype=p.dtype)
    copy_weights(model, twin)
    return twin.train(model.training)


def cnn_twin(model: CustomCNN) -> TwinCNN:
    """A ``TwinCNN`` with ``model``'s architecture, weights, running statistics, dtype, device, mode."""
    dropout = getattr(model, "dropout", 0.0)
    return _like(model, TwinCNN(model.arch, dropout=dropout, width=model.width))


def gpt_twin(model: GPT) -> TwinGPT:
    """A ``TwinGPT`` with ``model``'s config, weights, dtype, device and mode."""
    return _like(model, TwinGPT(model.config))
