"""Every check of a run's config, before anything is created.

Used by: loading.py (every command that loads a config).

A failed check is one line: the key, the bad value and what is allowed (ConfigError, exit status
2 at the CLI). Checks run on the loaded Config, after the optimizers' defaults are filled in.
Nothing here creates a file or folder: run.root is checked by looking at what exists.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re

from bnnidr_hpc.config.graph_checks import check_graph, writable_folder
from bnnidr_hpc.config.schema import (
    ACTIVATIONS,
    CPU_MATMUL,
    DEVICES,
    EMBEDDINGS,
    LOSSES,
    NORMALIZATIONS,
    OPTIMIZERS,
    PRECISIONS,
    RELEVANCE_MIN_UNITS,
    SCHEDULES,
    SOURCES,
    Config,
    ScheduleConfig,
)
from bnnidr_hpc.runtime.errors import ConfigError

# Every integer of the schema is a count, a size or a seed; beyond this it is a typo, and torch's
# int64 arithmetic (or int() of a Slurm value) would overflow on it.
MAX_INT = 2**31 - 1
# TwoNN fits the ratio of the two nearest neighbours' distances; below this many points the
# estimate (and so output_dim=auto) is noise.
MIN_ID_SAMPLE = 10
MAX_SETUP_LINES = 1000  # cluster.setup lines (and cluster.sbatch options)


def _fail(key: str, value, allowed: str) -> None:
    raise ConfigError(f"config: {key}={value!r} is not allowed: {allowed}")


def _positive(key: str, value, kind=int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        _fail(key, value, f"must be a positive {'integer' if kind is int else 'number'}")
    if kind is int and not isinstance(value, int):
        _fail(key, value, "must be a positive integer")


def _non_negative(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        _fail(key, value, "must be >= 0")


def _per_layer(key: str, value, nlayers: int, check) -> None:
    if isinstance(value, (list, tuple)):
        if len(value) != nlayers:
            _fail(key, list(value),
                  f"a list must have one entry per hidden layer (nlayers={nlayers}), got {len(value)}")
        for i, item in enumerate(value):
            check(f"{key}[{i}]", item)
    else:
        check(key, value)


def _activation(key: str, value) -> None:
    if value not in ACTIVATIONS:
        _fail(key, value, f"one of {', '.join(ACTIVATIONS)}")


def validate(c: Config) -> None:
    """Raise ConfigError for the first value that is not allowed."""
    _check_numbers(c, "")
    _check_data(c)
    _check_model(c)
    _check_optimisation(c)
    _check_evaluation_and_resources(c)
    check_graph(c, used=c.loss == "graph")


def _check_numbers(node, key: str) -> None:
    """Every number anywhere in the config: floats finite (NaN passes every comparison check),
    integers within MAX_INT. First, so that the range checks below see real numbers."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_numbers(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _check_numbers(item, f"{key}[{i}]")
    elif isinstance(node, dict):
        for k, item in node.items():
            _check_numbers(item, f"{key}.{k}")
    elif isinstance(node, float) and not math.isfinite(node):
        _fail(key, node, "a finite number")
    elif isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_INT:
        _fail(key, node, f"at most {MAX_INT} in size")


def check_source(c: Config) -> None:
    """What must hold before the data's derived values are filled in (loading._derive)."""
    data = c.data
    if data.source not in SOURCES:
        _fail("data.source", data.source, f"one of {', '.join(SOURCES)}")
    for key in ("queries", "gallery"):
        _positive(f"eval.{key}", getattr(c.eval, key))
    if data.n is not None:
        _positive("data.n", data.n)
    if data.source == "sphere":
        for key in ("path", "labels", "heldout"):
            if getattr(data, key) is not None:
                _fail(f"data.{key}", getattr(data, key), "only with data.source=npy (a sphere's held-out "
                      "points follow its n training points)")
        if data.normalize != "none":
            _fail("data.normalize", data.normalize, "none with data.source=sphere (its points lie on a sphere)")
    elif data.normalize not in NORMALIZATIONS:
        _fail("data.normalize", data.normalize, f"one of {', '.join(NORMALIZATIONS)}")


def _check_data(c: Config) -> None:
    data = c.data
    _positive("data.n", data.n)
    _positive("data.cache_gb", data.cache_gb, float)
    if data.source == "npy":  # the files' own checks ran when their values were derived (features.derive)
        return
    for key in ("p", "d", "categories"):
        _positive(f"data.{key}", getattr(data, key))
    if data.d >= data.p:
        _fail("data.d", data.d, f"the intrinsic dimension must be smaller than data.p={data.p}")
    _non_negative("data.noise", data.noise)
    _positive("data.spread", data.spread, float)
    _positive("data.frequency", data.frequency, float)
    if data.embedding not in EMBEDDINGS:
        _fail("data.embedding", data.embedding, f"one of {', '.join(EMBEDDINGS)}")


