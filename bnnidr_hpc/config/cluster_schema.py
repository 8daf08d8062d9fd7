"""The sections of the schema that say what a job asks of a cluster (`cluster:`, a profile in
conf/cluster/NAME.yaml) and which study `submit` runs (`sweep:`). Part of the one schema
(schema.Config holds them); apart because the training never reads them.

Used by: schema.py, cluster/ (planning, sbatch, slurm_queries), config/validation.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class ClusterConfig:
    """Slurm resources for `bnnidr-hpc submit`: a profile NAME.yaml or a path, chosen with
    cluster=NAME|PATH (config.profiles says where it is looked for). None of these change the trained result.

    Args:
        name: the profile's name (its file's stem unless it says one); `builtin` without a profile.
        partition, account, qos, constraint: passed to sbatch when set (constraint: a node
            feature the cluster defines, not a GPU type; see gpu_type).
        gres_gpus: ask Slurm for num_gpu GPUs per node (false: CPU-only partitions, gloo ranks);
            unset (the built-in default): GPUs where the partition has them, asked of the cluster
            at submission (cluster.slurm_nodes).
        gpu_type: the GPU type of typed gres (e.g. h100: `--gpus-per-node=h100:N`); None: any GPU.
        cpus_per_task: CPU cores per rank (data generation and the loader run there).
        mem_gb: memory per node (None: the partition's default).
        timeout_min: the job's time limit; the job checkpoints and requeues itself before it.
        signal_delay_s: Slurm sends the warning signal (USR2) this long before the time limit.
        max_requeues: times a job may requeue itself after a time-out or preemption.
        setup: shell lines run before the ranks start (module load ..., export NCCL_...=...).
        sbatch: further sbatch options, e.g. {exclusive: true, mail-type: END}. Jobs are
            submitted with --requeue unless this holds no-requeue: true.
        python: the interpreter the job starts, run after the setup lines (e.g. `python` to take
            the one a `conda activate` there puts on PATH); None: the one that submits.
        profile_path: the file the profile was read from (set by config.profiles; messages name it).
    """

    name: str = "builtin"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    gres_gpus: Optional[bool] = None
    gpu_type: Optional[str] = None
    cpus_per_task: int = 1
    mem_gb: Optional[float] = None
    timeout_min: int = 60
    signal_delay_s: int = 90
    max_requeues: int = 3
    setup: List[str] = field(default_factory=list)
    sbatch: Dict[str, Any] = field(default_factory=dict)
    python: Optional[str] = None
    profile_path: Optional[str] = None


@dataclass
class SweepConfig:
    """A study that `bnnidr-hpc submit CONFIG` runs when the command line does not say otherwise.

    Args:
        gpus: GPU counts, one job (array) each, unless --gpus is given.
        grid: key -> comma list (Hydra's sweep syntax), e.g. {batch_size: "128,256"}, unless the
            command line overrides that key.
    """

    gpus: List[int] = field(default_factory=list)
    grid: Dict[str, str] = field(default_factory=dict)
