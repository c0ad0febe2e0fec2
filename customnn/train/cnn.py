"""``customnn train cnn``: train CustomCNN on MNIST, with the seed's log lines, checkpoints and resume.

The loop is the PyTorch MNIST example's (github.com/pytorch/examples, mnist/main.py):
epochs over shuffled mini-batches, a ``Train Epoch`` line every ``log_interval`` batches and
a ``Test set`` line after each epoch. Around it:

- reproducible: the data order, the random shifts and the dropout masks each come from
  their own seeded generator, and every random state is saved in the checkpoint;
- a run folder (``customnn.train.run.RunDir``): config.json, metrics.jsonl, train.log,
  last.safetensors (every epoch, every ``--save-interval`` seconds mid-epoch if asked, and
  on Ctrl-C), best.safetensors (best test accuracy), loss.png and report.md;
- ``--resume RUN`` continues from last.safetensors exactly where it stopped, mid-epoch
  included (model, optimizer, schedule step, RNG states, data order and position, metrics);
- Ctrl-C (or SIGTERM) finishes the step, saves, prints how to resume and exits with 130;
- a non-finite loss or gradient stops at once with the step number, leaving the last good
  checkpoint untouched, and suggests a lower ``--lr`` (exit 2).

Run::

    customnn train cnn --arch seed --epochs 3          # the seed's net, full MNIST
    customnn train cnn                                  # the default net (99.5%)
    customnn train cnn --resume runs/cnn-20261127-120000

From Python (the demo does this)::

    from customnn.train.cnn import CNNTrainConfig, train
    result = train(CNNTrainConfig(arch="seed", train_samples=200, batch_size=32, epochs=5), quiet=True)
    result["test_accuracy"], result["run_dir"]
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from customnn import ops
from customnn.data.mnist import MEAN, SIZES, STD, load_mnist
from customnn.errors import UserError
from customnn.models.cnn import ARCHS, CustomCNN
from customnn.optim import SGD, AdamW, constant_lr, cosine_lr, decay_groups, grads_are_finite, set_lr
from customnn.train.run import (InterruptFlag, RunDir, load_checkpoint, plot_curves, progress_bar,
                                check_seed, release_free_memory, resolve_device, rng_state,
                                save_checkpoint, seed_all, set_rng_state)

OPTIMIZERS = ("adamw", "sgd")
# Cross-entropy over 10 classes starts at ln 10 = 2.3; a batch loss above this means the run has
# blown up even while the numbers are still finite (Adam's bounded steps keep them finite at
# --lr 1e6, and the loss then sits at 1e6..1e20). Healthy runs never come near it.
EXPLODED_LOSS = 1e3
SCHEDULES = ("constant", "cosine")
# The widest --width: far above any useful MNIST net (24 reaches 99.5%), and a bound on what a
# checkpoint's configuration may make ``customnn eval``/``predict`` allocate.
MAX_WIDTH = 256

# What ``None`` in the config means, per architecture; each value is explained in CNNTrainConfig.
ARCH_DEFAULTS = {
    "seed": dict(epochs=3, weight_decay=0.0, shift=0),
    "default": dict(epochs=8, weight_decay=5e-4, shift=2),
}
DEFAULT_LR = {("seed", "adamw"): 1e-2, ("seed", "sgd"): 0.05,
              ("default", "adamw"): 3e-3, ("default", "sgd"): 0.05}


@dataclass
class CNNTrainConfig:
    """One CNN training run; every field is a ``customnn train cnn`` flag of the same name."""

    arch: str = "default"  # the stronger net; "seed" is the seed's exact network
    epochs: int | None = None  # None: seed 3 (the target setting), default 8 (99.5% inside ten minutes)
    batch_size: int = 64  # the PyTorch example's: small nets need many steps more than big batches
    lr: float | None = None  # None: AdamW seed 1e-2 (the tiny net wants big steps), default 3e-3; SGD 0.05
    optimizer: str = "adamw"  # Adam gets the seed net past 98.3% in 3 epochs, the example's SGD(0.01, 0.5) does not
    momentum: float = 0.9  # SGD only: the usual value; the example's 0.5 is slow
    weight_decay: float | None = None  # None: seed 0 (3 epochs cannot overfit), default 5e-4 (decoupled, weights only)
    schedule: str = "cosine"  # decay to 0 over the run: +0.8% for the seed net in 3 epochs over a constant lr
    warmup_steps: int = 0  # cosine only: Adam with batch norm needs no warmup here
    shift: int | None = None  # random-shift augmentation, pixels; None: seed 0 (as the seed), default 2
    width: int = 24  # default net only: channels (w, 2w, 4w); 24 reaches 99.5% in 8 epochs, 16 does not
    dropout: float = 0.3  # default net only, before the classifier: enough against overfitting with shifts
    train_samples: int | None = None  # None: all 60,000 training images; fewer for quick runs
    test_samples: int | None = None  # None: all 10,000 test images
    eval_batch_size: int = 1000  # the PyTorch example's test batch size: evaluation needs no gradients
    log_interval: int = 10  # batches between Train Epoch lines, as the PyTorch example
    max_steps: int | None = None  # stop (resumably, with a checkpoint) after this many optimizer steps in all
    save_interval: float | None = None  # also save last.safetensors every this many seconds mid-epoch (None: per epoch)
    seed: int = 1  # the PyTorch example's seed
    device: str = "auto"  # CUDA when there is a GPU
    data_dir: str | None = None  # None: $CUSTOMNN_DATA, else ~/.cache/customnn
    out: str = "runs"  # run folders go to <out>/cnn-<time>
    resume: str | None = None  # a run folder to continue instead of starting a new run

    def resolved(self) -> CNNTrainConfig:
        """A copy with every ``None`` default filled in for the chosen architecture and optimizer."""
        if self.arch not in ARCHS:
            raise UserError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        values = asdict(self)
        for key, value in ARCH_DEFAULTS[self.arch].items():
            if values[key] is None:
                values[key] = value
        if values["lr"] is None:
            values["lr"] = DEFAULT_LR[(self.arch, self.optimizer)]
        cfg = CNNTrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """One-line errors for settings that cannot run (after ``resolved``)."""
        def positive(name, value):
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

        for name in ("epochs", "batch_size", "width", "train_samples", "test_samples", "eval_batch_size",
                     "log_interval", "max_steps"):
            positive(name, getattr(self, name))
        if self.width > MAX_WIDTH:
            raise UserError(f"--width must be <= {MAX_WIDTH}, got {self.width}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.shift <= 8:
            raise UserError(f"--shift must be between 0 and 8 pixels, got {self.shift}")
        check_seed(self.seed)
        if self.warmup_steps < 0:
            raise UserError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.save_interval is not None and not (math.isfinite(self.save_interval) and self.save_interval > 0):
            raise UserError(f"--save-interval must be a number of seconds > 0, got {self.save_interval}")
        for name, n in (("train", self.train_samples), ("test", self.test_samples)):
            if n is not None and n > SIZES[name]:
                raise UserError(f"--{name}-samples {n} is more than the {SIZES[name]} images of MNIST's {name} set")
        n_train = self.train_samples or SIZES["train"]
        if self.batch_size > n_train:
            raise UserError(f"--batch-size {self.batch_size} is larger than the {n_train} training images")


# --- pieces of the loop ---------------------------------------------------------------------------
def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Move each image by up to ``max_shift`` pixels in x and y, filling with the background.

    x (N, 1, 28, 28) normalised; the offsets are drawn on the CPU from ``generator`` (so they
    are the same on every device) and applied as one gather on x's device.
    """
    N, _, H, W = x.shape
    s = max_shift
    background = (0.0 - MEAN) / STD  # a black pixel, normalised
    xp = torch.full((N, H + 2 * s, W + 2 * s), background, dtype=x.dtype, device=x.device)
    xp[:, s:s + H, s:s + W] = x[:, 0]
    dy, dx = torch.randint(0, 2 * s + 1, (2, N), generator=generator).to(x.device)  # (N,), (N,)
    rows = (torch.arange(H, device=x.device) + dy[:, None])[:, :, None]  # (N, H, 1)
    cols = (torch.arange(W, device=x.device) + dx[:, None])[:, None, :]  # (N, 1, W)
    return xp[torch.arange(N, device=x.device)[:, None, None], rows, cols].unsqueeze(1)  # (N, 1, H, W)


