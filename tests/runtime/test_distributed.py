import pytest

from bnnidr_hpc.cluster import job
from bnnidr_hpc.cluster.job import run_local
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.runtime import collectives, distributed


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


@pytest.mark.parametrize("world,optimizer,rel,cache_gb,loss", [
    (2, "sgd", 1e-5, 1, "stress"), (2, "adamw", 1e-2, 1, "stress"), (3, "sgd", 1e-5, 1, "stress"),
    (2, "sgd", 1e-5, 1e-9, "stress"), (2, "sgd", 1e-4, 1, "umap"), (3, "sgd", 1e-4, 1e-9, "umap"),
    (2, "sgd", 1e-5, 1, "graph"), (3, "adamw", 1e-2, 1e-9, "graph"), (2, "sgd", 1e-5, 1, "graph+distance")])
def test_gloo_ranks_match_one_rank_with_the_same_global_batch(tiny, world, optimizer, rel, cache_gb, loss):
    # Adam divides by the gradient's running RMS: for parameters whose gradient is near zero it turns
    # float rounding (summation order across ranks) into lr-sized steps; SGD shows the agreement.
    # umap's repulsion, 1 / D2 for close output pairs, amplifies the same rounding about 10x.
    # 2 ranks share their off-diagonal pair block half and half, 3 ranks each take a whole one.
    # cache_gb=1e-9: streamed data, every rank makes its own points and the step gathers them.
    # graph: the global batch of edges and negatives is drawn once and split; nothing is gathered.
    # The tiny sphere is linear at output_dim 4, so graph's distance term would be on; its log
    # distance ratios amplify rounding (the 2 ranks' third epoch 2 % off), so the graph cases leave
    # it out, and graph+distance compares the first epoch alone (its split is exact: test_graph_loss).
    global_batch = 24 * world
    distance = loss == "graph+distance"
    common = [f"optimizers.0.name={optimizer}", f"data.cache_gb={cache_gb}", f"loss={loss.split('+')[0]}",
              *(["max_epochs=1"] if distance else ["graph.distance_weight=0"] if loss == "graph" else [])]
    c1 = tiny(f"batch_size={global_batch}", "num_gpu=1", *common)
    one = run_local(c1, run_dir_for(c1))
    c2 = tiny("batch_size=24", f"num_gpu={world}", *common)
    two = run_local(c2, run_dir_for(c2))
    assert two["world_size"] == world and two["global_batch_size"] == global_batch
    if distance:
        assert one["graph_edges"]["distance_weight"] == two["graph_edges"]["distance_weight"] == 10.0
    assert one["data_cached"] == two["data_cached"] == (cache_gb >= 1)
    assert two["steps_per_epoch"] == one["steps_per_epoch"] == 256 // global_batch  # n / (batch x world)
    assert [e["loss"] for e in two["epochs"]] == pytest.approx([e["loss"] for e in one["epochs"]], rel=rel)
    assert two["ap_out"] == pytest.approx(one["ap_out"], abs=1e-3)
    assert two["ap_in"] == pytest.approx(one["ap_in"], abs=1e-9)  # the query split adds up exactly
    # Every rank's per-query APs are gathered: the bootstrap's error and the baselines are one rank's.
    assert two["ap_in_se"] == pytest.approx(one["ap_in_se"], abs=1e-9)
    for name in ("pca", "random"):
        assert two["baselines"][name]["ap"] == pytest.approx(one["baselines"][name]["ap"], abs=1e-6)
    assert all(len(e["rank_epoch_seconds"]) == world for e in two["epochs"])
    assert two["slowest_rank_seconds"] >= max(two["epoch_seconds"]) - 1e-9


def _average_on_two_ranks(rank, port, out):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different starting weights on each rank
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    averager = collectives.GradientAverager(model)
    started = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 3) * (rank + 1)
    (model(x)[:, 0] ** 3).sum().backward()  # different gradients and statistics on each rank
    own = [p.grad.clone() for p in model.parameters()]
    averager.start()()
    averaged = [p.grad.clone() for p in model.parameters()]
    averager.sync_buffers()
    torch.save({"started": started, "own": own, "averaged": averaged,
                "buffers": [b.clone() for b in model.buffers()]}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_gradient_averager_starts_from_rank_0_and_averages_like_ddp(tmp_path):
    import torch
    import torch.multiprocessing as mp

    mp.start_processes(_average_on_two_ranks, args=(distributed.free_port(), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in range(2))
    assert all(torch.equal(a, b) for a, b in zip(r0["started"], r1["started"]))  # rank 0's weights
    for g0, g1, a0, a1 in zip(r0["own"], r1["own"], r0["averaged"], r1["averaged"]):
        assert torch.allclose(a0, (g0 + g1) / 2) and torch.equal(a0, a1)
    assert not all(torch.equal(a, b) for a, b in zip(r0["own"], r1["own"]))  # there was something to average
    assert all(torch.equal(a, b) for a, b in zip(r0["buffers"], r1["buffers"]))  # rank 0's running stats


SLOW_SAVE_S = 1.5


def _train_with_slow_writes_on_rank_0(rank, port, c, run_dir):
    import time

    from bnnidr_hpc.records import run_files

    append_line = run_files.append_line

    def slow_append_line(*args, **kwargs):  # the metrics line: written in the training thread
        time.sleep(SLOW_SAVE_S)
        append_line(*args, **kwargs)

    if rank == 0:
        run_files.append_line = slow_append_line
    job._local_rank(rank, c, run_dir, port)  # what `run --gpus 2` runs on each rank


def test_rank_0_writing_files_does_not_count_as_another_ranks_epoch_time(tiny):
    # Only rank 0 writes the run's files after each epoch; the other ranks must not count waiting
    # for it as training, or the record would name them the slow ranks.
    import torch.multiprocessing as mp

    from bnnidr_hpc.records import run_files

    c = tiny("num_gpu=2", "batch_size=16")
    run_dir = run_dir_for(c)
    mp.start_processes(_train_with_slow_writes_on_rank_0, args=(distributed.free_port(), c, str(run_dir)),
                       nprocs=2, start_method="spawn")
    record = run_files.read_record(run_dir)
    assert record["status"] == "completed" and record["epochs_done"] == 3
    assert record["session_seconds"] > 3 * SLOW_SAVE_S  # the slow writes happened
    # an epoch of this tiny run takes milliseconds; counting rank 0's write would add SLOW_SAVE_S
    assert max(record["slowest_rank_seconds"], *record["epoch_seconds"]) < SLOW_SAVE_S / 2
