"""hydra-submitit-launcher's Slurm and local launchers, made to behave like `bnnidr-hpc submit`.

Used by: hydra_conf/hydra/launcher/bnnidr_slurm.yaml and bnnidr_local.yaml (their `_target_`),
hydra_app.py (registers the two classes with Hydra before it starts).

Before anything is submitted, every point of the multirun is composed and validated (the config
its job will run) and its run directory found (config.identity.run_dir_for). Then:
- a multirun whose points need different job shapes is refused in one line: one multirun is one
  submitit job array, sized alike, so a num_gpu or num_nodes sweep (or a sweep of a cluster
  setting that changes the sbatch options) belongs to `bnnidr-hpc submit CONFIG --gpus 1,2`;
- a point whose run directory already holds a completed record is not submitted again: it is
  reported ("completed, not rerun") and its record is its result;
- the job array is sized from the points' own config: tasks per node num_gpu, nodes num_nodes,
  and, as sbatch.slurm_parameters does, the profile's GPU request (gres_gpus false: none;
  gpu_type: --gpus-per-node=TYPE:N), mem_gb, setup lines, sbatch options and --requeue. A value
  the launcher config sets (hydra.launcher.KEY=...) wins over the profile's;
- the jobs are waited on until each has a result or Slurm has ended it (scontrol; accounting may
  be off, which submitit's own wait cannot tell from a running job), so a job that died without
  a result ends the multirun instead of holding it; each failed point is reported in one line
  with its run directory and its record's error, and the multirun exits 1.

Hydra instantiates launchers only from its plugin package, so register() lists these classes
under hydra_plugins.bnnidr_hpc (PLUGIN_PREFIX) in Hydra's plugin registry; the classes stay in
this module, which is what the pickled jobs import.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from bnnidr_hpc.cluster.sbatch import gpu_request, job_python, sbatch_options
from bnnidr_hpc.cluster.slurm_nodes import resolve_gpu_request
from bnnidr_hpc.cluster.slurm_queries import last_line
from bnnidr_hpc.cluster.status import TERMINAL, last_error_line
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.schema import Config
from bnnidr_hpc.records import run_files, run_record
from bnnidr_hpc.runtime.errors import ConfigError

log = logging.getLogger(__name__)

PLUGIN_PREFIX = "hydra_plugins.bnnidr_hpc."
# Besides Slurm's states after which a job does not run again (status.TERMINAL): the controller
# no longer knows the job.
GONE = "GONE"
# A job Slurm reports ended, without a result file, for this long has ended without a result
# (the file may lag its job's end on a shared file system; a requeue passes through quickly).
ENDED_GRACE_S = 15.0
# A controller that does not answer for this long ends the wait: its jobs are reported failed.
UNREACHABLE_S = 600.0
POLL_S = 5.0


class Refused(Exception):
    """A multirun that is not submitted at all; str() is the one line."""


@dataclass
class Point:
    """One job of the multirun: its overrides, the config it runs, where its run lands."""

    overrides: List[str]
    task_cfg: DictConfig  # the job's config, as the task function receives it
    hydra_cfg: DictConfig
    config: Config
    run_dir: Path
    params: Dict[str, Any]  # the launcher's parameters resolved for this point, profile included


# ----------------------------------------------------------------------------- parameters

def profile_parameters(c: Config, launcher: Dict[str, Any], slurm: bool = True) -> Dict[str, Any]:
    """hydra-submitit-launcher's parameters for a point: the launcher config resolved for the
    point (interpolations such as ${num_gpu} read the point's own values), plus what the cluster
    profile asks that the launcher config cannot say, as sbatch.slurm_parameters maps it."""
    params = {k: v for k, v in launcher.items() if k != "_target_"}
    if not slurm:
        return params
    resolve_gpu_request(c)  # gres_gpus unset: GPUs where the partition has them
    cl = c.cluster
    extra = sbatch_options(cl.sbatch, params.get("additional_parameters") or {})
    gpus_given = any(params.get(k) is not None for k in ("gpus_per_node", "gres", "gpus_per_task")) or any(
        k in extra for k in ("gpus-per-node", "gres", "gpus", "gpus-per-task"))
    if cl.gres_gpus and not gpus_given:
        params["gpus_per_node"] = gpu_request(c)  # TYPE:N goes past AutoExecutor's int check (below)
    mem_given = params.get("mem_gb") is not None or any(params.get(k) for k in ("mem_per_cpu", "mem_per_gpu")) or any(
        k in extra for k in ("mem", "mem-per-cpu", "mem-per-gpu"))
    if cl.mem_gb is not None and not mem_given:
        params["mem_gb"] = cl.mem_gb  # submitit writes --mem=512MB for 0.5, as submit does
    if cl.setup and not params.get("setup"):
        params["setup"] = list(cl.setup)
    params["additional_parameters"] = extra
    return params


def executor_parameters(params: Dict[str, Any], executor: str) -> Dict[str, Any]:
    """Launcher keys as submitit.AutoExecutor takes them: its generic names as they are, the rest
    prefixed with the executor's name (what hydra-submitit-launcher's launch() does)."""
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    out = {}
    for key, value in params.items():
        if key in ("submitit_folder", "max_num_timeout"):
            continue
        if key == "gpus_per_node" and isinstance(value, str):
            key = f"{executor}_gpus_per_node"  # TYPE:N: past AutoExecutor's int check
        out[key if key in generic or key.startswith(f"{executor}_") else f"{executor}_{key}"] = value
    return out


# ----------------------------------------------------------------------------- the launchers

class _BnnidrLaunch:
    """launch() of both launchers; the rest (the job side, __call__) is hydra-submitit-launcher's."""

    _EXECUTOR = "abstract"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        try:
            points = [self._point(list(o)) for o in job_overrides]
            params = self._common_parameters(points)
        except Refused as exc:
            print(f"bnnidr-hpc: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        results: List[Optional[JobReturn]] = [None] * len(points)
        todo = []
        for i, point in enumerate(points):
            record = run_files.read_record(point.run_dir)
            if record and record.get("status") == run_record.COMPLETED:
                ap = run_record.fmt(record.get("ap_out"), ".3f")
                print(f"bnnidr-hpc: completed, not rerun: {point.run_dir} (AP {ap})", flush=True)
                results[i] = _job_return(point, JobStatus.COMPLETED, record)
            else:
                todo.append(i)
        failures = []
        if todo:
            for i, ret in zip(todo, self._submit_and_wait([points[i] for i in todo], params, initial_job_idx, todo)):
                results[i] = ret
                if ret.status != JobStatus.COMPLETED:
                    failures.append((points[i], str(ret._return_value)))
        for point, error in failures:
            print(f"bnnidr-hpc: failed: {point.run_dir}: {error}", file=sys.stderr, flush=True)
        if failures:
            print(f"bnnidr-hpc: {len(failures)} of {len(points)} point(s) failed; rerun the multirun to resume "
                  "them (completed points are not rerun)", file=sys.stderr, flush=True)
            raise SystemExit(1)
        return results

    # ---- before anything is submitted

    def _point(self, overrides: List[str]) -> Point:
        from bnnidr_hpc.config.loading import to_config

        sweep_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        launcher = OmegaConf.to_container(sweep_cfg.hydra.launcher, resolve=True)
        hydra_cfg = sweep_cfg.hydra
        task_cfg = sweep_cfg.copy()
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        try:
            c = to_config(task_cfg)
        except ConfigError as exc:
            raise Refused(f"{' '.join(filter_overrides(overrides))}: {exc}; nothing was submitted") from None
        if not c.run.name:  # as hydra_app names it
            c.run.name = hydra_cfg.job.config_name or ""
        return Point(overrides, task_cfg, hydra_cfg, c, run_dir_for(c),
                     profile_parameters(c, launcher, slurm=self._EXECUTOR == "slurm"))

    def _common_parameters(self, points: List[Point]) -> Dict[str, Any]:
        """The one set of parameters every point's job array shares, or why there is none."""
        for key, how in (("num_gpu", "--gpus {}"), ("num_nodes", "--nodes N, once per node count")):
            values = sorted({getattr(p.config, key) for p in points})
            if len(values) > 1:
                listed = ",".join(map(str, values))
                raise Refused(
                    f"{key}={listed} in one multirun: hydra-submitit-launcher submits a multirun as one job array "
                    f"of one size, so nothing was submitted; sweep it with `bnnidr-hpc submit CONFIG "
                    f"{how.format(listed)}` (or run one multirun per {key})")
        first = points[0].params
        for key in sorted({k for p in points for k in p.params}):
            values = [p.params.get(key) for p in points]
            if any(v != values[0] for v in values):
                shown = ", ".join(sorted({repr(v) for v in values}))
                raise Refused(
                    f"the points ask for different Slurm resources ({key}: {shown}), but one multirun is one job "
                    f"array of one shape, so nothing was submitted; run one multirun per value, or use "
                    f"`bnnidr-hpc submit CONFIG` (one job array per shape)")
        seen: Dict[Path, List[str]] = {}
        for p in points:
            if p.run_dir in seen:
                raise Refused(
                    f"`{' '.join(filter_overrides(seen[p.run_dir]))}` and `{' '.join(filter_overrides(p.overrides))}` "
                    f"train the same run ({p.run_dir}): they differ only in run., cluster. or sweep. keys, which "
                    f"do not change the result; nothing was submitted")
            seen[p.run_dir] = p.overrides
        return first

    # ---- submission and the wait

    def _submit_and_wait(self, points: List[Point], params: Dict[str, Any], initial_job_idx: int,
                         indices: List[int]) -> List[JobReturn]:
        import submitit

        init = {"folder": params["submitit_folder"], f"{self._EXECUTOR}_python": job_python(points[0].config)}
        if params.get("max_num_timeout") is not None:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        executor.update_parameters(**executor_parameters(params, self._EXECUTOR))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        job_params = []
        for i, point in zip(indices, points):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(point.overrides))}")
            job_params.append((point.overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        submitted_at = time.time()
        jobs = executor.map_array(self, *zip(*job_params))
        self._wait(jobs)
        return [self._outcome(job, point, submitted_at) for job, point in zip(jobs, points)]

    def _wait(self, jobs: list) -> None:
        """Until every job has its results or has ended without them."""
        pending = list(jobs)
        ended_since: Dict[str, float] = {}
        unreachable_since: Optional[float] = None
        last_poll = 0.0
        while pending:
            pending = [job for job in pending if not _has_results(job)]
            if not pending:
                return
            if self._EXECUTOR != "slurm":
                pending = [job for job in pending if not job.done()]  # the local executor knows its processes
            elif time.time() - last_poll >= POLL_S:
                last_poll = now = time.time()
                still = []
                for job in pending:
                    state = _slurm_state(str(job.job_id))
                    if state is None:
                        unreachable_since = unreachable_since or now
                        if now - unreachable_since < UNREACHABLE_S:
                            still.append(job)
                        continue
                    unreachable_since = None
                    if state == GONE or state in TERMINAL:
                        ended_since.setdefault(job.job_id, now)
                        if now - ended_since[job.job_id] < ENDED_GRACE_S:
                            still.append(job)
                    else:
                        ended_since.pop(job.job_id, None)
                        still.append(job)
                pending = still
            if pending:
                time.sleep(1.0)

    def _outcome(self, job, point: Point, submitted_at: float) -> JobReturn:
        """The job's JobReturn (task 0's), or a failed one saying why there is none."""
        error = None
        if _has_results(job, task0_only=True):
            try:
                ret = job.task(0).result() if job.num_tasks > 1 else job.result()
            except Exception as exc:  # noqa: BLE001 - submitit's FailedJobError carries the job's traceback
                error = last_line(str(exc))
            else:
                if ret.status == JobStatus.COMPLETED:
                    return ret
                error = last_line(str(ret._return_value))
        else:
            state = _slurm_state(str(job.job_id)) if self._EXECUTOR == "slurm" else None
            error = f"job {job.job_id} ended without a result"
            if state and state != GONE:
                error += f" ({state.lower()})"
            logged = last_error_line(str(job.paths.stderr))
            if logged:
                error += f"; its log: {logged}"
        record = run_files.read_record(point.run_dir) or {}
        fresh = (point.run_dir / run_files.RECORD).exists() and \
            (point.run_dir / run_files.RECORD).stat().st_mtime >= submitted_at - 1
        if fresh and record.get("status") in (run_record.FAILED, run_record.DIVERGED) and record.get("error"):
            error = f"{record['status']}: {record['error']}"
        return _job_return(point, JobStatus.FAILED, error or "failed")


class BnnidrSlurmLauncher(_BnnidrLaunch, SlurmLauncher):
    _EXECUTOR = "slurm"


class BnnidrLocalLauncher(_BnnidrLaunch, LocalLauncher):
    _EXECUTOR = "local"


LAUNCHERS = (BnnidrSlurmLauncher, BnnidrLocalLauncher)


def register() -> None:
    """List the launchers in Hydra's plugin registry under PLUGIN_PREFIX (Hydra instantiates a
    launcher only from a name in its hydra_plugins package)."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    for cls in LAUNCHERS:
        plugins.register(cls)  # discoverable as a Launcher
        plugins.class_name_to_class[PLUGIN_PREFIX + cls.__name__] = cls


# ----------------------------------------------------------------------------- helpers

def _job_return(point: Point, status: JobStatus, value: Any) -> JobReturn:
    """A point's result without a job of its own (completed before) or without one that returned."""
    ret = JobReturn(overrides=point.overrides, cfg=point.task_cfg, hydra_cfg=point.hydra_cfg,
                    working_dir=os.getcwd(), task_name=str(point.hydra_cfg.job.name), status=status)
    ret.return_value = value if status == JobStatus.COMPLETED else RuntimeError(value)
    return ret


def _has_results(job, task0_only: bool = False) -> bool:
    tasks = [0] if task0_only or job.num_tasks <= 1 else range(job.num_tasks)
    return all((job.task(t) if job.num_tasks > 1 else job).paths.result_pickle.exists() for t in tasks)


def _slurm_state(job_id: str) -> Optional[str]:
    """The job's JobState from scontrol; GONE when the controller does not know the job; None when
    it does not answer."""
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode == 0:
        for token in proc.stdout.split():
            if token.startswith("JobState="):
                return token.split("=", 1)[1]
        return None
    return GONE if "invalid job id" in proc.stderr.lower() else None

