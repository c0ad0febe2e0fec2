"""How much memory a request needs and how much the machine has: refuse in one line, before allocating.

A size the user can ask for (a model's width and context, a batch, an image, a checkpoint
file) is turned into an estimate of the bytes it needs (a model's own ``memory_estimate``, or
one measured from the model: ``customnn/train/usermodel.py``), compared with what the machine can give now (``available_memory``) and, when
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
