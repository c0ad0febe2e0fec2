"""The ``customnn`` command (also ``python -m customnn``).

    customnn demo                       both models, as the seed ran them, then a report
    customnn check                      every layer against PyTorch's, as a table
    customnn train cnn [--arch seed|default] [--epochs N] ...
    customnn train gpt [--preset NAME] [--max-iters N] ...
    customnn eval RUN_OR_CHECKPOINT
    customnn generate RUN_OR_CHECKPOINT --prompt "ROMEO:"
    customnn predict RUN_OR_CHECKPOINT IMAGE...
    customnn bench                      custom layers against PyTorch's, side by side

Each command lives in its own module (``customnn/commands/``), which provides
``add_arguments(parser)`` (``add_arguments(parser, model)`` for ``train MODEL``) and
``run(args) -> int``; this file only builds the parser and turns user errors into one line
on stderr with exit code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from customnn.errors import UserError

# (command words, module, one-line help)
COMMANDS = [
    (("demo",), "customnn.commands.demo", "train both models as the seed did, then write a report"),
    (("check",), "customnn_ref.check", "check every layer against PyTorch's (forward and gradients)"),
    (("train", "cnn"), "customnn.commands.train", "train the MNIST CNN"),
    (("train", "gpt"), "customnn.commands.train", "train the character-level Transformer"),
    (("eval",), "customnn.commands.evaluate", "evaluate a run or checkpoint on its test/validation data"),
    (("generate",), "customnn.commands.generate", "generate text from a GPT run or checkpoint"),
    (("predict",), "customnn.commands.predict", "classify digit images with a CNN run or checkpoint"),
    (("bench",), "customnn.commands.bench", "time the custom layers and models against PyTorch's"),
]


# Every character str.splitlines() breaks at, written as its escape (\n -> "\\n").
_ESCAPE_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``customnn train cnn: error: ...``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message.translate(_ESCAPE_LINE_BREAKS)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="customnn", description="Deep learning built by hand from basic tensor operations.")
    parser.add_argument("--version", action="version", version=_version())
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
    return parser


def _version() -> str:
    from customnn import __version__

    return f"customnn {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    from customnn.runtime import tune_allocator

    tune_allocator()  # fewer page faults per training step; see its docstring
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        message = str(e).translate(_ESCAPE_LINE_BREAKS)  # one line, even with a file name holding a line break
        print(f"customnn: error: {message}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a file-system error no command anticipated: still one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        message = f"{where}{e.strerror or e}".translate(_ESCAPE_LINE_BREAKS)
        print(f"customnn: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("customnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
