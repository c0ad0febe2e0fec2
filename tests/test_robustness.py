"""Nothing lost, nothing let in (issue 6): faults, interruptions and bad input, end to end.

- crash safety: a real GPT training process is SIGKILLed at random moments while it saves a
  checkpoint every two steps; what is left always loads, ``customnn eval`` reads it, and
  resuming after every kill gives exactly the losses of an uninterrupted run. A failed save
  (disk full) reports the error in one line and keeps the last good checkpoint, from which
  the run resumes. Temporary files left by a killed writer are removed on resume.
- divergence: ``--lr 1e6`` stops both models with the step number and advice, exit 2, and
  the checkpoints saved before it are byte-for-byte what they were.
- untrusted files: every command that reads a checkpoint (eval, generate, predict) refuses the
  other model's, truncated, random, empty, pickled, forged and reshaped files with one line on
  stderr and exit code 2; a pickle is never unpickled (its payload would create a file).
- bad arguments and inputs of every command: one line, exit 2, no run folder left behind.

Ctrl-C then ``--resume`` equal to an uninterrupted run is in tests/test_cli_cnn.py (CNN) and
tests/test_gpt_train.py (GPT); the checkpoint format's unit tests are in tests/test_checkpoint.py.
Most command-line cases call ``customnn.commands.cli.main`` in this process (a ``python -m customnn``
start costs seconds); a few go through a real process to prove the same there.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as st_save

from customnn.core.errors import UserError
from customnn.train import checkpoint as ckptmod
from customnn.train.cnn import CNNTrainConfig
from customnn.train.cnn import train as train_cnn
from customnn.train.gpt import make_config
from customnn.train.gpt import train as train_gpt
from customnn.train.checkpoint import load_checkpoint
from customnn.train.rundir import RunDir
from helpers import REPO, customnn_env, run_customnn

CNN_TINY = dict(arch="seed", train_samples=256, test_samples=100, batch_size=64, device="cpu")


@pytest.fixture(autouse=True)
def offline(monkeypatch, one_thread):
    """No test here may reach the network (the processes started by run_customnn inherit this);
    one thread (conftest): the models are tiny."""
    monkeypatch.setenv("CUSTOMNN_OFFLINE", "1")


def main(capsys, *args) -> tuple[int, str, str]:
    """``customnn ARGS`` in this process: (exit code, stdout, stderr). A traceback would fail the test."""
    from customnn.commands.cli import main as cli_main

    capsys.readouterr()
    try:
        code = cli_main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments) -> None:
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("customnn"), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def losses_of(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "train_time")} for r in rows]


def snapshot_saves(monkeypatch, module: str) -> dict[str, bytes]:
    """Record the bytes of every checkpoint ``module`` saves, by file name, as it saves them."""
    saved: dict[str, bytes] = {}
    real = ckptmod.save_checkpoint

    def recording(path, *a, **k):
        real(path, *a, **k)
        saved[Path(path).name] = Path(path).read_bytes()

    monkeypatch.setattr(f"{module}.save_checkpoint", recording)
    return saved


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained CNN run, a tiny trained GPT run, and a digit picture."""
    out = tmp_path_factory.mktemp("runs")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cnn = train_cnn(CNNTrainConfig(**CNN_TINY, epochs=1, out=str(out)), quiet=True)["run_dir"]
        gpt = train_gpt(make_config("tiny", out=str(out), max_iters=10, eval_interval=10, device="cpu"),
                        quiet=True)["run_dir"]
    finally:
        torch.set_num_threads(n)
    image = out / "seven.png"
    canvas = Image.new("L", (60, 60), 0)
    canvas.paste(Image.new("L", (30, 6), 255), (15, 10))
    canvas.paste(Image.new("L", (6, 40), 255), (39, 10))
    canvas.save(image)
    return {"cnn": Path(cnn), "gpt": Path(gpt), "image": image}


# --- crash safety ----------------------------------------------------------------------------------
def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_step(path: Path) -> int:
    try:
        return int(load_checkpoint(path).meta["step"])
    except UserError:  # not there yet
        return -1


def kill_during_a_save(proc: subprocess.Popen, run: Path, timeout: float = 30) -> bool:
    """SIGKILL ``proc`` the moment one of its temporary checkpoint files appears in ``run``;
    True if the kill left it there (the process died in the middle of a save)."""
    pattern = f".*.tmp-{proc.pid}"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not any(run.glob(pattern)):
        time.sleep(0.0005)
    proc.kill()
    proc.wait()
    return any(run.glob(pattern))


