"""Data generation at ImageNet scale: samples made per second per rank, and proof that no rank
holds the whole set (peak resident memory against the 8 GB it would take).

  python benchmarks/bench_data.py [--quick]

Rank 1 of 4 makes only its own slices of each global batch, streamed chunk by chunk, exactly as
in training (ShardLoader.epoch); the clock covers generation alone.
"""

from common import Report, peak_rss_gb, quick_flag, seconds_per_call

from bnnidr_hpc.config.loading import load
from bnnidr_hpc.data.sources import Hypersphere, ShardLoader
from bnnidr_hpc.runtime.distributed import DistInfo, pick_device


def main():
    quick = quick_flag()
    report = Report("data_generation", quick)
    from pathlib import Path

    c = load(str(Path(__file__).resolve().parents[1] / "conf" / "imagenet_scale.yaml"), [])
    device = pick_device(DistInfo(), "auto")
    for world in (1, 4):
        loader = ShardLoader(Hypersphere(c.data, c.seed, device), c.batch_size, rank=world - 1, world=world)
        assert not loader.cached
        batches = loader.epoch(0)
        seconds = seconds_per_call(lambda batches=batches: next(batches), device, warmup=3, iters=40 if quick else 200)
        report.add(f"samples made per second, rank {world - 1} of {world}", c.batch_size / seconds, "samples/s")
    full_gb = c.data.n * c.data.p * 4 / 2**30
    report.add("the whole data set as float32", full_gb, "GB")
    rss = peak_rss_gb()
    report.add("peak resident memory of this process", rss, "GB", f"< {full_gb:.1f} (never whole)", rss < full_gb / 4)
    report.finish()


if __name__ == "__main__":
    main()
