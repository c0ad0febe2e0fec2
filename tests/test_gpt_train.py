"""GPT training: a real short run on Tiny Shakespeare, resume = uninterrupted, Ctrl-C, divergence,
the command line (through a subprocess) and its errors."""

from __future__ import annotations

import math

from pathlib import Path

import pytest
import torch

from customnn.core.errors import UserError
from customnn.train.budget import StepPlanner
from customnn.train.gpt import PRESETS, make_config, param_groups, train
from customnn.train.checkpoint import load_checkpoint
from helpers import interrupt_once_training, read_metrics, run_customnn


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread


def losses_of(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "train_time")} for r in read_metrics(run_dir)]


def test_presets_nanogpt_cpu_is_nanogpts_documented_run():
    cfg = make_config("nanogpt-cpu")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.batch_size) == (4, 4, 128, 64, 12)
    assert (cfg.max_iters, cfg.lr, cfg.min_lr, cfg.lr_decay_iters, cfg.warmup_iters) == (2000, 1e-3, 1e-4, 2000, 100)
    assert (cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.grad_clip, cfg.dropout, cfg.eval_iters) == (
        0.9, 0.99, 0.1, 1.0, 0.0, 20)
    assert cfg.decay_embeddings and not make_config("default").decay_embeddings  # nanoGPT decays every matrix
    assert cfg.nanogpt_rng and not make_config("default").nanogpt_rng  # nanoGPT's random stream
    assert set(PRESETS) == {"nanogpt-cpu", "default", "modern", "bpe", "tiny"}
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        make_config("huge")
    with pytest.raises(UserError, match="--n-embd \\(30\\) must be divisible by --n-head"):
        make_config("tiny", n_embd=30, n_head=4)
    with pytest.raises(UserError, match="--lr-decay-iters"):
        make_config("tiny", warmup_iters=200)


def test_the_modern_preset_is_the_default_with_rope_trained_with_muon(tmp_path):
    from dataclasses import asdict

    modern, default = asdict(make_config("modern")), asdict(make_config("default"))
    changed = {k: v for k, v in modern.items() if default[k] != v}
    assert changed == dict(preset="modern", pos="rope", optimizer="muon")  # the ablation's pick (README)
    small = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, max_iters=6, warmup_iters=1,
                 eval_interval=6, eval_iters=1, time_budget=None, out=str(tmp_path))
    result = train(make_config("modern", **small), quiet=True)
    assert result["step"] == 6 and math.isfinite(result["final_val_loss"])
    assert result["final_val_loss"] < math.log(len(result["vocab"]))  # it learned something in 6 steps


def test_the_bpe_preset_is_the_default_on_bpe_tokens():
    from dataclasses import asdict

    bpe, default = asdict(make_config("bpe")), asdict(make_config("default"))
    changed = {k: v for k, v in bpe.items() if default[k] != v}
    assert changed == dict(preset="bpe", tokenizer="bpe", vocab_size=2048)  # the sweep's pick (README)


def test_no_weight_decay_on_biases_norms_and_embeddings():
    from customnn.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=True))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == [
        "blocks.0.attn.c_attn.weight", "blocks.0.attn.c_proj.weight", "blocks.0.mlp.c_fc.weight",
        "blocks.0.mlp.c_proj.weight"]
    assert {"wte", "wpe", "ln_f.weight", "blocks.0.ln_1.bias"} <= {names[id(p)] for p in no_decay["params"]}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_decay_embeddings_decays_every_matrix_as_nanogpt():
    from customnn.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=True))
    decay, no_decay = param_groups(model, 0.1, decay_embeddings=True)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {"wte", "wpe"} <= {names[id(p)] for p in decay["params"]}  # wte is also the tied output projection
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(n for n, p in model.named_parameters()
                                                                   if p.dim() >= 2)
    assert all(p.dim() == 1 for p in no_decay["params"])


