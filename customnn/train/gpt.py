"""``customnn train gpt``: the GPT on characters or BPE tokens, nanoGPT's ``train.py`` on customnn.

The loop of nanoGPT's ``train.py``, run by the engine (``customnn/train/engine.py``): random
blocks of the training text, AdamW with decoupled weight decay on the matrices only (not on
biases, norm gains or, unless ``--decay-embeddings`` as nanoGPT and the ``nanogpt-cpu``
preset, the embeddings), a cosine learning-rate schedule with linear warmup
(``optim.cosine_lr``, nanoGPT's ``get_lr``), gradient clipping at a global norm, and every
``eval_interval`` steps the mean loss of ``eval_iters`` batches of each split, printed as
nanoGPT prints it, followed by the validation loss in bits per UTF-8 byte of the text its
batches cover (the figure that compares tokenizers: loss per token means something else for
each)::

    step 250: train loss 1.9661, val loss 2.0656, val bpb 2.9801

This file holds only what is the GPT's own: the model, optimizer and batches, the evaluation,
and the state it keeps beyond them (the next batch's offsets, drawn before each step's
evaluation as nanoGPT fetches the next batch while a step runs); its settings and presets are
in ``customnn/train/gpt_config.py`` (imported here too). A
checkpoint's header holds the model's configuration and tokenizer, all generation needs.
Evaluation draws its batches from a generator seeded afresh each time, so every evaluation of
a run sees the same batches and uses none of the training randomness; except with
``--nanogpt-rng`` (on in the ``nanogpt-cpu`` preset), where, as in nanoGPT, one generator feeds
the initialisation, the training batches and the evaluations, so that a seed replays nanoGPT's
run line for line (``customnn/train/nanogpt_rng.py``).

Presets (``--preset``; every field can be overridden by its flag, e.g. ``--max-iters 500``):
``nanogpt-cpu`` is nanoGPT's documented CPU run, ``default`` ten minutes on a 2-core CPU,
``tiny`` a few seconds for tests.

    customnn train gpt --preset nanogpt-cpu
    customnn train gpt --resume runs/gpt-20261127-120000 --max-iters 4000
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import torch

from customnn.core.errors import UserError
from customnn.core.fileio import atomic_write_text
from customnn.core.progress import Progress
from customnn.core.runtime import seed_all
from customnn.data.text import Corpus, blocks_at, default_prompt, get_batch, load_corpus, random_offsets
from customnn.models.gpt import GPT
from customnn.models.sampling import generate
from customnn.optim import AdamW, cosine_lr, decay_groups
from customnn.optim.muon import Muon, muon_groups, state_keys
from customnn.train.engine import train_with
from customnn.train.gpt_checkpoint import (block_size_of, from_checkpoint, gpt_from_checkpoint,  # noqa: F401
                                          gpt_tokenizer)  # (also customnn.train.gpt's: the task's loader)
from customnn.train.gpt_config import PRESETS, GPTTrainConfig, adapt_defaults, make_config  # noqa: F401 (also customnn.train.gpt's)
from customnn.train.loading import check_optimizer_state, check_weights, load_weights
from customnn.train.nanogpt_rng import init_like_nanogpt_
from customnn.train.trainer import Trainer
from customnn.train.usermodel import check_training_memory


def param_groups(model: GPT, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Decay the matrices of linear layers; not biases, layer-norm gains or (unless asked) the embeddings.

    ``decay_embeddings=True`` is nanoGPT's ``configure_optimizers``: every tensor of two or more
    dimensions decays, the token embedding (which is also the tied output projection) included.
    """
    exclude = () if decay_embeddings else ("wte", "wpe")
    return decay_groups(model.named_parameters(), weight_decay, exclude=exclude, keep_empty=True)


