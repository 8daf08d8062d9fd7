"""Training from a feature file at ImageNet scale, and `reduce`: memory per rank and speed.

  python benchmarks/bench_npy.py [--quick]

Writes a 1.3M x 1536 float16 .npy (4 GB) with the toolkit's own generator (conf/imagenet_scale.yaml's
sphere), once: it is kept in BNNIDR_BENCH_DATA (default /tmp/bnnidr-bench) for later runs. Then,
each as its own process, as a user runs them:
  - one epoch of `bnnidr-hpc run conf/imagenet_features.yaml` on that file (streamed: each rank
    reads its rows of each batch through the memory map) and one epoch of the same model and batch
    on the sphere made on the fly (conf/imagenet_scale.yaml): samples/s from their records;
  - `bnnidr-hpc reduce` of the whole file: rows/s, against the forward pass's FLOP rate on the
    same model and block size in memory, measured here.
Peak resident memory of each process is the kernel's (wait4). --quick trains on the first 131072
training rows (data.n) instead of all of them; reduce always reads the whole file.
"""

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import Report, quick_flag, run_child

from bnnidr_hpc.config.loading import load
from bnnidr_hpc.data.sources import Hypersphere
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.reduce.apply import block_rows
from bnnidr_hpc.runtime import allocator

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "bnnidr_hpc.cli"]
DATA = Path(os.environ.get("BNNIDR_BENCH_DATA", "/tmp/bnnidr-bench"))


def write_features(c, path: Path, labels: Path) -> float:
    """The sphere's n points as float16 rows, block by block (never whole in memory); seconds."""
    if path.is_file() and labels.is_file() and np.load(path, mmap_mode="r").shape == (c.data.n, c.data.p):
        return 0.0
    started = time.perf_counter()
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(c.data.n, c.data.p))
    ys = np.empty(c.data.n, dtype=np.int64)
    sphere = Hypersphere(c.data, c.seed)
    for lo in range(0, c.data.n, 65536):
        x, y = sphere.range(lo, min(lo + 65536, c.data.n))
        out[lo:lo + len(x)] = x.numpy().astype(np.float16)
        ys[lo:lo + len(x)] = y.numpy()
    out.flush()
    del out
    os.replace(tmp, path)
    np.save(labels, ys)
    return time.perf_counter() - started


def forward_flops_per_row(model: Reducer) -> int:
    return sum(2 * m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def forward_rate(c, block: int) -> float:
    """FLOP/s of the reducer's forward pass on an in-memory block (eval mode, no gradient)."""
    model = Reducer(c.model_spec()).eval()
    x = torch.randn(block, c.input_dim)
    with torch.no_grad():
        for _ in range(2):
            model(x)
        started, calls = time.perf_counter(), 0
        while time.perf_counter() - started < 3.0:
            model(x)
            calls += 1
    return forward_flops_per_row(model) * block * calls / (time.perf_counter() - started)


def train_one_epoch(args, root: Path):
    seconds, rss, output = run_child(CLI + ["run", *args, "max_epochs=1", "run.progress=false",
                                            "run.graph=false", f"run.root={root}"], cwd=REPO)
    record = json.loads(next(root.iterdir()).joinpath("record.json").read_text())
    return record, rss, seconds


def paths(scale):
    return DATA / f"features-{scale.data.n}x{scale.data.p}-f16.npy", DATA / f"labels-{scale.data.n}.npy"


def main():
    quick = quick_flag()
    report = Report("npy_features", quick)
    scale = load(str(REPO / "conf" / "imagenet_scale.yaml"), [])
    features, labels = paths(scale)
    # Written by a child: a process that wrote 4 GB through a memory map has that much resident,
    # and a child forked from it would start its peak-memory count there.
    _, _, output = run_child([sys.executable, __file__, "--write"], cwd=REPO / "benchmarks")
    made = float(output.split()[-1])
    report.add("the feature file (float16)", features.stat().st_size / 2**30, "GB")
    if made:
        report.add("writing it with the toolkit's generator", made, "s")
    train_rows = ["data.n=131072"] if quick else []
    # The same model and batch on both paths; streamed on both (the quick subset would fit the cache).
    common = ["data.cache_gb=0.5", "run.threads=0"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        npy_record, npy_rss, _ = train_one_epoch(
            [str(REPO / "conf" / "imagenet_features.yaml"), f"data.path={features}", f"data.labels={labels}",
             *train_rows, *common], tmp / "npy")
        sphere_record, _, _ = train_one_epoch([str(REPO / "conf" / "imagenet_scale.yaml"), *train_rows, *common,
                                               f"data.n={npy_record['n']}"], tmp / "sphere")
        ratio = npy_record["samples_per_s"] / sphere_record["samples_per_s"]
        report.add("training from the file", npy_record["samples_per_s"], "samples/s")
        report.add("training on the sphere made on the fly", sphere_record["samples_per_s"], "samples/s")
        report.add("file / on the fly", ratio, "x", ">= 0.8", ratio >= 0.8)
        report.add("peak resident memory, training from the file", npy_rss, "GB", "<= 3", npy_rss <= 3)
        run_dir = next((tmp / "npy").iterdir())
        _, reduce_rss, output = run_child(CLI + ["reduce", str(run_dir), str(features), str(tmp / "z.npy")], cwd=REPO)
        rows_per_s = float(re.search(r"\(([\d.]+) rows/s\)", output).group(1))
        assert np.load(tmp / "z.npy", mmap_mode="r").shape == (scale.data.n, npy_record["output_dim"])
    c = load(str(REPO / "conf" / "imagenet_features.yaml"), [f"data.path={features}", f"data.labels={labels}"])
    torch.set_num_threads(os.cpu_count())
    allocator.keep_freed_memory()  # as reduce does, with its block size: the best the forward pass does
    flops_row = forward_flops_per_row(Reducer(c.model_spec()))
    rate = forward_rate(c, block_rows(c.model_spec()))
    reduce_rate = rows_per_s * flops_row
    report.add("reduce, the whole file", rows_per_s, "rows/s")
    report.add("forward pass in memory", rate / 1e9, "GFLOP/s")
    report.add("reduce's FLOP rate / the forward pass's", reduce_rate / rate, "x", ">= 0.6", reduce_rate / rate >= 0.6)
    report.add("peak resident memory, reduce", reduce_rss, "GB", "<= 1", reduce_rss <= 1)
    report.finish()


if __name__ == "__main__":
    if "--write" in sys.argv:
        scale = load(str(REPO / "conf" / "imagenet_scale.yaml"), [])
        print(write_features(scale, *paths(scale)))
    else:
        main()
