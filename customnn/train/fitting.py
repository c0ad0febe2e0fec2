"""``customnn.train.fit``: the engine from Python, for any model class and task.

The same run as ``customnn train TASK --model FILE.py:CLASS --model-arg ...``: the settings are
the task's config fields as keywords, checked as the command checks its flags.
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

from customnn.core.errors import UserError
from customnn.core.module import Module
from customnn.train.tasks import ALIASES, TASKS, task as task_module
from customnn.train.usermodel import ModelSpec, check_recorded, load_class


def spec_of(model, model_args: dict | None) -> ModelSpec | None:
    """A ``ModelSpec`` for a class or ``"FILE.py:CLASS"`` and its arguments; None for the built-in."""
    if model is None:
        if model_args:
            raise UserError("model_args are the arguments of a model class; give the class too")
        return None
    if isinstance(model, str):
        model, path = load_class(model)
    elif isinstance(model, type) and issubclass(model, Module):
        try:
            path = Path(inspect.getfile(model)).resolve()
        except (TypeError, OSError):  # defined where no file holds it (an interactive session)
            path = Path(f"<{model.__module__}>")
    else:
        raise UserError(f"model must be a customnn.Module subclass or 'FILE.py:CLASS', got {model!r}")
    return ModelSpec(model, str(path), check_recorded(model, model_args or {}, "model_args"))


def fit(model=None, task: str = "cnn", *, model_args: dict | None = None, quiet: bool = False, **settings) -> dict:
    """See ``customnn.train.fit``."""
    name = ALIASES.get(task, task)
    if name not in TASKS:
        raise UserError(f"unknown task {task!r} (choose from {', '.join([*TASKS, *ALIASES])})")
    module = task_module(name)
    known = {f.name for f in fields(module.Config)}
    unknown = [k for k in settings if k not in known]
    if unknown:
        raise UserError(f"{unknown[0]} is not a setting of the {name} task (its settings: {', '.join(sorted(known))})")
    if settings.get("resume") is not None:
        cfg = module.Config(resume=settings["resume"])
    elif hasattr(module, "make_config"):
        given = dict(settings)
        cfg = module.make_config(given.pop("preset", "default"), **given)
    else:
        cfg = module.Config(**settings)
    given = {k: v for k, v in settings.items() if k != "resume"}
    return module.train(cfg, quiet=quiet, given=given, model=spec_of(model, model_args))
