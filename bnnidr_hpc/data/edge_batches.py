"""The batches of `loss: graph`: each step's global batch of fuzzy-graph edges, drawn in proportion
to their weights, with uniformly drawn negatives, and each rank's rows of it.

Used by: train/session.py (the loader of a `loss: graph` run), tests.

Every epoch's draws come from one generator seeded by (seed, epoch) on the CPU: steps x global
batch edges by inverse-CDF sampling of the weights (sampling with replacement, as
torch.multinomial, but one binary search per draw over a cumulative sum computed once, where
multinomial would rebuild it every call), then `negatives` uniform training positions per edge;
with labels and class_pairs c, then each edge is replaced with probability c by a pair of one
class (a labelled head drawn uniformly, a tail drawn uniformly from its class; unknown labels, -1,
never drawn). Those pairs pull each class together everywhere, where the graph's edges reach only
~15 neighbours: on digits they lift held-out AP by 0.05-0.07 (docs/method.md).
Rank r takes edges r*batch_size..(r+1)*batch_size of each step's global batch and their negatives,
so what a step trains on does not depend on how it is split; an epoch interrupted at step s
resumes from its plan's step s. Why sampling and not umap-learn's epochs_per_sample schedule: the
schedule is per-edge state tied to the number of epochs, which neither splits over ranks nor
resumes without storing it; sampled batches are independent of both and unbiased for UMAP's
weighted attraction.

A rank's rows are one (batch_size x (2 + negatives), p) block: its heads, then their tails, then
the negatives, taken from the cached points (ShardLoader.points) or made/read by the source.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from bnnidr_hpc.data.sources import ShardLoader, _stream_seed
from bnnidr_hpc.data.umap_graph import FuzzyEdges

GRAPH_STREAM = 3  # sources._stream_seed: 0 the sphere's parameters, 1 its chunks, 2 the epoch order
LABEL_BLOCK = 65536


class EdgeLoader:
    """A rank's batches of graph edges, with the interface of ShardLoader that train/loop.py uses
    (steps_per_epoch, cached, epoch(epoch, start_step) yielding tuples the step takes)."""

    def __init__(self, shards: ShardLoader, edges: FuzzyEdges, negatives: int,
                 labels: Optional[np.ndarray] = None, class_pairs: float = 0.0):
        self.shards, self.data = shards, shards.data
        self.batch_size, self.rank, self.world = shards.batch_size, shards.rank, shards.world
        self.steps_per_epoch, self.cached = shards.steps_per_epoch, shards.cached
        self.negatives, self.n, self.edges = negatives, edges.n, len(edges.weights)
        self.heads, self.tails = edges.heads, edges.tails
        self.cumulative = torch.cumsum(edges.weights.double(), 0)
        self.classes = ClassIndex(labels) if labels is not None and class_pairs else None
        self.class_pairs = class_pairs if self.classes is not None and len(self.classes.order) else 0.0

    def plan(self, epoch: int) -> torch.Tensor:
        """(steps, batch_size x (2 + negatives)) training positions of this rank, every step of the epoch."""
        g = torch.Generator().manual_seed(_stream_seed(self.data.seed, GRAPH_STREAM, epoch))
        steps, rows, world, m = self.steps_per_epoch, self.batch_size, self.world, self.negatives
        draws = torch.rand(steps * rows * world, generator=g, dtype=torch.float64) * self.cumulative[-1]
        picked = torch.searchsorted(self.cumulative, draws, right=True).clamp_max_(self.edges - 1)
        negatives = torch.randint(self.n, (steps, world, rows * m), generator=g)
        heads, tails = self.heads[picked], self.tails[picked]
        if self.class_pairs:
            swap = torch.rand(len(draws), generator=g, dtype=torch.float64) < self.class_pairs
            pair_heads, pair_tails = self.classes.pairs(int(swap.sum()), g)
            heads[swap], tails[swap] = pair_heads, pair_tails
        heads = heads.view(steps, world, rows)[:, self.rank]
        tails = tails.view(steps, world, rows)[:, self.rank]
        return torch.cat([heads, tails, negatives[:, self.rank]], dim=1)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Tuple[torch.Tensor]]:
        """(this rank's rows,) per step: one transfer of the epoch's plan, then one gather per step."""
        plan = self.plan(epoch).to(self.data.device)
        for step in range(start_step, self.steps_per_epoch):
            index = plan[step]
            if self.cached:
                yield (torch.index_select(self.shards.points, 0, index),)
            else:
                yield (self.data.rows(index)[0],)


class ClassIndex:
    """The labelled training positions grouped by class, to draw pairs of the same class."""

    def __init__(self, labels: np.ndarray):
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        known = torch.nonzero(labels >= 0).flatten()
        self.order = known[torch.argsort(labels[known], stable=True)]
        _, self.class_of, self.counts = torch.unique_consecutive(labels[self.order], return_inverse=True,
                                                                 return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def pairs(self, count: int, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """`count` (head, tail) positions: a labelled head drawn uniformly, a tail of its class."""
        head_at = torch.randint(len(self.order), (count,), generator=g)
        cls = self.class_of[head_at]
        tail_at = self.starts[cls] + (torch.rand(count, generator=g, dtype=torch.float64)
                                      * self.counts[cls]).long().clamp_max_(self.counts[cls] - 1)
        return self.order[head_at], self.order[tail_at]


def training_labels(data) -> Optional[np.ndarray]:
    """The labels of training positions 0..n-1 (None without labels), without holding their rows."""
    if hasattr(data, "train_rows"):  # NpyFeatures: labels are indexed by file row
        return None if data.labels is None else np.asarray(data.labels)[data.train_rows]
    n, parts = data.cfg.n, []
    for lo in range(0, n, LABEL_BLOCK):
        parts.append(data.rows(torch.arange(lo, min(n, lo + LABEL_BLOCK)))[1].cpu())
    return torch.cat(parts).numpy()
