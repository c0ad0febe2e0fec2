"""A training run's folder: what a run leaves on disk.

``runs/<model>-<time>/`` holds::

    config.json       the full configuration of the run
    metrics.jsonl     one JSON object per logged step ({"kind": "train", ...}) or evaluation ({"kind": "eval", ...})
    train.log         the log lines printed during training
    last.safetensors  the latest checkpoint; best.safetensors the best by the model's evaluation metric
    loss.png          the loss curves
    report.md         the figures of the run

Every file but the two append-only logs is written atomically (``customnn/core/fileio.py``); the
temporaries a killed process leaves behind are removed when the run is opened again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from customnn.core.errors import UserError
from customnn.core.fileio import atomic_write_bytes, atomic_write_text, remove_stale_temporaries


class RunDir:
    """One training run's folder: config, metrics, log lines, checkpoints, plots, report."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, model: str, out: str | Path | None = None) -> RunDir:
        """A new folder ``<out>/<model>-<YYYYmmdd-HHMMSS>`` (``out`` defaults to ``runs``)."""
        base = Path(out) if out is not None else Path("runs")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = base / f"{model}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = base / f"{model}-{stamp}-{n}"
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {path}: {e.strerror}") from None
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not run.path.is_dir():
            raise UserError(f"run folder not found: {run.path}")
        if not run.config_path.is_file():
            raise UserError(f"{run.path} is not a run folder (no config.json)")
        remove_stale_temporaries(run.path)  # left by a killed process
        return run

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    log_path = property(lambda self: self.path / "train.log")

    def checkpoint(self, name: str = "last") -> Path:
        return self.path / f"{name}.safetensors"

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def read_config(self) -> dict:
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {self.config_path}: {e}") from None

    def log(self, line: str, echo: bool = True) -> None:
        """Print a log line on stdout and append it to train.log."""
        if echo:
            print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def log_metrics(self, **row) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
        return rows

    def truncate_metrics(self, keep) -> None:
        """Keep only the rows for which ``keep(row)`` is true (on resume: those up to the checkpoint)."""
        rows = [r for r in self.read_metrics() if keep(r)]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def write_outputs(self, t, evals: list[dict], step: int, seconds: float, finished: bool) -> None:
        """loss.png and report.md, from metrics.jsonl and the evaluations, for trainer ``t``."""
        rows = self.read_metrics()
        train_rows = [r for r in rows if r.get("kind") == "train"]
        eval_rows = [r for r in rows if r.get("kind") == "eval"]
        series = {"train (batch)": ([r["step"] for r in train_rows], [r["loss"] for r in train_rows])}
        for label, key in t.plot_series.items():
            series[label] = ([r["step"] for r in eval_rows], [r[key] for r in eval_rows])
        plot_curves(self.path / "loss.png", series, xlabel="step", title=t.plot_title())
        lines = t.report(self, evals, step, seconds, finished)
        if not finished:
            lines += [f"Stopped early at step {step}; continue with "
                      f"`{t.resume_command(self.path)}`.", ""]
        lines += ["![loss](loss.png)", ""]
        atomic_write_text(self.path / "report.md", "\n".join(lines))



def plot_curves(path: str | Path, series: dict[str, tuple[list, list]], xlabel: str, title: str) -> None:
    """Plot named (x, y) series to a PNG, written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, (xs, ys) in series.items():
        if xs:
            ax.plot(xs, ys, label=name, marker="o" if len(xs) < 20 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(xs for xs, _ in series.values()):  # a run stopped before its first step has no curve
        ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


class FollowerRunDir(RunDir):
    """The run folder as the ranks other than 0 of a data-parallel run see it: the same paths,
    and every write left to rank 0 (one run, not N)."""

    def write_config(self, config: dict) -> None:
        pass

    def log(self, line: str, echo: bool = True) -> None:
        pass

    def log_metrics(self, **row) -> None:
        pass

    def truncate_metrics(self, keep) -> None:
        pass
