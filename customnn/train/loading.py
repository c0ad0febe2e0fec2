"""What reading a trained model back from a checkpoint needs, for every task and model.

A task's ``from_checkpoint(ckpt, path, device, model)`` (``customnn/train/cnn.py``,
``customnn/train/gpt.py``):

1. checks the header's configuration (types and bounds) *before* anything is built, so a
   forged size is a one-line ``UserError``, never a multi-gigabyte allocation;
2. checks the stored tensors' names and shapes against the model that configuration makes
   (``state_mismatch``; the shapes come from the model itself, built on the meta device);
3. checks that every stored weight is a finite number (``non_finite``: a NaN or an infinity
   would make every output NaN), naming the first tensor that is not;
4. builds the model and loads the weights (the dtypes are checked there), in eval mode.

A model of one's own goes through ``own_model_from_checkpoint``: the checkpoint names its file
and class as text, and ``--model FILE.py:CLASS`` must be given to read it.
``customnn/train/tasks.py``'s ``load_model`` finds a run's checkpoint and dispatches on the
task its header names; ``eval``, ``generate``, ``predict`` come through there.

``compile_model(model, device)`` is ``--compile`` for training, ``eval`` and ``generate``: the
model's forward runs through ``torch.compile`` (TorchDynamo captures our layers' forwards and
their hand-written backwards, TorchInductor turns the graphs into C++ on the CPU or Triton on
CUDA); where that cannot work it says why in one line, before any work.
"""

from __future__ import annotations

import logging
import os
import shlex
import warnings

import torch

from customnn.core.errors import UserError
from customnn.core.runtime import SEED_MAX, SEED_MIN
from customnn.train.usermodel import build, check_recorded, first_mismatches, meta_shapes

# Bounds on what a checkpoint's settings may make ``customnn eval`` or ``generate`` do.
MAX_BATCH_SIZE = 4096  # GPT --batch-size: far above what a character-level model needs
MAX_EVAL_ITERS = 10_000  # GPT batches per split in one evaluation (nanoGPT uses 200)


def is_int(value, low: int, high: int | None = None) -> bool:
    """``value`` is an int (not a bool) in ``low..high``."""
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def saved_dtype(state: dict) -> torch.dtype:
    """The floating dtype a model was saved in (``--dtype``): float32, or float64 where it is."""
    return torch.float64 if any(v.dtype == torch.float64 for v in state.values()) else torch.float32


def state_mismatch(want: dict[str, tuple], state: dict) -> str | None:
    """What in ``state`` (name -> tensor) does not fit the shapes ``want`` (name -> shape), or None."""
    def names(keys: list[str]) -> str:  # a forged size can make every tensor wrong: name the first few
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    reshaped = [k for k, shape in want.items() if k in state and tuple(state[k].shape) != tuple(shape)]
    problems = [f"missing: {names(missing)}"] if missing else []
    if unexpected:
        problems.append(f"unexpected: {names(unexpected)}")
    if reshaped:
        k = reshaped[0]
        more = f" (and {len(reshaped) - 1} more tensors of the wrong shape)" if len(reshaped) > 1 else ""
        problems.append(f"{k}: shape {tuple(state[k].shape)} in the checkpoint, {tuple(want[k])} from the "
                        f"configuration{more}")
    return "; ".join(problems) or None


def non_finite(state: dict) -> str | None:
    """What in ``state`` (name -> tensor) is not a finite number: ``"fc.weight holds NaN"``, or None."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            if bool(torch.isnan(t).any()):
                return f"{name} holds NaN values"
            if bool(torch.isinf(t).any()):
                return f"{name} holds infinite values"
    return None


def check_weights(state: dict, path) -> None:
    """A one-line ``UserError`` naming the first stored weight that is not finite."""
    problem = non_finite(state)
    if problem:
        raise UserError(f"{path}: checkpoint is damaged: {problem}; a model with such weights gives only NaN "
                        "(was it saved from a run that diverged?)")


def load_weights(model, state: dict, path) -> None:
    """Copy ``state`` into ``model`` after checking names, shapes (naming the first mismatches, in
    one line) and dtypes."""
    problem = first_mismatches({k: tuple(v.shape) for k, v in model.state_dict().items()}, state)
    try:
        if problem:
            raise ValueError(problem)
        model.load_state_dict(state)  # the dtypes are checked here
    except ValueError as e:
        raise UserError(f"{path}: checkpoint does not fit {type(model).__name__}: {e}") from None


def own_model_from_checkpoint(ckpt, path, model, provided: dict, task: str, device="cpu"):
    """The model of one's own a checkpoint holds, built from ``model`` (the ``ModelSpec`` of
    ``--model``) with the settings the checkpoint recorded, in eval mode on ``device``; None for a
    checkpoint of the task's built-in model (then ``model`` must be None).

    A checkpoint names its model's file and class as text and is never made to import them:
    without ``--model`` that is a one-line error naming them. The class's parameter names and
    shapes are compared with the checkpoint's on the meta device, before anything is allocated."""
    meta = ckpt.meta
    recorded = meta.get("model_class")
    if recorded is None:
        if model is not None:
            raise UserError(f"{path} holds the built-in {task.upper()} model; leave out --model")
        return None
    name = f"{meta.get('model_file')}:{recorded}"
    if model is None:
        raise UserError(f"{path} holds {name}, a model of your own, and customnn does not import code a checkpoint "
                        f"names: pass --model {shlex.quote(name)}")
    args = check_recorded(model.cls, meta.get("model_args", {}), path)
    shapes = meta_shapes(model.cls, provided, args)
    if shapes is not None:
        problem = first_mismatches(shapes, ckpt.model_state)
        if problem:
            raise UserError(f"{path} does not fit --model {model.cls.__name__}: {problem}")
    check_weights(ckpt.model_state, path)
    built = build(model.cls, provided, args).to(dtype=saved_dtype(ckpt.model_state))
    load_weights(built, ckpt.model_state, path)
    return built.to(device).eval()


