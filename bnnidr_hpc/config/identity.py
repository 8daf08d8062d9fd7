"""A run's identity: the values of its config that change the trained result, their hash, and the
run directory named after it (ROOT/NAME-HASH).

Used by: cli, cluster.submit, cluster.hydra_app, cluster.hydra_launcher (where a run lives), tests,
benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

from bnnidr_hpc.config.cluster_schema import ClusterConfig, SweepConfig
from bnnidr_hpc.config.schema import SPHERE_N, Config, DataConfig, RunConfig, fill_optimizer_defaults, to_dict
from bnnidr_hpc.runtime.dotted import flatten

# Groups and keys that do not change the trained result, so not the run's identity.
NOT_IDENTITY = ("run.", "cluster.", "sweep.", "eval.block")
_NO_DEFAULT = object()


def identity(c: Config) -> dict:
    """The values of c that differ from the schema's defaults and change the result, flattened
    (data.n, optimizers, ...). A key added to the schema later, at its default, adds nothing here,
    so existing run directories keep their names."""
    defaults = flatten(to_dict(fill_optimizer_defaults(Config(data=DataConfig(n=SPHERE_N)))))
    # The sections left out, at their defaults before OmegaConf converts c: its time grows with
    # their size (a cluster.setup of 200,000 lines took 120 s), and they change nothing here.
    c = dataclasses.replace(c, run=RunConfig(), cluster=ClusterConfig(), sweep=SweepConfig())

    def default(key: str):  # every optimizer's defaults are those of the one default optimizer
        return defaults.get(re.sub(r"^optimizers\.\d+\.", "optimizers.0.", key), _NO_DEFAULT)

    return {k: v for k, v in flatten(to_dict(c)).items() if not k.startswith(NOT_IDENTITY) and default(k) != v}


# Raised when a default changes what a run trains (2: loss umap and max_epochs 100, 2026-12-03;
# 3: neighbour_quantile 0.005, 2026-12-03; 4: loss graph, max_epochs 200, learning_rate 1e-3, 2026-12-06):
# the identity is the difference from the defaults, so a run directory made under the old defaults
# would otherwise pass for a run of the new ones.
DEFAULTS_VERSION = 4


def config_hash(c: Config) -> str:
    blob = json.dumps({**identity(c), "defaults_version": DEFAULTS_VERSION}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def run_dir_for(c: Config) -> Path:
    """The one place a run's directory is decided: ROOT/NAME-HASH."""
    name = c.run.name or "default"
    return Path(c.run.root).resolve() / f"{name}-{config_hash(c)}"
