"""One GPU check, ready to run: the exact k-NN graph, the training step (fp32, bf16; today's loss
and loss=graph) and `reduce` on one device, their achieved FLOP/s against the device's peak, and the
device's results against the CPU's on a small case.

  python benchmarks/gpu_check.py                        # CUDA: about 2-3 minutes on one H100
  python benchmarks/gpu_check.py --device cpu --quick   # the same code on the CPU at tiny sizes
                                                        #   (tests/test_gpu_check.py runs it)

Full sizes (p = 1536): the graph of 300,000 rows (fp32, then bf16), the step at batch 1,024,
`reduce` of 200,000 rows; --quick: p = 64 and a few thousand rows. One device, one process: no
process group (NCCL is not needed). Clocks are read after torch.cuda.synchronize.

Peaks (dense, TFLOP/s; PEAKS, matched by the device's name): the bf16 tensor-core peak for bf16
work, and for fp32 the plain fp32 peak, since PyTorch leaves TF32 off for matrix products unless
asked (torch.backends.cuda.matmul.allow_tf32; the tf32 figure is shown beside it). A device not in
the table, and a CPU, are compared with their measured rate of one large product instead ("peak
measured"). Either way the measured product rate is printed too.

Checks, the device against the CPU on the same rows (exit status 1 if one fails):
  graph    the fp32 graph of a small feature file: every index the device gives that differs from
           the CPU's names a row at the CPU's distance for that rank (a tie), within 1e-4 relative
           (float64 distances); bf16: recall of the fp32 graph >= 0.99
  step     3 steps from the same weights on the same batches, today's loss and loss=graph: losses
           within 1e-3 relative at fp32, 2e-2 at bf16 (autocast's rounding differs by device)
  reduce   a small trained run's reducer, loaded on both, applied to the same rows: outputs within
           1e-4 of their largest magnitude
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_graph import any_step, mlp_rows
from bench_step import roofline
from common import Report, interleaved_seconds, sync

from bnnidr_hpc.cluster.job import run_local
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.data.neighbours import build_graph
from bnnidr_hpc.data.sources import Hypersphere, source
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.reduce import apply
from bnnidr_hpc.runtime import allocator
from bnnidr_hpc.runtime.distributed import DistInfo
from bnnidr_hpc.train.optim import Optimizers
from bnnidr_hpc.train.step import make_step

# Dense peaks in TFLOP/s (NVIDIA's data sheets, without sparsity), the first name found in the device's
# (so the longer names first); others are compared with their measured product rate.
PEAKS = [
    ("H100 PCIe", {"bf16": 756, "tf32": 378, "fp32": 51}),
    ("H100 NVL", {"bf16": 835, "tf32": 418, "fp32": 60}),
    ("H100", {"bf16": 989, "tf32": 495, "fp32": 67}),     # SXM (HBM3)
    ("H200", {"bf16": 989, "tf32": 495, "fp32": 67}),
    ("GH200", {"bf16": 989, "tf32": 495, "fp32": 67}),
    ("A100", {"bf16": 312, "tf32": 156, "fp32": 19.5}),
    ("L40S", {"bf16": 362, "tf32": 183, "fp32": 91.6}),
]
FULL = {"p": 1536, "graph_rows": 300_000, "check_rows": 4096, "batch": 1024, "check_batch": 256,
        "reduce_rows": 200_000, "product": 8192}
QUICK = {"p": 64, "graph_rows": 3000, "check_rows": 600, "batch": 64, "check_batch": 32,
         "reduce_rows": 4000, "product": 1024}
SPHERE = ["data.d=50", "data.spread=1.2"]  # conf/imagenet_scale.yaml's sphere
CHECK_STEPS = 3
TIME_LIMIT_S = 480


def known_peaks(name: str):
    for key, peaks in PEAKS:
        if key.lower() in name.lower():
            return {k: v * 1e12 for k, v in peaks.items()}
    return None


def product_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of size x size x size products (torch.mm), median of 5 after 2 warm-ups."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    rates = []
    for i in range(7):
        sync(device)
        started = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i >= 2:
            rates.append(2 * size ** 3 / (time.perf_counter() - started))
    return float(np.median(rates))


def peaks(report: Report, device: torch.device, sizes: dict) -> dict:
    """{precision: the FLOP/s achieved figures are compared with}."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table = known_peaks(name) if device.type == "cuda" else None
    measured = {"fp32": product_rate(device, torch.float32, sizes["product"]),
                "bf16": product_rate(device, torch.bfloat16, sizes["product"])}
    chosen = {}
    for precision in ("fp32", "bf16"):
        report.add(f"{name}: {precision} product {sizes['product']}^3, measured", measured[precision] / 1e12,
                   "TFLOP/s")
        chosen[precision] = table[precision] if table else measured[precision]
        report.add(f"  peak used for {precision} ({'data sheet' if table else 'measured'})",
                   chosen[precision] / 1e12, "TFLOP/s")
    if table:
        report.add("  (tf32 peak, unused: allow_tf32 is " + str(torch.backends.cuda.matmul.allow_tf32) + ")",
                   table["tf32"] / 1e12, "TFLOP/s")
    return chosen


