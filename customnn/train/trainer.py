"""What a model brings to the training engine (``customnn/train/engine.py``): a ``Trainer``.

A model's trainer builds its data, model and optimizer (``setup``), runs one step's forward and
backward (``train_step``), evaluates (``evaluate``), and says what it keeps beyond the model
and optimizer (``extra_state`` / ``load_extra_state``) and what its checkpoint's header holds
(``checkpoint_meta``). The other hooks have defaults. ``customnn/train/cnn.py`` and
``customnn/train/gpt.py`` are the two trainers; docs/architecture.md walks through adding one.
"""

from __future__ import annotations

import torch

from customnn.train.distributed import Dist
from customnn.train.rundir import RunDir


class Trainer:
    """What a model brings to the engine. Subclasses set ``name`` and fill in the hooks.

    After ``setup`` a trainer has ``model``, ``optimizer``, ``generators`` (name ->
    ``torch.Generator``, saved in every checkpoint), ``total_steps`` (the plan, without a time
    budget), ``eval_interval`` and ``warmup_steps``.
    """

    name = "model"  # run folders <out>/<name>-<time>; ``customnn train <name>``
    dist = Dist()  # set by the engine: this process's rows of each batch (train/distributed.py)
    eval_at_start = True  # evaluate at step 0 too
    best_metric, best_mode = "loss", "min"  # best.safetensors: the evaluation with the best of this
    plot_series: dict[str, str] = {"eval loss": "loss"}  # eval curves in loss.png: label -> metrics key
    test_split: str | None = None  # a held-out set scored once, after the last step (``test``); None: none
    test_result: dict | None = None  # set by the engine: ``test``'s figures, with the best evaluation's "best_step"
    quiet = False  # set by the engine: no progress bars (``--quiet``)

    def __init__(self, cfg):
        self.cfg = cfg

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

        return {"model": self.name, **asdict(self.cfg)}

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
