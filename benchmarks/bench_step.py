"""Step throughput: the toolkit's training step against a plain reference loop and the roofline.

  python benchmarks/bench_step.py [--quick]

Same model (the schema's default architecture), data and batch (p=1536, batch 1024) in one process:
  toolkit    ShardLoader batches and train.make_step, steady state
  reference  the usual loop: DataLoader over a materialised TensorDataset with shuffling and default
             collation, the loss built fresh with torch.cdist every step, .item() every step
  roofline   FLOP/s of the step's own matrix products alone (same shapes, forward and backward)
Model FLOP utilisation = the toolkit's achieved model FLOP/s / the roofline's, both counting the
products the step executes (the reference executes more: the whole input Gram matrix). On a CPU
the toolkit and its roofline use the library run.cpu_matmul=auto picks (products.py); the step and
the roofline are also timed with the other library, to show what the choice is worth here.
"""

import torch
from common import Report, interleaved_seconds, quick_flag
from torch.utils.data import DataLoader, TensorDataset

from bnnidr_hpc.config.loading import load
from bnnidr_hpc.data.sources import Hypersphere, ShardLoader
from bnnidr_hpc.model.objectives import GRAM_BLOCK
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.runtime import allocator, products
from bnnidr_hpc.runtime.distributed import DistInfo, pick_device
from bnnidr_hpc.train.optim import Optimizers
from bnnidr_hpc.train.step import make_step


def gram_blocks(batch: int):
    """Row counts of the block pairs (on and above the diagonal) the step multiplies for the input
    distances of a batch against itself (metrics.squared_distances)."""
    sizes = [min(GRAM_BLOCK, batch - lo) for lo in range(0, batch, GRAM_BLOCK)]
    return [(a, b) for i, a in enumerate(sizes) for b in sizes[i:]]


def roofline(c, batch: int, device, library: str = "auto"):
    """The matrix products one step executes, same shapes and precision: (a function running them
    once, their FLOPs - the step's model FLOPs). The MLP forward (2 per weight) and backward (4, or
    2 for the first layer, whose input needs no gradient), the input distances' block products (no
    gradient) and the output distances forward and backward (one product each: the pairs are
    symmetric; float32 in both precisions)."""
    dtype = torch.bfloat16 if c.precision == "bf16" else torch.float32
    sizes = [c.input_dim] + c.hidden_sizes() + [c.output_dim]
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, dtype=dtype):
        return torch.randn(shape, device=device, generator=g).to(dtype)

    mats = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        x, w, gy = randn(batch, a), randn(a, b), randn(batch, b)
        mats += [(x, w), (x.T, gy)] + ([(gy, w.T)] if i else [])  # forward, grad weight, grad input
    mats += [(randn(rows, c.input_dim), randn(c.input_dim, cols)) for rows, cols in gram_blocks(batch)]
    y, pairs = randn(batch, c.output_dim, dtype=torch.float32), randn(batch, batch, dtype=torch.float32)
    mats += [(y, y.T), (pairs, y)]
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in mats)

    def run():
        products.use(library)
        for a, b in mats:
            products.mm(a, b)

    return run, flops


def forever(epoch):
    """Batches of epoch() over and over: a benchmark may run more steps than an epoch has."""
    while True:
        yield from epoch()


