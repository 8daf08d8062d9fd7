"""Nested mappings as dotted keys, one shape shared by the writer of a run's identity (config)
and its readers (records, collect): standard library only, so collect stays free of torch and
OmegaConf."""

from __future__ import annotations

from typing import Any, Dict


def flatten(d: dict, prefix: str = "") -> Dict[str, Any]:
    """{"data": {"n": 1}, "optimizers": [{"lr": 0.1}]} -> {"data.n": 1, "optimizers.0.lr": 0.1}:
    mappings and lists of mappings are opened; other lists and values are leaves."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, list) and v and all(isinstance(item, dict) for item in v):
            v = {str(i): item for i, item in enumerate(v)}
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
