"""The k-nearest-neighbour graph of `loss: graph`, measured: the exact graph against the machine's
GEMM roofline, its 2-rank gloo efficiency, FAISS at ImageNet scale with its recall, and the graph
objective's training step against the previous default's (umap) step and the roofline.

  python benchmarks/bench_graph.py [--quick]

The rows are conf/imagenet_scale.yaml's sphere (p = 1536, d = 50, spread 1.2), k = 15.

  exact     the graph of EXACT_ROWS rows (100,000, --quick too) built by the code a run uses
            (cluster.job.neighbours_local: one rank, every core), FLOPs 2 n^2 p (the distance
            products; the top-k and the rest are overhead). Its roofline: the same products
            (runtime.products.mm, one query block of knn_exact.QUERY_BLOCK rows against every key
            block, the same shapes and library) timed alone, three rounds before and three after
            the build; the figure is achieved FLOP/s / the best round's (a ceiling: a slow spell
            of a shared machine during a round cannot flatter the build), and beside it the same
            ratio per CPU second of this process, which other processes change least.
  2 ranks   the same graph (GLOO_ROWS rows) on 1 rank of one thread against 2 gloo ranks of one
            thread each, as bench_distributed.py compares training: efficiency = seconds(1 rank) /
            (2 x seconds(2 ranks)); the 2 ranks' graph must equal the 1 rank's.
  FAISS     graph.method=auto at 1.3M rows (conf/imagenet_scale.yaml's n, --quick too): on a CPU
            FAISS's HNSW on the first graph.pca_dims principal components, re-ranked by the full
            rows (knn_faiss.index_description), its time (PCA, index, search, and the recall's
            exact neighbours; the rows are made three times, 8 GB not being held) and recall@15
            against the exact neighbours of 1,000 rows drawn from the seed (graph.recall_sample),
            beside the exact graph's time at that n estimated from the exact graph's FLOP/s. The
            process holds about 15 GB at its peak (FAISS keeps the 8 GB of rows to re-rank).
  step      loss=graph's step (a batch of 1,024 edges: heads, tails and graph.negatives (2) each through
            the MLP, data.edge_batches.EdgeLoader) against the previous default's step (loss=umap, 1,024
            points and their pairs, bench_step.py's toolkit step), both at p = 1536, batch 1,024,
            interleaved; the graph step's model FLOP utilisation against the same products alone.

Targets: the exact graph at >= 0.7 of the roofline (issue 25); 2-rank efficiency >= 0.80 (the
project's target for 2 gloo ranks, bench_distributed.py). FAISS's time and recall and the step's
rates are printed without a target: the issue sets none.
"""

import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_step import forever, toolkit_step
from common import Report, interleaved_seconds, quick_flag

from bnnidr_hpc.cluster.job import neighbours_local
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.data import knn_exact
from bnnidr_hpc.data.edge_batches import EdgeLoader
from bnnidr_hpc.data.sources import Hypersphere, ShardLoader
from bnnidr_hpc.data.umap_graph import FuzzyEdges
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.runtime import allocator, products
from bnnidr_hpc.runtime.distributed import DistInfo
from bnnidr_hpc.train.optim import Optimizers
from bnnidr_hpc.train.step import make_step

SPHERE = ["data.p=1536", "data.d=50", "data.spread=1.2"]  # conf/imagenet_scale.yaml's sphere
EXACT_ROWS = 100_000  # the issue asks for 100,000 in --quick too (about 4 min here)
GLOO_ROWS = {True: 12_000, False: 50_000}
FAISS_ROWS = 1_300_000  # the issue asks for ImageNet's n in --quick too (912 s here, 2026-12-06)
ROOFLINE_ROUNDS = 3  # before the build, and as many after


def graph_config(root: Path, name: str, n: int, method: str, extra=()):
    """A config whose graph is built afresh in root/name (every build its own cache folder)."""
    return load(None, SPHERE + [f"data.n={n}", "data.cache_gb=4", f"graph.method={method}",
                                f"graph.cache_dir={root / name}", f"run.root={root}", "run.progress=false",
                                *extra])


def build(c) -> dict:
    """neighbours_local's summary (seconds: the build's own wall time, rank 0's), this process's
    torch threads restored afterwards (a 1-thread build sets them)."""
    threads = torch.get_num_threads()
    try:
        return neighbours_local(c)
    finally:
        torch.set_num_threads(threads)