def test_sigkill_during_training_leaves_a_loadable_checkpoint_and_resume_is_exact(tmp_path):
    """Kill a real training process (-9) while it saves a checkpoint every two steps, in the middle
    of a save and at random moments; after each kill the last checkpoint loads and the run resumes;
    in the end the losses are exactly those of a run never killed."""
    iters = 400  # enough that four sessions, each killed within half a second, end before it
    args = ["train", "gpt", "--preset", "tiny", "--max-iters", iters, "--eval-interval", 2, "--eval-iters", 1,
            "--log-interval", 1, "--device", "cpu", "--quiet"]
    rng = random.Random(6)
    cmd = [*args, "--out", tmp_path / "killed"]
    run, last_step, kills_mid_run, kills_mid_save = None, -1, 0, 0
    for session in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "customnn", *map(str, cmd)], cwd=REPO, env=customnn_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if run is None:
            run = wait_for(lambda: next((tmp_path / "killed").glob("gpt-*"), None), 60, "the run folder")
        # training under way in this process: a checkpoint newer than the one it started from
        wait_for(lambda: checkpoint_step(run / "last.safetensors") > last_step or proc.poll() is not None, 60,
                 "a new checkpoint")
        if session % 2:
            kills_mid_save += kill_during_a_save(proc, run)
        else:
            time.sleep(rng.uniform(0.0, 0.5))
            proc.kill()
            proc.wait()
        ckpt = load_checkpoint(run / "last.safetensors")  # never damaged
        step = int(ckpt.meta["step"])
        assert step >= last_step and step % 2 == 0
        assert all(torch.isfinite(t).all() for t in ckpt.model_state.values())
        kills_mid_run += step < iters
        last_step = step
        cmd = ["train", "gpt", "--resume", run, "--quiet"]
    assert kills_mid_run >= 3, "the kills came after training ended; the test proves little"
    assert kills_mid_save >= 1, "no kill landed in the middle of a save; the test proves little"

    p = run_customnn("eval", run, "--checkpoint", "last", "--eval-iters", 1)  # what is left is usable
    assert p.returncode == 0 and p.stdout.startswith(f"step {last_step}: train loss"), p.stderr
    p = run_customnn(*cmd)
    assert p.returncode == 0, p.stderr
    assert not list(run.glob(".*.tmp-*"))  # a killed writer's temporary files are gone
    p = run_customnn(*args, "--out", tmp_path / "whole")
    assert p.returncode == 0, p.stderr
    whole = next((tmp_path / "whole").iterdir())
    assert losses_of(run) == losses_of(whole)
    assert load_checkpoint(run / "last.safetensors").meta["step"] == iters


def test_resume_removes_the_temporary_files_of_a_killed_writer(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.safetensors.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".best.safetensors.tmp-{os.getpid()}"  # a writer still running: kept
    live.write_bytes(b"being written")
    (tmp_path / "config.json").write_text("{}")
    RunDir.open(tmp_path)
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("model", ["cnn", "gpt"])
def test_failed_save_during_training_reports_it_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                                    capsys, model):
    """The disk fills up when a checkpoint is replaced: one-line error, exit 2, the previous
    checkpoint unchanged and loadable, no temporary file left, and the run resumes from it."""
    real = ckptmod.atomic_write_bytes
    state = {"replaced": 0, "kept": None}

    def disk_full_on_the_second_replacement(path, data):
        path = Path(path)
        if path.name == "last.safetensors" and path.exists():
            state["replaced"] += 1
            if state["replaced"] == 2:
                state["kept"] = path.read_bytes()
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(ckptmod, "atomic_write_bytes", disk_full_on_the_second_replacement)
    if model == "cnn":
        args = ["train", "cnn", "--arch", "seed", "--train-samples", 256, "--test-samples", 100, "--epochs", 3,
                "--device", "cpu", "--quiet"]
    else:
        args = ["train", "gpt", "--preset", "tiny", "--max-iters", 30, "--eval-interval", 10, "--device", "cpu",
                "--quiet"]
    code, _, err = main(capsys, *args, "--out", tmp_path)
    assert_one_line_error(code, err, "could not save checkpoint", "No space left on device",
                          "previous checkpoint", "kept")
    monkeypatch.undo()
    (run,) = tmp_path.iterdir()
    last = run / "last.safetensors"
    assert last.read_bytes() == state["kept"]
    step = load_checkpoint(last).meta["step"]
    assert step == (2 * 4 if model == "cnn" else 10)  # the second epoch's / evaluation's checkpoint

    code, _, err = main(capsys, "train", model, "--resume", run, "--quiet")
    assert code == 0, err
    done = load_checkpoint(last).meta["step"]
    assert done == (3 * 4 if model == "cnn" else 30) and done > step