def test_short_training_on_tiny_shakespeare_learns(tmp_path, capsys):
    result = train(make_config("tiny", out=str(tmp_path)))
    out = capsys.readouterr().out
    run = Path(result["run_dir"])
    assert "step 0: train loss 4.1" in out  # about the uniform log(65) = 4.17 at the start
    last_line = [line for line in out.splitlines() if line.startswith("step ")][-1]
    assert last_line.startswith(f"step 100: train loss {result['final_train_loss']:.4f}, val loss "
                                f"{result['final_val_loss']:.4f}, val bpb ")
    # Tiny Shakespeare is ASCII: a character is a byte, so bits per byte is the loss over ln 2
    last = [r for r in read_metrics(run) if "val_bpb" in r][-1]
    assert abs(last["val_bpb"] - last["val_loss"] / math.log(2)) < 1e-6
    assert last_line.endswith(f"val bpb {last['val_bpb']:.4f}")
    assert result["final_val_loss"] < 3.3 < 4.17  # well below the uniform loss after 100 steps
    assert result["best_val_loss"] == result["final_val_loss"]
    for name in ("config.json", "metrics.jsonl", "train.log", "best.safetensors", "last.safetensors",
                 "loss.png", "report.md"):
        assert (run / name).is_file(), name
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt.meta["model"] == "gpt" and ckpt.meta["step"] == 100
    assert ckpt.meta["vocab"][:2] == "\n " and len(ckpt.meta["vocab"]) == ckpt.meta["config"]["vocab_size"] == 65
    assert "step 100: train loss" in (run / "train.log").read_text()
    assert "| 100 |" in (run / "report.md").read_text()


@pytest.mark.parametrize("nanogpt_rng", [False, True])
def test_resume_gives_exactly_the_losses_of_an_uninterrupted_run(tmp_path, nanogpt_rng):
    common = dict(out=str(tmp_path), max_iters=40, lr_decay_iters=40, eval_interval=10, log_interval=1,
                  dropout=0.1, nanogpt_rng=nanogpt_rng)  # dropout: the global RNG state must be restored too
    full = train(make_config("tiny", **common), quiet=True)
    first = train(make_config("tiny", **{**common, "max_iters": 25}), quiet=True)  # stops between evaluations
    assert first["step"] == 25
    resumed = train(make_config("tiny", **common, resume=str(first["run_dir"])), quiet=True)
    assert resumed["run_dir"] == first["run_dir"]
    # the first session's closing evaluation at step 25 is the one extra row
    rows = [r for r in losses_of(Path(resumed["run_dir"])) if "loss" in r or r["step"] % 10 == 0]
    assert rows == losses_of(Path(full["run_dir"]))
    assert resumed["final_val_loss"] == full["final_val_loss"]
    a = load_checkpoint(Path(full["run_dir"]) / "last.safetensors").model_state
    b = load_checkpoint(Path(resumed["run_dir"]) / "last.safetensors").model_state
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bias, tie", [(False, True), (True, True), (False, False)])
def test_nanogpt_rng_initialises_bit_for_bit_as_nanogpt(bias, tie):
    """nanoGPT's ``torch.manual_seed(s); GPT(config)`` (torch.nn layers built, then
    ``_init_weights``) and ours redrawn by ``init_like_nanogpt_`` from a generator seeded with s:
    the same weights, and the generators left in the same state."""
    from customnn.models.gpt import GPT, GPTConfig
    from customnn.train.nanogpt_rng import init_like_nanogpt_
    from customnn_ref.nanogpt import nanogpt_init
    from customnn_ref.twins import TwinGPT, gpt_twin

    cfg = GPTConfig(vocab_size=11, block_size=7, n_layer=3, n_head=3, n_embd=12, bias=bias, tie_weights=tie)
    for seed in (1337, 5):
        torch.manual_seed(seed)
        theirs = nanogpt_init(TwinGPT(cfg)).state_dict()
        g = torch.Generator().manual_seed(seed)
        ours = GPT(cfg, seed=seed + 1)
        init_like_nanogpt_(ours, g)
        assert torch.equal(g.get_state(), torch.get_rng_state())
        mine = gpt_twin(ours).state_dict()  # (building the twin draws from the global generator)
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), seed


