"""Launching training: N local ranks, or Slurm jobs through submitit, and what Slurm says of them.

Used by: cli.py
  bnnidr-hpc run CONFIG --gpus N                  run_local: N ranks on this machine
  bnnidr-hpc submit CONFIG --gpus 1,2,4 [k=v,..]  submit: one job, or one array per GPU count
  bnnidr-hpc status DIR                           job_state: Slurm's view of a submitted run

A Slurm job is a small picklable `SlurmJob`: every rank calls the same `train`, which resumes from
the run directory's checkpoint, so the first start and every restart take one path. On Slurm's
warning signal (USR2, sent `signal_delay_s` before the time limit, or on preemption) or SIGTERM,
the ranks agree to stop after the same step, rank 0 writes the checkpoint and requeues the job
(`scontrol requeue`, in a child that ignores SIGTERM so preemption's SIGTERM cannot kill it), and
the requeued job resumes. A job the user cancelled is not requeued.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

from . import distributed, records
from .config import Config, run_dir_for
from .distributed import DistInfo
from .train import config_record, train

JOB_FILE = "job.json"  # written by submit into the run directory: job id, log paths, resources
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


class StopFlag:
    """Set by a stop signal; training polls it between steps (a Python attribute, no sync)."""

    def __init__(self, signals=(signal.SIGUSR2, signal.SIGTERM)):
        self.signum: Optional[int] = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            print(f"bnnidr-hpc: caught {signal.Signals(signum).name}: checkpointing after this step",
                  file=sys.stderr, flush=True)
        self.signum = self.signum or signum

    def __call__(self) -> bool:
        return self.signum is not None


# ----------------------------------------------------------------------------- local ranks

def run_local(c: Config, run_dir: Path) -> dict:
    """Train with c.world_size ranks on this machine: one per GPU, or gloo CPU processes."""
    if c.num_nodes != 1:
        raise ValueError("run: num_nodes must be 1 on one machine; use `submit --nodes N` on a cluster")
    if c.world_size == 1:
        record = train(c, run_dir, distributed.describe({}), StopFlag((signal.SIGTERM, signal.SIGINT)))
        return record
    import torch.multiprocessing as mp

    if not c.run.threads:  # share the cores instead of oversubscribing them
        c = replace(c, run=replace(c.run, threads=max(1, (os.cpu_count() or 1) // c.world_size)))
    port = distributed.free_port()
    mp.start_processes(_local_rank, args=(c, str(run_dir), port), nprocs=c.world_size, start_method="spawn")
    return records.read_record(run_dir)


def _local_rank(rank: int, c: Config, run_dir: str, port: int) -> None:
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(c.world_size),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    train(c, Path(run_dir), distributed.describe(env), StopFlag((signal.SIGTERM, signal.SIGINT)))


# ----------------------------------------------------------------------------- Slurm job

class SlurmJob:
    """What submitit runs on every rank of a job; picklable, no state beyond its config."""

    def __init__(self, config: Config, run_dir: str):
        self.config, self.run_dir = config, run_dir

    def __call__(self) -> dict:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # RANK, WORLD_SIZE, MASTER_ADDR (first node of the allocation), MASTER_PORT, LOCAL_RANK.
            # Every GPU stays visible, so NCCL keeps its peer-to-peer paths; a rank binds cuda:LOCAL_RANK.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        info = distributed.describe()
        stop = StopFlag()
        run_dir = Path(self.run_dir)
        try:
            record = train(self.config, run_dir, info, stop)
        except Exception as exc:
            if info.is_main:
                _mark_failed(run_dir, f"{type(exc).__name__}: {exc}", self.config)
            raise
        if record["status"] == records.INTERRUPTED:
            if info.is_main:
                self._requeue_or_fail(info, record)
            _wait_to_be_requeued(run_dir)
        return {k: record.get(k) for k in ("status", "run_dir", "final_loss", "ap_out", "ap_retention",
                                           "total_seconds", "world_size", "slurm_job_id")}

    def _requeue_or_fail(self, info: DistInfo, record: dict) -> None:
        job = info.slurm_job_id
        if record["restarts"] >= self.config.cluster.max_requeues:
            _mark_failed(Path(self.run_dir), f"interrupted after {record['restarts']} restarts "
                         f"(cluster.max_requeues={self.config.cluster.max_requeues})", self.config)
            return
        # A warning signal or a preemption leaves the job RUNNING; scancel has already moved it to
        # COMPLETING or CANCELLED by the time its SIGTERM arrives, and a cancelled job stays ended.
        state = job_state(job).get("JobState")
        if state != "RUNNING":
            print(f"bnnidr-hpc: job {job} is {state}: not requeued; submit again to resume", file=sys.stderr)
            return
        print(f"bnnidr-hpc: requeueing job {job} (restart {record['restarts'] + 1})", file=sys.stderr, flush=True)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=60, preexec_fn=_ignore_sigterm)


def _ignore_sigterm() -> None:
    # Runs in the child before exec; an ignored signal stays ignored across exec.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _wait_to_be_requeued(run_dir: Path, seconds: int = 300) -> None:
    """Slurm ends every task when it requeues (or cancels) the job. If rank 0 gave up instead (the
    record says failed), or nothing happens, end here rather than hold the allocation."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if (records.read_record(run_dir) or {}).get("status") == records.FAILED:
            sys.exit(1)
        time.sleep(1)
    sys.exit(3)


