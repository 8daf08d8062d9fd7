"""The one schema of a run's record.json, for the writer and every reader: what a record holds,
how training builds and updates it, and how readers judge and show it.

Used by: train/ (start_record, graph_fields, update_record, the statuses), cluster/job.py (mark_failed),
cluster/planning.py and cluster/submit.py (code_state names the frozen code), cluster/status.py,
cluster/hydra_app.py, cluster/hydra_launcher.py, reduce/apply.py, collect's scaling.py, collect.py
and output_dim_view.py, summary.py, cli.py. Standard library only at import time, no training code
(versions() imports torch when a run starts), so collect can read records through it. The files
themselves (where record.json lives, how it is written) are run_files.py's.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

from bnnidr_hpc.records.run_files import RECORD, read_record, write_json

if TYPE_CHECKING:  # for type hints only: config is not imported at run time, so collect stays standard library only
    from bnnidr_hpc.config.schema import Config

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # bnnidr_hpc/, the code a job runs
SCHEMA = "bnnidr-hpc/record/1"  # readers take records of this schema only

# Statuses a record can hold.
RUNNING, COMPLETED, FAILED, INTERRUPTED, DIVERGED = "running", "completed", "failed", "interrupted", "diverged"
# How Slurm ended a job before its run did (cluster/slurm_end.py): the time limit, scancel, a node
# lost, preemption, the OOM killer. The checkpoint is kept; submitting again resumes.
TIMEOUT, CANCELLED, NODE_FAIL = "timeout", "cancelled", "node_fail"
PREEMPTED, OUT_OF_MEMORY = "preempted", "out_of_memory"
ENDED_BY_SLURM = (TIMEOUT, CANCELLED, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY)


def problem(record: Any) -> Optional[str]:
    """Why a parsed record.json cannot be used by a reader (None: it can)."""
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        return f"not a bnnidr-hpc record (no schema {SCHEMA})"
    if not isinstance(record.get("config"), dict) or not isinstance(record.get("world_size"), int):
        return "a bnnidr-hpc record without config or world_size"
    return None


def is_complete(record: dict) -> bool:
    return record.get("status") == COMPLETED and record.get("epochs_done") == record.get("max_epochs")


def versions() -> dict:
    import numpy
    import torch

    from bnnidr_hpc.runtime import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "bnnidr_hpc": __version__, "cuda": torch.version.cuda}


def git_state() -> dict:
    """Commit and dirty flag of the checkout holding this package, if it is one."""
    here = PACKAGE_DIR

    def git(*args):
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def code_state() -> dict:
    """Where this package's code was imported from and a digest of its sources: a submitted job
    runs a frozen copy (submit.py), named by this digest."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"path": str(PACKAGE_DIR), "sha256": digest.hexdigest()[:16]}


def process_start_time() -> float:
    """Wall-clock time this process started (Linux /proc), else now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


# ----------------------------------------------------------------------------- building the record

def config_record(c: "Config", config_dict: dict, run_dir: Path) -> dict:
    """The record's fields that the config alone decides; also a job's whole record when it failed
    before training wrote anything."""
    return {
        "schema": SCHEMA,
        "run_dir": str(Path(run_dir).resolve()),
        "name": c.run.name,
        "config": config_dict,
        "n": c.data.n, "p": c.data.p, "d": c.data.d if c.data.source == "sphere" else None,  # a file's d is unknown
        "input_dim": c.input_dim, "output_dim": c.output_dim,
        "batch_size": c.batch_size, "global_batch_size": c.global_batch,
        "world_size": c.world_size, "num_gpu": c.num_gpu, "num_nodes": c.num_nodes,
        "max_epochs": c.max_epochs, "epochs_done": 0,
    }


def start_record(c: "Config", config_dict: dict, run_dir: Path, *, device_type: str, devices: List[str],
                 cpu_matmul: Optional[str], steps_per_epoch: int, data_cached: bool, hosts: List[str],
                 slurm_job_id: Optional[str], intrinsic_dim: dict) -> dict:
    """The record of a run that starts (or resumes) training: the config's fields and where it runs."""
    return {
        **config_record(c, config_dict, run_dir),
        "device_type": device_type, "devices": devices,
        "cpu_matmul": cpu_matmul,  # the library of the large float32 CPU products (products.py)
        "steps_per_epoch": steps_per_epoch, "data_cached": data_cached,
        "hostname": hosts[0], "hosts": hosts, "slurm_job_id": slurm_job_id,  # every rank's host, by rank
        "versions": versions(), "git": git_state(), "code": code_state(),
        "intrinsic_dim": intrinsic_dim,
    }


