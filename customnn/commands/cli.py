"""The ``customnn`` command (also ``python -m customnn``).

    customnn demo                       both models, as the seed ran them, then a report
    customnn check                      every layer against PyTorch's, as a table
    customnn train cnn [--arch seed|default | --model FILE.py:CLASS] [--epochs N] ...
    customnn train gpt [--preset NAME] [--model FILE.py:CLASS] [--max-iters N] ...
    customnn eval RUN_OR_CHECKPOINT
    customnn generate RUN_OR_CHECKPOINT --prompt "ROMEO:"
    customnn predict RUN_OR_CHECKPOINT IMAGE...
    customnn bench                      custom layers against PyTorch's, side by side

Each command lives in its own module (``customnn/commands/``), which provides
``add_arguments(parser)`` (``add_arguments(parser, model)`` for ``train MODEL``) and
``run(args) -> int``; this file builds the parser, applies the argument checks every command
shares (``customnn/core/validate.py``), and turns whatever ends a command into an exit code:

- a user error (``UserError``, a file-system error, memory exhausted): one line on stderr, exit 2;
- standard output closed before the command starts: one line, exit 2; a reader that goes away
  (``customnn generate ... | head -c 10``): quiet, exit 141 as a Unix tool killed by SIGPIPE;
- Ctrl-C outside a training loop: ``customnn: interrupted``, exit 130;
- anything else (a bug): one line naming it and a file holding the full traceback (the run folder's
  train.log, appended to, when it happened in a training run that has one; else a temporary file),
  exit 70 (``EX_SOFTWARE``); ``--debug`` (or ``CUSTOMNN_DEBUG=1``) shows the traceback on the terminal.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from customnn.core.errors import UserError
from customnn.train.tasks import TASKS

# (command words, module, one-line help)
COMMANDS = [
    (("demo",), "customnn.commands.demo", "train both models as the seed did, then write a report"),
    (("check",), "customnn_ref.check", "check every layer against PyTorch's (forward and gradients)"),
    *((("train", name), "customnn.commands.train", help_text) for name, (_, help_text) in TASKS.items()),
    (("eval",), "customnn.commands.evaluate", "evaluate a run or checkpoint on its test/validation data"),
    (("generate",), "customnn.commands.generate", "generate text from a GPT run or checkpoint"),
    (("predict",), "customnn.commands.predict", "classify digit images with a CNN run or checkpoint"),
    (("bench",), "customnn.commands.bench", "time the custom layers and models against PyTorch's"),
]


EXIT_USAGE, EXIT_INTERRUPTED, EXIT_SOFTWARE, EXIT_PIPE = 2, 130, 70, 141

# Every character str.splitlines() breaks at, written as its escape (\n -> "\\n").
_ESCAPE_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``customnn train cnn: error: ...``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message.translate(_ESCAPE_LINE_BREAKS)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="customnn", description="Deep learning built by hand from basic tensor operations.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show the full traceback of an unexpected error (also: CUSTOMNN_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module_name, help_text in COMMANDS:
        if len(words) == 1:
            p = sub.add_parser(words[0], help=help_text, description=help_text)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=f"{words[0]} a model ({', '.join(w[1] for w, _, _ in COMMANDS if w[0] == words[0])})")
                groups[words[0]] = g.add_subparsers(dest="model", metavar="MODEL", parser_class=_Parser)
                groups[words[0]].required = True
            p = groups[words[0]].add_parser(words[1], help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        module = importlib.import_module(module_name)
        module.add_arguments(p, *words[1:])  # `train cnn`: the model's flags
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an unexpected error")
    return parser


def _version() -> str:
    from customnn import __version__

    return f"customnn {__version__}"


def _say(message: str) -> None:
    """One line on stderr (nothing if stderr is closed)."""
    if sys.stderr is None:
        return
    from customnn.core.validate import shown

    try:
        print(f"customnn: {shown(message).translate(_ESCAPE_LINE_BREAKS)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed or a broken pipe too: nothing more to say
        pass


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so that the interpreter's last flush at exit
    does not fail again (the way Python's documentation handles SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # captured or replaced in-process: nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _crash_report(args, words: str) -> int:
    """The last line of defence: an exception no command anticipated becomes one line naming it and
    a file with the traceback: the run folder's train.log when it escaped a training run that has
    one (``run_log``, set by ``customnn/train/engine.py``), else a temporary file."""
    import traceback

    exc = sys.exc_info()[1]
    what = f"{type(exc).__name__}: {exc}"
    if len(what) > 300:
        what = what[:297] + "..."
    if getattr(args, "debug", False) or os.environ.get("CUSTOMNN_DEBUG"):
        traceback.print_exc()
        _say(f"internal error in `customnn {words}`: {what}")
        return EXIT_SOFTWARE
    report = f"internal error in `customnn {words}`: {what}\nargv: {sys.argv!r}\n\n{traceback.format_exc()}"
    name = _save_report(report, getattr(exc, "run_log", None))
    where = f"the traceback is in {name}" if name else "the traceback could not be saved"
    _say(f"internal error in `customnn {words}`: {what}; {where}; run again with --debug to see it here, "
         "and please report it")
    return EXIT_SOFTWARE


def _save_report(report: str, run_log) -> str | None:
    """Append ``report`` to the run's log, or else write it to a temporary file; the file's name, or
    None if neither can be written."""
    import tempfile

    if run_log is not None:
        try:
            with open(run_log, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(report)
            return str(run_log)
        except OSError:
            pass  # a temporary file instead
    try:
        fd, name = tempfile.mkstemp(prefix="customnn-crash-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(report)
        return name
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    words = " ".join(w for w in (args.command, getattr(args, "model", None)) if w)
    from customnn.core.runtime import tune_allocator

    try:
        if sys.stdout is None:  # started with its standard output closed (`customnn ... >&-`)
            raise UserError("standard output is closed: nothing to write the results to")
        from customnn.core.validate import check_args

        check_args(args)  # the checks every command shares (seed, device, threads, paths, text)
        module = importlib.import_module(args._module)
        tune_allocator()  # fewer page faults per training step; see its docstring
        return int(module.run(args) or 0)
    except UserError as e:
        _say(f"error: {e}")  # one line, even with a file name holding a line break
        return e.exit_code
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        _quiet_stdout()
        return EXIT_PIPE
    except OSError as e:  # a file-system error no command anticipated: still one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        _say(f"error: {where}{e.strerror or e}")
        return EXIT_USAGE
    except UnicodeEncodeError as e:  # a terminal or PYTHONIOENCODING that cannot write a character
        _say(f"error: cannot write {e.object[e.start:e.end]!r} in the {e.encoding} encoding of the output; "
             "set PYTHONIOENCODING=utf-8 or use a UTF-8 locale")
        return EXIT_USAGE
    except MemoryError:
        _say("error: out of memory; use smaller sizes (a smaller batch, model or image)")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 - the net under every other class of failure
        import torch

        if isinstance(sys.exc_info()[1], torch.OutOfMemoryError):
            _say(f"error: out of memory on the GPU ({str(sys.exc_info()[1]).splitlines()[0]}); use smaller sizes")
            return EXIT_USAGE
        return _crash_report(args, words)


if __name__ == "__main__":
    raise SystemExit(main())
