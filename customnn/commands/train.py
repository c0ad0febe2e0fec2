"""``customnn train cnn|gpt``: train a model; its flags are generated from its config dataclass.

Each model's settings are one dataclass (``customnn/train/cnn.py``'s ``CNNTrainConfig``,
``customnn/train/gpt.py``'s ``GPTTrainConfig``); every field is a flag of the same name, and
``--resume RUN`` continues a run under the one policy of ``customnn/train/config.py``.
Exit code 0 when training finished or stopped at ``--max-steps``, 130 after Ctrl-C or SIGTERM
(a checkpoint was saved and the run can be resumed), 2 for a user error.

    customnn train cnn --arch seed
    customnn train gpt --preset nanogpt-cpu
    customnn train gpt --resume runs/gpt-20261127-120000 --max-iters 4000
"""

from __future__ import annotations

import importlib

from customnn.train.config import add_flags, given_settings

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


def config_from_flags(model: str, given: dict):
    """A new run's configuration from the flags given (the GPT's start from its ``--preset``)."""
    module, config_cls = _model(model)
    if hasattr(module, "make_config"):
        given = dict(given)
        return module.make_config(given.pop("preset", "default"), **given)
    return config_cls(**given)


def run(args) -> int:
    module, config_cls = _model(args.model)
    given = given_settings(args, config_cls)
    if given.get("time_budget") == 0:  # --time-budget 0: no budget
        given["time_budget"] = None
    if args.resume is not None:
        cfg = config_cls(resume=args.resume)
    else:
        cfg = config_from_flags(args.model, given)
    result = module.train(cfg, quiet=args.quiet, given=given)
    return 130 if result["interrupted"] else 0
