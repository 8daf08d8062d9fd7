"""Retrieval AP against scikit-learn's, ties included."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from bnnidr_hpc.train.retrieval import mean_average_precision


def _sklearn_map(q, ql, g, gl):
    aps = []
    for i in range(len(q)):
        rel = (gl == ql[i]).astype(int)
        if rel.sum():
            aps.append(average_precision_score(rel, -np.linalg.norm(g - q[i], axis=1)))
    return float(np.mean(aps))


@pytest.mark.parametrize("block", [7, 1024])
def test_map_matches_scikit_learn(block):
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(50, 6, generator=g), torch.randn(300, 6, generator=g)
    ql, gl = torch.randint(4, (50,), generator=g), torch.randint(4, (300,), generator=g)
    ql[0] = 9  # a query with no relevant item is left out, as in sklearn's undefined AP
    ours = mean_average_precision(q, ql, gal, gl, block=block)
    assert ours == pytest.approx(_sklearn_map(q.numpy(), ql.numpy(), gal.numpy(), gl.numpy()), abs=1e-5)


def test_map_with_tied_distances_matches_scikit_learn():
    # integers on a line (their norms, hence distances, are exact): many items, relevant or not,
    # at exactly the same distance
    g = torch.Generator().manual_seed(1)
    q, gal = torch.randint(5, (40, 1), generator=g).float(), torch.randint(5, (200, 1), generator=g).float()
    ql, gl = torch.randint(3, (40,), generator=g), torch.randint(3, (200,), generator=g)
    ours = mean_average_precision(q, ql, gal, gl)
    assert ours == pytest.approx(_sklearn_map(q.numpy(), ql.numpy(), gal.numpy(), gl.numpy()), abs=1e-5)


def test_perfect_and_chance_retrieval():
    labels = torch.arange(10).repeat_interleave(20)
    x = labels[:, None].float() * 100 + torch.randn(200, 3)
    assert mean_average_precision(x, labels, x, labels) == pytest.approx(1.0)
