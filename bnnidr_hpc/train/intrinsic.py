"""TwoNN intrinsic-dimension estimates (Facco, d'Errico, Rodriguez and Laio, Sci. Rep. 2017).

Used by: train/session.py and train/evaluate.py (output_dim: auto; the gallery before and after
reduction), cli.py (`bnnidr-hpc estimate-id`: estimate_config, report_lines), tests (the
hypersphere generator keeps its dimension).

For each point, mu = r2 / r1, the ratio of its second to first nearest-neighbour distance. On a
d-dimensional manifold with locally uniform density, mu follows a Pareto law P(mu) = d mu^-(d+1),
so log(mu) is exponential with rate d:
  mle       d = (N - 1) / sum(log mu), standard error d / sqrt(N - 2)
  fit       the paper's line through the origin of -log(1 - F(mu)) against log(mu), with the
            largest 10 % of mu discarded
  bayes     a Gamma(a, b) prior on d gives the posterior Gamma(a + N, b + sum(log mu))
Known bias: TwoNN reads large dimensions low, and isotropic noise inflates it (README).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import List

import torch

from bnnidr_hpc.runtime import products
from bnnidr_hpc.runtime.errors import ConfigError

# Fewer nearest-neighbour ratios than this (rows that are copies of a few points) estimate nothing.
MIN_RATIOS = 3


def two_nearest(x: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """(N, 2) distances to each point's first and second nearest neighbour, in blocks of rows, so
    memory stays at block x N; a point is not its own neighbour, nor is an exact duplicate.

    Exact float32 products: bfloat16 candidates were tried and lose near neighbours of
    low-dimensional data (their squared distances are below bfloat16's resolution of |x|^2)."""
    x = x.float()
    sq = (x * x).sum(1)
    tiny = 1e-10 * sq.max().clamp_min(1e-30).item()
    out = torch.empty(x.shape[0], 2, device=x.device)
    for lo in range(0, x.shape[0], block):
        rows = x[lo:lo + block]
        idx = torch.arange(rows.shape[0], device=x.device)
        d2 = (sq[lo:lo + block, None] + sq[None, :] - 2.0 * products.mm(rows, x.T)).clamp_min_(0.0)
        d2[idx, idx + lo] = float("inf")  # a point is not its own neighbour
        d2[d2 <= tiny] = float("inf")  # nor is an exact duplicate
        out[lo:lo + block] = d2.topk(2, dim=1, largest=False).values.sqrt()
    return out


def log_mu(x: torch.Tensor, block: int = 2048) -> torch.Tensor:
    if x.shape[0] < 3:  # a point has no second neighbour (a gallery of 2): no ratio at all
        return torch.empty(0, dtype=torch.float64, device=x.device)
    r = two_nearest(x, block).double()
    mu = r[:, 1] / r[:, 0]
    return torch.log(mu[torch.isfinite(mu) & (mu > 1.0)])


@dataclass
class Estimate:
    method: str
    dimension: float
    error: float
    n: int

    def as_dict(self) -> dict:
        return {"method": self.method, "dimension": self.dimension, "error": self.error, "n": self.n}


def mle(logs: torch.Tensor) -> Estimate:
    n = logs.numel()
    d = (n - 1) / logs.sum().item()
    return Estimate("mle", d, d / math.sqrt(max(n - 2, 1)), n)


def _fit_slope(logs: torch.Tensor, discard: float) -> float:
    logs = logs.sort().values
    n = logs.numel()
    keep = int(math.floor(n * (1 - discard)))
    xs = logs[:keep]
    ys = -torch.log1p(-torch.arange(1, keep + 1, dtype=torch.float64, device=logs.device) / n)
    return ((xs * ys).sum() / (xs * xs).sum()).item()


def linear_fit(logs: torch.Tensor, discard: float = 0.1, bootstrap: int = 50, seed: int = 0) -> Estimate:
    """The paper's estimator: slope through the origin of -log(1 - F_emp(mu)) against log(mu), the
    largest `discard` of mu left out; the error is the bootstrap standard deviation over mu."""
    d = _fit_slope(logs, discard)
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = logs.numel()
    draws = [_fit_slope(logs[torch.randint(n, (n,), generator=g).to(logs.device)], discard) for _ in range(bootstrap)]
    return Estimate("fit", d, float(torch.tensor(draws).std()), n)


def bayes(logs: torch.Tensor, prior_shape: float = 1.0, prior_rate: float = 0.1) -> Estimate:
    """Posterior mean and standard deviation of d under a Gamma(prior_shape, prior_rate) prior."""
    n = logs.numel()
    shape, rate = prior_shape + n, prior_rate + logs.sum().item()
    return Estimate("bayes", shape / rate, math.sqrt(shape) / rate, n)


METHODS = {"mle": mle, "fit": linear_fit, "bayes": bayes}


def _method(name: str, logs: torch.Tensor) -> Estimate:
    """One estimate; NaN where there are too few ratios (a reducer's output collapsed to a point,
    rows that are copies of a few): no dimension, rather than a division by zero."""
    if logs.numel() < MIN_RATIOS:
        return Estimate(name, math.nan, math.nan, logs.numel())
    return METHODS[name](logs)


def estimate(x: torch.Tensor, method: str = "mle", block: int = 2048) -> Estimate:
    return _method(method, log_mu(x, block))


def estimate_all(x: torch.Tensor, block: int = 2048) -> dict:
    """Every method on one set of nearest-neighbour ratios (the costly part is done once)."""
    logs = log_mu(x, block)
    return {name: _method(name, logs).as_dict() for name in METHODS}


def estimate_config(c, sample: int) -> dict:
    """`bnnidr-hpc estimate-id`: every estimate on the first `sample` points of a config's data."""
    import time

    from bnnidr_hpc.data.sources import source
    from bnnidr_hpc.runtime.distributed import DistInfo, pick_device

    if c.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config: run.device='cuda' is not allowed here: this machine has no CUDA device "
                          "(use auto or cpu)")
    device = pick_device(DistInfo(), c.run.device)
    started = time.perf_counter()
    x = source(c.data, c.seed, device).sample(sample)
    logs = log_mu(x)
    if logs.numel() < MIN_RATIOS:
        raise ConfigError(f"estimate-id: {x.shape[0]} points of the data give {logs.numel()} nearest-neighbour "
                          f"ratios (at least {MIN_RATIOS} needed): the rows are identical or nearly so, "
                          "which leaves no dimension to estimate")
    estimates = {name: fn(logs).as_dict() for name, fn in METHODS.items()}
    true_d = c.data.d if c.data.source == "sphere" else None
    return {"n": x.shape[0], "p": c.data.p, "true_d": true_d, "device": device.type, "estimates": estimates,
            "seconds": time.perf_counter() - started,
            "output_dim_auto": output_dim_for(estimates["mle"]["dimension"], c.data.p)}


