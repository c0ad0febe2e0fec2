"""Issue 14, class by class: sizes that exhaust the machine, numerics at the edges, arguments checked
in one place, correct input accepted early, output streams, and the last line of defence.

The flag fuzzer (every flag of every command) is tests/test_cli_fuzz.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from customnn.core.errors import UserError
from customnn.core.memory import check_memory, human
from customnn.models.gpt_memory import gpt_bytes
from helpers import REPO, customnn_env
from tiny_models import cnn_checkpoint, digit_picture, gpt_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("CUSTOMNN_OFFLINE", "1")


def main(capsys, *args):
    from customnn.commands.cli import main as cli_main

    capsys.readouterr()
    try:
        code = cli_main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, err, *fragments, exit_code=2):
    assert code == exit_code, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("customnn"), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# --- 1. sizes that exhaust the machine -------------------------------------------------------------
def test_check_memory_says_what_was_asked_and_what_is_available():
    check_memory(10, "a small thing", available=100)
    with pytest.raises(UserError, match=r"a big thing needs about 1\.0 GiB of memory, but only 1\.0 MiB is "
                                        r"available on cpu; use less"):
        check_memory(2**30, "a big thing", "cpu", "use less", available=2**20)
    from customnn.core.memory import available_memory

    assert available_memory("cpu") is None or available_memory("cpu") > 0


def test_a_gpt_too_large_for_the_machine_is_refused_before_anything_is_allocated(tmp_path, capsys, monkeypatch):
    import customnn.train.engine as engine

    monkeypatch.setattr(engine.Engine, "run", lambda *a: pytest.fail("training started"))
    code, _, err = main(capsys, "train", "gpt", "--n-embd", 8192, "--block-size", 65536, "--n-head", 8,
                        "--device", "cpu", "--out", tmp_path)
    one_line(code, err, "training a GPT of 4 layers, width 8192, context 65536, batch 12", "needs about",
             "TiB of memory, but only", "is available on cpu", "--n-embd")
    assert not list(tmp_path.iterdir())
    assert gpt_bytes(65, 64, 4, 4, 128, 12) < 100 * 2**20  # the preset's run is far below any machine


def test_a_cnn_run_and_an_evaluation_past_the_memory_limit_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUSTOMNN_MEMORY_LIMIT", "1e6")
    code, _, err = main(capsys, "train", "cnn", "--arch", "seed", "--device", "cpu", "--out", tmp_path)
    one_line(code, err, "training a seed CNN", "but only 976.6 KiB is available", "--batch-size")
    ckpt = cnn_checkpoint(tmp_path / "cnn.safetensors")
    code, _, err = main(capsys, "eval", ckpt, "--device", "cpu")
    one_line(code, err, "evaluating a seed CNN", "on batches of 1000", "--batch-size")


def _rss_script(body: str) -> dict:
    """Run ``body`` in a fresh process; its ``out`` dict and its peak resident memory (VmHWM: unlike
    ru_maxrss, not inherited from the process that started it)."""
    code = ("import json, sys\n"
            "def hwm():\n"
            "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024\n"
            + body + "\nprint(json.dumps({'peak_mb': hwm(), **out}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=customnn_env(),
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_large_checkpoint_is_mapped_not_read_whole(tmp_path):
    """A checkpoint with 400 MB of training state: reading it costs a few MB of resident memory."""
    from customnn.train.checkpoint import save_checkpoint

    path = tmp_path / "big.safetensors"
    save_checkpoint(path, {"w": torch.zeros(4)}, {"model": "cnn"}, {"moments": torch.zeros(100_000_000)})
    r = _rss_script(f"""
from customnn.train.checkpoint import load_checkpoint
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) / 1024
before = rss()
ckpt = load_checkpoint({str(path)!r})
out = {{'grew_mb': rss() - before, 'n': ckpt.state['moments'].numel()}}""")
    assert r["n"] == 100_000_000 and r["grew_mb"] < 50, r


def test_a_huge_picture_is_reduced_before_it_is_turned_into_floats(tmp_path):
    """10000 x 10000 pixels (a 100 MB greyscale decode): peak memory stays far below the 1.8 GB it took."""
    path = tmp_path / "huge.png"
    subprocess.run([sys.executable, "-c", "from PIL import Image\n"
                    "im = Image.new('L', (10000, 10000), 0)\n"
                    "im.paste(255, (6000, 2000, 7000, 8000)); im.paste(255, (3000, 2000, 7000, 3000))\n"
                    f"im.save({str(path)!r})"], check=True, timeout=120)
    assert path.stat().st_size < 1_000_000
    r = _rss_script(f"""
