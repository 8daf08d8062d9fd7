"""What a submission asks of Slurm for each group of points: sbatch's options, the script
submitit's executor writes from them, and the command every task runs.

Used by: submit.py (slurm_executor submits a group), slurm_queries.py (check tries the script with
`sbatch --test-only`), submit_report.py (`submit --dry-run` prints dry_run), hydra_launcher.py
(gpu_request, job_python, sbatch_options: the same request through the Hydra launcher).

What is printed is what is submitted: the sbatch script of --dry-run and --check is written by
submitit's own executor, with the parameters submission uses. The job's PYTHONPATH starts with the
submission's frozen code (planning.code_dir), so the job imports the package as it was submitted.
"""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path
from typing import List

from bnnidr_hpc.cluster.planning import Plan, Point, code_dir
from bnnidr_hpc.config.schema import Config, to_yaml

# The module every task starts: it catches a warning signal that comes before the job's own
# handlers (job.StopFlag) are in place.
JOB_START = "-m bnnidr_hpc.cluster.job_start"


def dry_run(p: Plan) -> List[str]:
    """The resolved config of every point and the sbatch script of every group."""
    lines = [f"# run directory: {point.run_dir}\n{to_yaml(point.config)}" for point in p.points]
    for group in p.groups.values():
        c = group[0].config
        lines.append(f"# sbatch script for {len(group)} run(s), {c.num_nodes} node(s) x {c.num_gpu} GPU(s)")
        lines.append(sbatch_script(p, group))
    return lines


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
