"""`loss: graph`'s objective (model/graph_loss.py): umap-learn's a, b and the cross-entropy of edges
and negatives, finite where output points coincide."""

import numpy as np
import pytest
import torch

from bnnidr_hpc.model.graph_loss import distance_term_sum, fit_ab, graph_loss_sum


def test_ab_fit_gives_umaps_known_values_and_matches_scipy():
    a, b = fit_ab(1.0, 0.1)
    assert (a, b) == pytest.approx((1.577, 0.895), abs=1e-3)  # umap-learn's find_ab_params(1, 0.1)
    optimize = pytest.importorskip("scipy.optimize")
    for spread, min_dist in [(1.0, 0.001), (1.0, 0.5), (2.0, 0.3)]:
        x = np.linspace(0, 3 * spread, 300)
        y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
        expected, _ = optimize.curve_fit(lambda x, a, b: 1.0 / (1.0 + a * x ** (2 * b)), x, y)
        assert fit_ab(spread, min_dist) == pytest.approx(tuple(expected), rel=1e-4)


def test_cross_entropy_of_edges_and_negatives():
    g = torch.Generator().manual_seed(0)
    heads, tails, negatives = (torch.randn(n, 3, generator=g) for n in (4, 4, 8))
    a, b = 1.5, 0.9
    q = lambda u, v: 1.0 / (1.0 + a * ((u - v) ** 2).sum(-1) ** b)  # noqa: E731
    q_neg = 1.0 / (1.0 + a * (((negatives.view(4, 2, 3) - heads[:, None]) ** 2).sum(-1) + 1e-3) ** b)
    expected = -torch.log(q(heads, tails)).sum() - torch.log1p(-q_neg).sum()
    assert graph_loss_sum(heads, tails, negatives, a, b).item() == pytest.approx(expected.item(), rel=1e-5)
    # the repulsion's weight multiplies the negatives' term alone
    attraction = graph_loss_sum(heads, tails, negatives[:0], a, b)
    half = graph_loss_sum(heads, tails, negatives, a, b, repulsion_strength=0.5)
    assert half.item() == pytest.approx(attraction.item() + 0.5 * (expected - attraction).item(), rel=1e-5)
    # closer edges and farther negatives lower it
    assert graph_loss_sum(heads, heads + 0.01, 3 * negatives, a, b) < graph_loss_sum(heads, tails, negatives, a, b)


def test_coincident_points_give_finite_gradients():
    y = torch.zeros(6, 2, requires_grad=True)  # an edge and its negatives all at one point
    loss = graph_loss_sum(y[:2], y[2:4], y[4:], 1.577, 0.895)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(y.grad).all()


def _rows(edges=6, negatives=2, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(edges * (2 + negatives), dim, generator=g, dtype=torch.float64)


def test_distance_term_is_zero_for_any_scaled_rotation_and_positive_otherwise():
    x = _rows()
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    for scale in (0.01, 1.0, 40.0):
        assert distance_term_sum(scale * x @ rotation, x, 6, 2).item() == pytest.approx(0.0, abs=1e-9)
    squashed = x * torch.tensor([1.0, 1.0, 1.0, 1.0, 0.1], dtype=torch.float64)  # one direction shrunk
    assert distance_term_sum(squashed, x, 6, 2).item() > 0.01
    assert distance_term_sum(x.tanh(), x, 6, 2).item() > 0.01


def test_distance_term_splits_over_ranks_with_an_even_batch():
    """Rank r's rows are its edges' heads, tails and negatives: the term of the whole batch is the
    sum of the two halves', so 2 ranks train as 1 (each pair lies inside one rank's rows)."""
    x, out = _rows(edges=8), _rows(edges=8, dim=3, seed=2)

    def half(t, r, edges=8, m=2):
        h = edges // 2
        heads, tails, negatives = t[:edges], t[edges:2 * edges], t[2 * edges:]
        return torch.cat([heads[r * h:(r + 1) * h], tails[r * h:(r + 1) * h], negatives[r * h * m:(r + 1) * h * m]])

    whole = distance_term_sum(out, x, 8, 2)
    parts = sum(distance_term_sum(half(out, r), half(x, r), 4, 2) for r in (0, 1))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-12)
