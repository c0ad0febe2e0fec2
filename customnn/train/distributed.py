"""Data-parallel training over processes: torchrun starts N, each trains on its slice of the batch.

    torchrun --standalone --nproc-per-node 2 -m customnn train gpt --batch-size 24
    torchrun --nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT --nproc-per-node 2 -m customnn train cnn

``Dist.from_env()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) and starts the process group: gloo for CPU tensors, NCCL for
CUDA (``cuda:LOCAL_RANK``). Without it, training is one process and nothing here does any work.

The same training, more processes. ``--batch-size`` stays the global batch B. Every rank draws
the whole batch from the same seeded generators, exactly as one process would, and keeps its
own rows (``rows``): rank r of N takes rows [r B / N, (r + 1) B / N). Each rank's loss is the
sum over its rows divided by B, so the gradients summed over ranks are the gradient of the
global batch's mean loss, for any split, and N processes train what one process trains.

The gradient exchange, by hand (``GradSync``). Parameters are broadcast from rank 0 at the
start. During backward each parameter's gradient, once accumulated, is copied into a bucket
(``register_post_accumulate_grad_hook``); a bucket whose parameters are all in is all-reduced
(SUM) asynchronously while backward goes on with earlier layers; ``finish`` waits for the
buckets and writes the summed gradients back. Buckets are filled in the order backward
produces gradients (the reverse of the parameters' order). The last one, complete only when
backward ends, is sent by ``finish`` with three more numbers: the rank's share of the loss,
whether it was asked to stop and whether its ``--save-interval`` clock says save, so that the
step's loss and those decisions cost no exchange of their own (each exchange, however small,
waits for the slowest rank). Clipping and the finiteness check come after the exchange, so
every rank sees the same gradients and makes the same decision. With ``--zero`` the buckets are
reduce-scattered instead (each rank keeps the sum of its slice, train/zero.py), and the three
numbers travel with the one small all-reduce of the gradient's sum of squares.

One run, not N: rank 0 alone writes the run folder, logs and checkpoints, and evaluates; the
others wait at the evaluation's broadcast. Decisions that end or reshape a run are agreed by all
ranks: Ctrl-C or SIGTERM on any rank in each step's gradient exchange (and, before a session's
first step, by ``agree``), a ``--save-interval`` save in the same exchange (with --zero a save
is a collective: it gathers the moments), the time budget's plan every ``PLAN_SYNC_STEPS`` steps.
"""

from __future__ import annotations

import datetime
import os

import torch

from customnn.core.errors import UserError

BUCKET_BYTES = 4 * 2**20  # all-reduce in pieces of about this size, overlapping with backward
EXTRAS = 3  # numbers sent with the last bucket: the rank's loss, its stop and its save requests


class PeerLost(UserError):
    """A collective failed: another process of the run stopped or cannot be reached."""


def guarded(f):
    """Turn a failed collective (gloo's "Connection reset by peer", NCCL's errors) into ``PeerLost``."""
    import functools

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except RuntimeError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PeerLost(f"another process of this run stopped or cannot be reached ({first[:160]})") from None
    return wrapper


