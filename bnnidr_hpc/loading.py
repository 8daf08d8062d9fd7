"""Loading a run's config: a YAML file and key=value overrides, composed by Hydra onto the schema.

Used by: every command that takes CONFIG [key=value ...] (run, submit, estimate-id), hydra_app.py.

`load` is the one way in: compose (Hydra), convert to the typed Config once, fill each optimizer's
lr / weight_decay / schedule from the top-level keys, validate (validation.py). Hydra's and
OmegaConf's multi-line errors become one ConfigError line.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig, OmegaConf

from .config import SCHEMA_NAME, Config, ConfigError, fill_optimizer_defaults, register_schema
from .validation import validate


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
    """Convert once, at the entry point: optimizer defaults filled in, every value validated."""
    config = OmegaConf.to_object(cfg)
    if isinstance(config.output_dim, str) and config.output_dim.isdigit():
        config.output_dim = int(config.output_dim)
    validate(fill_optimizer_defaults(config))
    return config


def load(config_path: Optional[str], overrides: List[str]) -> Config:
    return to_config(compose(config_path, overrides))
