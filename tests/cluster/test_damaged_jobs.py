"""status, logs, cancel and retry on run directories whose job.json or record.json hold fields of
the wrong type (a hand edit, a damaged copy): what can be read is shown, the rest is missing, and
every command ends in exit 0 or one line and exit 2, never a traceback. No Slurm job is involved:
the job ids are ones the cluster does not know, and nothing is submitted."""

import json

import pytest

from bnnidr_hpc import cli
from bnnidr_hpc.cluster import status

JOB = {"executor": "slurm", "job_id": "987654321", "stdout": "{log}/987654321_0_log.out",
       "stderr": "{log}/987654321_0_log.err"}
DAMAGED = {
    "final_slurm_state x": {"final_slurm_state": "x"},
    "final_slurm_state of lists": {"final_slurm_state": {"JobState": ["FAILED"], "Restarts": {"a": 1}}},
    "no stdout": {"stdout": None},
    "stdout 5": {"stdout": 5},
    "earlier_jobs x": {"earlier_jobs": "x"},
    "earlier_jobs of numbers": {"earlier_jobs": [1, {"stdout": 7}]},
    "job_id a list": {"job_id": [1]},
    "config x": {"config": "x"},
}
RECORDS = {
    "restarts x": {"status": "failed", "restarts": "x"},
    "error 5 and epochs x": {"status": "failed", "error": 5, "epochs": "x", "final_loss": "x"},
    "huge numbers": {"status": "running", "final_loss": 10**400, "epochs_done": 1.5, "restarts": 10**30},
}


def make_run(tmp_path, job_fields=None, record=None):
    run_dir = tmp_path / "sweep" / "hps-1a2b3c4d"
    log = run_dir / "slurm"
    log.mkdir(parents=True)
    (log / "987654321_0_log.out").write_text("epoch 1\n")
    job = {k: v.format(log=log) for k, v in JOB.items()}
    job.update({k: v for k, v in (job_fields or {}).items()})
    job = {k: v for k, v in job.items() if v is not None}
    (run_dir / "job.json").write_text(json.dumps(job))
    if record is not None:
        (run_dir / "record.json").write_text(json.dumps(record))
    return run_dir


def one_line_or_ok(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, code, err)
    assert (code == 0 and not err) or (err.count("\n") == 1 and err.startswith("bnnidr-hpc: ")), (argv, err)
    return code, out, err


@pytest.mark.parametrize("case", list(DAMAGED) + list(RECORDS))
def test_lifecycle_commands_survive_fields_of_the_wrong_type(tmp_path, capsys, case):
    run_dir = make_run(tmp_path, DAMAGED.get(case), RECORDS.get(case))
    code, out, _ = one_line_or_ok(capsys, ["status", str(run_dir.parent)])
    assert code == 0 and run_dir.name in out
    code, out, err = one_line_or_ok(capsys, ["logs", str(run_dir)])
    if case == "no stdout":  # stderr's log does not exist yet, stdout's is not named: nothing to show
        assert code == 2 and "no log of rank 0" in err
    elif case == "stdout 5":
        assert code == 2
    else:
        assert code == 0 and "epoch 1" in out
    code, out, _ = one_line_or_ok(capsys, ["cancel", str(run_dir.parent)])
    assert code == 0 and "nothing to cancel" in out
    code, out, err = one_line_or_ok(capsys, ["retry", str(run_dir.parent)])
    assert (code == 0 and "nothing to retry" in out) or "no saved config" in err


def test_a_restart_count_that_is_not_a_number_counts_as_none(tmp_path):
    run_dir = make_run(tmp_path, {"final_slurm_state": {"JobState": "COMPLETED", "Restarts": "x"}},
                       {"status": "completed", "restarts": "x", "epochs_done": 3, "max_epochs": 3})
    row = status.run_status(run_dir)
    assert (row["state"], row["restarts"], row["epoch"]) == ("completed", 0, 3)


def test_a_damaged_sweep_manifest_is_read_as_no_points(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    for points in ("abc", 5, ["x"], {"../up": {}, "p": "x"}):
        (run_dir.parent / "sweep.json").write_text(json.dumps({"points": points}))
        assert status.find_run_dirs(run_dir.parent) == [run_dir]
        one_line_or_ok(capsys, ["status", str(run_dir.parent)])
