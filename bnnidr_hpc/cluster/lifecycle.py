"""A submitted run or sweep after submission: its logs, cancelling it, resubmitting the points
that failed, were cancelled or were never submitted.

Used by: cli.py (`bnnidr-hpc logs RUN_DIR [--rank R] [--follow]`, `bnnidr-hpc cancel DIR`,
`bnnidr-hpc retry DIR [--failed] [--cancelled]`).

A job's logs are submitit's per-task files (JOBID_TASK_log.out/.err). Slurm appends to them when
it requeues the job, so one pair holds every restart; a run resubmitted by `retry` or `submit`
keeps its earlier jobs in job.json, and `logs` shows them first. `retry` rebuilds each point from
the config saved at submission (job.json, or the sweep's manifest for a point never submitted),
so an edited config file cannot change what is retried; the points go out as one array per shape.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from bnnidr_hpc.cluster import status
from bnnidr_hpc.records import run_files, run_record


def log_files(run_dir: Path, rank: int) -> List[Path]:
    """Every job's stdout and stderr of one rank, oldest job first."""
    job = status.read_job(run_dir)  # fields of the wrong type left out
    if not job:
        raise ValueError(f"logs: {run_dir} has no readable job.json (only submitted runs have Slurm logs)")
    files = []
    for entry in [*job.get("earlier_jobs", []), job]:
        for key in ("stdout", "stderr"):
            if entry.get(key):  # submitit names rank 0's files; the others differ in the task number
                files.append(Path(entry[key].replace("_0_log.", f"_{rank}_log.")))
    if not files:
        raise ValueError(f"logs: {run_dir / run_files.JOB} names no log file (no stdout or stderr path)")
    return files


def show_logs(run_dir: Path, rank: int, follow: bool, interval: float = 1.0) -> int:
    """Print the rank's logs; with follow, keep printing what is appended until the run ends."""
    files = log_files(run_dir, rank)
    if not follow and not any(f.exists() for f in files):
        raise ValueError(f"logs: no log of rank {rank} yet ({files[-1]}); "
                         f"bnnidr-hpc status {run_dir} says why")
    offsets = {f: 0 for f in files}
    while True:
        for f in files:
            offsets[f] = _print_new(f, offsets[f])
        if not follow or status.run_status(run_dir)["state"] in status.ENDED:
            break
        time.sleep(interval)
    for f in files:  # what came in while the state was read
        offsets[f] = _print_new(f, offsets[f])
    return 0


def _print_new(path: Path, offset: int) -> int:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read()
    except OSError:
        return offset
    if text:
        if offset == 0:
            print(f"==> {path} <==")
        sys.stdout.write(text.decode(errors="replace"))
        sys.stdout.flush()
    return offset + len(text)


def cancel(root: Path) -> List[str]:
    """scancel every job of the run or sweep that has not ended; the job ids cancelled."""
    jobs = []
    for run_dir in status.find_run_dirs(root):
        fields = status.slurm_view(run_dir)  # {} for a job the cluster no longer knows as this run's
        job = status.read_job(run_dir)
        if fields and fields.get("JobState") not in status.TERMINAL and job.get("job_id"):
            jobs.append((job["job_id"], job.get("slurm_conf")))
    for conf in {c for _, c in jobs}:
        ids = [j for j, c in jobs if c == conf]
        try:
            proc = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60,
                                  env=status.slurm_env(conf))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"cancel: scancel could not run: {exc}") from None
        if proc.returncode != 0:
            raise RuntimeError(f"cancel: scancel failed: {(proc.stderr.strip().splitlines() or ['no message'])[-1]}")
    return [j for j, _ in jobs]


# What retry resubmits without --failed / --cancelled.
RETRIED = ("failed", "not submitted", "interrupted", *run_record.ENDED_BY_SLURM)


def retry_points(root: Path, states: Optional[List[str]]):
    """The plan of the points of root whose state is in states (default RETRIED)."""
    from bnnidr_hpc.cluster.planning import Plan, Point
    from bnnidr_hpc.config.loading import from_dict

    wanted = states or RETRIED
    manifest = status.manifest_points(root / run_files.MANIFEST)
    points = []
    for run_dir in status.find_run_dirs(root):
        if status.run_status(run_dir)["state"] not in wanted:
            continue
        saved = status.read_job(run_dir).get("config") or manifest.get(run_dir.name, {}).get("config")
        if not isinstance(saved, dict):
            raise ValueError(f"retry: {run_dir} has no saved config (submitted by an older version); "
                             "submit it again")
        points.append(Point(from_dict(saved), run_dir))
    return Plan(points, root if (root / run_files.MANIFEST).exists() else None) if points else None


def retry(root: Path, states: Optional[List[str]]) -> Optional[bool]:
    """Resubmit root's points whose state is in states: None when there is none, else whether the
    cluster took them all. A point Slurm still lists (a cancelled job whose processes are still
    exiting) is shown and left alone, as submit leaves a queued one."""
    from bnnidr_hpc.cluster import planning, slurm_queries, submit_report

    plan = retry_points(root, states)
    if plan is None:
        return None
    reason = slurm_queries.slurm_available()
    if reason:
        raise ValueError(f"retry: {reason}; retry needs the cluster")
    planning.classify(plan, force=False)
    submit_report.show_actions(plan)
    return submit_report.check_and_submit(plan, local=False, force=False, check_only=False)

