"""The last line of defence inside a training run: a bug's traceback goes to the run's train.log.

An exception no command anticipated is one line and exit 70 (tests/test_edges.py covers it outside
training). When it escapes a training run that has a run folder, the traceback is appended to that
folder's train.log, after the run's own lines, and the line names it; before the folder exists, or
when train.log cannot be written, it goes to a temporary file as elsewhere. The failures are
injected into a trainer's hooks, and ``customnn.commands.cli.main`` runs in this process.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from customnn.train.cnn import CNNTrainer
from customnn.train.gpt import GPTTrainer, make_config, train

pytestmark = pytest.mark.usefixtures("one_thread")

GPT_TINY = ["train", "gpt", "--preset", "tiny", "--max-iters", "20", "--eval-interval", "10", "--device", "cpu",
            "--quiet"]
CNN_TINY = ["train", "cnn", "--arch", "seed", "--train-samples", "64", "--test-samples", "10", "--epochs", "2",
            "--batch-size", "32", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def temporary_files(monkeypatch, tmp_path):
    """Temporary files (a crash report's fallback) go to a folder of the test's own."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def main(capsys, *args):
    from customnn.commands.cli import main as cli_main

    capsys.readouterr()
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def crash_line(code, err) -> str:
    """The one line of an internal error; the file it names."""
    lines = err.strip().splitlines()
    assert code == 70 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert lines[0].startswith("customnn: internal error in `customnn train "), lines[0]
    return lines[0].split("the traceback is in ")[1].split(";")[0]


def fail_at(step_to_fail: int, hook):
    def step(self, step: int):
        if step == step_to_fail:
            raise RuntimeError(f"injected at step {step}")
        return hook(self, step)
    return step


def test_a_bug_in_a_gpt_run_goes_to_its_train_log(tmp_path, capsys, monkeypatch, temporary_files):
    monkeypatch.setattr(GPTTrainer, "train_step", fail_at(13, GPTTrainer.train_step))
    code, out, err = main(capsys, *GPT_TINY, "--out", tmp_path / "runs")
    log = Path(crash_line(code, err))
    (run,) = (tmp_path / "runs").glob("gpt-*")
    assert log == run / "train.log" and "RuntimeError: injected at step 13" in err
    text = log.read_text()
    before, crash = text.split("internal error in `customnn train gpt`: RuntimeError: injected at step 13\n")
    assert "step 10: train loss" in before  # the run's own lines are kept, the report appended after them
    assert "Traceback (most recent call last)" in crash and 'raise RuntimeError(f"injected at step {step}")' in crash
    assert not list(temporary_files.iterdir())


def test_the_run_log_travels_with_the_exception_from_python(tmp_path, monkeypatch):
    monkeypatch.setattr(GPTTrainer, "evaluate", fail_at(10, GPTTrainer.evaluate))
    with pytest.raises(RuntimeError, match="injected at step 10") as e:
        train(make_config("tiny", max_iters=20, eval_interval=10, device="cpu", out=str(tmp_path)), quiet=True)
    (run,) = tmp_path.glob("gpt-*")
    assert e.value.run_log == run / "train.log"


def test_a_bug_before_the_run_folder_exists_goes_to_a_temporary_file(tmp_path, capsys, monkeypatch,
                                                                     temporary_files):
    def setup(self, device, ckpt):
        raise RuntimeError("injected in setup")

    monkeypatch.setattr(GPTTrainer, "setup", setup)
    code, out, err = main(capsys, *GPT_TINY, "--out", tmp_path / "runs")
    report = Path(crash_line(code, err))
    assert report.parent == temporary_files and report.name.startswith("customnn-crash-")
    assert "RuntimeError: injected in setup" in report.read_text()
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_bug_in_a_resumed_cnn_run_goes_to_its_train_log(tmp_path, capsys, monkeypatch, temporary_files):
    code, out, err = main(capsys, *CNN_TINY, "--max-steps", 1, "--out", tmp_path)
    assert code == 0, err
    (run,) = tmp_path.glob("cnn-*")
    monkeypatch.setattr(CNNTrainer, "train_step", fail_at(2, CNNTrainer.train_step))  # in the second epoch
    code, out, err = main(capsys, "train", "cnn", "--resume", run)
    assert Path(crash_line(code, err)) == run / "train.log"
    text = (run / "train.log").read_text()
    assert text.startswith("run folder: ") and text.count("internal error in `customnn train cnn`") == 1
    assert "RuntimeError: injected at step 2" in text and "Traceback" in text


def test_a_train_log_that_cannot_be_written_falls_back_to_a_temporary_file(tmp_path, capsys, monkeypatch,
                                                                             temporary_files):
    def step(self, step):
        log = self.run_log_path
        log.unlink()
        log.mkdir()  # a folder where train.log was: appending to it fails
        raise RuntimeError("injected with no train.log")

    original = CNNTrainer.intro_line

    def intro_line(self, run):
        self.run_log_path = run.log_path
        return original(self, run)

    monkeypatch.setattr(CNNTrainer, "intro_line", intro_line)
    monkeypatch.setattr(CNNTrainer, "train_step", step)
    code, out, err = main(capsys, *CNN_TINY, "--out", tmp_path)
    report = Path(crash_line(code, err))
    assert report.parent == temporary_files and "injected with no train.log" in report.read_text()
