"""Real jobs on the local Slurm cluster (slurm/start.sh): submit, sweep, status, cancel, requeue."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_dirs

from bnnidr_hpc import cli
from bnnidr_hpc.cluster.status import job_state, run_status
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.records.run_files import read_job
from bnnidr_hpc.train.loop import train

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

# stress: equal to 1e-5 across rank counts; umap's repulsion amplifies rounding (test_distributed.py)
SGD = ["optimizers.0.name=sgd", "loss=stress", "cluster=local", "run.progress=false"]


def wait_for(predicate, timeout=120, interval=1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s")


def submit(capsys, *args):
    code = cli.main(["submit", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def run_dirs_of(out: str):
    return [Path(line.split(": ", 1)[1]) for line in out.splitlines() if line.startswith("submitted job")]


def ended(run_dir):
    return run_status(run_dir)["state"] in ("completed", "failed", "cancelled")


def record(run_dir):
    return json.loads((Path(run_dir) / "record.json").read_text())


def test_1_2_4_ranks_train_like_one_rank_with_the_global_batch(tmp_path, capsys):
    out = submit(capsys, *TINY, *SGD, "batch_size=16", f"run.root={tmp_path}", "--gpus", "1,2,4")
    dirs = run_dirs_of(out)
    assert len(dirs) == 3 and len({read_job(d)["job_id"] for d in dirs}) == 3
    for d in dirs:
        wait_for(lambda d=d: ended(d), timeout=240)
    for d in dirs:
        rec = record(d)
        assert rec["status"] == "completed", run_status(d)
        assert rec["slurm_job_id"] == read_job(d)["job_id"]
        world = rec["world_size"]
        assert rec["global_batch_size"] == 16 * world and len(rec["epochs"][0]["rank_epoch_seconds"]) == world
        # The same training on one process with the whole global batch: the gathers and the gradient
        # all-reduce across Slurm's ranks must reproduce it.
        c = load(None, TINY + SGD + [f"batch_size={16 * world}", "num_gpu=1"])
        alone = train(c, tmp_path / f"alone{world}")
        assert [e["loss"] for e in rec["epochs"]] == pytest.approx([e["loss"] for e in alone["epochs"]], rel=1e-5)
    # status of the sweep directory lists all three as completed
    code = cli.main(["status", str(dirs[0].parent)])
    table = capsys.readouterr().out.splitlines()
    assert code == 0 and len(table) == 4 and all(" completed " in line for line in table[1:])
    # the scaling table agrees with the records: speedup = epoch(1) / epoch(g), efficiency = speedup / g
    assert cli.main(["collect", str(dirs[0].parent), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["strong_scaling"]
    steady = {record(d)["world_size"]: record(d)["steady_epoch_seconds"] for d in dirs}
    assert [r["gpu"] for r in rows] == [1, 2, 4] and len({r["group"] for r in rows}) == 1
    for r in rows:
        assert r["epoch_s"] == pytest.approx(steady[r["gpu"]])
        assert r["speedup"] == pytest.approx(steady[1] / steady[r["gpu"]])
        assert r["efficiency"] == pytest.approx(steady[1] / steady[r["gpu"]] / r["gpu"])


def test_sweep_is_one_array_and_a_resubmission_is_not_rerun(tmp_path, capsys):
    args = [*TINY, *SGD, f"run.root={tmp_path}", "batch_size=16,32", "--gpus", "1"]
    out = submit(capsys, *args)
    dirs = run_dirs_of(out)
    jobs = [read_job(d)["job_id"] for d in dirs]
    assert len(dirs) == 2 and jobs[0].split("_")[0] == jobs[1].split("_")[0]  # one array, two tasks
    assert dirs[0].parent == dirs[1].parent and "sweep" in dirs[0].parent.name
    for d in dirs:
        wait_for(lambda d=d: ended(d), timeout=180)
    assert sorted(record(d)["batch_size"] for d in dirs) == [16, 32]
    again = submit(capsys, *args)
    assert "submitted job" not in again and again.count("completed, not rerun") == 2
    code = cli.main(["status", str(dirs[0].parent), "--follow", "--interval", "0.2"])
    assert code == 0 and capsys.readouterr().out.count(" completed ") == 2


def test_dry_run_prints_scripts_and_submits_nothing(tmp_path, capsys):
    out = submit(capsys, str(REPO / "conf" / "imagenet_scale.yaml"), f"run.root={tmp_path}", "cluster=example_a100",
                 "--gpus", "1,4", "batch_size=128,256", "--dry-run")
    assert out.count("#SBATCH --gpus-per-node=a100:4") == 1 and out.count("#SBATCH --ntasks-per-node=4") == 1
    assert out.count("#SBATCH --array=0-1%2") == 2
    assert "#SBATCH --partition=gpu" in out and "module load cuda/12.4" in out
    assert out.count("batch_size: 256") == 2 and "4 run(s) validated, nothing submitted" in out
    assert not tmp_path.exists() or not list(tmp_path.rglob("job.json"))


def test_bad_point_in_a_sweep_submits_nothing(tmp_path, capsys):
    code = cli.main(["submit", *TINY, f"run.root={tmp_path / 'runs'}", "batch_size=16,9999", "--gpus", "1"])
    assert code == 2 and "batch_size=9999" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_failed_job_shows_its_error_and_log(tmp_path, capsys):
    out = submit(capsys, *TINY, *SGD, f"run.root={tmp_path}", "run.device=cuda")  # no GPU on this node
    (run_dir,) = run_dirs_of(out)
    status = wait_for(lambda: (s := run_status(run_dir))["state"] == "failed" and s, timeout=120)
    assert "no CUDA device" in status["detail"] and "log: " in status["detail"]
    assert record(run_dir)["status"] == "failed"
    assert cli.main(["collect", str(tmp_path)]) == 0
    assert "failed: " in capsys.readouterr().out


LONG = ["data.n=2000", "data.p=64", "batch_size=50", "max_epochs=40", "eval.every=10"]


def start_long_job(tmp_path, capsys, *extra):
    out = submit(capsys, *TINY, *SGD, *LONG, *extra, f"run.root={tmp_path}")
    (run_dir,) = run_dirs_of(out)
    job = read_job(run_dir)["job_id"]
    wait_for(lambda: (record(run_dir).get("epochs_done") or 0) >= 3 if (run_dir / "record.json").exists() else False,
             timeout=120, interval=0.2)
    return run_dir, job


def test_cancelled_job_is_reported_and_not_requeued(tmp_path, capsys):
    run_dir, job = start_long_job(tmp_path, capsys, "seed=3")
    subprocess.run(["scancel", job], check=True)
    status = wait_for(lambda: (s := run_status(run_dir))["state"] == "cancelled" and s, timeout=60)
    time.sleep(12)  # a requeue would show by now (credentials expire after 10 s)
    status = run_status(run_dir)
    assert status["state"] == "cancelled" and status["restarts"] == 0
    assert record(run_dir)["status"] != "completed"


@pytest.mark.parametrize("signals,gpus", [(["USR2"], "1"), (["TERM", "USR2"], "2")], ids=["timeout", "preemption"])
def test_interrupted_job_requeues_and_resumes_to_the_same_result(tmp_path, capsys, signals, gpus):
    run_dir, job = start_long_job(tmp_path, capsys, "--gpus", gpus)
    for sig in signals:  # time-out: the warning signal; preemption: SIGTERM with it
        subprocess.run(["scancel", f"--signal={sig}", job], check=True)
    wait_for(lambda: ended(run_dir), timeout=180)
    rec = record(run_dir)
    assert rec["status"] == "completed" and rec["restarts"] == 1 and rec["seconds_lost"] > 0
    assert run_status(run_dir)["detail"].startswith("requeued 1x")
    # the last rank's log holds both starts of the job (Slurm appends across a requeue)
    assert cli.main(["logs", str(run_dir), "--rank", str(int(gpus) - 1), "--follow"]) == 0
    assert capsys.readouterr().out.count(f"global_rank={int(gpus) - 1}({gpus})") == 2
    # The same run uninterrupted, here: same final loss and AP.
    c = load(None, TINY + SGD + LONG + [f"num_gpu={gpus}"])
    from bnnidr_hpc.cluster.job import run_local

    straight = run_local(c, tmp_path / "straight")
    assert rec["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-5)
    assert rec["ap_out"] == pytest.approx(straight["ap_out"], abs=1e-6)
    assert [e["loss"] for e in rec["epochs"]] == pytest.approx([e["loss"] for e in straight["epochs"]], rel=1e-5)


def test_hydra_multirun_through_hydra_submitit_launcher(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bnnidr_hpc.cluster.hydra_app", "--config-dir", str(REPO / "conf"), "--config-name",
         "hps_00040", "-m", "hydra/launcher=bnnidr_slurm", "+cluster=local", "num_gpu=2", "batch_size=25,50",
         "max_epochs=2", "run.progress=false", f"run.root={tmp_path / 'runs'}",
         f"hydra.sweep.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = [record(d) for d in run_dirs(tmp_path / "runs")]
    assert [r["status"] for r in recs] == ["completed", "completed"]
    assert all(r["world_size"] == 2 and r["name"] == "hps_00040" for r in recs)  # tasks tied to num_gpu
    assert sorted(r["batch_size"] for r in recs) == [25, 50]
    assert all("_" in r["slurm_job_id"] for r in recs)  # one job array


def test_a_job_out_of_requeues_fails_at_once_with_the_reason(tmp_path, capsys):
    run_dir, job = start_long_job(tmp_path, capsys, "cluster.max_requeues=0", "--gpus", "2", "seed=4")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    status = wait_for(lambda: (s := run_status(run_dir))["state"] == "failed" and s, timeout=60)
    assert "interrupted after 0 restarts" in status["detail"] and "max_requeues=0" in status["detail"]
    # every rank ends instead of holding the allocation: the job leaves the queue within seconds
    wait_for(lambda: job_state(job).get("JobState") in ("FAILED", "COMPLETED"), timeout=30)
    assert record(run_dir)["epochs_done"] < 40


def test_a_warning_signal_before_training_starts_still_requeues(tmp_path, capsys):
    out = submit(capsys, *TINY, *SGD, *LONG, "seed=6", f"run.root={tmp_path}")
    (run_dir,) = run_dirs_of(out)
    job = read_job(run_dir)["job_id"]
    # The task has started (srun made its log) and is importing torch and unpickling the job: the
    # first second of a job, before any handler of the job's own exists.
    wait_for(lambda: Path(read_job(run_dir)["stderr"]).exists(), timeout=60, interval=0.02)
    time.sleep(0.3)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    assert not (run_dir / "record.json").exists()  # training had not started
    wait_for(lambda: ended(run_dir), timeout=180)
    rec = record(run_dir)
    assert rec["status"] == "completed" and rec["restarts"] >= 1, run_status(run_dir)


def test_a_slurm_job_trains_on_npy_features_like_one_local_rank(tmp_path, capsys):
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.save(tmp_path / "X.npy", digits.data.astype(np.float16))
    np.save(tmp_path / "Y.npy", digits.target)
    data = ["data.source=npy", f"data.path={tmp_path / 'X.npy'}", f"data.labels={tmp_path / 'Y.npy'}",
            "data.normalize=l2", "output_dim=8"]
    small = [o for o in TINY if not o.startswith(("data.", "eval.", "output_dim"))]
    out = submit(capsys, *small, *SGD, *data, "batch_size=24", f"run.root={tmp_path / 'runs'}", "--gpus", "2")
    (run_dir,) = run_dirs_of(out)
    wait_for(lambda: ended(run_dir), timeout=240)
    rec = record(run_dir)
    assert rec["status"] == "completed", run_status(run_dir)
    assert rec["world_size"] == 2 and rec["n"] == 1797 - 359 and (run_dir / "heldout.npy").is_file()
    c = load(None, small + SGD + data + ["batch_size=48", "num_gpu=1"])
    alone = train(c, tmp_path / "alone")
    assert [e["loss"] for e in rec["epochs"]] == pytest.approx([e["loss"] for e in alone["epochs"]], rel=1e-5)
    assert rec["ap_out"] == pytest.approx(alone["ap_out"], abs=1e-3)
