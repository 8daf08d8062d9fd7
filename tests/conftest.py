import os
import subprocess
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
    from bnnidr_hpc.config.loading import load

    def make(*overrides, config=None):
        return load(config, TINY + [f"run.root={tmp_path / 'runs'}", *overrides])

    return make


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start (or reuse) the local cluster (slurm/start.sh); a missing Slurm is a failure, not a skip."""
    os.environ.setdefault("SLURM_CONF", os.path.join(os.environ.get("BNNIDR_SLURM_DIR", "/tmp/bnnidr-slurm"),
                                                     "slurm.conf"))
    proc = subprocess.run(["bash", str(REPO / "slurm" / "start.sh")], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"slurm/start.sh failed: {proc.stderr}"


def run_dirs(root) -> list:
    """The run directories under a run root, without the k-NN graph cache (RUN_ROOT/graphs) that
    loss: graph, the default, keeps beside them."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and p.name != "graphs")
