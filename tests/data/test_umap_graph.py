"""The fuzzy graph of `loss: graph` (data/umap_graph.py) and its edge batches (data/edge_batches.py):
UMAP's weights, the label intersection, and the seeded draws that ranks split."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bnnidr_hpc.data import edge_batches, umap_graph


def _knn(x: np.ndarray, k: int):
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, 1).astype(np.float32)


def _umap_rows(indices, distances):
    """umap-learn's smooth_knn_dist and compute_membership_strengths, one row at a time as it
    loops (its column 0 is the row itself; ours are all other rows, so every column counts)."""
    n, k = distances.shape
    target, mean_all = math.log2(k), float(np.mean(distances))
    dense = np.zeros((n, n))
    for i in range(n):
        row = distances[i].astype(np.float64)
        rho = row[row > 0][0]
        lo, hi, mid = 0.0, np.inf, 1.0
        for _ in range(64):
            psum = sum(math.exp(-(d - rho) / mid) if d - rho > 0 else 1.0 for d in row)
            if abs(psum - target) < 1e-5:
                break
            if psum > target:
                hi = mid
                mid = (lo + hi) / 2
            else:
                lo = mid
                mid = mid * 2 if hi == np.inf else (lo + hi) / 2
        sigma = max(mid, 1e-3 * (row.mean() if rho > 0 else mean_all))
        for j, d in zip(indices[i], row):
            dense[i, j] = 1.0 if d - rho <= 0 else math.exp(-(d - rho) / sigma)
    return dense


def _dense(edges: umap_graph.FuzzyEdges) -> np.ndarray:
    m = np.zeros((edges.n, edges.n))
    m[edges.heads.numpy(), edges.tails.numpy()] = edges.weights.numpy()
    return m


def test_fuzzy_weights_match_umaps_formulas_row_by_row():
    x = np.random.default_rng(0).normal(size=(60, 5))
    indices, distances = _knn(x, 7)
    directed = _umap_rows(indices, distances)
    expected = directed + directed.T - directed * directed.T
    edges = umap_graph.fuzzy_edges(indices, distances)
    assert np.abs(_dense(edges) - expected).max() < 1e-6
    # each row's directed weights sum to log2(k) (where the floor does not bind): sigma's definition
    sigma, rho = umap_graph.smooth_knn_dist(distances)
    assert directed.sum(1) == pytest.approx(np.full(60, math.log2(7)), abs=1e-4)
    assert np.array_equal(rho, distances[:, 0].astype(np.float64))
    assert (edges.weights > 0).all() and (edges.weights <= 1).all()
    assert not (edges.heads == edges.tails).any()


def test_labels_down_weight_edges_between_classes_and_keep_one_full_edge_per_row():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 4))
    labels = (x[:, 0] > 0).astype(np.int64)  # neighbours straddle the boundary
    indices, distances = _knn(x, 10)
    plain = _dense(umap_graph.fuzzy_edges(indices, distances))
    supervised = _dense(umap_graph.fuzzy_edges(indices, distances, labels, target_weight=0.5))
    across = labels[:, None] != labels[None, :]
    assert (plain[across] > 0).sum() > 20
    # far_dist = 2.5 / (1 - 0.5) = 5: cross-class edges fall to about exp(-5) of their weight
    assert supervised[across].max() < 0.05 and plain[across].max() > 0.5
    assert supervised[~across].sum() > 0.9 * plain[~across].sum()
    assert supervised.max(1) == pytest.approx(np.ones(80))  # reset_local_connectivity: a full edge per row
    stronger = _dense(umap_graph.fuzzy_edges(indices, distances, labels, target_weight=0.9))
    assert stronger[across].max() < supervised[across].max()


def _loader(n=50, batch=4, world=1, rank=0, negatives=3, seed=0, labels=None, class_pairs=0.0):
    data = SimpleNamespace(seed=seed, device=torch.device("cpu"), cfg=SimpleNamespace(n=n))
    shards = SimpleNamespace(data=data, batch_size=batch, rank=rank, world=world, steps_per_epoch=n // (batch * world),
                             cached=True, points=torch.arange(n, dtype=torch.float32)[:, None])
    x = np.random.default_rng(2).normal(size=(n, 3))
    return edge_batches.EdgeLoader(shards, umap_graph.fuzzy_edges(*_knn(x, 5)), negatives, labels, class_pairs)


def test_edge_batches_split_one_global_batch_over_ranks_and_follow_the_weights():
    one = _loader(batch=8).plan(3)
    ranks = [_loader(batch=4, world=2, rank=r).plan(3) for r in range(2)]
    assert one.shape == (6, 8 * (2 + 3))

    def parts(plan, rows):
        return plan[:, :rows], plan[:, rows:2 * rows], plan[:, 2 * rows:]

    for a, b in zip(parts(one, 8), zip(*(parts(p, 4) for p in ranks))):
        assert torch.equal(a, torch.cat(b, dim=1))
    assert torch.equal(_loader().plan(3), _loader().plan(3)) and not torch.equal(_loader().plan(3), _loader().plan(4))
    # many draws: each edge's frequency is its share of the weights
    big = _loader(n=50, batch=50, negatives=0)
    loader_edges = umap_graph.fuzzy_edges(*_knn(np.random.default_rng(2).normal(size=(50, 3)), 5))
    keys = loader_edges.heads * 50 + loader_edges.tails
    counts = torch.zeros(len(keys))
    for epoch in range(400):
        plan = big.plan(epoch)
        drawn = plan[:, :50].reshape(-1) * 50 + plan[:, 50:].reshape(-1)
        counts += (drawn[:, None] == keys[None]).sum(0)
    share = loader_edges.weights / loader_edges.weights.sum()
    assert torch.corrcoef(torch.stack([counts / counts.sum(), share.float()]))[0, 1] > 0.97
    rows = next(iter(_loader().epoch(0)))[0]
    assert torch.equal(rows[:, 0].long(), _loader().plan(0)[0])  # cached points gathered at the plan's positions


def _labelled_loader(labels, class_pairs, batch=8, world=1, rank=0):
    return _loader(n=len(labels), batch=batch, world=world, rank=rank, labels=labels, class_pairs=class_pairs)


def test_class_pairs_replace_that_share_of_edges_with_pairs_of_one_class_and_split_over_ranks():
    labels = np.repeat(np.arange(5), 10)
    labels[::7] = -1  # unknown: never drawn into a class pair
    plain = _loader(batch=8).plan(3)
    assert torch.equal(_labelled_loader(labels, 0.0).plan(3), plain)  # 0: UMAP's recipe, the same draws
    graph = umap_graph.fuzzy_edges(*_knn(np.random.default_rng(2).normal(size=(50, 3)), 5))
    edge_keys = set((graph.heads * 50 + graph.tails).tolist())
    heads, tails, off_graph, total = [], [], 0, 0
    for epoch in range(200):
        plan = _labelled_loader(labels, 0.3).plan(epoch)
        h, t = plan[:, :8].reshape(-1), plan[:, 8:16].reshape(-1)
        not_edge = torch.tensor([int(a) * 50 + int(b) not in edge_keys for a, b in zip(h, t)])
        heads.append(h[not_edge]), tails.append(t[not_edge])
        off_graph, total = off_graph + int(not_edge.sum()), total + len(h)
    heads, tails = torch.cat(heads), torch.cat(tails)
    assert (labels[heads] == labels[tails]).all() and (labels[heads] >= 0).all()  # every non-edge: one class
    # a class pair is a graph edge when the tail is one of the head's ~5-10 neighbours of its 7-9 class-mates
    assert 0.12 < off_graph / total < 0.3
    one = _labelled_loader(labels, 0.3, batch=8).plan(4)
    ranks = [_labelled_loader(labels, 0.3, batch=4, world=2, rank=r).plan(4) for r in range(2)]
    for part in (slice(0, 8), slice(8, 16)):
        halves = [p[:, part.start // 2:part.stop // 2] for p in ranks]
        assert torch.equal(one[:, part], torch.cat(halves, dim=1))
