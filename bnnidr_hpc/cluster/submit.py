"""Submitting a plan through submitit: one job or job array per resource shape, on Slurm or locally;
what each submitted run's job.json and a sweep's manifest say; the frozen code jobs run.

Used by: submit_report.py, for cli.py (`bnnidr-hpc submit CONFIG --gpus 1,2,4 [key=a,b ...]
[--nodes N]`, `bnnidr-hpc retry`). The plan comes from planning.py, already checked against the
cluster (slurm_queries.py).

The code a job runs is frozen at submission: the package is copied to DIR/code/SHA/bnnidr_hpc (DIR:
the sweep or run directory) and put first on the job's PYTHONPATH (sbatch.py), so an edit after
submitting, or a requeue days later, runs the code as it was; the record names the copy it ran.
A group Slurm refuses leaves nothing behind, and the rest of the submission goes on.
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from bnnidr_hpc.cluster.planning import RESUME, SUBMIT, Plan, Point, code_dir, pending_groups
from bnnidr_hpc.cluster.sbatch import slurm_executor
from bnnidr_hpc.cluster.slurm_queries import cluster_identity, last_line, slurm_reason
from bnnidr_hpc.cluster.status import read_job
from bnnidr_hpc.config.schema import Config, to_dict
from bnnidr_hpc.records import run_files, run_record


class SubmitError(Exception):
    """Slurm refused a submission; str() is the one line with Slurm's reason."""


def submit(p: Plan, local: bool, force: bool) -> Tuple[List[Tuple[Point, dict]], List[Tuple[List[Point], str]]]:
    """Submit the points whose action is submit or resume: ((point, job info) for each submitted,
    (points, Slurm's reason) for each group Slurm refused). A refused group leaves nothing behind;
    a sweep's manifest lists every point, submitted or not."""
    from bnnidr_hpc.cluster.job import make_root

    todo = pending_groups(p)
    for root in sorted({str(point.config.run.root) for group in todo for point in group}):
        make_root(root)  # one that cannot be made (/proc/x) is bad input, exit 2, before anything is written
    if force:  # before the code is frozen: a single run's frozen code lives in its run directory
        for point in (pt for group in todo for pt in group):
            run_files.set_aside(point.run_dir)
    new_target = not p.target.exists()
    snapshot = None if local or not todo else freeze_code(p)
    submitted, refused, controller = [], [], {}
    for group in todo:
        try:
            jobs = submit_group(p, group, local)
        except SubmitError as exc:
            refused.append((group, str(exc)))
            continue
        controller = controller if local or submitted else cluster_identity()
        for point, job in zip(group, jobs):
            earlier = read_job(point.run_dir)  # a damaged field is left out, not carried on
            history = earlier.pop("earlier_jobs", []) + ([{k: earlier.get(k) for k in ("job_id", "stdout", "stderr")}]
                                                         if earlier.get("job_id") else [])
            info = {"job_id": str(job.job_id), "submitted_at": time.time(), "executor": "local" if local else "slurm",
                    "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                    "submitit_folder": str(job.paths.folder), "nodes": point.config.num_nodes,
                    "gpus_per_node": point.config.num_gpu, "cluster": point.config.cluster.name,
                    **controller, "code": str(snapshot) if snapshot else None, "config": to_dict(point.config),
                    "earlier_jobs": history}  # a resubmitted run's earlier jobs, for `logs`
            point.run_dir.mkdir(parents=True, exist_ok=True)
            run_files.write_json(point.run_dir / run_files.JOB, info)
            submitted.append((point, info))
    if new_target and not submitted:
        shutil.rmtree(p.target, ignore_errors=True)  # nothing of a refused submission is left behind
    elif p.sweep_dir is not None:
        write_manifest(p, refused)
    return submitted, refused


def submit_group(p: Plan, group: List[Point], local: bool, job_for: Optional[Callable] = None,
                 job_name: Optional[str] = None) -> list:
    """One job, or one array for several points, each running job_for(point) (default: its training
    run); a refusal removes what submitit wrote for it and raises SubmitError with Slurm's reason."""
    from submitit.core.utils import FailedJobError

    from bnnidr_hpc.cluster.job import SlurmJob

    job_for = job_for or (lambda point: SlurmJob(point.config, str(point.run_dir)))
    folder = p.folder(group)
    before = set(folder.iterdir()) if folder.is_dir() else None
    executor = _local_executor(folder, group[0].config) if local else slurm_executor(p, group)
    if job_name:
        executor.update_parameters(job_name=job_name)
    try:
        with executor.batch():  # one array for several points: the job ids are known when the block ends
            jobs = [executor.submit(job_for(point)) for point in group]
    except (FailedJobError, subprocess.CalledProcessError, OSError) as exc:  # sbatch refused or failed to run
        if before is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for path in set(folder.iterdir()) - before:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise SubmitError(slurm_reason(last_line(str(exc).replace("\\n", "\n")))) from None
    return jobs


def write_manifest(p: Plan, refused: List[Tuple[List[Point], str]]) -> None:
    """The sweep's points by run directory: their config and, where Slurm refused one, why."""
    path = p.sweep_dir / run_files.MANIFEST
    manifest = run_files.read_json(path) or {"points": {}}
    why = {point.run_dir.name: reason for group, reason in refused for point in group}
    for point in p.points:
        entry = manifest["points"].setdefault(point.run_dir.name, {})
        entry.update(config=to_dict(point.config), nodes=point.config.num_nodes, gpus_per_node=point.config.num_gpu)
        if point.run_dir.name in why:
            entry["not_submitted"] = why[point.run_dir.name]
        elif point.action in (SUBMIT, RESUME):
            entry.pop("not_submitted", None)
    run_files.write_json(path, manifest)


def freeze_code(p: Plan) -> Path:
    """Copy the package to code_dir(p) once (atomically: a copy is complete or absent)."""
    dest = code_dir(p)
    if not (dest / "bnnidr_hpc").is_dir():
        partial = dest.with_name(f".{dest.name}.{os.getpid()}")
        shutil.copytree(Path(run_record.code_state()["path"]), partial / "bnnidr_hpc",
                        ignore=shutil.ignore_patterns("__pycache__"))
        # Compiled once here, not by every job of a sweep as it starts (same interpreter version).
        compileall.compile_dir(str(partial), quiet=2)
        try:
            os.rename(partial, dest)
        except OSError:  # another submission made it first
            shutil.rmtree(partial, ignore_errors=True)
    return dest


def _local_executor(folder: Path, c: Config):
    import submitit
    import torch

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="local")
    executor.update_parameters(name=f"bnnidr-{c.run.name or 'run'}", nodes=1, tasks_per_node=c.num_gpu,
                               gpus_per_node=c.num_gpu if torch.cuda.is_available() else 0,
                               cpus_per_task=c.cluster.cpus_per_task, timeout_min=c.cluster.timeout_min)
    return executor
