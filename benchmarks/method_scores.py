"""The methods of bench_method.py and the one score they all get: each maps the held-out rows to
output_dim dimensions (fitted on the training rows only), timed; the score is the toolkit's own
retrieval metrics (train/retrieval.py) on the held-out rows.

Used by: bench_method.py.

Score: leave-one-out retrieval AP among the held-out rows (each row ranks all the other held-out
rows by Euclidean distance; its AP over the rows of its class; retrieval.per_query_average_precision
with the row itself left out of its gallery), its bootstrap standard error over the queries
(retrieval.bootstrap_se), and 10-NN recall (retrieval.knn_recall: of each held-out row's 10
nearest held-out rows in the input, the fraction still among its 10 nearest after reduction).

Methods: the reducer through the toolkit's CLI (`bnnidr-hpc run`, then `bnnidr-hpc reduce` on the
held-out rows), PCA and LDA (scikit-learn) and UMAP (umap-learn, a benchmark-only dependency:
`pip install -e .[bench]`; fit on the training rows, `transform` of the held-out rows).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from common import run_child

from bnnidr_hpc.train.retrieval import bootstrap_se, knn_recall, nearest, per_query_average_precision

KNN_K = 10


def loo_average_precision(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each held-out row's AP when it queries every other held-out row."""
    out = torch.empty(len(z), dtype=torch.float64)
    keep = torch.ones(len(z), dtype=torch.bool)
    for i in range(len(z)):
        keep[i] = False
        out[i] = per_query_average_precision(z[i:i + 1], labels[i:i + 1], z[keep], labels[keep])[0]
        keep[i] = True
    return out


def score(z: torch.Tensor, labels: torch.Tensor, near_in: torch.Tensor) -> dict:
    """{"ap", "ap_se", "knn"} of a reduction z of the held-out rows (near_in: their input-space
    neighbours, retrieval.nearest)."""
    z = z.float()
    per_query = loo_average_precision(z, labels)
    valid = per_query[~torch.isnan(per_query)]
    return {"ap": valid.mean().item(), "ap_se": bootstrap_se(per_query), "knn": knn_recall(near_in, z)}


def input_neighbours(held_x: torch.Tensor) -> torch.Tensor:
    return nearest(held_x.float(), KNN_K)


def _timed(fit_transform):
    started = time.perf_counter()
    z = fit_transform()
    return torch.as_tensor(np.asarray(z, dtype=np.float32)), time.perf_counter() - started


def pca(train_x, held_x, k: int, seed: int):
    from sklearn.decomposition import PCA

    return _timed(lambda: PCA(n_components=k, random_state=seed).fit(train_x.numpy()).transform(held_x.numpy()))


def lda(train_x, train_y, held_x, k: int):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return _timed(lambda: LinearDiscriminantAnalysis(n_components=k).fit(train_x.numpy(), train_y.numpy())
                  .transform(held_x.numpy()))


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def umap_warm_up() -> float:
    """umap-learn compiles its numba kernels on first use; compile them once, untimed, so that no
    method's wall time carries it (returns the seconds it took)."""
    import umap

    started = time.perf_counter()
    rows = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    umap.UMAP(n_components=2, random_state=0).fit(rows[:200], y=np.arange(200) % 3).transform(rows[200:])
    return time.perf_counter() - started


def umap_embed(train_x, held_x, k: int, seed: int, train_y=None):
    """UMAP at its defaults (15 neighbours, min_dist 0.1), random_state=seed (one thread: umap-learn
    is deterministic only so); train_y: supervised UMAP."""
    import umap

    y = None if train_y is None else train_y.numpy()
    return _timed(lambda: umap.UMAP(n_components=k, random_state=seed).fit(train_x.numpy(), y=y)
                  .transform(held_x.numpy()))


def _cli() -> List[str]:
    script = shutil.which("bnnidr-hpc")
    return [script] if script else [sys.executable, "-m", "bnnidr_hpc.cli"]


def reducer(config: Optional[str], overrides: List[str], root: Path, held_file: Path) -> dict:
    """Train with `bnnidr-hpc run`, then `bnnidr-hpc reduce` the held-out rows. {"z", "run_s",
    "reduce_s", "run_dir"}, or {"error": its last line} when either command fails."""
    root.mkdir(parents=True, exist_ok=True)
    command = _cli() + ["run"] + ([config] if config else []) + overrides + [f"run.root={root}", "run.progress=false"]
    try:
        run_s, _, _ = run_child(command)
        run_dir = next(p.parent for p in sorted(root.glob("*/record.json")))
        out = root / "reduced.npy"
        reduce_s, _, _ = run_child(_cli() + ["reduce", str(run_dir), str(held_file), str(out)])
    except (RuntimeError, StopIteration) as e:
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else repr(e)}
    return {"z": torch.from_numpy(np.load(out)), "run_s": run_s, "reduce_s": reduce_s, "run_dir": run_dir}
