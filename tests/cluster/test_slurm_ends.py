"""Every way Slurm ends a job is in the run's record and in `status`: a warning signal with 2 ranks
and 5 steps per epoch requeues and resumes to the uninterrupted result, `cancel` says cancelled,
the time limit says timeout; a job Slurm ended without a word from it is completed by `status`."""

import json
import subprocess

import pytest
from conftest import TINY
from test_slurm import SGD, record, run_dirs_of, submit, wait_for

from bnnidr_hpc import cli
from bnnidr_hpc.cluster.job import run_local
from bnnidr_hpc.cluster.status import job_state, run_status
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.records.run_files import read_job

# 2 ranks of 32 rows on 320 rows: 5 steps per epoch, well under any every-N-steps check.
SHORT_EPOCHS = ["data.n=320", "batch_size=32", "max_epochs=400", "eval.every=100", "seed=12"]


def start(tmp_path, capsys, *extra):
    out = submit(capsys, *TINY, *SGD, *SHORT_EPOCHS, *extra, f"run.root={tmp_path}", "--gpus", "2")
    (run_dir,) = run_dirs_of(out)
    wait_for(lambda: (record(run_dir).get("epochs_done") or 0) >= 3 if (run_dir / "record.json").exists() else False,
             timeout=120, interval=0.2)
    assert record(run_dir)["steps_per_epoch"] == 5
    return run_dir, read_job(run_dir)["job_id"]


def record_says(run_dir, *statuses):
    """The record's status once it is one of statuses, read from the file alone (no `status`, which
    would write Slurm's end into it)."""
    return lambda: record(run_dir).get("status") in statuses and record(run_dir)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_warning_signal_with_5_steps_per_epoch_requeues_and_resumes_to_the_same_final_loss(tmp_path, capsys):
    run_dir, job = start(tmp_path, capsys)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    rec = wait_for(record_says(run_dir, "completed", "failed"), timeout=240)
    assert rec["status"] == "completed" and rec["restarts"] == 1, run_status(run_dir)
    assert run_status(run_dir)["detail"].startswith("requeued 1x")
    straight = run_local(load(None, TINY + SGD + SHORT_EPOCHS + ["num_gpu=2"]), tmp_path / "straight")
    assert rec["final_loss"] == straight["final_loss"]
    assert [e["loss"] for e in rec["epochs"]] == [e["loss"] for e in straight["epochs"]]


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_cancel_stops_the_ranks_at_once_and_the_record_says_cancelled(tmp_path, capsys):
    run_dir, job = start(tmp_path, capsys, "seed=13")
    assert cli.main(["cancel", str(run_dir)]) == 0 and job in capsys.readouterr().out
    rec = wait_for(record_says(run_dir, "cancelled", "completed"), timeout=60, interval=0.2)
    assert rec["status"] == "cancelled" and "cancelled" in rec["error"], rec.get("error")
    assert rec["epochs_done"] < 400 and (run_dir / "checkpoint.pt").exists()
    wait_for(lambda: job_state(job).get("JobState") == "CANCELLED", timeout=60)
    status = run_status(run_dir)
    assert status["state"] == "cancelled" and record(run_dir)["status"] == "cancelled"


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_job_at_its_time_limit_says_timeout_in_record_status_and_collect(tmp_path, capsys):
    run_dir, job = start(tmp_path, capsys, "seed=14", "max_epochs=100000", "cluster.timeout_min=1",
                         "cluster.signal_delay_s=10", "cluster.max_requeues=0")
    rec = wait_for(record_says(run_dir, "timeout", "failed", "completed"), timeout=150)
    assert rec["status"] == "timeout" and "time limit" in rec["error"], rec.get("error")
    assert rec["epochs_done"] < 100000 and (run_dir / "checkpoint.pt").exists()
    assert cli.main(["collect", str(tmp_path), "--format", "json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["not_completed"]
    assert listed["status"] == "timeout"
    # every rank ends at once rather than hold the allocation to the limit
    wait_for(lambda: job_state(job).get("JobState") not in ("RUNNING", "COMPLETING"), timeout=30)
    status = run_status(run_dir)
    assert status["state"] == "timeout" and "time limit" in status["detail"] and "Killed" not in status["detail"]


@pytest.mark.parametrize("slurm_state,status,words", [
    ("TIMEOUT", "timeout", "time limit"), ("CANCELLED", "cancelled", "cancelled"),
    ("NODE_FAIL", "node_fail", "lost a node"), ("PREEMPTED", "preempted", "preempted"),
    ("OUT_OF_MEMORY", "out_of_memory", "OOM")])
def test_a_job_slurm_ended_without_a_word_from_it_is_shown_and_recorded_as_slurm_says(
        tmp_path, capsys, slurm_state, status, words):
    # killed by SIGKILL at the limit, its node gone or the OOM killer: the record still says running
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "record.json").write_text(json.dumps({
        "schema": "bnnidr-hpc/record/1", "config": {}, "world_size": 2, "status": "running", "epochs_done": 335,
        "max_epochs": 600, "run_dir": str(run_dir)}))
    (run_dir / "job.json").write_text(json.dumps({
        "executor": "slurm", "job_id": "99999998", "slurm_conf": str(tmp_path / "none.conf"),
        "final_slurm_state": {"JobState": slurm_state, "TimeLimit": "00:01:00", "NodeList": "gpu1"}}))
    shown = run_status(run_dir)
    assert shown["state"] == status and words in shown["detail"] and "epoch 335 of 600" in shown["detail"]
    assert record(run_dir)["status"] == status and record(run_dir)["error"] == shown["detail"]
    assert cli.main(["collect", str(tmp_path), "--format", "json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)["not_completed"]] == [status]