# --- divergence ------------------------------------------------------------------------------------
def test_cnn_divergence_stops_with_the_step_and_keeps_the_checkpoint_saved_before(tmp_path, monkeypatch, capsys):
    saved = snapshot_saves(monkeypatch, "customnn.train.engine")
    code, out, err = main(capsys, "train", "cnn", "--arch", "seed", "--train-samples", 256, "--test-samples", 100,
                          "--lr", "1e6", "--save-interval", "1e-9", "--device", "cpu", "--quiet", "--out", tmp_path)
    assert_one_line_error(code, err, "training diverged at step 2 ", "try a lower --lr", "kept as it was")
    assert list(saved) == ["last.safetensors"]  # saved after step 1, before the loss blew up at step 2
    (run,) = tmp_path.iterdir()
    assert (run / "last.safetensors").read_bytes() == saved["last.safetensors"]
    assert load_checkpoint(run / "last.safetensors").meta["step"] == 1
    assert "diverged at step 2" in (run / "train.log").read_text()


def test_gpt_divergence_stops_with_the_step_and_keeps_the_checkpoints_saved_before(tmp_path, monkeypatch, capsys):
    saved = snapshot_saves(monkeypatch, "customnn.train.engine")
    code, out, err = main(capsys, "train", "gpt", "--preset", "tiny", "--lr", "1e6", "--warmup-iters", 0,
                          "--eval-interval", 1, "--eval-iters", 1, "--device", "cpu", "--quiet", "--out", tmp_path)
    assert_one_line_error(code, err, "training diverged at step ", "try a lower --lr", "--lr 1e+06", "kept as it was")
    step = int(err.split("diverged at step ")[1].split(":")[0])  # the step that failed, counting from 1
    assert step >= 2  # at least one checkpoint (the evaluation at step 0) came before
    (run,) = tmp_path.iterdir()
    assert set(saved) == {"best.safetensors", "last.safetensors"}
    for name, data in saved.items():
        assert (run / name).read_bytes() == data, name
    assert load_checkpoint(run / "last.safetensors").meta["step"] == step - 1  # the evaluation just before


def test_divergence_through_a_real_process(tmp_path):
    p = run_customnn("train", "gpt", "--preset", "tiny", "--lr", "1e6", "--device", "cpu", "--quiet", "--out", tmp_path)
    assert_one_line_error(p.returncode, p.stderr, "training diverged at step", "try a lower --lr")


