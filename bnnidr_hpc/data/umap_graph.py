"""UMAP's fuzzy graph of the training rows, made from their k-nearest-neighbour graph: each row's
membership strengths to its neighbours, symmetrised by the fuzzy union, optionally intersected
with the rows' class labels; the edges (heads, tails, weights) that `loss: graph` samples from.

Used by: train/session.py (built once per session from data.neighbours' KnnGraph), data/edge_batches.py
(the edges it draws), tests.

The formulas are umap-learn's (umap_.py, 0.5): smooth_knn_dist (rho_i the distance to the nearest
neighbour, sigma_i by bisection so that sum_j exp(-(d_ij - rho_i) / sigma_i) = log2(k), floored at
MIN_K_DIST_SCALE x the mean neighbour distance), compute_membership_strengths, the fuzzy union
w + w^T - w o w^T, and for labels categorical_simplicial_set_intersection (edges between classes x
exp(-far_dist), far_dist = 2.5 / (1 - target_weight); unknown labels, -1, x exp(-1)) followed by
reset_local_connectivity (each row scaled to a largest weight of 1, then the union again). Our
graph leaves a row out of its own neighbours, so all k columns count (umap-learn's column 0 is the
row itself, which it skips). Vectorised over rows in numpy: 1.3M x 15 is a few seconds.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
BISECTION_STEPS = 64
UNKNOWN_LABEL_DISTANCE = 1.0


class FuzzyEdges(NamedTuple):
    """The symmetric fuzzy graph as COO edges, both directions of every pair (as umap-learn's
    graph_.tocoo()); weights in (0, 1]."""
    heads: torch.Tensor    # (E,) int64 training positions
    tails: torch.Tensor    # (E,) int64
    weights: torch.Tensor  # (E,) float64
    n: int                 # vertices (training rows)


def smooth_knn_dist(distances: np.ndarray, tolerance: float = SMOOTH_K_TOLERANCE):
    """(sigma, rho) per row of an (n, k) array of ascending neighbour distances, every row at once
    (umap-learn's smooth_knn_dist at local_connectivity 1, bandwidth 1)."""
    d = distances.astype(np.float64)
    n, k = d.shape
    target = np.log2(k)
    positive = np.where(d > 0.0, d, np.inf)
    rho = positive.min(axis=1)
    rho[~np.isfinite(rho)] = 0.0  # every neighbour at distance 0 (duplicates)
    shifted = d - rho[:, None]
    lo, hi, mid = np.zeros(n), np.full(n, np.inf), np.ones(n)
    active = np.ones(n, dtype=bool)
    for _ in range(BISECTION_STEPS):
        psum = np.where(shifted > 0, np.exp(-shifted / mid[:, None]), 1.0).sum(axis=1)
        active &= np.abs(psum - target) >= tolerance  # a row stops where umap-learn's loop breaks
        if not active.any():
            break
        over = active & (psum > target)
        under = active & ~over
        hi = np.where(over, mid, hi)
        lo = np.where(under, mid, lo)
        mid = np.where(over | (under & np.isfinite(hi)), (lo + hi) / 2.0, np.where(under, mid * 2.0, mid))
    floor = MIN_K_DIST_SCALE * np.where(rho > 0.0, d.mean(axis=1), d.mean())
    return np.maximum(mid, floor), rho


def membership_strengths(indices: np.ndarray, distances: np.ndarray, sigma: np.ndarray, rho: np.ndarray):
    """(rows, cols, weights) of each row's directed fuzzy set, zero weights dropped."""
    n, k = indices.shape
    d = distances.astype(np.float64)
    excess = d - rho[:, None]
    weights = np.where((excess <= 0.0) | (sigma[:, None] == 0.0), 1.0, np.exp(-excess / sigma[:, None]))
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = indices.reshape(-1).astype(np.int64)
    weights = weights.reshape(-1)
    weights[cols == rows] = 0.0  # a row is not its own neighbour
    keep = (weights > 0.0) & (cols >= 0)
    return rows[keep], cols[keep], weights[keep]


def fuzzy_union(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, n: int):
    """A + A^T - A o A^T of a sparse A with distinct (row, col) entries, as COO (rows, cols,
    weights) sorted by (row, col)."""
    keys = np.concatenate([rows * n + cols, cols * n + rows])
    values = np.concatenate([weights, weights])
    unique, inverse = np.unique(keys, return_inverse=True)
    total = np.bincount(inverse, weights=values, minlength=len(unique))
    squares = np.bincount(inverse, weights=values * values, minlength=len(unique))
    product = (total * total - squares) / 2.0  # a b where a key has both entries, else 0
    union = total - product
    keep = union > 0.0
    return unique[keep] // n, unique[keep] % n, union[keep]


def label_intersection(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, labels: np.ndarray,
                       target_weight: float):
    """umap-learn's categorical intersection: edges between different labels x exp(-far_dist),
    edges touching an unknown label (-1) x exp(-1)."""
    far_dist = 2.5 / (1.0 - target_weight) if target_weight < 1.0 else 1.0e12
    a, b = labels[rows], labels[cols]
    factor = np.where((a == -1) | (b == -1), np.exp(-UNKNOWN_LABEL_DISTANCE),
                      np.where(a != b, np.exp(-far_dist), 1.0))
    weights = weights * factor
    keep = weights > 0.0
    return rows[keep], cols[keep], weights[keep]


def reset_local_connectivity(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, n: int):
    """Each row scaled so its largest weight is 1 (sklearn's normalize(norm="max")), then the union."""
    row_max = np.zeros(n)
    np.maximum.at(row_max, rows, weights)
    return fuzzy_union(rows, cols, weights / row_max[rows], n)


def fuzzy_edges(indices: np.ndarray, distances: np.ndarray, labels: Optional[np.ndarray] = None,
                target_weight: float = 0.5) -> FuzzyEdges:
    """The fuzzy graph's edges from a k-NN graph ((n, k) indices and ascending distances, each row
    without itself); with labels (n integers, -1 unknown), intersected with them."""
    n = indices.shape[0]
    sigma, rho = smooth_knn_dist(distances)
    rows, cols, weights = fuzzy_union(*membership_strengths(indices, distances, sigma, rho), n)
    if labels is not None:
        rows, cols, weights = label_intersection(rows, cols, weights, np.asarray(labels).astype(np.int64),
                                                 target_weight)
        rows, cols, weights = reset_local_connectivity(rows, cols, weights, n)
    return FuzzyEdges(torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(weights), n)
