"""The k-nearest-neighbour graph (data/neighbours.py): exact against a brute-force kNN, the same on
2 gloo ranks as on 1, kept and reused from its cache, resumed from its finished blocks, FAISS's
recall measured, a feature file's graph, and `bnnidr-hpc neighbours`."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TINY

from bnnidr_hpc import cli
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.data import graph_cache, knn_exact
from bnnidr_hpc.data.neighbours import build_graph
from bnnidr_hpc.data.sources import source
from bnnidr_hpc.runtime.distributed import DistInfo


def sphere(tmp_path, *overrides):
    c = load(None, TINY + [f"run.root={tmp_path / 'runs'}", *overrides])
    return c, source(c.data, c.seed)


def brute_force(x: torch.Tensor, k: int, metric: str = "euclidean"):
    """Every pair's distance in float64, the row itself left out: (distances, indices)."""
    x = x.double()
    if metric == "cosine":
        x = x / x.norm(dim=1, keepdim=True)
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    values, order = d.topk(k, largest=False)
    return values.numpy(), order.numpy(), d.numpy()


def assert_same_graph(graph, x, k, metric="euclidean", atol=1e-5, least_recall=1.0):
    ref_d, ref_i, full = brute_force(x, k, metric)
    assert graph.indices.shape == (len(x), k) and graph.indices.dtype == np.int64
    assert graph.distances.dtype == np.float32
    # each row's listed distances are its true distances to the listed rows, ascending
    np.testing.assert_allclose(np.take_along_axis(full, graph.indices, 1), graph.distances, atol=atol)
    if least_recall < 1:  # bf16's candidates: nearly every true neighbour
        assert np.mean([len(set(a) & set(b)) / k for a, b in zip(graph.indices, ref_i)]) >= least_recall
        return
    np.testing.assert_allclose(graph.distances, ref_d, atol=atol)
    # Ties aside: where the reference's k-th and (k+1)-th distances are apart, the neighbour sets agree.
    kth_next = np.sort(full, axis=1)[:, k]
    clear = kth_next - ref_d[:, -1] > 10 * atol
    assert clear.mean() > 0.9
    for got, want in zip(graph.indices[clear], ref_i[clear]):
        assert set(got) == set(want)


@pytest.mark.parametrize("metric,precision", [("euclidean", "fp32"), ("cosine", "fp32"), ("euclidean", "bf16")])
def test_exact_graph_is_the_brute_force_knn(tmp_path, metric, precision):
    # n spans several key blocks and two query blocks, the last of each partial
    c, data = sphere(tmp_path, "data.n=2600", "data.p=16", f"graph.metric={metric}", "graph.k=7")
    graph = build_graph(data, c.graph, DistInfo(), "cpu", tmp_path / "cache", precision=precision)
    assert (graph.method, graph.recall, graph.reused) == ("exact", 1.0, False)
    assert graph.seconds > 0 and graph.rows_per_s > 0
    # bf16 operands pick 2k candidates, float32 differences the k: a near-tie may slip (measured: recall 0.995)
    assert_same_graph(graph, data.range(0, 2600)[0], 7, metric, least_recall=0.99 if precision == "bf16" else 1)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [graph_cache.folder_for(
        tmp_path / "cache", graph_cache.cache_key(data, c.graph, "exact", precision)).name]


def test_the_cache_is_reused_with_the_same_arrays_and_keyed_by_what_determines_the_graph(tmp_path):
    c, data = sphere(tmp_path, "data.n=300")
    first = build_graph(data, c.graph, DistInfo(), "cpu", tmp_path / "cache")
    again = build_graph(data, c.graph, DistInfo(), "cpu", tmp_path / "cache")
    assert again.reused and not first.reused and again.seconds == 0 and again.path == first.path
    assert np.array_equal(again.indices, first.indices) and np.array_equal(again.distances, first.distances)
    assert again.rows_per_s == first.rows_per_s  # the build's, kept in meta.json
    meta = json.loads((tmp_path / "cache" / first.path.split("/")[-1] / "meta.json").read_text())
    assert (meta["method"], meta["n"], meta["k"], meta["recall"]) == ("exact", 300, 15, 1.0)
    # Training keys that do not change the rows (batch size, epochs, cache_gb) share the graph ...
    c2, data2 = sphere(tmp_path, "data.n=300", "batch_size=16", "max_epochs=9", "data.cache_gb=2")
    assert build_graph(data2, c2.graph, DistInfo(), "cpu", tmp_path / "cache").reused
    # ... the data's seed, n, k and the metric do not.
    for other in (["seed=1"], ["data.n=301"], ["graph.k=5"], ["graph.metric=cosine"]):
        c3, data3 = sphere(tmp_path, "data.n=300", *other)
        built = build_graph(data3, c3.graph, DistInfo(), "cpu", tmp_path / "cache")
        assert not built.reused and built.path != first.path, other


