"""The method against its baselines: held-out AP of the default objective beside PCA and a random
projection at the same output size, on benchmarks that can tell them apart, and its step's cost.

  python benchmarks/bench_method.py [--quick] [key=value ...]

Every run uses the defaults a user gets (key=value overrides apply to all of them, to compare
settings):
  - scikit-learn's digits (1797 x 64, 10 classes) as .npy through data.source=npy, output_dim 8;
  - conf/curved_d5.yaml: S^5 bent through random Fourier features spanning all 128 dimensions,
    output_dim = d + 1 = 6, where PCA loses AP;
  - conf/hps_00040.yaml: the linear embedding (PCA is exact at output_dim 8 >= d + 1), where the
    reducer must not lose to PCA;
and the training step at p = 1536, batch 1024 against the stress step (loss=stress).
AP is on held-out points, ± the bootstrap standard error over queries; each record holds the
baselines (evaluate.py). --quick: the step timing is shorter; the runs are the same.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_step import toolkit_step
from common import Report, interleaved_seconds, quick_flag

from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.train.loop import train

REPO = Path(__file__).resolve().parents[1]
QUIET = ["run.progress=false", "run.graph=false"]


def digits_files(folder: Path) -> list:
    from sklearn.datasets import load_digits

    d = load_digits()
    np.save(folder / "X.npy", d.data.astype(np.float32))
    np.save(folder / "Y.npy", d.target)
    return ["data.source=npy", f"data.path={folder / 'X.npy'}", f"data.labels={folder / 'Y.npy'}", "output_dim=8"]


def trained(config, overrides, root: Path) -> dict:
    c = load(config, overrides + QUIET + [f"run.root={root}"])
    return train(c, run_dir_for(c))


def show(report: Report, name: str, rec: dict) -> None:
    pca, rand = rec["baselines"]["pca"], rec["baselines"]["random"]
    report.add(f"{name}: input AP", rec["ap_in"], f"± {rec['ap_in_se']:.3f}")
    report.add(f"{name}: reducer AP", rec["ap_out"], f"± {rec['ap_out_se']:.3f} (retention {rec['ap_retention']:.3f}, "
               f"knn {rec['knn_recall']:.3f})")
    report.add(f"{name}: PCA AP", pca["ap"], f"± {pca['ap_se']:.3f} (retention {pca['ap_retention']:.3f}, "
               f"knn {pca['knn_recall']:.3f})")
    report.add(f"{name}: random projection AP", rand["ap"], f"± {rand['ap_se']:.3f}")


def step_seconds(overrides: list, quick: bool) -> dict:
    """Seconds per training step at p=1536, batch 1024 for the default objective and for stress
    (bench_step.py's toolkit step, timed in alternating rounds)."""
    base = ["data.p=1536", "data.d=50", "data.spread=1.2", f"data.n={1024 * 32}", "batch_size=1024", *overrides]
    calls = {name: toolkit_step(load(None, base + extra), torch.device("cpu"))[0]
             for name, extra in (("default", []), ("stress", ["loss=stress"]))}
    return interleaved_seconds(calls, torch.device("cpu"), rounds=5 if quick else 7, iters=8 if quick else 20)


def main():
    quick = quick_flag()
    overrides = [a for a in sys.argv[1:] if "=" in a]
    report = Report("method" + ("_" + "_".join(o.replace("=", "-") for o in overrides) if overrides else ""), quick)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        digits = trained(None, digits_files(tmp) + overrides, tmp / "digits")
        curved = trained(str(REPO / "conf" / "curved_d5.yaml"), overrides, tmp / "curved")
        linear = trained(str(REPO / "conf" / "hps_00040.yaml"), overrides, tmp / "linear")
    objective = f"loss={digits['config']['loss']}, max_epochs={digits['config']['max_epochs']}"
    print(f"objective: {objective}")
    show(report, "digits k=8", digits)
    report.add("digits k=8: reducer AP", digits["ap_out"], "", ">= 0.75", digits["ap_out"] >= 0.75)
    show(report, "curved d=5 k=6", curved)
    pca_retention = curved["baselines"]["pca"]["ap_retention"]
    report.add("curved: PCA retention", pca_retention, "", "< 0.85", pca_retention < 0.85)
    report.add("curved: reducer retention", curved["ap_retention"], "", ">= 0.95", curved["ap_retention"] >= 0.95)
    show(report, "linear (hps_00040) k=8", linear)
    gap = linear["ap_out"] - linear["baselines"]["pca"]["ap"]
    report.add("linear: reducer AP - PCA AP", gap, "", ">= -0.01", gap >= -0.01)
    seconds = step_seconds(overrides, quick)
    ratio = seconds["stress"] / seconds["default"]
    report.add("step p=1536 batch 1024, default objective", 1024 / seconds["default"], "samples/s")
    report.add("step p=1536 batch 1024, stress", 1024 / seconds["stress"], "samples/s")
    report.add("default objective's step / stress step (speed)", ratio, "x", ">= 0.8", ratio >= 0.8)
    report.finish()


if __name__ == "__main__":
    main()
