"""TwoNN on the toolkit's own hyperspheres: how far the estimate is from the true d, by d, n and
noise. Prints the README's table (markdown).

  python benchmarks/twonn_bias.py

A linear embedding is an isometry, so p does not change the distances; p = 256 keeps it fast.
"""

from bnnidr_hpc.config.schema import DataConfig
from bnnidr_hpc.data.sources import Hypersphere
from bnnidr_hpc.train import intrinsic

CASES = [(d, n, 0.0) for d in (5, 10, 20, 50) for n in (2000, 20000)] + [(5, 20000, s) for s in (0.02, 0.05, 0.1)]


def main():
    print("| true d | n | noise | TwoNN mle | TwoNN fit | output_dim=auto |")
    print("|---|---|---|---|---|---|")
    for d, n, noise in CASES:
        x, _ = Hypersphere(DataConfig(n=n, p=256, d=d, noise=noise), seed=0).range(0, n)
        e = intrinsic.estimate_all(x)
        mle, fit = e["mle"], e["fit"]
        print(f"| {d} | {n} | {noise} | {mle['dimension']:.1f} ± {mle['error']:.1f} | "
              f"{fit['dimension']:.1f} ± {fit['error']:.1f} | {intrinsic.output_dim_for(mle['dimension'], 256)} |")


if __name__ == "__main__":
    main()
