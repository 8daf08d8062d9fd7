"""Retrieval metrics of a reduction: each query's average precision when it ranks a gallery by
Euclidean distance (mean AP, its bootstrap standard error, the sums that ranks add up), and
label-free k-nearest-neighbour recall.

Used by: train.evaluate (held-out AP and knn_recall), benchmarks.
"""

from __future__ import annotations

from typing import Tuple

import torch

from bnnidr_hpc.model.objectives import squared_distances


def per_query_average_precision(queries: torch.Tensor, query_labels: torch.Tensor,
                                gallery: torch.Tensor, gallery_labels: torch.Tensor,
                                block: int = 1024) -> torch.Tensor:
    """Each query's AP (float64; NaN for a query with no relevant item in the gallery).

    Each query ranks the gallery by Euclidean distance; its AP is the mean, over the gallery items
    of its category, of the precision at that item's rank. Queries are taken in blocks so memory
    stays at block x gallery.

    No sort of the gallery: the k-th nearest relevant item's rank is the number of items at most
    as far, so the relevant distances (a top-k per row) are the thresholds and one searchsorted
    pass counts every item between consecutive ones. Tied items share the precision at the end
    of their tie, as in scikit-learn (float32 distances of far-out points do tie). This avoids
    an argsort of every row (docs/performance.md, benchmarks/bench_tooling.py).
    """
    out = torch.full((queries.shape[0],), float("nan"), dtype=torch.float64, device=queries.device)
    for lo in range(0, queries.shape[0], block):
        q, ql = queries[lo:lo + block], query_labels[lo:lo + block]
        d = squared_distances(q, gallery)
        relevant = gallery_labels[None, :] == ql[:, None]
        n_relevant = relevant.sum(1)
        most = int(n_relevant.max())  # one host sync per block, for the top-k's size
        if most == 0:
            continue
        thresholds = torch.where(relevant, d, float("inf")).topk(most, dim=1, largest=False).values
        below = torch.searchsorted(thresholds, d)  # per item: relevant items strictly nearer
        per_gap = torch.zeros(d.shape[0], most + 1, device=d.device).scatter_add_(
            1, below, torch.ones((), device=d.device).expand(below.shape))
        rank = per_gap.cumsum(1)[:, :most]  # of the k-th nearest relevant item: items at most as far
        hits = torch.searchsorted(thresholds, thresholds, right=True)  # relevant items at most as far
        k = torch.arange(1, most + 1, device=d.device)
        precision = torch.where(k <= n_relevant[:, None], hits / rank, 0.0)
        ap = precision.sum(1, dtype=torch.float64) / n_relevant.clamp_min(1)
        out[lo:lo + q.shape[0]] = torch.where(n_relevant > 0, ap, float("nan"))
    return out


def average_precision_sums(queries: torch.Tensor, query_labels: torch.Tensor,
                           gallery: torch.Tensor, gallery_labels: torch.Tensor,
                           block: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-query AP, number of queries with at least one relevant item): ranks add their
    shares before dividing."""
    ap = per_query_average_precision(queries, query_labels, gallery, gallery_labels, block)
    valid = ~torch.isnan(ap)
    return ap[valid].sum(), valid.sum().double()


def bootstrap_se(per_query: torch.Tensor, resamples: int = 200, seed: int = 0) -> float:
    """Standard error of the mean AP by the bootstrap over queries (NaN queries left out)."""
    ap = per_query[~torch.isnan(per_query)].double().cpu()
    if len(ap) < 2:
        return float("nan")
    g = torch.Generator().manual_seed(seed)
    means = ap[torch.randint(len(ap), (resamples, len(ap)), generator=g)].mean(1)
    return means.std().item()


def nearest(x: torch.Tensor, k: int, block: int = 1024) -> torch.Tensor:
    """Each point's k nearest other points of x (indices, nearest first)."""
    out = []
    for lo in range(0, x.shape[0], block):
        rows = torch.arange(lo, min(lo + block, x.shape[0]), device=x.device)
        d = squared_distances(x[rows], x)
        d[torch.arange(len(rows), device=x.device), rows] = float("inf")  # not its own neighbour
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def knn_recall(near_in: torch.Tensor, y: torch.Tensor) -> float:
    """Label-free neighbour preservation: the mean fraction of each point's k nearest neighbours
    in the input (near_in, from `nearest`) that are still among its k nearest in y
    (1 = every neighbourhood kept)."""
    near_out = nearest(y, near_in.shape[1])
    kept = (near_in[:, :, None] == near_out[:, None, :]).any(2)
    return kept.double().mean().item()


def mean_average_precision(queries, query_labels, gallery, gallery_labels, block: int = 1024) -> float:
    total, count = average_precision_sums(queries, query_labels, gallery, gallery_labels, block)
    return (total / count.clamp_min(1)).item()
