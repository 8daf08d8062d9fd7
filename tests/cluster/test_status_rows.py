"""`bnnidr-hpc status` over several folders: a run and a sweep's point of the same config (the same
directory name) are two rows told apart by their path, and a run that was submitted again says
so instead of "requeued". Records and job.json written by hand; no cluster needed."""

import json

from bnnidr_hpc import cli

RECORD = {"status": "completed", "epochs_done": 3, "max_epochs": 3, "final_loss": 0.5, "ap_out": 0.7,
          "world_size": 1, "epochs": [{"samples_per_s": 1000.0}]}


def make_run(run_dir, restarts=0, job=None):
    run_dir.mkdir(parents=True)
    (run_dir / "record.json").write_text(json.dumps({**RECORD, "restarts": restarts}))
    if job is not None:
        (run_dir / "job.json").write_text(json.dumps(job))
    return run_dir


def rows(capsys, *folders):
    assert cli.main(["status", *map(str, folders)]) == 0
    return capsys.readouterr().out.splitlines()[1:]


def test_a_run_and_a_sweep_point_of_one_name_are_two_rows_told_apart(tmp_path, capsys):
    make_run(tmp_path / "runs" / "hps_00040-1a2b3c4d")
    make_run(tmp_path / "runs" / "hps_00040-sweep-77777777" / "hps_00040-1a2b3c4d")
    names = [line.split()[0] for line in rows(capsys, tmp_path / "runs")]
    assert names == ["hps_00040-1a2b3c4d", "hps_00040-sweep-77777777/hps_00040-1a2b3c4d"]


def test_status_takes_several_folders(tmp_path, capsys):
    make_run(tmp_path / "a" / "one-11111111")
    make_run(tmp_path / "b" / "two-22222222")
    make_run(tmp_path / "b" / "three-33333333")
    names = [line.split()[0] for line in rows(capsys, tmp_path / "a", tmp_path / "b")]
    assert names == ["one-11111111", "three-33333333", "two-22222222"]
    # a run folder itself, and the same run through its parent, is one row
    assert len(rows(capsys, tmp_path / "a" / "one-11111111", tmp_path / "a")) == 1


def test_a_retried_run_says_resubmitted_not_requeued(tmp_path, capsys):
    job = {"job_id": "999999991", "executor": "slurm", "slurm_conf": str(tmp_path / "gone.conf"),
           "stdout": "x.out", "stderr": "x.err", "final_slurm_state": {"JobState": "COMPLETED", "Restarts": "0"},
           "earlier_jobs": [{"job_id": "999999990", "stdout": "y.out", "stderr": "y.err"}]}
    make_run(tmp_path / "runs" / "retried-44444444", restarts=1, job=job)
    requeued = {**job, "job_id": "999999992", "earlier_jobs": [],
                "final_slurm_state": {"JobState": "COMPLETED", "Restarts": "1"}}
    make_run(tmp_path / "runs" / "requeued-55555555", restarts=1, job=requeued)
    make_run(tmp_path / "runs" / "rerun_here-66666666", restarts=1)
    lines = {line.split()[0]: line for line in rows(capsys, tmp_path / "runs")}
    assert lines["retried-44444444"].endswith("resubmitted 1x") and "requeued" not in lines["retried-44444444"]
    assert lines["requeued-55555555"].endswith("requeued 1x")
    assert lines["rerun_here-66666666"].endswith("resumed 1x")