@torch.no_grad()
def evaluate(model: CustomCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             quiet: bool = True) -> dict:
    """Average loss and accuracy over (x, y) in eval mode, as the PyTorch example's ``test()``."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    bar = progress_bar(len(x), "test", quiet)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        logits, _ = model(xb)
        total_loss += ops.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == yb).sum().item())
        bar.update(len(xb))
    bar.close()
    model.train(was_training)
    n = len(x)
    return {"loss": total_loss / n, "correct": correct, "n": n, "accuracy": 100.0 * correct / n}


def test_line(result: dict) -> str:
    return (f"Test set: Average loss: {result['loss']:.4f}, "
            f"Accuracy: {result['correct']}/{result['n']} ({result['accuracy']:.2f}%)")


def build_model(cfg: dict) -> CustomCNN:
    return CustomCNN(cfg["arch"], seed=cfg["seed"], dropout=cfg["dropout"], width=cfg.get("width", 24))


def build_optimizer(model: CustomCNN, cfg: CNNTrainConfig):
    groups = decay_groups(model.named_parameters(), cfg.weight_decay)  # no decay on biases and BN
    if cfg.optimizer == "adamw":
        return AdamW(groups, lr=cfg.lr)
    return SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def build_schedule(cfg: CNNTrainConfig, total_steps: int):
    if cfg.schedule == "cosine":
        return cosine_lr(cfg.lr, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1), min_lr=0.0)
    return constant_lr(cfg.lr)


class Diverged(UserError):
    """Training produced a non-finite loss or gradient."""


# --- the training run -------------------------------------------------------------------------------
def train(cfg: CNNTrainConfig, quiet: bool = False) -> dict:
    """Train (or, with ``cfg.resume``, continue) one run; return its figures and the model.

    Returns a dict with ``run_dir``, ``test_loss``, ``test_accuracy`` (percent), ``correct``,
    ``n_test``, ``epoch_times`` (seconds of training per epoch), ``tests`` (one result per
    epoch), ``step``, ``interrupted`` (True when Ctrl-C/SIGTERM stopped it early), ``finished``
    (False after Ctrl-C or ``max_steps``: the run can be resumed), ``config`` and ``model``.
    Raises ``UserError`` for bad settings and on divergence (``Diverged``).
    """
    if cfg.resume:
        run, ckpt, cfg = _open_resume(cfg)
    else:
        cfg, run, ckpt = cfg.resolved(), None, None
    device = resolve_device(cfg.device)
    x_train, y_train = load_mnist("train", cfg.data_dir, cfg.train_samples)
    x_test, y_test = load_mnist("test", cfg.data_dir, cfg.test_samples)
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)
    n_train = len(x_train)
    batches_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps = cfg.epochs * batches_per_epoch

    seed_all(cfg.seed)
    model = build_model(asdict(cfg)).to(device)
    model.generator = torch.Generator(device=device).manual_seed(cfg.seed + 2)  # dropout masks
    gens = {"shuffle": torch.Generator().manual_seed(cfg.seed),  # data order
            "shift": torch.Generator().manual_seed(cfg.seed + 1),  # augmentation offsets
            "dropout": model.generator}
    optimizer = build_optimizer(model, cfg)
    lr_at = build_schedule(cfg, total_steps)

    # Where the loop starts: a fresh run, or the position saved in the checkpoint.
    step, epoch, batch, order = 0, 1, 0, None
    tests, epoch_times, epoch_time_so_far, best_acc = [], [], 0.0, -1.0
    if ckpt is None:
        run = RunDir.create("cnn", cfg.out)
        run.write_config({"model": "cnn", **asdict(cfg)})
        run.log(f"run folder: {run.path}  (arch {cfg.arch}, {model.num_parameters()} parameters, "
                f"{n_train} training images, device {device})", echo=not quiet)
    else:
        _restore_model(model, ckpt)
        try:
            optimizer.load_state_dict(ckpt.state["optimizer"])
            s = ckpt.state
            step, epoch, batch, order = s["step"], s["epoch"], s["batch"], s["order"]
            tests, epoch_times, best_acc = s["tests"], s["epoch_times"], s["best_accuracy"]
            epoch_time_so_far = s["epoch_time_so_far"]
            _restore_generators(run, s["rng"], gens, cfg.seed + 2 + step)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, SyntaxError) as e:
            raise UserError(f"cannot resume from {run.checkpoint('last')}: its training state is damaged "
                            f"({type(e).__name__})") from None
        run.truncate_metrics(lambda row: row.get("step", 0) <= step)
        run.log(f"resumed {run.path} at epoch {epoch}, batch {batch}/{batches_per_epoch} (step {step})",
                echo=not quiet)

    def save(name: str, epoch_time: float | None = None) -> Path:
        """``epoch_time``: this epoch's training time so far, for a save in the middle of an epoch."""
        state = {"optimizer": optimizer.state_dict(), "rng": rng_state(gens), "step": step, "epoch": epoch,
                 "batch": batch, "order": order if order is not None else torch.zeros(0, dtype=torch.int64),
                 "tests": tests, "epoch_times": epoch_times, "best_accuracy": best_acc,
                 "epoch_time_so_far": epoch_time_so_far if epoch_time is None else epoch_time}
        meta = {"model": "cnn", "config": asdict(cfg), "step": step, "epoch": epoch, "batch": batch}
        path = run.checkpoint(name)
        save_checkpoint(path, model.state_dict(), meta, state)
        return path

    def log(line: str, bar=None) -> None:
        if bar is not None and not bar.disable:
            run.log(line, echo=False)
            bar.write(line, file=sys.stdout)
        else:
            run.log(line, echo=not quiet)

    interrupted = False
    last_save = time.perf_counter()  # for --save-interval
    model.train()
    with InterruptFlag() as flag:
        while epoch <= cfg.epochs and not interrupted:
            if order is None or order.numel() == 0:  # a new epoch: a new order (a resumed one keeps its own)
                order = torch.randperm(n_train, generator=gens["shuffle"])
                batch, epoch_time_so_far = 0, 0.0
            bar = progress_bar(batches_per_epoch, f"epoch {epoch}/{cfg.epochs}", quiet, initial=batch)
            t0 = time.perf_counter()
            while batch < batches_per_epoch:
                idx = order[batch * cfg.batch_size:(batch + 1) * cfg.batch_size].to(device)
                xb, yb = x_train[idx], y_train[idx]  # (B, 1, 28, 28), (B,)
                if cfg.shift:
                    xb = random_shift(xb, cfg.shift, gens["shift"])
                lr = lr_at(step)
                set_lr(optimizer, lr)
                _, loss = model(xb, yb)
                loss.backward()
                if not (loss.item() < EXPLODED_LOSS) or not grads_are_finite(model.parameters()):
                    bar.close()
                    _diverged(run, cfg, step, epoch, batch, loss)
                optimizer.step()
                optimizer.zero_grad()
                if batch % cfg.log_interval == 0:
                    loss_value = loss.item()
                    log(f"Train Epoch: {epoch} [{batch * cfg.batch_size}/{n_train} "
                        f"({100.0 * batch / batches_per_epoch:.0f}%)]\tLoss: {loss_value:.6f}", bar)
                    run.log_metrics(kind="train", step=step + 1, epoch=epoch - 1 + (batch + 1) / batches_per_epoch,
                                    loss=loss_value, lr=lr)
                step += 1
                batch += 1
                bar.update(1)
                if flag.requested or (cfg.max_steps is not None and step >= cfg.max_steps):
                    interrupted = True
                    break
                if cfg.save_interval is not None and time.perf_counter() - last_save >= cfg.save_interval:
                    save("last", epoch_time_so_far + time.perf_counter() - t0)  # mid-epoch, resumable
                    release_free_memory()  # the save's buffers; see its docstring
                    last_save = time.perf_counter()
            bar.close()
            epoch_time_so_far += time.perf_counter() - t0
            if interrupted and batch < batches_per_epoch:
                break
            epoch_times.append(epoch_time_so_far)
            result = evaluate(model, x_test, y_test, cfg.eval_batch_size, quiet)
            tests.append({**result, "epoch": epoch, "step": step, "epoch_time": epoch_time_so_far})
            log(test_line(result))
            run.log_metrics(kind="test", step=step, epoch=epoch, epoch_time=epoch_time_so_far, **result)
            epoch, batch, order = epoch + 1, 0, None
            if result["accuracy"] > best_acc:
                best_acc = result["accuracy"]
                save("best")
            save("last")
            release_free_memory()  # the evaluation's and the saves' buffers: the heap would keep growing
            last_save = time.perf_counter()

    finished = epoch > cfg.epochs  # a stop requested at the very last step still finished the run
    if not finished:
        path = save("last")
        why = "interrupted" if flag.requested else f"stopped after --max-steps {cfg.max_steps}"
        run.log(f"{why} at epoch {epoch}, batch {batch}/{batches_per_epoch} (step {step}); "
                f"saved {path}", echo=not quiet)
        print(f"to continue: customnn train cnn --resume {run.path}", file=sys.stderr if quiet else sys.stdout,
              flush=True)
    _write_plot_and_report(run, cfg, model, tests, epoch_times, step, not finished)
    final = tests[-1] if tests else {"loss": float("nan"), "accuracy": float("nan"), "correct": 0, "n": 0}
    return {"run_dir": run.path, "test_loss": final["loss"], "test_accuracy": final["accuracy"],
            "correct": final["correct"], "n_test": final["n"], "epoch_times": list(epoch_times),
            "tests": tests, "step": step, "interrupted": flag.requested and not finished, "finished": finished,
            "config": asdict(cfg), "model": model}


