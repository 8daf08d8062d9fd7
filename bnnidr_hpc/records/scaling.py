"""Scaling rows from run records: which records are read, how runs are grouped, and each group's
strong- and weak-scaling figures.

Used by: collect.py (prints the rows), benchmarks/bench_output_dim.py (group_key).

Standard library only, plus the record schema (run_record.py) and record_files.py: no torch, no
training code. Runs are grouped by everything in their config but the GPU and node counts, so groups
never mix; within a group, one row per layout, (nodes, GPUs per node): 2 nodes x 2 GPUs and 1 node x
4 GPUs are two rows of gpu 4. Strong scaling: speedup = steady epoch seconds of the group's 1-GPU
run / the row's, efficiency = speedup / GPUs. Weak scaling (n grows with the GPU count, n per GPU
fixed): efficiency = epoch seconds of the family's 1-GPU run / the row's. Without a 1-GPU run no
base is assumed: those figures are None. Failed, running, interrupted and diverged runs are kept
apart, never averaged in; so is a completed run whose n, p, d, batch size, world size or epoch time
is missing or impossible (NaN, Infinity, 0), or whose num_nodes x num_gpu is not its world size. A
bad optional figure (a NaN loss, an AP outside [0, 1], a negative AP retention) is None in the row
and not aggregated. Any file is survived: one that cannot be read (binary, truncated, too deep, a
FIFO, a dangling symlink, foreign), repeats a run already read (a copy) or was set aside by `run
--force` (RUN.replaced-DATE, unless named itself) is skipped, with why.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Dict, List, NamedTuple, Optional, Tuple

from bnnidr_hpc.records import record_files, run_record
from bnnidr_hpc.runtime.dotted import flatten

# Keys that say how a run was spread, not what it computed.
SPREAD_KEYS = ("num_gpu", "num_nodes", "run", "cluster")
MAX_DEPTH = 64  # a config nests ~3 deep; deeper data would overflow flatten's and json.dumps' recursion
IDENTITY = ("n", "p", "batch_size", "world_size")  # a table row cannot be placed without these
SET_ASIDE = ".replaced-"  # run_files.set_aside's mark: the earlier copy of a run trained again


def _finite(v) -> bool:
    """A JSON number that is finite as a float: json.loads gives NaN, Infinity, inf for 1e400, and
    ints too large for a float (bool is an int to Python, not a number here)."""
    if type(v) is float:  # the common case, first: collect checks every figure of 10,000 records
        return math.isfinite(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


# What a usable figure is; a bad optional one is shown as "-" and never aggregated.
_positive = lambda v: _finite(v) and v > 0
_count = lambda v: isinstance(v, int) and _positive(v)
_host_names = lambda v: isinstance(v, list) and bool(v) and all(isinstance(h, str) for h in v)
OPTIONAL = {"d": _count,  # None for feature files: their intrinsic dimension is not known
            "total_seconds": _positive, "first_epoch_seconds": _positive, "time_to_first_step_s": _positive,
            "samples_per_s": _positive, "samples_per_s_per_gpu": _positive, "steps_per_epoch": _count,
            # loss: graph: the k-NN graph stage of the session, 0 where its cache had the graph
            "graph_seconds": lambda v: _finite(v) and v >= 0,
            # An AP is a precision, in [0, 1]; its retention a ratio of two, >= 0 (above 1 where reduction helped).
            "final_loss": _finite, "ap_out": lambda v: _finite(v) and 0 <= v <= 1,
            "ap_retention": lambda v: _finite(v) and v >= 0,
            "hosts": _host_names}  # every rank's host name, index = rank (older records: none)
# The fields collect reads, flattens or prints; it never walks the others (the epochs history is the bulk).
USED = ("config", "run_dir", "updated_at", "status", "error", "epochs_done", "max_epochs", "steady_epoch_seconds",
        "epoch_seconds", "baselines", "num_nodes", "num_gpu", *IDENTITY, *OPTIONAL)


def _show(rec: dict, key: str) -> str:
    """key=value as the JSON says it (NaN, Infinity, "abc"), cut short, for a message."""
    if key not in rec:
        return f"{key} missing"
    text = json.dumps(rec[key])
    return f"{key}={text if len(text) <= 40 else text[:37] + '...'}"


def _ok(rec: dict, key: str):
    """An optional figure of the record, None where it is missing or unusable."""
    value = rec.get(key)
    return value if OPTIONAL[key](value) else None


def _too_deep(values: list) -> Optional[str]:
    nested = lambda vs, depth: [(v, depth) for v in vs if isinstance(v, (dict, list))]
    stack = nested(values, 1)  # (container, its depth), without recursion
    while stack:
        value, depth = stack.pop()
        if depth >= MAX_DEPTH:
            return f"not a record: JSON nested deeper than {MAX_DEPTH} levels"
        stack.extend(nested(value.values() if isinstance(value, dict) else value, depth + 1))
    return None


def read(path) -> Tuple[Optional[dict], Optional[str]]:
    """(record, None) or (None, why it was skipped), whatever the file is."""
    data, why = record_files.load(str(path))
    why = why or run_record.problem(data) or _too_deep([data.get(k) for k in USED])
    return (None, why) if why else (data, None)


def group_key(config: dict, drop=SPREAD_KEYS) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in drop}, sort_keys=True)


def _median(values):
    """The median of the values not None; None for none, or where two huge ones overflow."""
    values = [v for v in values if v is not None]
    value = statistics.median(values) if values else None
    return value if _finite(value) else None


def _ratio(a, b) -> Optional[float]:
    """a / b, None where either is missing or the quotient overflows a float."""
    try:
        value = float(a) / float(b)
    except (TypeError, OverflowError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def _epoch_time(rec: dict) -> Tuple[Optional[float], Optional[str]]:
    """(steady epoch seconds, None), the figure speedup is computed from, or (None, why there is none)."""
    if rec.get("steady_epoch_seconds") is not None:
        if _positive(rec["steady_epoch_seconds"]):
            return rec["steady_epoch_seconds"], None
        return None, f"{_show(rec, 'steady_epoch_seconds')}: not a positive finite number"
    epochs = rec.get("epoch_seconds")
    value = _median(epochs) if isinstance(epochs, list) and all(_positive(e) for e in epochs) else None
    if value is None:
        return None, f"no epoch time: steady_epoch_seconds missing and {_show(rec, 'epoch_seconds')}"
    return value, None


def _spread(rec: dict, key: str) -> Optional[int]:
    """num_nodes or num_gpu (per node) of a run: the record's, else its config's; None where neither counts."""
    return next((v for v in (rec.get(key), rec["config"].get(key)) if _count(v)), None)


def layout(rec: dict) -> Optional[Tuple[int, int]]:
    """(nodes, GPUs per node) of a run. One the record lacks follows from world_size (neither: one
    node); None where they contradict world_size."""
    world, nodes, per_node = rec["world_size"], _spread(rec, "num_nodes"), _spread(rec, "num_gpu")
    nodes = nodes or (world // per_node if per_node else 1)
    per_node = per_node or world // nodes
    return (nodes, per_node) if nodes * per_node == world else None


def left_out(rec: dict) -> Optional[str]:
    """Why a completed record cannot be a row of the table (None: it can)."""
    for key in IDENTITY:
        if not _count(rec.get(key)):
            return f"{_show(rec, key)}: not a positive integer"
    if not isinstance(rec.get("config"), dict):
        return "no config"
    if layout(rec) is None:
        return f"{_show(rec, 'num_nodes')} x {_show(rec, 'num_gpu')} per node is not {_show(rec, 'world_size')}"
    return _epoch_time(rec)[1]


def bad_fields(rec: dict) -> List[str]:
    """The optional figures present but unusable, as key=value."""
    return [_show(rec, k) for k, ok in OPTIONAL.items() if rec.get(k) is not None and not ok(rec[k])]


def _differences(configs: List[dict]) -> List[str]:
    """Per config, the flattened keys where it differs from the others: the group's label."""
    flats = [{k: json.dumps(v, sort_keys=True) for k, v in flatten(c).items()} for c in configs]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({f.get(k) for f in flats}) > 1 and k not in ("data.n", "batch_size")]
    # Keys as JSON writes them, without the quotes: a newline or an undecodable byte prints as an escape.
    return [" ".join(f"{json.dumps(k)[1:-1]}={f.get(k)}" for k in varying) for f in flats]


