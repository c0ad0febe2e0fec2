"""What a task brings to the training engine (``customnn/train/engine.py``): a ``Trainer``.

A task (a kind of data: MNIST classification, text) builds its data, its model and optimizer
(``setup``), runs one step's forward and backward (``train_step``), evaluates (``evaluate``),
and says what it keeps beyond the model and optimizer (``extra_state`` / ``load_extra_state``)
and what its checkpoint's header holds (``checkpoint_meta``). The other hooks have defaults.
``customnn/train/cnn.py`` (MNIST) and ``customnn/train/gpt.py`` (text) are the two tasks.

The model is any ``customnn.Module`` class (``ModelSpec``, ``customnn/train/usermodel.py``):
the task's ``default_model`` with its settings from the task's flags, or a class of one's own
(``--model FILE.py:CLASS``) with its ``--model-arg`` settings; both are built by ``build_model``
from those settings and the values the task provides (``provided``: its data's sizes, the seed).
"""

from __future__ import annotations

import torch
from dataclasses import fields

import shlex

from customnn.train.distributed import Dist
from customnn.train.precision import FLOAT32
from customnn.train.rundir import RunDir
from customnn.train.usermodel import ModelSpec, build, settings


class Trainer:
    """What a model brings to the engine. Subclasses set ``name`` and fill in the hooks.

    After ``setup`` a trainer has ``model``, ``optimizer``, ``generators`` (name ->
    ``torch.Generator``, saved in every checkpoint), ``total_steps`` (the plan, without a time
    budget), ``eval_interval`` and ``warmup_steps``.
    """

    name = "model"  # run folders <out>/<name>-<time>; ``customnn train <name>``
    dist = Dist()  # set by the engine: this process's rows of each batch (train/distributed.py)
    precision = FLOAT32  # set by the engine: --precision (train/precision.py)
    eval_at_start = True  # evaluate at step 0 too
    best_metric, best_mode = "loss", "min"  # best.safetensors: the evaluation with the best of this
    plot_series: dict[str, str] = {"eval loss": "loss"}  # eval curves in loss.png: label -> metrics key
    test_split: str | None = None  # a held-out set scored once, after the last step (``test``); None: none
    test_result: dict | None = None  # set by the engine: ``test``'s figures, with the best evaluation's "best_step"
    quiet = False  # set by the engine: no progress bars (``--quiet``)

    default_model: type | None = None  # the task's built-in model class
    provided_names: tuple[str, ...] = ("seed",)  # what ``provided`` gives a model that takes it

    def __init__(self, cfg, model: ModelSpec | None = None):
        self.cfg = cfg
        self.spec = model if model is not None else ModelSpec(self.default_model, None, self.default_args())

    # --- the model ------------------------------------------------------------------------
    @classmethod
    def model_flags(cls, config_cls) -> list[str]:
        """The config's fields that are settings of the task's built-in model (``--width``, ...)."""
        if cls.default_model is None:  # a task of one's own without a built-in model
            return []
        names = {f.name for f in fields(config_cls)}
        return [k for k in settings(cls.default_model) if k in names and k not in cls.provided_names]

    def default_args(self) -> dict:
        """The built-in model's settings, from the config's fields of the same names."""
        return {k: getattr(self.cfg, k) for k in self.model_flags(type(self.cfg))}

    @property
    def user_model(self) -> bool:
        """A class from a file of one's own (``--model``), not the task's built-in model."""
        return self.spec.file is not None

    def provided(self) -> dict:
        """What the task gives the model's constructor, for the parameters that have these names."""
        return {"seed": self.cfg.seed}

    def build_model(self):
        return build(self.spec.cls, self.provided(), self.spec.args)

    def model_record(self) -> dict:
        """config.json's and every checkpoint header's record of a model of one's own (file, class,
        settings, as text: a checkpoint never makes customnn import code); nothing for a built-in."""
        return self.spec.record() if self.user_model else {}

    def resume_command(self, run) -> str:
        return resume_command(self.name, self.spec, run)

    @classmethod
    def prepare_config(cls, cfg):
        """``cfg`` with its defaults filled in and checked (one-line ``UserError``s)."""
        cfg.check()
        return cfg

    # --- what a model must supply ---------------------------------------------------------
    def setup(self, device: torch.device, ckpt) -> None:
        """Load the data, build the model, optimizer and generators; ``ckpt`` is the checkpoint
        being resumed (its weights are loaded here, after checking they fit) or None."""
        raise NotImplementedError

    def schedule(self, total_steps: int):
        """The learning rate as a function of the step, for a run of ``total_steps`` steps."""
        raise NotImplementedError

    def train_step(self, step: int) -> torch.Tensor:
        """Forward and backward of one batch; returns the loss (a scalar tensor)."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` as the run's precision does it (fp16: the loss scaled); ``train_step``
        calls this."""
        self.precision.backward(loss)

    def evaluate(self, step: int) -> dict:
        """The model's figures at this step (they go into the metrics row and the report)."""
        raise NotImplementedError

    def eval_line(self, step: int, result: dict) -> str:
        raise NotImplementedError

    def test(self, step: int) -> dict:
        """With ``test_split``: the figures of ``model`` (holding best.safetensors' weights) on that
        set, scored once after the last step; logged with ``eval_line``, not used to pick anything."""
        raise NotImplementedError

    def checkpoint_meta(self, step: int) -> dict:
        """The JSON header of a checkpoint: what loading the model needs (``customnn/train/loading.py``)."""
        raise NotImplementedError

    # --- what a model may override --------------------------------------------------------
    def run_config(self) -> dict:
        """What config.json holds."""
        from dataclasses import asdict

        return {"model": self.name, **asdict(self.cfg), **self.model_record()}

    def intro_line(self, run: RunDir) -> str:
        return f"run folder: {run.path}"

    def before_step(self, step: int) -> None:
        """Called before each step and its evaluation (a model draws its next batch here)."""

    def train_row(self, step: int, loss: torch.Tensor, lr: float) -> tuple[dict | None, str | None]:
        """After step ``step`` (0-based): a training row for metrics.jsonl and a log line, or None."""
        if (step + 1) % self.cfg.log_interval:
            return None, None
        return {"step": step + 1, "loss": loss.item(), "lr": lr}, None

    def progress(self, step: int) -> str:
        return f"train {self.name}"

    def where(self, n: int) -> str:
        """Where the ``n``-th step (counting from 1) is, for messages: the CNN says its epoch and batch."""
        return ""

    def plot_title(self) -> str:
        return self.name

    def extra_state(self, step: int) -> dict:
        """What the model keeps beyond its weights, optimizer and generators (data position, ...)."""
        return {}

    def load_extra_state(self, state: dict, step: int) -> None:
        pass

    def check_resume(self, step: int, total: int) -> None:
        pass

    def report(self, run: RunDir, evals: list[dict], step: int, seconds: float, finished: bool) -> list[str]:
        """The model's part of report.md (markdown lines)."""
        return []

    def result(self) -> dict:
        return {}


def resume_command(task: str, spec: ModelSpec | None, run) -> str:
    """The command that continues run folder ``run`` of ``task`` with model ``spec``."""
    model = f" --model {shlex.quote(spec.name)}" if spec is not None and spec.file else ""
    return f"customnn train {task}{model} --resume {run}"
