"""Scaling tables from run records: how runtime scales over GPU counts and batch sizes.

  python tools/collect.py runs/ [--format markdown|csv|json] [--plot scaling.png]
  bnnidr-hpc collect runs/

Reads record.json files only and imports nothing of the training code: the standard library and the
record schema (records.py, itself standard library only); matplotlib for --plot. Runs are grouped by
everything in their config but the GPU and node counts, so groups never mix; within a group, one row
per world size with the lab's columns (n, p, d, batch size, gpu, epoch runtime, total runtime) and
more. Strong scaling: speedup = steady epoch seconds on the fewest GPUs x their count / the row's,
efficiency = speedup / GPUs. Weak scaling (n grows with the GPU count, n per GPU fixed): efficiency
= epoch seconds at the fewest GPUs / the row's. Failed, running and interrupted runs are listed
under the table, never averaged in; unreadable, truncated or foreign files are named on stderr and
skipped. Exit status 1 only when no record could be read.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import records

# Keys that say how a run was spread, not what it computed.
SPREAD_KEYS = ("num_gpu", "num_nodes", "run", "cluster")

COLUMNS = ["group", "n", "p", "d", "batch_size", "gpu", "runs", "epoch_s", "total_s", "first_epoch_s",
           "first_step_s", "steps_per_epoch", "samples_per_s", "samples_per_s_per_gpu", "speedup",
           "efficiency", "final_loss", "ap", "ap_retention"]
HEADERS = {"group": "group", "n": "n", "p": "p", "d": "d", "batch_size": "batch size", "gpu": "gpu",
           "runs": "runs", "epoch_s": "epoch runtime (s)", "total_s": "total runtime (s)",
           "first_epoch_s": "first epoch (s)", "first_step_s": "first step (s)", "steps_per_epoch": "steps/epoch",
           "samples_per_s": "samples/s", "samples_per_s_per_gpu": "samples/s/gpu", "speedup": "speedup",
           "efficiency": "efficiency", "final_loss": "loss", "ap": "AP", "ap_retention": "AP retention"}
WEAK_COLUMNS = ["family", "gpu", "n", "n_per_gpu", "batch_size", "epoch_s", "weak_efficiency"]


def find_records(paths: List[str]) -> List[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("record.json")))
    return found


def read(path: Path) -> Tuple[Optional[dict], Optional[str]]:
    """(record, None) or (None, why it was skipped)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    except ValueError as exc:
        return None, f"not valid JSON (truncated?): {exc.msg} at line {exc.lineno}"
    why = records.problem(data)
    return (None, why) if why else (data, None)


def _group_key(config: dict, drop=SPREAD_KEYS) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in drop}, sort_keys=True)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _steady_epoch_seconds(rec: dict) -> Optional[float]:
    return rec.get("steady_epoch_seconds") or _median(rec.get("epoch_seconds") or [])


def _differences(configs: List[dict]) -> List[str]:
    """Per config, the flattened keys where it differs from the others: the group's label."""
    flats = [{k: json.dumps(v, sort_keys=True) for k, v in records.flatten(c).items()} for c in configs]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({f.get(k) for f in flats}) > 1 and k not in ("data.n", "batch_size")]
    return [" ".join(f"{k}={f.get(k)}" for k in varying) for f in flats]


def strong_scaling(records: List[dict]) -> List[dict]:
    groups: Dict[str, List[dict]] = {}
    for rec in records:
        groups.setdefault(_group_key(rec["config"]), []).append(rec)
    keys = sorted(groups, key=lambda k: (groups[k][0]["n"], groups[k][0]["p"], groups[k][0]["batch_size"], k))
    labels = _differences([json.loads(k) for k in keys])
    rows = []
    for index, (key, label) in enumerate(zip(keys, labels), start=1):
        by_world: Dict[int, List[dict]] = {}
        for rec in groups[key]:
            by_world.setdefault(rec["world_size"], []).append(rec)
        base_world = min(by_world)
        base_epoch = _median(_steady_epoch_seconds(r) for r in by_world[base_world])
        for world in sorted(by_world):
            runs = by_world[world]
            epoch_s = _median(_steady_epoch_seconds(r) for r in runs)
            speedup = base_epoch * base_world / epoch_s if base_epoch and epoch_s else None
            first = runs[0]
            rows.append({
                "group": f"{index}" + (f" ({label})" if label else ""),
                "n": first["n"], "p": first["p"], "d": first["d"], "batch_size": first["batch_size"],
                "gpu": world, "runs": len(runs), "epoch_s": epoch_s,
                "total_s": _median(r.get("total_seconds") for r in runs),
                "first_epoch_s": _median(r.get("first_epoch_seconds") for r in runs),
                "first_step_s": _median(r.get("time_to_first_step_s") for r in runs),
                "steps_per_epoch": first.get("steps_per_epoch"),
                "samples_per_s": _median(r.get("samples_per_s") for r in runs),
                "samples_per_s_per_gpu": _median(r.get("samples_per_s_per_gpu") for r in runs),
                "speedup": speedup, "efficiency": speedup / world if speedup else None,
                "final_loss": _median(r.get("final_loss") for r in runs),
                "ap": _median(r.get("ap_out") for r in runs),
                "ap_retention": _median(r.get("ap_retention") for r in runs),
            })
    return rows


