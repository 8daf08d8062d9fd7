"""The lab's workloads end to end (process start to record written), and one ImageNet-scale epoch.

  python benchmarks/bench_workloads.py [--quick]

hps_00040 and hps_00043 run through the CLI exactly as a user runs them. The ImageNet-scale epoch
(1.3M x 1536 x 50, streamed: 8 GB as float32 but never held) runs whole without --quick; with
--quick a separate process trains 150 steps of it and the epoch time is extrapolated from the
steady rate (marked as such). Peak resident memory is the child process's own.
"""

import json
import sys
import tempfile
from pathlib import Path

from common import Report, quick_flag, run_child

REPO = Path(__file__).resolve().parents[1]

PARTIAL_EPOCH = """
import sys, time, torch
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.data.sources import Hypersphere, ShardLoader
from bnnidr_hpc.runtime.distributed import DistInfo, pick_device
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.train.optim import Optimizers
from bnnidr_hpc.train.step import make_step
from bnnidr_hpc.runtime import allocator, products
c = load(sys.argv[1], sys.argv[3:])
products.use(c.run.cpu_matmul)  # what train() sets up
allocator.keep_freed_memory()
device = pick_device(DistInfo(), "auto")
loader = ShardLoader(Hypersphere(c.data, c.seed, device), c.batch_size, 0, 1)
assert not loader.cached
model = Reducer(c.model_spec()).to(device)
step = make_step(c, model, Optimizers(c.optimizers, c.max_epochs, model), DistInfo())
steps, warm = int(sys.argv[2]), 10
for i, batch in enumerate(loader.epoch(0)):
    if i == warm:
        if device.type == "cuda": torch.cuda.synchronize()
        t = time.perf_counter()
    step(*batch)
    if i + 1 == warm + steps:
        break
if device.type == "cuda": torch.cuda.synchronize()
print("RATE", steps * c.batch_size / (time.perf_counter() - t))
"""


def lab_run(name: str, root: str):
    seconds, _, _ = run_child([sys.executable, "-m", "bnnidr_hpc.cli", "run", str(REPO / "conf" / f"{name}.yaml"),
                               f"run.root={root}", "run.progress=false"])
    (record,) = Path(root).glob(f"{name}-*/record.json")
    return seconds, json.loads(record.read_text())


def main():
    quick = quick_flag()
    report = Report("workloads", quick)
    with tempfile.TemporaryDirectory() as root:
        seconds, rec = lab_run("hps_00040", root)
        report.add("hps_00040 end to end", seconds, "s", "<= 10", seconds <= 10)
        report.add("hps_00040 AP retention", rec["ap_retention"], "", ">= 0.95", rec["ap_retention"] >= 0.95)
        seconds, rec = lab_run("hps_00043", root)
        report.add("hps_00043 end to end (lab: 342 s on a GPU)", seconds, "s", "<= 45", seconds <= 45)
        report.add("hps_00043 AP retention", rec["ap_retention"], "", ">= 0.95", rec["ap_retention"] >= 0.95)
        report.add("hps_00043 samples/s", rec["samples_per_s"], "samples/s")
        imagenet = str(REPO / "conf" / "imagenet_scale.yaml")
        if quick:
            _, rss, out = run_child([sys.executable, "-c", PARTIAL_EPOCH, imagenet, "150"])
            rate = float(out.split("RATE")[1])
            report.add("ImageNet-scale epoch (extrapolated from 150 steps)", 1_300_000 / rate, "s")
            report.add("ImageNet-scale samples/s", rate, "samples/s")
        else:
            seconds, rss, _ = run_child([sys.executable, "-m", "bnnidr_hpc.cli", "run", imagenet, "max_epochs=1",
                                         f"run.root={root}", "run.progress=false"])
            (record,) = Path(root).glob("imagenet_scale-*/record.json")
            rec = json.loads(record.read_text())
            report.add("ImageNet-scale epoch (whole run, 1 epoch)", rec["epoch_seconds"][0], "s")
            report.add("ImageNet-scale end to end", seconds, "s")
            report.add("ImageNet-scale samples/s", rec["samples_per_s"], "samples/s")
        report.add("ImageNet-scale peak memory per rank (data: 8 GB)", rss, "GB", "<= 3", rss <= 3)
    report.finish()


if __name__ == "__main__":
    main()