def block_products(n: int, p: int):
    """(a function running the products of one query block against every key block, their FLOPs)."""
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(knn_exact.QUERY_BLOCK, p, generator=g)
    keys = torch.randn(knn_exact.KEY_BLOCK, p, generator=g)
    sizes = [b - a for a, b in knn_exact.blocks(n, knn_exact.KEY_BLOCK)]
    flops = sum(2 * queries.shape[0] * size * p for size in sizes)

    def run():
        for size in sizes:
            products.mm(queries, keys[:size].T)  # a key block is a slice of the held rows, as here

    return run, flops


def roofline_rates(n: int, p: int, rounds: int) -> list:
    """[(FLOPs per wall second, FLOPs per CPU second of this process)] of `rounds` rounds."""
    run, flops = block_products(n, p)
    run()
    rates = []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        rates.append((flops / (time.perf_counter() - wall), flops / (time.process_time() - cpu)))
    return rates


def exact_graph(report: Report, root: Path, n: int) -> float:
    """The exact graph against the roofline; returns its achieved FLOP/s."""
    c = graph_config(root, "exact", n, "exact")
    p, flops = c.data.p, 2 * n * n * c.data.p
    rounds = roofline_rates(n, p, ROOFLINE_ROUNDS)
    cpu = time.process_time()
    found = build(c)
    cpu = time.process_time() - cpu
    rounds += roofline_rates(n, p, ROOFLINE_ROUNDS)
    achieved = flops / found["seconds"]
    # The roofline is a ceiling: the best round, so that a slow spell of the shared machine during
    # the rounds cannot make the build look better than its products.
    roofline = max(wall for wall, _ in rounds)
    report.add(f"exact graph, {n:,} x {p} rows, k={c.graph.k}: seconds", found["seconds"], "s")
    report.add("  rows/s", n / found["seconds"], "rows/s")
    report.add("  achieved FLOP/s (2 n^2 p / seconds)", achieved / 1e9, "GFLOP/s")
    report.add("  roofline, same products (best of " + ", ".join(f"{w / 1e9:.0f}" for w, _ in rounds) + ")",
               roofline / 1e9, "GFLOP/s")
    fraction = achieved / roofline
    report.add("  exact graph / roofline", fraction, "", ">= 0.7", fraction >= 0.7)
    # Per second of CPU this process got: what the shared machine's other work changes least.
    per_cpu = (flops / cpu) / float(np.median([c for _, c in rounds]))
    report.add("  the same per CPU second (graph / median round)", per_cpu, "")
    return achieved


def gloo_efficiency(report: Report, root: Path, n: int) -> None:
    one = build(graph_config(root, "one-rank", n, "exact", ["run.threads=1"]))
    two = build(graph_config(root, "two-ranks", n, "exact", ["run.threads=1", "num_gpu=2"]))
    same = np.array_equal(np.load(Path(one["path"]) / "indices.npy"), np.load(Path(two["path"]) / "indices.npy"))
    report.add(f"exact graph of {n:,} rows, 1 rank x 1 thread", one["seconds"], "s")
    report.add("  2 gloo ranks x 1 thread", two["seconds"], "s")
    efficiency = one["seconds"] / (2 * two["seconds"])
    report.add("  strong-scaling efficiency, 1 -> 2 gloo ranks", efficiency, "", ">= 0.80", efficiency >= 0.80)
    report.add("  2 ranks' graph equal to 1 rank's", float(same), "", "= 1", same)


def faiss_graph(report: Report, root: Path, n: int, exact_flops: float) -> None:
    from bnnidr_hpc.data import graph_cache, knn_faiss

    c = graph_config(root, "faiss", n, "auto")
    method = graph_cache.resolve_method(c.graph, n, "cpu")
    found = build(c)
    described = knn_faiss.index_description(c.graph, method, n, c.data.p)
    report.add(f"FAISS graph ({described}), {n:,} x {c.data.p} rows, k={c.graph.k}: seconds", found["seconds"], "s")
    report.add("  rows/s", n / found["seconds"], "rows/s")
    report.add(f"  recall@{c.graph.k} against exact, {c.graph.recall_sample:,} sampled rows", found["recall"], "")
    estimate = 2 * n * n * c.data.p / exact_flops
    report.add("  exact graph at this n, estimated from its FLOP/s", estimate, "s")
    report.add("  exact estimate / FAISS", estimate / found["seconds"], "x")


