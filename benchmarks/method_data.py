"""The data sets of bench_method.py, each as a reducer run sees it: the config and overrides that
train on it, its training rows (what PCA, UMAP and LDA are fitted on) and its held-out rows (never
trained on; every method is scored on them), written as .npy for `bnnidr-hpc reduce`.

Used by: bench_method.py.

scikit-learn's data sets are written as X.npy / Y.npy and trained through data.source=npy; their
held-out rows are the toolkit's own split (data.NpyFeatures: data.heldout at its default, drawn from
the seed), so PCA and UMAP see exactly the rows the reducer trained on. The spheres' held-out rows
are the toolkit's own evaluation points (the eval.queries + eval.gallery points after the n
training points), made by the toolkit's data source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from bnnidr_hpc.config.loading import load
from bnnidr_hpc.data.sources import source

REPO = Path(__file__).resolve().parents[1]
SKLEARN = {"digits": "load_digits", "wine": "load_wine", "breast_cancer": "load_breast_cancer"}
SPHERES = {"curved": REPO / "conf" / "curved_d5.yaml", "linear": REPO / "conf" / "hps_00040.yaml"}


@dataclass
class Dataset:
    name: str
    config: Optional[str]  # a YAML file for `bnnidr-hpc run`, or None: the built-in default
    overrides: List[str]  # what makes the run train on this data (npy paths), before the benchmark's own
    train_x: torch.Tensor
    train_y: Optional[torch.Tensor]
    held_x: torch.Tensor
    held_y: torch.Tensor
    held_file: Path  # held_x as float32 .npy, the input of `bnnidr-hpc reduce`

    @property
    def size(self) -> str:
        return f"{len(self.train_x)} train / {len(self.held_x)} held out x {self.train_x.shape[1]}"


def _save(folder: Path, x: torch.Tensor) -> Path:
    path = folder / "heldout_x.npy"
    np.save(path, x.numpy().astype(np.float32))
    return path


def sklearn_dataset(name: str, folder: Path, seed: int, extra: List[str]) -> Dataset:
    """scikit-learn's data set `name` as .npy; the split is the one a run with this seed makes."""
    import sklearn.datasets

    folder.mkdir(parents=True, exist_ok=True)
    bunch = getattr(sklearn.datasets, SKLEARN[name])()
    x_file, y_file = folder / "X.npy", folder / "Y.npy"
    np.save(x_file, bunch.data.astype(np.float32))
    np.save(y_file, bunch.target.astype(np.int64))
    overrides = ["data.source=npy", f"data.path={x_file}", f"data.labels={y_file}"]
    c = load(None, overrides + [f"seed={seed}", *extra])
    data = source(c.data, c.seed)
    train_x, train_y = data.range(0, c.data.n)
    held_index = data.heldout_index
    held_x, held_y = data.heldout(len(held_index), 0)[0]
    return Dataset(name, None, overrides, train_x, train_y, held_x, held_y, _save(folder, held_x))


def sphere_dataset(name: str, folder: Path, output_dim: int, extra: List[str]) -> Dataset:
    """The sphere of conf/<name>'s YAML: its n training points and its evaluation points."""
    folder.mkdir(parents=True, exist_ok=True)
    config = str(SPHERES[name])
    c = load(config, [f"output_dim={output_dim}", *extra])
    data = source(c.data, c.seed)
    train_x, train_y = data.range(0, c.data.n)
    (qx, ql), (gx, gl) = data.heldout(c.eval.queries, c.eval.gallery)
    held_x, held_y = torch.cat([qx, gx]), torch.cat([ql, gl])
    return Dataset(name, config, [], train_x, train_y, held_x, held_y, _save(folder, held_x))


def heldout_matches(run_dir: Path, dataset: Dataset, seed: int, extra: List[str]) -> bool:
    """Does the run's own heldout.npy (npy runs) name the rows scored here? (A check that the
    baselines and the reducer are scored on the same rows, none of them trained on.)"""
    saved = run_dir / "heldout.npy"
    if dataset.config is not None or not saved.exists():
        return True
    c = load(None, dataset.overrides + [f"seed={seed}", *extra])
    return bool(np.array_equal(np.load(saved), source(c.data, c.seed).heldout_index))
