"""Data-parallel training: 2 gloo processes on the CPU, started by torchrun as a user starts them,
train what 1 process trains (float64, 1e-10), with AdamW's moments sharded too (--zero), write
one run folder, resume each other's checkpoints at another process count, and stop together on
Ctrl-C.

Every torchrun is started with ``--standalone`` (a free port, no fixed one) and a timeout, so a
hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from customnn.train.checkpoint import load_checkpoint
from helpers import REPO, customnn_env, run_customnn

TIMEOUT = 240
GPT = ["train", "gpt", "--preset", "tiny", "--dtype", "float64", "--max-iters", 16, "--lr-decay-iters", 16,
       "--eval-interval", 8, "--log-interval", 1, "--device", "cpu", "--quiet"]
# The GPT with dropout on the embeddings, the attention weights and both residual branches:
# every mask is drawn for the whole batch and each process keeps its rows.
GPT_DROPOUT = [*GPT, "--dropout", 0.2]
CNN = ["train", "cnn", "--arch", "default", "--width", 4, "--train-samples", 200, "--test-samples", 100, "--epochs", 2,
       "--batch-size", 32, "--dtype", "float64", "--log-interval", 1, "--device", "cpu", "--quiet"]

RUNS = {"gpt": GPT, "gpt-dropout": GPT_DROPOUT, "cnn": CNN}


def torchrun(*args, nproc: int = 2, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "customnn", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=customnn_env(), capture_output=True, text=True, timeout=timeout)


def rows(run: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock times."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "train_time")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_rows(a: list[dict], b: list[dict], tol: float = 1e-10) -> None:
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]
    for x, y in zip(a, b):
        for k, v in x.items():
            if isinstance(v, float):
                assert abs(v - y[k]) <= tol * max(1.0, abs(v)), (x, y)
            else:
                assert v == y[k], (k, x, y)


def only_run(folder: Path) -> Path:
    (run,) = folder.iterdir()  # one run folder, whatever the number of processes
    return run


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, Path]:
    """The 1-process runs the 2-process ones must equal."""
    out = tmp_path_factory.mktemp("one")
    runs = {}
    for name, args in RUNS.items():
        p = run_customnn(*args, "--out", out / name, timeout=TIMEOUT)
        assert p.returncode == 0, p.stderr
        runs[name] = only_run(out / name)
    return runs


@pytest.mark.parametrize("model", list(RUNS))
def test_two_processes_train_what_one_process_trains(tmp_path, one_process, model):
    """The GPT, with and without dropout, and the default CNN (batch norm over both ranks,
    dropout, random rotations, scalings and shifts each process warps for its own rows, label
    smoothing, a last batch of 8 split 4 + 4): every loss, evaluation and weight as in one
    process."""
    p = torchrun(*RUNS[model], "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    run = only_run(tmp_path)
    assert_same_rows(rows(run), rows(one_process[model]))
    a = load_checkpoint(run / "last.safetensors").model_state
    b = load_checkpoint(one_process[model] / "last.safetensors").model_state
    for k in a:  # Adam's normalised steps carry the last bits of tiny gradients a little further
        assert (a[k] - b[k]).abs().max().item() <= 1e-8, k


def test_no_sync_bn_keeps_each_process_s_own_statistics(tmp_path, one_process):
    """--no-sync-bn: each process normalises by its own rows' statistics (DDP's default), so 2
    processes no longer train what 1 trains, while 1 process trains as before."""
    p = torchrun(*CNN, "--no-sync-bn", "--out", tmp_path / "two")
    assert p.returncode == 0, p.stderr
    two, one = rows(only_run(tmp_path / "two")), rows(one_process["cnn"])
    assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]
    assert all(math.isfinite(r["loss"]) for r in two)
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(two, one)) > 1e-6  # other statistics, other losses
    p = run_customnn(*CNN, "--no-sync-bn", "--out", tmp_path / "one", timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert_same_rows(rows(only_run(tmp_path / "one")), one)


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_at_another_process_count(tmp_path, one_process, first, then):
    def start(nproc, *args):
        if nproc == 1:
            return run_customnn(*args, timeout=TIMEOUT)
        return torchrun(*args, nproc=nproc)

    p = start(first, *GPT, "--max-steps", 5, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    run = only_run(tmp_path)
    assert load_checkpoint(run / "last.safetensors").meta["step"] == 5
    p = start(then, "train", "gpt", "--resume", run, "--quiet")
    assert p.returncode == 0, p.stderr
    assert_same_rows([r for r in rows(run)], rows(one_process["gpt"]))


@pytest.mark.parametrize("model", ["gpt", "cnn"])
def test_zero_trains_what_one_process_trains(tmp_path, one_process, model):
    """--zero: each of 2 processes keeps half of AdamW's moments (reduce-scatter, update its
    slice, all-gather), and saves every step (--save-interval, agreed across the ranks: each save
    gathers the moments): every loss, evaluation and weight as in one process, and the
    checkpoint's optimizer state is plain AdamW's, gathered."""
    p = torchrun(*RUNS[model], "--zero", "--save-interval", 1e-3, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    run = only_run(tmp_path)
    assert_same_rows(rows(run), rows(one_process[model]))
    a, b = load_checkpoint(run / "last.safetensors"), load_checkpoint(one_process[model] / "last.safetensors")
    for k in a.model_state:
        assert (a.model_state[k] - b.model_state[k]).abs().max().item() <= 1e-8, k
    sa, sb = a.state["optimizer"], b.state["optimizer"]
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    for i, s in sb["state"].items():
        assert sa["state"][i]["step"] == s["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert (sa["state"][i][key] - s[key]).abs().max().item() <= 1e-8, (i, key)


@pytest.mark.parametrize("first, then", [((2, "--zero"), (1, "--no-zero")), ((1, "--no-zero"), (2, "--zero"))])
def test_a_zero_checkpoint_resumes_without_zero_and_back(tmp_path, one_process, first, then):
    """Checkpoints are the same with and without --zero: a --zero run at 2 processes resumed by 1,
    and a 1-process run resumed by 2 with --zero, train on as the uninterrupted run."""
    def start(nproc, *args):
        return run_customnn(*args, timeout=TIMEOUT) if nproc == 1 else torchrun(*args, nproc=nproc)

    p = start(first[0], *GPT, first[1], "--max-steps", 5, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    run = only_run(tmp_path)
    p = start(then[0], "train", "gpt", "--resume", run, then[1], "--quiet")
    assert p.returncode == 0, p.stderr
    assert_same_rows(rows(run), rows(one_process["gpt"]))


EXCHANGE = """
import torch
from customnn.train.distributed import Dist, GradSync

