"""The process a run lives in: devices, seeds and random states, signals, the C allocator.

- ``resolve_device``: ``--device auto|cpu|cuda[:N]`` to a ``torch.device``, or a one-line error;
- ``check_seed``, ``seed_all``, ``rng_state`` / ``set_rng_state``: every random state a run
  uses, so that a checkpoint can hold it and a resumed run draws what it would have drawn;
- ``InterruptFlag``: the first Ctrl-C or SIGTERM becomes a flag the training loop checks, and
  abandons an evaluation or the data's preparation at once (``Interrupted``);
- ``tune_allocator`` / ``release_free_memory``: glibc's malloc kept from returning and
  re-faulting the same pages every step, and made to return them after a big evaluation.
"""

from __future__ import annotations

import contextlib
import functools
import random
import signal
import sys

import torch

from customnn.core.errors import UserError


class Interrupted(BaseException):
    """A stop (Ctrl-C or SIGTERM) that abandons the work under way: an evaluation, the data's
    preparation. A ``BaseException``, as ``KeyboardInterrupt``, so that no ``except Exception``
    on the way up turns it into another error."""


class InterruptFlag:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a flag the training loop checks.

    The loop finishes its step, saves a checkpoint and exits cleanly; a second Ctrl-C
    interrupts at once (KeyboardInterrupt). Work whose result can be thrown away (an
    evaluation, preparing the data) runs inside ``abandonable()``: there the first signal also
    raises ``Interrupted`` at once, at the next Python operation (once the torch call under way
    returns, not after the whole evaluation), so a stop is honoured within seconds wherever the
    time goes.
    A checkpoint being written is never abandoned by the first signal: it completes (atomically,
    customnn/core/fileio.py), and a second Ctrl-C abandons it, leaving the previous file.
    """

    def __init__(self):
        self.requested = False
        self._old = {}
        self._abandon = 0  # depth of abandonable() regions entered

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        first = not self.requested
        self.requested = True
        if self._abandon:
            print(f"\n{signal.Signals(signum).name} received: stopping now", file=sys.stderr, flush=True)
            raise Interrupted
        if first:
            print(f"\n{signal.Signals(signum).name} received: stopping after this step and saving a checkpoint "
                  "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def abandonable(self):
        """A region the first signal abandons by raising ``Interrupted`` (at once if one came before)."""
        if self.requested:
            raise Interrupted
        grad = torch.is_grad_enabled()
        self._abandon += 1
        try:
            yield self
        finally:
            self._abandon -= 1
            torch.set_grad_enabled(grad)  # as it was, wherever an Interrupted left a no_grad block

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
    serves large blocks (above an adaptive threshold starting at 128 KiB) straight from the
    kernel with mmap and gives them back on free, so every step pays fresh page faults for them. Raising the mmap
    and trim thresholds (the same as ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``
    and ``MALLOC_TOP_PAD_`` in the environment) keeps those pages in the heap, and a step
    reuses them. It changes no result. Returns False where there is no glibc (macOS, musl).
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