def test_nanogpt_rng_replays_nanogpts_training_loop(tmp_path, capsys):
    """``customnn train gpt --nanogpt-rng`` prints the evaluations of nanoGPT's own loop (re-created
    with torch.nn and torch.optim in customnn_ref.nanogpt) for the same seed and settings."""
    from customnn.data.text import load_corpus
    from customnn_ref.nanogpt import Settings, run

    s = Settings(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, max_iters=60, lr=3e-3, min_lr=3e-4,
                 warmup_iters=5, lr_decay_iters=60, eval_interval=20, eval_iters=3)
    corpus = load_corpus(None, None, s.block_size)
    train_ids, val_ids = (torch.from_numpy(split.astype("int64")) for split in (corpus.train, corpus.val))  # (N,)
    _, theirs = run(train_ids, val_ids, len(corpus.vocab), s, seed=7)
    settings = {k: getattr(s, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_iters",
                                           "lr", "min_lr", "warmup_iters", "lr_decay_iters", "eval_interval",
                                           "eval_iters", "weight_decay", "grad_clip")}
    result = train(make_config("nanogpt-cpu", **settings, seed=7, out=str(tmp_path)), quiet=True)
    ours = [(r["step"], r["train_loss"], r["val_loss"]) for r in read_metrics(result["run_dir"]) if "val_loss" in r]
    assert [r[0] for r in ours] == [r[0] for r in theirs] == [0, 20, 40, 60]
    flat = [value for row in ours for value in row[1:]]
    assert flat == pytest.approx([value for row in theirs for value in row[1:]], abs=2e-5)  # float32 sums, other order
    assert ours[-1][2] < ours[0][2] - 0.5  # and it learns: not the same numbers by standing still
    # customnn eval draws the batches the run's last evaluation drew from the stream
    from customnn.commands.cli import main

    capsys.readouterr()
    assert main(["eval", str(result["run_dir"]), "--checkpoint", "last"]) == 0
    assert capsys.readouterr().out.strip().startswith(f"step 60: train loss {ours[-1][1]:.4f}, val loss "
                                                      f"{ours[-1][2]:.4f}, val bpb ")
    # without the shared stream the same settings give other numbers
    other = train(make_config("nanogpt-cpu", **settings, seed=7, nanogpt_rng=False, out=str(tmp_path)), quiet=True)
    assert abs(other["final_val_loss"] - ours[-1][2]) > 1e-3


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = make_config("tiny", out=str(tmp_path), lr=1e6, warmup_iters=0, max_iters=50)
    with pytest.raises(UserError) as e:
        train(cfg, quiet=True)
    msg = str(e.value)
    assert "diverged at step" in msg and "lower --lr" in msg and "--lr 1e+06" in msg
    run = next(tmp_path.iterdir())
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt.meta["step"] == 0  # the evaluation at step 0 saved it; nothing after touched it
    assert all(torch.isfinite(t).all() for t in ckpt.model_state.values())
    assert "diverged" in (run / "train.log").read_text()


def test_cli_train_eval_and_errors(tmp_path, capsys):
    r = run_customnn("train", "gpt", "--preset", "tiny", "--max-iters", "20", "--eval-interval", "10",
                     "--out", tmp_path, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("step ")] == ["step 0", "step 10", "step 20"]
    run = next(tmp_path.iterdir())
    r2 = run_customnn("eval", run, "--checkpoint", "last")
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.strip() == lines[-1]  # the same batches: the same figures as at the end of training

    for args, message in [
        (("--preset", "huge"), "invalid choice: 'huge'"),
        (("--preset", "tiny", "--batch-size", "0"), "--batch-size must be >= 1"),
        (("--preset", "tiny", "--lr", "fast"), "invalid float value: 'fast'"),
        (("--preset", "tiny", "--dropout", "1.5"), "--dropout must be in [0, 1)"),
        (("--preset", "tiny", "--text", tmp_path / "none.txt"), "text file not found"),
        (("--resume", tmp_path / "nothing"), "run folder not found"),
        (("--resume", run, "--n-layer", "3"), "--n-layer cannot change when resuming"),
        (("--preset", "tiny", "--device", "tpu"), "--device must be auto, cpu, cuda"),
        (("--preset", "tiny", "--time-budget", "-3"), "--time-budget must be a number of seconds > 0"),
        (("--preset", "tiny", "--lr", "1e6", "--warmup-iters", "0"), "lower --lr"),
    ]:
        code, err = main_in_process(capsys, "train", "gpt", *args, "--out", tmp_path)
        assert code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    r = run_customnn("train", "gpt", "--preset", "tiny", "--max-iters", "-5")  # the same through a real process
    assert r.returncode == 2 and r.stderr.strip() == "customnn: error: --max-iters must be >= 1, got -5"