d = Dist.from_env("cpu")
w = torch.zeros(5, dtype=torch.float64, requires_grad=True)  # 5 numbers: padded to 6 in shard mode
summed = 3 * torch.arange(5.0, dtype=torch.float64)  # the gradient summed over ranks 0 and 1
for shard in (False, True):
    sync = GradSync([w], d, shard=shard)
    sync.start()
    ((d.rank + 1) * torch.arange(5.0, dtype=torch.float64) * w).sum().backward()
    loss, stop, save, norm = sync.finish(torch.tensor(d.rank + 1.0), stop=d.rank == 1, save=d.rank == 0)
    assert (loss.item(), stop, save) == (3.0, True, True), (loss, stop, save)
    if shard:  # rank r keeps numbers [3 r, 3 r + 3) of the padded sum, and every rank the global norm
        assert w.grad is None and torch.equal(sync.shards[0], torch.cat([summed, torch.zeros(1)])[3 * d.rank:][:3])
        assert abs(norm.item() - summed.norm().item()) < 1e-12
    else:
        assert norm is None and torch.equal(w.grad, summed)
    sync.remove()
    w.grad = None
d.close()
# Leave as ``python -m customnn`` does under torchrun (customnn/__main__.py): without the
# interpreter's shutdown, which gloo's threads can abort (SIGABRT) after a run that ended well.
import os, sys
sys.stdout.flush()
os._exit(0)
"""


def test_the_exchange_agrees_on_any_rank_s_requests(tmp_path):
    """GradSync.finish in both modes: the losses summed, a stop asked by rank 1 only and a save
    (--save-interval) by rank 0 only agreed by both; the gradient summed (all-reduce) or each
    rank's slice of it and the global norm (shard mode, --zero)."""
    script = tmp_path / "exchange.py"
    script.write_text(EXCHANGE)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(script)], cwd=REPO, env=customnn_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("args, optimizer", [(GPT, "muon"), (CNN, "sgd")])