def _epoch_s(runs: List[dict]) -> Optional[float]:
    """The median steady epoch seconds of runs; None for no runs."""
    return _median(_epoch_time(r)[0] for r in runs)


def _by_layout(recs: List[dict]) -> Dict[Tuple[int, int], List[dict]]:
    """Runs per (nodes, GPUs per node), fewest GPUs first, then fewest nodes."""
    found: Dict[Tuple[int, int], List[dict]] = {}
    for rec in recs:
        found.setdefault(layout(rec), []).append(rec)
    return {k: found[k] for k in sorted(found, key=lambda k: (k[0] * k[1], k[0]))}


def _hosts(runs: List[dict]) -> Optional[int]:
    """The most distinct host names any of the runs' ranks ran on; None where no record lists them."""
    return max((len(set(r["hosts"])) for r in runs if _ok(r, "hosts")), default=None)


def _row(group: str, nodes_gpus: Tuple[int, int], runs: List[dict], base: Optional[float]) -> dict:
    """One row of the strong-scaling table; base = the group's 1-GPU epoch seconds (None: it has none)."""
    nodes, per_node = nodes_gpus
    epoch_s = _epoch_s(runs)
    speedup = _ratio(base, epoch_s)
    med = lambda key: _median(_ok(r, key) for r in runs)
    first = runs[0]
    return {"group": group, "n": first["n"], "p": first["p"], "d": _ok(first, "d"), "batch_size": first["batch_size"],
            "nodes": nodes, "gpus_per_node": per_node, "gpu": nodes * per_node, "hosts": _hosts(runs),
            "runs": len(runs), "epoch_s": epoch_s, "total_s": med("total_seconds"),
            "first_epoch_s": med("first_epoch_seconds"), "first_step_s": med("time_to_first_step_s"),
            "graph_s": med("graph_seconds"),
            "steps_per_epoch": _ok(first, "steps_per_epoch"), "samples_per_s": med("samples_per_s"),
            "samples_per_s_per_gpu": med("samples_per_s_per_gpu"), "speedup": speedup,
            "efficiency": _ratio(speedup, nodes * per_node), "final_loss": med("final_loss"), "ap": med("ap_out"),
            "ap_pca": _median(run_record.baseline(r, "pca") for r in runs), "ap_retention": med("ap_retention")}