def _restore_generators(run: RunDir, state: dict, gens: dict, fallback_seed: int) -> None:
    """Restore every random state; a dropout generator saved on another kind of device (a CPU
    run resumed on a GPU) cannot be, so it is reseeded and the run is exact from there on."""
    set_rng_state(state, {k: g for k, g in gens.items() if k != "dropout"})
    try:
        gens["dropout"].set_state(state["gen.dropout"])
    except (KeyError, RuntimeError, TypeError):
        gens["dropout"].manual_seed(fallback_seed)
        run.log("note: the dropout generator was saved on another device; reseeded it", echo=False)


def _diverged(run: RunDir, cfg: CNNTrainConfig, step: int, epoch: int, batch: int, loss):
    last = run.checkpoint("last")
    kept = f"the last good checkpoint {last} is kept as it was" if last.is_file() else "no checkpoint had been saved yet"
    value = loss.item()
    if not math.isfinite(value):
        what = f"the loss is {value}"
    elif value >= EXPLODED_LOSS:
        what = f"the loss exploded to {value:.3g}"
    else:
        what = "a gradient is not finite"
    message = (f"training diverged at step {step + 1} (epoch {epoch}, batch {batch + 1}): {what}; {kept}; "
               f"try a lower --lr (this run used {cfg.lr:g})")
    run.log(message, echo=False)
    raise Diverged(message)


