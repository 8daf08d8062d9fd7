"""The one typed schema of a run, how it is loaded, and its validation.

Used by:  bnnidr-hpc run [CONFIG] [key=value ...]   (and submit, estimate-id)

Defaults live here once. A YAML file in conf/ names this schema in its `defaults` list and
overrides only what differs; `key=value` overrides go through Hydra's compose API. Every check
runs before anything is created, and a failed check is one line: the key, the bad value and
what is allowed (`ConfigError`, exit status 2 at the CLI).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

SCHEMA_NAME = "bnnidr_schema"

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid", "identity")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine")
EMBEDDINGS = ("linear", "nonlinear")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


class ConfigError(ValueError):
    """A config value that is not allowed; str() is the one line shown to the user."""


@dataclass
class DataConfig:
    """Synthetic hypersphere data (see README, "Data").

    Args:
        n: training points.
        p: ambient dimension; the reducer's input_dim is p.
        d: intrinsic dimension: points lie on the d-sphere S^d before embedding.
        categories: labelled clusters on the sphere; retrieval AP counts same-category items.
        spread: angular spread of a category around its centre (Gaussian std before projecting
            back onto the sphere); small = tight, well separated categories.
        noise: std of isotropic ambient Gaussian noise, total over all p coordinates.
        embedding: linear (an isometry into R^p) or nonlinear (sine features, then an isometry).
        cache_gb: a data set up to this size is generated once and kept in memory; a larger one
            is regenerated chunk by chunk every epoch so no process ever holds it whole.
    """

    n: int = 2000
    p: int = 128
    d: int = 5
    categories: int = 10
    spread: float = 0.35
    noise: float = 0.0
    embedding: str = "linear"
    cache_gb: float = 1.0


@dataclass
class EvalConfig:
    """Held-out retrieval evaluation, on points that follow the training set (indices >= n).

    Args:
        queries: query points; each ranks the gallery by distance.
        gallery: gallery points.
        every: evaluate every this many epochs (and always after the last).
        mc_samples: Bayesian model only: average the output of this many posterior samples
            (1 = posterior mean).
        block: queries per block when computing AP, bounding memory at block x gallery.
        id_sample: training points on which output_dim=auto estimates the intrinsic dimension.
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
    lr_schedule. weight_decay is decoupled for adamw (AdamW) and an L2 penalty added to the
    gradient for sgd and adam (PyTorch's weight_decay argument).
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
        kl_weight: multiplies KL / n_train in the loss (1 = the per-sample ELBO).
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
        graph: write the model graph to TensorBoard.
        progress: show a progress bar.
    """

    root: str = "runs"
    name: str = ""
    device: str = "auto"
    threads: int = 0
    graph: bool = True
    progress: bool = True


@dataclass
class ClusterConfig:
    """Slurm resources for `bnnidr-hpc submit`: a profile conf/cluster/NAME.yaml, chosen with
    cluster=NAME. None of these change the trained result.

    Args:
        name: the profile's name.
        partition, account, qos, constraint: passed to sbatch when set.
        gres_gpus: ask Slurm for num_gpu GPUs per node (false: CPU-only partitions, gloo ranks).
        cpus_per_task: CPU cores per rank (data generation and the loader run there).
        mem_gb: memory per node (None: the partition's default).
        timeout_min: the job's time limit; the job checkpoints and requeues itself before it.
        signal_delay_s: Slurm sends the warning signal (USR2) this long before the time limit.
        max_requeues: times a job may requeue itself after a time-out or preemption.
        setup: shell lines run before the ranks start (module load ..., export NCCL_...=...).
        sbatch: further sbatch options, e.g. {exclusive: true, mail-type: END}.
    """

    name: str = "local"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    gres_gpus: bool = True
    cpus_per_task: int = 1
    mem_gb: Optional[float] = None
    timeout_min: int = 60
    signal_delay_s: int = 90
    max_requeues: int = 3
    setup: List[str] = field(default_factory=list)
    sbatch: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """A study that `bnnidr-hpc submit CONFIG` runs when the command line does not say otherwise.

    Args:
        gpus: GPU counts, one job (array) each, unless --gpus is given.
        grid: key -> comma list (Hydra's sweep syntax), e.g. {batch_size: "128,256"}, unless the
            command line overrides that key.
    """

    gpus: List[int] = field(default_factory=list)
    grid: Dict[str, str] = field(default_factory=dict)


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
    # fp32, or bf16: bfloat16 matrix products (autocast) in the network and for the input-space
    # distances; about 4x the matrix rate on GPUs and AVX512-BF16/AMX CPUs, distances to ~0.3 %
    precision: str = "fp32"
    # optimisation
    batch_size: int = 100  # per device; an epoch has n // (batch_size * world size) steps
    max_epochs: int = 20
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    lr_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizers: List[OptimizerConfig] = field(default_factory=lambda: [OptimizerConfig()])
    num_gpu: int = 1  # ranks per node: one per GPU, or gloo CPU processes without a GPU
    num_nodes: int = 1  # nodes; the world size is num_nodes * num_gpu
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bayes: BayesConfig = field(default_factory=BayesConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.num_gpu

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

    def optimizer_setting(self, opt: OptimizerConfig, key: str):
        """An optimizer's own lr/weight_decay/schedule, else the top-level one."""
        own = getattr(opt, key)
        top = {"lr": self.learning_rate, "weight_decay": self.weight_decay,
               "schedule": self.lr_schedule}[key]
        return top if own is None else own


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


# ----------------------------------------------------------------------------- loading

def compose(config_path: Optional[str], overrides: List[str]) -> DictConfig:
    """Compose CONFIG (a YAML path, or None for the built-in default) with key=value overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schema()
    if config_path is None:
        conf_dir, name = _builtin_conf_dir(), SCHEMA_NAME
    else:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config: no such file {config_path!r} (give a YAML file, e.g. conf/hps_00040.yaml)")
        _check_yaml(path)
        conf_dir, name = str(path.resolve().parent), path.stem
    # cluster=NAME picks the profile conf/cluster/NAME.yaml (a Hydra group merged onto the schema).
    for o in overrides:
        if o.startswith("cluster="):
            profiles = sorted(p.stem for p in Path(conf_dir, "cluster").glob("*.yaml"))
            if o.split("=", 1)[1] not in profiles:
                raise ConfigError(f"config: cluster={o.split('=', 1)[1]!r} is not allowed: a profile in "
                                  f"{conf_dir}/cluster/, one of {', '.join(profiles) or '(none there)'}")
    overrides = [f"+{o}" if o.startswith("cluster=") else o for o in overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            cfg = hydra_compose(config_name=name, overrides=list(overrides))
    except Exception as exc:  # Hydra/OmegaConf errors are multi-line; the user gets one line
        raise ConfigError(_one_line(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    if config_path is not None and not cfg.run.name:
        cfg.run.name = Path(config_path).stem
    return cfg


def _builtin_conf_dir() -> str:
    """Where the built-in default looks for groups (cluster/): the checkout's conf/ when there is
    one; else an empty folder, since the default config itself is the schema in the ConfigStore."""
    checkout = Path(__file__).resolve().parents[1] / "conf"
    if checkout.is_dir():
        return str(checkout)
    path = Path(__file__).parent / "_conf"
    path.mkdir(exist_ok=True)
    return str(path)


def _check_yaml(path: Path) -> None:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config: {path} does not parse as YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config: {path} must hold a mapping of keys, got {type(loaded).__name__}")
    defaults = loaded.get("defaults", [])
    # The schema itself, or another config of the same folder that names it.
    bases = [d for d in defaults if isinstance(d, str) and (d == SCHEMA_NAME or (path.parent / f"{d}.yaml").exists())]
    if not bases:
        raise ConfigError(f"config: {path} must start with 'defaults: [{SCHEMA_NAME}, _self_]' (or name another "
                          "config of its folder) so its keys are checked")


def _one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span lines and chain causes; the user gets the informative one."""
    texts = []
    while exc is not None:
        texts.extend(line.strip() for line in str(exc).splitlines() if line.strip())
        exc = exc.__cause__ or exc.__context__
    full_key = next((t.split(":", 1)[1].strip() for t in texts if t.startswith("full_key:")), "")
    unknown = next((t for t in texts if t.startswith("Key '") and " not in " in t), None)
    if unknown:
        key = full_key or unknown.split("'")[1]
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        return f"config: unknown key {key!r}; allowed here: {', '.join(_allowed_keys(parent))}"
    detail = next((t for t in texts if t.startswith(("Value '", "Invalid type", "Unsupported"))), None)
    if detail and full_key:
        return f"config: {full_key}: {detail}"
    if texts and texts[0].startswith("Error parsing override"):
        return f"config: {texts[0]} ({texts[1] if len(texts) > 1 else ''}); write overrides as key=value"
    return "config: " + (texts[0] if texts else "could not be composed")


def _allowed_keys(parent: str) -> List[str]:
    node = OmegaConf.structured(Config)
    for part in filter(None, parent.split(".")):
        node = node[part] if part in node else node
    return list(node.keys()) if isinstance(node, DictConfig) else []


def to_config(cfg: DictConfig) -> Config:
    """Convert once, at the entry point, and validate."""
    config = OmegaConf.to_object(cfg)
    if isinstance(config.output_dim, str) and config.output_dim.isdigit():
        config.output_dim = int(config.output_dim)
    validate(config)
    return config


def load(config_path: Optional[str], overrides: List[str]) -> Config:
    return to_config(compose(config_path, overrides))


# ----------------------------------------------------------------------------- validation

def _fail(key: str, value, allowed: str) -> None:
    raise ConfigError(f"config: {key}={value!r} is not allowed: {allowed}")


def _positive(key: str, value, kind=int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        _fail(key, value, f"must be a positive {'integer' if kind is int else 'number'}")
    if kind is int and not isinstance(value, int):
        _fail(key, value, "must be a positive integer")


def _non_negative(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        _fail(key, value, "must be >= 0")


def _per_layer(key: str, value, nlayers: int, check) -> None:
    if isinstance(value, (list, tuple)):
        if len(value) != nlayers:
            _fail(key, list(value), f"a list must have one entry per hidden layer (nlayers={nlayers}), got {len(value)}")
        for i, item in enumerate(value):
            check(f"{key}[{i}]", item)
    else:
        check(key, value)


def _activation(key: str, value) -> None:
    if value not in ACTIVATIONS:
        _fail(key, value, f"one of {', '.join(ACTIVATIONS)}")


def validate(c: Config) -> None:
    data = c.data
    for key in ("n", "p", "d", "categories"):
        _positive(f"data.{key}", getattr(data, key))
    if data.d >= data.p:
        _fail("data.d", data.d, f"the intrinsic dimension must be smaller than data.p={data.p}")
    _non_negative("data.noise", data.noise)
    _positive("data.spread", data.spread, float)
    _positive("data.cache_gb", data.cache_gb, float)
    if data.embedding not in EMBEDDINGS:
        _fail("data.embedding", data.embedding, f"one of {', '.join(EMBEDDINGS)}")

    _positive("nlayers", c.nlayers)
    _per_layer("layer_size", c.layer_size, c.nlayers, _positive)
    _per_layer("act_funcs", c.act_funcs, c.nlayers, _activation)
    if c.output_dim != "auto":
        if isinstance(c.output_dim, str):
            _fail("output_dim", c.output_dim, "a positive integer or auto")
        _positive("output_dim", c.output_dim)
        if c.output_dim >= c.input_dim:
            _fail("output_dim", c.output_dim, f"must be smaller than the input dimension data.p={c.input_dim}")
    if c.skip_steps != 0 and not (isinstance(c.skip_steps, int) and 2 <= c.skip_steps <= c.nlayers):
        _fail("skip_steps", c.skip_steps, f"0 (none) or 2..nlayers={c.nlayers} (1 is the plain connection)")

    for key in ("batch_size", "max_epochs", "num_gpu", "num_nodes", "seed"):
        (_non_negative if key == "seed" else _positive)(key, getattr(c, key))
    global_batch = c.batch_size * c.world_size
    if global_batch > data.n:
        _fail("batch_size", c.batch_size, f"batch_size x world size {c.world_size} = {global_batch} exceeds "
              f"data.n={data.n}; at most {data.n // c.world_size}")
    _positive("learning_rate", c.learning_rate, float)
    _non_negative("weight_decay", c.weight_decay)
    _check_schedule("lr_schedule", c.lr_schedule)

    if not c.optimizers:
        _fail("optimizers", [], "at least one optimizer")
    for i, opt in enumerate(c.optimizers):
        key = f"optimizers[{i}]"
        if opt.name not in OPTIMIZERS:
            _fail(f"{key}.name", opt.name, f"one of {', '.join(OPTIMIZERS)}")
        if opt.lr is not None:
            _positive(f"{key}.lr", opt.lr, float)
        if opt.weight_decay is not None:
            _non_negative(f"{key}.weight_decay", opt.weight_decay)
        if opt.schedule is not None:
            _check_schedule(f"{key}.schedule", opt.schedule)

    ev = c.eval
    for key in ("queries", "gallery", "every", "mc_samples", "block", "id_sample"):
        _positive(f"eval.{key}", getattr(ev, key))
    _positive("bayes.prior_sigma", c.bayes.prior_sigma, float)
    _positive("bayes.init_sigma", c.bayes.init_sigma, float)
    _non_negative("bayes.kl_weight", c.bayes.kl_weight)
    if c.precision not in PRECISIONS:
        _fail("precision", c.precision, f"one of {', '.join(PRECISIONS)}")
    if c.run.device not in DEVICES:
        _fail("run.device", c.run.device, f"one of {', '.join(DEVICES)}")
    _non_negative("run.threads", c.run.threads)
    cl = c.cluster
    for key in ("cpus_per_task", "timeout_min", "signal_delay_s"):
        _positive(f"cluster.{key}", getattr(cl, key))
    _non_negative("cluster.max_requeues", cl.max_requeues)
    if cl.mem_gb is not None:
        _positive("cluster.mem_gb", cl.mem_gb, float)
    for g in c.sweep.gpus:
        _positive("sweep.gpus", g)
    validate_optimizer_patterns(c)


def _check_schedule(key: str, s: ScheduleConfig) -> None:
    if s.name not in SCHEDULES:
        _fail(f"{key}.name", s.name, f"one of {', '.join(SCHEDULES)}")
    _positive(f"{key}.step_size", s.step_size)
    _positive(f"{key}.gamma", s.gamma, float)
    _non_negative(f"{key}.warmup_epochs", s.warmup_epochs)
    if not 0 <= s.min_factor <= 1:
        _fail(f"{key}.min_factor", s.min_factor, "a number from 0 to 1")


def validate_optimizer_patterns(c: Config) -> None:
    """Every parameter belongs to exactly one optimizer; checked on the names the model will have."""
    from .model import parameter_names

    names = parameter_names(c)
    owner: dict = {}
    for i, opt in enumerate(c.optimizers):
        matched = [n for n in names if fnmatch.fnmatchcase(n, opt.params)]
        if not matched:
            _fail(f"optimizers[{i}].params", opt.params,
                  f"matches no parameter; names are like {', '.join(names[:4])}, ...")
        for n in matched:
            if n in owner:
                _fail(f"optimizers[{i}].params", opt.params,
                      f"parameter {n!r} is already owned by optimizers[{owner[n]}]; each belongs to one optimizer")
            owner[n] = i
    orphans = [n for n in names if n not in owner]
    if orphans:
        _fail("optimizers", [o.params for o in c.optimizers],
              f"parameters {', '.join(orphans[:3])} belong to no optimizer; add a pattern that matches them")


# ----------------------------------------------------------------------------- identity

def to_dict(c: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(c), resolve=True)


def to_yaml(c: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(c))


def config_hash(c: Config) -> str:
    """Short hash of everything that changes the result (not `run`, `cluster`, `sweep`, eval.block)."""
    values = to_dict(c)
    for group in ("run", "cluster", "sweep"):
        values.pop(group)
    values["eval"].pop("block")
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def run_dir_for(c: Config) -> Path:
    """The one place a run's directory is decided: ROOT/NAME-HASH."""
    name = c.run.name or "default"
    return Path(c.run.root).resolve() / f"{name}-{config_hash(c)}"