def mlp_products(c, rows: int):
    """(a function running the MLP's layers over `rows` rows forward and backward, through the
    calls the step's layers make (products.linear), without activations, loss or optimizer; their
    FLOPs): the graph step's only matrix products (its loss is per edge)."""
    sizes = [c.input_dim] + c.hidden_sizes() + [c.output_dim]
    g = torch.Generator().manual_seed(0)
    x, grad = torch.randn(rows, sizes[0], generator=g), torch.randn(rows, sizes[-1], generator=g)
    layers = [(torch.randn(b, a, generator=g).requires_grad_(), torch.zeros(b).requires_grad_())
              for a, b in zip(sizes, sizes[1:])]
    # forward 2, weight gradient 2, input gradient 2 (not for the first layer, whose input needs none)
    flops = sum(2 * rows * a * b * (2 if i == 0 else 3) for i, (a, b) in enumerate(zip(sizes, sizes[1:])))

    def run():
        h = x
        for weight, bias in layers:
            h = products.linear(h, weight, bias)
        h.backward(grad)

    return run, flops


def graph_step(c, device):
    """One loss=graph step: EdgeLoader's batches (random edges of uniform weight: the step's cost
    does not depend on which) from the cached points, train.make_step."""
    data = Hypersphere(c.data, c.seed, device)
    shards = ShardLoader(data, c.batch_size, 0, 1)
    g = torch.Generator().manual_seed(0)
    count = 16 * c.data.n
    edges = FuzzyEdges(torch.randint(c.data.n, (count,), generator=g), torch.randint(c.data.n, (count,), generator=g),
                       torch.ones(count, dtype=torch.float64), c.data.n)
    loader = EdgeLoader(shards, edges, c.graph.negatives)
    torch.manual_seed(0)
    model = Reducer(c.model_spec()).to(device)
    step = make_step(c, model, Optimizers(c.optimizers, c.max_epochs, model), DistInfo())
    epochs = itertools.count()
    batches = forever(lambda: loader.epoch(next(epochs)))

    def one():
        step(*next(batches))

    return one


def any_step(c, device):
    """One training step of c's objective: graph_step for loss=graph, bench_step's toolkit step else."""
    return graph_step(c, device) if c.loss == "graph" else toolkit_step(c, device)[0]


def mlp_rows(c) -> int:
    """Rows through the MLP per sample of c's step: an edge's head, tail and negatives, or one point."""
    return 2 + c.graph.negatives if c.loss == "graph" else 1


def steps(report: Report, quick: bool) -> None:
    base = SPHERE + [f"data.n={1024 * 32}", "batch_size=1024"]
    today, graph = load(None, base + ["loss=umap"]), load(None, base + ["loss=graph"])  # umap: the default before graph
    device = torch.device("cpu")
    rows = graph.batch_size * mlp_rows(graph)
    calls = {"today": toolkit_step(today, device)[0], "graph": graph_step(graph, device)}
    calls["roofline"], flops = mlp_products(graph, rows)
    seconds = interleaved_seconds(calls, device, *((5, 8) if quick else (7, 20)))
    batch = graph.batch_size
    report.add(f"the previous default's step (loss={today.loss}, {batch} points), fp32", batch / seconds["today"],
               "samples/s")
    rate = batch / seconds["graph"]
    report.add(f"loss=graph step ({batch} edges, {rows} rows through the MLP), fp32", rate, "edges/s")
    report.add("  rows through the MLP", rows / seconds["graph"], "rows/s")
    report.add("  graph step / today's step (samples/s)", seconds["today"] / seconds["graph"], "x")
    achieved, ceiling = flops / seconds["graph"], flops / seconds["roofline"]
    report.add("  model FLOP/s achieved", achieved / 1e9, "GFLOP/s")
    report.add("  roofline (same products alone)", ceiling / 1e9, "GFLOP/s")
    report.add("  model FLOP utilisation", achieved / ceiling, "")


def main():
    quick = quick_flag()
    allocator.keep_freed_memory()
    report = Report("graph", quick)
    # A shared machine's other work slows the build and its roofline rounds alike only if it lasts
    # the whole run: its load is printed beside the figures.
    report.add(f"load average at the start ({os.cpu_count()} cores)", os.getloadavg()[0], "")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        exact_flops = exact_graph(report, root, EXACT_ROWS)
        gloo_efficiency(report, root, GLOO_ROWS[quick])
        faiss_graph(report, root, FAISS_ROWS, exact_flops)
    steps(report, quick)
    report.add("load average at the end", os.getloadavg()[0], "")
    report.finish()


if __name__ == "__main__":
    main()
