"""Submission: plan a sweep (its points, their run directories, what is already done), then submit
it through submitit, one job or job array per resource shape.

Used by: cli.py (`bnnidr-hpc submit CONFIG --gpus 1,2,4 [key=a,b ...] [--nodes N] [--dry-run]`).

A plan validates every point before anything is submitted or created. Comma lists in overrides
(Hydra's sweep syntax) and the config's own `sweep` preset make a grid; points with more than one
member share a sweep directory named by a hash of the sweep's spec, so resubmitting finds it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import records
from .config import Config, ConfigError, run_dir_for, to_yaml
from .loading import compose, load

# The interpreter every task starts: job_start catches a warning signal that comes before the
# job's own handlers (job.StopFlag) are in place.
JOB_PYTHON = f"{sys.executable} -m bnnidr_hpc.job_start"

# What submit does with a point (Point.action).
SUBMIT, RESUME, DONE, QUEUED, DIVERGED = "submit", "resume", "completed", "queued", "diverged"


@dataclass
class Point:
    """One run of a submission: its validated config, its run directory, what to do with it."""

    config: Config
    run_dir: Path
    action: str = SUBMIT
    detail: str = ""  # the completed run's AP, or the job that already holds the point

    @property
    def shape(self) -> Tuple[int, int, str]:
        """Points of one shape share one job array."""
        return self.config.num_gpu, self.config.num_nodes, self.config.cluster.name


@dataclass
class Plan:
    points: List[Point]
    sweep_dir: Optional[Path] = None
    groups: Dict[tuple, List[Point]] = field(default_factory=dict)

    def __post_init__(self):
        for point in self.points:
            self.groups.setdefault(point.shape, []).append(point)

    def folder(self, group: List[Point]) -> Path:
        """Where submitit keeps a group's scripts and logs."""
        return (self.sweep_dir or group[0].run_dir) / "slurm"

    @property
    def target(self) -> Path:
        """What `status` should be pointed at."""
        return self.sweep_dir or self.points[0].run_dir