def _mark_failed(run_dir: Path, error: str, c: Config) -> None:
    """Record the failure; a job that failed before training wrote anything still gets a record."""
    record = records.read_record(run_dir) or config_record(c, run_dir)
    record.update(status=records.FAILED, error=error, updated_at=time.time())
    records.write_json(run_dir / records.RECORD, record)


# ----------------------------------------------------------------------------- submission

@dataclass
class Point:
    """One run of a submission: its validated config and its run directory."""

    config: Config
    run_dir: Path


def slurm_available() -> Optional[str]:
    """None when sbatch and a reachable controller are here, else why not (one line)."""
    import shutil

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

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="local" if local else "slurm")
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
    command = f"{sys.executable} -u -m submitit.core._submit {folder}"
    return _make_sbatch_string(command=command, folder=str(folder / "%j"), map_count=array_size, **params)


def submit_group(points: List[Point], folder: Path, local: bool) -> List[dict]:
    """Submit points that share one resource shape: one job, or one job array."""
    executor = _executor(folder, points[0].config, local)
    if len(points) == 1:
        jobs = [executor.submit(SlurmJob(points[0].config, str(points[0].run_dir)))]
    else:
        with executor.batch():  # one array: the job ids are known when the block ends
            jobs = [executor.submit(SlurmJob(p.config, str(p.run_dir))) for p in points]
    infos = []
    for point, job in zip(points, jobs):
        info = {"job_id": str(job.job_id), "submitted_at": time.time(), "executor": "local" if local else "slurm",
                "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                "submitit_folder": str(job.paths.folder), "nodes": point.config.num_nodes,
                "gpus_per_node": point.config.num_gpu, "cluster": point.config.cluster.name}
        point.run_dir.mkdir(parents=True, exist_ok=True)
        records.write_json(point.run_dir / JOB_FILE, info)
        infos.append(info)
    return infos


# ----------------------------------------------------------------------------- Slurm's view

def read_job(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(run_dir) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None


def job_state(job_id: Optional[str]) -> Dict[str, str]:
    """scontrol's fields for a job (JobState, Restarts, Reason, ...), else sacct's state, else {}."""
    if not job_id:
        return {}
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                             timeout=20)
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
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    line = acct.stdout.strip().splitlines()[:1]
    if acct.returncode == 0 and line:
        state, _, restarts = line[0].partition("|")
        return {"JobState": state.split()[0], "Restarts": restarts or "0"}
    return {}


def last_error_line(path: Optional[str]) -> Optional[str]:
    """The last line of a log that names an error, else its last line."""
    try:
        lines = [l.strip() for l in Path(path).read_text(errors="replace").splitlines() if l.strip()]
    except (OSError, TypeError):
        return None
    errors = [l for l in lines if "Error" in l or "error" in l or "Traceback" in l]
    return (errors or lines or [None])[-1]


def find_run_dirs(root: Path) -> List[Path]:
    """root itself when it is a run directory, else the run directories below it, sorted."""
    def is_run(d: Path) -> bool:
        return (d / records.RECORD).exists() or (d / JOB_FILE).exists()

    if is_run(root):
        return [root]
    return sorted({p.parent for pattern in (records.RECORD, JOB_FILE) for p in root.glob(f"*/{pattern}")})


