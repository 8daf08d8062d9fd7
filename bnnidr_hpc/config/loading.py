"""Loading a run's config: a YAML file and key=value overrides, composed by Hydra onto the schema.

Used by: every command that takes CONFIG [key=value ...] (run, submit, estimate-id), cluster.hydra_app,
cluster.hydra_launcher.

`load` is the one way in: compose (Hydra), resolve interpolations, convert to the typed Config
once, fill each optimizer's lr / weight_decay / schedule from the top-level keys, validate
(config.validation). The raw YAML and overrides are checked first (config.raw_checks), and every
error leaves as one ConfigError line.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from bnnidr_hpc.config.derive import derive_from_data
from bnnidr_hpc.config.profiles import find_profile, profile_node
from bnnidr_hpc.config.raw_checks import (
    check_raw_overrides,
    check_yaml,
    leaves,
    one_line,
    refuse_added_keys,
)
from bnnidr_hpc.config.schema import SCHEMA_NAME, Config, fill_optimizer_defaults, register_schema
from bnnidr_hpc.config.validation import validate
from bnnidr_hpc.runtime.errors import ConfigError

# A config file not named *.yaml is composed from Hydra's ConfigStore under this name (Hydra
# finds primary configs by NAME.yaml only); nothing is written next to the file.
_STORED_PRIMARY = "_bnnidr_primary_config"
# The cluster profile cluster=NAME|PATH found (config.profiles), stored in the `cluster` group
# under this name wherever the file lives.
_STORED_PROFILE = "_bnnidr_cluster_profile"


def compose(config_path: Optional[str], overrides: List[str]) -> DictConfig:
    """Compose CONFIG (a YAML path, or None for the built-in default) with key=value overrides."""
    try:
        return _compose(config_path, overrides)
    except ConfigError as exc:
        raise ConfigError(_single(str(exc))) from None


def _compose(config_path: Optional[str], overrides: List[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _register_schema()
    check_raw_overrides(overrides)
    if config_path is None:
        conf_dir, name = _builtin_conf_dir(), SCHEMA_NAME
    else:
        conf_dir, name = _primary(config_path)
    overrides = _with_profile(conf_dir, overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            cfg = hydra_compose(config_name=name, overrides=list(overrides))
    except Exception as exc:  # Hydra/OmegaConf errors are multi-line; the user gets one line
        raise ConfigError(one_line(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    refuse_added_keys(cfg)
    _resolve(cfg)
    if config_path is not None and not (cfg.run.name or "").strip():
        cfg.run.name = Path(config_path).stem
    return cfg


def _with_profile(conf_dir: str, overrides: List[str]) -> List[str]:
    """cluster=NAME|PATH becomes the stored profile, merged after the config's own keys (as a
    `+group=option` is) and before any cluster.KEY=VALUE override."""
    from hydra.core.config_store import ConfigStore

    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("cluster=")]
    rest = [o for o in overrides if not o.startswith("cluster=")]
    if not chosen:
        return rest
    if len(chosen) > 1:
        raise ConfigError(f"config: cluster= is given {len(chosen)} times ({', '.join(chosen)}); give one profile")
    node = profile_node(find_profile(conf_dir, chosen[0]))
    ConfigStore.instance().store(group="cluster", name=_STORED_PROFILE, node=node)
    return [f"+cluster={_STORED_PROFILE}", *rest]


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    if f"{SCHEMA_NAME}.yaml" not in ConfigStore.instance().repo:  # storing converts the dataclass (~10 ms)
        register_schema()


def _primary(config_path: str) -> Tuple[str, str]:
    """The folder Hydra searches (for a base config named in `defaults`, and cluster/) and the
    primary config's name there."""
    from hydra.core.config_store import ConfigStore

    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"config: no such file {config_path!r} (give a YAML file, e.g. conf/hps_00040.yaml)")
    check_yaml(path)
    conf_dir = str(path.resolve().parent)
    if path.suffix == ".yaml":
        return conf_dir, path.stem
    try:
        node = OmegaConf.load(path)  # Hydra's own YAML reading, so values type as they would from a file
    except Exception as exc:
        raise ConfigError(one_line(exc)) from None
    ConfigStore.instance().store(name=_STORED_PRIMARY, node=node)
    return conf_dir, _STORED_PRIMARY


def _builtin_conf_dir() -> str:
    """Where the built-in default looks for groups (cluster/): the checkout's conf/ when there is
    one; else the package's own folder (no YAML, no cluster/ there), since the default config
    itself is the schema in the ConfigStore, and nothing may be created before validation. (This
    folder, config/, has no group folders; the package's root has cluster/, a Python package.)"""
    checkout = Path(__file__).resolve().parents[2] / "conf"
    return str(checkout if checkout.is_dir() else Path(__file__).resolve().parent)


def _resolve(cfg: DictConfig) -> None:
    """Interpolations (${key}, ${oc.env:VAR}) are resolved once, here: one that fails is one line
    naming its key, instead of a traceback wherever the value is first read."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    for key, value in leaves("", raw):
        if isinstance(value, str) and "${" in value:
            try:
                OmegaConf.select(cfg, key[1:], throw_on_resolution_failure=True)
            except Exception as exc:
                raise ConfigError(f"config: {key[1:]}={value!r} is not allowed: an interpolation that resolves "
                                  f"({_first_line(exc)})") from None
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:
        raise ConfigError(one_line(exc)) from None
    # An escaped \${...} resolves to the text ${...}, which OmegaConf would try to resolve again
    # wherever it is read.
    for key, value in leaves("", OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, str) and "${" in value:
            raise ConfigError(f"config: {key[1:]}={value!r} is not allowed: no '${{' in a value")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _single(text: str) -> str:
    """The CLI's contract is one line, whatever a value or a path holds."""
    return " ".join(line for line in text.splitlines() if line.strip())


def to_config(cfg: DictConfig) -> Config:
    """Convert once, at the entry point: optimizer defaults filled in, every value validated."""
    try:
        config = OmegaConf.to_object(cfg)
    except Exception as exc:  # a missing value (???), or an interpolation hydra_app left unresolved
        raise ConfigError(one_line(exc)) from None
    if isinstance(config.output_dim, str) and config.output_dim.isdigit():
        config.output_dim = int(config.output_dim)
    if isinstance(config.run.name, str):
        config.run.name = config.run.name.strip()  # blank means the default name
    try:
        derive_from_data(config)
        validate(fill_optimizer_defaults(config))
    except ConfigError as exc:
        raise ConfigError(_single(str(exc))) from None
    return config


def load(config_path: Optional[str], overrides: List[str]) -> Config:
    return to_config(compose(config_path, overrides))


def from_dict(data: dict) -> Config:
    """A resolved config saved as a mapping (job.json, sweep.json), checked again."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), data)
    except Exception as exc:  # noqa: BLE001 - OmegaConf's validation errors
        raise ConfigError(_single(f"saved config: {exc}")) from None
    return to_config(merged)