def strong_scaling(recs: List[dict]) -> List[dict]:
    """Rows per group and (nodes, GPUs per node); records left_out() are not in any aggregate."""
    groups: Dict[str, List[dict]] = {}
    for rec in recs:
        if left_out(rec) is None:
            groups.setdefault(group_key(rec["config"]), []).append(rec)
    keys = sorted(groups, key=lambda k: (groups[k][0]["n"], groups[k][0]["p"], groups[k][0]["batch_size"], k))
    labels = _differences([json.loads(k) for k in keys])
    rows = []
    for index, (key, label) in enumerate(zip(keys, labels), start=1):
        by_layout = _by_layout(groups[key])
        base = _epoch_s(by_layout.get((1, 1), []))
        group = f"{index}" + (f" ({label})" if label else "")
        rows.extend(_row(group, nodes_gpus, runs, base) for nodes_gpus, runs in by_layout.items())
    return rows


def weak_scaling(recs: List[dict]) -> List[dict]:
    """Families that differ only in n and GPU count, with n per GPU fixed and 2+ GPU counts."""
    families: Dict[Tuple[str, float], List[dict]] = {}
    for rec in (r for r in recs if left_out(r) is None):
        config = dict(rec["config"])
        data = config.get("data")
        config["data"] = {k: v for k, v in data.items() if k != "n"} if isinstance(data, dict) else data
        key = (group_key(config), rec["n"] / rec["world_size"])
        families.setdefault(key, []).append(rec)
    rows = []
    index = 0
    for (_, n_per_gpu), family in sorted(families.items(), key=lambda kv: kv[0][1]):
        by_layout = _by_layout(family)
        if len(by_layout) < 2 or len({rec["n"] for rec in family}) < 2:
            continue
        index += 1
        base = _epoch_s(by_layout.get((1, 1), []))  # None: no 1-GPU run, no weak efficiency
        for (nodes, per_node), runs in by_layout.items():
            epoch_s = _epoch_s(runs)
            rows.append({"family": index, "nodes": nodes, "gpus_per_node": per_node, "gpu": nodes * per_node,
                         "n": runs[0]["n"], "n_per_gpu": n_per_gpu, "batch_size": runs[0]["batch_size"],
                         "epoch_s": epoch_s, "weak_efficiency": _ratio(base, epoch_s)})
    return rows


class Collected(NamedTuple):
    done: List[dict]  # completed records, the table's
    other: List[dict]  # not completed: listed under the table
    left_out: List[Tuple[str, str]]  # (run_dir, why) of completed records that cannot be in the table
    notes: List[Tuple[str, str]]  # (path, bad optional figures) of records in the table
    skipped: List[Tuple[str, str]]  # (path, why) of what was not read, duplicates included


def _identity(rec: dict, path: str) -> Tuple[str, str]:
    """What makes two records one run: run_dir and updated_at, which a copy keeps; else the file."""
    if rec.get("run_dir") is not None and rec.get("updated_at") is not None:
        return json.dumps([rec["run_dir"], rec["updated_at"]]), "same run_dir and updated_at"
    return os.path.realpath(path), "same file"


def collect(paths: List[str]) -> Collected:
    found, skipped = record_files.find_records(paths)
    got = Collected([], [], [], [], skipped)
    first: Dict[str, str] = {}
    named = {os.path.realpath(p) for p in paths}
    for path in found:
        folder = os.path.dirname(path)
        if SET_ASIDE in os.path.basename(folder) and os.path.realpath(folder) not in named:
            skipped.append((path, f"set aside by `run --force` (a {SET_ASIDE}* folder): a run repeated, not another"))
            continue
        rec, why = read(path)
        if rec is None:
            skipped.append((path, why))
            continue
        key, same = _identity(rec, path)
        if key in first:
            skipped.append((path, f"duplicate of {first[key]} ({same})"))
            continue
        first[key] = path
        if rec.get("run_dir") is None:
            rec["run_dir"] = os.path.dirname(path) or "."
        if not run_record.is_complete(rec):
            got.other.append(rec)
        elif why := left_out(rec):
            got.left_out.append((rec["run_dir"], why))
        else:
            got.done.append(rec)
            if bad := bad_fields(rec):
                got.notes.append((path, ", ".join(bad)))
    return got
