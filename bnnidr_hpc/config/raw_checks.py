"""Checks of a config's raw input - the YAML file, the key=value overrides, and the keys a `+key`
override adds - for what OmegaConf would convert or drop silently, and Hydra's and OmegaConf's
multi-line errors made into one ConfigError line.

Used by: config.loading (compose and to_config), config.profiles (a cluster profile's YAML).

The typed Config no longer shows a boolean given as 2 (OmegaConf makes it true) or a key added with
+key=value (OmegaConf.to_object drops it), so these are refused before conversion, against the
schema's types.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any, Iterator, List, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from bnnidr_hpc.config.schema import SCHEMA_NAME, Config
from bnnidr_hpc.runtime.errors import ConfigError

# The schema nests 4 levels (optimizers[i].schedule.name); deeper input is a mistake, and far
# deeper input overflows the recursion of the YAML and OmegaConf parsers.
MAX_DEPTH = 16
# A config holds a few hundred values. Hydra and OmegaConf take ~0.6 ms per value (a cluster.setup
# of 200,000 lines: over two minutes) before any check runs, so a size is refused before them.
MAX_CONFIG_BYTES = 1 << 20
MAX_VALUES = 10_000


def check_yaml(path: Path) -> None:
    loaded = _read_yaml(path)
    if not isinstance(loaded, dict):
        raise ConfigError(f"config: {path} must hold a mapping of keys, got {type(loaded).__name__}")
    _check_depth(f"{path}", loaded)
    defaults = loaded.get("defaults", [])
    if not isinstance(defaults, list):
        raise ConfigError(f"config: {path}: defaults={defaults!r} is not allowed: a list, "
                          f"e.g. [{SCHEMA_NAME}, _self_]")
    # The schema itself, or another config of the same folder that names it.
    bases = [d for d in defaults if isinstance(d, str) and "\0" not in d
             and (d == SCHEMA_NAME or (path.parent / f"{d}.yaml").is_file())]
    if not bases:
        raise ConfigError(f"config: {path} must start with 'defaults: [{SCHEMA_NAME}, _self_]' (or name another "
                          "config of its folder) so its keys are checked")
    _check_booleans((str(k), v) for k, v in loaded.items() if k != "defaults")


def _read_yaml(path: Path) -> Any:
    import yaml

    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config: {path} is {size} bytes: a config file is at most {MAX_CONFIG_BYTES} "
                          "(long lists, such as setup lines, belong in a script the config names)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config: {path} does not parse as YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise ConfigError(f"config: {path} nests deeper than {MAX_DEPTH} levels") from None


def _check_depth(where: str, value: Any) -> None:
    """Iterative, so that the check itself cannot overflow the stack; also bounds the values."""
    stack, seen = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH:
            raise ConfigError(f"config: {where} nests deeper than {MAX_DEPTH} levels")
        if seen > MAX_VALUES:
            raise ConfigError(f"config: {where} holds more than {MAX_VALUES} values: a config holds a few hundred "
                              "(long lists, such as setup lines, belong in a script the config names)")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)


def check_raw_overrides(overrides: List[str]) -> None:
    """Nesting and booleans on the parsed overrides; a syntax error is left to Hydra to report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in overrides:
        if o.count(",") >= MAX_VALUES:
            raise ConfigError(f"config: {o.split('=', 1)[0]}=... is not allowed: more than {MAX_VALUES} values")
        if _bracket_depth(o) > MAX_DEPTH:
            raise ConfigError(f"config: {o.split('=', 1)[0]}=... is not allowed: nests deeper than {MAX_DEPTH} levels")
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return
    for o in parsed:
        # ~key would silently put back the schema's default; an entry of a free mapping
        # (~cluster.sbatch.exclusive) may go.
        parts = o.key_or_group.split(".")
        if o.is_delete() and dataclasses.is_dataclass(_field_type(parts[:-1])):
            raise ConfigError(f"config: ~{o.key_or_group} is not allowed: the schema's keys cannot be deleted; "
                              f"set {o.key_or_group}=VALUE")
    _check_booleans((o.key_or_group, o.value()) for o in parsed if not (o.is_sweep_override() or o.is_delete()))


