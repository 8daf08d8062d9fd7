"""What a run's config derives from its data before the checks that use them: a sphere's default
size, and, for a user's feature files (data.source=npy), p, n and the evaluation sizes read from
the files themselves. Every problem of the files is one ConfigError line, before anything is made.

Used by: loading.py (to_config), for every entry point.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import List

from bnnidr_hpc.config.schema import SPHERE_N, Config, EvalConfig
from bnnidr_hpc.config.validation import check_source
from bnnidr_hpc.data import features
from bnnidr_hpc.runtime.errors import ConfigError


def derive_from_data(config: Config) -> None:
    """Values the data decide (npy: p, n and the evaluation sizes from the files), in place."""
    check_source(config)
    if config.data.source == "npy":
        derive_features(config)
    else:
        derive_sphere(config)


def derive_sphere(c: Config) -> Config:
    """What a sphere's config derives without looking at any file (in place)."""
    if c.data.source == "sphere" and c.data.n is None:
        c.data.n = SPHERE_N
    return c


def derive_features(c: Config) -> None:
    """Fill in, from the files, what data.source=npy derives (in place): data.p, data.n (every
    training row unless given), and eval.queries / eval.gallery, shrunk to the held-out rows when
    left at their defaults. Every problem of the files is one ConfigError line."""
    data = c.data
    if data.path is None:
        raise ConfigError("config: data.path is not set: data.source=npy trains on the features in data.path, "
                          "an N x p .npy file, a glob or a list of shards")
    paths = features.expand(data.path, "data.path")
    shards = features.Shards(paths)
    # Absolute, and a glob expanded: the run names exactly the files it trained on, from any folder.
    data.path = _absolute(paths, data.path)
    if data.labels is not None:
        label_paths = features.expand(data.labels, "data.labels")
        features.read_labels(label_paths, shards.n)
        data.labels = _absolute(label_paths, data.labels)
    features.check_rows(shards)
    data.p = shards.p
    _check_heldout(data.heldout, shards.n)
    held = features.heldout_rows(data, shards.n, c.eval.queries + c.eval.gallery)
    default = EvalConfig()
    at_defaults = (c.eval.queries, c.eval.gallery) == (default.queries, default.gallery)
    if at_defaults and held < default.queries + default.gallery:
        c.eval.queries = max(1, held // 3)
        c.eval.gallery = held - c.eval.queries
    if c.eval.queries + c.eval.gallery > held or c.eval.gallery < 1:
        raise ConfigError(f"config: data.heldout={data.heldout!r} is not allowed: it holds out {held} rows, fewer "
                          f"than eval.queries + eval.gallery = {c.eval.queries} + {c.eval.gallery}; hold out more "
                          "rows or evaluate on fewer")
    data.heldout = float(held)
    available = shards.n - held
    if data.n is None:
        data.n = available
    elif isinstance(data.n, int) and data.n > available:
        raise ConfigError(f"config: data.n={data.n} is not allowed: the files hold {available} training rows "
                          f"({shards.n} rows, {held} held out)")


def _absolute(paths: List[Path], spec):
    absolute = [str(p.resolve()) for p in paths]
    return absolute[0] if isinstance(spec, str) and not glob.has_magic(spec) else absolute


def _check_heldout(value, total: int) -> None:
    if value is None:
        return
    fraction = isinstance(value, float) and 0 < value < 1
    count = not isinstance(value, bool) and isinstance(value, (int, float)) and value >= 1 and float(value).is_integer()
    if not (fraction or count) or (count and value >= total):
        raise ConfigError(f"config: data.heldout={value!r} is not allowed: a fraction in (0, 1) or a whole number "
                          f"of rows below the {total} rows of data.path")
