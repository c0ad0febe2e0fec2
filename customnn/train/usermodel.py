"""A model class from a file of your own (``--model FILE.py:CLASS``), and its settings.

A model is any ``customnn.Module`` whose ``forward(x, targets=None)`` returns ``(logits,
loss)``. Its constructor's arguments are its settings: ``--model-arg NAME=VALUE`` sets one,
typed from the constructor's annotation (resolved with ``typing.get_type_hints``, so a file
with or without ``from __future__ import annotations`` reads the same) or else from its
default's type. A parameter annotated with a dataclass (the GPT's ``config: GPTConfig``)
contributes that dataclass's fields as settings. A task passes what it knows of its data
(the text task ``vocab_size`` and ``block_size``, every task ``seed``) to the parameters that
have those names. The built-in models are built the same way, from the settings of their
task's flags (``--width``, ``--n-layer``, ...).

A checkpoint records the file and class as text (``model_file``, ``model_class``,
``model_args``) and never makes customnn import code: loading it takes ``--model`` again.

    spec = ModelSpec.load("examples/mnist_resnet.py:ResNet", ["width=16"])
    model = build(spec.cls, {"seed": 1}, spec.args)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from customnn.core.errors import UserError
from customnn.core.module import Module

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass
class Setting:
    """One constructor argument: its type (int, float, str, bool), default, and the dataclass
    parameter it belongs to (``group``), if any."""

    kind: type
    default: object = dataclasses.MISSING
    optional: bool = False  # None is a value it takes
    group: str | None = None


@dataclass
class ModelSpec:
    """A model class and the settings given for it; ``file`` is None for a task's built-in model."""

    cls: type
    file: str | None = None
    args: dict = field(default_factory=dict)

    @classmethod
    def load(cls, text: str, pairs: list[str] | None = None) -> ModelSpec:
        model_cls, path = load_class(text)
        return cls(model_cls, str(path), parse_args(model_cls, pairs or []))

    @property
    def name(self) -> str:
        return f"{self.file}:{self.cls.__name__}" if self.file else self.cls.__name__

    def record(self) -> dict:
        """What config.json and every checkpoint header say of a model of one's own."""
        return {"model_file": self.file, "model_class": self.cls.__name__, "model_args": dict(self.args)}


# --- the file ------------------------------------------------------------------------------------
def load_class(text: str) -> tuple[type, Path]:
    """The class ``CLASS`` of ``FILE.py:CLASS`` and the file's absolute path; one-line errors for
    a missing file, a file that fails to import, a missing class, a class that is not a Module."""
    path_text, sep, name = str(text).rpartition(":")
    if not sep or not path_text or not name.isidentifier():
        raise UserError(f"--model must be FILE.py:CLASS, got {text!r}")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"--model: no file {path}")
    module_name = f"customnn_user_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"--model: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and get_type_hints look the module up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's code: any failure is theirs to fix
        sys.modules.pop(module_name, None)
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
        raise UserError(f"--model: importing {path} failed{where}: {type(e).__name__}: {e}") from None
    found = getattr(module, name, None)
    if found is None:
        classes = sorted(k for k, v in vars(module).items()
                         if isinstance(v, type) and issubclass(v, Module) and v.__module__ == module_name)
        raise UserError(f"--model: {path} has no class {name}" + (f" (its models: {', '.join(classes)})"
                                                                   if classes else ""))
    if not (isinstance(found, type) and issubclass(found, Module)):
        raise UserError(f"--model: {path}:{name} is not a customnn.Module subclass")
    return found, path


