"""Where a cluster profile is found, and what it holds: `cluster=NAME` or `cluster=PATH` on the
command line picks a YAML file of ClusterConfig's keys.

Used by: config.loading (compose merges the profile onto the schema's `cluster:` section).

A shared, read-only install must not be edited to describe a user's cluster, so profiles are
looked for outside the checkout too. The search order (docs/slurm.md):
  1. a path: `cluster=/path/my_cluster.yaml` (or any value with a `/` or ending .yaml/.yml);
  2. `cluster/NAME.yaml` beside the config file (the built-in default: none);
  3. `$BNNIDR_CLUSTER_DIR/NAME.yaml`, else `~/.config/bnnidr-hpc/cluster/NAME.yaml`;
  4. the checkout's `conf/cluster/NAME.yaml` (local, local_gpu, example_a100 ...), where there is one.
Without `cluster=` no profile is read: the schema's defaults, named BUILTIN.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional

from bnnidr_hpc.config.raw_checks import check_profile_yaml
from bnnidr_hpc.runtime.errors import ConfigError

ENV_DIR = "BNNIDR_CLUSTER_DIR"
# The name of the schema's own cluster section (no profile): the cluster's default partition,
# GPUs asked only where that partition has them (cluster.gres_gpus unset).
BUILTIN = "builtin"


def search_dirs(conf_dir: Optional[str]) -> List[Path]:
    """The folders a profile NAME is looked for in, first match wins (steps 2-4 above)."""
    env = os.environ.get(ENV_DIR)
    dirs = [Path(conf_dir) / "cluster"] if conf_dir else []
    dirs.append(Path(env).expanduser() if env else Path.home() / ".config" / "bnnidr-hpc" / "cluster")
    checkout = Path(__file__).resolve().parents[2] / "conf" / "cluster"
    if checkout.is_dir():
        dirs.append(checkout)
    unique: List[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def find_profile(conf_dir: Optional[str], value: str) -> Path:
    """The profile file `cluster=value` names, or one ConfigError line saying where it was looked for."""
    if "/" in value or value.endswith((".yaml", ".yml")):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"config: cluster={value!r} is not allowed: no such profile file "
                              "(give a YAML file of cluster keys, or a profile NAME)")
        return path.resolve()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ConfigError(f"config: cluster={value!r} is not allowed: a profile NAME (letters, digits, _.-) "
                          "or a path to a profile YAML")
    dirs = search_dirs(conf_dir)
    for d in dirs:
        if (d / f"{value}.yaml").is_file():
            return (d / f"{value}.yaml").resolve()
    names = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(f"config: cluster={value!r} is not allowed: no {value}.yaml in "
                      f"{', '.join(str(d) for d in dirs)} (profiles there: {', '.join(names) or 'none'}; "
                      f"or give a path, or set ${ENV_DIR})")


def profile_node(path: Path):
    """The profile as the `cluster` group's node: its keys, its name (the file's stem unless it
    says one) and the file it came from, which messages name."""
    from omegaconf import OmegaConf

    loaded = check_profile_yaml(path)
    node = OmegaConf.create(loaded)
    if not str(node.get("name") or "").strip():
        node.name = path.stem
    node.profile_path = str(path)
    return node