# --- evaluation ----------------------------------------------------------------------------------
@torch.inference_mode()
def estimate_loss(model: GPT, corpus: Corpus, batch_size: int, eval_iters: int, seed: int,
                  device, generator: torch.Generator | None = None, block_size: int | None = None,
                  quiet: bool = True) -> dict[str, float]:
    """nanoGPT's ``estimate_loss``: the mean loss over ``eval_iters`` batches of each split, from
    generators seeded with ``seed`` and ``seed + 1``, or, given ``generator``, drawn from it
    (train first, as nanoGPT). A long one (a long context) is announced with its estimate and
    shows progress (``core/progress.py``; the bar unless ``quiet``).

    Also each split's bits per byte (``train_bpb``, ``val_bpb``): the batches' summed loss in
    nats, over ln 2 and the number of UTF-8 bytes their target tokens stand for."""
    was_training = model.training
    model.eval()
    out = {}
    block = model.config.block_size if block_size is None else block_size
    token_bytes = torch.tensor(corpus.tokenizer.token_bytes(), device=device)  # (V,) UTF-8 bytes of each token
    progress = Progress(2 * eval_iters, f"evaluating on {batch_size} x {block} tokens a batch", "batches", quiet)
    try:
        for i, split in enumerate(("train", "val")):
            g = generator if generator is not None else torch.Generator().manual_seed(seed + i)
            data = corpus.train if split == "train" else corpus.val
            # the model's precision, at least float32: a sum of bfloat16 losses would keep 3 digits
            total = torch.zeros((), device=device,
                                dtype=torch.promote_types(model.parameters()[0].dtype, torch.float32))
            nbytes = torch.zeros((), device=device, dtype=torch.int64)
            for _ in range(eval_iters):
                x, y = get_batch(data, block, batch_size, g, device)
                total += model(x, y)[1]
                nbytes += token_bytes[y].sum()
                if progress.estimate is None:  # the first batch timed to its end (a GPU runs ahead)
                    total.item()
                progress.update()
            out[split] = total.item() / eval_iters
            out[f"{split}_bpb"] = out[split] * y.numel() * eval_iters / (math.log(2) * max(int(nbytes), 1))
    finally:
        progress.close()
        model.train(was_training)
    return out


def eval_line(step: int, losses: dict) -> str:
    line = f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
    return line + (f", val bpb {losses['val_bpb']:.4f}" if "val_bpb" in losses else "")


def sample_text(model: GPT, tokenizer, prompt: str | None = None, n: int = 300, seed: int = 1337,
                temperature: float = 0.8, block_size: int | None = None) -> str:
    """``n`` characters sampled from ``prompt`` (None: a newline, or the text's first character)."""
    prompt = default_prompt(tokenizer) if prompt is None else prompt
    g = torch.Generator(device=model.parameters()[0].device).manual_seed(seed)
    ids = generate(model, tokenizer.encode(prompt), n, temperature=temperature, generator=g, block_size=block_size)
    return prompt + tokenizer.decode(ids)