def _bracket_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "[{(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]})":
            depth -= 1
    return deepest


def check_profile_yaml(path: Path) -> dict:
    """A cluster profile's keys (config.profiles), checked as a config file's are."""
    loaded = _read_yaml(path)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config: cluster profile {path} must hold a mapping of cluster keys, "
                          f"got {type(loaded).__name__}")
    _check_depth(f"{path}", loaded)
    _check_booleans([("cluster", loaded)])
    return loaded


def _check_booleans(items) -> None:
    """OmegaConf turns any number into a boolean (2 -> true); the schema's booleans take
    true / false only (or an interpolation)."""
    for top, value in items:
        for key, leaf in leaves(top, value):
            if _field_type(key.split(".")) is bool and not _is_boolean(leaf):
                raise ConfigError(f"config: {key}={leaf!r} is not allowed: true or false")


def _is_boolean(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("true", "false") or "${" in value
    return isinstance(value, bool) or value is None  # None: OmegaConf refuses it for a non-Optional key


def leaves(prefix: str, value: Any) -> Iterator[Tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(f"{prefix}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(f"{prefix}.{i}", v)
    else:
        yield prefix, value


def _field_type(parts: List[str]) -> Any:
    """The schema's type at a dotted key (list items by index), or None where the schema has none."""
    tp: Any = Config
    for part in parts:
        tp = _unwrap_optional(tp)
        if dataclasses.is_dataclass(tp):
            tp = _hints(tp).get(part)
        elif typing.get_origin(tp) is list and part.isdigit():
            tp = typing.get_args(tp)[0]
        else:
            return None
    return _unwrap_optional(tp)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)  # schema.py's annotations are strings (postponed evaluation)


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp


def refuse_added_keys(cfg: DictConfig) -> None:
    """`+key=value` adds a key the schema lacks, and OmegaConf.to_object would drop it silently:
    the same refusal as for `key=value` with an unknown key."""
    stack: List[Tuple[str, Any]] = [("", cfg)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, ListConfig):
            stack.extend((f"{prefix}{i}.", node._get_node(i)) for i in range(len(node)))
        elif isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)):
            names = {f.name for f in dataclasses.fields(OmegaConf.get_type(node))}
            extra = [str(k) for k in node.keys() if k not in names]
            if extra:
                raise ConfigError(_unknown_key(prefix + extra[0]))
            stack.extend((f"{prefix}{k}.", node._get_node(k)) for k in node.keys())


def one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span lines and chain causes; the user gets the informative one."""
    texts = []
    while exc is not None:
        if isinstance(exc, RecursionError):
            return f"config: a value nests deeper than {MAX_DEPTH} levels"
        texts.extend(line.strip() for line in str(exc).splitlines() if line.strip())
        exc = exc.__cause__ or exc.__context__
    full_key = next((t.split(":", 1)[1].strip() for t in texts if t.startswith("full_key:")), "")
    unknown = next((t for t in texts if t.startswith("Key '") and " not in " in t), None)
    if unknown:
        return _unknown_key(full_key or unknown.split("'")[1])
    detail = next((t for t in texts if t.startswith(("Value '", "Invalid type", "Unsupported", "Merge error"))), None)
    if detail:
        return f"config: {full_key}: {detail}" if full_key else f"config: {detail}"
    if texts and texts[0].startswith("Error parsing override"):
        return f"config: {texts[0]} ({texts[1] if len(texts) > 1 else ''}); write overrides as key=value"
    if len(texts) > 1 and (texts[0].endswith(":") or texts[0].startswith("Error merging")):  # the reason is next
        return f"config: {texts[0]} {texts[1]}"
    return "config: " + (texts[0] if texts else "could not be composed")


def _unknown_key(key: str) -> str:
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    tp = _field_type(parent.split(".")) if parent else Config
    if not dataclasses.is_dataclass(tp):  # a free mapping (cluster.sbatch, sweep.grid) takes new keys with +
        return f"config: unknown key {key!r}; add a key to {parent} with +{key}=VALUE"
    return f"config: unknown key {key!r}; allowed here: {', '.join(f.name for f in dataclasses.fields(tp))}"
