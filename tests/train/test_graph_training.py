"""Training with `loss: graph`: a run on the k-NN graph's edges completes with its record, resumes
after an interruption to the same weights, and the labels option keeps classes apart."""

import json

import numpy as np
import pytest
import torch

from bnnidr_hpc import cli
from bnnidr_hpc.train.loop import train


def test_a_tiny_graph_run_completes_with_its_record(tiny, tmp_path):
    rec = train(tiny("loss=graph", "graph.k=8"), tmp_path / "run")
    assert rec["status"] == "completed" and len(rec["epochs"]) == 3
    assert rec["steps_per_epoch"] == 256 // 32
    edges = rec["graph_edges"]
    assert edges["edges"] >= 256 * 8 and not edges["supervised"]  # both directions of every k-NN pair, at least
    assert (edges["a"], edges["b"]) == pytest.approx((1.577, 0.895), abs=1e-3)
    losses = [e["loss"] for e in rec["epochs"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert rec["ap_out"] > rec["baselines"]["random"]["ap"]


def test_the_distance_term_keeps_the_neighbours_pca_keeps(tiny, tmp_path):
    """The tiny sphere is linear (d + 1 = 4 = output_dim): PCA keeps all its variance, so the
    distance term is used and keeps more of its 10-NN than the cross-entropy alone; at output_dim 2
    PCA loses variance and the term is left out."""
    common = ["loss=graph", "graph.k=8", "max_epochs=8"]
    kept = train(tiny(*common), tmp_path / "kept")
    alone = train(tiny(*common, "graph.distance_weight=0"), tmp_path / "alone")
    assert kept["graph_edges"]["pca_variance_kept"] == pytest.approx(1.0, abs=1e-4)
    assert kept["graph_edges"]["distance_weight"] == 10.0 and alone["graph_edges"]["distance_weight"] == 0.0
    assert kept["knn_recall"] > alone["knn_recall"] + 0.1
    narrow = train(tiny(*common, "output_dim=2", "max_epochs=1"), tmp_path / "narrow")
    assert narrow["graph_edges"]["pca_variance_kept"] < 0.99 and narrow["graph_edges"]["distance_weight"] == 0.0


def test_an_interrupted_graph_run_resumes_to_the_same_weights(tiny, tmp_path):
    straight = train(tiny("loss=graph", "graph.k=8"), tmp_path / "straight")
    calls = {"n": 0}

    def stop_after_11_steps():
        calls["n"] += 1
        return calls["n"] == 11  # mid-epoch 2 (8 steps per epoch)

    first = train(tiny("loss=graph", "graph.k=8"), tmp_path / "resumed", stop_requested=stop_after_11_steps)
    assert first["status"] == "interrupted"
    resumed = train(tiny("loss=graph", "graph.k=8"), tmp_path / "resumed")
    assert resumed["status"] == "completed" and resumed["restarts"] == 1
    weights = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["model"] for d in ("straight", "resumed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert [e["loss"] for e in resumed["epochs"]] == pytest.approx([e["loss"] for e in straight["epochs"]], rel=1e-6)
    assert resumed["ap_out"] == straight["ap_out"]


def test_labels_keep_the_classes_apart(tmp_path):
    """graph.labels on scikit-learn's digits: cross-class edges are down-weighted, so the held-out
    classes separate better than without labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    np.save(tmp_path / "X.npy", d.data.astype(np.float32))
    np.save(tmp_path / "Y.npy", d.target)
    aps = {}
    for labels in ("false", "true"):
        root = tmp_path / f"runs-{labels}"
        code = cli.main(["run", "data.source=npy", f"data.path={tmp_path / 'X.npy'}",
                         f"data.labels={tmp_path / 'Y.npy'}", "loss=graph", f"graph.labels={labels}",
                         "output_dim=2", "max_epochs=15", "learning_rate=3e-3", "run.progress=false", "run.graph=false",
                         f"run.root={root}"])
        assert code == 0
        rec = json.loads(next(root.glob("*/record.json")).read_text())
        assert rec["graph_edges"]["supervised"] == (labels == "true")
        aps[labels] = rec["ap_out"]
    assert aps["true"] > aps["false"] + 0.02
