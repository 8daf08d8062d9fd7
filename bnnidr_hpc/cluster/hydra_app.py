"""The same training as a Hydra app, for users of Hydra's multirun and hydra-submitit-launcher.

  python -m bnnidr_hpc.cluster.hydra_app --config-dir conf --config-name hps_00040 -m batch_size=50,100
  python -m bnnidr_hpc.cluster.hydra_app --config-dir conf --config-name hps_00040 -m \\
      hydra/launcher=bnnidr_slurm +cluster=local_gpu num_gpu=2 batch_size=50,100

hydra/launcher=bnnidr_slurm (and bnnidr_local) are hydra-submitit-launcher's
submitit_slurm (submitit_local) with launch() of hydra_launcher.py, shipped in
cluster/hydra_conf/hydra/launcher/ and found with any --config-dir (hydra_plugins/bnnidr_hpc_searchpath
puts that folder on Hydra's search path). Every point is composed and
validated before anything is submitted, and its job array is sized from the points' own config
(tasks_per_node num_gpu, nodes num_nodes) and cluster profile as `bnnidr-hpc submit` sizes it
(the GPU request gres_gpus / gpu_type say, mem_gb, setup, sbatch options, --requeue). One
multirun is one job array of one shape, so a num_gpu or num_nodes sweep is refused before
anything is submitted: sweep those with `bnnidr-hpc submit CONFIG --gpus 1,2,4`. A point whose run
directory already holds a completed record is not rerun (its record is its result); a failed
point ends the multirun (exit 1) with its run directory and error, never a wait on a job that
is gone. Every rank runs main(); it calls the same SlurmJob / run_local as `bnnidr-hpc`, so runs
land in the same run directories, resume from the same checkpoints and requeue the same way.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from bnnidr_hpc.cluster import hydra_launcher
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import to_config
from bnnidr_hpc.config.schema import SCHEMA_NAME, register_schema
from bnnidr_hpc.runtime.errors import ConfigError

register_schema()
hydra_launcher.register()  # the launchers cluster/hydra_conf/hydra/launcher/bnnidr_*.yaml name


def _in_submitit_job() -> bool:
    import os

    return "SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_FOLDER" in os.environ


@hydra.main(version_base="1.3", config_path=None, config_name=SCHEMA_NAME)
def main(cfg: DictConfig) -> dict:
    try:
        c = to_config(cfg)
    except ConfigError as exc:
        print(f"bnnidr-hpc: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not c.run.name:
        from hydra.core.hydra_config import HydraConfig

        c.run.name = HydraConfig.get().job.config_name or ""
    run_dir = run_dir_for(c)
    if _in_submitit_job():
        from bnnidr_hpc.cluster.job import SlurmJob

        # train() refuses a job whose task count is not num_nodes x num_gpu (bnnidr_slurm ties them).
        return SlurmJob(c, str(run_dir))()
    from bnnidr_hpc.cluster.job import RunFailed, run_local
    from bnnidr_hpc.records import run_files, run_record
    from bnnidr_hpc.runtime import atomic_files

    try:
        record = run_local(c, run_dir)
    except (ConfigError, run_files.RunDirBusy) as exc:
        print(f"bnnidr-hpc: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (RunFailed, atomic_files.RunFileError) as exc:
        print(f"bnnidr-hpc: failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if record["status"] != run_record.COMPLETED:  # the same lines and exit statuses as `bnnidr-hpc run`
        print(f"bnnidr-hpc: {record['status']}: {record.get('error') or 'rerun to resume'}", file=sys.stderr)
        raise SystemExit(1 if record["status"] == run_record.DIVERGED else 3)
    return record


if __name__ == "__main__":
    main()