def _open_resume(cfg: CNNTrainConfig):
    given = [f.name for f in fields(CNNTrainConfig)
             if f.name not in ("resume", "device", "data_dir", "save_interval")
             and getattr(cfg, f.name) != f.default]
    if given:
        raise UserError("--resume continues a run with its own settings; drop "
                        + ", ".join("--" + name.replace("_", "-") for name in given))
    run = RunDir.open(cfg.resume)
    path = run.checkpoint("last")
    if not path.is_file():
        raise UserError(f"nothing to resume in {run.path}: no last.safetensors")
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("model") != "cnn" or not isinstance(ckpt.state, dict):
        raise UserError(f"{path} is not a CNN training checkpoint")
    saved = ckpt.meta["config"]
    known = {f.name for f in fields(CNNTrainConfig)}
    resumed = CNNTrainConfig(**{k: v for k, v in saved.items() if k in known})
    resumed.device, resumed.resume, resumed.save_interval = cfg.device, cfg.resume, cfg.save_interval
    if cfg.data_dir is not None:
        resumed.data_dir = cfg.data_dir
    resumed.max_steps = None  # a resumed run goes to the end
    try:
        resumed.validate()
    except TypeError:  # a value of the wrong type in a forged or damaged checkpoint
        raise UserError(f"{path}: checkpoint is damaged: its configuration is malformed") from None
    return run, ckpt, resumed


