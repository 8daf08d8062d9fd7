"""Evaluation and tooling: AP for 10,000 x 10,000, tools/collect.py over 10,000 records, and the
time from `bnnidr-hpc submit` on the local Slurm cluster to the job's first training step.

  python benchmarks/bench_tooling.py [--quick]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import Report, quick_flag, run_child, seconds_per_call

from bnnidr_hpc.runtime.distributed import DistInfo, pick_device
from bnnidr_hpc.train.retrieval import mean_average_precision

REPO = Path(__file__).resolve().parents[1]


def fake_record(i: int) -> dict:
    world = (1, 2, 4)[i % 3]
    epochs = [1.0 + 0.01 * (i % 7)] * 20
    return {"schema": "bnnidr-hpc/record/1", "status": "completed", "world_size": world, "n": 2000, "p": 128,
            "d": 5, "batch_size": 50 * (1 + i % 4), "epochs_done": 20, "max_epochs": 20,
            "config": {"batch_size": 50 * (1 + i % 4), "seed": i // 12, "num_gpu": world, "data": {"n": 2000}},
            "epoch_seconds": epochs, "steady_epoch_seconds": epochs[0] / world, "total_seconds": 25.0,
            "epochs": [{"epoch": e, "loss": 0.1, "ap": 0.9} for e in range(20)], "samples_per_s": 2000.0,
            "final_loss": 0.01, "ap_out": 0.95, "ap_retention": 0.99}


def _submit(config: str, root: str, *overrides) -> float:
    """`bnnidr-hpc submit` on the local cluster; when it was started."""
    started = time.time()
    subprocess.run([sys.executable, "-m", "bnnidr_hpc.cli", "submit", str(REPO / "conf" / config), "cluster=local",
                    f"run.root={root}", "run.progress=false", *overrides], check=True, capture_output=True)
    return started


def _records(root: str, pattern: str) -> list:
    """The readable records under root (a record being written may not parse yet)."""
    found = []
    for path in Path(root).glob(pattern):
        try:
            found.append(json.loads(path.read_text()))
        except ValueError:
            pass
    return found


def submit_to_first_step(root: str):
    """Seconds from `submit` to the job's first training step, or None without Slurm."""
    from bnnidr_hpc.cluster.slurm_queries import slurm_available

    if slurm_available():
        return None
    started = _submit("hps_00040.yaml", root, "max_epochs=2")
    deadline = time.time() + 300
    while time.time() < deadline:
        first = [r["first_step_at"] for r in _records(root, "hps_00040-*/record.json") if r.get("first_step_at")]
        if first:
            return first[0] - started
        time.sleep(0.2)
    raise RuntimeError("the job did not reach its first step within 300 s")


def sweep_to_last_record(root: str):
    """A sweep of 12 small runs on the local cluster (hps_00040 at 4 batch sizes x 1/2/4 GPUs):
    (seconds from submit to the last record's end, the records)."""
    started = _submit("sweep_hps_00040.yaml", root, "batch_size=25,50,100,200")
    deadline = time.time() + 900
    while time.time() < deadline:
        ended = [r for r in _records(root, "*/*/record.json") if r.get("status") in ("completed", "failed", "diverged")]
        if len(ended) == 12:
            return max(r["updated_at"] for r in ended) - started, ended
        time.sleep(0.5)
    raise RuntimeError("the 12-run sweep did not end within 900 s")


def main():
    quick = quick_flag()
    report = Report("tooling", quick)
    device = pick_device(DistInfo(), "auto")
    g = torch.Generator(device=device).manual_seed(0)
    labels = torch.randint(1000, (20000,), generator=g, device=device)
    centres = torch.randn(1000, 64, generator=g, device=device)
    points = centres[labels] + 0.5 * torch.randn(20000, 64, generator=g, device=device)
    seconds = seconds_per_call(lambda: mean_average_precision(points[:10000], labels[:10000], points[10000:],
                                                              labels[10000:]), device, 1, 1 if quick else 3)
    report.add("AP, 10,000 queries x 10,000 gallery", seconds, "s", "<= 5", seconds <= 5)
    with tempfile.TemporaryDirectory() as root:
        for i in range(10000):
            d = Path(root, "records", f"run{i:05d}")
            d.mkdir(parents=True)
            (d / "record.json").write_text(json.dumps(fake_record(i)))
        seconds, _, out = run_child([sys.executable, str(REPO / "tools" / "collect.py"), str(Path(root, "records")),
                                     "--format", "csv"])
        assert out.count("\n") > 3
        report.add("tools/collect.py over 10,000 records (process start to exit)", seconds, "s", "<= 2", seconds <= 2)
        latency = submit_to_first_step(os.path.join(root, "slurm"))
        if latency is None:
            print("no local Slurm cluster (bash slurm/start.sh): submit latency not measured", file=sys.stderr)
        else:
            report.add("bnnidr-hpc submit -> first training step (local Slurm)", latency, "s", "<= 15", latency <= 15)
            seconds, recs = sweep_to_last_record(os.path.join(root, "sweep"))
            report.add("12-run sweep (hps_00040, 4 batch sizes x 1/2/4 GPUs): submit -> last record", seconds, "s")
            report.add("  runs completed", sum(r["status"] == "completed" for r in recs), "of 12")
            report.add("  per run: process start -> first step (median)",
                       statistics.median(r["time_to_first_step_s"] for r in recs), "s")
            report.add("  per run: process start -> record (median)",
                       statistics.median(r["total_seconds"] for r in recs), "s")
            report.add("  per run: training epochs (median)", statistics.median(r["train_seconds"] for r in recs), "s")
    report.finish()


if __name__ == "__main__":
    main()