def sphere_config(root: Path, n: int, p: int, extra=()):
    return load(None, SPHERE + [f"data.n={n}", f"data.p={p}", "data.cache_gb=16", "graph.method=exact",
                                f"run.root={root}", "run.progress=false", *extra])


def timed_graph(c, device: torch.device, precision: str, cache: Path):
    """(seconds, KnnGraph) of the exact graph built afresh on `device`, rows made there."""
    sync(device)
    started = time.perf_counter()
    graph = build_graph(source(c.data, c.seed, device), c.graph, DistInfo(), device, cache, precision=precision)
    sync(device)
    return time.perf_counter() - started, graph


def graph_speed(report: Report, device, sizes: dict, peak: dict, root: Path) -> None:
    n, p = sizes["graph_rows"], sizes["p"]
    c = sphere_config(root, n, p)
    for precision in ("fp32", "bf16"):
        seconds, _ = timed_graph(c, device, precision, root / f"speed-{precision}")
        achieved = 2 * n * n * p / seconds
        report.add(f"exact graph {n:,} x {p}, k={c.graph.k}, {precision}", seconds, "s")
        report.add(f"  achieved (2 n^2 p / s), {precision}", achieved / 1e12, "TFLOP/s")
        report.add(f"  / peak, {precision}", achieved / peak[precision], "")


def feature_file(root: Path, rows: int, p: int) -> str:
    """A .npy of sphere rows made on the CPU: the same rows for both devices (a sphere made on a
    device draws other numbers)."""
    c = sphere_config(root, rows, p)
    x = Hypersphere(c.data, c.seed, "cpu").rows(torch.arange(rows))[0].numpy()
    path = root / "rows.npy"
    np.save(path, x)
    return str(path)


def graph_check(report: Report, device, sizes: dict, root: Path, checks: dict) -> None:
    c = load(None, ["data.source=npy", f"data.path={feature_file(root, sizes['check_rows'], sizes['p'])}",
                    "graph.method=exact", f"run.root={root}"])
    built = {}
    for name, where, precision in (("cpu", "cpu", "fp32"), ("device", device, "fp32"), ("bf16", device, "bf16")):
        built[name] = timed_graph(c, torch.device(where), precision, root / f"check-{name}")[1]
    cpu, dev, dev_bf16 = built["cpu"], built["device"], built["bf16"]
    n = cpu.indices.shape[0]
    rows = source(c.data, c.seed, "cpu").range(0, n)[0].double()
    differ = np.argwhere(dev.indices != cpu.indices)
    if len(differ):
        i, r = differ[:, 0], differ[:, 1]
        theirs = torch.linalg.vector_norm(rows[i] - rows[dev.indices[i, r]], dim=1).numpy()
        untied = int((np.abs(theirs - cpu.distances[i, r]) > 1e-4 * np.maximum(cpu.distances[i, r], 1e-6)).sum())
    else:
        untied = 0
    report.add(f"graph check, {n} rows: indices equal to the CPU's", 1 - len(differ) / cpu.indices.size, "")
    report.add("  differing indices that are not ties", untied, "", "= 0", untied == 0)
    recall = float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(dev_bf16.indices, cpu.indices)]))
    recall /= cpu.indices.shape[1]
    report.add("  bf16 graph's recall of the CPU's fp32 graph", recall, "", ">= 0.99", recall >= 0.99)
    checks["graph: fp32 indices equal to the CPU's up to ties"] = untied == 0
    checks["graph: bf16 recall of the fp32 graph >= 0.99"] = recall >= 0.99