import torch  # what every command has loaded before a picture is read
from customnn.data.images import load_image, to_mnist
base = hwm()
x = to_mnist(load_image({str(path)!r}))
out = {{'base_mb': base, 'shape': list(x.shape), 'ink': float(x.sum())}}""")
    assert r["shape"] == [28, 28] and r["ink"] > 10
    print(f"\npredict's image path on 10000 x 10000: peak {r['peak_mb']:.0f} MB, {r['base_mb']:.0f} MB before")
    assert r["peak_mb"] - r["base_mb"] < 400, r


def _png_header_only(path, width, height):
    """A PNG whose header claims ``width`` x ``height`` (its pixel data is never reached)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))
    return path


def test_pictures_past_the_pixel_limit_and_decompression_bombs_are_one_line(tmp_path, capsys, monkeypatch):
    ckpt = cnn_checkpoint(tmp_path / "cnn.safetensors")
    huge = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    code, out, err = main(capsys, "predict", ckpt, huge, "--device", "cpu")
    one_line(code, err, "is 20000 x 20000 pixels (400 megapixels), more than the 268 megapixels")
    bomb = _png_header_only(tmp_path / "bomb.png", 60000, 60000)  # past Pillow's own limit too
    code, out, err = main(capsys, "predict", ckpt, bomb, "--device", "cpu")
    one_line(code, err, "bomb.png")
    assert out == ""
    import customnn.data.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 500)  # Pillow's DecompressionBombError, turned into one line
    code, out, err = main(capsys, "predict", ckpt, digit_picture(tmp_path / "seven.png"), "--device", "cpu")
    one_line(code, err, "seven.png")


# --- 2. numerics at the edges ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_when_a_checkpoint_is_loaded(tmp_path, capsys, bad):
    def poison(name):
        def change(state):
            state[name].view(-1)[3] = bad
        return change

    cnn = cnn_checkpoint(tmp_path / "cnn.safetensors", change=poison("fc.weight"))
    gpt = gpt_checkpoint(tmp_path / "gpt.safetensors", change=poison("blocks.1.mlp.c_fc.weight"))
    word = "NaN" if math.isnan(bad) else "infinite"
    image = digit_picture(tmp_path / "seven.png")
    for argv, name in ((["predict", cnn, image], "fc.weight"), (["eval", cnn, "--test-samples", 5], "fc.weight"),
                       (["generate", gpt, "--prompt", "A"], "blocks.1.mlp.c_fc.weight"),
                       (["eval", gpt, "--eval-iters", 1], "blocks.1.mlp.c_fc.weight")):
        code, out, err = main(capsys, *argv, "--device", "cpu")
        one_line(code, err, f"checkpoint is damaged: {name} holds {word} values")
        assert out == ""


def test_weights_that_overflow_give_an_error_not_a_nan_answer(tmp_path, capsys):
    def overflow(state):
        state["fc.weight"].fill_(3e38)
        state["fc.bias"].fill_(-3e38)

    cnn = cnn_checkpoint(tmp_path / "cnn.safetensors", change=overflow)
    code, out, err = main(capsys, "predict", cnn, digit_picture(tmp_path / "seven.png"), "--device", "cpu")
    one_line(code, err, "seven.png is not a number (NaN)")
    assert "nan" not in out


def test_the_sampler_is_defined_for_every_accepted_value():
    from customnn.models.sampling import sample_next

    logits = torch.randn(4, 13, generator=torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1)
    for t in (1e-45, 1e-40, 5e-324):  # underflows in float32: the limit, greedy decoding
        assert torch.equal(sample_next(logits, t), greedy)
    for p in (1e-46, 5e-324, 1e-300):  # rounds to 0 in float32: keeps the most likely token
        assert torch.equal(sample_next(logits, 1.0, top_p=p), greedy)
    assert sample_next(logits, 1.0, top_k=10**12).shape == (4,)  # top-k past the vocabulary
    with_inf = logits.clone()
    with_inf[1, 5] = float("inf")
    assert int(sample_next(with_inf, 0.8)[1]) == 5
    with_nan = logits.clone()
    with_nan[2, 0] = float("nan")
    with pytest.raises(UserError, match="not a number"):
        sample_next(with_nan, 0.8)


@settings(max_examples=80, deadline=None)
@given(t=st.floats(0, 1e300) | st.sampled_from([0.0, 1e-45, 5e-324, 1e-38]),
       k=st.none() | st.integers(1, 2**62), p=st.none() | st.floats(5e-324, 1.0) | st.just(1e-46))