# --- settings ------------------------------------------------------------------------------------
def plain_type(hint) -> tuple[type | None, bool]:
    """(int/float/str/bool or None, whether None is allowed) of an annotation."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else None
    return (hint if hint in (int, float, str, bool) else None), optional


def _hints(obj) -> dict:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # noqa: BLE001 - a name the annotation cannot resolve: use the defaults' types
        return {}


def settings(cls) -> dict[str, Setting]:
    """The settings of ``cls``'s constructor, in order (dataclass-typed parameters flattened)."""
    out: dict[str, Setting] = {}
    hints = _hints(cls.__init__)
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(p.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            inner = _hints(hint)
            base = p.default if dataclasses.is_dataclass(p.default) else None
            for f in dataclasses.fields(hint):
                default = getattr(base, f.name) if base is not None else (
                    f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING)
                kind, optional = plain_type(inner.get(f.name))
                out[f.name] = Setting(kind or type(default), default, optional, group=p.name)
            continue
        kind, optional = plain_type(hint)
        default = p.default if p.default is not p.empty else dataclasses.MISSING
        if kind is None:
            kind = str if default in (dataclasses.MISSING, None) else type(default)
        out[p.name] = Setting(kind, default, optional or default is None)
    return out


def _convert(name: str, text: str, s: Setting, cls_name: str):
    if s.optional and text.lower() == "none":
        return None
    try:
        if s.kind is bool:
            return _BOOLS[text.lower()]
        if s.kind in (int, float, str):
            return s.kind(text)
    except (KeyError, ValueError):
        pass
    else:
        raise UserError(f"--model-arg {name}: {cls_name}'s {name} is a {s.kind.__name__}, which a command line "
                        "cannot give")
    raise UserError(f"--model-arg {name}={text}: {cls_name}'s {name} is a {s.kind.__name__}, got {text!r}")


def parse_args(cls, pairs: list[str]) -> dict:
    """``["width=16", "dropout=0.1"]`` -> ``{"width": 16, "dropout": 0.1}``, typed; one-line errors."""
    known = settings(cls)
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--model-arg must be NAME=VALUE, got {pair!r}")
        if name not in known:
            raise UserError(f"--model-arg {name}: {cls.__name__} has no argument {name!r} "
                            f"(its arguments: {', '.join(known) or 'none'})")
        out[name] = _convert(name, text.strip(), known[name], cls.__name__)
    return out


def check_recorded(cls, args, where: str) -> dict:
    """The ``model_args`` a run or checkpoint recorded (JSON), checked against ``cls``'s settings."""
    known = settings(cls)
    if not isinstance(args, dict):
        raise UserError(f"{where} is damaged: its model_args is not a mapping")
    for name, value in args.items():
        s = known.get(name)
        if s is None:
            raise UserError(f"{where} was trained with {name}={value!r}, which {cls.__name__} does not take "
                            f"(its arguments: {', '.join(known) or 'none'})")
        ok = (value is None and s.optional) or (isinstance(value, s.kind) and not (
            isinstance(value, bool) and s.kind is not bool)) or (s.kind is float and isinstance(value, int)
                                                                and not isinstance(value, bool))
        if not ok:
            raise UserError(f"{where} is damaged: model_args.{name} is {value!r}")
    return dict(args)


# --- building ------------------------------------------------------------------------------------
def build(cls, provided: dict, args: dict) -> Module:
    """``cls`` built from ``args`` (its settings) and the ``provided`` values of the task that it
    takes (``vocab_size``, ``seed``, ...); a missing argument or a refused value is one line."""
    known = settings(cls)
    values = {k: v for k, v in provided.items() if k in known}
    values.update(args)
    missing = [k for k, s in known.items() if s.default is dataclasses.MISSING and k not in values]
    if missing:
        raise UserError(f"{cls.__name__} needs {missing[0]}: give --model-arg {missing[0]}=VALUE")
    kwargs: dict = {}
    groups: dict[str, dict] = {}
    for name, value in values.items():
        group = known[name].group
        if group is None:
            kwargs[name] = value
        else:
            groups.setdefault(group, {})[name] = value
    hints = _hints(cls.__init__)
    for group, fields_ in groups.items():
        params = inspect.signature(cls.__init__).parameters
        base = params[group].default
        kwargs[group] = (dataclasses.replace(base, **fields_) if dataclasses.is_dataclass(base)
                         else hints[group](**fields_))
    try:
        model = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in values.items())}): {e}") from None
    if not isinstance(model, Module) or "training" not in vars(model):
        raise UserError(f"{cls.__name__}.__init__ must call super().__init__() (customnn.Module's)")
    return model


def meta_shapes(cls, provided: dict, args: dict) -> dict[str, tuple] | None:
    """The name and shape of every tensor of the model, built on PyTorch's meta device (shapes, no
    storage: nothing is allocated); None when the class cannot be built there."""
    try:
        with torch.device("meta"):
            model = build(cls, provided, args)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - e.g. a generator drawn on the CPU: the caller builds for real
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def first_mismatches(want: dict[str, tuple], state: dict, n: int = 3) -> str | None:
    """The first few names and shapes in which ``state`` differs from ``want``, or None."""
    problems = [f"{k} missing" for k in want if k not in state]
    problems += [f"{k} unexpected" for k in state if k not in want]
    problems += [f"{k} {tuple(state[k].shape)} in the checkpoint, {tuple(s)} in the class"
                 for k, s in want.items() if k in state and tuple(state[k].shape) != tuple(s)]
    if not problems:
        return None
    return "; ".join(problems[:n]) + (f" (and {len(problems) - n} more)" if len(problems) > n else "")


