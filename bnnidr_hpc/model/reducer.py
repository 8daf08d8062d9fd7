"""The Reducer: an MLP from input_dim (= data.p) to output_dim, deterministic or Bayesian.

Used by: train/loop.py, benchmarks; config/validation.py (parameter names, to check optimizer
patterns before a run). The model knows nothing of the run's config: it takes a ModelSpec.

Hidden layer i (1..nlayers):  h_i = act_i(BN(W_i h_{i-1} + v_i + skip_i)),  h_0 = the input.
Output layer (nlayers + 1):   y = W_o h_nlayers + v_o + skip_o.
nlayers = 0 is the linear reducer y = W_o x + v_o (no hidden layer, no skip, no BatchNorm).
skip_steps = k >= 2 adds to layer j's pre-activation the output of hidden layer j - k (the lab's
"a skip value of 2 means layer 1 is fully connected to layer 3, and 2 to 4"): the identity where
the sizes agree, a learned linear projection where they differ.

bayesian = true makes every W and v (skip projections too) a random variable with a mean-field
Gaussian posterior N(mu, softplus(rho)^2) and prior N(0, prior_sigma^2). Training draws one
sample per step by the reparameterisation trick (w = mu + sigma * eps); `kl()` is the closed-form
KL(posterior || prior). In eval mode the model uses the posterior mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bnnidr_hpc.runtime import products

ACTIVATION_MODULES = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything that shapes the network; config.Config.model_spec() makes one from a run config."""

    input_dim: int
    hidden_sizes: Tuple[int, ...]
    activations: Tuple[str, ...]
    output_dim: int
    batch_norm: bool = False
    skip_steps: int = 0
    bayesian: bool = False
    prior_sigma: float = 1.0
    init_sigma: float = 1e-3


class BayesLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, prior_sigma: float = 1.0, init_sigma: float = 1e-3,
                 bias: bool = True):
        super().__init__()
        self.prior_sigma = prior_sigma
        rho = math.log(math.expm1(init_sigma))  # softplus(rho) = init_sigma
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_rho = nn.Parameter(torch.full((out_features, in_features), rho))
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))  # as nn.Linear
        if bias:
            bound = 1 / math.sqrt(in_features)
            self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
            self.bias_rho = nn.Parameter(torch.full((out_features,), rho))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)

    def _pairs(self):
        yield self.weight_mu, self.weight_rho
        if self.bias_mu is not None:
            yield self.bias_mu, self.bias_rho

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return products.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + F.softplus(self.weight_rho) * torch.randn_like(self.weight_mu)
        bias = None
        if self.bias_mu is not None:
            bias = self.bias_mu + F.softplus(self.bias_rho) * torch.randn_like(self.bias_mu)
        return products.linear(x, weight, bias)

    def kl(self) -> torch.Tensor:
        total = 0.0
        log_prior = math.log(self.prior_sigma)
        for mu, rho in self._pairs():
            sigma = F.softplus(rho)
            total = total + (log_prior - torch.log(sigma)
                             + (sigma**2 + mu**2) / (2 * self.prior_sigma**2) - 0.5).sum()
        return total


def _linear(spec: ModelSpec, n_in: int, n_out: int, bias: bool = True) -> nn.Module:
    if spec.bayesian:
        return BayesLinear(n_in, n_out, spec.prior_sigma, spec.init_sigma, bias)
    return products.Linear(n_in, n_out, bias)


class Reducer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        if len(spec.hidden_sizes) != len(spec.activations):  # zip below would drop layers silently
            raise ValueError(f"{len(spec.hidden_sizes)} hidden sizes but {len(spec.activations)} activations")
        self.spec = spec
        sizes: List[int] = [spec.input_dim, *spec.hidden_sizes]
        self.skip_steps = spec.skip_steps
        self.hidden = nn.ModuleList()
        for i, act in enumerate(spec.activations):
            layer = nn.Module()
            layer.linear = _linear(spec, sizes[i], sizes[i + 1])
            layer.norm = nn.BatchNorm1d(sizes[i + 1]) if spec.batch_norm else nn.Identity()
            layer.act = ACTIVATION_MODULES[act]()
            self.hidden.append(layer)
        self.output = _linear(spec, sizes[-1], spec.output_dim)
        all_sizes = sizes + [spec.output_dim]
        # skips[str(j)] feeds hidden layer j - k into layer j (1-based; j = nlayers + 1 is the output).
        self.skips = nn.ModuleDict()
        if self.skip_steps:
            for j in range(self.skip_steps + 1, len(all_sizes)):
                src, dst = all_sizes[j - self.skip_steps], all_sizes[j]
                self.skips[str(j)] = nn.Identity() if src == dst else _linear(spec, src, dst, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for j, layer in enumerate(self.hidden, start=1):
            pre = layer.linear(outs[-1])
            if str(j) in self.skips:
                pre = pre + self.skips[str(j)](outs[j - self.skip_steps])
            outs.append(layer.act(layer.norm(pre)))
        y = self.output(outs[-1])
        j = len(self.hidden) + 1
        if str(j) in self.skips:
            y = y + self.skips[str(j)](outs[j - self.skip_steps])
        return y

    def bayes_layers(self) -> List[BayesLinear]:
        return [m for m in self.modules() if isinstance(m, BayesLinear)]

    def kl(self) -> torch.Tensor:
        layers = self.bayes_layers()
        if not layers:
            return torch.zeros(())
        return sum(m.kl() for m in layers)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, mc_samples: int = 1) -> torch.Tensor:
        """Evaluation output: deterministic, the posterior mean, or the mean of posterior samples."""
        if mc_samples > 1 and self.bayes_layers():
            return torch.stack([self.sample(x) for _ in range(mc_samples)]).mean(0)
        was = self.training
        self.eval()
        try:
            return self(x)
        finally:
            self.train(was)

    @torch.no_grad()
    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """One posterior draw of the output, BatchNorm in eval mode (the posterior mean when the
        model is not Bayesian)."""
        was = self.training
        self.eval()
        try:
            for m in self.bayes_layers():
                m.training = True
            return self(x)
        finally:
            self.train(was)


def parameter_names(spec: ModelSpec) -> List[str]:
    """The parameters' names, from a model built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        return [name for name, _ in Reducer(spec).named_parameters()]
