"""What the Bayesian posterior gives a user, in numbers: on scikit-learn's digits (as .npy, k=8),
a Bayesian run beside the deterministic one, each at the defaults.

  python benchmarks/bench_bayes.py [--quick]

- AP of the posterior mean and of the mean of K posterior draws (reduce --mc-samples K), on the
  held-out queries against the held-out gallery;
- does the per-vector spread of the draws (what `reduce --mc-samples` saves) flag the queries
  that retrieve badly? Spearman's correlation between a query's spread and its AP (negative =
  the spread flags them), and the AP of the half of the queries with the smallest spread against
  the other half;
- the loss's terms (final_data_loss, final_kl) and the step's cost against the deterministic step
  (bench_step.py measures it at p = 1536).
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_method import QUIET, digits_files
from common import Report, quick_flag

from bnnidr_hpc import load_reducer
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.train.loop import train
from bnnidr_hpc.train.retrieval import per_query_average_precision


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    quick = quick_flag()
    samples = 8 if quick else 32
    report = Report("bayes", quick)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = digits_files(tmp)
        x, y = np.load(tmp / "X.npy"), np.load(tmp / "Y.npy")
        for name, extra in (("deterministic", []), ("bayesian", ["bayesian=true"])):
            c = load(None, data + QUIET + extra + [f"run.root={tmp / name}"])
            rec = train(c, run_dir_for(c))
            heldout = np.load(run_dir_for(c) / "heldout.npy")
            q, g = heldout[:c.eval.queries], heldout[c.eval.queries:c.eval.queries + c.eval.gallery]
            report.add(f"{name}: held-out AP (record)", rec["ap_out"], f"± {rec['ap_out_se']:.3f}")
            report.add(f"{name}: train seconds", rec["train_seconds"], "s")
            if name == "deterministic":
                continue
            report.add("bayesian: final data loss / final KL term", rec["final_data_loss"], f"/ {rec['final_kl']:.4g}")
            reducer = load_reducer(run_dir_for(c))
            xs = torch.from_numpy(x)
            mean_vectors, spread = reducer.mean_and_spread(xs, samples)
            labels = torch.from_numpy(y)
            per_query = {}
            for how, z in (("posterior mean", reducer(xs)), (f"mean of {samples} draws", mean_vectors)):
                per_query[how] = per_query_average_precision(z[q], labels[q], z[g], labels[g]).numpy()
                report.add(f"bayesian: AP of the {how}", float(np.nanmean(per_query[how])), "")
            ap = per_query[f"mean of {samples} draws"]
            s = spread.numpy()[q]
            report.add("bayesian: spread per vector, median", float(np.median(s)), "")
            report.add("bayesian: Spearman(spread, query AP)", spearman(s, ap), "(negative: flags errors)")
            low = s <= np.median(s)
            report.add("bayesian: AP of the queries with the smaller half of spreads", float(np.nanmean(ap[low])), "")
            report.add("bayesian: AP of the other half", float(np.nanmean(ap[~low])), "")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
