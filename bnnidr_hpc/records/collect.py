"""Scaling tables from run records: how runtime scales over GPU counts and batch sizes.

  python tools/collect.py runs/ [--format markdown|csv|json] [--plot scaling.png]
  bnnidr-hpc collect runs/

Used by: tools/collect.py and cli.py (`bnnidr-hpc collect`), through main().

The command and its output: scaling.py reads the records and computes the rows, this module prints
them as markdown, CSV or JSON and plots them (matplotlib, for --plot). Like scaling.py it imports
nothing of the training code. The lab's columns (n, p, d, batch size, gpu, epoch runtime, total
runtime) and more; --format json and csv add hosts, how many distinct hosts a run's ranks ran on
(records with a hosts list; else empty). A group or weak-scaling family without a 1-GPU run has its
speedup and efficiency left empty (null), and one line under the table names it. Failed, running,
interrupted and diverged runs, and completed runs left out of the table, are listed under it. A bad
optional figure (a NaN loss) is shown as "-". A file that was skipped is named on stderr with why.
--format json is strict JSON (null for NaN). Exit status 1 only when no record could be read (or the
plot could not be written), 2 for a bad argument (one line, before anything is read), 141 when the
reader of the output left early (`| head`), as for a Unix tool stopped by SIGPIPE.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import signal
import sys
from typing import Dict, List, Optional, Tuple

from bnnidr_hpc.records import run_record
from bnnidr_hpc.records.scaling import collect, group_key, left_out, strong_scaling, weak_scaling

COLUMNS = ["group", "n", "p", "d", "batch_size", "nodes", "gpus_per_node", "gpu", "runs", "graph_s", "epoch_s",
           "total_s", "first_epoch_s", "first_step_s", "steps_per_epoch", "samples_per_s", "samples_per_s_per_gpu",
           "speedup", "efficiency", "final_loss", "ap", "ap_pca", "ap_retention"]
HEADERS = {"group": "group", "n": "n", "p": "p", "d": "d", "batch_size": "batch size", "nodes": "nodes",
           "gpus_per_node": "gpus/node", "gpu": "gpu",
           "runs": "runs", "graph_s": "graph (s)", "epoch_s": "epoch runtime (s)", "total_s": "total runtime (s)",
           "first_epoch_s": "first epoch (s)", "first_step_s": "first step (s)", "steps_per_epoch": "steps/epoch",
           "samples_per_s": "samples/s", "samples_per_s_per_gpu": "samples/s/gpu", "speedup": "speedup",
           "efficiency": "efficiency", "final_loss": "loss", "ap": "AP",
           "ap_pca": "PCA AP", "ap_retention": "AP retention"}
WEAK_COLUMNS = ["family", "nodes", "gpus_per_node", "gpu", "n", "n_per_gpu", "batch_size", "epoch_s", "weak_efficiency"]


def no_baseline(rows: List[dict], key: str, what: str, figures: str) -> List[str]:
    """One line per group of rows (rows[i][key] names it) without a 1-GPU row: figures left empty."""
    fewest: Dict[object, int] = {}
    for r in rows:
        fewest[r[key]] = min(r["gpu"], fewest.get(r[key], r["gpu"]))
    return [f"no 1-GPU baseline in {what} {name}: {figures} left empty, not assumed (fewest GPUs run: {gpu})"
            for name, gpu in fewest.items() if gpu > 1]


def _cell(value) -> str:
    if isinstance(value, float):
        return run_record.fmt(value, ".0f" if abs(value) >= 1000 else ".3g")
    return run_record.fmt(value, "").replace("|", "\\|")  # a "|" in a group's label would split its cell


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
    one_gpu = {r["group"]: r["epoch_s"] for r in rows if r["gpu"] == 1}  # the groups' bases
    lines: Dict[Tuple[str, int], List[dict]] = {}  # one line per group and node count
    for r in rows:
        lines.setdefault((r["group"], r["nodes"]), []).append(r)
    for (name, nodes), rs in lines.items():
        gpus = [r["gpu"] for r in rs]
        label = f"{name}: n={rs[0]['n']} p={rs[0]['p']} batch={rs[0]['batch_size']}, {nodes} node" + "s" * (nodes > 1)
        style = "o-" if nodes == 1 else "s--"
        line, = ax_t.plot(gpus, [r["epoch_s"] for r in rs], style, label=label)
        if one_gpu.get(name):
            ax_t.plot(gpus, [one_gpu[name] / g for g in gpus], ":", color=line.get_color())
        efficiency = [math.nan if r["efficiency"] is None else r["efficiency"] for r in rs]
        ax_e.plot(gpus, efficiency, style, color=line.get_color(), label=label)
    all_gpus = sorted({r["gpu"] for r in rows})
    ax_e.plot(all_gpus, [1.0] * len(all_gpus), "k:", label="ideal")
    for ax in (ax_t, ax_e):
        ax.set_xlabel("GPUs (ranks)")
        ax.set_xticks(all_gpus)
        ax.grid(alpha=0.3)
    ax_t.set_ylabel("steady epoch runtime (s)")
    ax_t.set_title("runtime (dotted: ideal, 1-GPU run / GPUs)")
    ax_e.set_ylabel("parallel efficiency")
    ax_e.set_ylim(0, max(1.1, max((r["efficiency"] or 0) for r in rows) * 1.1))
    ax_e.set_title("strong-scaling efficiency")
    ax_e.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _say(text: str, file=None) -> None:
    """text on one line, printable: an error may hold a traceback, a name a newline or undecodable bytes."""
    file = file or sys.stderr
    encoding = getattr(file, "encoding", None) or "utf-8"
    text = str(text).replace("\r", "\\r").replace("\n", "\\n")
    print(text.encode(encoding, "backslashreplace").decode(encoding), file=file)


MAX_ERROR = 300  # characters of a record's error in a listing; the record keeps it whole


def _cut(error) -> str:
    text = str(error)
    if len(text) <= MAX_ERROR:
        return text
    return f"{text[:MAX_ERROR]}... ({len(text) - MAX_ERROR} more characters in its record.json)"


def _list_apart(not_done: List[dict], left: List[Tuple[str, str]], file) -> None:
    """The runs not in the table, one line each: never averaged in."""
    if not_done or left:
        print("\nNot in the table:", file=file)
    for r in not_done:
        line = f"  {r['status']}: {r['run_dir']} (epoch {r['epochs_done']}/{r['max_epochs']})"
        _say(line + (f": {_cut(r['error'])}" if r["error"] else ""), file)
    for run_dir, why in left:
        _say(f"  completed, left out: {run_dir}: {why}", file)


def _notes(lines: List[str]) -> None:
    """Lines under a table, after a blank line."""
    if lines:
        print()
    for line in lines:
        _say(line, sys.stdout)


def _output_dim_view(recs: List[dict], fmt: str) -> int:
    from bnnidr_hpc.records import output_dim_view as view

    found = view.groups([r for r in recs if left_out(r) is None], group_key)
    if fmt == "json":
        print(json.dumps(json.loads(json.dumps(found), parse_constant=lambda _: None), indent=1, allow_nan=False))
        return 0
    for group in found:
        if fmt == "csv":
            sys.stdout.write(to_csv(group["rows"], view.COLUMNS))
            continue
        print(f"\n{group['label']}\n")
        print(markdown(group["rows"], view.COLUMNS, view.HEADERS))
        print(f"\n{view.summary(group)}")
    return 0


class _Refused(Exception):
    """A bad argument; str() is the one line shown."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage block and exit, as one line
        raise _Refused(f"collect: {message} (collect --help)")


