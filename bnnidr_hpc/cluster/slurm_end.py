"""How Slurm ended a job before its run ended, in the run's record: the time limit (`timeout`),
scancel or `bnnidr-hpc cancel` (`cancelled`), a node lost (`node_fail`), preemption (`preempted`),
the OOM killer (`out_of_memory`).

Used by: job.py (rank 0 of a job that stopped and is not requeued), status.py (a record that still
says running, interrupted or failed when Slurm says how the job ended).

While a job's processes are still being ended Slurm shows it COMPLETING, whatever ended it; its
Reason tells the time limit (TimeLimit) and a lost node (NodeDown) from a cancel, so the job writes
its own end. A job that could not (SIGKILL at the limit, its node gone, the OOM killer) has its
record completed by the next `status`, from the state Slurm keeps once the job has ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from bnnidr_hpc.records import run_record
from bnnidr_hpc.runtime import atomic_files

# Slurm's JobState once a job has ended -> the record's status.
FROM_JOB_STATE = {"TIMEOUT": run_record.TIMEOUT, "DEADLINE": run_record.TIMEOUT, "CANCELLED": run_record.CANCELLED,
                  "NODE_FAIL": run_record.NODE_FAIL, "PREEMPTED": run_record.PREEMPTED,
                  "OUT_OF_MEMORY": run_record.OUT_OF_MEMORY}
# Slurm's Reason while it ends a job (JobState=COMPLETING) -> the record's status.
FROM_REASON = {"TimeLimit": run_record.TIMEOUT, "NodeDown": run_record.NODE_FAIL,
               "Preempted": run_record.PREEMPTED}
# Slurm's warning comes signal_delay_s before the limit, or up to this much earlier (its timer's resolution).
WARNING_SLACK_S = 60


def ended_by(fields: Dict[str, str], stopping: bool = False) -> Optional[str]:
    """The record's status for how Slurm ended (or is ending) the job; None where it did not end
    it. stopping: asked by the job itself after a stop signal, when COMPLETING with no reason
    Slurm names is a cancel."""
    state = fields.get("JobState", "")
    if state in FROM_JOB_STATE:
        return FROM_JOB_STATE[state]
    if stopping and state == "COMPLETING":
        return FROM_REASON.get(fields.get("Reason", ""), run_record.CANCELLED)
    return None


def shown_end(rec: dict, fields: Dict[str, str]) -> Optional[str]:
    """The Slurm end status shows: Slurm's, once the job has ended, else the one the job wrote
    while Slurm still ends it (COMPLETING) or has forgotten it."""
    active = fields.get("JobState") in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "RESIZING")
    written = rec.get("status") if rec.get("status") in run_record.ENDED_BY_SLURM and not active else None
    return ended_by(fields) or written


def detail(status: str, rec: dict, fields: Dict[str, str], job_id: Optional[str]) -> str:
    """The line status shows and keeps for a Slurm end: the record's own where it says this end,
    else Slurm's, and a failure the record held."""
    if rec.get("status") == status and rec.get("error"):
        return rec["error"]
    failed = rec.get("error") if rec.get("status") == run_record.FAILED else None
    return why(status, fields, rec, job_id) + (f"; the run had failed: {failed}" if failed else "")


def why(status: str, fields: Dict[str, str], rec: dict, job_id: Optional[str]) -> str:
    """The record's error for a Slurm end: what ended the job, at which epoch, how to go on."""
    job = f"job {job_id}" if job_id else "the job"
    what = {run_record.TIMEOUT: f"Slurm ended {job} at its time limit ({fields.get('TimeLimit') or '?'})",
            run_record.CANCELLED: f"{job} was cancelled (scancel)",
            run_record.NODE_FAIL: f"{job} lost a node ({fields.get('NodeList') or '?'})",
            run_record.PREEMPTED: f"{job} was preempted",
            run_record.OUT_OF_MEMORY: f"the OOM killer ended a rank of {job}"}[status]
    where = (f"after epoch {rec.get('epochs_done', '?')} of {rec.get('max_epochs', '?')}; the checkpoint is kept"
             if rec.get("status") else "before training started")
    return f"{what} {where}: submit it again (or bnnidr-hpc retry) to resume"


def keep(run_dir: Path, status: str, error: str, rec: dict) -> None:
    """Write a Slurm end into a record that says the run is on its way (running, interrupted) or
    says another end; a record that says completed or diverged is the run's own last word."""
    if rec.get("status") in (run_record.COMPLETED, run_record.DIVERGED) or \
            (rec.get("status") == status and rec.get("error") == error):
        return
    try:
        run_record.mark_ended(Path(run_dir), status, error)
    except (OSError, atomic_files.RunFileError):  # a collaborator's read-only copy: shown, not kept
        pass


def at_time_limit(fields: Dict[str, str], signal_delay_s: int) -> bool:
    """A warning signal now is the time limit's (not a preemption's): the job's time left is within
    the warning's delay, and the slack of Slurm's timer."""
    limit, ran = _seconds(fields.get("TimeLimit", "")), _seconds(fields.get("RunTime", ""))
    return limit is not None and ran is not None and limit - ran <= signal_delay_s + WARNING_SLACK_S


def _seconds(text: str) -> Optional[int]:
    """Slurm's [D-][HH:]MM:SS in seconds; None for UNLIMITED or a form not known here."""
    days, _, clock = text.rpartition("-")
    try:
        parts = [int(x) for x in clock.split(":")]
        return int(days or 0) * 86400 + sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
    except ValueError:
        return None