def _restore_model(model: CustomCNN, ckpt) -> None:
    try:
        model.load_state_dict(ckpt.model_state)
    except ValueError as e:
        raise UserError(f"checkpoint does not fit the model: {e}") from None


def _write_plot_and_report(run, cfg, model, tests, epoch_times, step, interrupted) -> None:
    rows = run.read_metrics()
    train_rows = [r for r in rows if r.get("kind") == "train"]
    plot_curves(run.path / "loss.png",
                {"train loss": ([r["epoch"] for r in train_rows], [r["loss"] for r in train_rows]),
                 "test loss": ([t["epoch"] for t in tests], [t["loss"] for t in tests])},
                xlabel="epoch", title=f"CustomCNN ({cfg.arch}) on MNIST")
    lines = [f"# CNN run {run.path.name}", "",
             f"- architecture: `{cfg.arch}` ({model.num_parameters()} parameters)",
             f"- data: {cfg.train_samples or SIZES['train']} training images, "
             f"{cfg.test_samples or SIZES['test']} test images; shift augmentation {cfg.shift} px",
             f"- optimizer: {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}), batch {cfg.batch_size}, "
             f"weight decay {cfg.weight_decay:g}; seed {cfg.seed}",
             f"- steps: {step}" + (" (stopped early; resume with "
                                   f"`customnn train cnn --resume {run.path}`)" if interrupted else ""),
             "", "| epoch | test loss | test accuracy | train time (s) |", "| --- | --- | --- | --- |"]
    lines += [f"| {t['epoch']} | {t['loss']:.4f} | {t['correct']}/{t['n']} ({t['accuracy']:.2f}%) | "
              f"{t['epoch_time']:.2f} |" for t in tests]
    if tests:
        lines += ["", f"Final: {test_line(tests[-1])}; total training time {sum(epoch_times):.1f} s.",
                  "Best checkpoint (best.safetensors) is chosen by test accuracy; the figure above is the last epoch's."]
    lines += ["", "![loss](loss.png)", ""]
    from customnn.train.run import atomic_write_text
    atomic_write_text(run.path / "report.md", "\n".join(lines))


