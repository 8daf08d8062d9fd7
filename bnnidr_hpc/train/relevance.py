"""How small can the output be, from one run: a relevance prior over the output units
(relevance_prior: true).

Used by: train/loop.py.

The prior: the number of output units that are on, K in MIN_UNITS..output_dim, is a log-normal
of log-scale width SPREAD centred on TwoNN's estimate of the training data's intrinsic dimension,
discretised; unit j is on when j <= K. Every step draws one K for its whole global batch and zeroes
the units after it, so the run minimises its objective averaged over the prior: nested dropout
(Rippel, Gelbart and Adams, ICML 2014), whose linear case recovers PCA's ordered components. Unit j
is trained only when K >= j, so the units come out ordered by relevance, and the first k of them
are the run's best k-unit reducer: `reduce`'s output truncated to its first k columns.

After training, the held-out AP of every prefix gives the estimate: the smallest k whose AP keeps
>= KEEP of the input's, the output_dim sweep's knee (output_dim_view) from one run; and, label-free,
the smallest k keeping >= KEEP of the whole output's knn_recall.

The draws come from (seed, epoch) alone: every rank draws the same K for a step, and a resumed
run the same as one that was never stopped.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch

from bnnidr_hpc.config.schema import RELEVANCE_MIN_UNITS as MIN_UNITS
from bnnidr_hpc.records.output_dim_view import KEEP

SPREAD = 0.5  # log-scale: the prior's middle two thirds span centre / 1.65 .. centre x 1.65
# With one or two units on, most of a batch's points nearly coincide, and umap's repulsion between
# them (1 / D2) wrecks the weights every unit shares: steps with K < 3 ruined the whole output on the
# curved sphere. So K >= 3, and the estimate is at least 3 unless 2 units keep the AP untrained.


def prior(centre: float, units: int) -> torch.Tensor:
    """P(K = k) for k = 1..units (float64): the discretised log-normal around centre, 0 below
    MIN_UNITS (all on units below it)."""
    k = torch.arange(1, units + 1, dtype=torch.float64)
    log_p = -((k.log() - math.log(max(centre, 1.0))) ** 2) / (2 * SPREAD ** 2)
    p = (log_p - log_p.max()).exp()
    p[:min(MIN_UNITS, units) - 1] = 0.0
    return p / p.sum()


def epoch_masks(probs: torch.Tensor, seed: int, epoch: int, steps: int, device: torch.device) -> torch.Tensor:
    """(steps, units) float32 on device: row s keeps the first K_s units, K_s drawn from probs."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    kept = torch.multinomial(probs, max(steps, 1), replacement=True, generator=g) + 1
    return (torch.arange(len(probs))[None, :] < kept[:, None]).float().to(device)


def _shortest(values: List[Optional[float]], reference: Optional[float]) -> Optional[int]:
    if not reference:
        return None
    return next((k for k, v in enumerate(values, start=1) if v is not None and v >= KEEP * reference), None)


def result(centre: float, probs: torch.Tensor, prefixes: List[dict], ap_in: Optional[float]) -> dict:
    """The record's `relevance`: the prior, every prefix's held-out scores and the two estimates."""
    aps = [p["ap"] for p in prefixes]
    knn = [p["knn_recall"] for p in prefixes]
    return {
        "centre": centre, "spread": SPREAD, "prior": [round(p, 6) for p in probs.tolist()],
        "prefix_ap": aps, "prefix_ap_se": [p["ap_se"] for p in prefixes],
        "prefix_ap_retention": [None if a is None or not ap_in else a / ap_in for a in aps],
        "prefix_knn_recall": knn,
        # the smallest prefix keeping KEEP of the input's AP; label-free: of the whole output's knn_recall
        "dimension": _shortest(aps, ap_in),
        "dimension_knn_recall": _shortest(knn, knn[-1] if knn else None),
        "keep": KEEP,
    }