def test_an_interrupted_build_resumes_from_its_finished_blocks(tmp_path, monkeypatch):
    c, data = sphere(tmp_path, "data.n=5000", "data.p=8")
    real_write = graph_cache.write_part
    written = []

    def write_then_die(folder, start, stop, *arrays):
        if len(written) == 1:
            raise KeyboardInterrupt  # killed between the second and the third block
        written.append((start, stop))
        real_write(folder, start, stop, *arrays)

    monkeypatch.setattr(graph_cache, "write_part", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_graph(data, c.graph, DistInfo(), "cpu", tmp_path / "cache")
    monkeypatch.setattr(graph_cache, "write_part", real_write)
    (folder,) = (tmp_path / "cache").iterdir()
    assert graph_cache.finished_parts(folder) == {(0, knn_exact.QUERY_BLOCK)} and not (folder / "meta.json").exists()
    resumed = build_graph(data, c.graph, DistInfo(), "cpu", tmp_path / "cache")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["rows_computed"] == 5000 - knn_exact.QUERY_BLOCK  # the finished block was not computed again
    assert not graph_cache.finished_parts(folder)  # merged, then removed
    fresh = build_graph(data, c.graph, DistInfo(), "cpu", tmp_path / "fresh")
    assert np.array_equal(resumed.indices, fresh.indices) and np.array_equal(resumed.distances, fresh.distances)


def test_two_gloo_ranks_build_the_graph_one_rank_builds(tmp_path, capsys):
    # 5000 rows: three query blocks, split 1 + 2 between the ranks; each rank a gloo process
    common = [*TINY, "data.n=5000", "data.p=8", f"run.root={tmp_path / 'runs'}"]
    assert cli.main(["neighbours", *common, f"graph.cache_dir={tmp_path / 'one'}"]) == 0
    one_out = capsys.readouterr().out
    assert cli.main(["neighbours", *common, f"graph.cache_dir={tmp_path / 'two'}", "--gpus", "2"]) == 0
    two_out = capsys.readouterr().out
    (one,), (two,) = (tmp_path / "one").iterdir(), (tmp_path / "two").iterdir()
    assert one.name == two.name  # the world size is no part of what the graph is
    assert str(one) in one_out and str(two) in two_out and "method exact, built in" in two_out
    meta = json.loads((two / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["rows_computed"] == 5000
    assert np.array_equal(np.load(one / "indices.npy"), np.load(two / "indices.npy"))
    np.testing.assert_allclose(np.load(one / "distances.npy"), np.load(two / "distances.npy"), rtol=1e-6)
    # the same command again finds it
    assert cli.main(["neighbours", *common, f"graph.cache_dir={tmp_path / 'two'}", "--gpus", "2"]) == 0
    assert "read from the cache" in capsys.readouterr().out


def test_ctrl_c_stops_every_rank_in_one_line_and_the_same_command_resumes(tmp_path):
    args = [sys.executable, "-m", "bnnidr_hpc.cli", "neighbours", *TINY, "data.n=20000", "data.p=512",
            f"run.root={tmp_path}", "--gpus", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    while not list(tmp_path.glob("graphs/*/part-*")) and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: every rank of the terminal's process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3
    assert err == "bnnidr-hpc: interrupted; the same command resumes from the finished blocks\n"
    (folder,) = (tmp_path / "graphs").iterdir()
    done = graph_cache.finished_parts(folder)
    assert done and not (folder / "meta.json").exists()
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "method exact, built in" in again.stdout, again.stderr
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["rows_computed"] == 20000 - sum(b - a for a, b in done)


@pytest.mark.parametrize("method,params,bound", [
    ("faiss_ivf", ["graph.ivf_lists=64", "graph.ivf_probes=8"], 0.9),
    ("faiss_hnsw", ["graph.hnsw_m=16", "graph.hnsw_ef_search=64"], 0.95),
    ("faiss_hnsw", ["graph.pca_dims=8", "graph.hnsw_m=16", "graph.hnsw_ef_search=64"], 0.95)])
def test_faiss_recall_is_measured_against_exact_neighbours(tmp_path, method, params, bound):
    """Clustered data: 8 tight categories of a 5-sphere in 32 dimensions. IVF with 8 of 64 lists
    probes an eighth of the rows, chosen by their centroids: a row's neighbours lie in its own
    category, which k-means cuts into about 8 lists, so nearly all are probed; HNSW's search
    breadth 64 over 15 neighbours finds nearly all on 6,000 rows (both measured here at >= 0.97;
    the bounds leave room for FAISS's k-means and insertion order). With pca_dims=8 HNSW searches
    the first 8 principal components, which hold the 6-dimensional sphere, and the distances are
    still the full rows' (re-ranked)."""
    c, data = sphere(tmp_path, "data.n=6000", "data.p=32", "data.d=5", "data.categories=8", "data.spread=0.3",
                     f"graph.method={method}", "graph.recall_sample=300", *params)
    graph = build_graph(data, c.graph, DistInfo(), "cpu", tmp_path / "cache")
    assert graph.method == method and graph.recall >= bound
    ref_d, ref_i, _ = brute_force(data.range(0, 6000)[0], 15)
    true_recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(graph.indices, ref_i)])
    sample = np.random.default_rng([c.seed, 25]).choice(6000, 300, replace=False)
    sample_recall = np.mean([len(set(graph.indices[i]) & set(ref_i[i])) / 15 for i in sample])
    assert graph.recall == pytest.approx(sample_recall, abs=1e-9)  # what it stored is the sample's recall
    assert abs(graph.recall - true_recall) < 0.05  # and the sample stands for every row
    assert (graph.indices != np.arange(6000)[:, None]).all()  # never a row itself
    assert (np.diff(graph.distances, axis=1) >= -1e-6).all()
    x = data.range(0, 6000)[0].numpy()
    exact = np.linalg.norm(x[:, None, :] - x[graph.indices], axis=2)
    assert graph.distances == pytest.approx(exact, rel=1e-3, abs=1e-4)  # the full rows' distances
    assert json.loads((tmp_path / "cache" / graph.path.split("/")[-1] / "meta.json").read_text())["recall"] == \
        graph.recall


def test_a_feature_file_graph_is_its_normalised_training_rows_knn(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(900, 12)) * rng.uniform(0.1, 5, size=12)).astype(np.float32)
    np.save(tmp_path / "X.npy", x)
    small = [o for o in TINY if not o.startswith(("data.", "eval."))]
    c = load(None, [*small, "data.source=npy", f"data.path={tmp_path / 'X.npy'}", "data.normalize=standardize",
                    "data.heldout=100", f"run.root={tmp_path / 'runs'}", "eval.queries=40", "eval.gallery=60"])
    data = source(c.data, c.seed)
    graph = build_graph(data, c.graph, DistInfo(), "cpu", tmp_path / "cache")
    assert graph.indices.shape == (800, 15)
    assert_same_graph(graph, data.range(0, 800)[0], 15)  # training positions, standardised as training sees them
    # a new file at the same path is other data: another graph
    np.save(tmp_path / "X.npy", x[::-1].copy())
    again = build_graph(source(c.data, c.seed), c.graph, DistInfo(), "cpu", tmp_path / "cache")
    assert not again.reused and again.path != graph.path


# ----------------------------------------------------------------------------- bad input

def _bad(capsys, tmp_path, *overrides, cmd="neighbours"):
    code = cli.main([cmd, *TINY, f"run.root={tmp_path / 'runs'}", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing created
    return err


def test_bad_graph_settings_are_one_line_and_exit_2_before_anything_is_created(tmp_path, capsys, monkeypatch):
    cache = f"graph.cache_dir={tmp_path / 'cache'}"
    err = _bad(capsys, tmp_path, "graph.k=256", cache)
    assert "graph.k=256" in err and "data.n=256" in err
    assert "graph.k=0" in _bad(capsys, tmp_path, "graph.k=0", cache)
    assert "one of auto, exact, faiss_ivf, faiss_hnsw" in _bad(capsys, tmp_path, "graph.method=annoy", cache)
    assert "one of euclidean, cosine" in _bad(capsys, tmp_path, "graph.metric=manhattan", cache)
    assert "graph.ivf_probes=-1" in _bad(capsys, tmp_path, "graph.ivf_probes=-1", cache)
    assert "graph.hnsw_m=-1" in _bad(capsys, tmp_path, "graph.hnsw_m=-1", cache)
    assert "principal components" in _bad(capsys, tmp_path, "graph.pca_dims=-1", cache)
    assert "graph.refine_factor=0" in _bad(capsys, tmp_path, "graph.refine_factor=0", cache)
    (tmp_path / "afile").write_text("")
    err = _bad(capsys, tmp_path, f"graph.cache_dir={tmp_path / 'afile' / 'graphs'}")
    assert "graph.cache_dir" in err and "is not a directory" in err
    # a training run with loss: graph is checked the same way, before its run directory exists
    assert "graph.k=256" in _bad(capsys, tmp_path, "graph.k=256", "loss=graph", cache, cmd="run")
    monkeypatch.setattr("bnnidr_hpc.config.graph_checks.faiss_installed", lambda: False)
    err = _bad(capsys, tmp_path, "graph.method=faiss_hnsw", cache)
    assert "faiss is not installed" in err and "graph.method='faiss_hnsw'" in err
    assert _bad(capsys, tmp_path, "graph.method=faiss_ivf", "loss=graph", cache, cmd="run")


def test_unused_graph_settings_do_not_stop_other_losses(tiny):
    c = tiny("graph.k=999", "loss=umap")  # k >= n only matters where the graph is built
    assert c.graph.k == 999


def test_faiss_probes_grow_with_the_lists_unless_given():
    """graph.ivf_probes=0: one list in 14, at least 32 (a fixed 32 kept recall@15 0.835 at 50,000
    rows, 64 kept 0.981: docs/neighbours.md); a given count is kept, at most every list."""
    from bnnidr_hpc.config.loading import load
    from bnnidr_hpc.data import graph_cache

    auto = load(None, []).graph
    assert [graph_cache.ivf_lists(auto, n) for n in (5_000, 50_000, 1_300_000)] == [128, 894, 4560]
    assert [graph_cache.ivf_probes(auto, n) for n in (5_000, 50_000, 1_300_000)] == [32, 64, 326]
    assert graph_cache.ivf_probes(load(None, ["graph.ivf_probes=8"]).graph, 50_000) == 8
    assert graph_cache.ivf_probes(load(None, ["graph.ivf_probes=500", "graph.ivf_lists=100"]).graph, 50_000) == 100


def test_auto_takes_hnsw_on_pca_beyond_the_exact_rows_on_a_cpu():
    """auto: exact up to exact_max_rows or on a GPU, HNSW beyond (its search grows with log n, an
    IVF one with n); FAISS searches 64 principal components where p is larger, re-ranked by the
    rows' full distances."""
    from bnnidr_hpc.config.loading import load
    from bnnidr_hpc.data import graph_cache, knn_faiss

    g = load(None, []).graph
    assert graph_cache.resolve_method(g, 200_000, "cpu") == "exact"
    assert graph_cache.resolve_method(g, 1_300_000, "cpu") == "faiss_hnsw"
    assert graph_cache.resolve_method(g, 1_300_000, "cuda") == "exact"
    assert knn_faiss.index_description(g, "faiss_hnsw", 1_300_000, 1536) == "PCA64,HNSW48,RFlat"
    assert knn_faiss.index_description(g, "faiss_ivf", 1_300_000, 1536) == "PCA64,IVF4560,Flat,RFlat"
    assert knn_faiss.index_description(g, "faiss_hnsw", 1_300_000, 64) == "HNSW48"  # nothing to cut
    off = load(None, ["graph.pca_dims=0"]).graph
    assert knn_faiss.index_description(off, "faiss_hnsw", 1_300_000, 1536) == "HNSW48"
    assert graph_cache.method_parameters(off, "faiss_hnsw", 10, "fp32") == {"m": 48, "ef_search": 128,
                                                                            "recall_sample": 1000}


def test_a_gpu_holds_the_graphs_rows_when_half_its_free_memory_covers_them():
    """Rows beyond data.cache_gb are still held on a GPU with room for them, so the exact graph
    does not make them again for every query block; on a CPU data.cache_gb alone decides."""
    import torch

    from bnnidr_hpc.data.knn_exact import hold_budget

    gib = 2**30
    eighty = lambda device: (80 * gib, 80 * gib)  # noqa: E731  (free, total) of an idle H100
    assert hold_budget(1.0, torch.device("cuda", 0), eighty) == 40 * gib
    assert hold_budget(64.0, torch.device("cuda", 0), eighty) == 64 * gib
    assert hold_budget(1.0, torch.device("cpu"), eighty) == gib
