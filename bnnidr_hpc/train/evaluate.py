"""Held-out evaluation: retrieval mean AP with its standard error, neighbour preservation, the
baselines at the same output size, and TwoNN of the gallery before and after reduction.

Used by: train.loop.

The held-out points: a sphere's follow its n training points, a feature file's are its held-out
rows (data.NpyFeatures.heldout); without labels there is no AP (None). Each rank takes an
equal share of the queries against the whole gallery; the per-query APs of every rank are gathered
before averaging, so the AP is the same with any number of ranks, and its standard error is the
bootstrap's over all queries.

Every claim about the reducer is made beside two baselines at the same output_dim, evaluated on the
same queries and gallery: PCA fitted on up to BASELINE_ROWS training rows, and a random Gaussian
projection (Johnson-Lindenstrauss) drawn from the seed. knn_recall (label-free, so unlabelled data
get a figure too): of each of the first KNN_POINTS gallery points' KNN_K nearest gallery neighbours
in the input, the fraction still among its KNN_K nearest after reduction.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from bnnidr_hpc.config.schema import EvalConfig
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.runtime import collectives, products
from bnnidr_hpc.runtime.distributed import DistInfo
from bnnidr_hpc.train import intrinsic
from bnnidr_hpc.train.retrieval import bootstrap_se, knn_recall, nearest, per_query_average_precision

BASELINE_ROWS = 20000
KNN_POINTS = 2000
KNN_K = 10


def centred_scatter(rows: torch.Tensor):
    """(the rows' mean, their centred scatter matrix in float64): what PCA diagonalises, here for
    the PCA baseline and for the graph objective's variance gate (train/graph_stage.py)."""
    mean = rows.mean(0)
    centred = rows - mean
    return mean, products.mm(centred.T, centred).double()


class Evaluator:
    def __init__(self, cfg: EvalConfig, data, info: DistInfo):
        (qx, ql), (gx, gl) = data.heldout(cfg.queries, cfg.gallery)
        world = info.world_size
        share = slice(info.rank * len(qx) // world, (info.rank + 1) * len(qx) // world)
        self.labelled = ql is not None
        self.qx, self.ql, self.gx, self.gl = qx[share], ql[share] if self.labelled else None, gx, gl
        self.share_rows = -(-len(qx) // world)  # the largest share: every rank pads to it to gather
        self.block, self.mc_samples = cfg.block, cfg.mc_samples
        self.data = data
        self._near_in: Optional[torch.Tensor] = None

    def _ap(self, queries: torch.Tensor, gallery: torch.Tensor) -> dict:
        """{"ap", "ap_se"} over every rank's queries (None without labels)."""
        if not self.labelled:
            return {"ap": None, "ap_se": None}
        per_query = per_query_average_precision(queries, self.ql, gallery, self.gl, self.block)
        padded = torch.full((self.share_rows,), float("nan"), dtype=torch.float64, device=per_query.device)
        padded[:len(per_query)] = per_query
        every = collectives.all_gather(padded[None]).flatten()
        valid = every[~torch.isnan(every)]
        ap = valid.mean().item() if len(valid) else None
        se = bootstrap_se(every)
        return {"ap": ap, "ap_se": None if math.isnan(se) else se}

    def _scores(self, embed) -> dict:
        """AP (with its error) and knn_recall of a map from input to reduced vectors."""
        out = embed(self.gx)
        return {**self._ap(embed(self.qx), out), "knn_recall": knn_recall(self._near(), out[:KNN_POINTS])}

    def _near(self) -> torch.Tensor:
        if self._near_in is None:
            # A gallery of up to KNN_K points (a small held-out set) has fewer neighbours to keep;
            # one of a single point has none, and knn_recall is NaN (null in the record).
            self._near_in = nearest(self.gx[:KNN_POINTS], min(KNN_K, len(self.gx[:KNN_POINTS]) - 1))
        return self._near_in

    def input_scores(self) -> dict:
        return self._ap(self.qx, self.gx)

    def model_scores(self, model: Reducer) -> dict:
        return self._scores(lambda x: model.embed(x, self.mc_samples))

    def prefix_scores(self, model: Reducer) -> list:
        """AP (with its error) and knn_recall of the first k output units, for k = 1..output_dim.
        With eval.mc_samples > 1 these are other posterior draws than model_scores' (the same
        embedding otherwise: all output_dim units give model_scores' AP)."""
        queries, gallery = model.embed(self.qx, self.mc_samples), model.embed(self.gx, self.mc_samples)
        return [{**self._ap(queries[:, :k], gallery[:, :k]),
                 "knn_recall": knn_recall(self._near(), gallery[:KNN_POINTS, :k])}
                for k in range(1, gallery.shape[1] + 1)]

    def baseline_scores(self, output_dim: int, seed: int) -> dict:
        """PCA and a random projection to output_dim, on the same queries and gallery."""
        train = self.data.sample(BASELINE_ROWS)
        mean, scatter = centred_scatter(train)
        _, vectors = torch.linalg.eigh(scatter)  # ascending eigenvalues
        components = vectors[:, -output_dim:].float()
        g = torch.Generator().manual_seed(seed)
        gaussian = (torch.randn(train.shape[1], output_dim, generator=g) / math.sqrt(output_dim)).to(self.gx.device)
        return {"pca": self._scores(lambda x: products.mm(x - mean, components)),
                "random": self._scores(lambda x: products.mm(x, gaussian))}

    def gallery_dimensions(self, model: Reducer) -> dict:
        """Did the reducer keep the structure? TwoNN of the gallery before and after reduction."""
        return {"gallery_input": intrinsic.estimate(self.gx, "mle").as_dict(),
                "gallery_output": intrinsic.estimate(model.embed(self.gx, self.mc_samples), "mle").as_dict()}


def with_retention(scores: dict, ap_in: Optional[float]) -> dict:
    """scores plus ap_retention = ap / ap_in (None where either is missing)."""
    ap = scores.get("ap")
    return {**scores, "ap_retention": None if ap is None or not ap_in else ap / ap_in}
