"""Submission: plan a sweep (its points, their run directories, what is already done), check it
against the cluster, then submit it through submitit, one job or job array per resource shape.

Used by: cli.py (`bnnidr-hpc submit CONFIG --gpus 1,2,4 [key=a,b ...] [--nodes N] [--check]
[--dry-run]`), lifecycle.py (`retry`).

A plan validates every point before anything is submitted or created. Comma lists in overrides
(Hydra's sweep syntax) and the config's own `sweep` preset make a grid; points with more than one
member share a sweep directory named by a hash of the sweep's spec, so resubmitting finds it.

What is printed is what is submitted: the sbatch script of --dry-run and --check is written by
submitit's own executor, with the parameters submission uses. Before anything is submitted every
group is tried with `sbatch --test-only` and its time limit compared with the partition's, so a
point the cluster would refuse stops the whole submission with Slurm's reason. The code a job
runs is frozen at submission: the package is copied to DIR/code/SHA/bnnidr_hpc (DIR: the sweep or
run directory) and put first on the job's PYTHONPATH, so an edit after submitting, or a requeue
days later, runs the code as it was; the record names the copy it ran.
"""

from __future__ import annotations

import compileall
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from bnnidr_hpc.config.loading import compose, load
from bnnidr_hpc.config.schema import Config, run_dir_for, to_dict, to_yaml
from bnnidr_hpc.records import run_files
from bnnidr_hpc.runtime.errors import ConfigError

# The module every task starts: it catches a warning signal that comes before the job's own
# handlers (job.StopFlag) are in place.
JOB_START = "-m bnnidr_hpc.cluster.job_start"

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
            points.append(Point(c, run_dir_for(c).absolute()))  # a job's working directory may differ
    return Plan(points, sweep_dir)


def classify(p: Plan, force: bool) -> None:
    """Each point's action: a completed run is not rerun and a queued or running job not doubled
    (unless force); a point with a record resumes from its checkpoint."""
    from bnnidr_hpc.cluster.status import TERMINAL, slurm_view

    for point in p.points:
        record = run_files.read_record(point.run_dir)
        slurm_state = slurm_view(point.run_dir).get("JobState")
        if force:
            point.action = SUBMIT
        elif record and record.get("status") == run_files.COMPLETED:
            point.action, point.detail = DONE, f"AP {run_files.fmt(record.get('ap_out'), '.3f')}"
        elif record and record.get("status") == run_files.DIVERGED:
            point.action, point.detail = DIVERGED, record.get("error") or ""
        elif slurm_state and slurm_state not in TERMINAL:
            point.action = QUEUED
            point.detail = f"{slurm_state.lower()} as job {run_files.read_job(point.run_dir)['job_id']}"
        elif record:
            point.action = RESUME


class SubmitError(Exception):
    """Slurm refused a submission; str() is the one line with Slurm's reason."""


def dry_run(p: Plan) -> List[str]:
    """The resolved config of every point and the sbatch script of every group."""
    lines = [f"# run directory: {point.run_dir}\n{to_yaml(point.config)}" for point in p.points]
    for group in p.groups.values():
        c = group[0].config
        lines.append(f"# sbatch script for {len(group)} run(s), {c.num_nodes} node(s) x {c.num_gpu} GPU(s)")
        lines.append(sbatch_script(p, group))
    return lines


def pending_groups(p: Plan) -> List[List[Point]]:
    """The groups with points to submit, each reduced to those points."""
    groups = [[pt for pt in group if pt.action in (SUBMIT, RESUME)] for group in p.groups.values()]
    return [group for group in groups if group]


def check(p: Plan, groups: List[List[Point]]) -> List[Tuple[List[Point], Optional[str], str]]:
    """Each group tried with `sbatch --test-only` and its time limit against its partition's:
    (points, why Slurm would refuse or strand them or None, where it would start them)."""
    results = []
    for group in groups:
        with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="bnnidr-check-") as script:
            script.write(sbatch_script(p, group))
            script.flush()
            proc = _slurm(["sbatch", "--test-only", script.name])
        answer = last_line(proc.stderr + proc.stdout)
        if proc.returncode != 0:
            results.append((group, _reason(answer), ""))
            continue
        partition = (re.search(r"in partition (\S+)", answer) or [None, ""])[1]
        results.append((group, _over_time_limit(group[0].config, partition), answer.replace("sbatch: ", "")))
    return results


