"""The one typed schema of a run: every key with its type and default, the optimizers' defaults
filled in from the top-level ones, and the schema written out as a dict or YAML.

Used by: every command (config.loading composes and validates it, config.identity names its run
directory from it; train.loop, cluster.submit read it).

Defaults live here once. A YAML file in conf/ names this schema in its `defaults` list and
overrides only what differs; `key=value` overrides go through Hydra's compose API (config.loading),
and config.validation checks every value before anything is created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import OmegaConf

from bnnidr_hpc.config.cluster_schema import ClusterConfig, SweepConfig
from bnnidr_hpc.config.graph_schema import GraphConfig

SCHEMA_NAME = "bnnidr_schema"

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid", "identity")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine")
EMBEDDINGS = ("linear", "nonlinear", "curved")
SOURCES = ("sphere", "npy")
NORMALIZATIONS = ("none", "l2", "standardize")
SPHERE_N = 2000  # data.n of a synthetic sphere when not given
DEVICES = ("auto", "cpu", "cuda")
CPU_MATMUL = ("auto", "blas", "onednn")  # run.cpu_matmul: products.py
PRECISIONS = ("fp32", "bf16")
LOSSES = ("stress", "umap", "graph")
# The relevance prior (train/relevance.py) keeps at least this many output units on.
RELEVANCE_MIN_UNITS = 3


@dataclass
class DataConfig:
    """The training data: a synthetic hypersphere (source=sphere, README "Data") or a user's
    feature files (source=npy, README "Your own data").

    Args:
        source: sphere | npy.
        n: training points (sphere: SPHERE_N when not given; npy: every row not held out).
        p: ambient dimension; the reducer's input_dim is p (npy: read from the files).
        path: npy: the features, an N x p .npy file (float16/32/64), a glob, or a list of shards.
        labels: npy: N integer labels (.npy, same forms); without them there is no retrieval AP.
        heldout: npy: evaluation rows set aside, never trained on: a fraction (< 1) or a count
            (default: eval.queries + eval.gallery, at most a fifth of the rows).
        normalize: npy: none | l2 (each row to unit length) | standardize (per-feature mean and
            std of the training rows); applied again by `bnnidr-hpc reduce`.
        d: intrinsic dimension: points lie on the d-sphere S^d before embedding.
        categories: labelled clusters on the sphere; retrieval AP counts same-category items.
        spread: angular spread of a category around its centre (Gaussian std before projecting
            back onto the sphere); small = tight, well separated categories.
        noise: std of isotropic ambient Gaussian noise, total over all p coordinates.
        embedding: linear (an isometry into R^p), nonlinear (sine features, then an isometry: inside
            2(d+1) linear dimensions) or curved (random Fourier features spanning all of p).
        frequency: curved: std of the random frequencies; larger bends the sphere more.
        cache_gb: a data set up to this size is generated once and kept in memory; a larger one
            is regenerated chunk by chunk every epoch so no process ever holds it whole.
    """

    source: str = "sphere"
    n: Optional[int] = None
    p: int = 128
    d: int = 5
    categories: int = 10
    spread: float = 0.35
    noise: float = 0.0
    embedding: str = "linear"
    frequency: float = 6.0
    cache_gb: float = 1.0
    path: Any = None
    labels: Any = None
    heldout: Optional[float] = None
    normalize: str = "none"


@dataclass
class EvalConfig:
    """Held-out retrieval evaluation: on points that follow the training set (sphere: indices
    >= n), or on the held-out rows (npy: at their defaults, queries and gallery shrink to fit them).

    Args:
        queries: query points; each ranks the gallery by distance.
        gallery: gallery points.
        every: evaluate every this many epochs (and always after the last).
        mc_samples: Bayesian model only: average the output of this many posterior samples
            (1 = posterior mean).
        block: queries per block when computing AP, bounding memory at block x gallery.
        id_sample: training points on which output_dim=auto and relevance_prior estimate the intrinsic
            dimension.
    """

    queries: int = 500
    gallery: int = 1000
    every: int = 1
    mc_samples: int = 1
    block: int = 1024
    id_sample: int = 4000


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, a multiplier of each optimizer's lr, evaluated every step.

    Args:
        name: none | step (times gamma every step_size epochs) | cosine (to min_factor at the end).
        step_size: epochs between decays (step).
        gamma: decay factor (step).
        min_factor: final lr / initial lr (cosine).
        warmup_epochs: linear warm-up from 0 over this many epochs (fractional allowed), any name.
    """

    name: str = "none"
    step_size: int = 50
    gamma: float = 0.9
    min_factor: float = 0.0
    warmup_epochs: float = 0.0