# --- untrusted checkpoints ---------------------------------------------------------------------------
class Payload:
    """Unpickling this creates the file at ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def forge(src: Path, dst: Path, tensors=None, meta=None) -> Path:
    """Rewrite checkpoint ``src`` to ``dst`` with its tensors and/or metadata changed, as a valid
    safetensors file with the same layout (``tensors(dict)``, ``meta(dict)`` mutate in place)."""
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
        data = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(metadata["customnn"])
    if tensors is not None:
        tensors(data)
    if meta is not None:
        meta(header)
    dst.write_bytes(st_save(data, metadata={"customnn": json.dumps(header)}))
    return dst


def bad_checkpoints(folder: Path, runs, model: str) -> dict[str, tuple[Path, str]]:
    """Damaged or foreign files standing in for a ``model`` checkpoint: name -> (path, expected message)."""
    good = runs[model] / "last.safetensors"
    data = good.read_bytes()
    other = runs["gpt" if model == "cnn" else "cnn"] / "last.safetensors"
    folder.mkdir(exist_ok=True)
    cases = {}

    def add(name, payload, message):
        path = folder / f"{name}.safetensors"
        path.write_bytes(payload)
        cases[name] = (path, message)

    unreadable = "is not a readable customnn checkpoint"
    add("truncated", data[: len(data) // 2], unreadable)
    add("truncated-header", data[:50], unreadable)
    add("random", random.Random(1).randbytes(4096), unreadable)
    add("empty", b"", unreadable)
    add("huge-header-length", (2**62).to_bytes(8, "little") + data[8:], unreadable)
    add("pickle", pickle.dumps({"w": Payload(folder / "PWNED")}), unreadable)
    torch_zip = folder / "torch.pt"
    torch.save({"w": Payload(folder / "PWNED")}, torch_zip)  # torch.load(weights_only=False) would run it
    add("torch-save-zip", torch_zip.read_bytes(), unreadable)
    add("gzip", gzip.compress(data), unreadable)
    add("plain-safetensors", st_save({"w": torch.zeros(3)}), unreadable)
    cases["other-model"] = (other, "not a GPT" if model == "gpt" else "not a CNN")
    weight = "model.wte" if model == "gpt" else "model.fc.weight"

    def reshape(t):
        t[weight] = t[weight][:-1].clone()

    def widen(t):
        t[weight] = t[weight].double()

    def drop(t):
        del t[weight]

    def extra(t):
        t["model.backdoor"] = torch.zeros(3)

    for name, change, message in (("reshaped", reshape, "shape"), ("float64", widen, "dtype torch.float"),
                                  ("missing-tensor", drop, "missing"), ("extra-tensor", extra, "unexpected")):
        cases[name] = (forge(good, folder / f"{name}.safetensors", tensors=change), message)

    def bump_version(h):
        h["version"] = 99

    def drop_state_tensor(h):
        h["state"] = {"__tensor__": "state.nowhere"}

    cases["future-version"] = (forge(good, folder / "v99.safetensors", meta=bump_version), "version 99")
    cases["dangling-state"] = (forge(good, folder / "dangling.safetensors", meta=drop_state_tensor),
                               "tensor state.nowhere is missing")
    return cases


def test_the_pickle_payload_is_live(tmp_path):
    """The control: unpickling the payload does create its file, so its absence below means something."""
    pickle.loads(pickle.dumps(Payload(tmp_path / "control"))).close()
    assert (tmp_path / "control").exists()


@pytest.mark.parametrize("command", ["eval", "generate", "predict"])
def test_commands_refuse_damaged_foreign_and_forged_checkpoints_in_one_line(tmp_path, runs, capsys, command):
    model = "gpt" if command == "generate" else "cnn"
    extra = {"eval": ["--test-samples", 10, "--eval-iters", 1], "generate": ["--prompt", "A"],
             "predict": [runs["image"]]}[command]
    cases = bad_checkpoints(tmp_path / "files", runs, model)
    if command == "eval":  # eval takes either model: the other model's checkpoint is fine, a lie is not
        def claim_cnn(h):
            h["model"] = "cnn"

        def claim_rnn(h):
            h["model"] = "rnn"

        del cases["other-model"]
        cases["gpt-claiming-cnn"] = (forge(runs["gpt"] / "last.safetensors", tmp_path / "gc.safetensors",
                                           meta=claim_cnn), "not a CNN checkpoint")
        cases["unknown-kind"] = (forge(runs["cnn"] / "last.safetensors", tmp_path / "rnn.safetensors",
                                       meta=claim_rnn), "unknown model kind 'rnn'")
    for name, (path, message) in cases.items():
        code, out, err = main(capsys, command, path, *extra, "--device", "cpu")
        assert_one_line_error(code, err, message)
        assert str(path) in err, (name, err)
        assert out == "", (name, out)
    assert not (tmp_path / "files" / "PWNED").exists()  # nothing was ever unpickled
    code, out, err = main(capsys, command, runs[model], *extra, "--device", "cpu")  # the good one works
    assert code == 0 and out, err


def test_untrusted_files_through_real_processes(tmp_path, runs):
    cases = bad_checkpoints(tmp_path, runs, "cnn")
    for command, case, extra in (("predict", "pickle", [runs["image"]]), ("eval", "reshaped", []),
                                 ("generate", "random", ["--prompt", "A"])):
        path, message = cases[case]
        p = run_customnn(command, path, *extra)
        assert_one_line_error(p.returncode, p.stderr, message)
    assert not (tmp_path / "PWNED").exists()
    p = run_customnn("generate", runs["cnn"], "--prompt", "A")  # the other model's checkpoint
    assert_one_line_error(p.returncode, p.stderr, "not a GPT")


# --- bad arguments and inputs ------------------------------------------------------------------------
def test_bad_arguments_of_every_command_are_one_line_errors(tmp_path, runs, capsys):
    cnn, gpt, image = runs["cnn"], runs["gpt"], runs["image"]
    empty = tmp_path / "empty-data"
    empty.mkdir()
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 100)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "short.txt").write_text("To be.\n")
    (tmp_path / "notes.png").write_text("not a picture")
    png = image.read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "folder.png").mkdir()
    no_ckpt = tmp_path / "no-checkpoint-run"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text("{}")
    out = ["--out", tmp_path / "runs"]
    tiny_cnn = ["train", "cnn", "--arch", "seed", "--train-samples", 256, "--test-samples", 100, *out]
    tiny_gpt = ["train", "gpt", "--preset", "tiny", *out]
    gen = ["generate", gpt, "--max-new-tokens", 5]
    cuda = [] if torch.cuda.is_available() else [
        ([*tiny_cnn, "--device", "cuda"], "no CUDA GPU"), ([*tiny_gpt, "--device", "cuda"], "no CUDA GPU"),
        (["eval", cnn, "--device", "cuda"], "no CUDA GPU"), ([*gen, "--device", "cuda"], "no CUDA GPU"),
        (["predict", cnn, image, "--device", "cuda"], "no CUDA GPU")]
    offline = "downloads are off"
    cases = [
        # train cnn
        ([*tiny_cnn, "--epochs", 0], "--epochs must be >= 1, got 0"),
        ([*tiny_cnn, "--epochs", -3], "--epochs must be >= 1, got -3"),
        ([*tiny_cnn, "--batch-size", 1000], "--batch-size 1000 is larger than the 256 training images"),
        ([*tiny_cnn, "--train-samples", 70000], "more than the 55000 training images left after --val-samples"),
        ([*tiny_cnn, "--val-samples", 60000], "--val-samples 60000 leaves no training images"),
        ([*tiny_cnn, "--lr", "nan"], "--lr must be a positive number"),
        ([*tiny_cnn, "--lr", "-1"], "--lr must be a positive number"),
        ([*tiny_cnn, "--save-interval", 0], "--save-interval must be a number of seconds > 0"),
        (["train", "cnn", "--arch", "resnet"], "invalid choice: 'resnet'"),
        ([*tiny_cnn, "--data-dir", empty], "mnist/train-images-idx3-ubyte.gz"),
        ([*tiny_cnn, "--seed", 2**64], "--seed must be an integer between -9223372036854775808 and "),
        (["train", "cnn", "--resume", tmp_path / "missing"], "run folder not found"),
        (["train", "cnn", "--resume", no_ckpt], "nothing to resume"),
        (["train", "cnn", "--resume", gpt], "not a CNN training checkpoint"),
        (["train", "cnn", "--resume", cnn, "--width", 5], "--width cannot change when resuming"),
        # train gpt
        ([*tiny_gpt, "--max-iters", 0], "--max-iters must be >= 1, got 0"),
        ([*tiny_gpt, "--max-iters", -1], "--max-iters must be >= 1"),
        ([*tiny_gpt, "--batch-size", 0], "--batch-size must be >= 1"),
        (["train", "gpt", "--preset", "huge"], "invalid choice: 'huge'"),
        ([*tiny_gpt, "--text", tmp_path / "latin1.txt"], "is not UTF-8 text"),
        ([*tiny_gpt, "--text", tmp_path / "empty.txt"], "is empty"),
        ([*tiny_gpt, "--text", tmp_path / "short.txt"], "is too short"),
        ([*tiny_gpt, "--text", tmp_path / "nothing.txt"], "text file not found"),
        ([*tiny_gpt, "--data-dir", empty], "tinyshakespeare/input.txt"),
        ([*tiny_gpt, "--lr", "inf"], "--lr must be a finite number"),
        ([*tiny_gpt, "--seed", -2**63 - 1], "--seed must be an integer between"),
        ([*tiny_gpt, "--eval-iters", 10**6], "--eval-iters must be <= 10000, got 1000000"),
        (["train", "gpt", "--resume", tmp_path / "missing"], "run folder not found"),
        (["train", "gpt", "--resume", gpt, "--n-embd", 64], "--n-embd cannot change when resuming"),
        # eval
        (["eval", tmp_path / "missing"], "run folder or checkpoint not found"),
        (["eval", no_ckpt], "no checkpoint in run folder"),
        (["eval", cnn, "--test-samples", 0], "--test-samples must be between 1 and 10000"),
        (["eval", cnn, "--batch-size", 0], "--batch-size must be >= 1"),
        (["eval", cnn, "--data-dir", empty], "mnist/t10k-images-idx3-ubyte.gz"),
        (["eval", gpt, "--data-dir", empty], "tinyshakespeare/input.txt"),
        (["eval", gpt, "--eval-iters", 0], "--eval-iters must be between 1 and 10000, got 0"),
        (["eval", gpt, "--text", tmp_path / "latin1.txt"], "is not UTF-8 text"),
        (["eval", gpt, "--text", tmp_path / "empty.txt"], "is empty"),
        (["eval", "--checkpoint", "middle", cnn], "invalid choice: 'middle'"),
        (["eval", tmp_path / "two\nlines\u2028and\rmore"],  # a message stays one line, whatever the file name
         "not found: " + str(tmp_path / "two\\nlines\\u2028and\\rmore")),
        (["train", "cnn", "--arch", "a\nb"], "invalid choice: 'a\\nb'"),
        # generate
        ([*gen, "--prompt", "naïve"], "character 'ï' (U+00EF) at position 2 is not in the model's vocabulary"),
        ([*gen, "--prompt", ""], "--prompt is empty"),
        ([*gen, "--seed", 2**64], "--seed must be an integer between"),
        ([*gen, "--max-new-tokens", -1], "--max-new-tokens must be >= 0, got -1"),
        ([*gen, "--temperature", -0.5], "--temperature must be a finite number >= 0"),
        ([*gen, "--temperature", "nan"], "--temperature must be a finite number >= 0"),
        ([*gen, "--temperature", "inf"], "--temperature must be a finite number >= 0"),
        ([*gen, "--top-k", 0], "--top-k must be >= 1, got 0"),
        ([*gen, "--top-p", 1.5], "--top-p must be in (0, 1]"),
        ([*gen, "--top-p", 0], "--top-p must be in (0, 1]"),
        (["generate", tmp_path / "missing"], "run folder or checkpoint not found"),
        (["generate", no_ckpt], "no checkpoint in run folder"),
        # predict
        (["predict", cnn, tmp_path / "missing.png"], "image not found"),
        (["predict", cnn, tmp_path / "notes.png"], "is not an image"),
        (["predict", cnn, tmp_path / "cut.png"], "cannot read image"),
        (["predict", cnn, tmp_path / "folder.png"], "image not found"),
        (["predict", cnn, image, tmp_path / "notes.png"], "notes.png"),  # one bad among good ones
        (["predict", tmp_path / "missing", image], "run folder or checkpoint not found"),
        (["predict", cnn], "the following arguments are required: IMAGE"),
        # the command itself
        (["fly"], "invalid choice: 'fly'"),
        (["train", "rnn"], "invalid choice: 'rnn'"),
        *cuda,
    ]
    failures = []
    for args, message in cases:
        code, stdout, err = main(capsys, *args)
        lines = err.strip().splitlines()
        if code != 2 or len(lines) != 1 or message not in lines[0] or "Traceback" in err:
            failures.append((args, code, err))
        if args[0] == "predict":
            assert stdout == "", (args, stdout)  # a bad picture stops the command before any output
    assert not failures, failures
    assert not (tmp_path / "runs").exists()  # no error left a run folder behind

    code, out, err = main(capsys, *tiny_cnn, "--data-dir", empty)
    assert offline in err and str(empty) in err and "--data-dir" in err and "CUSTOMNN_DATA" in err
    assert "put the file at " + str(empty / "mnist" / "train-images-idx3-ubyte.gz") in err
    code, out, err = main(capsys, *gen, "--temperature", 0, "--prompt", "A")  # 0 is greedy, not an error
    assert code == 0 and out.startswith("A") and len(out) == 1 + 5 + 1, err


def test_bad_arguments_through_real_processes(tmp_path, runs):
    empty = tmp_path / "data"
    empty.mkdir()
    p = run_customnn("train", "cnn", "--epochs", 0)
    assert_one_line_error(p.returncode, p.stderr, "--epochs must be >= 1")
    p = run_customnn("eval", runs["cnn"], "--data-dir", empty)  # offline and no data: the message says how to fix it
    assert_one_line_error(p.returncode, p.stderr, "data file mnist/t10k-images-idx3-ubyte.gz not found in "
                          f"{empty} (--data-dir)", "put the file at", "$CUSTOMNN_DATA")
    p = run_customnn("generate", runs["gpt"], "--top-k", 0)
    assert_one_line_error(p.returncode, p.stderr, "--top-k must be >= 1")
    assert p.stdout == ""


# --- forged metadata: whatever a checkpoint's JSON says, a clear error or a working command -----------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6) | st.sampled_from(["cnn", "gpt", "seed", "default", "__tensor__", "__dict__"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["__tensor__", "__dict__", "arch", "width", "model", "x"]), inner, max_size=3),
    max_leaves=6)
CNN_META_PLACES = [("model",), ("config",), ("config", "arch"), ("config", "width"), ("config", "dropout"),
                   ("config", "seed"), ("state",), ("step",), ("version",), ("format",)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(place=st.sampled_from(CNN_META_PLACES), value=JSON_VALUES, command=st.sampled_from(["predict", "eval"]),
       claim_default=st.booleans())
def test_forged_cnn_metadata_gives_a_clear_error_or_a_working_command(runs, capsys, place, value, command,
                                                                      claim_default):
    def change(header):
        if claim_default:  # the default net reads width and dropout from the configuration
            header["config"]["arch"] = "default"
        target = header
        for key in place[:-1]:
            target = target[key]
        target[place[-1]] = value

    path = forge(runs["cnn"] / "last.safetensors", runs["image"].parent / "forged.safetensors", meta=change)
    extra = [runs["image"]] if command == "predict" else ["--test-samples", 10]
    code, out, err = main(capsys, command, path, *extra, "--device", "cpu")  # any other exception fails here
    assert code in (0, 2), (code, err)
    if code == 2:
        assert_one_line_error(code, err)
        assert out == ""


GPT_META_PLACES = [("config", k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout",
                                           "bias", "tie_weights")] + [
    ("vocab",), ("config",), ("train_config",), ("train_config", "text"), ("train_config", "data_dir"),
    ("train_config", "batch_size"), ("train_config", "eval_iters"), ("train_config", "seed"), ("step",)]
SMALL = st.none() | st.booleans() | st.integers(-3, 80) | st.floats(allow_nan=True) | st.text(max_size=4) | \
    st.lists(st.integers(0, 3), max_size=2)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(place=st.sampled_from(GPT_META_PLACES), value=SMALL | JSON_VALUES,
       command=st.sampled_from(["generate", "eval"]))
def test_forged_gpt_metadata_gives_a_clear_error_or_a_working_command(runs, capsys, place, value, command):
    def change(header):
        target = header
        for key in place[:-1]:
            target = target[key]
        target[place[-1]] = value

    path = forge(runs["gpt"] / "last.safetensors", runs["image"].parent / "forged-gpt.safetensors", meta=change)
    extra = ["--prompt", "A", "--max-new-tokens", 3] if command == "generate" else ["--eval-iters", 1]
    code, out, err = main(capsys, command, path, *extra, "--device", "cpu")  # any other exception fails here
    assert code in (0, 2), (code, err)
    if code == 2:
        assert_one_line_error(code, err)
        assert out == ""


def test_forged_gpt_training_values_read_by_eval_are_refused(runs, capsys):
    """The values ``customnn eval`` takes from the checkpoint's train_config when no flag gives them."""
    cases = [("train_config", None, "train_config is NoneType, not a mapping"),
             ("text", 3, "train_config.text 3 is not a path"),
             ("batch_size", 2**40, "train_config.batch_size 1099511627776 is not an integer in 1..4096"),
             ("batch_size", True, "train_config.batch_size True is not an integer"),
             ("eval_iters", 0, "train_config.eval_iters 0 is not an integer in 1..10000"),
             ("eval_iters", 10**9, "train_config.eval_iters 1000000000 is not an integer in 1..10000"),
             ("seed", 2**70, "train_config.seed"), ("seed", 1.5, "train_config.seed 1.5")]
    for key, value, message in cases:
        def change(header):
            if key == "train_config":
                header[key] = value
            else:
                header["train_config"][key] = value

        path = forge(runs["gpt"] / "last.safetensors", runs["image"].parent / "forged-tc.safetensors", meta=change)
        code, out, err = main(capsys, "eval", path, "--device", "cpu")
        assert_one_line_error(code, err, str(path), "checkpoint is damaged", message)


