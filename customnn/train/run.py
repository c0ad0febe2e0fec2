"""Run folders and checkpoints: what a training run leaves on disk, written so nothing is lost.

A run folder (``runs/<model>-<time>/``, DESIGN.md) holds::

    config.json      the full configuration of the run (model, data, optimizer, seed)
    metrics.jsonl    one JSON object per logged step or epoch
    train.log        the log lines printed during training (the seed's lines)
    last.safetensors the latest checkpoint (best.safetensors: the best by validation loss)
    loss.png         the loss curves
    report.md        the figures of the run

Every file is written to a temporary file in the same folder, flushed to disk and then
renamed over the old one (``os.replace`` is atomic on POSIX), so a process killed at any
moment leaves either the old file or the new one, never half of one. The temporary files
a killed process leaves behind (``.NAME.tmp-PID``) are removed when the run is resumed.

Checkpoints are safetensors files (tensors only, never pickled) whose header metadata holds
one JSON document: the model kind and configuration, the step, and the skeleton of any
nested training state (optimizer state, RNG states, data order) whose tensors are stored
alongside the weights as ``state.*`` entries. Loading checks the format before anything is
used and turns any damage into a one-line ``UserError``.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from customnn.errors import UserError

FORMAT = "customnn-checkpoint"
FORMAT_VERSION = 1


# --- atomic files --------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a flushed temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files (``.NAME.tmp-PID``) of writers that are no longer running."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# --- nested state <-> (tensors, JSON skeleton) ---------------------------------------------
def flatten_state(obj, prefix: str = "state"):
    """Split nested dicts/lists of tensors and plain values into flat tensors + a JSON skeleton.

    Dict keys keep their type (optimizer state is keyed by int), tensors are replaced by
    ``{"__tensor__": name}``.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(o, path):
        if isinstance(o, torch.Tensor):
            tensors[path] = o
            return {"__tensor__": path}
        if isinstance(o, dict):
            return {"__dict__": [[k, walk(v, f"{path}.{k}")] for k, v in o.items()]}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(o)]
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        raise TypeError(f"cannot store {type(o).__name__} at {path} in a checkpoint")

    return tensors, walk(obj, prefix)


def unflatten_state(skeleton, tensors: dict[str, torch.Tensor]):
    def walk(o):
        if isinstance(o, dict) and "__tensor__" in o:
            name = o["__tensor__"]
            if name not in tensors:
                raise UserError(f"checkpoint is damaged: tensor {name} is missing")
            return tensors[name]
        if isinstance(o, dict) and "__dict__" in o:
            return {k: walk(v) for k, v in o["__dict__"]}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(skeleton)


# --- checkpoints ----------------------------------------------------------------------------
@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]  # parameter and buffer name -> tensor
    meta: dict  # model kind, config, step, ... (JSON)
    state: object  # nested training state (optimizer, RNG, data order), or None


def save_checkpoint(path: str | Path, model_state: dict, meta: dict, state=None) -> None:
    """Write a checkpoint atomically. ``meta`` must be JSON-serialisable.

    A failed write (disk full, no permission) raises ``UserError`` and leaves the previous
    checkpoint at ``path`` as it was.
    """
    from safetensors.torch import save

    state_tensors, skeleton = flatten_state(state)
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors.update(state_tensors)
    # safetensors wants contiguous CPU tensors that share no memory
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "version": FORMAT_VERSION, **meta, "state": skeleton}
    data = save(tensors, metadata={"customnn": json.dumps(header)})
    try:
        atomic_write_bytes(path, data)
    except OSError as e:  # disk full, no permission, ...: the previous file is untouched
        raise UserError(f"could not save checkpoint {path}: {e.strerror or e}; "
                        "the previous checkpoint (if any) is kept") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; any damage or foreign file is a one-line ``UserError``."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["customnn"])
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"{path} is not a readable customnn checkpoint (damaged, truncated or another format: "
                        f"{type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a customnn checkpoint")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {meta.get('version')} is not supported "
                        f"(this customnn reads version {FORMAT_VERSION})")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        state = unflatten_state(meta.pop("state", None), tensors)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except (TypeError, ValueError, KeyError, RecursionError):  # a skeleton no save_checkpoint wrote
        raise UserError(f"{path}: checkpoint is damaged: its training state is malformed") from None
    return Checkpoint(model_state, meta, state)


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A run folder or a checkpoint file -> the checkpoint file (``best`` first, else ``last``)."""
    path = Path(path)
    if path.is_dir():
        order = [prefer, "last", "best"]
        for name in order:
            candidate = path / f"{name}.safetensors"
            if candidate.is_file():
                return candidate
        raise UserError(f"no checkpoint in run folder {path} (looked for best.safetensors and last.safetensors)")
    if path.is_file():
        return path
    raise UserError(f"run folder or checkpoint not found: {path}")


# --- the run folder -------------------------------------------------------------------------
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


# --- plots ------------------------------------------------------------------------------------
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
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# --- progress, interruption, devices, seeds -----------------------------------------------------
def progress_bar(total: int, desc: str, quiet: bool = False, initial: int = 0):
    """A tqdm bar on stderr; off with ``--quiet`` or when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, initial=initial, file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=quiet or not sys.stderr.isatty())


