"""What a run is doing: its record and, for a submitted run, what Slurm says of its job.

Used by: cli.py (`bnnidr-hpc status DIR [--follow]`), planning.py (is a point already queued?),
job.py (was the job cancelled?).

A run's state is one of: not submitted, submitted, pending, running, completed, diverged, failed,
cancelled, interrupted, unknown. The record decides where it is final (completed, diverged,
failed); Slurm's job state decides the rest (scontrol while the controller remembers the job, else
sacct where accounting exists, else the final state status saw earlier and kept in job.json). Slurm
is asked through the configuration the job was submitted with (job.json's slurm_conf), so job ids
of two clusters cannot be confused.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

from bnnidr_hpc.cluster import slurm_end
from bnnidr_hpc.records import run_files, run_record
from bnnidr_hpc.records.run_record import fmt
from bnnidr_hpc.runtime import atomic_files

# Slurm job states after which the job does not run again.
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}
# The run states `status --follow` waits for.
ENDED = {"completed", "diverged", "failed", "not submitted", *run_record.ENDED_BY_SLURM}


def slurm_env(slurm_conf: Optional[str]) -> Optional[dict]:
    """The environment that points Slurm's commands at the cluster of slurm_conf (None: this one's)."""
    return {**os.environ, "SLURM_CONF": slurm_conf} if slurm_conf and Path(slurm_conf).is_file() else None


def job_state(job_id: Optional[str], slurm_conf: Optional[str] = None) -> Dict[str, str]:
    """scontrol's fields for a job (JobState, Restarts, Reason, ...), else sacct's state, else {};
    slurm_conf: the cluster's configuration file (default: the environment's)."""
    if not job_id:
        return {}
    env = slurm_env(slurm_conf)
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                             timeout=20, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode == 0 and out.stdout.strip():
        fields = {}
        for token in out.stdout.split():
            if "=" in token:
                key, value = token.split("=", 1)
                fields.setdefault(key, value)
        return fields
    try:
        acct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State,Restarts", "-j", str(job_id)],
                              capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    line = acct.stdout.strip().splitlines()[:1]
    if acct.returncode == 0 and line:
        state, _, restarts = line[0].partition("|")
        return {"JobState": state.split()[0], "Restarts": restarts or "0"}
    return {}


# Slurm's fields kept in job.json once the job has ended.
KEPT = ("JobState", "Reason", "ExitCode", "Restarts", "NodeList")
# job.json's fields and their types. A field of another type (a hand edit, a damaged copy) is
# read as missing, so that status, logs, cancel and retry still work from the rest.
JOB_TYPES = {"job_id": (str, int), "executor": str, "slurm_conf": str, "stdout": str, "stderr": str,
             "final_slurm_state": dict, "earlier_jobs": list, "config": dict, "gpus_per_node": int}


def read_job(run_dir: Path) -> dict:
    """job.json with every field of the wrong type left out ({} where there is none)."""
    job = {k: v for k, v in (run_files.read_job(run_dir) or {}).items()
           if k not in JOB_TYPES or (isinstance(v, JOB_TYPES[k]) and not isinstance(v, bool))}
    if "job_id" in job:
        job["job_id"] = str(job["job_id"])
    if "final_slurm_state" in job:
        job["final_slurm_state"] = {k: v for k, v in job["final_slurm_state"].items() if isinstance(v, str)}
    if "earlier_jobs" in job:
        job["earlier_jobs"] = [{k: v for k, v in e.items() if isinstance(v, str)}
                               for e in job["earlier_jobs"] if isinstance(e, dict)]
    return job


def count(value) -> int:
    """A restart count as Slurm or a record says it; 0 where it is not one."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        return 0


