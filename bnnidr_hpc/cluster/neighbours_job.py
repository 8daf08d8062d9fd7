"""`bnnidr-hpc neighbours CONFIG --submit [--gpus N] [--nodes M]`: the k-NN graph of a config's
training rows built by a Slurm job of its own, so that a sweep over the same data finds it in the
cache instead of building it in each point's job.

Used by: cli.py (`neighbours`, with or without --submit). The job's ranks are the config's
(num_gpu per node, num_nodes), asked of Slurm as a training job's are (sbatch.py, with the
cluster profile); each runs graph_stage.build_alone, which builds across the ranks into the cache
as a training run's graph stage does, and resumes from the finished blocks after a requeue. The
scripts and logs are in CACHE/jobs/slurm/JOB_ID, the frozen code in CACHE/jobs/code/SHA; a
refused submission leaves nothing but those folders.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from bnnidr_hpc.cluster import planning, slurm_queries
from bnnidr_hpc.config.schema import Config
from bnnidr_hpc.runtime import distributed
from bnnidr_hpc.runtime.errors import ConfigError


class NeighboursJob:
    """What submitit runs on every rank of a neighbours job; picklable, no state beyond its config."""

    def __init__(self, config: Config):
        self.config = config

    def __call__(self) -> dict:
        from bnnidr_hpc.train import graph_stage

        return graph_stage.build_alone(self.config, distributed.describe())

    def checkpoint(self, *args, **kwargs):
        """On Slurm's warning signal: requeue the same job; the build resumes from its finished blocks."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def command(config_path: Optional[str], overrides: List[str], gpus: Optional[int], nodes: Optional[int],
            as_job: bool) -> int:
    """`bnnidr-hpc neighbours`: here (job.neighbours_command), or with --submit checked (one line,
    exit 2, before anything is created) and submitted."""
    if not as_job:
        if nodes is not None:
            raise ConfigError(f"--nodes={nodes} goes with --submit: here the ranks are this machine's (--gpus)")
        from bnnidr_hpc.cluster.job import neighbours_command

        return neighbours_command(config_path, overrides, gpus)
    p = plan(config_path, overrides, gpus, nodes)
    reason = slurm_queries.slurm_available()
    if reason:
        raise ConfigError(f"neighbours --submit: {reason}; build it here without --submit")
    return submit(p)


def plan(config_path: Optional[str], overrides: List[str], gpus: Optional[int], nodes: Optional[int]
         ) -> planning.Plan:
    """The one job's plan, validated (the graph's keys as if it were used); its folder is the
    cache's jobs/ folder."""
    from bnnidr_hpc.config.graph_checks import check_graph
    from bnnidr_hpc.train.graph_stage import cache_root

    if any("," in o for o in overrides):
        raise ConfigError("neighbours --submit: one graph per job; give single values, not comma lists")
    p = planning.plan(config_path, overrides, [gpus] if gpus else None, nodes)
    (point,) = p.points
    check_graph(point.config, used=True)
    return planning.Plan(p.points, sweep_dir=cache_root(point.config).resolve() / "jobs")


def submit(p: planning.Plan) -> int:
    """Ask the cluster first (sbatch --test-only); submit; one line each. Exit status."""
    from bnnidr_hpc.cluster import submit as submitting

    (point,) = p.points
    c = point.config
    for _, refusal, _ in slurm_queries.check(p, [p.points]):
        if refusal:
            print(f"bnnidr-hpc: neighbours: Slurm would refuse {c.num_nodes} node(s) x {c.num_gpu} GPU(s): "
                  f"{refusal}; nothing submitted", file=sys.stderr)
            return 2
    Path(p.sweep_dir).mkdir(parents=True, exist_ok=True)
    submitting.freeze_code(p)
    try:
        (job,) = submitting.submit_group(p, [point], False, lambda pt: NeighboursJob(pt.config),
                                         job_name=f"bnnidr-knn-{c.run.name or 'run'}")
    except submitting.SubmitError as exc:
        print(f"bnnidr-hpc: neighbours: Slurm refused the job: {exc}", file=sys.stderr)
        return 2
    print(f"submitted job {job.job_id}: the k-NN graph into {Path(p.sweep_dir).parent} "
          f"(log: {job.paths.stdout})")
    print("the same command without --submit says when the graph is there; a run or sweep then reads it")
    return 0
