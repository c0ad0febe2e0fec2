"""One check per kind of argument, shared by every command: a value in range, or one ``UserError``.

Each kind of value a user can give has one function here, which every command (train, eval,
generate, predict, check, bench, demo) uses, so that a seed, a device, a thread count, a
size, a probability, a path or a text is refused the same way wherever it is given:

- ``seed``: an integer a ``torch.Generator`` takes (``runtime.check_seed``);
- ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` with a GPU ``N`` that exists;
- ``threads``: 0 (torch's default) to ``MAX_THREADS``;
- ``count``: an integer in ``low..high`` (sizes, steps, batches, tokens);
- ``number`` / ``probability``: a finite float in a range;
- ``text``: a string that is valid Unicode (a command line's bytes that are not UTF-8 arrive
  as lone surrogates, which no file or terminal can take);
- ``output_file`` / ``output_folder``: a path that can be written (files read are checked where
  they are read: ``read_text``, ``resolve_checkpoint``, ``load_image``);
- ``vocabulary``: a model's characters, distinct and encodable as UTF-8.

``check_args(args)`` applies the checks every command shares, by the argument's name, before
the command runs (``customnn/commands/cli.py``); a command checks its own ranges with the same functions.
``shown(text)`` makes any string printable (a file name that is not UTF-8 shows its bytes as
``\\xff``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from customnn.core.errors import UserError
from customnn.core.runtime import SEED_MAX, SEED_MIN, check_seed, resolve_device

MAX_THREADS = 1024  # far above any machine's cores; torch's pools fail in odd ways past that


def shown(text) -> str:
    """``text`` made printable anywhere: lone surrogates (bytes that were not UTF-8) as ``\\xNN``."""
    text = str(text)
    if not _has_surrogates(text):
        return text
    try:  # the bytes a non-UTF-8 command line or file name held
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # other lone surrogates: as escapes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def seed(value, flag: str = "--seed") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{flag} must be an integer between {SEED_MIN} and {SEED_MAX}, got {shown(value)}")
    check_seed(value, flag)
    return value


def device(name, flag: str = "--device"):
    """The ``torch.device`` for ``name``, or a one-line error: an unknown kind, a malformed index,
    or a GPU that is not there."""
    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", name):
        raise UserError(f"{flag} must be auto, cpu, cuda or cuda:N, got {shown(name)!r}")
    found = resolve_device(name)
    if found.type == "cuda" and found.index is not None:
        import torch

        if found.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {name}: there is no GPU {found.index} here "
                            f"({torch.cuda.device_count()} GPU(s): cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return found


def threads(value, flag: str = "--threads") -> int:
    return count(value, flag, 0, MAX_THREADS)


def thread_counts(value, flag: str = "--threads") -> list[int]:
    """A thread count, or several separated by commas ("1,0": ``customnn bench``'s runs)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [threads(value, flag)]
    counts = []
    for part in text(value, flag).split(","):
        try:
            counts.append(int(part))
        except ValueError:
            raise UserError(f"{flag} must be thread counts separated by commas (e.g. 1,0), got {shown(value)}") from None
    return [threads(n, flag) for n in counts]


def count(value, flag: str, low: int = 1, high: int | None = None) -> int:
    """An integer in ``low..high`` (``high`` None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        where = f"between {low} and {high}" if high is not None else f">= {low}"
        kind = "" if isinstance(value, int) and not isinstance(value, bool) else "an integer "
        raise UserError(f"{flag} must be {kind}{where}, got {shown(value)}")
    return value


def number(value, flag: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> float:
    """A finite number in the interval from ``low`` to ``high`` (open ends as asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = (f" in {lo}, {hi}" if low is not None and high is not None
                 else f" {'>' if low_open else '>='} {low:g}" if low is not None
                 else f" {'<' if high_open else '<='} {high:g}" if high is not None else "")
        raise UserError(f"{flag} must be a finite number{where}, got {shown(value)}")
    return float(value)


def probability(value, flag: str, allow_zero: bool = False) -> float:
    """A probability in (0, 1] (``allow_zero``: [0, 1])."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (0 <= value <= 1 if allow_zero
                                                                              else 0 < value <= 1)
    if not ok:
        raise UserError(f"{flag} must be in {'[' if allow_zero else '('}0, 1], got {shown(value)}")
    return float(value)


def text(value, flag: str, allow_empty: bool = True) -> str:
    """A string that is valid Unicode text: no lone surrogates (bytes of the command line that were
    not UTF-8), and not empty unless allowed."""
    if not isinstance(value, str):
        raise UserError(f"{flag} must be text, got {shown(value)}")
    if _has_surrogates(value):
        bad = next(i for i, c in enumerate(value) if 0xD800 <= ord(c) <= 0xDFFF)
        raise UserError(f"{flag} is not valid UTF-8 text ({shown(value[bad])} at position {bad}); "
                        "give it in UTF-8")
    if not value and not allow_empty:
        raise UserError(f"{flag} is empty")
    return value


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_folder(value, flag: str) -> Path:
    """A folder that exists or can be made, and can be written in."""
    path = Path(value)
    try:
        if path.exists() and not path.is_dir():
            raise UserError(f"{flag} {shown(path)} is not a folder")
        base = _nearest_existing(path)
        if not base.is_dir():
            raise UserError(f"{flag} {shown(path)}: {shown(base)} is not a folder")
        if not os.access(base, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {shown(path)}: cannot write in {shown(base)} (permission denied)")
    except OSError as e:
        raise UserError(f"{flag} {shown(path)}: {e.strerror or e}") from None
    return path


def output_file(value, flag: str) -> Path:
    """A file that can be written: not a folder, in a folder that exists or can be made."""
    path = Path(value)
    if str(value) == "" or path.is_dir():
        raise UserError(f"{flag} {shown(path)!r} is a folder, not a file name")
    output_folder(path.parent, flag)
    return path


def vocabulary(chars) -> str:
    """A model's vocabulary: distinct characters, each encodable as UTF-8 (``ValueError``
    otherwise: the caller names the file it came from)."""
    if not isinstance(chars, str) or not chars:
        raise ValueError("a vocabulary needs at least one character")
    if len(set(chars)) != len(chars):
        raise ValueError("vocabulary characters must be distinct")
    if _has_surrogates(chars):
        bad = next(c for c in chars if 0xD800 <= ord(c) <= 0xDFFF)
        raise ValueError(f"vocabulary character U+{ord(bad):04X} is a lone surrogate, not a character")
    return chars


# The checks every command shares, by the argument's name (``args.<name>``); a command checks the
# rest (its own ranges) with the functions above.
SHARED = {
    "seed": seed,
    "device": device,
    "threads": lambda v: thread_counts(v) if v is not None else None,
    "data_dir": lambda v: text(v, "--data-dir") if v is not None else None,
    "out": lambda v: output_folder(text(v, "--out"), "--out") if v is not None else None,
    "prompt": lambda v: text(v, "--prompt") if v is not None else None,
    "text": lambda v: text(v, "--text") if v is not None else None,
    "val_text": lambda v: text(v, "--val-text") if v is not None else None,
    "json": lambda v: output_file(text(v, "--json"), "--json") if v is not None else None,
}


def check_args(args) -> None:
    """Apply the shared checks to the arguments ``args`` (a namespace) has; ``--resume`` runs keep
    their saved seed and device unless given, so None is skipped."""
    for name, check in SHARED.items():
        value = getattr(args, name, None)
        if value is not None:
            check(value)
