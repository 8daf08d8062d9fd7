import pytest

from bnnidr_hpc import distributed
from bnnidr_hpc.config import run_dir_for
from bnnidr_hpc.launch import run_local


def test_describe_reads_torchrun_slurm_or_nothing():
    info = distributed.describe({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node7",
                                 "MASTER_PORT": "1234", "SLURM_JOB_ID": "99", "SLURM_CPUS_PER_TASK": "6"})
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port) == (3, 4, 1, "node7", 1234)
    assert (info.slurm_job_id, info.cpus_per_task, info.is_main) == ("99", 6, False)
    srun = distributed.describe({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1",
                                 "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2", "SLURM_JOB_ID": "7"})
    assert (srun.rank, srun.world_size, srun.slurm_job_id) == (1, 2, "5_2")
    alone = distributed.describe({})
    assert (alone.rank, alone.world_size, alone.distributed, alone.slurm_job_id) == (0, 1, False, None)


@pytest.mark.parametrize("optimizer,rel", [("sgd", 1e-5), ("adamw", 1e-2)])
def test_two_gloo_ranks_match_one_rank_with_twice_the_batch(tiny, optimizer, rel):
    # Adam divides by the gradient's running RMS: for parameters whose gradient is near zero it turns
    # float rounding (summation order across ranks) into lr-sized steps; SGD shows the agreement.
    c1 = tiny("batch_size=64", "num_gpu=1", f"optimizers.0.name={optimizer}")
    one = run_local(c1, run_dir_for(c1))
    c2 = tiny("batch_size=32", "num_gpu=2", f"optimizers.0.name={optimizer}")
    two = run_local(c2, run_dir_for(c2))
    assert two["world_size"] == 2 and two["global_batch_size"] == 64
    assert two["steps_per_epoch"] == one["steps_per_epoch"] == 256 // 64  # n / (batch x world)
    assert [e["loss"] for e in two["epochs"]] == pytest.approx([e["loss"] for e in one["epochs"]], rel=rel)
    assert two["ap_out"] == pytest.approx(one["ap_out"], abs=1e-3)
    assert two["ap_in"] == pytest.approx(one["ap_in"], abs=1e-9)  # the query split adds up exactly
    assert all(len(e["rank_epoch_seconds"]) == 2 for e in two["epochs"])
    assert two["slowest_rank_seconds"] >= max(two["epoch_seconds"]) - 1e-9