def slurm_view(run_dir: Path) -> Dict[str, str]:
    """Slurm's fields for a run submitted to Slurm, else {}. A final state is kept in job.json,
    so a job the cluster has forgotten still shows how it ended."""
    job = read_job(run_dir)
    if job.get("executor") != "slurm":
        return {}
    fields = job_state(job.get("job_id"), job.get("slurm_conf"))
    if fields.get("StdOut") and job.get("stdout") and fields["StdOut"] != job["stdout"]:
        fields = {}  # the id now names another job (a controller started afresh numbers from 1)
    if not fields:
        return job.get("final_slurm_state") or {}
    if fields.get("JobState") in TERMINAL and job.get("final_slurm_state") is None:
        now = run_files.read_job(run_dir) or {}
        if str(now.get("job_id")) == job.get("job_id"):  # not resubmitted meanwhile
            try:
                run_files.write_json(Path(run_dir) / run_files.JOB,
                                   {**now, "final_slurm_state": {k: fields[k] for k in KEPT if k in fields}})
            except (OSError, atomic_files.RunFileError):  # a collaborator's read-only copy: nothing kept
                pass
    return fields


def last_error_line(path: Optional[str]) -> Optional[str]:
    """The last line of a log that names an error, else its last line."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except (OSError, TypeError):
        return None
    errors = [line for line in lines if "Error" in line or "error" in line or "Traceback" in line]
    return (errors or lines or [None])[-1]


def find_run_dirs(root: Path) -> List[Path]:
    """root itself when it is a run directory, else the run directories below it and inside the
    sweep directories below it, with the points a sweep's manifest lists that were never
    submitted (their directories do not exist), sorted."""
    def is_run(d: Path) -> bool:
        return (d / run_files.RECORD).exists() or (d / run_files.JOB).exists()

    if is_run(root):
        return [root]
    found = {p.parent for pattern in (run_files.RECORD, run_files.JOB) for depth in ("*", "*/*")
             for p in root.glob(f"{depth}/{pattern}") if ".replaced-" not in p.parent.name}  # set aside by --force
    for manifest in [root / run_files.MANIFEST, *root.glob(f"*/{run_files.MANIFEST}")]:
        found.update(manifest.parent / name for name in manifest_points(manifest)
                     if name and "/" not in name and name not in (".", ".."))
    return sorted(found)


def labelled_run_dirs(roots: List[Path]) -> Dict[Path, str]:
    """The run directories under each folder given, each with the name status shows: its path
    below that folder, so that a run and a sweep's point of the same config (the same directory
    name) are told apart; the full path where that is still ambiguous."""
    labels: Dict[Path, str] = {}
    for root in roots:
        for d in find_run_dirs(root):
            label = d.name if d == root else str(d.relative_to(root))
            labels.setdefault(d, str(d) if label in labels.values() else label)
    return labels


def manifest_points(manifest: Path) -> Dict[str, dict]:
    """A sweep manifest's points by run directory name; {} for a damaged manifest, and a point
    that is not a mapping is left out."""
    points = (run_files.read_json(manifest) or {}).get("points")
    return {k: v for k, v in points.items() if isinstance(v, dict)} if isinstance(points, dict) else {}


def not_submitted(run_dir: Path) -> Optional[str]:
    """Why Slurm refused this point of a sweep, where its manifest says so."""
    why = manifest_points(Path(run_dir).parent / run_files.MANIFEST).get(Path(run_dir).name, {}).get("not_submitted")
    return why if isinstance(why, str) else None


def _state(rec: dict, job: dict, slurm: dict, held: bool = True) -> tuple:
    """(state, detail) from the record, job.json, Slurm's fields and, for a run not submitted,
    whether a process still holds its directory (held)."""
    slurm_state, status = slurm.get("JobState", ""), rec.get("status")
    if status == run_record.COMPLETED:
        return "completed", ""
    if status == run_record.DIVERGED:
        return "diverged", rec.get("error") or ""
    if slurm_state == "PENDING":
        return "pending", slurm.get("Reason", "")
    ended = slurm_end.shown_end(rec, slurm)
    if ended:  # Slurm ended the job (time limit, scancel, ...), as the job wrote or as Slurm now says
        return ended, slurm_end.detail(ended, rec, slurm, job.get("job_id"))
    if slurm_state in ("RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING"):
        return "running", ""
    if status == run_record.FAILED or slurm_state in TERMINAL:
        if rec.get("error"):
            return "failed", rec["error"] + (f"  (log: {job['stderr']})" if job.get("stderr") else "")
        return "failed", _failure_detail(job, slurm)
    if status == run_record.INTERRUPTED:
        return "interrupted", "run or submit it again to resume"
    if status == run_record.RUNNING and not job and not held:
        return "interrupted", "its process is gone (killed?); run it again to resume from the checkpoint"
    if status == run_record.RUNNING:
        return "running", ""
    return ("submitted" if job else "unknown"), ""


def _failure_detail(job: dict, slurm: dict) -> str:
    """Why a job failed that wrote no record error: its log's error line, else Slurm's reason,
    and a log that does not exist said so (the node could not write the run directory)."""
    stderr = job.get("stderr")
    line = last_error_line(stderr)
    if line:
        return f"{line}  (log: {stderr})"
    slurm_says = " ".join(f"{k}={slurm[k]}" for k in ("JobState", "Reason", "ExitCode", "NodeList")
                          if slurm.get(k) and slurm[k] != "None")
    if stderr and "%" not in stderr and not Path(stderr).exists():
        return (f"Slurm: {slurm_says or 'failed'}; no log at {stderr}: the job's nodes could not write there "
                "(run.root must be on a file system every node shares)")
    return f"Slurm: {slurm_says or 'failed'}"


# The record's fields status shows, and their types; another type is shown as missing.
RECORD_TYPES = {"status": str, "error": str, "epochs_done": int, "max_epochs": int, "final_loss": (int, float),
                "ap_out": (int, float), "ap_retention": (int, float), "total_seconds": (int, float),
                "world_size": int, "slurm_job_id": (str, int), "epochs": list}


def _typed(value, types) -> bool:
    """value is of types, and a number among them one a table can print (not bool, not 1e400)."""
    if isinstance(value, bool) or not isinstance(value, types):
        return False
    try:
        return not isinstance(value, (int, float)) or math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def usable_record(run_dir: Path) -> dict:
    """record.json with every field status reads of the wrong type left out ({} without a record)."""
    raw = run_files.read_record(run_dir)
    if not raw:  # no record: "not submitted" and "pending" are told apart by the absence
        return {}
    rec = {k: v for k, v in raw.items() if k not in RECORD_TYPES or _typed(v, RECORD_TYPES[k])}
    last = (rec.get("epochs") or [{}])[-1]
    speed = last.get("samples_per_s") if isinstance(last, dict) else None
    rec["epochs"] = [{"samples_per_s": speed if _typed(speed, (int, float)) else None}]
    return rec


def run_status(run_dir: Path) -> dict:
    """One run's state, with epoch, loss, AP, samples/s, runtime, restarts and, on failure, the error."""
    rec = usable_record(run_dir)
    job = read_job(run_dir)
    slurm = slurm_view(run_dir)
    restarts = max(count(slurm.get("Restarts")), count(rec.get("restarts")))
    state, detail = _state(rec, job, slurm, held=bool(job) or run_files.is_held(run_dir))
    if state in run_record.ENDED_BY_SLURM and rec:
        slurm_end.keep(run_dir, state, detail, rec)  # collect reads records only
    refused = None if (rec or job) else not_submitted(run_dir)
    if refused:
        state, detail = "not submitted", f"Slurm refused it: {refused}; bnnidr-hpc retry {Path(run_dir).parent}"
    if restarts and state in ("pending", "running", "completed"):
        detail = "; ".join(filter(None, [_restart_detail(rec, job, slurm), detail]))
    return {
        "run_dir": str(run_dir), "name": Path(run_dir).name, "job_id": job.get("job_id") or rec.get("slurm_job_id"),
        "state": state, "epoch": rec.get("epochs_done"), "max_epochs": rec.get("max_epochs"),
        "loss": rec.get("final_loss"), "ap": rec.get("ap_out"), "ap_retention": rec.get("ap_retention"),
        "ap_pca": run_record.baseline(rec, "pca"),
        "samples_per_s": (rec.get("epochs") or [{}])[-1].get("samples_per_s"),
        "runtime_s": rec.get("total_seconds"), "world_size": rec.get("world_size") or job.get("gpus_per_node"),
        "restarts": restarts, "detail": detail, "submitted": bool(job),
    }


