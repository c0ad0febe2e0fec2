"""Stopping is prompt wherever the time goes: one SIGTERM or Ctrl-C during a long evaluation, the
test set's scoring, the data's preparation or a checkpoint's write ends the run within seconds,
with exit code 130, a resumable checkpoint (or, before any, no run folder) and a clear message.

Each subprocess test makes one phase long by its flags, waits for the line that announces the
phase with its estimate (which long work prints), sends one SIGTERM and times the exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from customnn.core.progress import Progress
from customnn.core.runtime import Interrupted, InterruptFlag
from customnn.train.checkpoint import load_checkpoint
from helpers import REPO, customnn_env, read_metrics, run_customnn

# Seconds from the SIGTERM to the process's end: the stop itself takes well under a second; the
# rest is writing report.md and loss.png and the interpreter's exit, slow on a loaded machine.
PROMPT_S = 12.0


def sigterm_when(argv: list, announced: str, wait_s: float = 90) -> tuple[int, float, str]:
    """Run ``python ARGV``; once a stderr line contains ``announced``, send one SIGTERM.
    Returns (exit code, seconds from the signal to the exit, stderr)."""
    proc = subprocess.Popen([sys.executable, *map(str, argv)], cwd=REPO, env=customnn_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend(proc.stderr)),
               threading.Thread(target=proc.stdout.read)]
    for r in readers:
        r.start()
    deadline = time.time() + wait_s
    while not any(announced in line for line in lines) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"ended before {announced!r} was announced: {''.join(lines)}"
    assert any(announced in line for line in lines), f"no {announced!r} after {wait_s} s: {''.join(lines)}"
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    seconds = time.time() - t0
    for r in readers:
        r.join()
    return code, seconds, "".join(lines)


def test_a_signal_abandons_only_the_work_inside_an_abandonable_region():
    with InterruptFlag() as flag:
        os.kill(os.getpid(), signal.SIGTERM)  # during a step: noted, the step goes on
        assert flag.requested
        with pytest.raises(Interrupted):  # the next evaluation is not started
            with flag.abandonable():
                pass
    with InterruptFlag() as flag:
        grad = torch.is_grad_enabled()
        with pytest.raises(Interrupted):
            with flag.abandonable():
                with torch.no_grad():
                    os.kill(os.getpid(), signal.SIGTERM)  # raised here, at the next Python operation
                    for _ in range(10**8):
                        pass
        assert flag.requested and torch.is_grad_enabled() == grad


def test_long_work_is_announced_with_its_estimate_and_short_work_is_not(capsys):
    for long_s, announced in ((0.0, True), (60.0, False)):
        progress = Progress(5, "evaluating on 5 things", "batches", quiet=True, long_s=long_s)
        for _ in range(5):
            time.sleep(0.01)
            progress.update()
        progress.close()
        err = capsys.readouterr().err
        assert ("evaluating on 5 things: 5 batches, about " in err) == announced, err
        assert progress.estimate is not None and 0.04 <= progress.estimate < 5


def test_sigterm_in_a_long_gpt_evaluation_stops_at_once_and_resumes_exactly(tmp_path):
    """The first evaluation of 2 x 3000 batches of 8 x 256 tokens takes a minute here: one SIGTERM
    ends the run in seconds, the evaluation abandoned and not recorded; the checkpoint resumes."""
    common = ["--preset", "tiny", "--block-size", "256", "--lr-decay-iters", "100", "--log-interval", "1",
              "--device", "cpu", "--quiet"]
    code, seconds, err = sigterm_when(["-m", "customnn", "train", "gpt", *common, "--eval-iters", "3000",
                                       "--out", tmp_path / "a"], "evaluating on 8 x 256 tokens a batch: 6000 batches")
    (run,) = (tmp_path / "a").iterdir()
    assert code == 130, err
    assert seconds < PROMPT_S, (seconds, err)
    assert "interrupted at step 0 during its evaluation (abandoned, not recorded)" in err
    assert f"Resume with: customnn train gpt --resume {run}" in err
    assert not (run / "metrics.jsonl").exists() or not read_metrics(run)  # the evaluation left no row
    assert load_checkpoint(run / "last.safetensors").state["engine"]["step"] == 0

    end = ["--max-iters", "4", "--eval-iters", "1"]
    r = run_customnn("train", "gpt", "--resume", run, *end, "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_customnn("train", "gpt", *common, *end, "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    (other,) = (tmp_path / "b").iterdir()
    assert losses(run) == losses(other) and len(losses(run)) == 4 + 2  # the 4 steps' rows, 2 evaluations


def losses(run: Path) -> list[tuple]:
    return [(m["kind"], m["step"], m.get("loss"), m.get("val_loss")) for m in read_metrics(run)]


def test_sigterm_in_a_long_cnn_validation_stops_at_once(tmp_path):
    """59,000 validation images through the default net, 100 at a time: one SIGTERM after the
    first epoch's 4 steps stops the run in seconds with the checkpoint of step 4."""
    code, seconds, err = sigterm_when(
        ["-m", "customnn", "train", "cnn", "--train-samples", "256", "--val-samples", "59000", "--epochs", "2",
         "--eval-batch-size", "100", "--device", "cpu", "--quiet", "--out", tmp_path],
        "evaluating on 59000 validation images: 590 batches")
    (run,) = tmp_path.iterdir()
    assert code == 130, err
    assert seconds < PROMPT_S, (seconds, err)
    assert "interrupted at step 4 (epoch 1, batch 4) during its evaluation (abandoned, not recorded)" in err
    assert [r["kind"] for r in read_metrics(run)] == ["train"]  # the evaluation left no row
    assert load_checkpoint(run / "last.safetensors").state["engine"]["step"] == 4
    assert "Validation set" not in (run / "train.log").read_text()


