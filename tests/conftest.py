import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Small and fast: every test run uses one CPU thread per process unless it says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = ["data.n=256", "data.p=32", "data.d=3", "data.categories=4", "batch_size=32", "max_epochs=3",
        "layer_size=32", "output_dim=4", "eval.queries=64", "eval.gallery=128", "run.progress=false",
        "run.graph=false", "run.threads=1"]


@pytest.fixture
def tiny(tmp_path):
    """A tiny validated Config; extra key=value overrides win over the tiny defaults."""
    from bnnidr_hpc.loading import load

    def make(*overrides, config=None):
        return load(config, TINY + [f"run.root={tmp_path / 'runs'}", *overrides])

    return make
