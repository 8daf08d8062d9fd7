"""TwoNN intrinsic-dimension estimates (Facco, d'Errico, Rodriguez and Laio, Sci. Rep. 2017).

Used by: tests (the hypersphere generator keeps its dimension), `bnnidr-hpc estimate-id`.

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

import math
from dataclasses import dataclass

import torch


def two_nearest(x: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """(N, 2) distances to each point's first and second nearest neighbour, in blocks of rows,
    so memory stays at block x N; exact duplicates are skipped (distance 0 is not a neighbour)."""
    x = x.float()
    sq = (x * x).sum(1)
    out = torch.empty(x.shape[0], 2, device=x.device)
    tiny = 1e-10 * sq.max().clamp_min(1e-30).item()
    for lo in range(0, x.shape[0], block):
        rows = x[lo:lo + block]
        d2 = sq[lo:lo + block, None] + sq[None, :] - 2.0 * rows @ x.T
        d2.clamp_min_(0.0)
        idx = torch.arange(rows.shape[0], device=x.device)
        d2[idx, idx + lo] = float("inf")  # a point is not its own neighbour
        d2[d2 <= tiny] = float("inf")  # nor is an exact duplicate
        out[lo:lo + block] = d2.topk(2, dim=1, largest=False).values.sqrt()
    return out


def log_mu(x: torch.Tensor, block: int = 2048) -> torch.Tensor:
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


def linear_fit(logs: torch.Tensor, discard: float = 0.1) -> Estimate:
    """The paper's estimator: slope through the origin of -log(1 - F_emp(mu)) vs log(mu)."""
    logs = logs.sort().values
    n = logs.numel()
    keep = int(math.floor(n * (1 - discard)))
    xs = logs[:keep]
    ys = -torch.log1p(-torch.arange(1, keep + 1, dtype=torch.float64, device=logs.device) / n)
    d = ((xs * ys).sum() / (xs * xs).sum()).item()
    residual = ys - d * xs
    error = math.sqrt((residual.square().sum() / max(keep - 1, 1) / (xs * xs).sum()).item())
    return Estimate("fit", d, error, n)


def bayes(logs: torch.Tensor, prior_shape: float = 1.0, prior_rate: float = 0.1) -> Estimate:
    """Posterior mean and standard deviation of d under a Gamma(prior_shape, prior_rate) prior."""
    n = logs.numel()
    shape, rate = prior_shape + n, prior_rate + logs.sum().item()
    return Estimate("bayes", shape / rate, math.sqrt(shape) / rate, n)


def estimate(x: torch.Tensor, method: str = "mle", block: int = 2048) -> Estimate:
    logs = log_mu(x, block)
    return {"mle": mle, "fit": linear_fit, "bayes": bayes}[method](logs)