def test_zero_with_another_optimizer_is_a_one_line_error(tmp_path, args, optimizer):
    p = run_customnn(*args, "--optimizer", optimizer, "--zero", "--out", tmp_path, timeout=TIMEOUT)
    assert p.returncode != 0
    assert p.stderr.splitlines() == [f"customnn: error: --zero shards AdamW's moments; it cannot be used with "
                                     f"--optimizer {optimizer}"]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_ctrl_c_stops_every_rank_with_a_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "customnn",
           "train", "gpt", "--preset", "tiny", "--max-iters", 100000, "--eval-interval", 20, "--device", "cpu",
           "--quiet", "--out", tmp_path]
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=customnn_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # until training is under way
            found = list(tmp_path.glob("*/metrics.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 6:
                break
            time.sleep(0.1)
        else:
            pytest.fail("training did not start")
        proc.send_signal(signal.SIGINT)  # torchrun passes it on to both ranks
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run = only_run(tmp_path)
    step = load_checkpoint(run / "last.safetensors").meta["step"]
    assert step >= 20  # saved where it stopped (the message below names that step)
    assert f"interrupted at step {step}" in err and f"customnn train gpt --resume {run}" in err
    assert err.count("interrupted at step") == 1  # one message: rank 0's
    p = run_customnn("train", "gpt", "--resume", run, "--max-iters", step + 3, "--quiet", timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(run / "last.safetensors").meta["step"] == step + 3


def test_a_batch_the_processes_do_not_divide_is_a_one_line_error(tmp_path):
    p = torchrun(*GPT, "--batch-size", 7, "--out", tmp_path)
    assert p.returncode != 0
    ours = [line for line in p.stderr.splitlines() if line.startswith("customnn: error:")]
    assert ours and all("--batch-size 7 is the global batch: it must be divisible by the 2 processes" in line
                        for line in ours)  # one line from each rank; torchrun then reports their exit codes
    assert not any(tmp_path.iterdir())  # no run folder was made


def test_a_time_budget_ends_every_rank_at_the_same_step(tmp_path):
    """With --time-budget, rank 0's clock plans the steps and the plan is exchanged every
    PLAN_SYNC_STEPS steps: both ranks end at the step it planned, and the run fits the budget."""
    from customnn.train.budget import PLAN_SYNC_STEPS

    budget = 8
    args = ["train", "gpt", "--preset", "tiny", "--max-iters", 1_000_000, "--eval-interval", 200,
            "--time-budget", budget, "--device", "cpu", "--quiet"]
    p = torchrun(*args, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    run = only_run(tmp_path)
    log = (run / "train.log").read_text()
    planned = [int(line.split("s: ")[1].split()[0]) for line in log.splitlines() if "steps planned at step" in line]
    at = [int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "steps planned at step" in line]
    assert planned and all(step % PLAN_SYNC_STEPS == 0 for step in at), log
    ckpt = load_checkpoint(run / "last.safetensors")
    assert 100 < ckpt.state["engine"]["total_steps"] == planned[-1] < 1_000_000
    assert ckpt.state["engine"]["step"] == planned[-1]  # rank 0 saved at the planned end, rank 1 stopped there too
    assert rows(run)[-1]["step"] == planned[-1]


def test_two_nodes_meet_at_a_rendezvous_endpoint(tmp_path, one_process):
    """The multi-machine launch (``--nnodes 2 --rdzv-endpoint HOST:PORT``), both "machines" on
    this one, each with one process: one run, the same losses."""
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={r}",
                               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                               "-m", "customnn", *map(str, GPT), "--out", str(tmp_path)],
                              cwd=REPO, env=customnn_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        codes = [p.wait(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], [p.stderr.read() for p in procs]
    assert_same_rows(rows(only_run(tmp_path)), rows(one_process["gpt"]))


def test_a_process_that_dies_stops_the_others_with_one_line_and_the_checkpoint_intact(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "customnn",
           "train", "gpt", "--preset", "tiny", "--max-iters", "100000", "--eval-interval", "20", "--device", "cpu",
           "--quiet", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=customnn_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob("*/best.safetensors")):
            time.sleep(0.1)
        time.sleep(1.0)  # training under way, a checkpoint saved
        ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        subprocess.run(["kill", "-9", ranks[-1]], check=True)  # one rank dies outright
        out, err = proc.communicate(timeout=90)  # no hang: the others stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("customnn: error:")]
    assert len(ours) == 1 and "another process of this run stopped" in ours[0] and "is intact" in ours[0], err
    run = only_run(tmp_path)
    step = load_checkpoint(run / "last.safetensors").meta["step"]  # loads: intact
    assert step % 20 == 0 and f"(step {step}) is intact" in ours[0]
