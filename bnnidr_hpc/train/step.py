"""The training step: forward, the loss over the global batch's pairs (or, for `loss: graph`, its
edges), backward, gradient averaging, optimizer step. The hot path: no host synchronisation, no
allocation it can avoid.

Used by: train/loop.py, benchmarks (bench_step.py, bench_workloads.py).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from bnnidr_hpc.config.schema import Config
from bnnidr_hpc.model.graph_loss import distance_term_sum, fit_ab, graph_loss_sum
from bnnidr_hpc.model.objectives import PairTargetsAhead, pair_targets, stress_share
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.runtime import collectives
from bnnidr_hpc.runtime.distributed import DistInfo
from bnnidr_hpc.train.optim import Optimizers


def make_step(c: Config, model: Reducer, optimizers: Optimizers, info: DistInfo,
              averager: Optional[collectives.GradientAverager] = None, distance_weight: float = 0.0):
    """The training step, (this rank's batch x, the global batch or None, a function returning the
    next step's global batch (data.NextBatch) or None, keep: a 0/1 row over the output units or
    None (relevance.py)) -> (stress, KL term), both detached on the device: no host sync. Without
    the global batch the step gathers it. Given the next one, the step copies it and computes its
    input distances (the largest product) while it waits for its collectives, and uses them in the
    next call. `loss: graph` has its own step (make_graph_step, with distance_weight)."""
    if c.loss == "graph":
        return make_graph_step(c, model, optimizers, info, averager, distance_weight)
    world = info.world_size
    averager = averager or collectives.GradientAverager(model)
    kl_scale = _kl_scale(c)
    zero = torch.zeros((), device=next(model.parameters()).device)
    bf16 = c.precision == "bf16"
    device_type = zero.device.type
    ahead: Optional[PairTargetsAhead] = None  # the next global batch's input distances

    # One function, not split: every call here is on the hot path, and the order of the waits and
    # the work done while waiting is the point of it.
    def step(x: torch.Tensor, full_x: Optional[torch.Tensor] = None,
             next_full_x: Optional[Callable[[], torch.Tensor]] = None, keep: Optional[torch.Tensor] = None):
        nonlocal ahead
        current = ahead if ahead is not None and ahead.next_batch() is full_x else None
        # Whenever the step waits for a collective it works on the next batch: copies it, then
        # computes its input distances.
        ahead = PairTargetsAhead(next_full_x, info.rank, world, bf16, c.loss, c.neighbour_quantile) \
            if next_full_x is not None else None
        while_waiting = ahead.work_one if ahead is not None else None
        # Without the global batch, gather it; it travels while the forward pass runs.
        gathered_x = collectives.all_gather_async(x) if full_x is None else None
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out = out.float()  # distances of the reduced vectors stay float32: they are cheap
        if keep is not None:
            out = out * keep
        gathered_out = collectives.all_gather_with_grad_async(out, while_waiting)
        kl = kl_scale * model.kl() if kl_scale else zero  # the parameters alone: before any wait
        if current is not None:
            targets = current.result()
        else:
            targets = pair_targets(full_x if gathered_x is None else gathered_x(), info.rank, world, bf16,
                                   c.loss, c.neighbour_quantile)
        stress = stress_share(out, gathered_out, targets)
        loss = world * stress + kl  # the gradients are averaged over ranks; the stress is their sum
        loss.backward()
        averager.start()(while_waiting)
        optimizers.step()
        return stress.detach(), kl.detach()

    return step


def _kl_scale(c: Config) -> float:
    return c.bayes.kl_weight / max(c.data.n * (c.data.n - 1), 1) if c.bayesian else 0.0  # per pair: BayesConfig


def make_graph_step(c: Config, model: Reducer, optimizers: Optimizers, info: DistInfo,
                    averager: Optional[collectives.GradientAverager] = None, distance_weight: float = 0.0):
    """The step of `loss: graph`, (this rank's rows: its batch_size heads, their tails, then
    graph.negatives negatives per edge (data.edge_batches), keep or None) -> (loss share, KL
    term), detached: no host sync. Each edge's terms need only its own rows, so nothing is
    gathered: a rank's share is its edges' sum over the global batch's edge count, and the
    averaged gradients of world x share are those of the whole batch's loss (model.graph_loss).
    distance_weight: the distance term's (0: none), as train/graph_stage.py decided it for the run."""
    world, rows = info.world_size, c.batch_size
    averager = averager or collectives.GradientAverager(model)
    a, b = fit_ab(c.graph.spread, c.graph.min_dist)
    per_edge = 1.0 / c.global_batch
    kl_scale = _kl_scale(c)
    zero = torch.zeros((), device=next(model.parameters()).device)
    bf16 = c.precision == "bf16"
    device_type = zero.device.type
    negatives, repulsion = c.graph.negatives, c.graph.repulsion_strength

    def step(x: torch.Tensor, keep: Optional[torch.Tensor] = None):
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out = out.float()
        if keep is not None:
            out = out * keep
        share = graph_loss_sum(out[:rows], out[rows:2 * rows], out[2 * rows:], a, b, repulsion) * per_edge
        if distance_weight:
            share = share + distance_weight * per_edge * distance_term_sum(out, x, rows, negatives)
        kl = kl_scale * model.kl() if kl_scale else zero
        (world * share + kl).backward()
        averager.start()()
        optimizers.step()
        return share.detach(), kl.detach()

    return step
