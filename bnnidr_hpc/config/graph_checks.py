"""The checks of the graph section (the k-nearest-neighbour graph, `loss: graph`), and of a folder
that a command will create, before anything is created.

Used by: validation.py (validate: every config; its run.root check is writable_folder), cli.py
(`bnnidr-hpc neighbours`: the graph's checks as if it were used).

Checks that hold for every config (names, positive counts) run always; those that depend on the
graph being built (k below data.n, faiss installed, the cache folder writable) run where it is:
loss=graph, or the neighbours command.
"""

from __future__ import annotations

import os
from pathlib import Path

from bnnidr_hpc.data.graph_cache import METHODS, METRICS, faiss_installed
from bnnidr_hpc.runtime.errors import ConfigError


def _fail(key: str, value, allowed: str) -> None:
    raise ConfigError(f"config: {key}={value!r} is not allowed: {allowed}")


def _count(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(key, value, "must be a positive integer")


def _whole(key: str, value, allowed: str) -> None:
    """An integer >= 0 (0 meaning what `allowed` says)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _fail(key, value, allowed)


def writable_folder(key: str, folder) -> None:
    """`folder` will be created (with its parents): the nearest folder of it that exists must be a
    directory one can write in. Looked at only; nothing is created here."""
    try:
        path = Path(folder).resolve()
        existing = next(p for p in (path, *path.parents) if p.exists())
        ok = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    except (OSError, RuntimeError, ValueError, TypeError):  # a symlink loop, a NUL byte, a name too long
        existing, ok = None, False
    if not ok:
        what = "is not a directory" if existing and not existing.is_dir() else "is not writable"
        _fail(key, folder, f"a folder that can be created: {existing or folder} {what}")


def check_graph(c, used: bool) -> None:
    """c: the Config; used: the graph will be built (loss=graph, or `bnnidr-hpc neighbours`)."""
    g = c.graph
    _count("graph.k", g.k)
    if g.method not in METHODS:
        _fail("graph.method", g.method, f"one of {', '.join(METHODS)}")
    if g.metric not in METRICS:
        _fail("graph.metric", g.metric, f"one of {', '.join(METRICS)}")
    for key in ("exact_max_rows", "hnsw_m", "hnsw_ef_search", "recall_sample", "refine_factor"):
        _count(f"graph.{key}", getattr(g, key))
    _whole("graph.ivf_probes", g.ivf_probes, "a positive integer, or 0 for one list in 14")
    _whole("graph.ivf_lists", g.ivf_lists, "a positive integer, or 0 for 4 sqrt(n)")
    _whole("graph.pca_dims", g.pca_dims, "an integer >= 0: FAISS searches that many principal components (0: all)")
    if g.cache_dir is not None and (not isinstance(g.cache_dir, str) or not g.cache_dir.strip()):
        _fail("graph.cache_dir", g.cache_dir, "a folder path, or null for RUN_ROOT/graphs")
    _check_objective(c, used)
    if not used:
        return
    if g.k >= c.data.n:
        _fail("graph.k", g.k, f"must be smaller than data.n={c.data.n} (each row's k nearest other training rows)")
    if g.method.startswith("faiss") and not faiss_installed():
        _fail("graph.method", g.method, "faiss is not installed here (pip install faiss-cpu), or use exact or auto")
    if g.cache_dir is not None:
        writable_folder("graph.cache_dir", g.cache_dir)
    else:
        writable_folder("run.root", Path(c.run.root) / "graphs")


def _number(key: str, value, low: float, high: float, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        _fail(key, value, allowed)


def _non_negative(key: str, value, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        _fail(key, value, allowed)


def _check_objective(c, used: bool) -> None:
    """The keys of `loss: graph`'s objective (model/graph_loss.py, data/umap_graph.py)."""
    g = c.graph
    _number("graph.spread", g.spread, 0.0, float("inf"), "a positive number (UMAP's spread)")
    if isinstance(g.min_dist, bool) or not isinstance(g.min_dist, (int, float)) or not 0 <= g.min_dist < 3 * g.spread:
        _fail("graph.min_dist", g.min_dist, f"a number >= 0 and below 3 x graph.spread={g.spread} (UMAP's min_dist)")
    _whole("graph.negatives", g.negatives, "an integer >= 0 (uniform negatives per edge)")
    _number("graph.target_weight", g.target_weight, 0.0, 1.0, "a number in (0, 1): the labels' weight (UMAP's)")
    if isinstance(g.class_pairs, bool) or not isinstance(g.class_pairs, (int, float)) or not 0 <= g.class_pairs < 1:
        _fail("graph.class_pairs", g.class_pairs, "a number in [0, 1): the share of edges drawn as pairs of one class")
    _number("graph.repulsion_strength", g.repulsion_strength, 0.0, float("inf"),
            "a positive number (the negatives' weight)")
    _non_negative("graph.distance_weight", g.distance_weight, "a number >= 0 (the distance term's weight; 0: none)")
    _non_negative("graph.distance_variance", g.distance_variance,
                  "a number >= 0: the share of variance PCA must keep for the distance term (0: always, >1: never)")
    if used and g.labels and c.data.source == "npy" and c.data.labels is None:
        _fail("graph.labels", g.labels, "false without data.labels (the labels of the training rows)")