def _over_time_limit(c: Config, partition: str) -> Optional[str]:
    """Why a job over its partition's MaxTime would pend forever (--test-only does not say), or None."""
    if not partition:
        return None
    fields = dict(t.split("=", 1) for t in _slurm(["scontrol", "show", "partition", "-o", partition]).stdout.split()
                  if "=" in t)
    limit = _minutes(fields.get("MaxTime", "UNLIMITED"))
    if limit is not None and c.cluster.timeout_min > limit:
        return (f"cluster.timeout_min={c.cluster.timeout_min} is over partition {partition}'s MaxTime of "
                f"{limit} min: the job would pend forever; lower it or pick another partition")
    return None


def _minutes(text: str) -> Optional[int]:
    """Slurm's [D-]HH:MM:SS (or MM:SS) in minutes; None for UNLIMITED."""
    if text in ("UNLIMITED", "INFINITE", ""):
        return None
    days, _, clock = text.rpartition("-")
    try:
        parts = [int(x) for x in clock.split(":")]
        parts = [0] * (3 - len(parts)) + parts
        return (int(days or 0) * 24 + parts[0]) * 60 + parts[1] + (parts[2] > 0)
    except ValueError:  # a form this parser does not know: no limit to check against
        return None


def _slurm(cmd: List[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 1, "", f"{cmd[0]}: {exc}")


def last_line(text: str) -> str:
    """The last non-blank line of text, stripped ("" for none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _reason(text: str) -> str:
    """Slurm's reason from sbatch's error output: 'sbatch: error: Batch job submission failed: X'."""
    for marker in ("submission failed: ", "error: "):
        if marker in text:
            return text.split(marker, 1)[1].strip()
    return text.strip() or "sbatch failed without a message"


def submit(p: Plan, local: bool, force: bool) -> Tuple[List[Tuple[Point, dict]], List[Tuple[List[Point], str]]]:
    """Submit the points whose action is submit or resume: ((point, job info) for each submitted,
    (points, Slurm's reason) for each group Slurm refused). A refused group leaves nothing behind;
    a sweep's manifest lists every point, submitted or not."""
    todo = pending_groups(p)
    if force:  # before the code is frozen: a single run's frozen code lives in its run directory
        for point in (pt for group in todo for pt in group):
            run_files.set_aside(point.run_dir)
    new_target = not p.target.exists()
    snapshot = None if local or not todo else freeze_code(p)
    submitted, refused, controller = [], [], {}
    for group in todo:
        try:
            jobs = _submit_group(p, group, local)
        except SubmitError as exc:
            refused.append((group, str(exc)))
            continue
        controller = controller if local or submitted else cluster_identity()
        for point, job in zip(group, jobs):
            earlier = run_files.read_job(point.run_dir) or {}
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


def _submit_group(p: Plan, group: List[Point], local: bool) -> list:
    """One job, or one array for several points; a refusal removes what submitit wrote for it."""
    from submitit.core.utils import FailedJobError

    from bnnidr_hpc.cluster.job import SlurmJob

    folder = p.folder(group)
    before = set(folder.iterdir()) if folder.is_dir() else None
    executor = _local_executor(folder, group[0].config) if local else slurm_executor(p, group)
    try:
        with executor.batch():  # one array for several points: the job ids are known when the block ends
            jobs = [executor.submit(SlurmJob(point.config, str(point.run_dir))) for point in group]
    except (FailedJobError, subprocess.CalledProcessError, OSError) as exc:  # sbatch refused or failed to run
        if before is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for path in set(folder.iterdir()) - before:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise SubmitError(_reason(last_line(str(exc).replace("\\n", "\n")))) from None
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


def cluster_identity() -> dict:
    """Which controller took the job (its configuration file, cluster name and host), so that
    status asks that cluster and not whichever one the environment points at later."""
    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    fields = {}
    for line in _slurm(["scontrol", "show", "config"]).stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("ClusterName", "SlurmctldHost[0]"):
            fields[key.strip()] = value.strip()
    return {"slurm_conf": str(Path(conf).resolve()), "slurm_cluster": fields.get("ClusterName"),
            "slurm_controller": fields.get("SlurmctldHost[0]")}


def code_dir(p: Plan) -> Path:
    """Where a submission's jobs find their code: DIR/code/SHA (the sources' digest)."""
    return p.target / "code" / run_files.code_state()["sha256"]


def freeze_code(p: Plan) -> Path:
    """Copy the package to code_dir(p) once (atomically: a copy is complete or absent)."""
    dest = code_dir(p)
    if not (dest / "bnnidr_hpc").is_dir():
        partial = dest.with_name(f".{dest.name}.{os.getpid()}")
        shutil.copytree(Path(run_files.code_state()["path"]), partial / "bnnidr_hpc",
                        ignore=shutil.ignore_patterns("__pycache__"))
        # Compiled once here, not by every job of a sweep as it starts (same interpreter version).
        compileall.compile_dir(str(partial), quiet=2)
        try:
            os.rename(partial, dest)
        except OSError:  # another submission made it first
            shutil.rmtree(partial, ignore_errors=True)
    return dest


def slurm_available() -> Optional[str]:
    """None when sbatch and a reachable controller are here, else why not (one line)."""
    if not shutil.which("sbatch"):
        return "no Slurm on this machine (sbatch not found)"
    probe = _slurm(["sinfo", "-h", "-o", "%P"])
    if probe.returncode != 0:
        return f"the Slurm controller does not answer ({last_line(probe.stderr) or 'sinfo failed'})"
    return None


def slurm_parameters(c: Config, code: Path) -> dict:
    """sbatch's options for one point, in submitit's SlurmExecutor names."""
    cl = c.cluster
    params = dict(job_name=f"bnnidr-{c.run.name or 'run'}", nodes=c.num_nodes, ntasks_per_node=c.num_gpu,
                  cpus_per_task=cl.cpus_per_task, time=cl.timeout_min, signal_delay_s=cl.signal_delay_s,
                  # The frozen code first, also before a checkout in the working directory (which
                  # `python -m` would put first, unless PYTHONSAFEPATH: Python 3.11+); then the
                  # profile's lines, which may change the interpreter.
                  # Rank variables in the submitter's environment (sbatch passes it on) must not
                  # describe the job's ranks; a setup line may still set MASTER_ADDR.
                  setup=["unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT",
                         f"export PYTHONSAFEPATH=1 PYTHONPATH={shlex.quote(str(code))}${{PYTHONPATH:+:$PYTHONPATH}}",
                         *cl.setup])
    if cl.gres_gpus:
        params["gpus_per_node"] = gpu_request(c)
    if cl.mem_gb is not None:
        from submitit.slurm.slurm import _convert_mem

        params["mem"] = _convert_mem(cl.mem_gb)
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cl, key) is not None:
            params[key] = getattr(cl, key)
    params["additional_parameters"] = sbatch_options(cl.sbatch)
    return params


def gpu_request(c: Config):
    """--gpus-per-node: Slurm's [type:]count (a typed --gres beside it is an invalid specification)."""
    return f"{c.cluster.gpu_type}:{c.num_gpu}" if c.cluster.gpu_type else c.num_gpu


def sbatch_options(*option_sets: dict) -> dict:
    """Further sbatch options (later sets win), with --requeue: requeueable even where the
    cluster's JobRequeue=0, unless they say no-requeue."""
    extra = {str(k).replace("_", "-"): v for options in option_sets for k, v in options.items()}
    return extra if "no-requeue" in extra else {"requeue": True, **extra}


def job_python(c: Config) -> str:
    """What every task of c's job runs: the profile's interpreter (else this one) on JOB_START."""
    return f"{c.cluster.python or shlex.quote(sys.executable)} {JOB_START}"


@functools.lru_cache(maxsize=None)
def _executor_class():
    from submitit.slurm.slurm import SlurmExecutor

    class ScriptingSlurmExecutor(SlurmExecutor):
        """submitit's Slurm executor, which also writes its script where srun is missing (--dry-run)."""

        @classmethod
        def affinity(cls) -> int:
            return 2

    return ScriptingSlurmExecutor


def slurm_executor(p: Plan, group: List[Point]):
    """The executor that submits a group, also the one that writes --dry-run's and --check's script."""
    c = group[0].config
    executor = _executor_class()(folder=str(p.folder(group) / "%j"), python=job_python(c))
    executor.update_parameters(**slurm_parameters(c, code_dir(p)))
    return executor


def sbatch_script(p: Plan, group: List[Point]) -> str:
    """Exactly the script submitit writes for the group (an array of len(group) when > 1)."""
    executor = slurm_executor(p, group)
    if len(group) > 1:
        executor.parameters["map_count"] = len(group)  # what submitit's array submission sets
    return executor._make_submission_file_text(executor._submitit_command_str, "")


def _local_executor(folder: Path, c: Config):
    import submitit
    import torch

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="local")
    executor.update_parameters(name=f"bnnidr-{c.run.name or 'run'}", nodes=1, tasks_per_node=c.num_gpu,
                               gpus_per_node=c.num_gpu if torch.cuda.is_available() else 0,
                               cpus_per_task=c.cluster.cpus_per_task, timeout_min=c.cluster.timeout_min)
    return executor
