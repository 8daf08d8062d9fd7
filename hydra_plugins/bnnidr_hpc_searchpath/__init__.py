"""Hydra finds bnnidr-hpc's launcher configs (hydra/launcher=bnnidr_slurm, bnnidr_local) with any
--config-dir: this plugin puts the folder the package ships them in (bnnidr_hpc/cluster/hydra_conf/)
on Hydra's config search path. Hydra searches a --config-dir after the plugins' folders, so these
two names are the package's; the folder holds nothing else.

Used by: Hydra, which imports every module under the `hydra_plugins` namespace package when it
starts (as it finds hydra-submitit-launcher). bnnidr_hpc never imports this package; this one
finds bnnidr_hpc's folder without importing it, so Hydra's start pays nothing for it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def launcher_conf_dir() -> Path:
    spec = importlib.util.find_spec("bnnidr_hpc")
    return Path(list(spec.submodule_search_locations)[0]) / "cluster" / "hydra_conf"


class BnnidrHpcSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="bnnidr-hpc", path=f"file://{launcher_conf_dir()}")
