"""The checkpoint format: what a training run saves, and every check on a file read back.

A checkpoint is a safetensors file (tensors only, never pickled) whose header metadata holds
one JSON document under the key ``customnn``::

    {"format": "customnn-checkpoint", "version": 1,
     "model": "cnn" | "gpt", "config": {...}, "step": N, ...,   # what the model's loader needs
     "state": <skeleton>}                                        # the training state, see below

The model's tensors are stored as ``model.<name>``. The nested training state (optimizer
moments, RNG states, the data order, the engine's counters) is split by ``flatten_state``
into flat tensors, stored as ``state.*`` entries, and a JSON skeleton that says where each
goes back. Nothing from the file is trusted: the header is read alone first (a length and a
bounded JSON document), the tensors are mapped rather than read into memory, and any damage
becomes a one-line ``UserError``; each model's loader then checks the configuration against
the tensors before it builds anything (``customnn/train/loading.py``).

Files are written atomically (``customnn/core/fileio.py``): a crash leaves the previous
checkpoint, never half of one.

    save_checkpoint("last.safetensors", model.state_dict(), {"model": "gpt", ...}, state)
    ckpt = load_checkpoint(resolve_checkpoint("runs/gpt-20261127-120000"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from customnn.core.errors import UserError
from customnn.core.fileio import atomic_write_bytes

FORMAT = "customnn-checkpoint"
FORMAT_VERSION = 1
# How large a header customnn writes gets: a GPT's vocabulary of every character the text loader accepts
# (all 1,112,064 Unicode scalar values, escaped twice as JSON: 14.4 MiB), the tensor index and the
# training state's skeleton (6.8 KiB per block with AdamW: 6.6 MiB for 1000 blocks) and the engine's
# row of every evaluation (140 to 170 bytes: 10 MiB is 60,000 evaluations, by when the saves, each
# rewriting every row, have written hundreds of gigabytes). 32 MiB holds all of them at once; a
# longer header is not one customnn wrote (``save_checkpoint`` refuses to write one). The bound is
# also what reading a forged header can cost: json takes about 25 bytes of memory per byte of a
# header of empty objects, 800 MB at this size.
MAX_HEADER_BYTES = 32 * 2**20
# What reading a damaged or forged training state can raise, wherever it is read back.
DAMAGED = (KeyError, IndexError, TypeError, ValueError, RuntimeError, SyntaxError, OverflowError,
           RecursionError, AttributeError)


def flatten_state(obj, prefix: str = "state"):
    """Split nested dicts/lists of tensors and plain values into flat tensors + a JSON skeleton.

    Dict keys keep their type (optimizer state is keyed by int), tensors are replaced by
    ``{"__tensor__": name}``.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(o, path):
        if isinstance(o, torch.Tensor):
            tensors[path] = o
            return {"__tensor__": path}
        if isinstance(o, dict):
            return {"__dict__": [[k, walk(v, f"{path}.{k}")] for k, v in o.items()]}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(o)]
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        raise TypeError(f"cannot store {type(o).__name__} at {path} in a checkpoint")

    return tensors, walk(obj, prefix)


def unflatten_state(skeleton, tensors: dict[str, torch.Tensor]):
    def walk(o):
        if isinstance(o, dict) and "__tensor__" in o:
            name = o["__tensor__"]
            if name not in tensors:
                raise UserError(f"checkpoint is damaged: tensor {name} is missing")
            return tensors[name]
        if isinstance(o, dict) and "__dict__" in o:
            return {k: walk(v) for k, v in o["__dict__"]}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(skeleton)


@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]  # parameter and buffer name -> tensor
    meta: dict  # model kind, config, step, ... (JSON)
    state: object  # nested training state (optimizer, RNG, data order), or None
    path: Path | None = None  # the file it was read from


def save_checkpoint(path: str | Path, model_state: dict, meta: dict, state=None) -> None:
    """Write a checkpoint atomically. ``meta`` must be JSON-serialisable.

    A failed write (disk full, no permission) raises ``UserError`` and leaves the previous
    checkpoint at ``path`` as it was.
    """
    from safetensors.torch import save

    state_tensors, skeleton = flatten_state(state)
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors.update(state_tensors)
    # safetensors wants contiguous CPU tensors that share no memory
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "version": FORMAT_VERSION, **meta, "state": skeleton}
    data = save(tensors, metadata={"customnn": json.dumps(header)})
    size = int.from_bytes(data[:8], "little")
    if size > MAX_HEADER_BYTES:  # never write what cannot be read back
        raise UserError(f"could not save checkpoint {path}: its header would be {size / 2**20:.1f} MiB, more than "
                        f"the {MAX_HEADER_BYTES // 2**20} MiB a checkpoint's header may have; the previous "
                        "checkpoint (if any) is kept")
    try:
        atomic_write_bytes(path, data)
    except OSError as e:  # disk full, no permission, ...: the previous file is untouched
        raise UserError(f"could not save checkpoint {path}: {e.strerror or e}; "
                        "the previous checkpoint (if any) is kept") from None


def read_header(path: str | Path) -> dict:
    """The JSON header of a checkpoint, read alone (8 bytes of length, then the header), so a file
    of any size is looked at before a byte of its tensors is read; damage is a ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if MAX_HEADER_BYTES < n <= size - 8:
                raise UserError(f"{path} is not a customnn checkpoint: its header is {n / 2**20:.1f} MiB, more "
                                f"than the {MAX_HEADER_BYTES // 2**20} MiB a customnn checkpoint's header can be")
            if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
                raise ValueError("header length")
            header = json.loads(f.read(n))
        meta = json.loads(header["__metadata__"]["customnn"])
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise UserError(f"{path} is not a readable customnn checkpoint (damaged, truncated or another format: "
                        f"{type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a customnn checkpoint")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {meta.get('version')} is not supported "
                        f"(this customnn reads version {FORMAT_VERSION})")
    return meta


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; any damage or foreign file is a one-line ``UserError``.

    The header is read and checked first (``read_header``); the tensors are then mapped from
    the file by safetensors rather than read whole into memory.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_header(path)
    try:
        tensors = load_file(path)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"{path} is not a readable customnn checkpoint (damaged, truncated or another format: "
                        f"{type(e).__name__})") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        state = unflatten_state(meta.pop("state", None), tensors)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except DAMAGED:  # a skeleton no save_checkpoint wrote
        raise UserError(f"{path}: checkpoint is damaged: its training state is malformed") from None
    return Checkpoint(model_state, meta, state, path)


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A run folder or a checkpoint file -> the checkpoint file (``best`` first, else ``last``)."""
    path = Path(path)
    if path.is_dir():
        order = [prefer, "last", "best"]
        for name in order:
            candidate = path / f"{name}.safetensors"
            if candidate.is_file():
                return candidate
        raise UserError(f"no checkpoint in run folder {path} (looked for best.safetensors and last.safetensors)")
    if path.is_file():
        return path
    raise UserError(f"run folder or checkpoint not found: {path}")