# --- the GPT's part of the engine -----------------------------------------------------------------
class GPTTrainer(Trainer):
    """The text task: blocks of tokens in, next-token logits out."""

    name = "gpt"
    default_model = GPT
    provided_names = ("seed", "vocab_size", "block_size")
    best_metric, best_mode = "val_loss", "min"
    plot_series = {"train (eval)": "train_loss", "val (eval)": "val_loss"}

    def setup(self, device, ckpt) -> None:
        cfg = self.cfg
        stored, stored_vocab = None, None
        if ckpt is not None and not self.user_model:  # the stored model, checked before any use: the model resumed
            stored, stored_vocab = gpt_from_checkpoint(ckpt, ckpt.path)
        elif ckpt is not None:
            stored_vocab = gpt_tokenizer(ckpt.meta)
        self.corpus = corpus = load_corpus(cfg.text, cfg.data_dir, cfg.block_size, vocab=stored_vocab,
                                           tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size,
                                           val_text=cfg.val_text)
        vocab_size = corpus.tokenizer.vocab_size
        self.device = device
        self.check_memory(device, vocab_size)  # refused in one line, before anything is allocated
        if ckpt is not None and stored is not None \
                and ckpt.meta["config"] != cfg.model_config(vocab_size).to_dict():
            raise UserError(f"{ckpt.path} was trained with a different model configuration")
        seed_all(cfg.seed)
        self.batch_gen = torch.Generator().manual_seed(cfg.seed)
        if stored is not None:  # its weights are the checkpoint's (and the generators are restored from it)
            model = stored
        else:
            model = self.build_model()
            if cfg.nanogpt_rng and not self.user_model:  # nanoGPT's one stream: its initialisation draws,
                init_like_nanogpt_(model, self.batch_gen)  # then batches and evaluations
            if ckpt is not None:
                check_weights(ckpt.model_state, ckpt.path)
                load_weights(model, ckpt.model_state, ckpt.path)
        self.model = model.to(device=device, dtype=cfg.torch_dtype)
        if cfg.optimizer == "muon":  # Muon for the blocks' matrices, AdamW for embeddings, gains and head
            groups = muon_groups(model.named_parameters(), lr=cfg.lr, muon_lr=cfg.muon_lr,
                                 weight_decay=cfg.weight_decay)
            self.optimizer = Muon(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        else:
            self.optimizer = AdamW(param_groups(model, cfg.weight_decay, cfg.decay_embeddings), lr=cfg.lr,
                                   betas=(cfg.beta1, cfg.beta2))
        self.generators = {"train": self.batch_gen}
        self.total_steps, self.eval_interval, self.warmup_steps = cfg.max_iters, cfg.eval_interval, cfg.warmup_iters
        # The offsets of the next training batch, drawn before that step's evaluation as nanoGPT
        # draws them (it fetches the next batch while a step runs); kept in checkpoints.
        self.next_ix: torch.Tensor | None = None
        # The shared generator's state before the last evaluation that drew from it, saved with that
        # evaluation's checkpoints so that ``customnn eval`` draws the very same batches.
        self.eval_state, self.eval_step = None, -1

    def provided(self) -> dict:
        return {"seed": self.cfg.seed, "vocab_size": self.corpus.tokenizer.vocab_size, "block_size": self.cfg.block_size}

    def check_memory(self, device, vocab_size: int = 1, measure: bool = True) -> None:
        """A one-line refusal, before anything is allocated, of a step that cannot fit (this
        process's rows of the batch); the vocabulary's size is 1 until the text is read."""
        cfg = self.cfg
        provided = {"seed": cfg.seed, "vocab_size": vocab_size, "block_size": cfg.block_size}
        advice = ("use a smaller --batch-size or --block-size, or smaller --model-arg settings" if self.user_model
                  else "use a smaller --n-embd, --block-size, --batch-size or --n-layer")

        def probe(n):
            x = torch.randint(0, vocab_size, (n, cfg.block_size), generator=torch.Generator().manual_seed(0))
            return x.to(device), x.to(device)

        check_training_memory(self.spec, provided, max(1, cfg.batch_size // self.dist.world), device,
                              cfg.torch_dtype, task="text", advice=advice, probe=probe if measure else None)

    def schedule(self, total_steps: int):
        cfg = self.cfg
        decay = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else max(total_steps, cfg.warmup_iters + 1)
        return cosine_lr(cfg.lr, cfg.warmup_iters, decay, cfg.min_lr)

    def before_step(self, step: int) -> None:
        if self.next_ix is None:
            self.next_ix = random_offsets(len(self.corpus.train), self.cfg.block_size, self.cfg.batch_size,
                                          self.batch_gen)  # (B,)

    def train_step(self, step: int) -> torch.Tensor:
        ix, rows = self.next_ix, self.dist.rows(len(self.next_ix))  # this process's rows of the batch
        x, y = blocks_at(self.corpus.train, ix[rows], self.cfg.block_size, self.device)  # (b, T), (b, T)
        self.next_ix = None
        if self.dist.active:  # dropout draws the whole batch's masks and keeps these rows
            self.model.batch = (rows, len(ix))
        _, loss = self.model(x, y)
        if self.dist.active:  # its share of the batch's mean loss: the ranks' shares sum to it
            loss = loss * ((rows.stop - rows.start) / len(ix))
        self.backward(loss)
        return loss

    def evaluate(self, step: int) -> dict:
        cfg = self.cfg
        # With nanogpt_rng, nanoGPT's evaluations (every eval_interval steps) draw from its one
        # stream. A closing evaluation off that grid, which nanoGPT does not make, draws from
        # generators seeded afresh (as every evaluation otherwise), so that it leaves the
        # stream, and so a resumed run, as they would have been without it.
        shared = cfg.nanogpt_rng and step % cfg.eval_interval == 0
        self.eval_state = self.batch_gen.get_state() if shared else None
        self.eval_step = step
        try:
            losses = estimate_loss(self.model, self.corpus, cfg.batch_size, cfg.eval_iters, cfg.seed + 1,
                                   self.device, generator=self.batch_gen if shared else None,
                                   block_size=cfg.block_size, quiet=self.quiet)
        except BaseException:  # abandoned (Ctrl-C, SIGTERM): the shared stream as it was, for the checkpoint
            if shared:
                self.batch_gen.set_state(self.eval_state)
            self.eval_step = -1
            raise
        self.last_losses = {"train_loss": losses["train"], "val_loss": losses["val"], "train_bpb": losses["train_bpb"],
                            "val_bpb": losses["val_bpb"]}
        return dict(self.last_losses)

    def eval_line(self, step, result) -> str:
        return eval_line(step, {"train": result["train_loss"], "val": result["val_loss"], "val_bpb": result["val_bpb"]})

    def check_resume(self, step: int, total: int) -> None:
        if step > self.cfg.max_iters:
            raise UserError(f"the run is already at step {step}, past --max-iters {self.cfg.max_iters}")

    def run_config(self) -> dict:
        model = self.model.config.to_dict() if not self.user_model else self.spec.name
        return {**asdict(self.cfg), "model": model, "parameters": self.model.num_parameters(),
                "text_path": str(self.corpus.path), "device": str(self.device), **self.model_record()}

    def intro_line(self, run) -> str:
        c = self.corpus
        atomic_write_text(run.path / "tokenizer.json", json.dumps(c.tokenizer.to_header()))  # also in every checkpoint
        unit = "characters" if c.tokenizer.kind == "char" else f"{c.tokenizer.kind} tokens"
        what = f"{self.spec.cls.__name__} ({self.spec.file})" if self.user_model else "GPT"
        return (f"training a {what} of {self.model.num_parameters() / 1e6:.2f}M parameters on {c.path.name} "
                f"({len(c.train):,} train / {len(c.val):,} val {unit}, vocabulary of {c.tokenizer.vocab_size}) "
                f"on {self.device}; run folder {run.path}")

    def plot_title(self) -> str:
        what = self.spec.cls.__name__ if self.user_model else "GPT"
        return f"{what} on {self.corpus.path.name} ({self.cfg.preset})"

    def checkpoint_meta(self, step: int) -> dict:
        tok = self.corpus.tokenizer
        meta = {"model": "gpt", "tokenizer": tok.to_header(), "train_config": asdict(self.cfg), "step": step,
                **({"config": self.model.config.to_dict()} if not self.user_model else self.model_record())}
        if tok.kind == "char":  # as checkpoints without a tokenizer field held it
            meta["vocab"] = tok.chars
        if self.eval_step == step:  # the losses of this step's evaluation
            meta.update(self.last_losses)
        return meta

    def extra_state(self, step: int) -> dict:
        return {"next_batch": self.next_ix, "eval_rng": self.eval_state if self.eval_step == step else None}

    def load_extra_state(self, state: dict, step: int) -> None:
        for group in self.optimizer.param_groups:  # each parameter's state has its optimizer's keys
            keys = state_keys(group) if self.cfg.optimizer == "muon" else {"step", "exp_avg", "exp_avg_sq"}
            check_optimizer_state(group["params"], self.optimizer.state, keys)
        next_ix, n = state["next_batch"], len(self.corpus.train)
        if next_ix is not None:  # (B,) offsets into the training text, each leaving room for a block
            if not (isinstance(next_ix, torch.Tensor) and next_ix.dtype == torch.int64
                    and next_ix.shape == (self.cfg.batch_size,)
                    and bool(((next_ix >= 0) & (next_ix < n - self.cfg.block_size)).all())):
                raise ValueError("next batch")
        self.next_ix = next_ix

    def report(self, run, evals, step, seconds, finished) -> list[str]:
        cfg = self.cfg
        model = (f"model `{self.spec.name}` {self.spec.args or ''}" if self.user_model
                 else f"{cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}")
        lines = [f"# GPT run `{run.path.name}`", "",
                 f"Preset `{cfg.preset}`: {model}, "
                 f"context {cfg.block_size}, {self.model.num_parameters():,} parameters; batch {cfg.batch_size}, "
                 f"lr {cfg.lr:g} -> {cfg.min_lr:g}, text `{self.corpus.path}`.", "",
                 f"Training time {seconds:.1f} s (evaluation included)"
                 + (f", time budget {cfg.time_budget:g} s" if cfg.time_budget else "")
                 + f"; precision {cfg.precision} ({cfg.dtype} weights).", "",
                 f"Tokens: {self.corpus.tokenizer.kind}, vocabulary of {self.corpus.tokenizer.vocab_size}. Losses "
                 "are in nats per token; bits per byte is the validation loss per UTF-8 byte of the text.", "",
                 "| step | train loss | val loss | val bits/byte | time (s) |", "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['step']} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | {r.get('val_bpb', float('nan')):.4f} "
                  f"| {r.get('time', 0):.1f} |" for r in evals]
        lines.append("")
        if finished:  # a sample; none after Ctrl-C: stop fast
            last = evals[-1]["step"] if evals else 0
            prompt = default_prompt(self.corpus.tokenizer)
            text = sample_text(self.model, self.corpus.tokenizer, prompt, 300, seed=cfg.seed, block_size=cfg.block_size)
            lines += [f"A sample of the model at step {last} (temperature 0.8, from {prompt!r}):", "", "```",
                      text.strip("\n"), "```", ""]
        return lines

    def result(self) -> dict:
        return {"vocab": self.corpus.tokenizer}


def train(cfg: GPTTrainConfig, quiet: bool = False, given: dict | None = None, model=None) -> dict:
    """Train (or, with ``cfg.resume``, continue) a GPT run; returns its figures and the model.

    Returns ``run_dir``, ``final_val_loss``, ``final_train_loss``, ``best_val_loss``, ``step``,
    ``time_s`` (wall time of all sessions of the run), ``model``, ``vocab``, ``interrupted``.
    """
    out = train_with(GPTTrainer, cfg, quiet, given, model)
    evals = out["evals"]
    final = evals[-1] if evals else {}
    return {**out, "final_train_loss": final.get("train_loss"), "final_val_loss": final.get("val_loss"),
            "best_val_loss": min((r["val_loss"] for r in evals), default=float("inf"))}


Task, Config = GPTTrainer, GPTTrainConfig  # what customnn/train/tasks.py finds in a task's module