def run_status(run_dir: Path) -> dict:
    """One run's state, from its record and Slurm: pending, running, completed, failed, cancelled,
    interrupted; with epoch, loss, AP, samples/s, runtime, restarts and, on failure, the error."""
    rec = records.read_record(run_dir) or {}
    job = read_job(run_dir) or {}
    slurm = job_state(job.get("job_id")) if job.get("executor") == "slurm" else {}
    slurm_state = slurm.get("JobState", "")
    restarts = max(int(slurm.get("Restarts", 0) or 0), int(rec.get("restarts", 0) or 0))
    status = rec.get("status")
    detail = ""
    if status == records.COMPLETED:
        state = "completed"
    elif slurm_state == "PENDING":
        state, detail = "pending", slurm.get("Reason", "")
    elif slurm_state in ("RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING"):
        state = "running"
    elif slurm_state == "CANCELLED":
        state = "cancelled"
    elif status == records.FAILED or slurm_state in TERMINAL:
        state = "failed"
        detail = rec.get("error") or last_error_line(job.get("stderr")) or slurm_state.lower()
        if job.get("stderr"):
            detail += f"  (log: {job['stderr']})"
    elif status == records.INTERRUPTED:
        state, detail = "interrupted", "run or submit it again to resume"
    elif status == records.RUNNING:
        state = "running"
    else:
        state = "submitted" if job else "unknown"
    if restarts and state in ("pending", "running", "completed"):
        detail = f"requeued {restarts}x" + (f"; {detail}" if detail else "")
    return {
        "run_dir": str(run_dir), "name": Path(run_dir).name, "job_id": job.get("job_id") or rec.get("slurm_job_id"),
        "state": state, "epoch": rec.get("epochs_done"), "max_epochs": rec.get("max_epochs"),
        "loss": rec.get("final_loss"), "ap": rec.get("ap_out"), "ap_retention": rec.get("ap_retention"),
        "samples_per_s": (rec.get("epochs") or [{}])[-1].get("samples_per_s"),
        "runtime_s": rec.get("total_seconds"), "world_size": rec.get("world_size") or job.get("gpus_per_node"),
        "restarts": restarts, "detail": detail,
    }


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def status_table(rows: List[dict]) -> List[str]:
    header = f"{'run':<28} {'job':>10} {'state':<11} {'epoch':>7} {'loss':>8} {'AP':>6} {'samples/s':>10} {'runtime':>8}  detail"
    lines = [header]
    for r in rows:
        epoch = "-" if r["epoch"] is None else f"{r['epoch']}/{r['max_epochs']}"
        lines.append(f"{r['name'][:28]:<28} {str(r['job_id'] or '-'):>10} {r['state']:<11} {epoch:>7} "
                     f"{_fmt(r['loss'], '.4f'):>8} {_fmt(r['ap'], '.3f'):>6} {_fmt(r['samples_per_s'], '.0f'):>10} "
                     f"{_fmt(r['runtime_s'], '.1f'):>8}  {r['detail']}")
    return lines


ENDED = {"completed", "failed", "cancelled"}


def follow(run_dirs: List[Path], interval: float = 2.0) -> int:
    """Print each run's epochs as they are written, then the final table; exit 1 if any run failed."""
    seen = {d: 0 for d in run_dirs}
    while True:
        for d in run_dirs:
            try:
                lines = (d / records.METRICS).read_text().splitlines()
            except OSError:
                lines = []
            for line in lines[seen[d]:]:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                print(f"{d.name}: epoch {e['epoch']} loss {e['loss']:.4f} AP {_fmt(e['ap'], '.3f')} "
                      f"{e['samples_per_s']:.0f} samples/s", flush=True)
            seen[d] = len(lines)
        rows = [run_status(d) for d in run_dirs]
        if all(r["state"] in ENDED or r["state"] == "interrupted" and not read_job(d)
               for r, d in zip(rows, run_dirs)):
            for line in status_table(rows):
                print(line)
            return 1 if any(r["state"] != "completed" for r in rows) else 0
        time.sleep(interval)