def step_losses(c, device: torch.device, batches) -> list:
    torch.manual_seed(0)
    model = Reducer(c.model_spec()).to(device)  # made on the CPU: the same weights on every device
    step = make_step(c, model, Optimizers(c.optimizers, c.max_epochs, model), DistInfo())
    losses = []
    for x in batches:
        x = x.to(device)
        loss, _ = step(x) if c.loss == "graph" else step(x, x)
        losses.append(float(loss))
    return losses


def step_check(report: Report, device, sizes: dict, root: Path, checks: dict) -> None:
    batch, p = sizes["check_batch"], sizes["p"]
    c = sphere_config(root, 8 * batch * CHECK_STEPS, p, [f"batch_size={batch}"])
    points = Hypersphere(c.data, c.seed, "cpu").rows(torch.arange(c.data.n))[0]
    for loss in ("umap", "graph"):
        rows = batch * (2 + c.graph.negatives) if loss == "graph" else batch
        batches = [points[torch.randperm(c.data.n, generator=torch.Generator().manual_seed(s))[:rows]]
                   for s in range(CHECK_STEPS)]
        for precision, tolerance in (("fp32", 1e-3), ("bf16", 2e-2)):
            cfg = sphere_config(root, c.data.n, p, [f"batch_size={batch}", f"loss={loss}", f"precision={precision}"])
            on_cpu, on_device = step_losses(cfg, torch.device("cpu"), batches), step_losses(cfg, device, batches)
            worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(on_cpu, on_device))
            report.add(f"step check, loss={loss} {precision}: largest relative loss difference", worst, "",
                       f"<= {tolerance:g}", worst <= tolerance)
            checks[f"step: loss={loss} {precision} losses within {tolerance:g} of the CPU's"] = worst <= tolerance


def mlp_flops(c, rows: int) -> int:
    """Forward and backward products of the MLP over `rows` rows (the first layer's input needs no
    gradient)."""
    sizes = [c.input_dim] + c.hidden_sizes() + [c.output_dim]
    return sum(2 * rows * a * b * (2 if i == 0 else 3) for i, (a, b) in enumerate(zip(sizes, sizes[1:])))


def step_speed(report: Report, device, sizes: dict, peak: dict, quick: bool) -> None:
    batch, p = sizes["batch"], sizes["p"]
    base = SPHERE + [f"data.p={p}", f"data.n={batch * 16}", f"batch_size={batch}"]
    calls, flops = {}, {}
    for loss in ("umap", "graph"):
        for precision in ("fp32", "bf16"):
            c = load(None, base + [f"loss={loss}", f"precision={precision}"])
            name = f"{loss} {precision}"
            calls[name] = any_step(c, device)
            rows = batch * mlp_rows(c)
            flops[name] = roofline(c, batch, device)[1] if loss == "umap" else mlp_flops(c, rows)
    seconds = interleaved_seconds(calls, device, *((2, 3) if quick else (5, 20)))
    for name, s in seconds.items():
        precision = name.split()[1]
        report.add(f"step loss={name}, batch {batch}", batch / s, "samples/s")
        report.add(f"  achieved / peak, {precision}", flops[name] / s / peak[precision], "")


