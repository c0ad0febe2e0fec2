"""``customnn train gpt``: train the character-level GPT, nanoGPT's ``train.py`` on customnn.

The loop of nanoGPT's ``train.py``: random blocks of the training text, AdamW with decoupled
weight decay on the matrices only (not on biases, norm gains or, unless
``--decay-embeddings`` as nanoGPT and the ``nanogpt-cpu`` preset, the embeddings), a cosine
learning-rate schedule with linear warmup (``optim.cosine_lr``, nanoGPT's ``get_lr``),
gradient clipping at a global norm, and every ``eval_interval`` steps the mean loss of
``eval_iters`` batches of each split, printed as nanoGPT prints it::

    step 250: train loss 1.9661, val loss 2.0656

Everything goes into a run folder (``customnn/train/run.py``): config.json, metrics.jsonl,
train.log, ``best.safetensors`` (lowest val loss) and ``last.safetensors`` (saved at every
evaluation), loss.png and report.md. A checkpoint (read back and evaluated by
``customnn/train/gpt_eval.py``) holds the model, its configuration and vocabulary (all
generation needs) and the whole training state: optimizer moments, the step,
every RNG state (the batch generator included), the next batch's offsets, the best val loss.
So ``--resume RUN`` continues with exactly the losses an uninterrupted run would have had.
Evaluation draws its batches from a generator seeded afresh each time, so every evaluation of
a run sees the same batches and uses none of the training randomness; except with
``--nanogpt-rng`` (on in the ``nanogpt-cpu`` preset), where, as in nanoGPT, one generator feeds
the initialisation, the training batches and the evaluations, so that a seed replays nanoGPT's
run line for line (``customnn/train/nanogpt_rng.py``).

``--time-budget SECONDS`` trains for as many steps as fit in that time, evaluations included;
the plan (the length of the cosine schedule) is made during the warmup and revised every 15 s
(``customnn/train/budget.py``).

Ctrl-C (or SIGTERM) finishes the current step, saves ``last.safetensors`` and prints how to
resume. A loss or gradient that is not finite stops the run at once with the step number;
the last checkpoint (from the last evaluation) is left untouched.

Presets (``--preset``; every field can be overridden by its flag, e.g. ``--max-iters 500``):
``nanogpt-cpu`` is nanoGPT's documented CPU run, ``default`` the best model we found for ten
minutes on a 2-core CPU, ``tiny`` a few seconds for tests.

    customnn train gpt --preset nanogpt-cpu
    customnn train gpt --resume runs/gpt-20261127-120000 --max-iters 4000
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, fields, replace

import torch

from customnn.data.text import Corpus, Vocab, blocks_at, load_corpus, random_offsets
from customnn.errors import UserError
from customnn.models.gpt import GPT, GPTConfig
from customnn.optim import AdamW, clip_grad_norm_, cosine_lr, grads_are_finite, set_lr
from customnn.train.budget import StepPlanner
from customnn.train.gpt_eval import (MAX_BATCH_SIZE, MAX_EVAL_ITERS, checkpoint_meta, estimate_loss, eval_line,
                                     is_int, model_from_checkpoint)
from customnn.train.nanogpt_rng import init_like_nanogpt_
from customnn.train.run import (InterruptFlag, RunDir, atomic_write_text, check_seed, load_checkpoint, plot_curves,
                                progress_bar, release_free_memory, resolve_device, rng_state, save_checkpoint,
                                seed_all, set_rng_state)


@dataclass
class GPTTrainConfig:
    """Everything a GPT run depends on. Defaults are the ``default`` preset's."""

    preset: str = "default"  # the preset these values started from (recorded in config.json)
    # model (GPTConfig; vocab_size comes from the text)
    n_layer: int = 4  # nanoGPT's CPU model: 4 blocks of width 128, 0.8M parameters
    n_head: int = 4  # head size 32
    n_embd: int = 128  # wider models learn more per step but fewer steps fit in ten minutes
    block_size: int = 128  # characters of context: a line and a half of verse
    dropout: float = 0.0  # ten minutes of training do not overfit a 0.8M model enough to need it
    bias: bool = False  # nanoGPT's setting: no biases in linear layers and layer norms
    tie_weights: bool = True  # the output projection is the token embedding (fewer parameters)
    # data
    text: str | None = None  # a UTF-8 text file; None: Tiny Shakespeare from the data directory
    data_dir: str | None = None  # the data directory (None: $CUSTOMNN_DATA, else ~/.cache/customnn)
    batch_size: int = 12  # small batches, many steps: the most progress per second on a CPU
    # optimizer and schedule
    max_iters: int = 20000  # training steps (with --time-budget: the most it may plan)
    lr: float = 3e-3  # peak learning rate after warmup; 3x nanoGPT's 1e-3 trains this small model faster
    min_lr: float = 3e-4  # the cosine schedule's floor, lr / 10 as nanoGPT
    warmup_iters: int = 100  # linear warmup steps
    lr_decay_iters: int | None = None  # cosine decay length (None: max_iters)
    beta1: float = 0.9  # AdamW's first moment, the usual value
    beta2: float = 0.99  # nanoGPT's for small batches (its default 0.95 is for large ones)
    weight_decay: float = 0.1  # on matrices only
    decay_embeddings: bool = False  # decay the embeddings too (nanoGPT decays every matrix, tied head included)
    grad_clip: float = 1.0  # global gradient norm; 0 turns clipping off
    # evaluation and logging
    eval_interval: int = 1000  # evaluate (and save last.safetensors) every this many steps
    eval_iters: int = 40  # batches of each split per evaluation
    log_interval: int = 10  # a training-loss row in metrics.jsonl every this many steps
    # run
    time_budget: float | None = 580.0  # seconds for the whole run, evaluation included (None: max_iters steps)
    seed: int = 1337  # initialisation, batches and dropout; nanoGPT's seed
    nanogpt_rng: bool = False  # one generator for init, batches and evaluation, in nanoGPT's order
    device: str = "auto"  # auto, cpu or cuda
    out: str = "runs"  # run folders are created under this folder
    resume: str | None = None  # a run folder to continue (from its last.safetensors) instead of a new run

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias,
                         tie_weights=self.tie_weights)

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters


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
    # batch 12, as many steps as fit in 580 s (picked in short trials whose figures were not kept;
    # the README gives the ten-minute figures).
    "default": dict(),
    # A few seconds: tests and smoke runs.
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, max_iters=100, lr=3e-3,
                 min_lr=3e-4, warmup_iters=5, eval_interval=50, eval_iters=4, log_interval=5, time_budget=None),
}

