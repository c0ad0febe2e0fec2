"""The training engine: one loop for every task and every model.

In the spirit of minGPT's ``Trainer``: the engine owns the run and a task supplies only what
is its own. ``Engine(trainer).run()`` does, for any ``Trainer``::

    open the run folder (new, or --resume: weights, optimizer, every RNG, the data position)
    loop:
        trainer.before_step(step)                   the task draws its next batch
        every eval_interval steps and at the end:   trainer.evaluate() -> one log line, one
                                                    metrics row, best.safetensors, last.safetensors
        --time-budget: plan how many steps fit      (train/budget.py), and rebuild the schedule
        stop at the end, at --max-steps, or on Ctrl-C / SIGTERM (saved, resumable)
        lr = schedule(step); loss = trainer.train_step(step)      forward and backward
        clip, then one divergence rule: a loss that is not finite or above EXPLODED_LOSS, or a
        gradient that is not finite, stops the run with the step and keeps the last checkpoint
        optimizer step; every log_interval steps a training row (and the model's log line)
    a trainer with a test_split: trainer.test() once, with best.safetensors' weights
    loss.png and report.md

The first Ctrl-C or SIGTERM abandons preparing the data, an evaluation or the test at once
(``InterruptFlag.abandonable``: nothing of them recorded), lets a step or a save finish, and the
run stops with last.safetensors, resumable (exit code 130), wherever the time goes.

A task's ``Trainer`` builds its data, model and optimizer (``setup``), runs one step's forward
and backward (``train_step``), evaluates (``evaluate``), and names the state it keeps beyond
the model and optimizer (``extra_state`` / ``load_extra_state``) and what its checkpoint's
header says (``checkpoint_meta``). Everything else (run folder, resume, logging, progress bar,
metrics, signals, divergence, time budget, checkpoints, report, plot) is here, written once.

metrics.jsonl has one schema: ``{"kind": "train", "step", "loss", "lr", ...}`` every
``log_interval`` steps and ``{"kind": "eval", "step", "time", "train_time", ...}`` at every
evaluation, with the model's figures (``val_loss``, ``accuracy``, ...) in it.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from customnn.train.checkpoint import DAMAGED, load_checkpoint, save_checkpoint
from customnn.core.errors import UserError
from customnn.core.progress import progress_bar
from customnn.optim import clip_grad_norm_, grads_are_finite, set_lr
from customnn.core.runtime import Interrupted, InterruptFlag, release_free_memory, rng_state, set_rng_state
from customnn.train.budget import StepPlanner
from customnn.train.config import given_in_python, open_for_resume, refuse_builtin_flags
from customnn.train.divergence import Diverged, diverged_message, loss_is_healthy, what_diverged  # noqa: F401
from customnn.train.distributed import Dist, GradSync, PeerLost
from customnn.train.loading import check_compile, compile_model
from customnn.train.precision import FLOAT32, run_precision
from customnn.train.rundir import FollowerRunDir, RunDir
from customnn.train.trainer import Trainer
from customnn.train.zero import ZeroAdamW

class Engine:
    """Runs one training run of a ``Trainer`` (see the module docstring)."""

    def __init__(self, trainer: Trainer, quiet: bool = False, run: RunDir | None = None, ckpt=None,
                 dist: Dist | None = None):
        self.dist = dist or Dist()
        self.main = self.dist.is_main  # rank 0 writes the run folder; the others only train
        self.t, self.cfg, self.quiet = trainer, trainer.cfg, quiet or not self.main
        self.run_dir, self.ckpt = run, ckpt
        if run is not None and not self.main:
            self.run_dir = FollowerRunDir(run.path)
        self.sync: GradSync | None = None
        self.zero: ZeroAdamW | None = None  # --zero under torchrun: this rank's slice of AdamW's moments
        self.precision = FLOAT32  # --precision: autocast and fp16's loss scale (train/precision.py)
        self.step, self.evaluated_at, self.best, self.elapsed, self.train_time = 0, -1, None, 0.0, 0.0
        self.evals: list[dict] = []
        self.saved = None  # (step, planned steps) of the state last.safetensors holds, once saved in this session
        self.bar = None

    # --- logging --------------------------------------------------------------------------
    def log(self, line: str) -> None:
        """A log line: into train.log, and on stdout (above the progress bar when there is one)."""
        if self.bar is not None and not self.bar.disable:
            self.run_dir.log(line, echo=False)
            self.bar.write(line, file=sys.stdout)
        else:
            self.run_dir.log(line, echo=not self.quiet)

    def clock(self) -> float:
        """Seconds of this run so far, all its sessions."""
        return self.elapsed + time.perf_counter() - self.t_start

    # --- checkpoints ----------------------------------------------------------------------
    def save(self, name: str) -> Path:
        t = self.t
        state = {"engine": {"step": self.step, "total_steps": self.total, "evaluated_at": self.evaluated_at,
                            "best": self.best, "elapsed": self.clock(), "train_time": self.train_time,
                            "evals": self.evals},
                 "optimizer": (self.zero or t.optimizer).state_dict(),  # --zero: gathered from every rank
                 "rng": rng_state(t.generators), "trainer": t.extra_state(self.step),
                 "precision": self.precision.state_dict()}
        path = self.run_dir.checkpoint(name)
        if self.main:
            save_checkpoint(path, t.model.state_dict(), t.checkpoint_meta(self.step), state)
        if name == "last":
            self.saved = (self.step, self.total)  # the state last.safetensors holds
        return path

    def restore(self, ckpt) -> None:
        """The engine's counters, the optimizer, every generator and the trainer's own state."""
        t = self.t
        try:
            e = ckpt.state["engine"]
            step, total, evaluated_at = e["step"], e["total_steps"], e["evaluated_at"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (step, total, evaluated_at)) \
                    or not (0 <= step and -1 <= evaluated_at <= step and total >= 0):
                raise ValueError("step counters")
            elapsed, train_time = float(e["elapsed"]), float(e["train_time"])
            if not (math.isfinite(elapsed) and elapsed >= 0 and math.isfinite(train_time) and train_time >= 0):
                raise ValueError("times")
            if e["best"] is not None and not isinstance(e["best"], (int, float)):
                raise ValueError("best")
            if not isinstance(e["evals"], list) or not all(isinstance(r, dict) for r in e["evals"]):
                raise ValueError("evaluations")
            # The hyperparameters are the run's (its fixed flags cannot change on resume) but
            # the lr, which is set before every step.
            fixed = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in t.optimizer.param_groups]
            t.optimizer.load_state_dict(ckpt.state["optimizer"])
            loaded = [{k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k not in ("params", "lr")}
                      for g in t.optimizer.param_groups]
            if loaded != fixed:
                raise ValueError("optimizer hyperparameters")
            set_rng_state(ckpt.state["rng"], t.generators)
            self.precision.load_state_dict(ckpt.state.get("precision"))  # fp16's loss scale
            t.load_extra_state(ckpt.state["trainer"], step)
        except DAMAGED as err:
            raise UserError(f"cannot resume from {self.run_dir.checkpoint('last')}: its training state is "
                            f"damaged ({type(err).__name__})") from None
        self.step, self.total, self.evaluated_at, self.best = step, total, evaluated_at, e["best"]
        self.elapsed, self.train_time, self.evals = elapsed, train_time, e["evals"]

    def is_better(self, result: dict) -> bool:
        value = result[self.t.best_metric]
        if self.best is None:
            return True
        return value > self.best if self.t.best_mode == "max" else value < self.best

    # --- the run --------------------------------------------------------------------------
    def run(self, device: torch.device) -> dict:
        """The whole run, under one ``InterruptFlag`` (see the module docstring)."""
        with InterruptFlag() as self.flag:
            return self._run(device)

    def _run(self, device: torch.device) -> dict:
        t, cfg, dist, flag = self.t, self.cfg, self.dist, self.flag
        self.t_start = time.perf_counter()
        t.dist, t.quiet = dist, self.quiet
        if cfg.compile:  # refused in one line before any work where it cannot work
            check_compile(dist.device(device))
        try:
            with flag.abandonable():  # nothing is written before the data and the model are ready
                t.setup(dist.device(device), self.ckpt)
        except Interrupted:  # nothing trained, nothing written
            run, kept = self.run_dir, "nothing was trained, no run folder was made"
            if run is not None:
                kept = f"{run.checkpoint('last')} is as it was. Resume with: {t.resume_command(run.path)}"
            print(f"interrupted while preparing the data and the model; {kept}", file=sys.stderr, flush=True)
            return {"run_dir": run and run.path, "step": self.ckpt.meta.get("step", 0) if self.ckpt else 0,
                    "finished": False, "interrupted": True, "evals": [], "test": None, "model": None,
                    "config": asdict(cfg), "time_s": self.clock()}
        self.precision = t.precision = run_precision(cfg, dist.device(device).type, t.user_model)  # auto: in cfg
        if cfg.compile:
            compile_model(t.model, dist.device(device))
        if dist.active:  # every rank starts from rank 0's weights, and sums gradients with the others
            dist.broadcast_([*t.model.parameters(), *(b for _, b in t.model.named_buffers())])
            self.sync = GradSync(t.model.parameters(), dist, shard=cfg.zero)
        self.total = t.total_steps
        if self.ckpt is None:  # the folder is made only once the data and the model are known to be good
            path = None
            if self.main:
                self.run_dir = RunDir.create(t.name, cfg.out)
                self.run_dir.write_config(t.run_config())
                self.run_dir.log(t.intro_line(self.run_dir), echo=not self.quiet)
                path = str(self.run_dir.path)
            path = dist.broadcast_object(path)  # rank 0's folder, for the others' messages
            if not self.main:
                self.run_dir = FollowerRunDir(path)
        else:
            self.restore(self.ckpt)
            # The plan: the configured steps (--max-iters may grow on resume), or, with a time
            # budget, the saved plan, which the planner revises as it goes.
            self.total = t.total_steps if cfg.time_budget is None else min(self.total, t.total_steps)
            t.check_resume(self.step, self.total)
            self.run_dir.write_config(t.run_config())
            self.run_dir.truncate_metrics(lambda r: r.get("step", 0) <= self.step)
            self.run_dir.log(f"resumed {self.run_dir.path} at step {self.step}{t.where(self.step)}",
                             echo=not self.quiet)
        if self.sync is not None and self.sync.shard:  # takes its slice of any resumed moments
            self.zero = ZeroAdamW(t.optimizer, self.sync)
        self.ckpt = None  # everything is restored: the loaded copy of the weights is not kept for the run
        planner = StepPlanner(cfg.time_budget, t.total_steps, t.warmup_steps, t.eval_interval, self.step, self.total)
        lr_at = t.schedule(self.total)
        announced, stopped, during = False, None, ""
        stop_agreed = None  # across processes: any rank's Ctrl-C, as of the last gradient exchange
        self.bar = progress_bar(self.total, t.progress(self.step), self.quiet, initial=self.step)
        last_save = time.perf_counter()
        t.model.train()
        try:
            while True:
                step = self.step
                t.before_step(step)
                due = step % t.eval_interval == 0 and (step > 0 or t.eval_at_start)
                if (due or step == self.total) and self.evaluated_at != step:
                    t_eval = self.clock()
                    if not self.evaluate(step):
                        stopped, during = "interrupted", " during its evaluation (abandoned, not recorded)"
                        break
                    planner.timed_eval(self.clock() - t_eval)
                    last_save = time.perf_counter()
                if step < self.total and planner.agreed_update(step, self.clock(), self.dist, self.total):
                    self.total = planner.total
                    lr_at = t.schedule(self.total)
                    self.bar.total = self.total
                    self.bar.refresh()
                    self.run_dir.log(f"time budget {cfg.time_budget:g} s: {self.total} steps planned at step {step}",
                                     echo=not announced and not self.quiet)
                    announced = True
                if step >= self.total:
                    break
                # Ctrl-C on any rank stops every rank: agreed in each step's gradient exchange
                # (one process, or before a session's first step: here)
                requested = dist.agree(flag.requested) if stop_agreed is None else stop_agreed
                if requested or (cfg.max_steps is not None and step >= cfg.max_steps):
                    stopped = "interrupted" if requested else f"stopped by --max-steps {cfg.max_steps}"
                    break
                t0 = time.perf_counter()
                lr = lr_at(step)
                set_lr(t.optimizer, lr)
                if self.sync is not None:
                    self.sync.start()
                with self.precision.autocast():  # --precision bf16|fp16: the forward under autocast
                    loss = t.train_step(step)  # this rank's share of the batch's mean loss
                # --save-interval: any rank's clock, agreed in the gradient exchange (a save is collective)
                save = cfg.save_interval is not None and time.perf_counter() - last_save >= cfg.save_interval
                norm = None  # the global gradient norm, when the exchange computes it (--zero)
                if self.sync is not None:  # every rank now holds the gradients of the whole batch
                    # (--zero: its slice of them), its loss, any stop and save request
                    loss, stop_agreed, save, norm = self.sync.finish(loss, flag.requested, save)
                skip = False  # fp16: a step whose gradients overflowed is skipped, and the scale halved
                if self.precision.scaler is not None:
                    grads = self.sync.shards if self.zero is not None else \
                        [p.grad for p in t.model.parameters() if p.grad is not None]
                    norm, skip = self.precision.unscale_(grads, norm)
                if not skip:
                    self.check_finite(step, loss, lr, norm)
                    (self.zero or t.optimizer).step()
                t.optimizer.zero_grad()
                self.step = step + 1
                self.train_time += time.perf_counter() - t0
                self.bar.update(1)
                row, line = t.train_row(step, loss, lr)
                if line is not None:
                    self.log(line)
                if row is not None:
                    self.run_dir.log_metrics(kind="train", **row)
                    self.bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                if not self.bar.disable and self.step != self.total:
                    self.bar.set_description(t.progress(self.step), refresh=False)
                if save:
                    self.save("last")
                    release_free_memory()  # the save's buffers; see its docstring
                    last_save = time.perf_counter()
        except PeerLost as e:  # a process of the run died: the others stop, the checkpoint stays
            last = self.run_dir.checkpoint("last")
            raise PeerLost(f"{e}; the last checkpoint {last} (step {max(self.evaluated_at, 0)}) is intact; "
                           f"resume with: {t.resume_command(self.run_dir.path)}") from None
        self.bar.close()
        self.bar = None
        if stopped is None and self.main and t.test_split is not None and not self.test():
            stopped, during = "interrupted", f" while scoring the {t.test_split} set (abandoned; resuming scores it)"
        finished = stopped is None
        if not finished:
            # not written twice: an evaluation or --save-interval may have just saved this very state
            path = self.run_dir.checkpoint("last") if self.saved == (self.step, self.total) else self.save("last")
            message = (f"{stopped} at step {self.step}{t.where(self.step)}{during}; saved {path}. "
                       f"Resume with: {t.resume_command(self.run_dir.path)}")
            self.run_dir.log(message, echo=False)
            if self.main:
                print(message, file=sys.stderr, flush=True)
        if self.main:
            self.run_dir.write_outputs(t, self.evals, self.step, self.clock(), finished)
        return {"run_dir": self.run_dir.path, "step": self.step, "time_s": self.clock(), "finished": finished,
                "interrupted": stopped == "interrupted", "evals": self.evals,
                "test": t.test_result, "model": t.model, "config": t.run_config(), **t.result()}

    def evaluate(self, step: int) -> bool:
        """Evaluate, log the line and the row, save best (if it is) and last. False, with nothing
        recorded, when a Ctrl-C or SIGTERM abandoned the evaluation (on rank 0: every rank stops)."""
        t, dist = self.t, self.dist
        result = None
        if self.main:  # once, on rank 0; the others wait for its figures
            with contextlib.suppress(Interrupted), self.flag.abandonable():
                result = t.evaluate(step)
            t.model.train()
        if dist.active and (result := dist.broadcast_object(result)) is not None:  # None: abandoned
            dist.sync_generators(t.generators)  # an evaluation may draw from a shared stream (nanoGPT's)
        if result is None:
            return False
        self.evaluated_at = step
        row = {"step": step, "time": round(self.clock(), 3), "train_time": round(self.train_time, 3), **result}
        self.evals.append(row)
        self.log(t.eval_line(step, result))
        self.run_dir.log_metrics(kind="eval", **row)
        if self.is_better(result):
            self.best = result[t.best_metric]
            self.save("best")
        self.save("last")
        release_free_memory()  # the evaluation's and the saves' buffers (see its docstring)
        return True

    def test(self) -> bool:
        """Score the trainer's ``test_split`` once, with best.safetensors' weights; False if a stop abandoned it."""
        t, kept = self.t, None
        best_step = next((r["step"] for r in self.evals if r.get(t.best_metric) == self.best), self.step)
        if best_step != self.step:  # the last weights are set aside while the best ones are scored
            kept = {k: v.clone() for k, v in t.model.state_dict().items()}
            t.model.load_state_dict(load_checkpoint(self.run_dir.checkpoint("best")).model_state)
        try:
            with self.flag.abandonable():
                t.test_result = {**t.test(self.step), "best_step": best_step}
        except Interrupted:
            return False
        finally:
            if kept is not None:
                t.model.load_state_dict(kept)
            t.model.train()
        self.log(t.eval_line(self.step, t.test_result))
        self.run_dir.log_metrics(kind="test", step=self.step, **t.test_result)
        return True

    def check_finite(self, step: int, loss: torch.Tensor, lr: float, norm: torch.Tensor | None = None) -> None:
        """The one divergence rule, after clipping (so the clip's norm doubles as the check);
        ``norm``: the global gradient norm, already computed from this rank's slices (--zero)."""
        t, cfg = self.t, self.cfg
        grads_ok = None  # without a norm, checked only when the loss is fine: it costs a pass over the gradients
        if norm is not None:
            if cfg.grad_clip > 0:
                self.zero.clip_(norm, cfg.grad_clip)
            grads_ok = bool(torch.isfinite(norm))
        elif cfg.grad_clip > 0:
            norm = clip_grad_norm_(t.model.parameters(), cfg.grad_clip)
            grads_ok = bool(torch.isfinite(norm))
        value = loss.item()
        if loss_is_healthy(value):
            if grads_ok is None:
                grads_ok = grads_are_finite(t.model.parameters())
            if grads_ok:
                return
        last = self.run_dir.checkpoint("last")
        kept = (f"the last good checkpoint {last} (step {self.evaluated_at if self.evaluated_at >= 0 else 0}) is "
                f"kept as it was" if last.is_file() else "no checkpoint had been saved yet")
        self.bar.close()
        message = diverged_message(step, t.where(step + 1), what_diverged(value), kept, getattr(cfg, "lr", None), lr)
        self.run_dir.log(message, echo=False)
        raise Diverged(message)


def train_with(trainer_cls, cfg, quiet: bool = False, given: dict | None = None, model=None) -> dict:
    """Train (or, with ``cfg.resume``, continue) one run of task ``trainer_cls``; returns its figures.
    ``model``: a ``ModelSpec`` (train/usermodel.py), a class of one's own; None: the task's built-in."""
    from customnn.core.runtime import resolve_device

    run, ckpt = None, None
    if model is not None:  # the built-in model's flags do not reach another class: refused, not ignored
        refuse_builtin_flags(trainer_cls.model_flags(type(cfg)), given if given is not None else given_in_python(cfg),
                             model)
    if cfg.resume:
        run, ckpt, cfg, model = open_for_resume(trainer_cls, cfg, given, model)
    cfg = trainer_cls.prepare_config(cfg)
    device = resolve_device(cfg.device)
    dist = Dist.from_env(cfg.device)
    engine = None
    try:
        if dist.active and cfg.batch_size % dist.world:
            raise UserError(f"--batch-size {cfg.batch_size} is the global batch: it must be divisible by the "
                            f"{dist.world} processes")
        engine = Engine(trainer_cls(cfg, model), quiet, run, ckpt, dist)
        del ckpt  # the engine's to restore from and let go
        result = engine.run(device)
    except BaseException as e:
        dist.close(wait=False)
        if engine is not None and engine.main and engine.run_dir is not None:
            e.run_log = engine.run_dir.log_path  # where customnn/commands/cli.py writes the traceback of a bug
        raise
    dist.close()
    return result