def _restart_detail(rec: dict, job: dict, slurm: dict) -> str:
    """How a run started again: Slurm requeued its job (Slurm's Restarts), it was submitted
    again (`retry`, a resubmission: job.json's earlier jobs), or rerun here; the record's
    restarts counts every resume alike."""
    earlier = len(job.get("earlier_jobs") or [])
    resumed = count(rec.get("restarts"))
    requeued = count(slurm["Restarts"]) if "Restarts" in slurm else max(0, resumed - earlier)
    if not job:
        return f"resumed {resumed}x" if resumed else ""
    return ", ".join(filter(None, [f"requeued {requeued}x" if requeued else "",
                                   f"resubmitted {earlier}x" if earlier else ""]))


def _shown(name: str, width: int) -> str:
    """A name cut to width from the left: its end (the config hash) tells runs apart."""
    return name if len(name) <= width else "..." + name[len(name) - width + 3:]


def status_table(rows: List[dict]) -> List[str]:
    width = min(64, max([28] + [len(r["name"]) for r in rows]))
    header = (f"{'run':<{width}} {'job':>10} {'state':<13} {'epoch':>7} {'loss':>8} {'AP':>6} {'PCA AP':>6} "
              f"{'samples/s':>10} {'runtime':>8}  detail")
    lines = [header]
    for r in rows:
        epoch = "-" if r["epoch"] is None else f"{r['epoch']}/{r['max_epochs']}"
        lines.append(f"{_shown(r['name'], width):<{width}} {str(r['job_id'] or '-'):>10} {r['state']:<13} {epoch:>7} "
                     f"{fmt(r['loss'], '.4f'):>8} {fmt(r['ap'], '.3f'):>6} {fmt(r.get('ap_pca'), '.3f'):>6} "
                     f"{fmt(r['samples_per_s'], '.0f'):>10} "
                     f"{fmt(r['runtime_s'], '.1f'):>8}  {r['detail']}")
    return lines