def _check_model(c: Config) -> None:
    """The lab's output_dim, nlayers, layer_size, act_funcs, skip_steps (batch_norm, bayesian:
    booleans, typed by the schema), and precision."""
    # nlayers=0 is the linear reducer (input -> output); layer_size and act_funcs describe no layer.
    if isinstance(c.nlayers, bool) or not isinstance(c.nlayers, int) or c.nlayers < 0:
        _fail("nlayers", c.nlayers, "an integer >= 0 (0: a linear reducer, no hidden layer)")
    _per_layer("layer_size", c.layer_size, c.nlayers, _positive)
    _per_layer("act_funcs", c.act_funcs, c.nlayers, _activation)
    if c.output_dim != "auto":
        if isinstance(c.output_dim, str):
            _fail("output_dim", c.output_dim, "a positive integer or auto")
        _positive("output_dim", c.output_dim)
        if c.output_dim >= c.input_dim:
            what = "of the features in data.path" if c.data.source == "npy" else "data.p"
            _fail("output_dim", c.output_dim, f"must be smaller than the input dimension {what}={c.input_dim}")
    if c.relevance_prior and isinstance(c.output_dim, int) and not isinstance(c.output_dim, bool):
        if c.output_dim <= RELEVANCE_MIN_UNITS:
            _fail("output_dim", c.output_dim, f"more than {RELEVANCE_MIN_UNITS} with relevance_prior=true: the "
                  f"prior turns off the units after its first {RELEVANCE_MIN_UNITS} or more, so it needs some to "
                  "turn off")
    if c.skip_steps != 0 and c.nlayers < 2:
        _fail("skip_steps", c.skip_steps, f"0: with nlayers={c.nlayers} there is no layer to skip")
    if c.skip_steps != 0 and not (isinstance(c.skip_steps, int) and 2 <= c.skip_steps <= c.nlayers):
        _fail("skip_steps", c.skip_steps, f"0 (none) or 2..nlayers={c.nlayers} (1 is the plain connection)")
    if c.batch_norm and c.nlayers and c.batch_size == 1:
        _fail("batch_norm", c.batch_norm, "false with batch_size=1: BatchNorm cannot train on one point per "
              "device (its batch variance is 0)")
    _positive("bayes.prior_sigma", c.bayes.prior_sigma, float)
    _positive("bayes.init_sigma", c.bayes.init_sigma, float)
    _non_negative("bayes.kl_weight", c.bayes.kl_weight)
    if c.precision not in PRECISIONS:
        _fail("precision", c.precision, f"one of {', '.join(PRECISIONS)}")
    if c.loss not in LOSSES:
        _fail("loss", c.loss, f"one of {', '.join(LOSSES)}")
    if not (isinstance(c.neighbour_quantile, float) and 0 < c.neighbour_quantile < 1):
        _fail("neighbour_quantile", c.neighbour_quantile, "a fraction in (0, 1) of the batch's pairs")


def _check_optimisation(c: Config) -> None:
    """The lab's batch_size, max_epochs, num_gpu, learning_rate, weight_decay, lr_schedule, optimizer(s)."""
    for key in ("batch_size", "max_epochs", "num_gpu", "num_nodes", "seed"):
        (_non_negative if key == "seed" else _positive)(key, getattr(c, key))
    if c.loss in ("stress", "umap") and c.global_batch < 2:  # loss graph's batch counts edges, not points
        _fail("batch_size", c.batch_size, f"at least 2 points per step with loss={c.loss}: the loss compares the "
              f"pairs of a step's batch (batch_size x world size {c.world_size}), and one point has none")
    if c.global_batch > c.data.n:
        _fail("batch_size", c.batch_size, f"batch_size x world size {c.world_size} = {c.global_batch} exceeds "
              f"data.n={c.data.n}; at most {c.data.n // c.world_size}")
    _positive("learning_rate", c.learning_rate, float)
    _non_negative("weight_decay", c.weight_decay)
    _check_schedule("lr_schedule", c.lr_schedule)
    if not c.optimizers:
        _fail("optimizers", [], "at least one optimizer")
    for i, opt in enumerate(c.optimizers):
        key = f"optimizers[{i}]"
        if opt.name not in OPTIMIZERS:
            _fail(f"{key}.name", opt.name, f"one of {', '.join(OPTIMIZERS)}")
        _positive(f"{key}.lr", opt.lr, float)
        _non_negative(f"{key}.weight_decay", opt.weight_decay)
        _check_moments(key, opt)
        _check_schedule(f"{key}.schedule", opt.schedule)
    validate_optimizer_patterns(c)


def _check_moments(key: str, opt) -> None:
    """Adam's two decay rates and SGD's momentum: averages of past gradients, so in [0, 1)."""
    betas = opt.betas
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        _fail(f"{key}.betas", betas, "two numbers, e.g. [0.9, 0.999]")
    for i, beta in enumerate(betas):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
            _fail(f"{key}.betas[{i}]", beta, "a number in [0, 1)")
    if isinstance(opt.momentum, bool) or not isinstance(opt.momentum, (int, float)) or not 0 <= opt.momentum < 1:
        _fail(f"{key}.momentum", opt.momentum, "a number in [0, 1)")