def test_a_forged_gpt_size_is_refused_before_anything_is_allocated(runs, capsys, monkeypatch):
    import customnn.train.gpt as gpt_train  # where the text task's checkpoints become models

    def huge(header):  # 2**20 x 2**20 position table: 4 TB
        header["config"]["n_embd"] = header["config"]["block_size"] = 2**20

    def deep(header):  # a million blocks of the stored width: state_shapes() alone would take minutes
        header["config"]["n_layer"] = 10**6

    def no_model(*args, **kwargs):
        raise AssertionError("a GPT was built from a forged configuration")

    monkeypatch.setattr(gpt_train, "GPT", no_model)
    folder = runs["image"].parent
    for name, forgery, message in (("huge", huge, "wte: shape (65, 32) in the checkpoint, (65, 1048576) from the configuration (and "),
                                   ("deep", deep, "n_layer 1000000, but tensors of 2 blocks")):
        path = forge(runs["gpt"] / "last.safetensors", folder / f"{name}-gpt.safetensors", meta=forgery)
        for command in (["generate", path, "--prompt", "A"], ["eval", path, "--eval-iters", 1]):
            code, out, err = main(capsys, *command, "--device", "cpu")
            assert_one_line_error(code, err, str(path), "do not match its configuration", message)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tie", [True, False])
