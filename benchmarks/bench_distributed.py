"""Distributed overhead: 1 against 2 gloo CPU ranks (one thread each) on hps_00043, and the
collectives' seconds per step.

  python benchmarks/bench_distributed.py [--quick]

Both runs train the same global batch (1 rank x 1000, 2 ranks x 500: the same computation, see
README), so their ratio is the cost of distributing alone: strong-scaling efficiency =
epoch seconds(1 rank) / (2 x epoch seconds(2 ranks)), steady-state epochs. The collectives of a
step (gather of the outputs, their gradient's all-reduce, DDP's gradient all-reduce; the inputs are
not gathered since every rank takes the global batch from its own cached copy) are timed in a
separate 2-rank process group.
"""

import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common import Report, quick_flag

from bnnidr_hpc.config import load, run_dir_for
from bnnidr_hpc.distributed import free_port
from bnnidr_hpc.launch import run_local
from bnnidr_hpc.model import Reducer

CONF = str(Path(__file__).resolve().parents[1] / "conf" / "hps_00043.yaml")


def _collectives(rank, port, shapes, params, iters, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    xs = [torch.randn(s) for s in shapes]
    grads = torch.randn(params)

    def step():
        for x in xs:
            parts = [torch.empty_like(x) for _ in range(2)]
            dist.all_gather(parts, x)
        dist.all_reduce(torch.randn(2 * shapes[0][0], shapes[0][1]))  # the gathered outputs' gradient
        dist.all_reduce(grads)

    for _ in range(5):
        step()
    dist.barrier()
    started = time.perf_counter()
    for _ in range(iters):
        step()
    dist.barrier()
    if rank == 0:
        Path(out).write_text(str((time.perf_counter() - started) / iters))
    dist.destroy_process_group()


def main():
    quick = quick_flag()
    report = Report("distributed", quick)
    epochs = 4 if quick else 10
    common = [f"max_epochs={epochs}", "run.threads=1", "run.progress=false", "run.graph=false", f"eval.every={epochs}"]
    with tempfile.TemporaryDirectory() as root:
        steady = {}
        for world, batch in ((1, 1000), (2, 500)):
            c = load(CONF, common + [f"num_gpu={world}", f"batch_size={batch}", f"run.root={root}"])
            rec = run_local(c, run_dir_for(c))
            steady[world] = rec["steady_epoch_seconds"]
            report.add(f"{world} rank(s): steady epoch", steady[world], "s")
        efficiency = steady[1] / (2 * steady[2])
        report.add("strong-scaling efficiency, 1 -> 2 gloo ranks", efficiency, "", ">= 0.80", efficiency >= 0.80)
        c = load(CONF, [])
        params = sum(p.numel() for p in Reducer(c).parameters())
        out = os.path.join(root, "collectives")
        mp.start_processes(_collectives, args=(free_port(), [(500, c.output_dim)], params,
                                               20 if quick else 100, out), nprocs=2, start_method="spawn")
        per_step = float(Path(out).read_text())
        report.add("collectives per step (gloo, 2 ranks)", per_step * 1e3, "ms")
        report.add("share of a 2-rank step", per_step / (steady[2] / (c.data.n // 1000)), "")
    report.finish()


if __name__ == "__main__":
    main()