def _check_evaluation_and_resources(c: Config) -> None:
    for key in ("queries", "gallery", "every", "mc_samples", "block", "id_sample"):
        _positive(f"eval.{key}", getattr(c.eval, key))
    if (c.output_dim == "auto" or c.relevance_prior) and min(c.eval.id_sample, c.data.n) < MIN_ID_SAMPLE:
        key, value = ("eval.id_sample", c.eval.id_sample) if c.eval.id_sample < MIN_ID_SAMPLE else ("data.n", c.data.n)
        why = "output_dim=auto" if c.output_dim == "auto" else "relevance_prior=true"
        _fail(key, value, f"at least {MIN_ID_SAMPLE} points for {why} (TwoNN estimates the dimension "
              "from nearest-neighbour distances)")
    _check_run(c)
    cl = c.cluster
    for key in ("cpus_per_task", "timeout_min", "signal_delay_s"):
        _positive(f"cluster.{key}", getattr(cl, key))
    _non_negative("cluster.max_requeues", cl.max_requeues)
    if cl.signal_delay_s >= cl.timeout_min * 60:  # the warning would come before the job could start
        _fail("cluster.signal_delay_s", cl.signal_delay_s, f"under cluster.timeout_min x 60 = {cl.timeout_min * 60} s")
    if cl.mem_gb is not None:
        _positive("cluster.mem_gb", cl.mem_gb, float)
    for g in c.sweep.gpus:
        _positive("sweep.gpus", g)
    if cl.gpu_type is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", str(cl.gpu_type)):
        _fail("cluster.gpu_type", cl.gpu_type, "a GPU type as the cluster's gres names it, e.g. a100 or h100")
    if cl.gpu_type is not None and cl.gres_gpus is False:
        _fail("cluster.gpu_type", cl.gpu_type, "only with cluster.gres_gpus=true (a GPU type asks Slurm for GPUs)")
    if cl.python is not None and (not isinstance(cl.python, str) or not cl.python.strip()):
        _fail("cluster.python", cl.python, "an interpreter command, e.g. python or /path/to/env/bin/python")
    for k in cl.sbatch:
        if str(k).replace("_", "-") in ("gres", "gpus-per-node", "gpus", "ntasks-per-node", "nodes"):
            _fail(f"cluster.sbatch.{k}", cl.sbatch[k], "set by the toolkit from --gpus/--nodes; for a GPU type "
                  "use cluster.gpu_type")
    # A setup is a few module loads and exports; each line is written out through OmegaConf (config.yaml,
    # job.json), whose time grows with the count (200,000 lines: minutes). A long one belongs in a script.
    if len(cl.setup) > MAX_SETUP_LINES:
        _fail("cluster.setup", f"[{len(cl.setup)} lines]", f"at most {MAX_SETUP_LINES} lines; source a script "
              "for more (setup: ['source /path/setup.sh'])")
    if len(cl.sbatch) > MAX_SETUP_LINES:
        _fail("cluster.sbatch", f"{{{len(cl.sbatch)} options}}", f"at most {MAX_SETUP_LINES} options")
    # OmegaConf lets a mapping through into these; they become lines of the sbatch script.
    for i, line in enumerate(cl.setup):
        if not isinstance(line, str):
            _fail(f"cluster.setup[{i}]", line, "a shell line (a string)")
    for k, v in cl.sbatch.items():
        if not isinstance(v, (str, int, float, bool)):
            _fail(f"cluster.sbatch.{k}", v, "a string, number or true/false (an sbatch option's value)")


def _check_run(c: Config) -> None:
    r = c.run
    if r.device not in DEVICES:
        _fail("run.device", r.device, f"one of {', '.join(DEVICES)}")
    _non_negative("run.threads", r.threads)
    if r.cpu_matmul not in CPU_MATMUL:
        _fail("run.cpu_matmul", r.cpu_matmul, f"one of {', '.join(CPU_MATMUL)}")
    _check_root(r.root)
    name = r.name.strip()
    if name and (os.path.isabs(name) or "/" in name or "\\" in name or ".." in name or "\0" in name):
        _fail("run.name", r.name, f"a plain name for a folder inside run.root={r.root!r}: no '/', no '..'")
    # Keys the schema may or may not hold yet: checked when present.
    timeout = getattr(r, "rank_timeout_s", None)
    if timeout is not None:
        _positive("run.rank_timeout_s", timeout, float)
    factor = getattr(r, "diverge_factor", None)
    if factor is not None and not (isinstance(factor, (int, float)) and (factor == 0 or factor > 1)):
        _fail("run.diverge_factor", factor, "0 (stop only on a non-finite loss) or a factor > 1 of the first "
              "epoch's loss")


def _check_root(root) -> None:
    """run.root will be created (with its parents) when the run starts."""
    writable_folder("run.root", root)


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
    from bnnidr_hpc.model.reducer import parameter_names

    # The names do not depend on the output size, which "auto" leaves open until the data are seen.
    names = parameter_names(c.model_spec(output_dim=1 if c.output_dim == "auto" else None))
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