def test_the_shapes_a_checkpoint_is_checked_against_are_the_models(bias, tie):
    from customnn.models.gpt import GPT, GPTConfig

    config = GPTConfig(vocab_size=7, block_size=6, n_layer=3, n_head=2, n_embd=8, bias=bias, tie_weights=tie)
    assert config.state_shapes() == {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}


def _state_entry(header: dict, key: str, parent: bool = False) -> list:
    """The ``[key, value]`` pair of the checkpoint's training-state skeleton (``flatten_state``) at
    a dotted path (``engine.step``); with ``parent``, the skeleton that holds it."""
    node = header["state"]
    *outer, last = key.split(".")
    for name in outer:
        node = next(pair for pair in node["__dict__"] if pair[0] == name)[1]
    return node if parent else next(pair for pair in node["__dict__"] if pair[0] == last)


def _set_state(key, value):
    def change(header):
        _state_entry(header, key)[1] = value
    return change


def _drop_state(key):
    def change(header):
        _state_entry(header, key, parent=True)["__dict__"].remove(_state_entry(header, key))
    return change


def _set_in_optimizer_group(key, value):
    def change(header):
        groups = next(v for k, v in _state_entry(header, "optimizer")[1]["__dict__"] if k == "param_groups")
        next(pair for pair in groups[0]["__dict__"] if pair[0] == key)[1] = value
    return change


