"""`loss: graph`: UMAP's cross-entropy on edges of the fuzzy k-NN graph, with uniformly drawn
negatives, and the a, b of its output curve fitted from min_dist and spread.

Used by: train/step.py (the graph step), tests.

The output similarity of two reduced vectors at distance d is q = 1 / (1 + a d^(2b)) (umap-learn's
curve; find_ab_params fits a, b so that q follows 1 below min_dist and exp(-(d - min_dist) / spread)
above it). An edge drawn with probability proportional to its fuzzy weight is attracted with
-log q = log(1 + u), u = a d^(2b); each of its `negatives` uniformly drawn partners is repelled with
-log(1 - q) = log(1 + 1/u). Sampling by weight makes the batch mean an unbiased estimate of UMAP's
weighted attraction, so the loss of a global batch is its sum divided by the number of edges in it:
each rank adds its edges' terms over that global count, and the ranks' shares add up to the same
loss however the batch is split (train/step.py).

The distance term (graph.distance_weight, where PCA would lose nothing: train/graph_stage.py) keeps
distance ratios: for consecutive pairs of the batch, (head 2i, tail 2i) with (head 2i+1, tail 2i+1)
and a head's two negatives, the squared difference of their log(output distance^2 / input
distance^2). It is 0 exactly when the map scales those pairs alike, whatever the scale, so it
leaves the scale to the cross-entropy and needs no learned or global one; and each pair lies
inside one rank's rows (with an even batch_size), so it splits over the ranks as the rest does.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

# Squared output distances are at least this before the power d2^b, whose derivative is infinite at 0.
MIN_SQUARED_DISTANCE = 1e-12
# The repulsion of a pair at distance 0 stays finite: umap-learn's layout adds 0.001 to d^2 in its
# repulsive gradient for the same reason.
REPULSION_EPS = 1e-3
AB_POINTS = 300
AB_ITERATIONS = 200


def _curve(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return 1.0 / (1.0 + a * x ** (2.0 * b))


def fit_ab(spread: float, min_dist: float) -> Tuple[float, float]:
    """umap-learn's find_ab_params: the least-squares fit of 1 / (1 + a x^(2b)) to 1 (x < min_dist)
    and exp(-(x - min_dist) / spread) on 300 points of [0, 3 spread], here by Levenberg-Marquardt
    from (1, 1) as scipy's curve_fit (min_dist 0.1, spread 1: a = 1.577, b = 0.895)."""
    x = np.linspace(0.0, spread * 3.0, AB_POINTS)
    y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
    positive = x > 0
    log_x = np.zeros_like(x)
    log_x[positive] = np.log(x[positive])
    params, damping = np.array([1.0, 1.0]), 1e-3

    def residuals(p: np.ndarray) -> np.ndarray:
        return _curve(x, p[0], p[1]) - y

    cost = float(residuals(params) @ residuals(params))
    for _ in range(AB_ITERATIONS):
        a, b = params
        power = np.where(positive, x ** (2.0 * b), 0.0)
        f2 = _curve(x, a, b) ** 2
        jacobian = np.stack([-power * f2, -2.0 * a * power * log_x * f2], axis=1)
        r = residuals(params)
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ r
        step = np.linalg.solve(normal + damping * np.diag(np.diag(normal)), -gradient)
        trial = params + step
        trial_cost = float(residuals(trial) @ residuals(trial)) if trial[0] > 0 else np.inf
        if trial_cost < cost:
            converged = cost - trial_cost < 1e-15 * max(cost, 1e-30) or np.abs(step).max() < 1e-12
            params, cost, damping = trial, trial_cost, damping / 10.0
            if converged:
                break
        else:
            damping *= 10.0
    return float(params[0]), float(params[1])


def graph_loss_sum(heads: torch.Tensor, tails: torch.Tensor, negatives: torch.Tensor, a: float, b: float,
                   repulsion_strength: float = 1.0) -> torch.Tensor:
    """Sum over B edges of the attraction of (heads[e], tails[e]) and repulsion_strength x the
    repulsion of heads[e] from negatives[e m .. e m + m - 1] (negatives: B m rows, m per edge, in
    edge order)."""
    edges, dim = heads.shape
    d2_pos = (heads - tails).square().sum(1).clamp_min(MIN_SQUARED_DISTANCE)
    attraction = torch.log1p(a * d2_pos.pow(b)).sum()
    if negatives.shape[0] == 0:
        return attraction
    d2_neg = (negatives.view(edges, -1, dim) - heads[:, None, :]).square().sum(2)
    repulsion = torch.log1p((a * (d2_neg + REPULSION_EPS).pow(b)).reciprocal()).sum()
    return attraction + repulsion_strength * repulsion


def _log_ratio_spread_sum(out_a, out_b, in_a, in_b) -> torch.Tensor:
    """Sum over consecutive pairs of rows (2i, 2i+1) of (r_2i - r_2i+1)^2, r = log(|out_a - out_b|^2
    / |in_a - in_b|^2) per row; an odd last row is left out."""
    d2_out = (out_a - out_b).square().sum(1).clamp_min(MIN_SQUARED_DISTANCE)
    d2_in = (in_a - in_b).float().square().sum(1).clamp_min(MIN_SQUARED_DISTANCE)
    r = d2_out.log() - d2_in.log()
    r = r[:len(r) - len(r) % 2].view(-1, 2)
    return (r[:, 0] - r[:, 1]).square().sum()


def distance_term_sum(out: torch.Tensor, x: torch.Tensor, edges: int, negatives: int) -> torch.Tensor:
    """The distance term over a rank's rows (out: their outputs, x: their inputs; heads, tails,
    then negatives per edge, as graph_loss_sum's): its edges' pairs plus, per negative, the
    heads' pairs with their negatives divided by the negatives per edge."""
    heads, tails = slice(0, edges), slice(edges, 2 * edges)
    total = _log_ratio_spread_sum(out[heads], out[tails], x[heads], x[tails])
    if negatives:
        repeat = (lambda t: t[heads].repeat_interleave(negatives, 0))
        total = total + _log_ratio_spread_sum(repeat(out), out[2 * edges:], repeat(x), x[2 * edges:]) / negatives
    return total
