"""Where a k-nearest-neighbour graph is kept: the cache folder named by what determines the graph,
its files, the part files of a build under way, and the names of the methods and metrics.

Used by: data/neighbours.py (build_graph reads, resumes and writes through it), config/graph_checks.py
(METHODS, METRICS, faiss_installed: checked before anything is created). numpy and the standard
library only, so the config's checks import it without torch.

A folder CACHE_ROOT/knn-HASH holds a finished graph:
  indices.npy     (n, k) int64, nearest first; distances.npy (n, k) float32, ascending
  meta.json       method, seconds, rows_per_s, recall, n, k and the key: written last, so a folder
                  with meta.json is a finished graph
  part-A-B.npz    while the exact build runs: query rows A..B-1 done (indices and distances in one
                  file, so one rename finishes a block); removed once the graph is merged
HASH is a digest of the key: the data's identity (a sphere's data section and seed; a feature
file's resolved paths, sizes and mtimes, the training rows and the normalisation), k, metric,
method and its parameters. A resume, a requeue or another point of a sweep over the same data finds
the same folder; any change of what the graph depends on gives a new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from bnnidr_hpc.runtime.atomic_files import atomic_write

METHODS = ("auto", "exact", "faiss_ivf", "faiss_hnsw")
METRICS = ("euclidean", "cosine")
INDICES, DISTANCES, META = "indices.npy", "distances.npy", "meta.json"
PART = re.compile(r"part-(\d+)-(\d+)\.npz")
# The data section's keys that do not change the training rows' values.
NOT_IDENTITY = ("cache_gb", "labels")


def faiss_installed() -> bool:
    return importlib.util.find_spec("faiss") is not None


def ivf_lists(graph_cfg, n: int) -> int:
    """graph.ivf_lists, or for 0 FAISS's usual 4 sqrt(n), at most n / 39 (k-means wants 39 training
    rows per list), at least 1."""
    if graph_cfg.ivf_lists:
        return min(graph_cfg.ivf_lists, n)
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def ivf_probes(graph_cfg, n: int) -> int:
    """graph.ivf_probes, or for 0 one list in 14 (at least 32, at most every list): at 50,000 rows
    of conf/imagenet_scale.yaml's sphere (894 lists) 32 probes kept recall@15 0.835, 64 0.981,
    128 1.000 (docs/neighbours.md), so a fixed count loses recall as the lists grow with n."""
    lists = ivf_lists(graph_cfg, n)
    probes = graph_cfg.ivf_probes or max(32, math.ceil(lists / 14))
    return min(probes, lists)


def resolve_method(graph_cfg, n: int, device_type: str) -> str:
    """auto: exact up to graph.exact_max_rows rows or on a GPU (where the exact products are fast),
    else FAISS's HNSW when faiss is installed, else exact. HNSW and not IVF: an HNSW search grows
    with log n, an IVF one with n (its probes follow the lists, 4 sqrt(n)), which at 1.3M x 1,536
    would take hours on a CPU (docs/neighbours.md)."""
    if graph_cfg.method != "auto":
        return graph_cfg.method
    if n <= graph_cfg.exact_max_rows or device_type == "cuda" or not faiss_installed():
        return "exact"
    return "faiss_hnsw"


def data_identity(source) -> dict:
    """What makes the training rows what they are, without reading them all."""
    cfg = dataclasses.asdict(source.cfg) if dataclasses.is_dataclass(source.cfg) else dict(vars(source.cfg))
    if cfg.get("source") != "npy":
        return {"sphere": {k: v for k, v in sorted(cfg.items()) if k not in NOT_IDENTITY}, "seed": source.seed}
    files = []
    for path in source.shards.paths:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        files.append([str(resolved), stat.st_size, stat.st_mtime_ns])
    rows = hashlib.sha256(np.ascontiguousarray(source.train_rows, dtype=np.int64).tobytes()).hexdigest()
    return {"files": files, "train_rows": rows, "split_seed": source.seed, "n": int(cfg["n"]),
            "normalize": cfg.get("normalize")}


def method_parameters(graph_cfg, method: str, n: int, precision: str) -> dict:
    if method == "exact":
        return {"precision": precision}
    if method == "faiss_ivf":
        found = {"lists": ivf_lists(graph_cfg, n), "probes": ivf_probes(graph_cfg, n)}
    else:
        found = {"m": graph_cfg.hnsw_m, "ef_search": graph_cfg.hnsw_ef_search}
    if graph_cfg.pca_dims:  # absent at 0, so graphs cached before the key existed keep their folders
        found.update(pca_dims=graph_cfg.pca_dims, refine_factor=graph_cfg.refine_factor)
    return {**found, "recall_sample": graph_cfg.recall_sample}


def cache_key(source, graph_cfg, method: str, precision: str) -> dict:
    n = int(source.cfg.n)
    return {"data": data_identity(source), "n": n, "k": graph_cfg.k, "metric": graph_cfg.metric, "method": method,
            "parameters": method_parameters(graph_cfg, method, n, precision)}


def folder_for(cache_root, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache_root) / f"knn-{digest}"


# ----------------------------------------------------------------------------- files

def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def read_finished(folder: Path, n: int, k: int) -> Optional[Tuple[np.ndarray, np.ndarray, dict]]:
    """(indices, distances, meta) of a finished graph in folder, None where there is none or its
    files do not have the shapes asked for (then it is built again, replacing them)."""
    try:
        meta = json.loads((folder / META).read_text())
        indices, distances = np.load(folder / INDICES), np.load(folder / DISTANCES)
    except (OSError, ValueError):
        return None
    if indices.shape != (n, k) or distances.shape != (n, k):
        return None
    return indices, distances, meta


def write_finished(folder: Path, indices: np.ndarray, distances: np.ndarray, meta: dict) -> None:
    """The arrays first, meta.json last: a folder with meta.json is whole."""
    for name, array in ((INDICES, indices.astype(np.int64)), (DISTANCES, distances.astype(np.float32))):
        blob = _npy_bytes(array)
        atomic_write(folder / name, lambda f, blob=blob: f.write(blob), binary=True)
    atomic_write(folder / META, lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True, default=str)))


def part_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"part-{start:012d}-{stop:012d}.npz"


def write_part(folder: Path, start: int, stop: int, indices: np.ndarray, distances: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, indices=indices.astype(np.int64), distances=distances.astype(np.float32))
    blob = buffer.getvalue()
    atomic_write(part_path(folder, start, stop), lambda f: f.write(blob), binary=True)


def read_part(folder: Path, start: int, stop: int) -> Tuple[np.ndarray, np.ndarray]:
    with np.load(part_path(folder, start, stop)) as f:
        return f["indices"], f["distances"]


def finished_parts(folder: Path) -> set:
    """(start, stop) of every part file in folder."""
    try:
        names = os.listdir(folder)
    except OSError:
        return set()
    return {(int(m.group(1)), int(m.group(2))) for m in map(PART.fullmatch, names) if m}


def remove_parts(folder: Path) -> None:
    """The parts and the temp files of parts a killed writer left, once the graph is merged."""
    for path in folder.iterdir():
        if PART.fullmatch(path.name) or (path.name.startswith(".part-") and path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)