def new_epoch_lines(run_dir: Path, seen: int) -> tuple:
    """(lines for the epochs of run_dir's metrics.jsonl after the first `seen`, lines now seen)."""
    try:
        lines = (run_dir / run_files.METRICS).read_text().splitlines()
    except OSError:
        return [], seen
    out = []
    for line in lines[seen:]:
        try:
            e = json.loads(line)
            out.append(f"{run_dir.name}: epoch {e['epoch']} loss {e['loss']:.4f} AP {fmt(e['ap'], '.3f')} "
                       f"{e['samples_per_s']:.0f} samples/s")
        except (ValueError, TypeError, KeyError, OverflowError):  # a damaged line: the table still says
            continue
    return out, len(lines)


def all_ended(rows: List[dict]) -> bool:
    """Nothing more will happen: every run ended, or was interrupted outside a job that could requeue it."""
    return all(r["state"] in ENDED or (r["state"] == "interrupted" and not r["submitted"]) for r in rows)


def follow(run_dirs: List[Path], interval: float, labels: Optional[Dict[Path, str]] = None) -> List[dict]:
    """`status --follow`: print each run's epochs as they are written until nothing more will
    happen, then the final table (rows named by labels); returns the final rows."""
    labels = labels or {}
    seen = {d: 0 for d in run_dirs}
    while True:
        for d in run_dirs:
            lines, seen[d] = new_epoch_lines(d, seen[d])
            for line in lines:
                print(line, flush=True)
        rows = [{**run_status(d), "name": labels.get(d, d.name)} for d in run_dirs]
        if all_ended(rows):
            for line in status_table(rows):
                print(line)
            return rows
        time.sleep(interval)
