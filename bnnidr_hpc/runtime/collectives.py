"""The collectives training uses between ranks, each a no-op (or the identity) on a single
process: barrier, sums, gathers (with and without gradient), and the gradient averaging that
stands in for DistributedDataParallel. The process group they talk over is joined in
distributed.py.

Used by: train/loop.py (the epoch's sums, stop polls, per-rank timings), train/session.py (the
relevance prior's centre, the gradient averager), train/step.py (the gathered batches and
outputs, the gradients' average), train/evaluate.py (every rank's per-query APs).

Asynchronous ones return a function that waits: the step gives it a piece of independent work
to do while the collective travels (see wait), so no host synchronisation is added.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.distributed as dist


def barrier() -> None:
    """Wait until every rank is here."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def wait(work, while_waiting: Optional[Callable[[], bool]] = None) -> None:
    """Wait for an asynchronous collective. while_waiting: a small piece of independent work,
    called until the collective completes or it returns False (nothing left), so that the time
    spent on the network is not lost to the rank."""
    if while_waiting is not None:
        while not work.is_completed() and while_waiting():
            pass
    work.wait()


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenation of every rank's t (equal shapes), rank order; no gradient."""
    return all_gather_async(t)()


def all_gather_async(t: torch.Tensor, while_waiting: Optional[Callable[[], bool]] = None):
    """Start gathering t (as all_gather); returns a function that waits (see wait) and returns
    the concatenation."""
    if not dist.is_initialized():
        return lambda: t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    work = dist.all_gather(parts, t.contiguous(), async_op=True)

    def finish() -> torch.Tensor:
        wait(work, while_waiting)
        return torch.cat(parts)

    return finish


class _GatheredWithGrad(torch.autograd.Function):
    """Attaches a gathered copy of t to t's graph: the backward sums every rank's gradient for
    this rank's slice of the gathered tensor."""

    @staticmethod
    def forward(ctx, t, gathered, while_waiting):
        ctx.rows, ctx.while_waiting = t.shape[0], while_waiting
        return gathered

    @staticmethod
    def backward(ctx, grad):
        # A rank needs only its rows of the sum: every rank sends each other rank those rows
        # (one all_to_all) and adds what it receives, a world-th of an all_reduce's traffic
        # (measured against all_reduce and reduce_scatter: docs/performance.md).
        received = torch.empty_like(grad, memory_format=torch.contiguous_format)
        wait(dist.all_to_all_single(received, grad.contiguous(), async_op=True), ctx.while_waiting)
        return received.unflatten(0, (-1, ctx.rows)).sum(0), None, None


def all_gather_with_grad_async(t: torch.Tensor, while_waiting: Optional[Callable[[], bool]] = None):
    """Start gathering t (as all_gather_async); the function it returns waits and gives the
    concatenation, through which gradients flow back to every rank's t. while_waiting also fills
    the backward's wait for the gradients (see wait)."""
    if not dist.is_initialized():
        return lambda: t
    finish = all_gather_async(t.detach(), while_waiting)
    return lambda: _GatheredWithGrad.apply(t, finish(), while_waiting)


class GradientAverager:
    """Averages a model's gradients over the ranks after backward(), as DistributedDataParallel
    does, but the caller starts the all-reduce and waits for it later: the step computes the next
    batch's input distances while the gradients travel, where DDP would wait inside backward().
    One flat buffer, one collective per step. Parameters and buffers start as rank 0's (as DDP)."""

    def __init__(self, model: torch.nn.Module):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = list(model.buffers())
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.flat = None
        if self.world > 1:
            self.flat = torch.empty(sum(p.numel() for p in self.params), device=self.params[0].device,
                                    dtype=self.params[0].dtype)
            with torch.no_grad():
                for t in self.params + self.buffers:
                    dist.broadcast(t, 0)

    def start(self):
        """Start averaging the gradients; the function it returns, given an optional piece of work
        to do meanwhile (see wait), waits and writes them back."""
        if self.world == 1:
            return lambda while_waiting=None: None
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        # One buffer for every step: last step's gradients, its views, were dropped by zero_grad.
        flat = torch.cat([g.reshape(-1) for g in grads], out=self.flat)
        work = dist.all_reduce(flat, async_op=True)

        def finish(while_waiting: Optional[Callable[[], bool]] = None) -> None:
            wait(work, while_waiting)
            flat.div_(self.world)
            for p, g in zip(self.params, torch.split(flat, [g.numel() for g in grads])):
                p.grad = g.view_as(p)

        return finish

    def sync_buffers(self) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every rank, as DDP keeps them,
        before the ranks evaluate the model together."""
        if self.world > 1:
            for b in self.buffers:
                dist.broadcast(b, 0)


def gather_floats(values: List[float], device: torch.device) -> List[List[float]]:
    """Every rank's list of floats (same length), for per-rank timings."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    return all_gather(t[None]).tolist()

