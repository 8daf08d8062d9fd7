"""The k-nearest-neighbour graph of the training rows, computed across the ranks and kept in a cache.

Used by: train/session.py (loss: graph, before the first epoch), train/graph_stage.py (`bnnidr-hpc
neighbours`), data/umap_graph.py (the KnnGraph it makes its fuzzy graph from), tests.

Every rank calls build_graph with the same arguments and gets the whole graph back:
  - a finished graph in the cache (graph_cache.py: a folder named by what determines the graph) is
    read and returned, `reused`;
  - exact: the query rows are cut into a grid of blocks fixed by n (knn_exact.QUERY_BLOCK); rank r
    takes its contiguous share of the blocks, computes each against all training rows
    (knn_exact.nearest) and writes it as a part file. Rank 0 waits until every part is there,
    merges them into indices.npy and distances.npy, writes meta.json last and removes the parts; the
    other ranks wait for meta.json, then every rank reads the files.
  - faiss_ivf / faiss_hnsw (CPU): rank 0 builds the index, searches every row and measures the
    recall (knn_faiss.py); the other ranks wait for meta.json.

Why files and not a collective: a build interrupted (a requeue, a kill) resumes from the finished
blocks, with any number of ranks, since the grid does not depend on the world size; the slices need
no padding to one shape; and ranks wait by polling the file system, not in a collective, so a long
build never meets the process group's timeout (a lost rank is the watchdog's, as in training). It
asks for a file system that every rank sees, as the run directory already is (records, checkpoints
and requeues rely on it). On a GPU the blocks stay on the device; the one host copy per block is the
part file's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from bnnidr_hpc.data import graph_cache, knn_exact
from bnnidr_hpc.data.graph_cache import METHODS, METRICS  # noqa: F401  (the names config checks)

POLL_S = 0.2  # how often a waiting rank looks for the files it waits for


@dataclass
class KnnGraph:
    indices: np.ndarray     # (n, k) int64: each training position's k nearest other positions, nearest first
    distances: np.ndarray   # (n, k) float32, ascending per row (Euclidean after data.normalize; cosine:
                            #   Euclidean distance of L2-normalised rows)
    method: str             # "exact" | "faiss_ivf" | "faiss_hnsw"
    seconds: float          # wall time of the build in this session (0 when read from the cache)
    rows_per_s: float       # query rows per second of the build that made it (kept in meta.json)
    recall: Optional[float]  # recall@k of an approximate graph on graph.recall_sample rows (exact: 1.0)
    path: str               # the cache folder holding indices.npy, distances.npy, meta.json
    reused: bool            # read from the cache


def build_graph(source, graph_cfg, info, device, cache_root, progress: bool = False,
                precision: str = "fp32") -> KnnGraph:
    """The graph of training positions 0..source.cfg.n-1 (graph_cfg: the config's graph section;
    info: runtime.distributed.DistInfo). Called by every rank; each returns the whole graph."""
    device = torch.device(device)
    n, k = int(source.cfg.n), int(graph_cfg.k)
    method = graph_cache.resolve_method(graph_cfg, n, device.type)
    key = graph_cache.cache_key(source, graph_cfg, method, precision)
    folder = graph_cache.folder_for(cache_root, key)
    found = graph_cache.read_finished(folder, n, k)
    if found is not None:
        return _graph(found, folder, 0.0, reused=True)
    started = time.time()
    if method == "exact":
        rows = lambda: knn_exact.GraphRows(source, graph_cfg.metric, device)
        _exact_share(rows, n, folder, k, info, precision, progress, started, key)
    elif info.rank == 0:
        rows = knn_exact.GraphRows(source, graph_cfg.metric, torch.device("cpu"))  # FAISS's index is on the CPU
        _approximate(rows, folder, graph_cfg, method, precision, progress, started, key, source.seed)
    _wait_for(lambda: (folder / graph_cache.META).exists())
    return _graph(graph_cache.read_finished(folder, n, k), folder, time.time() - started, reused=False)


def _graph(found, folder: Path, seconds: float, reused: bool) -> KnnGraph:
    indices, distances, meta = found
    return KnnGraph(indices, distances, meta["method"], seconds, meta["rows_per_s"], meta.get("recall"),
                    str(folder), reused)


def _wait_for(done: Callable[[], bool]) -> None:
    while not done():
        time.sleep(POLL_S)


def _bar(progress: bool, total: int, desc: str):
    """A tqdm bar of rows on rank 0 (progress=True), else a tick that does nothing."""
    if not progress:
        return lambda rows: None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="row", unit_scale=True, desc=desc, leave=False)
    return bar.update, bar.close


def _exact_share(make_rows: Callable, n: int, folder: Path, k: int, info, precision: str, progress: bool,
                 started: float, key: dict) -> None:
    """This rank's blocks not yet in part files (the rows made only if there are some); on rank 0
    then the merge."""
    grid = knn_exact.blocks(n, knn_exact.QUERY_BLOCK)
    done = graph_cache.finished_parts(folder)
    todo = [b for b in knn_exact.rank_share(grid, info.rank, info.world_size) if b not in done]
    tick, close = _bar(progress and info.rank == 0, sum(b - a for a, b in todo), "k-NN graph")
    rows = make_rows() if todo else None
    for start, stop in todo:
        distances, indices = knn_exact.nearest_of_block(rows, start, stop, k, precision)
        graph_cache.write_part(folder, start, stop, indices.cpu().numpy(), distances.cpu().numpy())
        tick(stop - start)
    close()
    if info.rank != 0:
        return
    computed = sum(b - a for a, b in grid if (a, b) not in done)  # by every rank, in this session
    meta_path = folder / graph_cache.META
    _wait_for(lambda: meta_path.exists() or set(grid) <= graph_cache.finished_parts(folder))
    if meta_path.exists():  # another process (a sweep's point beside this one) finished it
        return
    try:
        parts = [graph_cache.read_part(folder, a, b) for a, b in grid]
    except FileNotFoundError:  # another process merged them between the wait and the read
        if meta_path.exists():
            return
        raise
    indices = np.concatenate([p[0] for p in parts])
    distances = np.concatenate([p[1] for p in parts])
    _finish(folder, indices, distances, "exact", 1.0, computed, started, key, info.world_size)
    graph_cache.remove_parts(folder)


def _approximate(rows, folder: Path, graph_cfg, method: str, precision: str, progress: bool, started: float,
                 key: dict, seed: int) -> None:
    from bnnidr_hpc.data import knn_faiss

    sample = knn_faiss.recall_sample(rows.n, graph_cfg.recall_sample, seed)
    tick, close = _bar(progress, 2 * rows.n + len(sample), f"k-NN graph ({method})")
    index = knn_faiss.make_index(rows, graph_cfg, method, tick)
    distances, indices = knn_faiss.search(index, rows, graph_cfg.k, precision, tick)
    del index
    recall = knn_faiss.recall(indices, rows, sample, graph_cfg.k, precision, tick)
    close()
    _finish(folder, indices, distances, method, recall, rows.n, started, key, 1)


def _finish(folder: Path, indices, distances, method: str, recall: float, computed: int, started: float,
            key: dict, world_size: int) -> None:
    seconds = time.time() - started
    meta = {"method": method, "seconds": seconds, "rows_per_s": computed / seconds if computed else 0.0,
            "recall": recall, "n": int(indices.shape[0]), "k": int(indices.shape[1]), "rows_computed": computed,
            "world_size": world_size, "built_at": time.time(), "key": key}
    graph_cache.write_finished(folder, indices, distances, meta)
