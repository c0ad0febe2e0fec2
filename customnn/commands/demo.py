"""``customnn demo``: the seed's run, done right: the CNN on MNIST, then the Transformer on text, then a report.

It prints what the seed printed, in the seed's order::

    ========== Running Custom CNN Training ==========
    Train Epoch: 1 [0/60000 (0%)]	Loss: 2.343386
    ...
    Test set: Average loss: 0.0365, Accuracy: 9888/10000 (98.88%)
    ========== Running Custom Transformer Training ==========
    step 0: train loss 4.1676, val loss 4.1649
    ...
    step 2000: train loss 1.7648, val loss 1.8857
    ========== Generated sample ==========
    ROMEO: ...

and leaves a demo folder (``runs/demo-<time>/``) holding both run folders and ``report.md``:
the figures, each model's ``loss.png``, a grid of test digits with the CNN's predictions
(``digits.png``) and the generated text.

(the figures of a run on 2026-11-27, 3 min 3 s on two CPU cores from a fresh clone, setup
included). Settings (all on the CPU, a few minutes on two cores by default):

- default: the seed's CNN architecture on all 60,000 training images for 3 epochs, and the
  GPT with the ``nanogpt-cpu`` preset (nanoGPT's documented CPU run, 2000 steps);
- ``--seed-setting``: the seed's own small setting, for comparison: the seed CNN on 200
  images, batch 32, 5 epochs, and a tiny GPT (the ``tiny`` preset, 300 steps);
- ``--tiny``: seconds, for tests (500 images, one epoch; a 20-step tiny GPT).

    customnn demo
    customnn demo --seed-setting --out runs
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from customnn.core import validate
from customnn.data.text import default_prompt
from customnn.core.errors import UserError
from customnn.core.fileio import atomic_write_bytes, atomic_write_text
from customnn.train.rundir import RunDir

BANNER = "=========="


def banner(title: str) -> None:
    print(f"{BANNER} {title} {BANNER}", flush=True)


def add_arguments(p) -> None:
    p.add_argument("--out", default="runs", help="folder for the demo folder (default: runs)")
    p.add_argument("--seed-setting", action="store_true",
                   help="the seed's own small setting (CNN on 200 images, a tiny GPT) for comparison")
    p.add_argument("--tiny", action="store_true", help="seconds instead of minutes (for tests)")
    p.add_argument("--cnn-epochs", type=int, default=None, help="override the CNN's epochs")
    p.add_argument("--cnn-train-samples", type=int, default=None, help="override the CNN's training images")
    p.add_argument("--gpt-max-iters", type=int, default=None, help="override the GPT's training steps")
    p.add_argument("--sample-tokens", type=int, default=500, help="characters in the generated sample (500)")
    p.add_argument("--data-dir", default=None, help="data directory (default: $CUSTOMNN_DATA, else ~/.cache/customnn)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no training log lines and no progress bars")


def settings(args):
    """The CNN and GPT configurations for the chosen setting, with the explicit overrides applied."""
    from customnn.train.cnn import CNNTrainConfig
    from customnn.train.gpt import make_config

    common_cnn = dict(arch="seed", data_dir=args.data_dir, device=args.device)
    common_gpt = dict(data_dir=args.data_dir, device=args.device)
    if args.tiny:
        cnn = CNNTrainConfig(**common_cnn, epochs=1, train_samples=500, test_samples=500, log_interval=4)
        gpt = dict(preset="tiny", max_iters=20, eval_interval=10)
        name = "tiny (for tests)"
    elif args.seed_setting:
        cnn = CNNTrainConfig(**common_cnn, epochs=5, train_samples=200, batch_size=32, log_interval=2)
        gpt = dict(preset="tiny", max_iters=300, eval_interval=100)
        name = "the seed's own setting (CNN on 200 images, batch 32, 5 epochs; a tiny GPT)"
    else:
        cnn = CNNTrainConfig(**common_cnn, epochs=3, log_interval=100)
        gpt = dict(preset="nanogpt-cpu")
        name = "default (seed CNN on 60,000 images for 3 epochs; GPT with nanoGPT's CPU preset)"
    if args.cnn_epochs is not None:
        cnn.epochs = args.cnn_epochs
    if args.cnn_train_samples is not None:
        cnn.train_samples = args.cnn_train_samples
    if args.gpt_max_iters is not None:
        gpt["max_iters"] = args.gpt_max_iters
        gpt["eval_interval"] = min(gpt.get("eval_interval", 250), args.gpt_max_iters)
    preset = gpt.pop("preset")
    gpt_cfg = make_config(preset, **common_gpt, **gpt)
    if gpt_cfg.decay_iters > gpt_cfg.max_iters:  # a shortened run decays over its own length
        gpt_cfg.lr_decay_iters = max(gpt_cfg.max_iters, gpt_cfg.warmup_iters + 1)
    return name, cnn, gpt_cfg


def digits_grid(model, data_dir, device, n: int = 16, path: Path | None = None) -> tuple[bytes, int]:
    """A PNG of the first ``n`` test digits, each captioned with the CNN's prediction (green right,
    red wrong); returns the PNG bytes and how many were right."""
    import io

    from PIL import Image, ImageDraw

    from customnn.data.mnist import load_mnist_uint8, normalize

    images, labels = load_mnist_uint8("test", data_dir)
    images, labels = images[:n], labels[:n]
    model.eval()
    with torch.inference_mode():
        logits, _ = model(normalize(images).to(device))
    preds = logits.argmax(dim=1).cpu()
    scale, cols = 3, 8
    cell_w, cell_h = 28 * scale, 28 * scale + 16
    rows = -(-n // cols)
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        x0, y0 = (i % cols) * cell_w, (i // cols) * cell_h
        digit = Image.fromarray(images[i].numpy(), mode="L").resize((28 * scale, 28 * scale), Image.NEAREST)
        grid.paste(digit.convert("RGB"), (x0, y0))
        right = int(preds[i]) == int(labels[i])
        draw.text((x0 + 4, y0 + 28 * scale + 2), f"pred {int(preds[i])} (true {int(labels[i])})",
                  fill=(0, 128, 0) if right else (200, 0, 0))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue(), int((preds == labels).sum())


def train_timed(title: str, what: str, train, cfg, quiet: bool) -> tuple[dict, float]:
    """The seed's banner, then ``train(cfg)``: its result and wall time in seconds. After Ctrl-C
    it says where the interrupted run is (the caller then stops the demo)."""
    banner(title)
    t0 = time.perf_counter()
    try:
        result = train(cfg, quiet=quiet)
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once; say where the run is and how to resume
        from customnn.commands.train import newest_run, interrupted_at_once

        import sys

        print(interrupted_at_once(what.lower(), newest_run(Path(cfg.out), what.lower(), set())), file=sys.stderr,
              flush=True)
        raise
    seconds = time.perf_counter() - t0
    if result["interrupted"]:
        print(f"demo interrupted; the {what} run is in {result['run_dir']}")
    return result, seconds


def run(args) -> int:
    from customnn.train import cnn as cnn_train
    from customnn.train import gpt as gpt_train

    if args.tiny and args.seed_setting:
        raise UserError("choose one of --tiny and --seed-setting")
    if args.sample_tokens < 0:
        raise UserError(f"--sample-tokens must be >= 0, got {args.sample_tokens}")
    validate.count(args.sample_tokens, "--sample-tokens", 0, 10**7)
    for flag in ("cnn_epochs", "cnn_train_samples", "gpt_max_iters"):
        if getattr(args, flag) is not None:
            validate.count(getattr(args, flag), "--" + flag.replace("_", "-"), 1, 10**9)
    validate.output_folder(args.out, "--out")
    device = validate.device(args.device)
    name, cnn_cfg, gpt_cfg = settings(args)
    cnn_cfg.resolved()  # every setting checked before the demo folder is made and anything is trained
    cnn_train.Task(cnn_cfg.resolved()).check_memory(device, measure=False)
    gpt_train.Task(gpt_cfg).check_memory(device, measure=False)
    demo = RunDir.create("demo", args.out)
    cnn_cfg.out = str(demo.path)
    gpt_cfg.out = str(demo.path)

    cnn, cnn_time = train_timed("Running Custom CNN Training", "CNN", cnn_train.train, cnn_cfg, args.quiet)
    if cnn["interrupted"]:
        return 130
    grid_png, grid_right = digits_grid(cnn["model"], args.data_dir, device)
    atomic_write_bytes(demo.path / "digits.png", grid_png)

    gpt, gpt_time = train_timed("Running Custom Transformer Training", "GPT", gpt_train.train, gpt_cfg, args.quiet)
    if gpt["interrupted"]:
        return 130
    vocab = gpt["vocab"]
    prompt = "ROMEO:" if all(c in vocab.stoi for c in "ROMEO:") else default_prompt(vocab)
    sample = gpt_train.sample_text(gpt["model"], vocab, prompt, args.sample_tokens, seed=gpt_cfg.seed)
    banner("Generated sample")
    print(sample, flush=True)

    cnn_dir = Path(cnn["run_dir"]).relative_to(demo.path)
    gpt_dir = Path(gpt["run_dir"]).relative_to(demo.path)
    c = cnn["config"]
    lines = [
        "# customnn demo", "",
        f"Setting: {name}. Device: {device}.", "",
        "| model | training | result | time (s) |",
        "| --- | --- | --- | ---: |",
        f"| CNN (`{c['arch']}` architecture) | {c['train_samples'] or 60000} images, {c['epochs']} epochs, "
        f"batch {c['batch_size']}, {c['optimizer']} lr {c['lr']:g} | test accuracy {cnn['test_accuracy']:.2f}% "
        f"({cnn['correct']}/{cnn['n_test']}), test loss {cnn['test_loss']:.4f} | {cnn_time:.1f} |",
        f"| GPT ({gpt_cfg.n_layer} layers, width {gpt_cfg.n_embd}, context {gpt_cfg.block_size}) | preset "
        f"`{gpt_cfg.preset}`, {gpt['step']} steps, batch {gpt_cfg.batch_size} | val loss "
        f"{gpt['final_val_loss']:.4f} (train {gpt['final_train_loss']:.4f}) | {gpt_time:.1f} |", "",
        f"Run folders: [`{cnn_dir}`]({cnn_dir}/report.md) and [`{gpt_dir}`]({gpt_dir}/report.md).", "",
        "## CNN on MNIST", "",
        f"![CNN loss]({cnn_dir}/loss.png)", "",
        f"The first 16 test digits and the CNN's predictions ({grid_right}/16 right):", "",
        "![test digits](digits.png)", "",
        "## Transformer on text", "",
        f"![GPT loss]({gpt_dir}/loss.png)", "",
        f"A sample ({args.sample_tokens} characters from `{prompt.strip() or repr(prompt)}`, temperature 0.8):", "",
        "```", sample, "```", "",
    ]
    atomic_write_text(demo.path / "report.md", "\n".join(lines))
    print(f"report: {demo.path / 'report.md'}", flush=True)
    return 0
