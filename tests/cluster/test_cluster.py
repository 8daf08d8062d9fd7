"""The local cluster as real clusters are (slurm/start.sh): a CPU-only default partition beside a
`gpu` partition of two nodes with typed GPUs, requeueing off unless asked for, node names that do
not resolve. Multi-node training, GPU requests, checks and refusals, requeue refused, frozen code,
the cluster a job belongs to, and the lifecycle commands (logs, cancel, retry)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY
from test_slurm import LONG, SGD, ended, record, run_dirs_of, start_long_job, submit, wait_for

from bnnidr_hpc import cli
from bnnidr_hpc.cluster import planning
from bnnidr_hpc.cluster import submit as submitting
from bnnidr_hpc.cluster.status import TERMINAL, job_state, run_status, slurm_view
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.records.run_files import read_job
from bnnidr_hpc.train.loop import train

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

GPU = [o if o != "cluster=local" else "cluster=local_gpu" for o in SGD]


def test_4_ranks_on_2_gpu_nodes_train_like_one_rank_with_the_global_batch(tmp_path, capsys):
    out = submit(capsys, str(REPO / "conf" / "hps_00040.yaml"), *GPU, "max_epochs=3", "eval.every=3",
                 f"run.root={tmp_path}", "--gpus", "2", "--nodes", "2")
    (run_dir,) = run_dirs_of(out)
    wait_for(lambda: ended(run_dir), timeout=240)
    rec = record(run_dir)
    assert rec["status"] == "completed", run_status(run_dir)
    # two ranks on each GPU node; the node names do not resolve, so they met at Slurm's NodeAddr
    assert rec["world_size"] == 4 and rec["hosts"] == ["gpu1", "gpu1", "gpu2", "gpu2"]
    fields = job_state(rec["slurm_job_id"])
    assert fields["Partition"] == "gpu" and "gpu:h100:2" in fields.get("TresPerNode", "")
    c = load(str(REPO / "conf" / "hps_00040.yaml"), GPU + ["max_epochs=3", "eval.every=3", "batch_size=200"])
    alone = train(c, tmp_path / "alone")
    assert [e["loss"] for e in rec["epochs"]] == pytest.approx([e["loss"] for e in alone["epochs"]], rel=1e-5)
    # collect tells 2 nodes x 2 GPUs from 1 node x 4
    assert cli.main(["collect", str(tmp_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["strong_scaling"]
    assert [(r["nodes"], r["gpus_per_node"], r["hosts"]) for r in rows if r["gpu"] == 4] == [(2, 2, 2)]


def test_a_gpu_count_sweep_lands_on_the_gpu_partition_with_typed_gpus(tmp_path, capsys):
    out = submit(capsys, *TINY, *GPU, f"run.root={tmp_path}", "--gpus", "1,4")
    dirs = run_dirs_of(out)
    for d in dirs:
        wait_for(lambda d=d: ended(d), timeout=240)
    for d in dirs:
        rec = record(d)
        assert rec["status"] == "completed", run_status(d)
        fields = job_state(rec["slurm_job_id"])
        assert fields["Partition"] == "gpu" and f"gpu:h100:{rec['world_size']}" in fields.get("TresPerNode", "")
        assert set(rec["hosts"]) <= {"gpu1", "gpu2"} and len(set(rec["hosts"])) == 1


def submitted_script(run_dir: Path) -> str:
    job = read_job(run_dir)
    first_id = job["job_id"].split("_")[0]
    (script,) = Path(job["submitit_folder"]).parent.glob(f"{first_id}/{first_id}_submission.sh")
    return script.read_text()


def printed_script(out: str) -> str:
    return out[out.index("#!/bin/bash"):out.index("\ndry run:")].strip()


def test_the_dry_run_prints_exactly_the_script_submitit_submits(tmp_path, capsys):
    args = [*TINY, *GPU, f"run.root={tmp_path}", "cluster.mem_gb=0.5", "batch_size=16,32", "--gpus", "2"]
    script = printed_script(submit(capsys, *args, "--dry-run"))
    assert "#SBATCH --mem=512MB" in script and "#SBATCH --array=0-1%2" in script and "--gpus-per-node=h100:2" in script
    dirs = run_dirs_of(submit(capsys, *args))
    assert submitted_script(dirs[0]).strip() == script
    single = [*TINY, *GPU, f"run.root={tmp_path / 'one'}", "--gpus", "1"]
    printed = printed_script(submit(capsys, *single, "--dry-run"))
    (run_dir,) = run_dirs_of(submit(capsys, *single))
    assert submitted_script(run_dir).strip() == printed
    for d in [*dirs, run_dir]:
        wait_for(lambda d=d: ended(d), timeout=240)


@pytest.mark.parametrize("extra,reason", [
    (["cluster.gres_gpus=true"], "Requested node configuration is not available"),  # GPUs of the CPU partition
    (["cluster=local_gpu", "cluster.gpu_type=a100"], "Requested node configuration is not available"),
    (["cluster=local_gpu", "cluster.timeout_min=500"], "over partition gpu's MaxTime of 120 min"),
    (["cluster=local_gpu", "cluster.partition=nosuch"], "nvalid partition"),
], ids=["gpus-on-cpu-partition", "gpu-type", "time-limit", "partition"])
def test_check_and_submit_refuse_what_the_cluster_would_not_run(tmp_path, capsys, extra, reason):
    args = [*TINY, f"run.root={tmp_path / 'runs'}", *extra, "--gpus", "2"]
    for mode in ("--check", None):
        code = cli.main(["submit", *args] + ([mode] if mode else []))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and reason in err[0] and err[0].endswith("; nothing submitted")
        assert not (tmp_path / "runs").exists()


def test_a_sweep_slurm_refuses_in_part_names_the_points_and_status_shows_them(tmp_path, capsys):
    # --check (run by submit first) refuses the whole sweep: 8 GPUs per node do not exist
    code = cli.main(["submit", *TINY, *GPU, f"run.root={tmp_path}", "--gpus", "1,8"])
    assert code == 2 and "8 GPU(s)" in capsys.readouterr().err and not list(tmp_path.iterdir())
    # sbatch itself refusing one group (as when the cluster changes between check and submit)
    plan = planning.plan(None, TINY + GPU + [f"run.root={tmp_path}"], [1, 8], 1)
    submitted, refused = submitting.submit(plan, local=False, force=False)
    assert len(submitted) == 1 and len(refused) == 1
    (group, why), = refused
    assert "Requested node configuration is not available" in why and group[0].config.num_gpu == 8
    assert not group[0].run_dir.exists() and not list(plan.sweep_dir.glob("slurm/*.pkl"))
    assert cli.main(["status", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert " not submitted " in table and "Requested node configuration" in table
    wait_for(lambda: ended(submitted[0][0].run_dir), timeout=180)


def test_where_requeueing_is_refused_the_record_says_failed_with_slurms_reason(tmp_path, capsys):
    run_dir, job = start_long(tmp_path, capsys, "+cluster.sbatch.no_requeue=true", "seed=7")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    status = wait_for(lambda: (s := run_status(run_dir))["state"] == "failed" and s, timeout=90)
    assert "Slurm refused to requeue" in status["detail"] and "disabled" in status["detail"]
    assert record(run_dir)["status"] == "failed"


def start_long(tmp_path, capsys, *extra):
    out = submit(capsys, *TINY, *SGD, *LONG, *extra, f"run.root={tmp_path}")
    (run_dir,) = run_dirs_of(out)
    wait_for(lambda: (record(run_dir).get("epochs_done") or 0) >= 3 if (run_dir / "record.json").exists() else False,
             timeout=120, interval=0.2)
    return run_dir, read_job(run_dir)["job_id"]


def test_a_job_runs_the_code_as_it_was_at_submission_even_after_a_requeue(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "bnnidr_hpc", src / "bnnidr_hpc", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-m", "bnnidr_hpc.cli", "submit", *TINY, *SGD, *LONG, "seed=8",
                           f"run.root={tmp_path / 'runs'}"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs_of(proc.stdout)
    # the code on disk breaks after submission: importing training now fails
    train_py = src / "bnnidr_hpc" / "train" / "loop.py"
    train_py.write_text("raise ImportError('edited after submission')\n" + train_py.read_text())
    wait_for(lambda: (record(run_dir).get("epochs_done") or 0) >= 3 if (run_dir / "record.json").exists() else False,
             timeout=120, interval=0.2)
    subprocess.run(["scancel", "--signal=USR2", read_job(run_dir)["job_id"]], check=True)
    wait_for(lambda: ended(run_dir), timeout=180)
    rec = record(run_dir)
    assert rec["status"] == "completed" and rec["restarts"] == 1, run_status(run_dir)
    frozen = Path(read_job(run_dir)["code"])
    assert rec["code"]["path"] == str(frozen / "bnnidr_hpc") and frozen.parent == run_dir / "code"
    assert rec["code"]["sha256"] == frozen.name
    assert "edited" not in (frozen / "bnnidr_hpc" / "train" / "loop.py").read_text()


def test_a_rendezvous_that_cannot_connect_fails_the_job_fast_naming_address_and_port(tmp_path, capsys):
    start = time.time()
    out = submit(capsys, *TINY, *SGD, "cluster.setup=['export MASTER_ADDR=10.255.255.1']", "run.rank_timeout_s=5",
                 f"run.root={tmp_path}", "--gpus", "2")
    (run_dir,) = run_dirs_of(out)
    status = wait_for(lambda: (s := run_status(run_dir))["state"] == "failed" and s, timeout=120)
    assert time.time() - start < 90
    assert "rendezvous at 10.255.255.1:" in status["detail"]
    port = int(status["detail"].split("10.255.255.1:")[1].split()[0])
    assert 20000 <= port < 32768  # below Linux's ephemeral range


def test_status_asks_the_cluster_that_took_the_job_and_keeps_its_final_state(tmp_path, capsys, monkeypatch):
    run_dir, job = start_long(tmp_path, capsys, "seed=9")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "another-cluster.conf"))  # the environment points elsewhere
    assert run_status(run_dir)["state"] == "running"
    assert cli.main(["cancel", str(tmp_path)]) == 0 and job in capsys.readouterr().out
    wait_for(lambda: run_status(run_dir)["state"] == "cancelled", timeout=60)
    # The job writes 'cancelled' itself while Slurm still lists it COMPLETING; status keeps Slurm's
    # final state (asked by run_status) once Slurm has one.
    wait_for(lambda: run_status(run_dir) and "final_slurm_state" in read_job(run_dir), timeout=60)
    kept = read_job(run_dir)["final_slurm_state"]
    assert kept["JobState"] == "CANCELLED"
    # once the cluster has forgotten the job (here: a job id it never had), or its id names another
    # job (a controller started afresh numbers from 1 again), the kept state shows
    info = read_job(run_dir)
    other = subprocess.run(["sbatch", "--parsable", "--hold", "--wrap", "true"], capture_output=True, text=True,
                           check=True, env={**os.environ, "SLURM_CONF": info["slurm_conf"]}).stdout.strip()
    for job_id in ("99999999", other):
        (run_dir / "job.json").write_text(json.dumps({**info, "job_id": job_id}))
        assert run_status(run_dir)["state"] == "cancelled"
    assert cli.main(["cancel", str(tmp_path)]) == 0  # and cancel leaves the other job alone
    assert "nothing to cancel" in capsys.readouterr().out
    assert job_state(other, info["slurm_conf"])["JobState"] == "PENDING"
    subprocess.run(["scancel", other], env={**os.environ, "SLURM_CONF": info["slurm_conf"]})


def test_cancel_a_sweep_then_retry_its_cancelled_points_as_one_array(tmp_path, capsys):
    out = submit(capsys, *TINY, *SGD, *LONG, f"run.root={tmp_path}", "seed=10,11")
    dirs = run_dirs_of(out)
    sweep = dirs[0].parent
    wait_for(lambda: all((run_status(d)["epoch"] or 0) >= 2 for d in dirs), timeout=120, interval=0.2)
    assert cli.main(["cancel", str(sweep)]) == 0
    capsys.readouterr()
    wait_for(lambda: all(run_status(d)["state"] == "cancelled" for d in dirs), timeout=60)
    # The jobs write 'cancelled' themselves; Slurm lists them COMPLETING until their processes are gone,
    # and retry leaves a job Slurm still lists alone.
    wait_for(lambda: all(slurm_view(d).get("JobState") in (None, *TERMINAL) for d in dirs), timeout=60)
    assert cli.main(["retry", str(sweep), "--failed"]) == 0
    assert "nothing to retry" in capsys.readouterr().out
    assert cli.main(["retry", str(sweep), "--cancelled"]) == 0
    assert capsys.readouterr().out.count("submitted job") == 2
    jobs = [read_job(d)["job_id"] for d in dirs]
    assert len({j.split("_")[0] for j in jobs}) == 1 and all("_" in j for j in jobs)  # one array
    for d in dirs:
        wait_for(lambda d=d: ended(d), timeout=240)
    assert [record(d)["status"] for d in dirs] == ["completed", "completed"]
    # the logs of both jobs (the cancelled one, then the retry), for rank 0
    assert cli.main(["logs", str(dirs[0])]) == 0
    logs = capsys.readouterr().out
    assert logs.count("Starting with JobEnvironment") == 2 and logs.count("==> ") >= 2
    # status of the runs root walks into the sweep directory
    assert cli.main(["status", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count(" completed ") == 2


def test_setup_lines_may_change_the_interpreter(tmp_path, capsys):
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    marker = tmp_path / "used"
    (bin_dir / "python").write_text(f"#!/bin/sh\ntouch {marker}\nexec {sys.executable} \"$@\"\n")
    (bin_dir / "python").chmod(0o755)
    out = submit(capsys, *TINY, *SGD, f"cluster.setup=['export PATH={bin_dir}:$PATH']", "cluster.python=python",
                 f"run.root={tmp_path / 'runs'}")
    (run_dir,) = run_dirs_of(out)
    wait_for(lambda: ended(run_dir), timeout=120)
    assert record(run_dir)["status"] == "completed" and marker.exists()


def test_the_readme_first_submit_example_is_taken_without_a_profile(tmp_path, capsys):
    # the built-in profile asks the CPU-only default partition for CPU ranks, not GPUs
    args = [str(REPO / "conf" / "hps_00040.yaml"), f"run.root={tmp_path}", "--gpus", "1"]
    assert cli.main(["submit", *args, "--check"]) == 0
    out = capsys.readouterr().out
    assert "cluster=builtin (no profile given)" in out and "in partition cpu" in out


def test_a_job_slurm_requeues_is_not_told_to_be_submitted_again(tmp_path, capsys):
    run_dir, job = start_long_job(tmp_path, capsys, "seed=5")
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_for(lambda: ended(run_dir), timeout=180)
    assert record(run_dir)["status"] == "completed", run_status(run_dir)
    assert cli.main(["logs", str(run_dir), "--follow"]) == 0
    log = capsys.readouterr().out
    assert "not requeued" not in log and f"job {job} was requeued by Slurm" in log


def task_pid(job: str, rank: int) -> int:
    """The process of a job's task (SLURM_PROCID) on this machine, as srun started it."""
    for proc in Path("/proc").iterdir():
        try:
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
            cmdline = (proc / "cmdline").read_text()
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job and env.get("SLURM_PROCID") == str(rank) and "_submit" in cmdline:
            return int(proc.name)
    raise AssertionError(f"no task {rank} of job {job} here")


def test_a_rank_killed_under_slurm_is_named_as_lost_with_its_host(tmp_path, capsys):
    run_dir, job = start_long_job(tmp_path, capsys, "--gpus", "2", "seed=9")
    os.kill(task_pid(job, 1), 9)
    wait_for(lambda: ended(run_dir), timeout=120)
    error = record(run_dir).get("error") or ""
    assert "rank 1 on cpu1 was lost" in error and "closed by peer" not in error, run_status(run_dir)
    assert "rank 1 on cpu1 was lost" in run_status(run_dir)["detail"]