class InterruptFlag:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a flag the training loop checks.

    The loop finishes its step, saves a checkpoint and exits cleanly; a second Ctrl-C
    interrupts at once (KeyboardInterrupt).
    """

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name} received: stopping after this step and saving a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread: no handler
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA if there is a GPU, else CPU), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
        return torch.device(name)
    raise UserError(f"--device must be auto, cpu or cuda, got {name!r}")


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library as a ctypes handle if it is glibc's (it has ``mallopt`` and ``malloc_trim``), else None."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_allocator() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it at once.

    A training step allocates and frees the same few-MB tensors every step. By default glibc
    serves large blocks (above an adaptive threshold starting at 128 KiB) straight from the kernel with mmap and
    gives them back on free, so every step pays fresh page faults for them. Raising the mmap
    and trim thresholds (the same as ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``
    and ``MALLOC_TOP_PAD_`` in the environment) keeps those pages in the heap: measured on the
    GPT ``default`` step, 1 thread, 139.9 -> 132.4 ms for ours and 125.6 -> 124.1 ms for the
    torch.nn twin. It changes no result. Returns False where there is no glibc (macOS, musl).
    """
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = mallopt(M_MMAP_THRESHOLD, 32 * 2**20) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, 128 * 2**20) == 1
    ok &= mallopt(M_TOP_PAD, 64 * 2**20) == 1
    return bool(ok)


def release_free_memory() -> bool:
    """Give the pages glibc's malloc holds free back to the kernel (``malloc_trim(0)``).

    An evaluation (a batch of 1000 images through the default CNN: ~100 MB per activation)
    and a checkpoint save allocate large buffers that a training step never does. Freed, they
    stay in malloc's heap as free chunks between the step's live ones, and as the free space
    fragments the heap grows: the 20-minute soak test (tests/test_soak.py) measured the live
    memory flat at ~200 MB while the heap grew from 350 to 505 MB and the resident size with
    it. ``malloc_trim`` returns every whole free page, inside the heap as well as at its top
    (``madvise(MADV_DONTNEED)``), so the resident size follows the memory in use. Called after
    each evaluation and save; a few milliseconds, then some page faults in the next step.
    Returns False where there is no glibc (macOS, musl), where it does nothing.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


# Seeds a torch.Generator takes (64-bit), with room for the +1 and +2 that the GPT's
# evaluation batches use.
SEED_MIN, SEED_MAX = -2**63, 2**64 - 3


def check_seed(seed: int, flag: str = "--seed") -> None:
    """A seed torch can take, or a one-line ``UserError`` naming the flag."""
    if not SEED_MIN <= seed <= SEED_MAX:
        raise UserError(f"{flag} must be an integer between {SEED_MIN} and {SEED_MAX}, got {seed}")


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Every random state a run uses, as tensors and plain values, for a checkpoint."""
    state = {"torch": torch.get_rng_state(), "python": repr(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    for name, g in (generators or {}).items():
        state[f"gen.{name}"] = g.get_state()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for name, g in (generators or {}).items():
        if f"gen.{name}" in state:
            g.set_state(state[f"gen.{name}"])
