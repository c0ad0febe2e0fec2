"""ZeRO stage 1 (``--zero``): AdamW's moments sharded across the ranks of a data-parallel run.

Rajbhandari, Rasley, Ruwase & He, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", SC 2020. Stage 1 partitions the optimizer's state: of N ranks, each keeps
Adam's two moments for 1/N of the parameters only, and updates only that 1/N; the parameters,
forward and backward stay replicated. AdamW's state for P parameters is 2 P numbers on every
rank in plain data parallelism, 2 P / N here. The cost: the gradients are reduce-scattered
instead of all-reduced (half the traffic), and the updated parameters all-gathered (the other
half), so the bytes sent are those of an all-reduce; one small all-reduce more per step (the
norm); and every checkpoint save gathers the moments.

The layout is GradSync's in shard mode (train/distributed.py): the parameters in buckets, in the
order backward produces their gradients; bucket i is a flat vector of n_i numbers padded to
L_i = ceil(n_i / N) N, and rank r owns its contiguous slice [r L_i / N, (r + 1) L_i / N).
(Every bucket is sliced, rather than the whole flat vector once, so that each bucket's
reduce-scatter starts as soon as backward fills it, as the all-reduce does.) A parameter may
straddle two ranks' slices: each rank updates its segment of it.

One step, on every rank::

    backward   each bucket's gradients (L_i,) reduce-scattered (SUM) as it fills
               -> sync.shards[i] (L_i / N,): this rank's slice of the summed gradient
    finish     one all-reduce of (sum of squares of the shards, loss, stop, save)
               -> the global gradient norm, the step's loss and the agreed requests
    clip_      shards *= optim.clip_coefficient(norm, max_norm), clip_grad_norm_'s factor
    step       optim.adamw_update_ on this rank's segments: views into the model's own
               parameters, their gradient slices, their slices of m and v (exp_avg[i],
               exp_avg_sq[i], (L_i / N,) each), each parameter's group (lr, betas, eps,
               weight decay: none on biases and gains) and step count
    gather     shards[i] <- the updated slice; all-gathered -> sync.flat[i] (L_i,);
               every parameter copied from it: each rank holds the whole updated model again

Elementwise the update is AdamW's own arithmetic on the same numbers, so in float64 a --zero
run equals a plain one but for the order of the reductions' sums (losses equal to 1e-10).

Checkpoints hold what plain AdamW holds: ``state_dict`` gathers the moments (a collective:
every rank saves at the same steps) into ``{"state": {i: {"step", "exp_avg", "exp_avg_sq"}},
"param_groups": [...]}``, and a ``ZeroAdamW`` built on an AdamW that has loaded such a state
takes its slices of it and frees the rest. So a run resumes with or without --zero at any
number of processes, and ``customnn eval``, ``generate`` and ``predict`` read its checkpoints.
"""

from __future__ import annotations

import torch

from customnn.optim import AdamW, adamw_update_, clip_coefficient
from customnn.train.distributed import GradSync, all_gather, guarded


