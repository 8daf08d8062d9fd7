"""The schema's `graph:` section: the k-nearest-neighbour graph of the training rows and the
objective on its edges (`loss: graph`). Part of the one schema (schema.Config holds it); apart
because it is a layer of its own (data/neighbours.py, data/umap_graph.py, model/graph_loss.py).

Used by: schema.py, config/graph_checks.py, data/ (graph_cache, knn_faiss, neighbours), train/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class GraphConfig:
    """The k-nearest-neighbour graph of the training rows (built once per data set, across the
    ranks, kept in a cache) and the objective on its edges, `loss: graph` (docs/method.md).

    Args:
        k: neighbours per training row (UMAP's n_neighbors); below data.n.
        metric: euclidean (after data.normalize) or cosine (rows L2-normalised first).
        method: exact (blocks of rows against all rows, the training's matrix products), faiss_ivf
            or faiss_hnsw (approximate, CPU, faiss-cpu), or auto: exact up to exact_max_rows or on
            a GPU, faiss_hnsw beyond.
        exact_max_rows: auto's largest exact graph.
        ivf_lists: faiss_ivf's lists (0: 4 sqrt(n), at most n / 39); ivf_probes: lists searched
            (0: one list in 14, at least 32).
        hnsw_m: faiss_hnsw's links per node; hnsw_ef_search: its search breadth.
        pca_dims: FAISS methods search the rows' first pca_dims principal components, then re-rank
            refine_factor x (k + 1) candidates by their exact distance (0, or p and more: all p).
        recall_sample: rows whose exact neighbours measure an approximate graph's recall@k.
        cache_dir: where graphs are kept, by what determines them (null: RUN_ROOT/graphs).
        min_dist, spread: UMAP's output curve 1 / (1 + a d^(2b)), a and b fitted from them.
        negatives: uniformly drawn negative rows per edge; repulsion_strength: their term's weight
            (umap-learn's repulsion_strength).
        labels: with data labels, edges between classes are down-weighted as UMAP's categorical
            target metric does (supervised; reported apart); target_weight is its weight in (0, 1);
            class_pairs, the share of each batch's edges drawn instead as random pairs of one class
            (0: UMAP's recipe alone).
        distance_weight: weight of the distance term (pairs keep their input distance ratios),
            used when PCA to output_dim keeps at least distance_variance of the training rows'
            variance: there a linear map loses nothing, and the term keeps what PCA keeps
            (0: never; distance_variance 0: always).
    """

    k: int = 15
    metric: str = "euclidean"
    method: str = "auto"
    exact_max_rows: int = 200_000
    ivf_lists: int = 0
    ivf_probes: int = 0
    hnsw_m: int = 48  # 300,000 x 1,536, pca_dims 64, ef 64: recall .93 against .88 at 32 (docs/neighbours.md)
    hnsw_ef_search: int = 128
    pca_dims: int = 64  # at 1.3M x 1,536 (auto: HNSW): 941 s, recall@15 .92 (docs/neighbours.md)
    refine_factor: int = 4
    recall_sample: int = 1000
    cache_dir: Optional[str] = None
    min_dist: float = 0.1
    spread: float = 1.0
    negatives: int = 2  # of 1, 2, 5 on digits at output_dim 2, 2 kept the most AP (docs/method.md)
    repulsion_strength: float = 0.5  # digits at 2, seeds 0-2: 0.866 against 0.829 at 1 (docs/method.md)
    labels: bool = False
    target_weight: float = 0.5
    class_pairs: float = 0.3  # digits at 2 / 4 / 8: AP .95 / .97 / .97, at 0 .88 / .92 / .92 (docs/method.md)
    distance_weight: float = 10.0  # 1 kept the linear sphere's 10-NN recall at 0.91, 10 at 0.97 (docs/method.md)
    distance_variance: float = 0.99
