"""How much memory a request needs and how much the machine has: refuse in one line, before allocating.

A size the user can ask for (a GPT's width and context, a batch, a CNN's width, an image, a
checkpoint file) is turned into an estimate of the bytes it needs (``gpt_bytes``,
``cnn_bytes``), compared with what the machine can give now (``available_memory``) and, when
it does not fit, refused by ``check_memory`` with one ``UserError`` that says what was asked,
what it needs and what is available::

    customnn: error: a GPT of 4 layers, width 8192, context 65536, batch 12 needs about 1.2 TiB of
    memory to train (weights, optimizer state and activations), but only 21.4 GiB is available on
    cpu; use a smaller --n-embd, --block-size, --batch-size or --n-layer

The estimates are lower bounds (float32 tensors a step cannot do without, no allocator slack),
so a run that is refused cannot fit; a run that is accepted may still be tight.
"""

from __future__ import annotations

import os

from customnn.core.errors import UserError

FLOAT = 4  # bytes of a float32


def human(n: float) -> str:
    """Bytes for people: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """What this process's control group (a container's memory limit) still allows, or None."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(0, int(limit) - usage)
    return None


def _address_space_available() -> int | None:
    """What ``ulimit -v`` (RLIMIT_AS) still allows this process to map, or None without a limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        return max(0, soft - size)
    except (ImportError, OSError, ValueError, StopIteration):
        return None


def available_memory(device="cpu") -> int | None:
    """Bytes that can be allocated now on ``device``: on a GPU its free memory
    (``torch.cuda.mem_get_info``); on the CPU the least of the kernel's MemAvailable, the
    control group's limit and ``ulimit -v``. None when it cannot be known (then nothing is refused)."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    found = [n for n in (_meminfo_available(), _cgroup_available(), _address_space_available()) if n is not None]
    return min(found) if found else None


def check_memory(need: int, what: str, device="cpu", advice: str = "", available: int | None = None) -> None:
    """A one-line ``UserError`` when ``need`` bytes (what ``what`` needs) exceed what ``device`` has.

    Set ``CUSTOMNN_MEMORY_LIMIT`` (bytes, e.g. ``4e9``) to pretend the machine has that much.
    """
    if available is None:
        available = available_memory(device)
        override = os.environ.get("CUSTOMNN_MEMORY_LIMIT")
        if override:
            try:
                available = int(float(override))
            except ValueError:
                raise UserError(f"$CUSTOMNN_MEMORY_LIMIT must be a number of bytes, got {override!r}") from None
    if available is None or need <= available:
        return
    device_name = str(device)
    raise UserError(f"{what} needs about {human(need)} of memory, but only {human(available)} is available on "
                    f"{device_name}" + (f"; {advice}" if advice else ""))


# --- estimates --------------------------------------------------------------------------------------
def gpt_parameters(vocab_size: int, block_size: int, n_layer: int, n_embd: int, bias: bool = False,
                   tie_weights: bool = True, position_table: bool = True) -> int:
    """The number of parameters of a GPT (``customnn/models/gpt.py``) of these sizes (a position
    table of ``block_size`` rows unless the positions are rotary)."""
    c = n_embd
    per_block = 12 * c * c + (13 * c if bias else 0) + 4 * c  # attention 4C^2, MLP 8C^2; two layer norms
    head = 0 if tie_weights else vocab_size * c
    return vocab_size * c + (block_size * c if position_table else 0) + n_layer * per_block + 2 * c + head


def gpt_bytes(vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, batch_size: int,
              training: bool = True, dropout: float = 0.0, bias: bool = False, tie_weights: bool = True,
              position_table: bool = True, element_bytes: int = FLOAT) -> int:
    """A lower bound on the bytes a GPT step needs: weights (and, training, their gradients and
    AdamW's two moments), the activations a step keeps (about 16 values of width C per position
    and block for backward, the logits and their gradient) and, with dropout, the dense (T, T)
    attention weights and mask of every head (without dropout the attention is tiled, linear in T)."""
    p = gpt_parameters(vocab_size, block_size, n_layer, n_embd, bias, tie_weights, position_table)
    positions = batch_size * block_size
    if training:
        acts = n_layer * 16 * positions * n_embd + 3 * positions * vocab_size
        if dropout > 0:
            acts += n_layer * 2 * batch_size * n_head * block_size * block_size
        return element_bytes * (4 * p + acts)
    acts = 6 * positions * n_embd + 2 * positions * vocab_size  # a forward: a few tensors alive at a time
    return element_bytes * (p + acts)


def cnn_bytes(arch: str, width: int, batch_size: int, training: bool = True, element_bytes: int = FLOAT) -> int:
    """A lower bound on the bytes a CNN step needs on a batch of 28x28 images: the activations of
    each stage kept for backward (conv output, batch norm, ReLU: about 3 maps per stage) and the
    weights (and, training, gradients and optimizer state)."""
    if arch == "seed":
        maps = 6 * 24 * 24 + 12 * 8 * 8
        params = 6 * 25 + 6 + 12 * 6 * 25 + 12 + 192 * 10 + 10
    else:
        w = width
        maps = w * 28 * 28 + 2 * w * 14 * 14 + 4 * w * 7 * 7
        params = 9 * (w + 2 * w * w + 8 * w * w) + 4 * w * 9 * 10
    per_image = (3 if training else 1) * maps
    return element_bytes * (per_image * batch_size + (4 if training else 1) * params)


def check_training_memory(kind: str, cfg, device, vocab_size: int = 1,
                          mnist_sizes: tuple[int, int] = (60000, 10000)) -> None:
    """A one-line error, before anything is allocated, when a training run of ``kind`` ("gpt" or
    "cnn", its config ``cfg``) cannot fit in the memory of ``device``. The GPT's vocabulary size
    is 1 until the text is read (a lower bound); ``mnist_sizes`` are MNIST's train and test sets."""
    size = 8 if getattr(cfg, "dtype", "float32") == "float64" else FLOAT  # bytes of a number
    if kind == "gpt":
        need = gpt_bytes(vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.batch_size,
                         training=True, dropout=cfg.dropout, bias=cfg.bias, tie_weights=cfg.tie_weights,
                         position_table=getattr(cfg, "pos", "learned") == "learned", element_bytes=size)
        what = (f"training a GPT of {cfg.n_layer} layers, width {cfg.n_embd}, context {cfg.block_size}, batch "
                f"{cfg.batch_size} (weights, gradients, optimizer state and activations)")
        advice = "use a smaller --n-embd, --block-size, --batch-size or --n-layer"
    else:
        n_train, n_test = cfg.train_samples or mnist_sizes[0], cfg.test_samples or mnist_sizes[1]
        need = max(cnn_bytes(cfg.arch, cfg.width, cfg.batch_size, training=True, element_bytes=size),
                   cnn_bytes(cfg.arch, cfg.width, min(cfg.eval_batch_size, n_test), training=False,
                             element_bytes=size))
        need += (1 + size) * 28 * 28 * (n_train + n_test)  # the images, as bytes and as numbers
        what = f"training a {cfg.arch} CNN of width {cfg.width} on batches of {cfg.batch_size}"
        advice = "use a smaller --batch-size, --eval-batch-size or --width"
    check_memory(need, what, device, advice)