@dataclass
class OptimizerConfig:
    """One optimizer owning the parameters whose names match `params` (a glob, e.g. "output.*").

    lr, weight_decay and schedule default to the top-level learning_rate, weight_decay and
    lr_schedule: loading.py fills them in once, so after loading they are always set.
    weight_decay is decoupled for adamw (AdamW) and an L2 penalty added to the gradient for sgd
    and adam (PyTorch's weight_decay argument).
    """

    name: str = "adamw"
    params: str = "*"
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    momentum: float = 0.9
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Optional[ScheduleConfig] = None


@dataclass
class BayesConfig:
    """Mean-field Gaussian posteriors over weights w and biases v, with a N(0, prior_sigma^2) prior.

    Args:
        prior_sigma: prior standard deviation.
        init_sigma: initial posterior standard deviation.
        kl_weight: multiplies KL / (n (n - 1)) in the loss. The objective is a mean over the
            batch's ordered pairs, and the training set has n (n - 1) of them: with 1, the loss is
            the negative ELBO per pair, exactly so for umap (a Bernoulli likelihood of every pair's
            neighbour weight); for stress, a Gaussian likelihood of the distance residuals whose
            variance is half the mean squared input distance (README, "Bayesian mode").
    """

    prior_sigma: float = 1.0
    init_sigma: float = 1e-3
    kl_weight: float = 1.0


@dataclass
class RunConfig:
    """Where and how a run is kept; none of these change the trained result.

    Args:
        root: folder holding run directories.
        name: readable prefix of the run directory (default: the config file's name).
        device: auto (cuda when present) | cpu | cuda.
        threads: CPU threads per rank (0 = PyTorch's default).
        cpu_matmul: the library of the float32 products on a CPU (products.py): auto (oneDNN on
            AMD CPUs with AVX-512, where MKL runs its slower generic kernels; blas elsewhere) |
            blas (PyTorch's own: MKL in its x86 builds) | onednn.
        graph: write the model graph to TensorBoard.
        progress: show a progress bar.
        rank_timeout_s: a rank that has not answered for this long (killed, stopped, hung in a
            collective) ends the whole run, named with its host, instead of holding the others.
        diverge_factor: the run stops as diverged when an epoch's loss exceeds this many times
            the first epoch's (0: only a non-finite loss, which always stops it).
    """

    root: str = "runs"
    name: str = ""
    device: str = "auto"
    threads: int = 0
    cpu_matmul: str = "auto"
    graph: bool = True
    progress: bool = True
    rank_timeout_s: float = 120.0
    diverge_factor: float = 100.0