def main_in_process(capsys, *args) -> tuple[int, str]:
    """``customnn ARGS`` in this process (argparse's errors exit through SystemExit): (exit code, stderr)."""
    from customnn.commands.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_ctrl_c_saves_and_resume_continues_exactly(tmp_path):
    common = ["--preset", "tiny", "--lr-decay-iters", "1000", "--eval-interval", "1000", "--log-interval", "1",
              "--device", "cpu", "--quiet"]
    metrics, code, out, err = interrupt_once_training(  # Ctrl-C once a few steps are logged
        ["train", "gpt", *common, "--max-iters", "1000", "--out", tmp_path / "a"],
        tmp_path / "a", "*/metrics.jsonl", rows=4, wait_s=90)
    assert metrics is not None, "training did not start"
    assert code == 130, err
    run = metrics.parent
    assert f"customnn train gpt --resume {run}" in err
    step = load_checkpoint(run / "last.safetensors").state["engine"]["step"]
    assert 4 <= step < 1000
    end = step + 6
    r = run_customnn("train", "gpt", "--resume", run, "--max-iters", end, "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_customnn("train", "gpt", *common, "--max-iters", end, "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    other = next((tmp_path / "b").iterdir())
    assert losses_of(run) == losses_of(other)
    assert len([row for row in losses_of(run) if "loss" in row]) == end


def test_time_budget_plans_the_steps_to_fit(tmp_path, capsys):
    budget = 8.0
    result = train(make_config("tiny", out=str(tmp_path), max_iters=1_000_000, time_budget=budget, eval_interval=200))
    out = capsys.readouterr().out
    assert "time budget 8 s: " in out and " steps planned at step 15" in out
    assert 100 < result["step"] < 1_000_000
    assert result["time_s"] < budget + 3  # the plan is revised after each evaluation
    assert out.splitlines()[-1].startswith(f"step {result['step']}: train loss")  # the closing evaluation
    ckpt = load_checkpoint(Path(result["run_dir"]) / "last.safetensors")
    assert ckpt.state["engine"]["total_steps"] == result["step"]


def test_step_planner_fits_the_budget_and_follows_the_speed():
    """100 s at 0.1 s a step: planned at step 45 (5 warm-up steps, 40 timed, before the warmup of
    100 ends) to stop at 45 + (100 - 4.5 - 5 reserved) / 0.1. Revised every 15 s: unchanged at the
    same speed, shorter once the steps take 0.2 s. Without a budget the plan stays max_iters."""
    planner = StepPlanner(100.0, 10_000, warmup_iters=100, eval_interval=1000, start_step=0, total_iters=10_000)

    def clock(step):  # 0.1 s a step, 0.2 s from step 300 on
        return 0.1 * step if step <= 300 else 30 + 0.2 * (step - 300)

    plans = [(step, planner.total) for step in range(700)
             if step < planner.total and planner.update(step, clock(step))]
    assert plans[0] == (45, 950)
    # revised at the first step 15 s after the last plan: 19.5 s (same speed, same plan), 34.6 s, 49.6 s
    assert [round(clock(step), 1) for step, _ in plans] == [4.5, 34.6, 49.6]
    step, total = plans[-1]
    assert step > 300 and abs(total - (step + (100 - clock(step) - 5) / 0.2)) <= 1  # fits at the new speed
    assert all(later < earlier for (_, earlier), (_, later) in zip(plans, plans[1:]))
    unbudgeted = StepPlanner(None, 10_000, warmup_iters=100, eval_interval=1000, start_step=0, total_iters=123)
    assert not any(unbudgeted.update(s, clock(s)) for s in range(700)) and unbudgeted.total == 123


def test_a_resumed_run_lets_go_of_the_loaded_checkpoint(tmp_path, monkeypatch):
    """Once restored, the loaded checkpoint (a second copy of the weights, and of the optimizer
    state where a --zero run takes only its slice) is freed: a resumed run holds no more memory
    than an uninterrupted one."""
    import gc
    import weakref

    import customnn.train.engine as engine
    from customnn.train.gpt import GPTTrainer

    first = train(make_config("tiny", out=str(tmp_path), max_iters=6, eval_interval=3), quiet=True)
    refs = []
    opened = engine.open_for_resume

    def open_and_watch(*args, **kwargs):
        run, ckpt, cfg, model = opened(*args, **kwargs)
        refs.append(weakref.ref(ckpt))
        return run, ckpt, cfg, model

    alive_at_steps = []
    step = GPTTrainer.train_step

    def watched_step(self, i):
        gc.collect()
        alive_at_steps.append(refs[0]() is not None)
        return step(self, i)

    monkeypatch.setattr(engine, "open_for_resume", open_and_watch)
    monkeypatch.setattr(GPTTrainer, "train_step", watched_step)
    train(make_config("tiny", max_iters=9, resume=str(first["run_dir"])), quiet=True)
    assert alive_at_steps and not any(alive_at_steps)


def test_a_resumed_run_builds_its_model_once(tmp_path, monkeypatch):
    """Resuming allocates one GPT: the checked model from the checkpoint is the model trained on
    (the shape check builds one on the meta device, which allocates nothing)."""
    import functools

    from customnn.models import gpt

    first = train(make_config("tiny", out=str(tmp_path), max_iters=6, eval_interval=3), quiet=True)
    built = []
    init = gpt.GPT.__init__

    @functools.wraps(init)
    def counted(self, *args, **kwargs):
        built.append(torch.empty(()).device.type)  # "meta" inside config.state_shapes()
        init(self, *args, **kwargs)

    monkeypatch.setattr(gpt.GPT, "__init__", counted)
    train(make_config("tiny", max_iters=9, resume=str(first["run_dir"])), quiet=True)
    assert built.count("cpu") == 1, built
