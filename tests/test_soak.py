"""Soak test (issue 6): a long CNN training run whose memory must not grow and whose every
checkpoint must load.

Kept out of the default suite (pyproject's addopts deselect the ``soak`` marker); run it with::

    pytest -m soak -s tests/test_soak.py                       # 20 minutes
    CUSTOMNN_SOAK_MINUTES=2 pytest -m soak -s tests/test_soak.py   # a short check

A real ``customnn train cnn`` process (the default net, 10,000 training images so that every
part of the loop, evaluation and epoch-end saves included, comes round every few seconds)
saves ``last.safetensors`` every minute (every tenth of the run when it is shorter than ten
minutes) with ``--save-interval``. The test samples the process's resident memory (VmRSS in
/proc/PID/status) every second, loads every checkpoint as soon as it appears, and at the end
presses Ctrl-C: the process must save, say how to resume and exit 130, and ``customnn eval``
must read what it left. Memory must not grow: the median of the last quarter of the samples
is at most 10% (plus 32 MB) above the median of the first quarter, counted from the end of
the first epoch (the first evaluation allocates its buffers once). Medians, because the
resident size swings by up to 300 MB for seconds at a time as the allocator takes and
returns the evaluation's buffers.

The measured runs (steps, RSS by quarter) are in ``benchmarks/results/cpu-soak.txt``. The
trainers call ``release_free_memory`` after each evaluation and save: without it the freed
buffers of evaluations fragment malloc's heap and the resident size grows while the memory in
use stays flat.

Environment: ``CUSTOMNN_SOAK_MINUTES`` (default 20), ``CUSTOMNN_SOAK_THREADS`` (torch threads
of the training process, default 1).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from customnn.core.errors import UserError
from customnn.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
MINUTES = float(os.environ.get("CUSTOMNN_SOAK_MINUTES", "20"))
THREADS = os.environ.get("CUSTOMNN_SOAK_THREADS", "1")


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


@pytest.mark.soak
def test_long_training_keeps_memory_flat_and_every_checkpoint_loads(tmp_path):
    duration = MINUTES * 60
    save_every = min(60.0, duration / 10)
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "PYTHONPATH": str(REPO), "CUSTOMNN_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "customnn", "train", "cnn", "--arch", "default", "--epochs", "1000",
           "--train-samples", "10000", "--test-samples", "2000", "--save-interval", str(save_every),
           "--device", "cpu", "--quiet", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.time()
    samples: list[tuple[float, float, bool]] = []  # (seconds, RSS MB, after the first epoch)
    loaded: list[int] = []  # the step of every checkpoint version loaded
    seen: dict[Path, tuple[int, int]] = {}
    run = None
    try:
        while time.time() - start < duration:
            time.sleep(1.0)
            assert proc.poll() is None, f"training stopped early: {proc.communicate()}"
            if run is None:
                run = next(tmp_path.glob("cnn-*"), None)
                continue
            rss = rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.time() - start, rss, (run / "best.safetensors").exists()))
            for path in (run / "last.safetensors", run / "best.safetensors"):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                version = (st.st_mtime_ns, st.st_size)
                if seen.get(path) != version:  # a new save: it must load
                    try:
                        ckpt = load_checkpoint(path)
                    except UserError as e:
                        pytest.fail(f"checkpoint {path.name} saved at {time.time() - start:.0f} s does not load: {e}")
                    seen[path] = version
                    loaded.append(int(ckpt.meta["step"]))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 130, (out, err)
    assert f"customnn train cnn --resume {run}" in out + err
    final = load_checkpoint(run / "last.safetensors")
    p = subprocess.run([sys.executable, "-m", "customnn", "eval", str(run), "--checkpoint", "last",
                        "--test-samples", "500", "--quiet"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("Test set: Average loss"), p.stderr

    steady = [(t, mb) for t, mb, after_first_epoch in samples if after_first_epoch]
    assert len(steady) >= 20, f"too few samples after the first epoch ({len(steady)}): run longer"
    quarter = len(steady) // 4
    medians = [statistics.median(mb for _, mb in steady[i * quarter:(i + 1) * quarter]) for i in range(4)]
    first, last = medians[0], statistics.median(mb for _, mb in steady[-quarter:])
    expected_saves = duration / save_every
    summary = (f"soak: {duration / 60:.1f} min, {final.meta['step']} steps (epoch {final.meta['epoch']}), "
               f"{len(loaded)} checkpoint versions loaded (last.safetensors every {save_every:.0f} s, best at "
               f"epoch ends); RSS MB: medians by quarter {', '.join(f'{m:.0f}' for m in medians)} "
               f"(last quarter {last:.0f}), min {min(mb for _, mb in steady):.0f}, "
               f"max {max(mb for _, mb in steady):.0f} ({len(steady)} samples)")
    print(summary)
    assert len(loaded) >= 0.6 * expected_saves, summary
    assert loaded == sorted(loaded), loaded  # checkpoints only move forward
    assert last <= first * 1.10 + 32, summary