# --- memory -------------------------------------------------------------------------------------
def measured_step_bytes(model: Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one forward of ``(x, y)``: every tensor saved for a
    backward that is not a parameter (each storage counted once), summed by
    ``torch.autograd.graph.saved_tensors_hooks``; the caller scales it to the batch."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, loss = model(x, y)
    if loss is not None:
        loss.backward()
    for p in model.parameters():
        p.grad = None
    return total + 2 * logits.numel() * logits.element_size()  # the logits and their gradient


def values_of(cls, provided: dict, args: dict) -> dict:
    """Every setting of ``cls`` as a model built from ``provided`` and ``args`` has it."""
    known = settings(cls)
    values = {k: s.default for k, s in known.items() if s.default is not dataclasses.MISSING}
    values.update({k: v for k, v in provided.items() if k in known})
    values.update(args)
    return values


def probe_step(model: Module, x: torch.Tensor, y: torch.Tensor, task: str) -> int:
    """``measured_step_bytes`` of one batch, with the model's contract checked on the way: a forward
    that fails or does not return ``(logits, loss)`` is a one-line error naming the class."""
    name = type(model).__name__
    try:
        out = model(x, y)
    except Exception as e:  # noqa: BLE001 - the user's forward: say what failed, in one line
        raise UserError(f"{name}.forward fails on a batch of the {task} task (x {tuple(x.shape)} "
                        f"{str(x.dtype).replace('torch.', '')}): {type(e).__name__}: {e}") from None
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor)
            and isinstance(out[1], torch.Tensor) and out[1].dim() == 0):
        raise UserError(f"{name}.forward(x, targets) must return (logits, loss) with a scalar loss")
    return measured_step_bytes(model, x, y)


def check_training_memory(spec: ModelSpec, provided: dict, batch_size: int, device, dtype, *, task: str,
                          extra: int = 0, eval_batch: int | None = None, advice: str = "", probe=None) -> None:
    """A one-line error, before training allocates, when a step of ``spec``'s model on batches of
    ``batch_size`` (and its evaluation on ``eval_batch``) cannot fit in ``device``'s memory.

    A class with a ``memory_estimate(settings, batch_size, training, element_bytes)`` static
    method (the built-in models) answers from its sizes, before anything is built. Any other is
    measured: its parameters on the meta device (weights, gradients and AdamW's two moments),
    then the bytes one forward and backward keeps for ``probe(2)``, a batch of two examples,
    scaled to the batch (the probe model is built in a forked RNG, so training draws the same)."""
    from customnn.core.memory import check_memory

    cls, size = spec.cls, torch.empty((), dtype=dtype).element_size()
    advice = advice or "use a smaller --batch-size"
    if hasattr(cls, "memory_estimate"):
        values = values_of(cls, provided, spec.args)
        need, what = cls.memory_estimate(values, batch_size, True, size)
        if eval_batch is not None:
            need = max(need, cls.memory_estimate(values, eval_batch, False, size)[0])
    else:
        shapes = meta_shapes(cls, provided, spec.args)
        n = sum(int(torch.Size(s).numel()) for s in shapes.values()) if shapes is not None else 0
        what = f"a {cls.__name__} of {n:,} parameters"
        need = 4 * n * size
        check_memory(need + extra, f"training {what} (weights, gradients and optimizer state)", device, advice)
        if probe is not None:
            devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                model = build(cls, provided, spec.args).to(device, dtype)
                need += probe_step(model, *probe(2), task) * batch_size // 2
            del model
    check_memory(need + extra, f"training {what}, batch {batch_size} (weights, gradients, optimizer state and "
                 "activations)", device, advice)


def current_settings(model: Module) -> dict:
    """The settings of a built model, read back from its attributes (or its ``config``'s)."""
    out, config = {}, getattr(model, "config", None)
    for name in settings(type(model)):
        for source in (model, config):
            if source is not None and hasattr(source, name):
                out[name] = getattr(source, name)
                break
    return out
