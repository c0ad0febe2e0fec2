"""Progress bars, and long work announced: an estimate from its first part's time, then a bar.

An evaluation at a long context, or encoding a large corpus, can take minutes where the usual
one takes a second. ``Progress`` times the first of ``total`` parts of such work; when that
puts the whole at over ``LONG_S`` seconds, it says so in one line on stderr (what, how many
parts, the estimate) and shows a tqdm bar for the rest (on a terminal, unless ``quiet``).
Work estimated shorter than that stays silent.

    progress = Progress(len(batches), "evaluation", "batches")
    for batch in batches:
        ...
        progress.update()
    progress.close()
"""

from __future__ import annotations

import sys
import time

LONG_S = 10.0  # work estimated longer than this is announced and gets a bar


def duration(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``12 min``, ``1.5 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress_bar(total: int, desc: str, quiet: bool = False, initial: int = 0):
    """A tqdm bar on stderr; off with ``--quiet`` or when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, initial=initial, file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=quiet or not sys.stderr.isatty())


def say(line: str) -> None:
    """One line on stderr, above any progress bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


class Progress:
    """``total`` parts of work of about equal cost; see the module docstring."""

    def __init__(self, total: int, what: str, unit: str = "batches", quiet: bool = False, long_s: float | None = None):
        self.total, self.what, self.unit, self.quiet = total, what, unit, quiet
        self.long_s = LONG_S if long_s is None else long_s
        self.done, self.bar, self.estimate = 0, None, None
        self.t0 = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.estimate is None and self.done < self.total:  # the first part: estimate the whole
            first = time.perf_counter() - self.t0
            self.estimate = first / self.done * self.total
            if self.estimate > self.long_s:
                say(f"{self.what}: {self.total} {self.unit}, about {duration(self.estimate)} "
                    f"(the first took {duration(first)}); Ctrl-C or SIGTERM stops it")
                self.bar = progress_bar(self.total, self.what, self.quiet, initial=self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