def expand_sweep(overrides: List[str]) -> List[List[str]]:
    """Hydra's sweep syntax (batch_size=128,256 ...) expanded into one override list per point."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"overrides: {str(exc).splitlines()[0]}; write key=value or key=a,b,c") from None
    return BasicSweeper.split_arguments(parsed, None)[0] if parsed else [[]]


def plan(config_path: Optional[str], overrides: List[str], gpus: Optional[List[int]], nodes: int) -> Plan:
    """Every point of the submission, validated; nothing is created."""
    if nodes < 1:
        raise ConfigError(f"--nodes={nodes} is not allowed: a positive integer")
    from omegaconf import OmegaConf

    # The config's own sweep preset (read, not validated: the sweep's values are not in yet).
    preset = OmegaConf.to_object(compose(config_path, [o for o in overrides if "," not in o]).sweep)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    overrides = overrides + [f"{k}={v}" for k, v in preset.grid.items() if k not in given]
    combos = expand_sweep(overrides)
    gpus_list = gpus or list(preset.gpus) or [None]
    sweep_dir = None
    if len(combos) * len(gpus_list) > 1:
        first = load(config_path, combos[0])
        spec = {"config": str(Path(config_path).resolve()) if config_path else None, "gpus": gpus_list,
                "nodes": nodes, "overrides": overrides}
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
        sweep_dir = Path(first.run.root).resolve() / f"{first.run.name or 'default'}-sweep-{digest}"
    points = []
    for g in gpus_list:
        for combo in combos:
            extra = [f"num_nodes={nodes}"] + ([f"num_gpu={g}"] if g else [])
            extra += [f"run.root={sweep_dir}"] if sweep_dir else []
            c = load(config_path, combo + extra)
            points.append(Point(c, run_dir_for(c)))
    return Plan(points, sweep_dir)


def classify(p: Plan, force: bool) -> None:
    """Each point's action: a completed run is not rerun and a queued or running job not doubled
    (unless force); a point with a record resumes from its checkpoint."""
    from .status import TERMINAL, slurm_view

    for point in p.points:
        record = records.read_record(point.run_dir)
        slurm_state = slurm_view(point.run_dir).get("JobState")
        if force:
            point.action = SUBMIT
        elif record and record.get("status") == records.COMPLETED:
            point.action, point.detail = DONE, f"AP {records.fmt(record.get('ap_out'), '.3f')}"
        elif record and record.get("status") == records.DIVERGED:
            point.action, point.detail = DIVERGED, record.get("error") or ""
        elif slurm_state and slurm_state not in TERMINAL:
            point.action = QUEUED
            point.detail = f"{slurm_state.lower()} as job {records.read_job(point.run_dir)['job_id']}"
        elif record:
            point.action = RESUME


def dry_run(p: Plan) -> List[str]:
    """The resolved config of every point and the sbatch script of every group."""
    lines = [f"# run directory: {point.run_dir}\n{to_yaml(point.config)}" for point in p.points]
    for group in p.groups.values():
        c = group[0].config
        lines.append(f"# sbatch script for {len(group)} run(s), {c.num_nodes} node(s) x {c.num_gpu} GPU(s)")
        lines.append(sbatch_script(c, p.folder(group), len(group) if len(group) > 1 else None))
    return lines


def submit(p: Plan, local: bool, force: bool) -> List[Tuple[Point, dict]]:
    """Submit the points whose action is submit or resume; (point, job info) for each."""
    from .job import SlurmJob

    submitted = []
    for group in p.groups.values():
        todo = [point for point in group if point.action in (SUBMIT, RESUME)]
        if not todo:
            continue
        if force:
            for point in todo:
                records.set_aside(point.run_dir)
        executor = _executor(p.folder(todo), todo[0].config, local)
        with executor.batch():  # one array for several points: the job ids are known when the block ends
            jobs = [executor.submit(SlurmJob(point.config, str(point.run_dir))) for point in todo]
        for point, job in zip(todo, jobs):
            info = {"job_id": str(job.job_id), "submitted_at": time.time(), "executor": "local" if local else "slurm",
                    "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                    "submitit_folder": str(job.paths.folder), "nodes": point.config.num_nodes,
                    "gpus_per_node": point.config.num_gpu, "cluster": point.config.cluster.name}
            point.run_dir.mkdir(parents=True, exist_ok=True)
            records.write_json(point.run_dir / records.JOB, info)
            submitted.append((point, info))
    return submitted


def slurm_available() -> Optional[str]:
    """None when sbatch and a reachable controller are here, else why not (one line)."""
    import shutil
    import subprocess

    if not shutil.which("sbatch"):
        return "no Slurm on this machine (sbatch not found)"
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "the Slurm controller does not answer (sinfo timed out)"
    if probe.returncode != 0:
        return f"the Slurm controller does not answer ({(probe.stderr.strip().splitlines() or ['sinfo failed'])[-1]})"
    return None


def _executor_parameters(c: Config, local: bool) -> dict:
    cl = c.cluster
    gpus = c.num_gpu if (cl.gres_gpus and not local) else 0
    if local:
        import torch

        gpus = c.num_gpu if torch.cuda.is_available() else 0
    params = dict(name=f"bnnidr-{c.run.name or 'run'}", nodes=c.num_nodes, tasks_per_node=c.num_gpu,
                  gpus_per_node=gpus, cpus_per_task=cl.cpus_per_task, timeout_min=cl.timeout_min)
    if cl.mem_gb is not None:
        params["mem_gb"] = cl.mem_gb
    if not local:
        slurm = dict(partition=cl.partition, account=cl.account, qos=cl.qos, constraint=cl.constraint,
                     signal_delay_s=cl.signal_delay_s, setup=list(cl.setup) or None,
                     additional_parameters=dict(cl.sbatch) or None)
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
    return params


def _executor(folder: Path, c: Config, local: bool):
    import submitit

    if local:
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="local")
    else:
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm", slurm_python=JOB_PYTHON)
    executor.update_parameters(**_executor_parameters(c, local))
    return executor


def sbatch_script(c: Config, folder: Path, array_size: Optional[int] = None) -> str:
    """The sbatch script submit would write, for --dry-run."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = {k[len("slurm_"):] if k.startswith("slurm_") else k: v
              for k, v in _executor_parameters(c, local=False).items()}
    params["job_name"] = params.pop("name")
    params["time"] = params.pop("timeout_min")
    params["ntasks_per_node"] = params.pop("tasks_per_node")
    if "mem_gb" in params:
        params["mem"] = f"{int(params.pop('mem_gb'))}GB"
    if not params["gpus_per_node"]:
        params.pop("gpus_per_node")
    command = f"{JOB_PYTHON} -u -m submitit.core._submit {folder}"
    return _make_sbatch_string(command=command, folder=str(folder / "%j"), map_count=array_size, **params)