def _replace_state(value):
    def change(header):
        header["state"] = value
    return change


DAMAGED_STATES = {
    "no-step": _drop_state("engine.step"), "step-text": _set_state("engine.step", "10"),
    "negative-step": _set_state("engine.step", -1), "step-float": _set_state("engine.step", 2.5),
    "best-val-text": _set_state("engine.best", "low"), "elapsed-null": _set_state("engine.elapsed", None),
    "elapsed-infinite": _set_state("engine.elapsed", float("inf")),
    "total-steps-list": _set_state("engine.total_steps", [1]), "no-engine": _drop_state("engine"),
    "evals-text": _set_state("engine.evals", "many"), "no-trainer": _drop_state("trainer"),
    "evaluated-after-step": _set_state("engine.evaluated_at", 10**6), "optimizer-number": _set_state("optimizer", 3),
    "optimizer-empty": _set_state("optimizer", {"__dict__": []}), "no-optimizer": _drop_state("optimizer"),
    "eps-text": _set_in_optimizer_group("eps", "tiny"), "betas-changed": _set_in_optimizer_group("betas", [0.5, 0.5]),
    "rng-empty": _set_state("rng", {"__dict__": []}), "rng-python-garbage": None,
    "state-list": _replace_state([1, 2]), "state-text": _replace_state("state"),
    "next-batch-text": _set_state("trainer.next_batch", "abc"),
    "next-batch-list": _set_state("trainer.next_batch", [1, 2]),
    "next-batch-bytes": _set_state("trainer.next_batch", {"__tensor__": "state.rng.torch"}),  # a uint8 tensor of the file
}