def report_lines(c, result: dict, with_json: bool = False) -> List[str]:
    """`bnnidr-hpc estimate-id`'s lines for estimate_config's result: the data, each estimate, what
    output_dim: auto would choose; with_json, the estimates again as one JSON line."""
    what = (f"p={c.data.p}, embedding={c.data.embedding}, noise={c.data.noise}" if c.data.source == "sphere" else
            f"p={c.data.p}, rows spread over {c.data.path}, normalize={c.data.normalize}")
    lines = [f"TwoNN intrinsic dimension of {result['n']} points of {c.run.name or 'the default data'} "
             f"({what}) on {result['device']}, {result['seconds']:.1f} s"]
    for name, e in result["estimates"].items():
        lines.append(f"  {name:<6} {e['dimension']:7.2f} +- {e['error']:.2f}")
    true_d = f"  true d {result['true_d']:7d}   " if result["true_d"] is not None else "  "
    lines.append(f"{true_d}(output_dim=auto would choose {result['output_dim_auto']})")
    if with_json:
        lines.append(json.dumps({k: result[k] for k in ("n", "p", "true_d", "seconds", "estimates")}))
    return lines


def output_dim_for(dimension: float, p: int) -> int:
    """The `output_dim: auto` rule: the nearest integer to the TwoNN estimate, plus one, since a
    d-dimensional sphere needs d + 1 coordinates to keep its distances; at least 2, below p."""
    if not math.isfinite(dimension):
        raise ConfigError("config: output_dim='auto' is not allowed for these data: their TwoNN estimate is "
                          "undefined (too few distinct rows); give output_dim")
    return int(min(p - 1, max(2, round(dimension) + 1)))
