"""``customnn train cnn|gpt``: train on a task; its flags are generated from its config dataclass.

Each task's settings are one dataclass (``customnn/train/cnn.py``'s ``CNNTrainConfig``,
``customnn/train/gpt.py``'s ``GPTTrainConfig``); every field is a flag of the same name, and
``--resume RUN`` continues a run under the one policy of ``customnn/train/config.py``. The
model is the task's built-in one, or ``--model FILE.py:CLASS`` (any ``customnn.Module`` of
one's own; ``--model-arg NAME=VALUE`` sets its constructor's arguments;
``customnn/train/usermodel.py``).
Exit code 0 when training finished or stopped at ``--max-steps``, 130 after Ctrl-C or SIGTERM
(a checkpoint was saved and the run can be resumed), 2 for a user error.

Before anything is trained (``run``): the defaults that depend on the flags given follow them
(the GPT's ``make_config``, the CNN's ``resolved``: the same for a run started from Python), every
setting is checked, and the memory the run needs is compared with what the machine has
(``check_training_memory``). A second Ctrl-C, which stops at once, still says where the last
checkpoint is and how to resume.

    customnn train cnn --arch seed
    customnn train gpt --preset nanogpt-cpu
    customnn train gpt --resume runs/gpt-20261127-120000 --max-iters 4000
    customnn train cnn --model examples/mnist_resnet.py:ResNet --model-arg width=8
"""

from __future__ import annotations

import sys
from pathlib import Path

from customnn.core.errors import UserError
from customnn.core.validate import device as resolve_device
from customnn.train.config import add_flags, given_settings
from customnn.train.tasks import task
from customnn.train.usermodel import ModelSpec


def _model(name: str):
    module = task(name)
    return module, module.Config


def add_model_arguments(p) -> None:
    """``--model FILE.py:CLASS`` and ``--model-arg NAME=VALUE``, for every command that reads a run."""
    p.add_argument("--model", metavar="FILE.py:CLASS", default=None, dest="model_file",
                   help="a model class of your own (a customnn.Module whose forward(x, targets=None) returns "
                        "(logits, loss)); needed again to resume, evaluate or sample its runs")
    p.add_argument("--model-arg", metavar="NAME=VALUE", action="append", default=[],
                   help="an argument of --model's constructor (repeatable), typed from its annotation")


def model_spec(args) -> ModelSpec | None:
    """The ``ModelSpec`` of ``--model``/``--model-arg``, or None (the task's built-in model)."""
    if args.model_file is None:
        if args.model_arg:
            raise UserError("--model-arg sets an argument of --model's class; the built-in model's settings are "
                            "flags (see --help)")
        return None
    return ModelSpec.load(args.model_file, args.model_arg)


def add_arguments(p, model: str) -> None:
    module, config_cls = _model(model)
    shown = getattr(module, "PRESETS", {}).get("default", {})  # the GPT's help shows the default preset's values
    add_flags(p, config_cls, shown)
    add_model_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no log lines on stdout")


def config_from_flags(model: str, given: dict):
    """A new run's configuration from the flags given, the defaults adapted to them as from Python
    (the GPT's ``make_config`` starts from its ``--preset``; the CNN's ``resolved`` fills in the rest)."""
    module, config_cls = _model(model)
    if hasattr(module, "make_config") and hasattr(module, "PRESETS"):
        given = dict(given)
        return module.make_config(given.pop("preset", "default"), **given)
    return config_cls(**given)


def newest_run(out: Path, name: str, before: set) -> Path | None:
    try:
        made = [p for p in out.glob(f"{name}-*") if p.is_dir() and p not in before]
    except OSError:
        return None
    return max(made, key=lambda p: p.stat().st_mtime, default=None)


def interrupted_at_once(model: str, run: Path | None, spec: ModelSpec | None = None) -> str:
    """What a second Ctrl-C (which stops at once, without saving) leaves, and how to go on."""
    from customnn.train.checkpoint import read_header
    from customnn.train.trainer import resume_command

    last = run / "last.safetensors" if run is not None else None
    if last is None or not last.is_file():
        return "interrupted at once (second Ctrl-C) before any checkpoint was saved; nothing to resume"
    try:
        step = f" (step {read_header(last).get('step')})"
    except UserError:
        step = ""
    return (f"interrupted at once (second Ctrl-C); the last checkpoint saved, {last}{step}, is kept. "
            f"Resume with: {resume_command(model, spec, run)}")


def run(args) -> int:
    module, config_cls = _model(args.model)
    spec = model_spec(args)
    given = given_settings(args, config_cls)
    if given.get("time_budget") == 0:  # --time-budget 0: no budget
        given["time_budget"] = None
    if args.resume is not None:
        cfg = config_cls(resume=args.resume)
    else:
        cfg = config_from_flags(args.model, given)
        checked = module.Task.prepare_config(cfg)  # every setting, before anything runs
        # the memory a step needs, before any data is read (the model's own estimate, or its parameters')
        module.Task(checked, spec).check_memory(resolve_device(checked.device), measure=False)
    out = Path(cfg.out)
    before = set(out.glob(f"{args.model}-*")) if out.is_dir() else set()
    try:
        result = module.train(cfg, quiet=args.quiet, given=given, model=spec)
    except KeyboardInterrupt:  # a second Ctrl-C: the engine stopped at once
        run_dir = Path(cfg.resume) if cfg.resume else newest_run(out, args.model, before)
        print(interrupted_at_once(args.model, run_dir, spec), file=sys.stderr, flush=True)
        return 130
    return 130 if result["interrupted"] else 0