@pytest.mark.parametrize("damage", list(DAMAGED_STATES))
def test_gpt_resume_from_a_damaged_training_state_is_a_one_line_error(tmp_path, runs, capsys, damage):
    import shutil

    run = shutil.copytree(runs["gpt"], tmp_path / "run")
    last = run / "last.safetensors"
    change = DAMAGED_STATES[damage]
    if change is None:  # the Python RNG's state is a repr read back by ast.literal_eval
        rng = _state_entry(json.loads(safe_open(str(last), "pt").metadata()["customnn"]), "rng")[1]
        python = next(pair for pair in rng["__dict__"] if pair[0] == "python")

        def change(header):
            next(pair for pair in _state_entry(header, "rng")[1]["__dict__"] if pair[0] == "python")[1] = \
                python[1][:-5] + "((("
    forge(last, last, meta=change)
    before = last.read_bytes()
    code, out, err = main(capsys, "train", "gpt", "--resume", run, "--quiet")
    if damage in ("state-list", "state-text", "no-engine"):  # the checks of the state as a whole
        assert_one_line_error(code, err, str(last))
    else:
        assert_one_line_error(code, err, f"cannot resume from {last}: its training state is damaged")
    assert last.read_bytes() == before  # nothing was saved over it


@pytest.mark.parametrize("offsets", ["past-the-text", "negative", "wrong-count"])
def test_gpt_resume_refuses_next_batch_offsets_outside_the_text(tmp_path, runs, capsys, offsets):
    import shutil

    run = shutil.copytree(runs["gpt"], tmp_path / "run")
    last = run / "last.safetensors"

    def change(tensors):
        ix = tensors["state.trainer.next_batch"]
        tensors["state.trainer.next_batch"] = {"past-the-text": ix + 10**9, "negative": ix - 10**9,
                                       "wrong-count": ix[:-1]}[offsets]
    forge(last, last, tensors=change)
    code, out, err = main(capsys, "train", "gpt", "--resume", run, "--quiet")
    assert_one_line_error(code, err, f"cannot resume from {last}: its training state is damaged")


@pytest.mark.parametrize("value", ["abc", {"__tensor__": "state.trainer.next_batch"}])
def test_gpt_eval_refuses_a_damaged_evaluation_generator_state(tmp_path, runs, capsys, value):
    path = forge(runs["gpt"] / "last.safetensors", tmp_path / "forged.safetensors", meta=_set_state("trainer.eval_rng", value))
    code, out, err = main(capsys, "eval", path)
    assert_one_line_error(code, err, str(path), "checkpoint is damaged: its evaluation generator state is not one")


def test_gpt_resume_with_a_damaged_config_json_is_a_one_line_error(tmp_path, runs, capsys):
    import shutil

    run = shutil.copytree(runs["gpt"], tmp_path / "run")
    good = json.loads((run / "config.json").read_text())
    for saved, message in (([], "it holds no settings"), ({**good, "n_layer": "2"}, "n_layer is '2'"),
                           ({**good, "lr": None}, "lr is None"), ({**good, "bias": 0}, "bias is 0")):
        (run / "config.json").write_text(json.dumps(saved))
        code, out, err = main(capsys, "train", "gpt", "--resume", run, "--quiet")
        assert_one_line_error(code, err, f"{run / 'config.json'} is damaged", message)