def weak_scaling(records: List[dict]) -> List[dict]:
    """Families that differ only in n and GPU count, with n per GPU fixed and 2+ GPU counts."""
    families: Dict[Tuple[str, float], Dict[int, List[dict]]] = {}
    for rec in records:
        config = dict(rec["config"])
        config["data"] = {k: v for k, v in config.get("data", {}).items() if k != "n"}
        key = (_group_key(config), rec["n"] / rec["world_size"])
        families.setdefault(key, {}).setdefault(rec["world_size"], []).append(rec)
    rows = []
    index = 0
    for (_, n_per_gpu), by_world in sorted(families.items(), key=lambda kv: kv[0][1]):
        if len(by_world) < 2 or len({runs[0]["n"] for runs in by_world.values()}) < 2:
            continue
        index += 1
        base = _median(_steady_epoch_seconds(r) for r in by_world[min(by_world)])
        for world in sorted(by_world):
            runs = by_world[world]
            epoch_s = _median(_steady_epoch_seconds(r) for r in runs)
            rows.append({"family": index, "gpu": world, "n": runs[0]["n"], "n_per_gpu": n_per_gpu,
                         "batch_size": runs[0]["batch_size"], "epoch_s": epoch_s,
                         "weak_efficiency": base / epoch_s if base and epoch_s else None})
    return rows


def _cell(value) -> str:
    if isinstance(value, float):
        return records.fmt(value, ".0f" if abs(value) >= 1000 else ".3g")
    return records.fmt(value, "")


def markdown(rows: List[dict], columns: List[str], headers: Dict[str, str]) -> str:
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(rows: List[dict], columns: List[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot(rows: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups: Dict[str, List[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for name, rs in groups.items():
        gpus = [r["gpu"] for r in rs]
        label = f"{name}: n={rs[0]['n']} p={rs[0]['p']} batch={rs[0]['batch_size']}"
        line, = ax_t.plot(gpus, [r["epoch_s"] for r in rs], "o-", label=label)
        if rs[0]["epoch_s"]:
            ideal = [rs[0]["epoch_s"] * gpus[0] / g for g in gpus]
            ax_t.plot(gpus, ideal, ":", color=line.get_color())
        ax_e.plot(gpus, [r["efficiency"] for r in rs], "o-", color=line.get_color(), label=label)
    all_gpus = sorted({r["gpu"] for r in rows})
    ax_e.plot(all_gpus, [1.0] * len(all_gpus), "k:", label="ideal")
    for ax in (ax_t, ax_e):
        ax.set_xlabel("GPUs (ranks)")
        ax.set_xticks(all_gpus)
        ax.grid(alpha=0.3)
    ax_t.set_ylabel("steady epoch runtime (s)")
    ax_t.set_title("runtime (dotted: ideal 1/GPUs)")
    ax_e.set_ylabel("parallel efficiency")
    ax_e.set_ylim(0, max(1.1, max((r["efficiency"] or 0) for r in rows) * 1.1))
    ax_e.set_title("strong-scaling efficiency")
    ax_e.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def collect(paths: List[str]) -> Tuple[List[dict], List[dict], List[Tuple[str, str]]]:
    """(completed records, other records, skipped (path, why))."""
    done, other, skipped = [], [], []
    for path in find_records(paths):
        rec, why = read(path)
        if rec is None:
            skipped.append((str(path), why))
        elif records.is_complete(rec):
            done.append(rec)
        else:
            rec.setdefault("run_dir", str(path.parent))
            other.append(rec)
    return done, other, skipped


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="run or sweep directories (searched for record.json)")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument("--plot", metavar="FILE.png", help="runtime and efficiency against GPU count")
    ns = parser.parse_args(argv)

    done, other, skipped = collect(ns.dirs)
    for path, why in skipped:
        print(f"collect: skipped {path}: {why}", file=sys.stderr)
    if not done and not other:
        print(f"collect: no readable record under {' '.join(ns.dirs)}", file=sys.stderr)
        return 1
    rows, weak = strong_scaling(done), weak_scaling(done)
    not_done = [{"run_dir": r.get("run_dir"), "status": r.get("status"), "epochs_done": r.get("epochs_done"),
                 "max_epochs": r.get("max_epochs"), "error": r.get("error")} for r in other]
    if ns.format == "json":
        print(json.dumps({"strong_scaling": rows, "weak_scaling": weak, "not_completed": not_done,
                          "skipped": [{"path": p, "why": w} for p, w in skipped]}, indent=1))
    elif ns.format == "csv":
        sys.stdout.write(to_csv(rows, COLUMNS))
    else:
        print(markdown(rows, COLUMNS, HEADERS) if rows else "(no completed run)")
        if weak:
            print("\nWeak scaling (n per GPU fixed):\n")
            print(markdown(weak, WEAK_COLUMNS, {}))
    if not_done and ns.format != "json":
        print("\nNot in the table (not completed):", file=sys.stdout if ns.format == "markdown" else sys.stderr)
        for r in not_done:
            line = f"  {r['status']}: {r['run_dir']} (epoch {r['epochs_done']}/{r['max_epochs']})"
            print(line + (f": {r['error']}" if r["error"] else ""),
                  file=sys.stdout if ns.format == "markdown" else sys.stderr)
    if ns.plot and rows:
        plot(rows, ns.plot)
        print(f"plot: {ns.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
