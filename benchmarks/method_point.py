"""One point of a method study: the reducer on one data set, output size and seed, with key=value
overrides, scored as bench_method.py scores it (held-out leave-one-out AP and 10-NN recall),
beside PCA at the same size and the AP of the training rows themselves. The tables of
docs/method.md's studies (the settings tried before a default was chosen) are rows of it.

  python benchmarks/method_point.py DATA OUTPUT_DIM SEED [key=value ...]
  python benchmarks/method_point.py digits 2 0 run.threads=1 graph.labels=true graph.class_pairs=0.3

DATA: digits, wine, breast_cancer, curved or linear (method_data.py). One line is printed.
"""

import sys
import tempfile
from pathlib import Path

import method_scores as ms
from method_data import SKLEARN, sklearn_dataset, sphere_dataset

TRAIN_ROWS_SCORED = 1500  # the training rows' AP is on the first rows, as many as a held-out set


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    name, k, seed, extra = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ds = sklearn_dataset(name, folder, seed, extra) if name in SKLEARN else \
            sphere_dataset(name, folder, k, extra + [f"seed={seed}"])
        near = ms.input_neighbours(ds.held_x)
        pca = ms.score(ms.pca(ds.train_x, ds.held_x, k, seed)[0], ds.held_y, near)
        out = ms.reducer(ds.config, ds.overrides + [f"seed={seed}", f"output_dim={k}", *extra], folder / "r",
                         ds.held_file)
        if "error" in out:
            sys.exit(f"{name} k={k} seed={seed} {' '.join(extra)}: FAILED: {out['error']}")
        held = ms.score(out["z"], ds.held_y, near)
        import bnnidr_hpc

        rows = ds.train_x[:TRAIN_ROWS_SCORED]
        train_z = bnnidr_hpc.load_reducer(out["run_dir"])(rows.float()).detach()
        train = ms.score(train_z, ds.train_y[:TRAIN_ROWS_SCORED], ms.input_neighbours(rows))
    print(f"{name} k={k} seed={seed} {' '.join(extra)}: held-out AP {held['ap']:.3f} 10-NN {held['knn']:.3f} "
          f"(PCA {pca['ap']:.3f}, 10-NN {pca['knn']:.3f}) | training rows AP {train['ap']:.3f} | "
          f"run {out['run_s']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
