"""FAISS's index settings compared on conf/imagenet_scale.yaml's sphere: for each set of graph.*
overrides, the seconds to make the index (PCA, training, adding the rows) and to search every row,
and recall@15 against the exact neighbours of 300 rows. docs/neighbours.md's table of the
100,000- and 300,000-row runs that chose the defaults (pca_dims 64, HNSW 48) is its output.

  python benchmarks/faiss_settings.py N SETTINGS...       SETTINGS: overrides joined by '+'
  python benchmarks/faiss_settings.py 300000 graph.method=faiss_hnsw graph.method=faiss_hnsw+graph.hnsw_m=32

The rows are held when they fit in data.cache_gb and made again for each pass otherwise.
"""

import sys
import time

import torch

from bnnidr_hpc.config.loading import load
from bnnidr_hpc.data import graph_cache, knn_exact, knn_faiss
from bnnidr_hpc.data.sources import Hypersphere

CONFIG = "conf/imagenet_scale.yaml"
RECALL_ROWS = 300


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    n = int(sys.argv[1])
    for setting in sys.argv[2:]:
        c = load(CONFIG, [f"data.n={n}", "loss=graph", *[o for o in setting.split("+") if o]])
        rows = knn_exact.GraphRows(Hypersphere(c.data, c.seed, torch.device("cpu")), c.graph.metric, "cpu")
        method = graph_cache.resolve_method(c.graph, n, "cpu")
        started = time.perf_counter()
        index = knn_faiss.make_index(rows, c.graph, method, lambda done: None)
        built = time.perf_counter()
        _, indices = knn_faiss.search(index, rows, c.graph.k, c.precision, lambda done: None)
        searched = time.perf_counter()
        sample = knn_faiss.recall_sample(n, RECALL_ROWS, c.seed)
        recall = knn_faiss.recall(indices, rows, sample, c.graph.k, c.precision)
        print(f"n={n} {setting} [{knn_faiss.index_description(c.graph, method, n, rows.p)}]: index "
              f"{built - started:.1f} s, search {searched - built:.1f} s, recall@{c.graph.k} {recall:.4f} "
              f"({RECALL_ROWS} rows)", flush=True)
        del index, rows


if __name__ == "__main__":
    main()
