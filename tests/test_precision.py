"""Mixed-precision training (customnn/train/precision.py): the fp16 loss scaler step by step, and
the GPT and the CNN trained in bf16 and fp16 against their torch.nn twins under the same
autocast (torch.optim.AdamW, and torch.amp.GradScaler for fp16), then through the engine
(``--precision``), resume included."""

from __future__ import annotations

import pytest
import torch

from customnn.train.checkpoint import load_checkpoint
from customnn.models.cnn import CustomCNN
from customnn.models.gpt import GPT, GPTConfig
from customnn.optim import AdamW
from customnn.train.gpt import make_config, train
from customnn.train.precision import MIN_SCALE, LossScaler, Precision
from customnn_ref.twins import cnn_twin, gpt_twin

# found_inf per step, and the scale after each update by hand, growth every 3 clean steps:
# 2 clean (tracker 2), inf: /2; 3 clean: x2; 3 clean: x2; inf: /2; inf: /2; 1 clean
PATTERN = [False, False, True, False, False, False, False, False, False, True, True, False]
BY_HAND = [65536, 65536, 32768, 32768, 32768, 65536, 65536, 65536, 131072, 65536, 32768, 32768]


def test_loss_scaler_follows_hand_computed_scales():
    scaler = LossScaler(growth_interval=3)
    scales = []
    for found_inf in PATTERN:
        scaler.update(found_inf)
        scales.append(scaler.scale)
    assert scales == BY_HAND


def test_loss_scaler_defaults_are_gradscalers():
    s = LossScaler()
    assert s.scale == 2.0 ** 16
    for _ in range(1999):
        s.update(False)
    assert s.scale == 2.0 ** 16
    s.update(False)
    assert s.scale == 2.0 ** 17 and s.growth_tracker == 0


def test_precision_skips_and_scales_as_torch_gradscaler():
    """The same overflow pattern through Precision and through torch.amp.GradScaler: the same
    scale after every step, the same steps skipped, the same weights."""
    ours_p, theirs_p = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    prec = Precision("fp16", "cpu")
    prec.scaler.growth_interval = 3
    opt = torch.optim.SGD([theirs_p], lr=0.1)
    gs = torch.amp.GradScaler("cpu", growth_interval=3)
    for step, found_inf in enumerate(PATTERN):
        g = torch.full((3,), float("inf") if found_inf else float(step + 1))
        prec.backward((ours_p * g).sum() if not found_inf else (ours_p * g).sum())
        norm, skip = prec.unscale_([ours_p.grad])
        assert norm is None and skip == found_inf
        if not skip:
            with torch.no_grad():
                ours_p -= 0.1 * ours_p.grad
        ours_p.grad = None
        gs.scale((theirs_p * g).sum()).backward()
        gs.step(opt)
        gs.update()
        opt.zero_grad()
        assert prec.scaler.scale == gs.get_scale() == BY_HAND[step], step
    torch.testing.assert_close(ours_p.detach(), theirs_p.detach())


def test_scale_floor_makes_a_never_finite_run_diverge():
    """A step is skipped while the scale can still fall; at the floor the step is not skipped,
    so the engine's divergence rule sees the non-finite gradient."""
    prec = Precision("fp16")
    prec.scaler.scale = MIN_SCALE * 4
    grad = torch.tensor([float("nan")])
    assert prec.unscale_([grad.clone()])[1] is True  # 4 -> 2
    assert prec.unscale_([grad.clone()])[1] is True  # 2 -> 1
    assert prec.unscale_([grad.clone()])[1] is False  # would fall below the floor: not skipped


def test_zero_norm_decides_for_every_rank():
    """Under --zero the global norm (the same on every rank) decides, and is unscaled too."""
    prec = Precision("fp16")
    shard = torch.full((4,), 2.0 ** 16)
    norm, skip = prec.unscale_([shard], torch.tensor(2.0 ** 17))
    assert not skip and norm.item() == 2.0 and torch.equal(shard, torch.ones(4))
    norm, skip = prec.unscale_([shard], torch.tensor(float("inf")))
    assert skip and prec.scaler.scale == 2.0 ** 15