@dataclass
class Config:
    """A reducer training run; the names follow the lab notes (../shared/lab-notes.txt)."""

    seed: int = 0
    # model
    output_dim: Any = 8  # the reduced size: an int, or "auto" (TwoNN estimate of the input, README)
    nlayers: int = 2  # hidden layers
    layer_size: Any = 256  # int for every hidden layer, or a list with one per layer
    act_funcs: Any = "relu"  # one name, or a list with one per hidden layer
    batch_norm: bool = False
    skip_steps: int = 0  # 0 = none; k >= 2: hidden layer i also feeds layer i+k
    bayesian: bool = False
    # a prior over how many output units are on, centred on TwoNN, that orders the units by relevance
    # and estimates in one run the smallest output_dim keeping the input's AP (relevance.py)
    relevance_prior: bool = False
    # fp32, or bf16: bfloat16 matrix products (autocast) in the network and for the input-space
    # distances: the faster matrix units of GPUs and AVX512-BF16/AMX CPUs, at bfloat16's 8-bit
    # mantissa (figures: docs/performance.md)
    precision: str = "fp32"
    # objective (docs/method.md): graph (the default): UMAP's cross-entropy on batches of the
    # training rows' k-NN graph edges with uniform negatives, plus a distance term where PCA would
    # lose nothing (graph.*); or, over every pair of the global batch, stress (metric MDS, DeepMDS)
    # or umap (parametric UMAP's cross-entropy of neighbour weights exp(-|x_i - x_j|^2 / sigma^2),
    # sigma^2 the neighbour_quantile of the squared distances among the batch's first 128 points:
    # 0.005 is about their 40 closest pairs)
    loss: str = "graph"
    neighbour_quantile: float = 0.005
    # optimisation
    batch_size: int = 100  # per device; an epoch has n // (batch_size * world size) steps
    max_epochs: int = 200  # graph on digits: held-out AP 0.78 / 0.85 / 0.87 at 100, 0.81 / 0.89 / 0.88 at 200
    learning_rate: float = 1e-3  # graph on digits at 200 epochs, 3 seeds: 4 and 8 dims 0.895 / 0.891 (3e-3: ~0.87)
    weight_decay: float = 0.0
    lr_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizers: List[OptimizerConfig] = field(default_factory=lambda: [OptimizerConfig()])
    num_gpu: int = 1  # ranks per node: one per GPU, or gloo CPU processes without a GPU
    num_nodes: int = 1  # nodes; the world size is num_nodes * num_gpu
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bayes: BayesConfig = field(default_factory=BayesConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @property
    def world_size(self) -> int:
        """Ranks of the job; train() checks that the environment it runs in agrees."""
        return self.num_nodes * self.num_gpu

    @property
    def global_batch(self) -> int:
        """Points per step over all ranks; an epoch has data.n // global_batch steps."""
        return self.batch_size * self.world_size

    @property
    def input_dim(self) -> int:
        """Derived from the data, never set by hand."""
        return self.data.p

    def hidden_sizes(self) -> List[int]:
        sizes = self.layer_size
        return list(sizes) if isinstance(sizes, (list, tuple)) else [sizes] * self.nlayers

    def activations(self) -> List[str]:
        acts = self.act_funcs
        return list(acts) if isinstance(acts, (list, tuple)) else [acts] * self.nlayers

    def model_spec(self, output_dim: Optional[int] = None):
        """The model's own description of itself (model.ModelSpec); output_dim replaces "auto"."""
        from bnnidr_hpc.model.reducer import ModelSpec

        return ModelSpec(
            input_dim=self.input_dim, hidden_sizes=tuple(self.hidden_sizes()), activations=tuple(self.activations()),
            output_dim=self.output_dim if output_dim is None else output_dim, batch_norm=self.batch_norm,
            skip_steps=self.skip_steps, bayesian=self.bayesian, prior_sigma=self.bayes.prior_sigma,
            init_sigma=self.bayes.init_sigma)


def fill_optimizer_defaults(c: Config) -> Config:
    """Each optimizer's unset lr, weight_decay and schedule become the top-level ones (in place)."""
    for opt in c.optimizers:
        if opt.lr is None:
            opt.lr = c.learning_rate
        if opt.weight_decay is None:
            opt.weight_decay = c.weight_decay
        if opt.schedule is None:
            opt.schedule = ScheduleConfig(**vars(c.lr_schedule))
    return c


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


def to_dict(c: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(c), resolve=True)


def to_yaml(c: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(c))