def graph_fields(graph) -> dict:
    """loss: graph: the k-NN graph stage (a data.neighbours.KnnGraph) as the record's figures;
    graph_seconds is this session's build (0 when the cache had it), the stage collect shows
    beside the epochs."""
    return {"graph_method": graph.method, "graph_seconds": graph.seconds, "graph_rows_per_s": graph.rows_per_s,
            "graph_recall": graph.recall, "graph_reused": graph.reused, "graph_k": int(graph.indices.shape[1]),
            "graph_path": graph.path}


def update_record(record: dict, state, status: str, session_started: float,
                  process_started: float) -> None:
    """The record's figures from the epochs done so far (state.history), in place."""
    history = state.history
    epoch_seconds = [h["epoch_seconds"] for h in history]
    full = [h["samples_per_s"] for h in history if not h["partial"]]
    steady = full[1:] or full  # the first full epoch carries the start-up
    samples_per_s = statistics.median(steady) if steady else None
    last_ap = next((h for h in reversed(history) if h["ap"] is not None or h.get("knn_recall") is not None), None)
    now = time.time()
    record.update({
        "status": status,
        "epochs_done": state.epoch,
        "epochs": history,
        "epoch_seconds": epoch_seconds,
        "first_epoch_seconds": epoch_seconds[0] if epoch_seconds else None,
        "steady_epoch_seconds": statistics.median(epoch_seconds[1:] or epoch_seconds) if epoch_seconds else None,
        "slowest_rank_seconds": max((max(h["rank_epoch_seconds"]) for h in history), default=None),
        "train_seconds": sum(epoch_seconds),
        "total_seconds": state.seconds_before + now - process_started,  # over every restart
        "session_seconds": now - session_started,
        "samples_per_s": samples_per_s,
        "samples_per_s_per_gpu": None if samples_per_s is None else samples_per_s / record["world_size"],
        "final_loss": history[-1]["loss"] if history else None,
        # its two terms: the objective's (config loss) and, for a Bayesian model, the KL term
        "final_data_loss": history[-1].get("data_loss") if history else None,
        "final_kl": history[-1]["kl"] if history else None,
        "ap_in": state.ap_in,
        "ap_in_se": (state.reference or {}).get("ap_in_se"),
        "ap_out": last_ap["ap"] if last_ap else None,
        "ap_out_se": last_ap.get("ap_se") if last_ap else None,
        "ap_retention": last_ap["ap_retention"] if last_ap else None,
        "knn_recall": last_ap.get("knn_recall") if last_ap else None,
        # PCA and a random projection to the same output_dim, on the same held-out points
        "baselines": (state.reference or {}).get("baselines"),
        "restarts": state.restarts,
        "seconds_lost": state.seconds_lost,
        "updated_at": now,
    })


def mark_failed(run_dir: Path, error: str, c: "Config", config_dict: dict) -> None:
    """Record a failure; a job that failed before training wrote anything still gets a record."""
    mark_ended(run_dir, FAILED, error, c, config_dict)


def mark_ended(run_dir: Path, status: str, error: str, c: Optional["Config"] = None,
               config_dict: Optional[dict] = None) -> None:
    """Record how a run ended (a status besides completed and diverged) and why, in one line;
    without c, only into a record that exists."""
    record = read_record(run_dir) or (config_record(c, config_dict, run_dir) if c is not None else None)
    if record is not None:
        record.update(status=status, error=error, updated_at=time.time())
        write_json(Path(run_dir) / RECORD, record)


# ----------------------------------------------------------------------------- reading helpers

def baseline(record: dict, name: str, key: str = "ap") -> Optional[float]:
    """A baseline's figure (name: pca or random; key: ap, ap_se, ap_retention, knn_recall) from a
    record, None where the record holds no usable (finite) number there."""
    scores = record.get("baselines")
    scores = scores.get(name) if isinstance(scores, dict) else None
    value = scores.get(key) if isinstance(scores, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def fmt(value, spec: str = ".4f") -> str:
    """A record's value for a table: '-' where there is none (None, or NaN: a figure a run could
    not compute, such as knn recall on a gallery of one point)."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)