def test_any_accepted_sampling_setting_draws_a_token(t, k, p):
    from customnn.models.sampling import sample_next

    logits = torch.randn(2, 9, generator=torch.Generator().manual_seed(1)) * 30
    tok = sample_next(logits, t, k, p, torch.Generator().manual_seed(2))
    assert tok.shape == (2,) and bool(((tok >= 0) & (tok < 9)).all())


def test_generate_with_a_temperature_that_underflows_is_greedy(tmp_path, capsys):
    gpt = gpt_checkpoint(tmp_path / "gpt.safetensors")
    outs = [main(capsys, "generate", gpt, "--prompt", "RO", "--max-new-tokens", 12, "--device", "cpu",
                 "--temperature", t, *extra) for t, extra in (("0", []), ("1e-45", []), ("1e-40", ["--top-p", "1e-46"]))]
    assert all(code == 0 for code, _, _ in outs), outs
    assert outs[0][1] == outs[1][1] == outs[2][1] and len(outs[0][1]) == 2 + 12 + 1


# --- 3. arguments checked in one place --------------------------------------------------------------
def test_the_shared_checks_refuse_what_crashed_before(tmp_path, capsys):
    cases = [(["check", "--seed", 10**20], "--seed must be an integer between"),
             (["bench", "--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
             (["bench", "--threads", -1], "--threads must be between 0 and 1024, got -1"),
             (["bench", "--reps", 0], "--reps must be between 1 and 10000"),
             (["bench", "--only", "cnn,warp"], "--only: unknown group(s) 'warp'"),
             (["bench", "--json", tmp_path], "is a folder, not a file name"),
             (["demo", "--device", "cuda:x"], "--device must be auto, cpu, cuda or cuda:N"),
             (["demo", "--out", tmp_path / "file.txt" / "sub"], "is not a folder"),
             (["generate", "x", "--prompt", "caf\udce9"], "--prompt is not valid UTF-8 text"),
             (["eval", "x", "--data-dir", "\udcff"], "--data-dir is not valid UTF-8 text")]
    (tmp_path / "file.txt").write_text("")
    for argv, message in cases:
        code, out, err = main(capsys, *argv)
        one_line(code, err, message)


def test_validators_one_per_kind():
    from customnn.core import validate

    assert validate.count(3, "--n", 1, 5) == 3 and validate.threads(0) == 0
    assert validate.probability(1.0, "--p") == 1.0 and str(validate.device("cpu")) == "cpu"
    for call, message in ((lambda: validate.count(True, "--n"), "--n must be an integer >= 1, got True"),
                          (lambda: validate.number(float("nan"), "--x", 0.0), "--x must be a finite number >= 0"),
                          (lambda: validate.probability(float("nan"), "--top-p"), r"--top-p must be in \(0, 1\], got nan"),
                          (lambda: validate.seed(2**64), "--seed must be an integer between"),
                          (lambda: validate.device("cuda:-1"), "--device must be"),
                          (lambda: validate.text("a\udcffb", "--prompt"), r"\\xff at position 1")):
        with pytest.raises(UserError, match=message):
            call()
    assert validate.shown("a\udcffb") == "a\\xffb" and validate.shown("a\ud800") == "a\\ud800"


def test_a_forged_vocabulary_with_a_lone_surrogate_is_refused_in_one_line(tmp_path, capsys):
    vocab = "AB\ud800CD" + "efghijk"
    path = gpt_checkpoint(tmp_path / "gpt.safetensors", vocab=vocab)
    code, out, err = main(capsys, "generate", path, "--prompt", "A", "--device", "cpu")
    one_line(code, err, "does not describe a valid GPT", "U+D800 is a lone surrogate")


# --- 4. correct input accepted, and checked before training ---------------------------------------
def test_a_text_without_a_newline_trains_to_the_end_and_samples(tmp_path, capsys):
    from customnn.data.text import Vocab, default_prompt

    assert default_prompt(Vocab("ab\n")) == "\n" and default_prompt(Vocab("ba")) == "b"
    text = tmp_path / "one-line.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 40)
    gpt = gpt_checkpoint(tmp_path / "gpt.safetensors", vocab="".join(sorted(set(text.read_text()))))
    code, out, err = main(capsys, "generate", gpt, "--max-new-tokens", 5, "--device", "cpu")  # no --prompt
    assert code == 0 and len(out) == 1 + 5 + 1, err


def test_defaults_follow_the_flags_given(capsys, monkeypatch, tmp_path):
    from customnn.commands.train import config_from_flags
    from customnn.train.cnn import CNNTrainConfig
    from customnn.train.gpt import adapt_defaults, make_config

    cfg = config_from_flags("gpt", {"max_iters": 50})  # the default preset warms up for 100 steps
    assert cfg.warmup_iters == 5 and cfg.decay_iters == 50
    cfg = config_from_flags("gpt", {"preset": "nanogpt-cpu", "max_iters": 300})  # its cosine is 2000 steps
    assert cfg.lr_decay_iters is None and cfg.decay_iters == 300 and cfg.warmup_iters == 100
    assert config_from_flags("gpt", {"n_embd": 30}).n_head == 3
    assert config_from_flags("cnn", {"train_samples": 50}).resolved().batch_size == 50
    assert CNNTrainConfig(train_samples=100).resolved().batch_size == 64  # enough images: the default
    base = make_config("default")
    assert adapt_defaults(base, {"max_iters": 50, "warmup_iters": 100}) == {"max_iters": 50, "warmup_iters": 100}
    # Python and the command line are one path: the same overrides give the same configuration
    for flags in ({"max_iters": 50}, {"preset": "nanogpt-cpu", "max_iters": 300}, {"n_embd": 30}):
        rest = dict(flags)
        assert make_config(rest.pop("preset", "default"), **rest) == config_from_flags("gpt", flags)
    code, out, err = main(capsys, "train", "gpt", "--max-iters", 50, "--warmup-iters", 80, "--out", tmp_path)
    one_line(code, err, "--lr-decay-iters (50) must be larger than --warmup-iters (80)")  # given: still refused
    code, out, err = main(capsys, "train", "cnn", "--train-samples", 50, "--batch-size", 64, "--out", tmp_path)
    one_line(code, err, "--batch-size 64 is larger than the 50 training images")  # given: still refused


def test_a_short_run_from_python_adapts_as_the_command_line_does(tmp_path):
    """make_config('default', max_iters=50) is not refused for the preset's 100 warmup steps: it trains."""
    from customnn.train.cnn import CNNTrainConfig
    from customnn.train.cnn import train as train_cnn
    from customnn.train.gpt import make_config
    from customnn.train.gpt import train as train_gpt

    cfg = make_config("default", max_iters=50, n_layer=1, n_embd=30, block_size=8, batch_size=2, eval_interval=50,
                      eval_iters=1, time_budget=None, max_steps=2, device="cpu", out=str(tmp_path))
    assert (cfg.warmup_iters, cfg.decay_iters, cfg.n_head) == (5, 50, 3)
    result = train_gpt(cfg, quiet=True)
    assert result["step"] == 2 and not result["interrupted"]
    result = train_cnn(CNNTrainConfig(arch="seed", train_samples=20, test_samples=10, epochs=1, device="cpu",
                                      out=str(tmp_path)), quiet=True)  # batch 64 > 20 images: one batch of 20
    assert result["config"]["batch_size"] == 20 and result["step"] == 1


def _dark_seven(size=(60, 50)) -> np.ndarray:
    g = np.full(size, 220, np.uint8)
    g[10:50, 22:30] = 30
    g[10:16, 12:30] = 30
    return g


MODES = {
    "L": lambda g: Image.fromarray(g), "I;16": lambda g: Image.fromarray(g.astype(np.uint16) * 257),
    "I": lambda g: Image.fromarray(g.astype(np.int32) * 257), "F": lambda g: Image.fromarray(g.astype(np.float32) / 255),
    "CMYK": lambda g: Image.fromarray(g).convert("CMYK"), "P": lambda g: Image.fromarray(g).convert("P"),
    "LA": lambda g: Image.fromarray(g).convert("LA"), "RGBA": lambda g: Image.fromarray(g).convert("RGBA"),
    "1": lambda g: Image.fromarray(g).convert("1", dither=Image.Dither.NONE),
    "RGB": lambda g: Image.fromarray(g).convert("RGB"), "YCbCr": lambda g: Image.fromarray(g).convert("YCbCr"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_image_mode_is_scaled_like_8_bit_greyscale(tmp_path, mode):
    """A dark 7 on light paper, stored in each mode Pillow reads: the same MNIST digit as in 8 bits."""
    from customnn.data.images import load_image, to_mnist

    g = _dark_seven()
    im = MODES[mode](g)
    path = tmp_path / ("digit.tiff" if mode in ("I", "F", "CMYK", "YCbCr") else "digit.png")
    im.save(path)
    with Image.open(path) as back:
        assert back.mode == (mode if mode != "YCbCr" else back.mode)
    np.testing.assert_allclose(to_mnist(load_image(path)), to_mnist(g.astype(np.float32) / 255), atol=1e-3)


# --- 5. output streams, 7. the last line of defence ----------------------------------------------
def test_generate_into_a_closed_pipe_or_a_closed_stdout(tmp_path):
    gpt = gpt_checkpoint(tmp_path / "gpt.safetensors")
    cmd = f"{sys.executable} -m customnn generate {gpt} --prompt A --max-new-tokens 200000 --device cpu"
    p = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} 2>{tmp_path / 'err'} | head -c 10"],
                       capture_output=True, text=True, env=customnn_env(), cwd=REPO, timeout=120)
    assert p.stdout.startswith("A") and len(p.stdout) == 10
    assert p.returncode == 141 and (tmp_path / "err").read_text().count("\n") <= 1, (tmp_path / "err").read_text()
    assert "Traceback" not in (tmp_path / "err").read_text() and "Broken pipe" not in (tmp_path / "err").read_text()
    p = subprocess.run(["bash", "-c", f"{cmd} >&-"], capture_output=True, text=True, env=customnn_env(), cwd=REPO,
                       timeout=120)
    one_line(p.returncode, p.stderr, "standard output is closed")


def test_an_output_encoding_that_cannot_write_the_text_is_one_line(tmp_path):
    gpt = gpt_checkpoint(tmp_path / "gpt.safetensors", vocab="abc\u00e9")
    p = subprocess.run([sys.executable, "-m", "customnn", "generate", str(gpt), "--prompt", "\u00e9",
                        "--max-new-tokens", "3", "--device", "cpu"], capture_output=True, text=True, cwd=REPO,
                       env={**customnn_env(), "PYTHONIOENCODING": "ascii"}, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == ""
    last = p.stderr.strip().splitlines()[-1]  # after generate's "generating ..." line
    assert last.startswith("customnn: error: cannot write '\\xe9' in the ascii encoding"), p.stderr


def test_a_second_ctrl_c_still_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import customnn.train.gpt as gpt_train

    def killed_at_once(cfg, quiet=False, given=None, model=None):
        run = tmp_path / "gpt-20261201-000000"
        run.mkdir()
        gpt_checkpoint(run / "last.safetensors")
        raise KeyboardInterrupt

    monkeypatch.setattr(gpt_train, "train", killed_at_once)
    code, out, err = main(capsys, "train", "gpt", "--preset", "tiny", "--out", tmp_path, "--device", "cpu")
    assert code == 130
    assert (f"last.safetensors (step 0), is kept. Resume with: customnn train gpt --resume "
            f"{tmp_path / 'gpt-20261201-000000'}") in err


def test_a_second_ctrl_c_in_the_demo_says_where_the_run_is(tmp_path, capsys, monkeypatch):
    import customnn.train.cnn as cnn_train

    def killed_at_once(cfg, quiet=False, given=None, model=None):
        run = tmp_path / "demo-x" / "cnn-20261201-000000"
        run.mkdir(parents=True)
        cnn_checkpoint(run / "last.safetensors")
        raise KeyboardInterrupt

    monkeypatch.setattr("customnn.commands.demo.RunDir.create", lambda name, out: type("D", (), {
        "path": tmp_path / "demo-x"})())
    monkeypatch.setattr(cnn_train, "train", killed_at_once)
    code, out, err = main(capsys, "demo", "--tiny", "--device", "cpu", "--out", tmp_path)
    assert code == 130 and err.strip().endswith("customnn: interrupted")
    assert f"Resume with: customnn train cnn --resume {tmp_path / 'demo-x' / 'cnn-20261201-000000'}" in err


def test_an_unexpected_exception_is_one_line_with_its_traceback_in_a_file(tmp_path, capsys, monkeypatch):
    import customnn.commands.predict as predict

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(predict, "run", bug)
    code, out, err = main(capsys, "predict", "x", "y")
    one_line(code, err, "internal error in `customnn predict`: ZeroDivisionError: a bug", "--debug",
             exit_code=70)
    report = err.split("the traceback is in ")[1].split(";")[0]
    with open(report) as f:
        assert "ZeroDivisionError" in f.read()
    os.remove(report)
    code, out, err = main(capsys, "predict", "x", "y", "--debug")
    assert code == 70 and "Traceback" in err and 'raise ZeroDivisionError("a bug")' in err
    assert human(1536) == "1.5 KiB"
