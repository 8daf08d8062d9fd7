"""When the ranks of a run agree to stop: after the same step, within a bounded time whatever the
epoch's length, and at every epoch's end, without a host synchronisation in every step.

Used by: train/loop.py (one StopPoll per session, through every epoch).

A stop request (SIGTERM, SIGINT, Slurm's warning signal, preemption) reaches each rank at its own
moment, so the ranks agree on the step after which they all stop: one small all-reduce, and a host
sync. They agree after a session's first step, then every `interval` steps, as many as take about
CHECK_SECONDS (at most CHECK_EVERY), and after every epoch's last step. The interval comes from the
step time measured between agreements and averaged over the ranks by the same all-reduce, so every
rank counts to the same next step. A single rank reads its flag (a Python attribute) after every
step. The non-finite loss check rides on the same all-reduce.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from bnnidr_hpc.runtime import collectives

# At most this many steps, or about this many seconds of steps, between two agreements.
CHECK_EVERY = 16
CHECK_SECONDS = 2.0


class StopPoll:
    """Whether the ranks stop after this step, and whether the loss went non-finite."""

    def __init__(self, stop_requested: Callable[[], bool], world: int):
        self.stop_requested, self.world = stop_requested, world
        self.interval = 1  # the first agreement follows a session's first step: no step time known yet
        self.steps = 0  # since the last agreement
        self.since = time.perf_counter()

    def start_epoch(self) -> None:
        """An epoch starts right after the last one's agreement: its evaluation and checkpoint
        are not step time."""
        self.steps, self.since = 0, time.perf_counter()

    def after_step(self, sums: torch.Tensor, last_of_epoch: bool) -> tuple:
        """(stop, loss non-finite) after a step; sums: this rank's loss sums on the device."""
        self.steps += 1
        if self.steps < self.interval and not last_of_epoch:
            return (self.world == 1 and self.stop_requested()), False
        return self._agree(sums)

    def _agree(self, sums: torch.Tensor) -> tuple:
        step_seconds = (time.perf_counter() - self.since) / self.steps
        flags = torch.stack([torch.tensor(float(self.stop_requested()), device=sums.device),
                             (~torch.isfinite(sums)).any().float(),
                             torch.tensor(step_seconds, device=sums.device)])
        stop, non_finite, seconds = collectives.all_reduce_sum(flags).tolist()
        mean_step_seconds = seconds / self.world  # the same number on every rank
        self.interval = max(1, min(CHECK_EVERY, int(CHECK_SECONDS / max(mean_step_seconds, 1e-9))))
        self.steps, self.since = 0, time.perf_counter()
        return stop > 0, non_finite > 0