class Dist:
    """This process's place among the ranks of a run (rank 0 of 1 without torchrun)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, group=None):
        self.rank, self.world, self.local_rank, self.group = rank, world, local_rank, group

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str) -> Dist:
        """The process group torchrun's environment describes, or a single process without one."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        import torch.distributed as dist

        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they come from torchrun)") from None
        cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
        backend = "nccl" if cuda else "gloo"
        if not dist.is_initialized():
            timeout = datetime.timedelta(seconds=float(os.environ.get("CUSTOMNN_DIST_TIMEOUT", "300")))
            try:
                dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
            except (RuntimeError, ValueError) as e:
                raise UserError(f"could not start the process group ({backend}, rank {rank} of {world}): "
                                f"{str(e).splitlines()[0]}") from None
        if cuda:
            torch.cuda.set_device(local_rank)
        return cls(rank, world, local_rank, dist.group.WORLD)

    def device(self, resolved: torch.device) -> torch.device:
        """Each rank's device: ``cuda:LOCAL_RANK`` on GPUs, the CPU otherwise."""
        if self.active and resolved.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return resolved

    # --- the batch ------------------------------------------------------------------------
    def rows(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` rows (the first ranks take one more when
        N does not divide n, as at the end of an epoch)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    # --- collectives ----------------------------------------------------------------------
    @guarded
    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks, in place (unchanged for one process)."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    @guarded
    def agree(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a Ctrl-C on one rank stops them all)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.collective_device)
        return bool(self.sum_(t).item() > 0)

    @guarded
    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    @guarded
    def broadcast_(self, tensors) -> None:
        """Rank 0's values of ``tensors`` copied into every rank's, in place."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src=0, group=self.group)

    @guarded
    def sync_generators(self, generators: dict) -> None:
        """Every generator set to rank 0's state (a CPU state is a byte tensor; a CUDA one too)."""
        if not self.active:
            return
        states = self.broadcast_object({k: g.get_state() for k, g in generators.items()})
        for k, g in generators.items():
            g.set_state(states[k])

    collective_device = property(lambda self: torch.device("cuda", self.local_rank)
                                 if self.active and torch.distributed.get_backend(self.group) == "nccl"
                                 else torch.device("cpu"))

    def close(self, wait: bool = True) -> None:
        """Leave the process group; with ``wait``, once every rank is done (rank 0 writes the
        run's outputs after the last step: the others must not tear the group down under it)."""
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                if wait:
                    dist.barrier(group=self.group)
                dist.destroy_process_group()


class GradSync:
    """Sum the gradients over the ranks in buckets as backward produces them (module docstring).

    ``start()`` before a step's backward; ``finish(loss, stop, save)`` after it. All-reduce mode
    (the default): every parameter's ``.grad`` is then the sum over the ranks. Shard mode
    (``shard=True``, ZeRO, train/zero.py): each bucket's flat buffer is padded to a multiple of
    N and reduce-scattered, rank r keeping the sum of its slice r in ``shards[i]``; each
    parameter's own ``.grad`` is dropped once it is copied into its bucket. Either way
    ``finish`` returns the sum of the ranks' losses, whether any rank asked to stop, whether any
    rank's ``--save-interval`` clock says save, and (shard mode) the global gradient norm.
    """

    def __init__(self, params, dist: Dist, bucket_bytes: int = BUCKET_BYTES, shard: bool = False):
        params = list(params)
        self.dist, self.shard = dist, shard
        self.buckets: list[list[torch.Tensor]] = []  # in the order backward fills them
        size = 0
        for p in reversed(params):
            if not self.buckets or size + p.numel() * p.element_size() > bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self.bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b}
        self.used = [sum(p.numel() for p in b) for b in self.buckets]  # n_i: bucket i's gradient numbers
        sizes = list(self.used)
        if shard:  # (ceil(n_i / N) * N,) per bucket, rank r's slice r of it summed into shards[i]
            sizes = [-(-n // dist.world) * dist.world for n in sizes]
        else:  # the last bucket has more places, after its gradients: the loss and the two requests
            sizes[-1] += EXTRAS
        b0 = self.buckets[0][0]
        self.flat = [torch.empty(n, dtype=b0.dtype, device=b0.device) for n in sizes]
        self.shards = []  # shard mode: (L_i / N,) per bucket
        if shard:
            self.shards = [torch.zeros(n // dist.world, dtype=b0.dtype, device=b0.device) for n in sizes]
            for f, n in zip(self.flat, self.used):  # the padding stays 0
                f[n:].zero_()
        self.offsets = [{id(p): o for p, o in zip(b, _cumsum([p.numel() for p in b]))} for b in self.buckets]
        self.hooks = [p.register_post_accumulate_grad_hook(self._ready) for p in params]
        self.pending: list[int] = []
        self.works: list = []
        self.arrived: set[int] = set()

    def start(self) -> None:
        self.pending = [len(b) for b in self.buckets]
        self.works = [None] * len(self.buckets)
        self.arrived = set()

    def _send(self, i: int):
        import torch.distributed as dist

        if self.shard:
            return reduce_scatter(self.shards[i], self.flat[i], group=self.dist.group, async_op=True)
        return dist.all_reduce(self.flat[i], op=dist.ReduceOp.SUM, group=self.dist.group, async_op=True)

    @guarded
    def _ready(self, p: torch.Tensor) -> None:
        if not self.pending:  # a backward outside a training step (none happens in the engine)
            return
        i = self.bucket_of[id(p)]
        o = self.offsets[i][id(p)]
        self.flat[i][o:o + p.numel()].copy_(p.grad.reshape(-1))
        self.arrived.add(id(p))
        if self.shard:
            p.grad = None  # the bucket holds it now; the update needs only this rank's summed slice
        self.pending[i] -= 1
        # all-reduce mode: the last bucket goes with finish's numbers
        if self.pending[i] == 0 and (self.shard or i < len(self.buckets) - 1):
            self.works[i] = self._send(i)

    @guarded
    def finish(self, loss: torch.Tensor, stop: bool, save: bool = False):
        """Send what is left with this rank's ``loss`` (a 0-d tensor) and its ``stop`` and
        ``save`` requests, wait for every bucket; return ``(loss summed over the ranks, any stop,
        any save, global gradient norm or None)``. All-reduce mode writes the summed gradients
        back into ``.grad``; shard mode leaves them in ``shards`` and computes their norm."""
        import torch.distributed as dist

        for i, bucket in enumerate(self.buckets):
            if self.works[i] is None:  # the last bucket, or a parameter without a gradient this step
                for p in bucket:
                    if id(p) not in self.arrived:
                        o = self.offsets[i][id(p)]
                        self.flat[i][o:o + p.numel()].zero_()
                if self.shard or i < len(self.buckets) - 1:
                    self.works[i] = self._send(i)
        dtype, device = self.flat[0].dtype, self.flat[0].device
        extras = [loss.detach().reshape(()).to(device, dtype), *(torch.tensor(float(flag), dtype=dtype, device=device)
                                                                  for flag in (stop, save))]
        if not self.shard:
            last = self.flat[-1]
            last[-EXTRAS:].copy_(torch.stack(extras))
            self.works[-1] = self._send(len(self.buckets) - 1)
        for i, bucket in enumerate(self.buckets):
            self.works[i].wait()
            if self.shard:
                continue
            for p in bucket:
                o = self.offsets[i][id(p)]
                summed = self.flat[i][o:o + p.numel()].view_as(p)
                if p.grad is None:
                    p.grad = summed.clone()
                else:
                    p.grad.copy_(summed)
        # Drop the finished works now: a gloo work still referenced when the interpreter shuts
        # down can be freed by gloo's thread without the interpreter (a SIGABRT at exit).
        self.pending, self.works = [], []
        norm = None
        if self.shard:  # one small all-reduce: the sum of squares of the shards and the extras
            squares = torch.stack([s.dot(s) for s in self.shards]).sum()
            last = torch.stack([squares.to(dtype), *extras])
            dist.all_reduce(last, op=dist.ReduceOp.SUM, group=self.dist.group)
            norm = last[0].sqrt()
        loss_sum, stops, saves = last[-EXTRAS:].clone().unbind(0)
        return loss_sum.to(loss.dtype), bool(stops.item() > 0), bool(saves.item() > 0), norm

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def reduce_scatter(output: torch.Tensor, input: torch.Tensor, group, async_op: bool = False):
    """The SUM over the ranks of ``input`` (N k,), rank r keeping part r (k,) in ``output``."""
    import torch.distributed as dist

    f = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # torch >= 2.13, earlier
    return f(output, input, op=dist.ReduceOp.SUM, group=group, async_op=async_op)


def all_gather(output: torch.Tensor, input: torch.Tensor, group, async_op: bool = False):
    """Every rank's ``input`` (k,), rank r's as part r of ``output`` (N k,)."""
    import torch.distributed as dist

    f = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # torch >= 2.13, earlier
    return f(output, input, group=group, async_op=async_op)


def _cumsum(sizes: list[int]) -> list[int]:
    out, total = [], 0
    for s in sizes:
        out.append(total)
        total += s
    return out