def _train_pair(model, twin, batches, precision: str, lr=3e-3):
    """Losses of ``model`` (our AdamW, Precision) and ``twin`` (torch.optim.AdamW, GradScaler), the
    same batches, forward under the same autocast."""
    prec = Precision(precision, "cpu")
    ours = AdamW(model.parameters(), lr=lr)
    theirs = torch.optim.AdamW(twin.parameters(), lr=lr, weight_decay=0.01)
    gs = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    losses, tlosses = [], []
    for x, y in batches:
        with prec.autocast():
            _, loss = model(x, y)
        prec.backward(loss)
        _, skip = prec.unscale_([p.grad for p in model.parameters() if p.grad is not None])
        if not skip:
            ours.step()
        ours.zero_grad()
        with torch.autocast("cpu", dtype=prec.dtype):
            _, tloss = twin(x, y)
        gs.scale(tloss).backward()
        gs.step(theirs)
        gs.update()
        theirs.zero_grad()
        losses.append(loss.item())
        tlosses.append(tloss.item())
        assert loss.dtype == tloss.dtype == torch.float32
    for p in model.parameters():
        assert p.dtype == torch.float32  # master weights
    return losses, tlosses


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpt_trains_as_its_twin_under_autocast(precision):
    cfg = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=False)
    model = GPT(cfg, seed=3)
    twin = gpt_twin(model)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(12):
        idx = torch.randint(cfg.vocab_size, (4, 16), generator=g)
        batches.append((idx, (3 * idx + 1) % cfg.vocab_size))  # a rule to learn
    losses, tlosses = _train_pair(model, twin, batches, precision)
    assert losses[-1] < losses[0] - 0.3  # it learns
    for step, (a, b) in enumerate(zip(losses, tlosses)):
        assert abs(a - b) <= 0.01 * max(1.0, abs(b)), (step, a, b)


@pytest.mark.parametrize("arch", ["seed", "default"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cnn_trains_as_its_twin_under_autocast(precision, arch):
    model = CustomCNN(arch, seed=2, dropout=0.0, width=8)
    twin = cnn_twin(model)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(10, (16,), generator=g)) for _ in range(8)]
    losses, tlosses = _train_pair(model, twin, batches, precision, lr=1e-3)
    for step, (a, b) in enumerate(zip(losses, tlosses)):
        assert abs(a - b) <= 0.01 * max(1.0, abs(b)), (step, a, b)


def test_fp16_run_saves_its_scale_and_resumes_as_one_uninterrupted(tmp_path):
    """An fp16 run through the engine: the scale is in every checkpoint, and a run stopped at
    step 10 and resumed ends where one run of 20 steps ends (same losses, same scale)."""
    kw = dict(max_iters=20, eval_interval=10, log_interval=1, precision="fp16")
    whole = train(make_config("tiny", out=str(tmp_path / "a"), **kw), quiet=True)
    ck = load_checkpoint(whole["run_dir"] / "last.safetensors")
    assert ck.state["precision"] == {"precision": "fp16", "scale": 2.0 ** 16, "growth_tracker": 20}
    assert all(v.dtype == torch.float32 for v in ck.model_state.values())
    part = train(make_config("tiny", out=str(tmp_path / "b"), max_steps=10, **kw), quiet=True)
    assert not part["finished"]
    done = train(make_config("tiny", out=str(tmp_path / "b"), resume=str(part["run_dir"]), **kw), quiet=True)
    assert load_checkpoint(done["run_dir"] / "last.safetensors").state["precision"] == ck.state["precision"]
    assert [e["val_loss"] for e in done["evals"]] == [e["val_loss"] for e in whole["evals"]]


def test_mixed_precision_needs_float32_master_weights():
    from customnn.core.errors import UserError

    with pytest.raises(UserError, match="--precision bf16 keeps float32 master weights"):
        make_config("tiny", precision="bf16", dtype="float64").check()
    with pytest.raises(UserError, match="--precision must be 32, bf16, fp16 or auto"):
        make_config("tiny", precision="16").check()
    make_config("tiny", precision="auto", dtype="float64").check()  # auto: float32 under float64


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_where_the_device_computes_it(monkeypatch, native):
    """``--precision auto`` picks bf16 where bfloat16 is native and float32 elsewhere or under
    float64, and writes what it picked into the config (so config.json says what ran)."""
    from customnn.train import precision as P

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert P.native_bf16("cpu") is native
    cfg = make_config("tiny", precision="auto")
    assert P.run_precision(cfg, "cpu").name == cfg.precision == ("bf16" if native else "32")
    cfg = make_config("tiny", precision="auto", dtype="float64")
    assert P.run_precision(cfg, "cpu").name == cfg.precision == "32"
    cfg = make_config("tiny", precision="fp16")
    assert P.run_precision(cfg, "cpu").name == cfg.precision == "fp16"
    cfg = make_config("tiny", precision="auto")  # a model of one's own: float32 unless asked
    assert P.run_precision(cfg, "cpu", own_model=True).name == cfg.precision == "32"


def test_auto_precision_run_records_its_choice(tmp_path):
    """A run with ``--precision auto`` records the precision it ran in config.json and in every
    checkpoint: bf16 on a CPU with AVX512_BF16 or AMX (this one's), float32 elsewhere."""
    import json

    from customnn.train.precision import native_bf16

    out = train(make_config("tiny", out=str(tmp_path), max_iters=4, eval_interval=4, precision="auto"), quiet=True)
    chosen = "bf16" if native_bf16("cpu") else "32"
    assert json.loads((out["run_dir"] / "config.json").read_text())["precision"] == chosen
    assert load_checkpoint(out["run_dir"] / "last.safetensors").state["precision"]["precision"] == chosen