FIELDS = [f for f in fields(GPTTrainConfig) if f.name not in ("preset", "resume")]
# Flags that may change when a run is resumed; the rest would change what is being trained.
RESUMABLE = {"max_iters", "time_budget", "lr_decay_iters", "eval_interval", "eval_iters", "log_interval", "device",
             "data_dir", "text", "out"}


def make_config(preset: str = "default", **overrides) -> GPTTrainConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    cfg = replace(GPTTrainConfig(), preset=preset, **PRESETS[preset])
    cfg = replace(cfg, **overrides)
    check_config(cfg)
    return cfg


def check_config(cfg: GPTTrainConfig) -> None:
    """Every value in range, or a one-line ``UserError`` naming the flag."""
    def flag(name):
        return "--" + name.replace("_", "-")

    for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_iters", "eval_interval",
                 "eval_iters", "log_interval"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{flag(name)} must be >= 1, got {getattr(cfg, name)}")
    if cfg.batch_size > MAX_BATCH_SIZE:
        raise UserError(f"--batch-size must be <= {MAX_BATCH_SIZE}, got {cfg.batch_size}")
    if cfg.eval_iters > MAX_EVAL_ITERS:
        raise UserError(f"--eval-iters must be <= {MAX_EVAL_ITERS}, got {cfg.eval_iters}")
    check_seed(cfg.seed)
    if cfg.n_embd % cfg.n_head:
        raise UserError(f"--n-embd ({cfg.n_embd}) must be divisible by --n-head ({cfg.n_head})")
    for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
        value = getattr(cfg, name)
        if not (value >= 0 and math.isfinite(value)):
            raise UserError(f"{flag(name)} must be a finite number >= 0, got {value}")
    if cfg.lr == 0:
        raise UserError("--lr must be > 0")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise UserError(f"{flag(name)} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.time_budget is not None and not (cfg.time_budget > 0 and math.isfinite(cfg.time_budget)):
        raise UserError(f"--time-budget must be a number of seconds > 0, got {cfg.time_budget}")
    if cfg.warmup_iters < 0:
        raise UserError(f"--warmup-iters must be >= 0, got {cfg.warmup_iters}")
    if cfg.decay_iters <= cfg.warmup_iters:
        raise UserError(f"--lr-decay-iters ({cfg.decay_iters}) must be larger than --warmup-iters "
                        f"({cfg.warmup_iters})")


# --- training --------------------------------------------------------------------------------------
def param_groups(model: GPT, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Decay the matrices of linear layers; not biases, layer-norm gains or (unless asked) the embeddings.

    ``decay_embeddings=True`` is nanoGPT's ``configure_optimizers``: every tensor of two or more
    dimensions decays, the token embedding (which is also the tied output projection) included.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_embedding = name in ("wte", "wpe")
        (decay if p.dim() >= 2 and (decay_embeddings or not is_embedding) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sample_text(model: GPT, vocab: Vocab, prompt: str = "\n", n: int = 300, seed: int = 1337,
                temperature: float = 0.8) -> str:
    from customnn.generate import generate

    g = torch.Generator(device=model.wte.device).manual_seed(seed)
    ids = generate(model, vocab.encode(prompt), n, temperature=temperature, generator=g)
    return prompt + vocab.decode(ids)


def train(cfg: GPTTrainConfig, quiet: bool = False) -> dict:
    """Train (or, with ``cfg.resume``, continue) a GPT run; returns its figures and the model.

    Returns ``run_dir``, ``final_val_loss``, ``final_train_loss``, ``best_val_loss``, ``step``,
    ``time_s`` (wall time of all sessions of the run), ``model``, ``vocab``, ``interrupted``.
    """
    check_config(cfg)
    device = resolve_device(cfg.device)
    t_start = time.perf_counter()
    if cfg.resume is not None:
        run = RunDir.open(cfg.resume)
        ckpt_path = run.checkpoint("last")
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.state is None:
            raise UserError(f"{ckpt_path} holds no training state to resume from")
        _, stored_vocab = model_from_checkpoint(ckpt, ckpt_path)  # the stored model is checked before any use
    else:
        ckpt, stored_vocab = None, None
    corpus = load_corpus(cfg.text, cfg.data_dir, cfg.block_size, vocab=stored_vocab)
    if ckpt is None:  # the folder is made only once the data are known to be good
        run = RunDir.create("gpt", cfg.out)
    if ckpt is not None and ckpt.meta["config"] != cfg.model_config(len(corpus.vocab)).to_dict():
        raise UserError(f"{ckpt_path} was trained with a different model configuration")
    seed_all(cfg.seed)
    model = GPT(cfg.model_config(len(corpus.vocab)), seed=cfg.seed)
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.nanogpt_rng:  # nanoGPT's one stream: its initialisation draws, then batches and evaluations
        init_like_nanogpt_(model, batch_gen)
    model.to(device=device)
    opt = AdamW(param_groups(model, cfg.weight_decay, cfg.decay_embeddings), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    step, best_val, evaluated_at, elapsed = 0, float("inf"), -1, 0.0
    # The offsets of the next training batch, drawn before that step's evaluation as nanoGPT
    # draws them (it fetches the next batch while a step runs); kept in checkpoints.
    next_ix: torch.Tensor | None = None
    # The shared generator's state before the last evaluation that drew from it, saved with that
    # evaluation's checkpoints so that ``customnn eval`` draws the very same batches.
    eval_state: torch.Tensor | None = None
    total_iters = cfg.max_iters  # the plan: max_iters, or what fits in the time budget
    if ckpt is not None:
        model.load_state_dict({k: v.to(device) for k, v in ckpt.model_state.items()})
        try:
            step, best_val, evaluated_at, saved_total, elapsed, next_ix = restore_training_state(
                ckpt.state, opt, batch_gen, len(corpus.train), cfg.block_size, cfg.batch_size)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, SyntaxError, OverflowError,
                RecursionError, AttributeError) as e:
            raise UserError(f"cannot resume from {ckpt_path}: its training state is damaged "
                            f"({type(e).__name__})") from None
        if cfg.time_budget is not None:
            total_iters = min(saved_total, cfg.max_iters)
        run.truncate_metrics(lambda r: r.get("step", 0) <= step)
        run.log(f"resuming {run.path} at step {step}", echo=not quiet)
    else:
        run.write_config({**asdict(cfg), "model": model.config.to_dict(), "parameters": model.num_parameters(),
                          "text_path": str(corpus.path), "device": str(device)})
        run.log(f"training a GPT of {model.num_parameters() / 1e6:.2f}M parameters on {corpus.path.name} "
                f"({len(corpus.train):,} train / {len(corpus.val):,} val characters, vocabulary of "
                f"{len(corpus.vocab)}) on {device}; run folder {run.path}", echo=not quiet)
    if step > cfg.max_iters:
        raise UserError(f"the run is already at step {step}, past --max-iters {cfg.max_iters}")
    planner = StepPlanner(cfg.time_budget, cfg.max_iters, cfg.warmup_iters, cfg.eval_interval, step, total_iters)

    def schedule(total: int):
        decay = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else max(total, cfg.warmup_iters + 1)
        return cosine_lr(cfg.lr, cfg.warmup_iters, decay, cfg.min_lr)

    def clock() -> float:  # seconds of this run so far, all sessions
        return elapsed + time.perf_counter() - t_start

    lr_at = schedule(total_iters)
    announced = False  # the first plan is printed, revisions go to train.log only

    def save(name: str, losses: dict | None) -> None:
        state = {"optimizer": opt.state_dict(), "rng": rng_state({"train": batch_gen}), "iteration": step,
                 "best_val_loss": best_val, "evaluated_at": evaluated_at, "total_iters": total_iters,
                 "elapsed": clock(), "next_batch": next_ix, "eval_rng": None if losses is None else eval_state}
        extra = {} if losses is None else {"train_loss": losses["train"], "val_loss": losses["val"]}
        save_checkpoint(run.checkpoint(name), model.state_dict(), checkpoint_meta(cfg, model, corpus.vocab, step,
                                                                                  **extra), state)

    losses = None
    interrupted = False
    bar = progress_bar(total_iters, "train gpt", quiet=quiet, initial=step)

    def log(line: str) -> None:  # printed above the progress bar when there is one
        if not bar.disable:
            run.log(line, echo=False)
            bar.write(line, file=sys.stdout)
        else:
            run.log(line, echo=not quiet)

    model.train()
    with InterruptFlag() as flag:
        while True:
            if next_ix is None:
                next_ix = random_offsets(len(corpus.train), cfg.block_size, cfg.batch_size, batch_gen)  # (B,)
            evaluate = (step % cfg.eval_interval == 0 or step == total_iters) and evaluated_at != step
            if evaluate:
                t_eval = clock()
                # With nanogpt_rng, nanoGPT's evaluations (every eval_interval steps) draw from its one
                # stream. A closing evaluation off that grid, which nanoGPT does not make, draws from
                # generators seeded afresh (as every evaluation otherwise), so that it leaves the
                # stream, and so a resumed run, as they would have been without it.
                shared = cfg.nanogpt_rng and step % cfg.eval_interval == 0
                eval_state = batch_gen.get_state() if shared else None
                losses = estimate_loss(model, corpus, cfg.batch_size, cfg.eval_iters, cfg.seed + 1, device,
                                       generator=batch_gen if shared else None)
                evaluated_at = step
                log(eval_line(step, losses))
                run.log_metrics(step=step, train_loss=losses["train"], val_loss=losses["val"],
                                time=round(clock(), 3))
                if losses["val"] < best_val:
                    best_val = losses["val"]
                    save("best", losses)
                save("last", losses)
                release_free_memory()  # the evaluation's and the saves' buffers (see its docstring)
                planner.timed_eval(clock() - t_eval)
            if step < total_iters and planner.update(step, clock()):
                total_iters = planner.total
                lr_at = schedule(total_iters)
                bar.total = total_iters
                bar.refresh()
                run.log(f"time budget {cfg.time_budget:g} s: {total_iters} steps planned at step {step}",
                        echo=not announced and not quiet)
                announced = True
            if step >= total_iters:
                break
            if flag.requested:
                interrupted = True
                save("last", None)
                msg = (f"interrupted at step {step}; saved {run.checkpoint('last')}. Resume with: "
                       f"customnn train gpt --resume {run.path}")
                run.log(msg, echo=False)
                print(msg, file=sys.stderr, flush=True)
                break
            lr = lr_at(step)
            set_lr(opt, lr)
            x, y = blocks_at(corpus.train, next_ix, cfg.block_size, device)
            next_ix = None
            _, loss = model(x, y)
            loss.backward()
            if cfg.grad_clip > 0:
                norm = clip_grad_norm_(model.parameters(), cfg.grad_clip)
                finite = bool(torch.isfinite(loss) & torch.isfinite(norm))
            else:
                finite = bool(torch.isfinite(loss)) and grads_are_finite(model.parameters())
            if not finite:
                bar.close()
                last = run.checkpoint("last")
                msg = (f"training diverged at step {step}: the loss or a gradient is not finite "
                       f"(loss {loss.item()}, lr {lr:.3g}). ")
                msg += (f"The last good checkpoint, {last} (step {evaluated_at}), is untouched. "
                        if last.is_file() else "No checkpoint was saved before it. ")
                msg += f"Try a lower --lr (this run used --lr {cfg.lr:g})."
                run.log(msg, echo=False)
                raise UserError(msg)
            opt.step()
            opt.zero_grad()
            step += 1
            bar.update(1)
            if step % cfg.log_interval == 0:
                loss_value = loss.item()
                run.log_metrics(step=step, loss=loss_value, lr=lr)
                bar.set_postfix(loss=f"{loss_value:.4f}")
    bar.close()
    write_outputs(run, cfg, model, corpus, clock(), sample=not interrupted)
    total = clock()
    return {"run_dir": run.path, "final_train_loss": losses["train"] if losses else None,
            "final_val_loss": losses["val"] if losses else None, "best_val_loss": best_val, "step": step,
            "time_s": total, "model": model, "vocab": corpus.vocab, "interrupted": interrupted}


def restore_training_state(st: dict, opt: AdamW, batch_gen: torch.Generator, n_train: int, block_size: int,
                           batch_size: int) -> tuple[int, float, int, int, float, torch.Tensor | None]:
    """Load a checkpoint's training state into ``opt`` and ``batch_gen``; returns the step, the best
    val loss, the step of the last evaluation, the planned steps, the seconds so far and the
    offsets of the next training batch (None when it was not drawn yet, or the checkpoint is
    older than that field).

    Everything is checked, so that a damaged or forged state fails here (``KeyError``,
    ``TypeError``, ``ValueError``, ...), not with a traceback in the middle of training.
    """
    step, evaluated_at, total = st["iteration"], st["evaluated_at"], st["total_iters"]
    best_val, elapsed = st["best_val_loss"], st["elapsed"]
    if not (is_int(step, 0) and is_int(evaluated_at, -1, step) and is_int(total, 0)):
        raise ValueError("step counters")
    for value in (best_val, elapsed):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError("best val loss or elapsed time")
    if not (math.isfinite(elapsed) and elapsed >= 0):
        raise ValueError("elapsed time")
    # The hyperparameters are the run's (its flags cannot change on resume) except the lr, which
    # is set before every step; each parameter's state is AdamW's: a step count and two moments.
    fixed = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in opt.param_groups]
    opt.load_state_dict(st["optimizer"])
    loaded = [{k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k not in ("params", "lr")}
              for g in opt.param_groups]
    if loaded != fixed:
        raise ValueError("optimizer hyperparameters")
    for s in opt.state.values():
        if set(s) != {"step", "exp_avg", "exp_avg_sq"} or not is_int(s["step"], 0) \
                or not all(isinstance(s[k], torch.Tensor) for k in ("exp_avg", "exp_avg_sq")):
            raise ValueError("optimizer state")
    next_ix = st.get("next_batch")
    if next_ix is not None:  # (B,) offsets into the training text, each leaving room for a block
        if not (isinstance(next_ix, torch.Tensor) and next_ix.dtype == torch.int64 and next_ix.shape == (batch_size,)
                and bool(((next_ix >= 0) & (next_ix < n_train - block_size)).all())):
            raise ValueError("next batch")
    set_rng_state(st["rng"], {"train": batch_gen})
    return step, float(best_val), evaluated_at, total, float(elapsed), next_ix


def write_outputs(run: RunDir, cfg: GPTTrainConfig, model: GPT, corpus: Corpus, total_s: float,
                  sample: bool = True) -> None:
    """loss.png and report.md from metrics.jsonl, with a generated sample (none after Ctrl-C: stop fast)."""
    rows = run.read_metrics()
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    plot_curves(run.path / "loss.png", {
        "train (batch)": ([r["step"] for r in train_rows], [r["loss"] for r in train_rows]),
        "train (eval)": ([r["step"] for r in evals], [r["train_loss"] for r in evals]),
        "val (eval)": ([r["step"] for r in evals], [r["val_loss"] for r in evals]),
    }, xlabel="step", title=f"GPT on {corpus.path.name} ({cfg.preset})")
    last = evals[-1]["step"] if evals else 0
    lines = [f"# GPT run `{run.path.name}`", "",
             f"Preset `{cfg.preset}`: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, "
             f"context {cfg.block_size}, {model.num_parameters():,} parameters; batch {cfg.batch_size}, "
             f"lr {cfg.lr:g} -> {cfg.min_lr:g}, text `{corpus.path}`.", "",
             f"Training time {total_s:.1f} s (evaluation included)"
             + (f", time budget {cfg.time_budget:g} s." if cfg.time_budget else "."), "",
             "| step | train loss | val loss | time (s) |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['step']} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | {r.get('time', 0):.1f} |" for r in evals]
    lines += ["", "![loss](loss.png)", ""]
    if sample:
        text = sample_text(model, corpus.vocab, "\n", 300, seed=cfg.seed)
        lines += [f"A sample of the model at step {last} (temperature 0.8, from a newline):", "", "```",
                  text.strip("\n"), "```", ""]
    else:
        lines += [f"Stopped early; continue with `customnn train gpt --resume {run.path}`.", ""]
    atomic_write_text(run.path / "report.md", "\n".join(lines))


# --- the command ------------------------------------------------------------------------------
_FLAG_TYPES = {"int": int, "int | None": int, "float": float, "float | None": float, "bool": bool, "str": str,
               "str | None": str}


HELP = {
    "n_layer": "Transformer blocks", "n_head": "attention heads", "n_embd": "width of the residual stream",
    "block_size": "context length in characters", "dropout": "dropout probability", "bias": "biases in linear "
    "layers and layer norms", "tie_weights": "output projection = token embedding", "text": "a UTF-8 text file "
    "(default: Tiny Shakespeare from the data directory)", "data_dir": "data directory (default: $CUSTOMNN_DATA, "
    "else ~/.cache/customnn)", "batch_size": "sequences per step", "max_iters": "training steps (with a time "
    "budget: the most it may plan)", "lr": "peak learning rate", "min_lr": "final learning rate of the cosine",
    "warmup_iters": "linear warmup steps", "lr_decay_iters": "length of the cosine decay (default: the steps)",
    "beta1": "AdamW beta1", "beta2": "AdamW beta2", "weight_decay": "AdamW weight decay on matrices",
    "decay_embeddings": "weight decay on the embedding tables too, as nanoGPT",
    "grad_clip": "clip the global gradient norm (0: off)", "eval_interval": "evaluate and save every N steps",
    "eval_iters": "batches per split per evaluation", "log_interval": "training-loss rows every N steps",
    "time_budget": "seconds for the whole run, evaluation included; the steps are planned to fit (0: off)",
    "seed": "random seed", "device": "auto, cpu or cuda", "out": "folder for run folders",
    "nanogpt_rng": "draw the initialisation, the batches and the evaluation batches from one generator in "
    "nanoGPT's order: the same seed then replays nanoGPT's run (see customnn/train/nanogpt_rng.py)",
}


def add_arguments(p) -> None:
    p.add_argument("--preset", default="default", choices=list(PRESETS),
                   help="starting values: nanogpt-cpu, default or tiny (default: default)")
    p.add_argument("--resume", metavar="RUN", default=None,
                   help="continue the run in this folder from its last.safetensors")
    p.add_argument("--quiet", action="store_true", help="no log lines on stdout, no progress bar")
    for f in FIELDS:
        flag = "--" + f.name.replace("_", "-")
        kind = _FLAG_TYPES[str(f.type)]
        default = PRESETS["default"].get(f.name, f.default)
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{HELP[f.name]} (default preset: {default})")
        else:
            p.add_argument(flag, type=kind, default=None, metavar=kind.__name__.upper(),
                           help=f"{HELP[f.name]} (default preset: {default})")


def check_saved_config(saved, path) -> None:
    """A run's config.json holds a mapping whose settings have their fields' types, or it is damaged."""
    def fits(value, kind: str) -> bool:
        if value is None:
            return kind.endswith("| None")
        if isinstance(value, bool) or kind == "bool":
            return isinstance(value, bool) and kind == "bool"
        return isinstance(value, {"int": int, "float": (int, float), "str": str}[kind.split(" ")[0]])

    if not isinstance(saved, dict):
        raise UserError(f"{path} is damaged: it holds no settings")
    for f in FIELDS:
        if f.name in saved and not fits(saved[f.name], str(f.type)):
            raise UserError(f"{path} is damaged: {f.name} is {saved[f.name]!r}")


def run(args) -> int:
    overrides = {f.name: getattr(args, f.name) for f in FIELDS if getattr(args, f.name, None) is not None}
    if overrides.get("time_budget") == 0:  # --time-budget 0: no budget, max_iters steps
        overrides["time_budget"] = None
    if args.resume is not None:
        run_dir = RunDir.open(args.resume)
        saved = run_dir.read_config()
        check_saved_config(saved, run_dir.config_path)
        fixed = [k for k in overrides if k not in RESUMABLE and overrides[k] != saved.get(k)]
        if fixed:
            raise UserError(f"--{fixed[0].replace('_', '-')} cannot change when resuming (it changes what is "
                            f"trained); only {', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE))} can")
        base = {f.name: saved[f.name] for f in FIELDS if f.name in saved}
        cfg = replace(GPTTrainConfig(preset=saved.get("preset", "default"), **base), **overrides,
                      resume=str(run_dir.path))
        check_config(cfg)
        run_dir.write_config({**saved, **asdict(cfg)})
        result = train(cfg, quiet=args.quiet)
    else:
        cfg = make_config(args.preset, **overrides)
        result = train(cfg, quiet=args.quiet)
    return 130 if result["interrupted"] else 0
