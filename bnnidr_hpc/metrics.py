"""The objective (metric MDS stress over the pairs of a batch) and retrieval mean average precision.

Used by: train.py; benchmarks.

Stress (DeepMDS, normalised as Kruskal's stress-1 squared):
    sum_{i != j} (|f(x_i) - f(x_j)| - |x_i - x_j|)^2  /  sum_{i != j} |x_i - x_j|^2
over every ordered pair of the *global* batch. With several ranks each rank computes the rows of
its own points against the gathered batch, so the loss, and the trained model, are the same as one
rank with the whole batch.
"""

from __future__ import annotations

from typing import Tuple

import torch


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 through one matrix product (the cheapest exact form), clamped at 0."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return sq.clamp_min_(0.0)


def total_squared_distance(x: torch.Tensor) -> torch.Tensor:
    """sum_{i,j} |x_i - x_j|^2 = 2 N sum_i |x_i|^2 - 2 |sum_i x_i|^2, in O(N p)."""
    x = x.double()
    s = x.sum(0)
    return (2 * x.shape[0] * (x * x).sum() - 2 * (s * s).sum()).float()


def stress_rows(local_out: torch.Tensor, all_out: torch.Tensor, local_in: torch.Tensor,
                all_in: torch.Tensor, row_offset: int) -> torch.Tensor:
    """This rank's share of the normalised stress: its rows against the whole (gathered) batch."""
    with torch.no_grad():
        d_in = squared_distances(local_in, all_in).sqrt_()
        denominator = total_squared_distance(all_in).clamp_min(1e-12)
    rows = torch.arange(local_out.shape[0], device=local_out.device)
    # The tiny floor keeps sqrt's gradient finite on the diagonal, which is masked out anyway.
    d_out = (squared_distances(local_out, all_out) + 1e-12).sqrt()
    err = (d_out - d_in).square()
    err[rows, rows + row_offset] = 0.0
    return err.sum() / denominator


def stress(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Normalised stress of one batch on one process."""
    return stress_rows(out, out, x, x, 0)


def average_precision_sums(queries: torch.Tensor, query_labels: torch.Tensor,
                           gallery: torch.Tensor, gallery_labels: torch.Tensor,
                           block: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-query AP, number of queries with at least one relevant item).

    Each query ranks the gallery by Euclidean distance; its AP is the mean, over the gallery items
    of its category, of the precision at that item's rank. Queries are taken in blocks so memory
    stays at block x gallery; the sums let ranks add their shares before dividing.
    """
    total = torch.zeros((), dtype=torch.float64, device=queries.device)
    count = torch.zeros((), dtype=torch.float64, device=queries.device)
    ranks = torch.arange(1, gallery.shape[0] + 1, device=queries.device, dtype=torch.float32)
    for lo in range(0, queries.shape[0], block):
        q, ql = queries[lo:lo + block], query_labels[lo:lo + block]
        order = squared_distances(q, gallery).argsort(dim=1)
        relevant = gallery_labels[order] == ql[:, None]
        hits = relevant.cumsum(1, dtype=torch.float32)
        n_relevant = hits[:, -1]
        ap = ((hits / ranks) * relevant).sum(1) / n_relevant.clamp_min(1)
        valid = n_relevant > 0
        total += ap[valid].sum(dtype=torch.float64)
        count += valid.sum()
    return total, count


def mean_average_precision(queries, query_labels, gallery, gallery_labels, block: int = 1024) -> float:
    total, count = average_precision_sums(queries, query_labels, gallery, gallery_labels, block)
    return (total / count.clamp_min(1)).item()
