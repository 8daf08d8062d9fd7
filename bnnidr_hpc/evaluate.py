"""Held-out evaluation: retrieval mean AP in the input and the reduced space, and TwoNN of the
gallery before and after reduction.

Used by: train.py.

The held-out points: a sphere's follow its n training points, a feature file's are its held-out
rows (data.NpyFeatures.heldout); without labels there is no AP (None). Each rank takes an
equal share of the queries against the whole gallery; the per-query AP sums are added over ranks
before dividing, so the AP is the same with any number of ranks.
"""

from __future__ import annotations

import torch

from . import distributed, intrinsic
from .config import EvalConfig
from .distributed import DistInfo
from .metrics import average_precision_sums
from .model import Reducer


class Evaluator:
    def __init__(self, cfg: EvalConfig, data, info: DistInfo):
        (qx, ql), (gx, gl) = data.heldout(cfg.queries, cfg.gallery)
        share = slice(info.rank * len(qx) // info.world_size, (info.rank + 1) * len(qx) // info.world_size)
        self.labelled = ql is not None
        self.qx, self.ql, self.gx, self.gl = qx[share], ql[share] if self.labelled else None, gx, gl
        self.block, self.mc_samples = cfg.block, cfg.mc_samples

    def _ap(self, queries: torch.Tensor, gallery: torch.Tensor) -> float | None:
        if not self.labelled:
            return None
        sums = torch.stack(average_precision_sums(queries, self.ql, gallery, self.gl, self.block))
        total, count = distributed.all_reduce_sum(sums).tolist()
        return total / max(count, 1)

    def input_ap(self) -> float | None:
        return self._ap(self.qx, self.gx)

    def model_ap(self, model: Reducer) -> float | None:
        return self._ap(model.embed(self.qx, self.mc_samples), model.embed(self.gx, self.mc_samples))

    def gallery_dimensions(self, model: Reducer) -> dict:
        """Did the reducer keep the structure? TwoNN of the gallery before and after reduction."""
        return {"gallery_input": intrinsic.estimate(self.gx, "mle").as_dict(),
                "gallery_output": intrinsic.estimate(model.embed(self.gx, self.mc_samples), "mle").as_dict()}