def test_sigterm_while_scoring_the_test_set_stops_and_resuming_scores_it(tmp_path):
    """The test set one image at a time through the default net (10,000 batches, half a minute
    and more): SIGTERM stops the run in seconds; the resumed run trains nothing more and scores
    the test set, with the weights `eval` scores."""
    code, seconds, err = sigterm_when(
        ["-m", "customnn", "train", "cnn", "--train-samples", "64", "--val-samples", "20", "--epochs", "1",
         "--eval-batch-size", "1", "--device", "cpu", "--quiet", "--out", tmp_path],
        "evaluating on 10000 test images: 10000 batches")
    (run,) = tmp_path.iterdir()
    assert code == 130, err
    assert seconds < PROMPT_S, (seconds, err)
    assert "while scoring the test set (abandoned; resuming scores it)" in err
    assert "Test set" not in (run / "train.log").read_text()
    assert "Validation set" in (run / "train.log").read_text()
    r = run_customnn("train", "cnn", "--resume", run, "--eval-batch-size", "1000", "--test-samples", "500", "--quiet")
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in (run / "train.log").read_text().splitlines() if x.startswith("Test set")]
    assert [r["kind"] for r in read_metrics(run)] == ["train", "eval", "test"]  # nothing trained again
    e = run_customnn("eval", run, "--test-samples", "500", "--quiet")
    assert e.returncode == 0 and e.stdout.strip() == line


SLOW_TOKENIZING = """
import sys
import customnn.core.progress, customnn.data.tokens
customnn.data.tokens.PIECE_BYTES = 64  # the real reading and tokenizing, in pieces small enough to make it long
customnn.core.progress.LONG_S = 0.01
from customnn.commands.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_tokenizing_the_text_stops_at_once_without_a_run_folder(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 50_000)  # 2.15 MB
    out = tmp_path / "runs"
    env_cache = tmp_path / "tokens"
    code, seconds, err = sigterm_when(["-c", SLOW_TOKENIZING, "train", "gpt", "--preset", "tiny", "--text", text,
                                       "--data-dir", env_cache, "--device", "cpu", "--quiet", "--out", out],
                                      "tokenizing the train split: ")
    assert code == 130, err
    assert seconds < PROMPT_S, (seconds, err)
    assert "interrupted while preparing the data and the model; nothing was trained, no run folder was made" in err
    assert "Traceback" not in err
    assert not out.exists() or not list(out.iterdir())
    assert not any(p.name.endswith(".tokens") for p in env_cache.rglob("*"))  # no cache trusted later


def test_sigterm_during_a_checkpoint_write_lets_it_finish_and_stops_after_it(tmp_path, monkeypatch):
    """The write under way completes (atomically) and is the one the stop keeps: not written twice."""
    from customnn.train import engine
    from customnn.train.gpt import make_config, train

    saved = []
    real = engine.save_checkpoint

    def save_under_a_signal(path, *args, **kwargs):
        if not saved:
            os.kill(os.getpid(), signal.SIGTERM)
        real(path, *args, **kwargs)
        saved.append((Path(path).name, load_checkpoint(path).state["engine"]["step"]))

    monkeypatch.setattr(engine, "save_checkpoint", save_under_a_signal)
    result = train(make_config("tiny", out=str(tmp_path), max_iters=20, eval_interval=5, device="cpu"), quiet=True)
    assert result["interrupted"] and result["step"] == 0
    assert saved == [("best.safetensors", 0), ("last.safetensors", 0)]  # the evaluation's saves, nothing after
    assert load_checkpoint(Path(result["run_dir"]) / "last.safetensors").state["engine"]["evaluated_at"] == 0


def test_a_stop_in_a_nanogpt_rng_evaluation_leaves_the_shared_stream_as_it_was(tmp_path, monkeypatch):
    """With --nanogpt-rng the evaluations draw from the training stream: one abandoned halfway
    puts the stream back, so that the resumed run evaluates and trains as an uninterrupted one."""
    from customnn.train import gpt
    from customnn.train.gpt import make_config, train

    common = dict(max_iters=12, lr_decay_iters=12, eval_interval=6, eval_iters=3, log_interval=1, nanogpt_rng=True,
                  device="cpu")
    full = train(make_config("tiny", **common, out=str(tmp_path / "full")), quiet=True)
    calls, real = [], gpt.get_batch

    def get_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6 + 4:  # the evaluation at step 0 draws 6 batches; stop in the middle of step 6's
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(gpt, "get_batch", get_batch)
    part = train(make_config("tiny", **common, out=str(tmp_path / "part")), quiet=True)
    assert part["interrupted"] and part["step"] == 6 and [r["step"] for r in part["evals"]] == [0]
    monkeypatch.setattr(gpt, "get_batch", real)
    resumed = train(make_config("tiny", **common, resume=str(part["run_dir"])), quiet=True)
    assert losses(Path(resumed["run_dir"])) == losses(Path(full["run_dir"]))