def stored_train_config(meta: dict, path) -> dict:
    """The training configuration a GPT checkpoint records (``{}`` if none), with the values
    ``customnn eval`` reads checked: a forged or damaged one is a one-line ``UserError``."""
    tc = meta.get("train_config", {})
    if not isinstance(tc, dict):
        raise UserError(f"{path}: checkpoint is damaged: its train_config is {type(tc).__name__}, not a mapping")
    for name in ("text", "data_dir", "val_text"):
        if not isinstance(tc.get(name), (str, type(None))):
            raise UserError(f"{path}: checkpoint is damaged: train_config.{name} {tc[name]!r} is not a path")
    for name, low, high in (("batch_size", 1, MAX_BATCH_SIZE), ("eval_iters", 1, MAX_EVAL_ITERS),
                            ("seed", SEED_MIN, SEED_MAX)):
        if name in tc and not is_int(tc[name], low, high):
            raise UserError(f"{path}: checkpoint is damaged: train_config.{name} {tc[name]!r} is not an integer "
                            f"in {low}..{high}")
    return tc


# ``--dtype`` of eval and generate: the floating dtype the loaded weights are cast to
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_optimizer_state(params, state: dict, keys: set[str]) -> None:
    """Each of ``params``' restored optimizer state (in ``state``) has exactly ``keys``, a step count
    and tensors (``ValueError`` otherwise: a damaged or forged checkpoint)."""
    for p in params:
        s = state.get(p)
        if s is None:
            continue
        if set(s) != keys or ("step" in s and not is_int(s["step"], 0)) \
                or not all(isinstance(v, torch.Tensor) for k, v in s.items() if k != "step"):
            raise ValueError("optimizer state")


# --- --compile ------------------------------------------------------------------------------------
def compile_unavailable(device="cpu") -> str | None:
    """Why ``torch.compile`` cannot compile a model for ``device`` here, or None if it can."""
    if not hasattr(torch, "compile"):
        return f"this PyTorch ({torch.__version__}) has no torch.compile"
    try:
        from torch import _dynamo
        from torch._inductor import cpp_builder
    except ImportError as e:  # a build of PyTorch without its compiler stack
        return f"this PyTorch ({torch.__version__}) cannot import its compiler ({e})"
    if not _dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "compiling for CUDA needs Triton, which is not installed (pip install triton)"
        return None
    try:  # inductor writes C++ on the CPU: the compiler it would run (g++ unless configured)
        cpp_builder.get_cpp_compiler()
    except Exception:
        return "no C++ compiler found (torch.compile builds the model as C++ on the CPU: install g++)"
    return None


def check_compile(device="cpu") -> None:
    """A one-line ``UserError`` if ``--compile`` cannot work for ``device`` here."""
    reason = compile_unavailable(device)
    if reason is not None:
        raise UserError(f"--compile: {reason}; run without --compile")


def quiet_tracing_notes() -> None:
    """Keep TorchDynamo's notes on what our layers do by design off the command's stderr: the
    warnings of its ``torch._dynamo`` loggers, and its note that it traces through the
    ``lru_cache`` of the conv's index tensors, which depend on their arguments only, so tracing
    the wrapped function gives the same index. With ``TORCH_LOGS`` set, its logs are left as asked."""
    if not os.environ.get("TORCH_LOGS"):
        logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`", category=UserWarning)


def compile_model(model, device="cpu", generation: bool = False):
    """``model`` with its forward (and so its backward) run through ``torch.compile``; a one-line
    ``UserError`` where compiling cannot work. The weights stay the model's own tensors, so
    checkpoints are unchanged, and the first call of each new input shape compiles (seconds to
    minutes).

    Training and evaluation compile for the shapes they meet (``dynamic=False``): a batch has
    one shape, and the CNN's conv stages, traced through the same code at three sizes, each get
    their own graph (TorchInductor 2.13 fails on the default CNN's graph with symbolic sizes, a
    ``ValueRangeError`` in its stride checks). The
    GPT's cached forward stays eager there: a training run's report samples 300 tokens, which
    would not repay compiling every length a cache goes through. ``generation=True`` compiles
    that too, with the lengths symbolic after the second one (TorchDynamo's automatic dynamic
    shapes), so that a cache growing one position per token does not compile per token.
    """
    check_compile(device)
    quiet_tracing_notes()
    eager = model.forward
    if generation:
        model.forward = torch.compile(eager)  # an attribute of this model only; Module.__call__ finds it
        return model
    compiled = torch.compile(eager, dynamic=False)

    def forward(*args, cache=None, **kwargs):
        if cache is not None:
            return eager(*args, cache=cache, **kwargs)
        return compiled(*args, **kwargs)

    model.forward = forward
    return model
