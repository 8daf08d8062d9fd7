"""`loss: graph`'s objective keys (config/graph_checks.py): a bad value is one line, exit 2, and no
run directory is made."""

import pytest
from conftest import TINY

from bnnidr_hpc import cli


@pytest.mark.parametrize("override,words", [
    ("graph.negatives=-1", "graph.negatives=-1 is not allowed"), ("graph.spread=0", "graph.spread=0"),
    ("graph.min_dist=3.5", "below 3 x graph.spread"), ("graph.target_weight=1.5", "graph.target_weight=1.5"),
    ("graph.labels=true", "false without data.labels"), ("graph.distance_weight=-1", "graph.distance_weight=-1"),
    ("graph.repulsion_strength=0", "the negatives' weight"), ("graph.class_pairs=1", "a number in [0, 1)"),
    ("graph.distance_variance=-0.5", "share of variance PCA must keep")])
def test_bad_graph_objective_keys_are_one_line_before_anything_is_made(tmp_path, capsys, override, words):
    extra = ["data.source=npy", f"data.path={tmp_path / 'X.npy'}"] if "labels" in override else []
    if extra:
        import numpy as np

        np.save(tmp_path / "X.npy", np.random.default_rng(0).normal(size=(1200, 8)).astype(np.float32))
    code = cli.main(["run", *TINY, *extra, "loss=graph", override, f"run.root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()
