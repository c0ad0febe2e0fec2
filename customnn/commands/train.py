"""``customnn train cnn|gpt``: train a model; its flags are generated from its config dataclass.

Each model's settings are one dataclass (``customnn/train/cnn.py``'s ``CNNTrainConfig``,
``customnn/train/gpt.py``'s ``GPTTrainConfig``); every field is a flag of the same name, and
``--resume RUN`` continues a run under the one policy of ``customnn/train/config.py``.
Exit code 0 when training finished or stopped at ``--max-steps``, 130 after Ctrl-C or SIGTERM
(a checkpoint was saved and the run can be resumed), 2 for a user error.

Before anything is trained (``run``): the defaults that depend on the flags given follow them
(``adapt_defaults``), every setting is checked, and the memory the run needs is compared
with what the machine has (``check_training_memory``). A second Ctrl-C, which stops at once,
still says where the last checkpoint is and how to resume.

    customnn train cnn --arch seed
    customnn train gpt --preset nanogpt-cpu
    customnn train gpt --resume runs/gpt-20261127-120000 --max-iters 4000
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import fields
from pathlib import Path

from customnn.data.mnist import SIZES
from customnn.memory import check_training_memory
from customnn.train.config import add_flags, default_of, given_settings
from customnn.validate import device as resolve_device

MODELS = {"cnn": ("customnn.train.cnn", "CNNTrainConfig"), "gpt": ("customnn.train.gpt", "GPTTrainConfig")}


def _model(name: str):
    module_name, config_name = MODELS[name]
    module = importlib.import_module(module_name)
    return module, getattr(module, config_name)


def add_arguments(p, model: str) -> None:
    module, config_cls = _model(model)
    shown = getattr(module, "PRESETS", {}).get("default", {})  # the GPT's help shows the default preset's values
    add_flags(p, config_cls, shown)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no log lines on stdout")


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def adapt_defaults(model: str, given: dict) -> dict:
    """The flags given, with the defaults the user did not give adapted to them, so that a default
    never makes a given value fail:

    - GPT, a run shorter than the preset's schedule (``--max-iters 50``): the cosine decays over
      the run's own length, and the warmup (not given) is a tenth of it when the preset's
      would not fit;
    - GPT, ``--n-embd`` not divisible by the preset's head count (not given): the most heads up
      to it that divide the width;
    - CNN, ``--train-samples`` below the default batch size (not given): one batch of them all.
    """
    module, config_cls = _model(model)
    out = dict(given)
    base = {f.name: default_of(f) for f in fields(config_cls)}
    if model == "gpt":
        preset = given.get("preset", "default")
        if preset not in getattr(module, "PRESETS", {}):
            return out  # make_config names the unknown preset
        base.update(module.PRESETS[preset])
        max_iters = out.get("max_iters", base["max_iters"])
        if "max_iters" in given and "lr_decay_iters" not in given and _positive(max_iters) \
                and base["lr_decay_iters"] is not None and base["lr_decay_iters"] > max_iters:
            out["lr_decay_iters"] = None  # the run's own length
        decay = out.get("lr_decay_iters", base["lr_decay_iters"])
        decay = max_iters if decay is None else decay
        if "warmup_iters" not in given and _positive(decay) and base["warmup_iters"] >= decay:
            out["warmup_iters"] = decay // 10
        n_embd, n_head = out.get("n_embd", base["n_embd"]), base["n_head"]
        if "n_head" not in given and _positive(n_embd) and n_embd % n_head:
            out["n_head"] = max(d for d in range(1, n_head + 1) if n_embd % d == 0)
    elif model == "cnn":
        samples = given.get("train_samples")
        if "batch_size" not in given and _positive(samples) and samples < base["batch_size"]:
            out["batch_size"] = samples
    return out


def config_from_flags(model: str, given: dict):
    """A new run's configuration from the flags given (the GPT's start from its ``--preset``)."""
    module, config_cls = _model(model)
    given = adapt_defaults(model, given)
    if hasattr(module, "make_config"):
        given = dict(given)
        return module.make_config(given.pop("preset", "default"), **given)
    return config_cls(**given)


def newest_run(out: Path, name: str, before: set) -> Path | None:
    try:
        made = [p for p in out.glob(f"{name}-*") if p.is_dir() and p not in before]
    except OSError:
        return None
    return max(made, key=lambda p: p.stat().st_mtime, default=None)


def interrupted_at_once(model: str, run: Path | None) -> str:
    """What a second Ctrl-C (which stops at once, without saving) leaves, and how to go on."""
    from customnn.checkpoint import read_header
    from customnn.errors import UserError

    last = run / "last.safetensors" if run is not None else None
    if last is None or not last.is_file():
        return "interrupted at once (second Ctrl-C) before any checkpoint was saved; nothing to resume"
    try:
        step = f" (step {read_header(last).get('step')})"
    except UserError:
        step = ""
    return (f"interrupted at once (second Ctrl-C); the last checkpoint saved, {last}{step}, is kept. "
            f"Resume with: customnn train {model} --resume {run}")


def run(args) -> int:
    module, config_cls = _model(args.model)
    given = given_settings(args, config_cls)
    if given.get("time_budget") == 0:  # --time-budget 0: no budget
        given["time_budget"] = None
    if args.resume is not None:
        cfg = config_cls(resume=args.resume)
    else:
        cfg = config_from_flags(args.model, given)
        checked = cfg.resolved() if hasattr(cfg, "resolved") else cfg  # every setting, before anything runs
        check_training_memory(args.model, checked, resolve_device(checked.device),
                              mnist_sizes=(SIZES["train"], SIZES["test"]))
    out = Path(cfg.out)
    before = set(out.glob(f"{args.model}-*")) if out.is_dir() else set()
    try:
        result = module.train(cfg, quiet=args.quiet, given=given)
    except KeyboardInterrupt:  # a second Ctrl-C: the engine stopped at once
        run_dir = Path(cfg.resume) if cfg.resume else newest_run(out, args.model, before)
        print(interrupted_at_once(args.model, run_dir), file=sys.stderr, flush=True)
        return 130
    return 130 if result["interrupted"] else 0
