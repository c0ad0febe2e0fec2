"""The ``--time-budget`` planner: how many training steps fit in a given number of seconds.

``customnn train gpt --time-budget 580`` trains for as many steps as fit in 580 s of wall
time, evaluations, the plot, the report and the final save included. The number of steps is
the length of the cosine learning-rate schedule, so it has to be known early: the planner
times the steps of the warmup, makes a plan before the cosine starts, and revises it every
15 s from the speed of the steps since the last plan, because the speed of a shared machine
changes. The training loop (``customnn/train/gpt.py``) asks it once per step::

    planner = StepPlanner(budget_s, max_iters, warmup_iters, eval_interval, step, total_iters)
    ...
    planner.timed_eval(seconds)              # after each evaluation
    if planner.update(step, clock()):        # before each step; True when the plan changed
        total_iters = planner.total          # and rebuild the learning-rate schedule
"""

from __future__ import annotations

import torch

PLAN_SYNC_STEPS = 16  # steps between exchanges of the plan across processes


class StepPlanner:
    """How many steps fit in ``--time-budget`` seconds, evaluations and the closing outputs included.

    The step time is measured from the 5th step of a session on (the first ones warm up
    caches and thread pools), without the time spent in evaluations. The plan is made once
    enough steps are timed (within the warmup, so that the cosine schedule, whose length is
    the plan, has not started yet) and revised every ``REVISE_S`` seconds from the speed of
    the steps since the last plan, as the speed of a shared machine changes. Without a budget
    (``budget_s`` None) the plan stays ``total_iters``.
    """

    RESERVE_S = 5.0  # the plot, the report and its sample, the final save
    REVISE_S = 15.0  # seconds between revisions of the plan

    def __init__(self, budget_s: float | None, max_iters: int, warmup_iters: int, eval_interval: int,
                 start_step: int, total_iters: int):
        self.budget_s = budget_s  # seconds for the whole run, all sessions (None: no budget)
        self.max_iters = max_iters  # the plan never goes beyond it
        self.eval_interval = eval_interval  # steps between evaluations
        self.total = total_iters  # the plan: the step the run ends at
        self.mark_step = start_step + 5  # timing starts here
        self.first_plan_step = self.mark_step + max(10, min(40, warmup_iters - self.mark_step - 1))
        self.mark_time = None  # the clock at mark_step: the speed is measured from (mark_step, mark_time)
        self.eval_time = 0.0  # seconds spent in evaluations since the mark
        self.last_eval_s = 0.0
        self.planned_at = None  # the clock at the last plan

    def timed_eval(self, seconds: float) -> None:
        self.last_eval_s = seconds
        if self.mark_time is not None:
            self.eval_time += seconds

    def update(self, step: int, used_s: float) -> bool:
        """Make or revise the plan at this step if it is time to; True when ``total`` changed."""
        if self.budget_s is None:
            return False
        if step == self.mark_step:
            self.mark_time = used_s
        due = (step == self.first_plan_step if self.planned_at is None
               else used_s - self.planned_at >= self.REVISE_S)
        if self.mark_time is None or not due:
            return False
        per_step = (used_s - self.mark_time - self.eval_time) / max(1, step - self.mark_step)
        left = self.budget_s - used_s - self.RESERVE_S - self.last_eval_s  # the final evaluation
        per_eval = self.last_eval_s / self.eval_interval  # evaluations spread over the steps
        steps = max(0, int(left / (per_step + per_eval)))
        total = max(step, min(self.max_iters, step + steps))
        self.planned_at = used_s
        self.mark_step, self.mark_time, self.eval_time = step, used_s, 0.0  # the next speed: from here
        changed, self.total = total != self.total, total
        return changed

    def agreed_update(self, step: int, used_s: float, dist, total: int) -> bool:
        """``update``, where under torchrun (``dist``, train/distributed.py) rank 0's clock decides
        and every rank follows it; ``total``: the plan in force. Across processes the plan is
        exchanged every ``PLAN_SYNC_STEPS`` steps only (a blocking broadcast a step would slow
        small models), so a revision takes effect up to that many steps late, on every rank at
        the same step."""
        changed = self.update(step, used_s)
        if dist.active and self.budget_s is not None:
            if step % PLAN_SYNC_STEPS:
                return False
            agreed = torch.tensor([max(self.total, step)], dtype=torch.int64, device=dist.collective_device)
            dist.broadcast_([agreed])
            changed, self.total = int(agreed.item()) != total, int(agreed.item())
        return changed