def trained_run(root: Path, sizes: dict) -> Path:
    """A small completed run, trained on the CPU, whose reducer `reduce` applies."""
    c = load(None, SPHERE + [f"data.n={sizes['check_rows']}", f"data.p={sizes['p']}", "max_epochs=1",
                             "run.device=cpu", "run.progress=false", f"run.root={root / 'runs'}",
                             "eval.queries=100", "eval.gallery=400"])
    run_dir = run_dir_for(c)
    run_local(c, run_dir)
    return Path(run_dir)


def reduce_check_and_speed(report: Report, device, sizes: dict, peak: dict, root: Path, checks: dict) -> None:
    run_dir = trained_run(root, sizes)
    x = torch.randn(sizes["check_rows"], sizes["p"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        on_cpu = apply.load_reducer(run_dir, device="cpu")(x)
        reducer = apply.load_reducer(run_dir, device=str(device))
        on_device = reducer(x.to(device)).cpu()
    error = float((on_device - on_cpu).abs().max() / on_cpu.abs().max())
    report.add("reduce check: largest difference / largest output", error, "", "<= 1e-4", error <= 1e-4)
    checks["reduce: outputs within 1e-4 of the CPU's"] = error <= 1e-4
    spec = reducer.model.spec
    widths = [spec.input_dim, *spec.hidden_sizes, spec.output_dim]
    per_row = sum(2 * a * b for a, b in zip(widths, widths[1:]))
    block = torch.randn(apply.block_rows(spec), sizes["p"], device=device)
    with torch.no_grad():
        seconds = interleaved_seconds({"reduce": lambda: reducer(block)}, device, 3, 10)["reduce"]
    report.add(f"reduce on {device.type}, blocks of {block.shape[0]} rows in memory", block.shape[0] / seconds,
               "rows/s")
    report.add("  achieved / fp32 peak", block.shape[0] * per_row / seconds / peak["fp32"], "")
    rows = sizes["reduce_rows"]
    inputs = np.lib.format.open_memmap(root / "inputs.npy", "w+", np.float32, (rows, sizes["p"]))
    for lo in range(0, rows, 65536):
        inputs[lo:lo + 65536] = np.random.default_rng(lo).standard_normal((min(65536, rows - lo), sizes["p"]))
    inputs.flush()
    del inputs
    result = apply.run(str(run_dir), [str(root / "inputs.npy")], str(root / "reduced.npy"), device=device.type,
                       progress=False)
    report.add(f"`reduce` command, {rows:,} rows .npy -> .npy", rows / result["seconds"], "rows/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (p = 64): a test of the script itself")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; --device cpu runs the same checks on the CPU", file=sys.stderr)
        return 2
    device, sizes = torch.device(args.device), QUICK if args.quick else FULL
    allocator.keep_freed_memory()
    started = time.perf_counter()
    report, checks = Report("gpu_check" if device.type == "cuda" else "gpu_check_cpu", args.quick), {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        peak = peaks(report, device, sizes)
        graph_check(report, device, sizes, root, checks)
        step_check(report, device, sizes, root, checks)
        graph_speed(report, device, sizes, peak, root)
        step_speed(report, device, sizes, peak, args.quick)
        reduce_check_and_speed(report, device, sizes, peak, root, checks)
    total = time.perf_counter() - started
    report.add("whole check", total, "s", f"<= {TIME_LIMIT_S}" if device.type == "cuda" else None,
               total <= TIME_LIMIT_S if device.type == "cuda" else None)
    report.finish()
    print("\nchecks (device against CPU):")
    for name, ok in checks.items():
        print(f"  {'ok    ' if ok else 'FAILED'}  {name}")
    failed = sum(not ok for ok in checks.values())
    print(f"{len(checks) - failed} of {len(checks)} checks passed" + (f", {failed} FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
