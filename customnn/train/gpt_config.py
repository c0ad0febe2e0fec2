"""The GPT's settings (``customnn train gpt``'s flags) and its presets.

``GPTTrainConfig`` is every setting a GPT run depends on, each field a flag of the same name
(``customnn/train/config.py`` makes the flags); ``PRESETS`` are its starting values, and
``make_config`` applies the values a user gave over a preset, adapting the defaults they did
not give (``adapt_defaults``). The trainer that uses them is ``customnn/train/gpt.py``.

Presets (``--preset``; every field can be overridden by its flag, e.g. ``--max-iters 500``):
``nanogpt-cpu`` is nanoGPT's documented CPU run, ``default`` ten minutes on a 2-core CPU,
``modern`` the same ten minutes with rotary positions and trained with Muon, ``bpe`` the default's
ten minutes on byte-level BPE tokens, ``tiny`` a few seconds for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from customnn.core.errors import UserError
from customnn.models.gpt import GPTConfig
from customnn.models.gpt import OPTIONS as GPT_OPTIONS  # the options' GPT-2 values
from customnn.train.config import TrainConfig, flag_name, setting, time_budget_setting
from customnn.data.tokenizer import MAX_VOCAB_SIZE
from customnn.train.loading import MAX_BATCH_SIZE, MAX_EVAL_ITERS

DEFAULT_BPE_VOCAB = 1024  # --tokenizer bpe without --vocab-size


@dataclass
class GPTTrainConfig(TrainConfig):
    """Everything a GPT run depends on. Defaults are the ``default`` preset's."""

    preset: str = setting("default", "starting values: nanogpt-cpu, default, modern, bpe or tiny",
                          choices=("nanogpt-cpu", "default", "modern", "bpe", "tiny"))  # recorded in config.json
    # model (GPTConfig; vocab_size comes from the tokenizer)
    n_layer: int = setting(4, "Transformer blocks")  # nanoGPT's CPU model: 4 blocks of width 128, 0.8M parameters
    n_head: int = setting(4, "attention heads")  # head size 32
    n_embd: int = setting(128, "width of the residual stream")  # wider learns more per step, fewer steps fit
    block_size: int = setting(128, "context length in tokens")  # a line and a half of verse in characters
    dropout: float = setting(0.0, "dropout probability")  # ten minutes do not overfit a 0.8M model
    bias: bool = setting(False, "biases in linear layers and layer norms")  # nanoGPT's setting
    tie_weights: bool = setting(True, "output projection = token embedding")  # fewer parameters
    # today's layers (customnn/models/gpt.py); the defaults are GPT-2's, as nanoGPT
    norm: str = setting("layernorm", "normalisation: layernorm, or rmsnorm", choices=("layernorm", "rmsnorm"))
    pos: str = setting("learned", "positions: a learned table, or rope (rotary)", choices=("learned", "rope"))
    mlp: str = setting("gelu", "feed-forward: gelu (4C), or swiglu (8C/3, gated)", choices=("gelu", "swiglu"))
    qk_norm: bool = setting(False, "RMSNorm of queries and keys per head before attention")
    # data
    text: str | None = setting(None, "UTF-8 text: a file, a folder of text files or a glob (default: Tiny "
                               "Shakespeare from the data directory)", resume="free")
    val_text: str | None = setting(None, "validation text, as --text (default: the last 10%% of --text)",
                                   resume="free")
    tokenizer: str = setting("char", "tokens: char (characters), or bpe (byte-level BPE learned on the "
                             "training text)", choices=("char", "bpe"))  # the seed's character model
    vocab_size: int | None = setting(None, "tokens of the BPE vocabulary (--tokenizer bpe; default "
                                     f"{DEFAULT_BPE_VOCAB})")  # None: characters, or the BPE default
    batch_size: int = setting(12, "sequences per step")  # small batches, many steps: most progress per second
    # optimizer and schedule
    max_iters: int = setting(20000, "training steps (with a time budget: the most it may plan)", resume="free")
    lr: float = setting(3e-3, "peak learning rate")  # 3x nanoGPT's 1e-3 trains this small model faster
    min_lr: float = setting(3e-4, "final learning rate of the cosine")  # lr / 10 as nanoGPT
    warmup_iters: int = setting(100, "linear warmup steps")
    lr_decay_iters: int | None = setting(None, "length of the cosine decay (default: the steps)", resume="free")
    beta1: float = setting(0.9, "AdamW beta1")  # the usual value
    beta2: float = setting(0.99, "AdamW beta2")  # nanoGPT's for small batches (its default 0.95 is for large)
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices")
    optimizer: str = setting("adamw", "adamw, or muon (orthogonalised momentum for the blocks' matrices, "
                             "AdamW for the rest)", choices=("adamw", "muon"))
    muon_lr: float = setting(0.02, "Muon's learning rate at the schedule's peak (scaled by the schedule "
                             "as --lr is)")  # the published recipe's
    decay_embeddings: bool = setting(False, "weight decay on the embedding tables too, as nanoGPT")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: off)")
    # evaluation and logging
    eval_interval: int = setting(1000, "evaluate and save every N steps", resume="free")
    eval_iters: int = setting(40, "batches per split per evaluation", resume="free")
    # run
    time_budget: float | None = time_budget_setting(580.0)  # ten minutes with margin
    seed: int = setting(1337, "random seed")  # nanoGPT's seed
    nanogpt_rng: bool = setting(False, "draw the initialisation, the batches and the evaluation batches from one "
                                "generator in nanoGPT's order: a seed then replays nanoGPT's run")

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias,
                         tie_weights=self.tie_weights, norm=self.norm, pos=self.pos, mlp=self.mlp,
                         qk_norm=self.qk_norm)

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    def check(self) -> None:
        """Every value in range, or a one-line ``UserError`` naming the flag."""
        super().check()
        for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_iters", "eval_interval",
                     "eval_iters"):
            if getattr(self, name) < 1:
                raise UserError(f"{flag_name(name)} must be >= 1, got {getattr(self, name)}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise UserError(f"--batch-size must be <= {MAX_BATCH_SIZE}, got {self.batch_size}")
        if self.eval_iters > MAX_EVAL_ITERS:
            raise UserError(f"--eval-iters must be <= {MAX_EVAL_ITERS}, got {self.eval_iters}")
        if self.n_embd % self.n_head:
            raise UserError(f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})")
        for name in ("lr", "min_lr", "weight_decay"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise UserError(f"{flag_name(name)} must be a finite number >= 0, got {value}")
        if self.lr == 0:
            raise UserError("--lr must be > 0")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{flag_name(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.warmup_iters < 0:
            raise UserError(f"--warmup-iters must be >= 0, got {self.warmup_iters}")
        if self.optimizer not in ("adamw", "muon"):
            raise UserError(f"--optimizer must be adamw or muon, got {self.optimizer!r}")
        if not (self.muon_lr > 0 and math.isfinite(self.muon_lr)):
            raise UserError(f"--muon-lr must be a finite number > 0, got {self.muon_lr}")
        changed = [flag_name(k) for k, v in GPT_OPTIONS.items() if getattr(self, k) != v]
        if self.nanogpt_rng and changed:
            raise UserError(f"--nanogpt-rng replays nanoGPT's GPT-2 model; it cannot be combined with "
                            f"{', '.join(changed)} (add --no-nanogpt-rng)")
        try:
            self.model_config(65)  # its own checks (e.g. rope needs an even head size)
        except ValueError as e:
            raise UserError(str(e)) from None
        if self.tokenizer not in ("char", "bpe"):
            raise UserError(f"--tokenizer must be char or bpe, got {self.tokenizer!r}")
        if self.tokenizer == "char" and self.vocab_size is not None:
            raise UserError("--vocab-size is for --tokenizer bpe (a character vocabulary is the text's characters)")
        if self.tokenizer == "bpe" and self.vocab_size is None:
            self.vocab_size = DEFAULT_BPE_VOCAB
        if self.tokenizer == "bpe" and not 256 < self.vocab_size <= MAX_VOCAB_SIZE:
            raise UserError(f"--vocab-size must be between 257 and {MAX_VOCAB_SIZE} (the 256 bytes and at least one "
                            f"merge), got {self.vocab_size}")
        if self.decay_iters <= self.warmup_iters:
            raise UserError(f"--lr-decay-iters ({self.decay_iters}) must be larger than --warmup-iters "
                            f"({self.warmup_iters})")


PRESETS: dict[str, dict] = {
    # nanoGPT's README, "I only have a macbook": config/train_shakespeare_char.py with
    # --device=cpu --eval_iters=20 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
    # --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 (bias False, beta2 0.99,
    # lr 1e-3 -> 1e-4, warmup 100, weight decay 0.1, clip 1.0, eval_interval 250).
    "nanogpt-cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
                        batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100,
                        lr_decay_iters=2000, beta1=0.9, beta2=0.99, weight_decay=0.1, decay_embeddings=True,
                        grad_clip=1.0, eval_interval=250, eval_iters=20, time_budget=None, nanogpt_rng=True),
    # Ten minutes on a 2-core CPU, evaluation included: nanoGPT's CPU model at context 128, lr 3e-3,
    # batch 12, as many steps as fit in 580 s. float32: in bf16 the same 580 s hold 1.78x the
    # steps, which overfit Tiny Shakespeare (final val loss 1.5514 against 1.5174; its best,
    # 1.5050 at step 11000, is lower) (benchmarks/results/cpu-gpt-precision.txt).
    "default": dict(),
    # The default's model, data and ten minutes, with rotary positions and Muon for the blocks'
    # matrices. Picked by the ablation (benchmarks/gpt_ablation.py; benchmarks/results/
    # cpu-gpt-ablation.txt): of the combinations of today's layers and Muon measured, the lowest
    # val loss in the default's 580 s, on both seeds (Muon alone came second, all five third).
    "modern": dict(pos="rope", optimizer="muon"),
    # The default's model and ten minutes on byte-level BPE tokens. The vocabulary is the sweep's
    # best in bits per byte (benchmarks/gpt_ablation.py with bpe-512/1024/2048 against default,
    # each for half the steps the 580 s budget fits; benchmarks/results/cpu-gpt-bpe.txt): 2048.
    "bpe": dict(tokenizer="bpe", vocab_size=2048),
    # A few seconds: tests and smoke runs.
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, max_iters=100, lr=3e-3,
                 min_lr=3e-4, warmup_iters=5, eval_interval=50, eval_iters=4, log_interval=5, time_budget=None),
}


def make_config(preset: str = "default", **overrides) -> GPTTrainConfig:
    """A preset's configuration with ``overrides`` (the values given) applied and the rest adapted to them, checked."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    cfg = replace(GPTTrainConfig(), preset=preset, **PRESETS[preset])
    cfg = replace(cfg, **(overrides if "resume" in overrides else adapt_defaults(cfg, overrides)))  # resumed: its own
    cfg.check()
    return cfg


def adapt_defaults(base: GPTTrainConfig, given: dict) -> dict:
    """``given`` with the settings of ``base`` (a preset) it does not give adapted to it: a run shorter than the
    preset's cosine decays over its own length, a warmup that does not fit is a tenth of the decay, and a width
    the preset's heads do not divide gets the most heads that divide it. A value given is never changed."""
    out, max_iters = dict(given), given.get("max_iters", base.max_iters)
    if "max_iters" in given and "lr_decay_iters" not in given and (base.lr_decay_iters or 0) > max_iters >= 1:
        out["lr_decay_iters"] = None  # the run's own length
    decay = out.get("lr_decay_iters", base.lr_decay_iters) or max_iters
    if "warmup_iters" not in given and base.warmup_iters >= decay >= 1:
        out["warmup_iters"] = decay // 10
    n_embd = given.get("n_embd", base.n_embd)
    if "n_head" not in given and n_embd >= 1 and n_embd % base.n_head:
        out["n_head"] = max(d for d in range(1, base.n_head + 1) if n_embd % d == 0)
    return out
