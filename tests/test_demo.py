"""``customnn demo`` on tiny settings, through a subprocess: the seed's banners and log lines in order,
both run folders, and a report with the figures, both loss plots, the digit grid and the sample."""

from __future__ import annotations

from helpers import run_customnn


def test_demo_tiny_runs_both_models_and_writes_the_report(tmp_path):
    r = run_customnn("demo", "--tiny", "--out", tmp_path, "--sample-tokens", "50", timeout=180)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    cnn_at = out.index("========== Running Custom CNN Training ==========")
    gpt_at = out.index("========== Running Custom Transformer Training ==========")
    sample_at = out.index("========== Generated sample ==========")
    assert cnn_at < out.index("Train Epoch: 1 [0/500 (0%)]\tLoss: ") < out.index("Test set: Average loss: ") < gpt_at
    assert gpt_at < out.index("step 0: train loss ") < out.index("step 20: train loss ") < sample_at
    sample = out[sample_at:].splitlines()[1]
    assert sample.startswith("ROMEO:")

    (demo,) = tmp_path.iterdir()
    assert demo.name.startswith("demo-")
    cnn = next(demo.glob("cnn-*"))
    gpt = next(demo.glob("gpt-*"))
    for path in (cnn / "loss.png", gpt / "loss.png", demo / "digits.png", gpt / "best.safetensors",
                 cnn / "last.safetensors"):
        assert path.is_file() and path.stat().st_size > 0, path
    assert (demo / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (demo / "report.md").read_text()
    for piece in (f"{cnn.name}/loss.png", f"{gpt.name}/loss.png", "digits.png", "test accuracy", "val loss",
                  "ROMEO:", "tiny"):
        assert piece in report, piece
    assert f"report: {demo / 'report.md'}" in out


def test_demo_rejects_conflicting_settings(tmp_path):
    r = run_customnn("demo", "--tiny", "--seed-setting", "--out", tmp_path, timeout=60)
    assert r.returncode == 2 and "choose one of --tiny and --seed-setting" in r.stderr
    assert list(tmp_path.iterdir()) == []