class ZeroAdamW:
    """AdamW's step for ``optimizer``'s parameters, with this rank's slice of the moments only.

    ``optimizer`` (an ``AdamW``) keeps its param groups: the engine's ``set_lr`` writes the lr
    there, and ``step`` reads each group's hyperparameters from it. Its own ``state`` (from a
    resumed checkpoint, or empty) is taken over and emptied. ``sync`` is the run's ``GradSync``
    in shard mode; call ``step`` after its ``finish`` (and ``clip_``).
    """

    def __init__(self, optimizer: AdamW, sync: GradSync):
        if type(optimizer) is not AdamW or not sync.shard:
            raise TypeError("ZeroAdamW shards an AdamW's state over a GradSync in shard mode")
        self.opt, self.sync = optimizer, sync
        rank = sync.dist.rank
        order = [p for g in optimizer.param_groups for p in g["params"]]  # state_dict's numbering
        self.index = {id(p): k for k, p in enumerate(order)}
        group_no = {id(p): j for j, g in enumerate(optimizer.param_groups) for p in g["params"]}
        # every parameter's step count, the same on every rank (all of them are updated each step)
        self.steps = [int(optimizer.state.get(p, {}).get("step", 0)) for p in order]
        self.exp_avg = [torch.zeros_like(s) for s in sync.shards]  # (L_i / N,) per bucket, this rank's slice
        self.exp_avg_sq = [torch.zeros_like(s) for s in sync.shards]
        # Per param group, this rank's segments: parameter numbers and views (param, grad, m, v).
        self.owned = [{"index": [], "params": [], "grads": [], "exp_avgs": [], "exp_avg_sqs": []}
                      for _ in optimizer.param_groups]
        self.slices: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per bucket: (param view, shard view)
        with torch.no_grad():
            for i, bucket in enumerate(sync.buckets):
                size = sync.shards[i].numel()
                lo, hi = rank * size, (rank + 1) * size  # this rank's slice of the bucket
                self.slices.append([])
                for p in bucket:
                    if not p.is_contiguous():
                        raise ValueError(f"ZeRO needs contiguous parameters, got one of shape {tuple(p.shape)}")
                    o = sync.offsets[i][id(p)]
                    a, b = max(o, lo), min(o + p.numel(), hi)  # this rank's segment of p, in bucket positions
                    if a >= b:
                        continue
                    view = p.detach().view(-1)[a - o:b - o]  # (b - a,): the update writes the model's tensor
                    self.slices[i].append((view, sync.shards[i][a - lo:b - lo]))
                    if id(p) not in self.index:  # not trained by the optimizer: gathered as it is
                        continue
                    seg = self.owned[group_no[id(p)]]
                    seg["index"].append(self.index[id(p)])
                    seg["params"].append(view)
                    seg["grads"].append(sync.shards[i][a - lo:b - lo])
                    for key, flat in (("exp_avg", self.exp_avg[i]), ("exp_avg_sq", self.exp_avg_sq[i])):
                        mine = flat[a - lo:b - lo]
                        seg[key + "s"].append(mine)
                        saved = optimizer.state.get(p)
                        if saved:  # resumed: this rank's segment of the consolidated moment
                            mine.copy_(saved[key].reshape(-1)[a - o:b - o])
        optimizer.state.clear()  # the full moments, if a checkpoint loaded them, are freed

    @property
    def state_bytes(self) -> int:
        """Bytes of AdamW's moments this rank holds."""
        return sum(t.numel() * t.element_size() for t in (*self.exp_avg, *self.exp_avg_sq))

    @torch.no_grad()
    def clip_(self, norm: torch.Tensor, max_norm: float) -> None:
        """Scale this rank's gradient slices as ``clip_grad_norm_`` scales whole gradients, by the global ``norm``."""
        torch._foreach_mul_(self.sync.shards, clip_coefficient(norm, max_norm))

    @torch.no_grad()
    def step(self) -> None:
        """AdamW's update of this rank's segments, then every rank's segments gathered into every parameter."""
        for group, seg in zip(self.opt.param_groups, self.owned):
            if seg["params"]:
                adamw_update_(group, seg["params"], seg["grads"], seg["exp_avgs"], seg["exp_avg_sqs"],
                              [self.steps[k] + 1 for k in seg["index"]])
        self.steps = [t + 1 for t in self.steps]
        self._gather_parameters()

    @guarded
    def _gather_parameters(self) -> None:
        sync = self.sync
        works = []
        for i, pairs in enumerate(self.slices):
            for view, shard_view in pairs:  # the gradient slice is spent: it carries the updated parameters
                shard_view.copy_(view)
            works.append(all_gather(sync.flat[i], sync.shards[i], sync.dist.group, async_op=True))
        for i, bucket in enumerate(sync.buckets):
            works[i].wait()
            sync.flat[i][sync.used[i]:].zero_()  # the padding stays 0 (it is reduce-scattered into the norm)
            for p in bucket:
                o = sync.offsets[i][id(p)]
                p.detach().view(-1).copy_(sync.flat[i][o:o + p.numel()])
        works.clear()  # no gloo work outlives the step (see GradSync.finish)

    @guarded
    def state_dict(self) -> dict:
        """What the plain ``AdamW``'s ``state_dict`` would be: the moments gathered from every rank
        (every rank must call it; each gets the whole dict)."""
        sync = self.sync
        out = self.opt.state_dict()  # the param groups, with their numbering; the state is filled below
        state = {}
        for i, bucket in enumerate(sync.buckets):
            m, v = torch.empty_like(sync.flat[i]), torch.empty_like(sync.flat[i])  # (L_i,) each, for this save only
            all_gather(m, self.exp_avg[i], sync.dist.group)
            all_gather(v, self.exp_avg_sq[i], sync.dist.group)
            for p in bucket:
                k = self.index.get(id(p))
                if k is None or self.steps[k] == 0:  # AdamW has no state for a parameter it never updated
                    continue
                o = sync.offsets[i][id(p)]
                state[k] = {"step": self.steps[k], "exp_avg": m[o:o + p.numel()].view_as(p).clone(),
                            "exp_avg_sq": v[o:o + p.numel()].view_as(p).clone()}
        out["state"] = dict(sorted(state.items()))  # in parameter order, as AdamW's
        return out