# --- evaluation of a saved model (``customnn eval``) and loading for ``customnn predict`` -------------
def load_model(path, ckpt, device) -> CustomCNN:
    """The CustomCNN stored in checkpoint ``ckpt`` (read from ``path``), in eval mode on ``device``."""
    cfg = ckpt.meta.get("config")
    if ckpt.meta.get("model") != "cnn" or not isinstance(cfg, dict) or cfg.get("arch") not in ARCHS:
        raise UserError(f"{path} is not a CNN checkpoint")
    width, dropout = cfg.get("width", 24), cfg.get("dropout", 0.0)
    # Checked before the model is built: a forged width must not make it allocate gigabytes.
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise UserError(f"{path}: checkpoint is damaged: width {width!r} is not an integer in 1..{MAX_WIDTH}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UserError(f"{path}: checkpoint is damaged: dropout {dropout!r} is not a number in [0, 1)")
    model = build_model({"arch": cfg["arch"], "seed": 0, "dropout": dropout, "width": width})
    try:
        model.load_state_dict(ckpt.model_state)
    except ValueError as e:
        raise UserError(f"{path}: checkpoint does not fit a {cfg['arch']} CustomCNN: {e}") from None
    return model.to(device).eval()


def evaluate_checkpoint(args, path, ckpt) -> int:
    """``customnn eval`` for a CNN checkpoint: print the seed's test-set line."""
    device = resolve_device(args.device)
    model = load_model(path, ckpt, device)
    if args.test_samples is not None and not 1 <= args.test_samples <= SIZES["test"]:
        raise UserError(f"--test-samples must be between 1 and {SIZES['test']}, got {args.test_samples}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    x, y = load_mnist("test", args.data_dir, args.test_samples)
    result = evaluate(model, x.to(device), y.to(device), args.batch_size or 1000, args.quiet)
    print(test_line(result))
    return 0


# --- the command line -------------------------------------------------------------------------------
def add_arguments(p) -> None:
    d = CNNTrainConfig()
    p.add_argument("--arch", choices=ARCHS, default=d.arch, help="network: the seed's, or the stronger default")
    p.add_argument("--epochs", type=int, default=None, help="passes over the training set (seed: 3, default: 8)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"training batch size ({d.batch_size})")
    p.add_argument("--lr", type=float, default=None, help="learning rate (AdamW: seed 1e-2, default 3e-3; SGD: 0.05)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="adamw or sgd (momentum 0.9)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (0.9)")
    p.add_argument("--weight-decay", type=float, default=None, help="decoupled weight decay (seed: 0, default: 5e-4)")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="lr schedule (cosine to 0)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="cosine schedule warmup steps (0)")
    p.add_argument("--shift", type=int, default=None, help="random-shift augmentation in pixels (seed: 0, default: 2)")
    p.add_argument("--width", type=int, default=d.width, help="default net: channels of the first stage (24)")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the classifier (default net)")
    p.add_argument("--train-samples", type=int, default=None, help="use the first N training images (all 60000)")
    p.add_argument("--test-samples", type=int, default=None, help="use the first N test images (all 10000)")
    p.add_argument("--log-interval", type=int, default=d.log_interval, help="batches between log lines (10)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps, resumably")
    p.add_argument("--save-interval", type=float, default=None, metavar="SECONDS",
                   help="also save last.safetensors every SECONDS mid-epoch (default: at the end of each epoch)")
    p.add_argument("--data-dir", default=None, help="data directory (default: $CUSTOMNN_DATA, else ~/.cache/customnn)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: auto)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (1)")
    p.add_argument("--out", default=d.out, help="folder for run folders (runs)")
    p.add_argument("--resume", metavar="RUN", default=None, help="continue the run in this folder where it stopped")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no log lines on stdout")


def config_from_args(args) -> CNNTrainConfig:
    names = {f.name for f in fields(CNNTrainConfig)}
    return CNNTrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def run(args) -> int:
    """``customnn train cnn``: exit 0 when training finished or stopped at --max-steps, 130 after
    Ctrl-C or SIGTERM (a checkpoint was saved and the run can be resumed)."""
    result = train(config_from_args(args), quiet=args.quiet)
    return 130 if result["interrupted"] else 0