def reference_step(c, points: torch.Tensor):
    """One step of the usual loop; the DataLoader restarts when an epoch ends."""
    torch.manual_seed(0)
    device = points.device
    model = Reducer(c.model_spec()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=c.learning_rate)
    loader = DataLoader(TensorDataset(points.cpu()), batch_size=c.batch_size, shuffle=True, drop_last=True)
    batches = forever(lambda: iter(loader))

    def one():
        x = next(batches)[0].to(device)
        out = model(x)
        d_in, d_out = torch.cdist(x, x), torch.cdist(out, out)
        loss = ((d_out - d_in) ** 2).sum() / (d_in ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    return one


def toolkit_step(c, device, library: str = "auto"):
    """One step of the toolkit (ShardLoader batches, train.make_step) with the CPU products on
    `library`, and the cached points. A pair objective's (umap, stress): loss=graph's step takes
    batches of edges, bench_graph.graph_step."""
    if c.loss == "graph":
        raise ValueError("toolkit_step times a pair objective; loss=graph's step is bench_graph.graph_step")
    data = Hypersphere(c.data, c.seed, device)
    loader = ShardLoader(data, c.batch_size, 0, 1)
    torch.manual_seed(0)
    model = Reducer(c.model_spec()).to(device)
    step = make_step(c, model, Optimizers(c.optimizers, c.max_epochs, model), DistInfo())
    batches = forever(lambda: loader.epoch(0))

    def one():
        products.use(library)
        step(*next(batches))

    return one, loader.points


def main():
    quick = quick_flag()
    allocator.keep_freed_memory()  # as training does; the reference loop, in this process, gains it too
    rounds, iters = (5, 8) if quick else (7, 20)
    report = Report("step_throughput", quick)
    # The pair objective's step, which the reference loop reproduces (loss=graph's step, another
    # batch shape, is bench_graph.py's).
    base = ["data.p=1536", "data.d=50", "data.spread=1.2", f"data.n={1024 * 32}", "batch_size=1024", "loss=umap"]
    device = pick_device(DistInfo(), "auto")
    on_gpu = device.type == "cuda"
    # The targets apply to the toolkit's default precision on a CPU (fp32) and to bf16 autocast on a
    # GPU, as the performance issue sets them; the other precision is measured alongside.
    target_precision, speedup, utilisation = ("bf16", 5.0, 0.5) if on_gpu else ("fp32", 1.3, 0.70)
    configs = {precision: load(None, base + [f"precision={precision}"]) for precision in ("fp32", "bf16")}
    calls, flops = {}, {}
    for precision, c in configs.items():
        calls[f"toolkit {precision}"], points = toolkit_step(c, device)
        calls[f"roofline {precision}"], flops[precision] = roofline(c, c.batch_size, device)
    calls["reference"] = reference_step(configs["fp32"], points)
    chosen = products.resolve("auto")
    other = "blas" if chosen == "onednn" else "onednn"
    compare_libraries = not on_gpu and products.resolve(other) == other  # a build with both
    if compare_libraries:
        calls[f"toolkit fp32 {other}"] = toolkit_step(configs["fp32"], device, other)[0]
        calls[f"roofline fp32 {other}"], _ = roofline(configs["fp32"], configs["fp32"].batch_size, device, other)
    # The other objective and the Bayesian model, at the default precision: no regression unseen.
    calls["toolkit fp32 loss=stress"] = toolkit_step(load(None, base + ["loss=stress"]), device)[0]
    calls["toolkit fp32 bayesian"] = toolkit_step(load(None, base + ["bayesian=true"]), device)[0]
    seconds = interleaved_seconds(calls, device, rounds, iters)

    batch = configs["fp32"].batch_size
    reference = batch / seconds["reference"]
    report.add("reference loop (fp32)", reference, "samples/s")
    for precision in configs:
        toolkit = batch / seconds[f"toolkit {precision}"]
        achieved = toolkit / batch * flops[precision]
        ceiling = flops[precision] / seconds[f"roofline {precision}"]
        targeted = precision == target_precision
        report.add(f"toolkit step, {precision}", toolkit, "samples/s")
        report.add(f"toolkit {precision} / reference", toolkit / reference, "x",
                   f">= {speedup:g}" if targeted else None, toolkit / reference >= speedup if targeted else None)
        report.add(f"model FLOP/s achieved, {precision}", achieved / 1e9, "GFLOP/s")
        report.add(f"roofline (same matmuls), {precision}", ceiling / 1e9, "GFLOP/s")
        report.add(f"model FLOP utilisation, {precision}", achieved / ceiling, "",
                   f">= {utilisation:g}" if targeted else None, achieved / ceiling >= utilisation if targeted else None)
    if compare_libraries:
        for kind in ("toolkit", "roofline"):
            report.add(f"{kind} fp32: {chosen} (run.cpu_matmul=auto) / {other}",
                       seconds[f"{kind} fp32 {other}"] / seconds[f"{kind} fp32"], "x")
    products.use("auto")
    default = batch / seconds["toolkit fp32"]
    for variant in ("loss=stress", "bayesian"):
        rate = batch / seconds[f"toolkit fp32 {variant}"]
        report.add(f"toolkit step, fp32, {variant}", rate, "samples/s")
        report.add(f"  {variant} / the default step", rate / default, "x")
    report.finish()


if __name__ == "__main__":
    main()
