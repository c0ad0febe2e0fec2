"""Every flag of every command, drawn by hypothesis: a result or one line and exit 2, never a traceback.

The flags are read from the parser itself (``customnn.commands.cli.build_parser``), so a flag added later
is fuzzed too. Each value is drawn for its kind: integers (negative, zero, huge, past 64 bits),
floats (NaN, infinities, values that round to zero in float32, huge), strings (empty, line
breaks, lone surrogates as a command line's non-UTF-8 bytes arrive, device names, paths) and
choices (with one that is not). The commands run in this process (``customnn.commands.cli.main``) with
tiny checkpoints, and their expensive parts (the training loop, full evaluations, the layer
table, the benchmarks) replaced by stubs once the flags are accepted, so that every example
takes milliseconds. Asserted for every example: exit 0 (or 130: the stubbed training loop
stops as after Ctrl-C),
or exit 2 with exactly one line on stderr; never exit 70 (an unexpected exception), never a
traceback.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiny_models import cnn_checkpoint, digit_picture, gpt_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
TRIED = {"examples": 0, "values": 0, "exit codes": {}}

INTS = st.integers(1, 16) | st.sampled_from([-2**70, -2**63 - 1, -2**63, -10**6, -1, 0, 1, 2, 3, 7, 64, 10**6, 2**31, 2**63 - 1, 2**63,
                        2**64, 10**20, 10**30]) | st.integers(-10**4, 10**4)
FLOATS = st.sampled_from(["nan", "-nan", "inf", "-inf", "0", "-0", "1e-46", "1e-320", "5e-324", "1e-300", "1e300",
                          "1e400", "-1", "0.5", "1", "1.5", "2", "0.999999999", "1e-8"]) \
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
STRINGS = st.sampled_from(["", "cpu", "auto", "cuda", "cuda:0", "cuda:99", "cuda:x", "mps", "CPU", "\udcff",
                           "a\udcffb.txt", "a\nb", "\u2028", "-1", "nan", "x" * 300, "missing/dir", ".", "..",
                           "-", "0", "cnn", "gpt,cnn", "attention", "nowhere.json", "caf\u00e9"]) \
    | st.text(max_size=8).map(lambda s: s.replace("\x00", "").lstrip("/"))  # argv holds no NUL; stay in tmp


def flags_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "debug")]


def subparsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    from customnn.commands.cli import build_parser

    found = {}

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*words, name))
        if words:
            found[words] = parser

    walk(build_parser(), ())
    return {w: p for w, p in found.items() if w != ("train",)}


COMMANDS = subparsers()


def value_for(action: argparse.Action):
    if action.choices is not None:
        return st.sampled_from([*action.choices, "bogus"])
    if action.type is int:
        return INTS.map(str)
    if action.type is float:
        return FLOATS
    return STRINGS


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    return {"cnn": cnn_checkpoint(folder / "cnn.safetensors"), "gpt": gpt_checkpoint(folder / "gpt.safetensors"),
            "image": digit_picture(folder / "seven.png"), "folder": folder}


@pytest.fixture
def stubs(monkeypatch, tmp_path):
    """The expensive parts, replaced once the flags have been accepted; the work folder is tmp_path."""
    import customnn.commands.evaluate as evaluate
    import customnn.commands.generate as generate
    import customnn.train.engine as engine
    import customnn.train.gpt as gpt_train
    import customnn_ref.check as check

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUSTOMNN_OFFLINE", "1")
    stop = {"interrupted": True, "run_dir": str(tmp_path), "evals": []}  # as after Ctrl-C: exit 130; the demo stops
    monkeypatch.setattr(engine.Engine, "run", lambda self, device: stop)
    monkeypatch.setattr(check, "check_layers", lambda dtypes, device, seed=0: [])
    monkeypatch.setattr("customnn.commands.bench.runpy.run_path", lambda *a, **k: None)
    monkeypatch.setattr(gpt_train, "estimate_loss", lambda *a, **k: {"train": 1.0, "val": 1.0})
    real_mnist = evaluate.load_mnist

    def few_images(split, data_dir=None, n=None):
        real_mnist(split, data_dir, 1)  # the data directory is still looked at
        return torch.zeros(min(n or 20, 20), 1, 28, 28), torch.zeros(min(n or 20, 20), dtype=torch.int64)

    monkeypatch.setattr(evaluate, "load_mnist", few_images)
    real_generate = generate.generate

    def few_tokens(model, ids, max_new_tokens, *args, **kwargs):
        return real_generate(model, ids, min(max_new_tokens, 3), *args, **kwargs)

    monkeypatch.setattr(generate, "generate", few_tokens)


def positionals(words, files, data):
    """The positional arguments: mostly the right ones, sometimes wrong or strange."""
    if words[0] not in ("eval", "generate", "predict"):
        return []
    kind = {"generate": "gpt", "predict": "cnn"}.get(words[0], data.draw(st.sampled_from(["cnn", "gpt"])))
    run = data.draw(st.sampled_from([files[kind]] * 4 + [files["image"], files["folder"], "missing", "\udcff.st"]))
    if words[0] != "predict":
        return [str(run)]
    images = data.draw(st.lists(st.sampled_from([files["image"]] * 3 + [files["cnn"], "none.png", "\udcff.png",
                                                                        files["folder"]]), min_size=1, max_size=2))
    return [str(run), *map(str, images)]


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_flag_gives_a_result_or_one_line_and_exit_2(words, files, stubs, capsys, data):
    from customnn.commands.cli import main

    actions = flags_of(COMMANDS[words])
    chosen = data.draw(st.lists(st.sampled_from(actions), min_size=1, max_size=3, unique_by=lambda a: a.dest))
    argv = [*words, *positionals(words, files, data)]
    for action in chosen:
        flag = action.option_strings[-1]
        if action.nargs == 0:  # a switch (--quick, --no-cache, --[no-]bias)
            argv.append(data.draw(st.sampled_from(action.option_strings)))
        else:
            argv.append(f"{flag}={data.draw(value_for(action))}")
    if words[0] in ("eval", "generate", "predict"):
        argv.append("--device=cpu") if not any(a.dest == "device" for a in chosen) else None
    TRIED["examples"] += 1
    TRIED["values"] += len(chosen)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    TRIED["exit codes"][code] = TRIED["exit codes"].get(code, 0) + 1
    assert "Traceback" not in err and code != 70, (argv, code, err)
    assert code in (0, 2, 130), (argv, code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("customnn"), (argv, err)


def test_the_fuzzer_covered_every_flag_of_every_command():
    """Every command has flags to draw from and the runs above drew values (their count is printed)."""
    assert {w[0] for w in COMMANDS} == {"demo", "check", "train", "eval", "generate", "predict", "bench"}
    assert all(flags_of(p) for p in COMMANDS.values())
    print(f"\nflag fuzzer: {TRIED['examples']} command lines, {TRIED['values']} flag values, exit codes "
          f"{dict(sorted(TRIED['exit codes'].items()))}")
