"""The k-nearest-neighbour graph stage of a run: where its cache is, the build call with the run's
settings, and the graph built alone (`bnnidr-hpc neighbours`) on each rank.

Used by: train/session.py (loss: graph, before the first epoch; and whether its distance term is
used), cluster/job.py (`neighbours` on local ranks, under torchrun, or alone), cli.py (summary_line).

The graph itself (exact across the ranks, or FAISS; its cache and resume) is data/neighbours.py's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from bnnidr_hpc.config.schema import Config
from bnnidr_hpc.data.neighbours import KnnGraph, build_graph
from bnnidr_hpc.data.sources import source
from bnnidr_hpc.runtime import collectives, distributed, products
from bnnidr_hpc.runtime.distributed import DistInfo
from bnnidr_hpc.train import evaluate


def cache_root(c: Config) -> Path:
    """graph.cache_dir, else RUN_ROOT/graphs: every run and sweep point under one root shares it."""
    return Path(c.graph.cache_dir) if c.graph.cache_dir else Path(c.run.root) / "graphs"


def build(c: Config, data, info: DistInfo, device: torch.device) -> KnnGraph:
    """The run's graph of its training rows (data: its source), with a progress bar on rank 0 at a
    terminal."""
    progress = c.run.progress and info.is_main and sys.stderr.isatty()
    return build_graph(data, c.graph, info, device, cache_root(c), progress=progress, precision=c.precision)


def pca_variance_kept(sample: torch.Tensor, output_dim: int) -> float:
    """The share of the rows' variance that their first output_dim principal components hold."""
    eigenvalues = torch.linalg.eigvalsh(evaluate.centred_scatter(sample)[1]).clamp_min(0)
    total = eigenvalues.sum().item()
    return eigenvalues[-output_dim:].sum().item() / total if total > 0 else 1.0


def distance_weight(c: Config, data, info: DistInfo, device: torch.device) -> tuple:
    """(the distance term's weight for this run, PCA's share of variance at output_dim or None).
    The term is used where PCA to output_dim keeps at least graph.distance_variance of the
    variance: the data lies in a linear subspace the output holds, every distance can be kept, and
    the cross-entropy alone would trade neighbour identity for separation. Rank 0's share on every
    rank, so that all ranks train the same loss."""
    g = c.graph
    if not g.distance_weight or g.distance_variance > 1:
        return 0.0, None
    if g.distance_variance == 0:
        return float(g.distance_weight), None
    kept = pca_variance_kept(data.sample(evaluate.BASELINE_ROWS).double(), c.output_dim) if info.is_main else 0.0
    kept = collectives.all_reduce_sum(torch.tensor([kept], dtype=torch.float64, device=device)).item()
    return (float(g.distance_weight) if kept >= g.distance_variance else 0.0), kept


def summary(graph: KnnGraph) -> dict:
    """What the neighbours command prints (and a spawned rank 0 hands back to its parent)."""
    return {"path": graph.path, "method": graph.method, "seconds": graph.seconds, "rows_per_s": graph.rows_per_s,
            "recall": graph.recall, "reused": graph.reused, "n": int(graph.indices.shape[0]),
            "k": int(graph.indices.shape[1])}


def summary_line(s: dict) -> str:
    how = "read from the cache" if s["reused"] else f"built in {s['seconds']:.2f} s"
    recall = "-" if s["recall"] is None else f"{s['recall']:.4f}"
    return (f"k-NN graph of {s['n']} rows, k={s['k']}: {s['path']}\n"
            f"method {s['method']}, {how}, {s['rows_per_s']:,.0f} rows/s, recall@{s['k']} {recall}")


def build_alone(c: Config, info: DistInfo) -> dict:
    """One rank of `bnnidr-hpc neighbours`: join the other ranks (a lost one ends this process,
    as in training), build the graph, leave; its summary()."""
    def on_lost(rank: int, message: str) -> None:
        print(f"bnnidr-hpc: {message}; ending the graph build", file=sys.stderr, flush=True)
        os._exit(1)

    device = distributed.pick_device(info, c.run.device)
    threads = c.run.threads or info.cpus_per_task
    if threads:
        torch.set_num_threads(threads)
    products.use(c.run.cpu_matmul)
    watchdog = distributed.init(info, device, c.run.rank_timeout_s, on_lost)
    try:
        graph = build(c, source(c.data, c.seed, device), info, device)
    except BaseException as exc:
        if watchdog is not None and isinstance(exc, Exception):  # Ctrl-C reaches every rank: no one's failure
            watchdog.post_error(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
        distributed.shutdown(together=False)
        raise
    if watchdog is not None:
        watchdog.stop()
    distributed.shutdown()
    return summary(graph)
