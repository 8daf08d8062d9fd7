"""Distributed overhead: 1 against 2 gloo CPU ranks (one thread each) on hps_00043, and the
collectives' seconds per step.

  python benchmarks/bench_distributed.py [--quick]

Both runs train the same global batch (1 rank x 1000, 2 ranks x 500: the same computation, see
README), so their ratio is the cost of distributing alone: strong-scaling efficiency =
epoch seconds(1 rank) / (2 x epoch seconds(2 ranks)), steady-state epochs. The collectives of a
step (gather of the outputs, their gradient's rows sent back to their ranks, the parameter
gradients' all-reduce; the inputs are not gathered since every rank takes the global batch from
its own cached copy) are timed alone in a separate 2-rank process group; in training the step
computes the next batch's input distances while it waits for them.

The machine's own lockstep ceiling is measured in the same rounds: a fixed amount of matrix
products per step (about a training step's worth), done by 1 process alone or split over 2 gloo
ranks that meet after every step with a 1-float all-reduce and exchange nothing else. No data-
parallel training on this machine can scale better than that; a 2-core virtual machine whose
cores slow down at different moments makes each lockstep step wait for the slower one.
"""

import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import Report, quick_flag

from bnnidr_hpc.cluster.job import run_local
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.runtime import products
from bnnidr_hpc.runtime.distributed import free_port

CONF = str(Path(__file__).resolve().parents[1] / "conf" / "hps_00043.yaml")


def _cpu_seconds() -> float:
    """User + system CPU time of this process, every thread (gloo's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _collectives(rank, port, shapes, params, iters, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    xs = [torch.randn(s) for s in shapes]
    out_grads = torch.randn(2 * shapes[0][0], shapes[0][1])
    received = torch.empty_like(out_grads)
    grads = torch.randn(params)

    def step():
        for x in xs:
            parts = [torch.empty_like(x) for _ in range(2)]
            dist.all_gather(parts, x)
        dist.all_to_all_single(received, out_grads)  # the gathered outputs' gradient, each rank its rows
        dist.all_reduce(grads)

    for _ in range(5):
        step()
    dist.barrier()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    for _ in range(iters):
        step()
    dist.barrier()
    if rank == 0:
        wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
        Path(out).write_text(json.dumps({"wall": wall / iters, "cpu": cpu / iters}))
    dist.destroy_process_group()


PROBE_PRODUCTS = 32  # of 256x1024 by 1024x256 on one thread: about the work of a 1000-point step


def _lockstep_probe(rank, world, port, steps, out):
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    a, b, flag = torch.randn(256, 1024), torch.randn(1024, 256), torch.zeros(1)

    def step():
        for _ in range(PROBE_PRODUCTS // world):
            products.mm(a, b)  # the library training uses (products.py)
        if world > 1:
            dist.all_reduce(flag)

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if rank == 0:
        Path(out).write_text(json.dumps((time.perf_counter() - started) / steps))
    if world > 1:
        dist.destroy_process_group()


def _probe_seconds(world: int, steps: int, root: str) -> float:
    out = os.path.join(root, f"probe{world}")
    mp.start_processes(_lockstep_probe, args=(world, free_port(), steps, out), nprocs=world, start_method="spawn")
    return json.loads(Path(out).read_text())


def main():
    quick = quick_flag()
    report = Report("distributed", quick)
    epochs = 4 if quick else 10
    common = [f"max_epochs={epochs}", "run.threads=1", "run.progress=false", "run.graph=false", f"eval.every={epochs}"]
    rounds = 2 if quick else 3
    probe_steps = 40 if quick else 100
    with tempfile.TemporaryDirectory() as root:
        # Alternating 1- and 2-rank runs, medians of their steady epochs: a slow spell of this
        # shared machine then falls on both alike.
        epoch_seconds = {1: [], 2: []}
        probe_efficiency = []
        for r in range(rounds):
            for world, batch in ((1, 1000), (2, 500)):
                c = load(CONF, common + [f"num_gpu={world}", f"batch_size={batch}", f"run.root={root}/{r}"])
                rec = run_local(c, run_dir_for(c))
                epoch_seconds[world] += rec["epoch_seconds"][1:]
            probe_efficiency.append(_probe_seconds(1, probe_steps, root) / (2 * _probe_seconds(2, probe_steps, root)))
        steady = {world: statistics.median(s) for world, s in epoch_seconds.items()}
        for world in (1, 2):
            report.add(f"{world} rank(s): steady epoch (median of {len(epoch_seconds[world])})", steady[world], "s")
        efficiency = steady[1] / (2 * steady[2])
        report.add("strong-scaling efficiency, 1 -> 2 gloo ranks", efficiency, "", ">= 0.80", efficiency >= 0.80)
        ceiling = statistics.median(probe_efficiency)
        report.add(f"  this machine's lockstep ceiling (median of {len(probe_efficiency)}: "
                   + ", ".join(f"{e:.2f}" for e in probe_efficiency) + ")", ceiling, "")
        report.add("  efficiency / lockstep ceiling", efficiency / ceiling, "")
        c = load(CONF, [])
        params = sum(p.numel() for p in Reducer(c.model_spec()).parameters())
        out = os.path.join(root, "collectives")
        mp.start_processes(_collectives, args=(free_port(), [(500, c.output_dim)], params,
                                               20 if quick else 100, out), nprocs=2, start_method="spawn")
        collectives = json.loads(Path(out).read_text())
        step_seconds = steady[2] / (c.data.n // 1000)
        report.add("collectives per step alone (gloo, 2 ranks)", collectives["wall"] * 1e3, "ms")
        report.add("  CPU they take from each rank per step", collectives["cpu"] * 1e3, "ms")
        # Overlap hides waiting, not CPU: with both cores busy, this is as far as 2 ranks can go.
        cpu_bound = steady[1] / (2 * (steady[1] / 2 + collectives["cpu"] * (c.data.n // 1000)))
        report.add("  efficiency ceiling if only that CPU were lost", cpu_bound, "")
        report.add("2-rank step", step_seconds * 1e3, "ms")
    report.finish()


if __name__ == "__main__":
    main()
