"""Planning a submission: its points (one run, or a sweep's grid), their run directories, and what
to do with each (submit, resume, or leave alone: completed, queued or diverged). Nothing is created.

Used by: cli.py and submit_report.py (`bnnidr-hpc submit`, `retry`), lifecycle.py (`retry` rebuilds
a Plan from what was submitted), sbatch.py, slurm_queries.py and submit.py (a Plan is what they
write scripts for, check and submit).

A plan validates every point before anything is submitted or created. Comma lists in overrides
(Hydra's sweep syntax) and the config's own `sweep` preset make a grid; points with more than one
member share a sweep directory named by a hash of the sweep's spec, so resubmitting finds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from bnnidr_hpc.cluster.slurm_nodes import resolve_gpu_request
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import compose, load
from bnnidr_hpc.config.schema import Config
from bnnidr_hpc.records import run_files, run_record
from bnnidr_hpc.runtime.errors import ConfigError

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

    from bnnidr_hpc.config.raw_checks import check_raw_overrides

    check_raw_overrides(overrides)  # sizes and nesting first: Hydra's parser takes minutes on a huge list
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"overrides: {str(exc).splitlines()[0]}; write key=value or key=a,b,c") from None
    return BasicSweeper.split_arguments(parsed, None)[0] if parsed else [[]]


def plan(config_path: Optional[str], overrides: List[str], gpus: Optional[List[int]],
         nodes: Optional[int] = None) -> Plan:
    """Every point of the submission, validated; nothing is created. nodes: --nodes, else the
    config's num_nodes."""
    if nodes is not None and nodes < 1:
        raise ConfigError(f"--nodes={nodes} is not allowed: a positive integer")
    from omegaconf import OmegaConf

    # The config's own sweep preset (read, not validated: the sweep's values are not in yet).
    composed = compose(config_path, [o for o in overrides if "," not in o])
    _check_nodes(nodes, composed.num_nodes, overrides)
    preset = OmegaConf.to_object(composed.sweep)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    overrides = overrides + [f"{k}={v}" for k, v in preset.grid.items() if k not in given]
    combos = expand_sweep(overrides)
    gpus_list = gpus or list(preset.gpus) or [None]
    sweep_dir = None
    if len(combos) * len(gpus_list) > 1:
        first = load(config_path, combos[0])
        # nodes `or 1`: the digests of sweeps submitted before --nodes was optional stay the same
        spec = {"config": str(Path(config_path).resolve()) if config_path else None, "gpus": gpus_list,
                "nodes": nodes or 1, "overrides": overrides}
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
        sweep_dir = Path(first.run.root).resolve() / f"{first.run.name or 'default'}-sweep-{digest}"
    points, partitions_with_gpus = [], {}
    for g in gpus_list:
        for combo in combos:
            extra = ([f"num_nodes={nodes}"] if nodes else []) + ([f"num_gpu={g}"] if g else [])
            extra += [f"run.root={sweep_dir}"] if sweep_dir else []
            c = load(config_path, combo + extra)
            resolve_gpu_request(c, partitions_with_gpus)
            points.append(Point(c, run_dir_for(c).absolute()))  # a job's working directory may differ
    return Plan(points, sweep_dir)


def _check_nodes(nodes: Optional[int], num_nodes, overrides: List[str]) -> None:
    """--nodes and a num_nodes the config or an override sets must agree (the schema's default
    of 1 gives way to --nodes)."""
    given = any(o.split("=", 1)[0].lstrip("+") == "num_nodes" for o in overrides)
    if nodes is not None and num_nodes != nodes and (given or num_nodes != Config.num_nodes):
        raise ConfigError(f"--nodes={nodes} is not allowed: the config says num_nodes={num_nodes}; "
                          "give one of them (or the same value)")


def classify(p: Plan, force: bool) -> None:
    """Each point's action: a completed run is not rerun and a queued or running job not doubled
    (unless force); a point with a record resumes from its checkpoint."""
    from bnnidr_hpc.cluster.status import TERMINAL, slurm_view

    for point in p.points:
        record = run_files.read_record(point.run_dir)
        slurm_state = slurm_view(point.run_dir).get("JobState")
        if force:
            point.action = SUBMIT
        elif record and record.get("status") == run_record.COMPLETED:
            point.action, point.detail = DONE, f"AP {run_record.fmt(record.get('ap_out'), '.3f')}"
        elif record and record.get("status") == run_record.DIVERGED:
            point.action, point.detail = DIVERGED, record.get("error") or ""
        elif slurm_state and slurm_state not in TERMINAL:
            point.action = QUEUED
            job_id = (run_files.read_job(point.run_dir) or {}).get("job_id", "?")
            point.detail = f"{slurm_state.lower()} as job {job_id}"
        elif record:
            point.action = RESUME


def pending_groups(p: Plan) -> List[List[Point]]:
    """The groups with points to submit, each reduced to those points."""
    groups = [[pt for pt in group if pt.action in (SUBMIT, RESUME)] for group in p.groups.values()]
    return [group for group in groups if group]


def code_dir(p: Plan) -> Path:
    """Where a submission's jobs find their code: DIR/code/SHA (the sources' digest)."""
    return p.target / "code" / run_record.code_state()["sha256"]
