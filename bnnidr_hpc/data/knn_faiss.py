"""An approximate k-nearest-neighbour graph on the CPU through FAISS, and its measured recall.

Used by: data/neighbours.py (graph.method faiss_ivf or faiss_hnsw, or auto beyond exact_max_rows).

faiss_ivf is IVF-Flat: k-means (on 39 training rows per list, evenly spaced) cuts the rows into
graph.ivf_lists lists, and a query scans the graph.ivf_probes lists nearest to it (0: one in 14);
faiss_hnsw is HNSW-Flat (graph.hnsw_m links per row, search breadth graph.hnsw_ef_search). With
graph.pca_dims both search the rows' first pca_dims principal components (FAISS's PCAMatrix, fitted
on PCA_TRAIN_ROWS evenly spaced rows) and re-rank refine_factor x (k + 1) candidates by their full
distances (IndexRefineFlat): at p = 1,536 a search step reads 1/24 of the bytes at pca_dims 64, and
the distances stored are still the rows' own. Rows are added and searched block by block, so only
the index holds them all (as FAISS must: n x p float32). Each row's k + 1 nearest are asked for and
the row itself dropped. Its recall@k is measured against the exact neighbours (knn_exact, the same
code as the exact graph) of graph.recall_sample rows drawn from the seed: the fraction of their
exact k nearest that the approximate graph also lists.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch

from bnnidr_hpc.data import knn_exact
from bnnidr_hpc.data.features import evenly_spaced
from bnnidr_hpc.data.graph_cache import ivf_lists, ivf_probes

ADD_BLOCK = 65536
TRAIN_ROWS_PER_LIST = 39  # FAISS's least k-means training rows per list
PCA_TRAIN_ROWS = 65536


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


def pca_dims(graph_cfg, p: int) -> int:
    """The dimensions FAISS searches in: graph.pca_dims where below p, else 0 (the rows themselves)."""
    return graph_cfg.pca_dims if 0 < graph_cfg.pca_dims < p else 0


def index_description(graph_cfg, method: str, n: int, p: int) -> str:
    """FAISS's index_factory string: PCA to graph.pca_dims first and an exact re-ranking last
    (RFlat) where pca_dims is set, IVF-Flat or HNSW between."""
    dims = pca_dims(graph_cfg, p)
    core = f"HNSW{graph_cfg.hnsw_m}" if method == "faiss_hnsw" else f"IVF{ivf_lists(graph_cfg, n)},Flat"
    return f"PCA{dims},{core},RFlat" if dims else core


def training_rows(graph_cfg, method: str, n: int, p: int) -> int:
    """Rows to train on: k-means's 39 per IVF list, the PCA's PCA_TRAIN_ROWS."""
    count = TRAIN_ROWS_PER_LIST * ivf_lists(graph_cfg, n) if method == "faiss_ivf" else 0
    return min(n, max(count, PCA_TRAIN_ROWS if pca_dims(graph_cfg, p) else 0))


def make_index(rows: knn_exact.GraphRows, graph_cfg, method: str, tick: Callable[[int], None]):
    """The FAISS index of every training row, trained on evenly spaced rows, filled block by block."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.index_factory(rows.p, index_description(graph_cfg, method, rows.n, rows.p))
    space = faiss.ParameterSpace()
    if method == "faiss_hnsw":
        space.set_index_parameter(index, "efSearch", graph_cfg.hnsw_ef_search)
    else:
        space.set_index_parameter(index, "nprobe", ivf_probes(graph_cfg, rows.n))
    if pca_dims(graph_cfg, rows.p):
        space.set_index_parameter(index, "k_factor_rf", graph_cfg.refine_factor)
    train = training_rows(graph_cfg, method, rows.n, rows.p)
    if train:
        index.train(_numpy(rows.take(torch.from_numpy(evenly_spaced(rows.n, train)))))
    for start, stop in knn_exact.blocks(rows.n, ADD_BLOCK):
        index.add(_numpy(rows.block(start, stop)))
        tick(stop - start)
    return index


def _without_self(found_d: np.ndarray, found_i: np.ndarray, ids: np.ndarray, k: int):
    """Each row's k + 1 found less the row itself (or, where it was not found, the farthest)."""
    keep = found_i != ids[:, None]
    keep[keep.all(axis=1), -1] = False
    return found_d[keep].reshape(-1, k), found_i[keep].reshape(-1, k)


def search(index, rows: knn_exact.GraphRows, k: int, precision: str,
           tick: Callable[[int], None]) -> Tuple[np.ndarray, np.ndarray]:
    """(distances (n, k) float32, indices (n, k) int64) of every training row. Rows for which the
    index found fewer than k others (an IVF list too small) get their exact neighbours."""
    out_d, out_i = [], []
    for start, stop in knn_exact.blocks(rows.n, ADD_BLOCK):
        found_d, found_i = index.search(_numpy(rows.block(start, stop)), k + 1)
        d, i = _without_self(found_d, found_i, np.arange(start, stop), k)
        out_d.append(np.sqrt(np.maximum(d, 0)))
        out_i.append(i)
        tick(stop - start)
    distances, indices = np.concatenate(out_d).astype(np.float32), np.concatenate(out_i).astype(np.int64)
    short = np.flatnonzero((indices < 0).any(axis=1))
    if len(short):
        distances[short], indices[short] = knn_exact.nearest_of(rows, torch.from_numpy(short), k, precision)
    return distances, indices


def recall_sample(n: int, count: int, seed: int) -> np.ndarray:
    """The rows whose exact neighbours measure the recall: `count` positions drawn from the seed."""
    rng = np.random.default_rng([seed, 25])
    return np.sort(rng.choice(n, size=min(count, n), replace=False)).astype(np.int64)


def recall(indices: np.ndarray, rows: knn_exact.GraphRows, sample: np.ndarray, k: int, precision: str,
           tick: Optional[Callable[[int], None]] = None) -> float:
    """recall@k of the graph `indices` on the sampled rows, against their exact neighbours."""
    _, exact = knn_exact.nearest_of(rows, torch.from_numpy(sample), k, precision, tick)
    hits = sum(len(np.intersect1d(a, e)) for a, e in zip(indices[sample], exact))
    return hits / (len(sample) * k)