def check_plot(path: str) -> None:
    """--plot's file, before anything is read: a format matplotlib writes, in a writable folder."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = os.path.splitext(path)[1][1:].lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise _Refused(f"collect: --plot={path!r} is not allowed: a file ending in one of "
                       f"{', '.join('.' + f for f in sorted(formats))}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise _Refused(f"collect: --plot={path!r} is not allowed: {folder} is not a writable folder")
    if os.path.isdir(path):
        raise _Refused(f"collect: --plot={path!r} is not allowed: it is a folder")


def main(argv: Optional[List[str]] = None) -> int:
    """The command: exit 0, 1 when no record could be read, 2 for a bad argument (one line)."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, where a reader that left is caught, not in the interpreter's exit
        return code
    except _Refused as exc:
        _say(str(exc))
        return 2
    except BrokenPipeError:  # `collect ... | head`: the reader left; the rest goes nowhere
        try:  # the exit's flush of stdout would fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (captured): nothing to flush there
            pass
        return 128 + signal.SIGPIPE  # what a shell reports for a tool SIGPIPE stopped


def _main(argv: Optional[List[str]]) -> int:
    parser = _Parser(prog="collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="run or sweep directories (searched for record.json)")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument("--plot", metavar="FILE.png", help="runtime and efficiency against GPU count")
    parser.add_argument("--view", choices=("scaling", "output_dim"), default="scaling",
                        help="output_dim: AP retention against output_dim, reducer beside PCA (a sweep of it)")
    ns = parser.parse_args(argv)
    if ns.plot:
        check_plot(ns.plot)

    got = collect(ns.dirs)
    for path, why in got.skipped:
        _say(f"collect: skipped {path}: {why}")
    for path, bad in got.notes:
        _say(f"collect: {path}: shown as - and not aggregated (not a usable figure): {bad}")
    if not (got.done or got.other or got.left_out):
        _say(f"collect: no readable record under {' '.join(ns.dirs)}")
        return 1
    if ns.view == "output_dim":
        return _output_dim_view(got.done, ns.format)
    rows, weak = strong_scaling(got.done), weak_scaling(got.done)
    strong_notes = no_baseline(rows, "group", "group", "speedup and efficiency")
    weak_notes = no_baseline(weak, "family", "weak-scaling family", "weak efficiency")
    not_done = [{"run_dir": r.get("run_dir"), "status": r.get("status"), "epochs_done": r.get("epochs_done"),
                 "max_epochs": r.get("max_epochs"), "error": r.get("error")} for r in got.other]
    if ns.format == "json":
        data = {"strong_scaling": rows, "weak_scaling": weak, "notes": strong_notes + weak_notes,
                "not_completed": not_done,
                "left_out": [{"run_dir": d, "why": w} for d, w in got.left_out],
                "skipped": [{"path": p, "why": w} for p, w in got.skipped]}
        # Strict JSON: json.dumps writes NaN and Infinity, which JSON has not; read back, they turn null.
        print(json.dumps(json.loads(json.dumps(data), parse_constant=lambda _: None), indent=1, allow_nan=False))
    elif ns.format == "csv":
        sys.stdout.write(to_csv(rows, COLUMNS + ["hosts"]))
        for note in strong_notes:
            _say(f"collect: {note}")
    else:
        print(markdown(rows, COLUMNS, HEADERS) if rows else "(no completed run)")
        _notes(strong_notes)
        if weak:
            print("\nWeak scaling (n per GPU fixed):\n")
            print(markdown(weak, WEAK_COLUMNS, {}))
            _notes(weak_notes)
    if ns.format != "json":
        _list_apart(not_done, got.left_out, sys.stdout if ns.format == "markdown" else sys.stderr)
    if ns.plot and rows:
        try:
            plot(rows, ns.plot)
        except OSError as exc:  # the disk filled, the folder went away
            _say(f"collect: --plot={ns.plot!r}: not written ({exc.strerror or exc})")
            return 1
        print(f"plot: {ns.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
