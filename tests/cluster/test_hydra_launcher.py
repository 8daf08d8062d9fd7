"""The Hydra app's launchers (bnnidr_hpc/hydra_launcher.py) on the local Slurm cluster: the profile's
options reach the sbatch script, a GPU or node sweep is refused up front, a completed multirun is
not rerun, and a failed or vanished job ends the multirun with its error instead of a wait."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_dirs

from bnnidr_hpc.cluster.hydra_launcher import executor_parameters, profile_parameters
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.records import run_files, run_record

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

# TINY with two epochs; batch_size is each test's sweep.
SMALL = [o for o in TINY if not o.startswith(("batch_size=", "max_epochs="))] + ["max_epochs=2"]


def multirun_args(base: Path, name: str, *overrides) -> list:
    return [sys.executable, "-m", "bnnidr_hpc.cluster.hydra_app", "--config-dir", str(REPO / "conf"), "--config-name",
            "hps_00040", "-m", "hydra/launcher=bnnidr_slurm", *SMALL, *overrides, f"hydra.launcher.name={name}",
            f"run.root={base / 'runs'}", f"hydra.sweep.dir={base / 'hydra'}"]


def multirun(base: Path, name: str, *overrides, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(multirun_args(base, name, *overrides), capture_output=True, text=True, timeout=timeout,
                          cwd=base)


def job_name(tag: str) -> str:
    return f"bnnidr-hl-{tag}-{os.getpid()}"


def queued(name: str) -> list:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    return out.stdout.split()


def bnnidr_lines(text: str) -> list:
    return [line for line in text.splitlines() if line.startswith("bnnidr-hpc:")]


def snapshot(root: Path) -> dict:
    """Every file under root with its mtime and contents."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


GPU_OPTIONS = ["+cluster=local_gpu", "num_gpu=2", "batch_size=25,50", "cluster.mem_gb=0.5",
               "cluster.setup=[echo bnnidr-setup-ran]", "+cluster.sbatch.open-mode=append"]


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    """A 2-point multirun on the GPU partition with profile options, run to completion."""
    base = tmp_path_factory.mktemp("completed")
    started = time.time()
    proc = multirun(base, job_name("gpu"), *GPU_OPTIONS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return base, proc, time.time() - started


def test_the_profile_options_reach_the_sbatch_script(completed):
    base, _, _ = completed
    (script,) = (base / "hydra" / ".submitit").glob("*/*_submission.sh")
    text = script.read_text()
    for option in ("--mem=512MB", "--gpus-per-node=h100:2", "--partition=gpu", "--ntasks-per-node=2",
                   "--requeue", "--open-mode=append", "--signal=USR2@20", "--time=30"):
        assert f"#SBATCH {option}\n" in text, text
    assert "\necho bnnidr-setup-ran\n" in text and "--gres" not in text
    # early signals are kept, as submit does
    assert "-m bnnidr_hpc.cluster.job_start -u -m submitit.core._submit" in text
    recs = [json.loads((d / "record.json").read_text()) for d in run_dirs(base / "runs")]
    assert [r["status"] for r in recs] == ["completed", "completed"]
    assert all(r["world_size"] == 2 for r in recs) and sorted(r["batch_size"] for r in recs) == [25, 50]
    logs = [p.read_text() for p in (base / "hydra" / ".submitit").glob("*_*/*_0_log.out")]
    assert len(logs) == 2 and all("bnnidr-setup-ran" in log for log in logs)  # the setup line ran in the job


def test_the_parameters_follow_the_profile():
    def params(*overrides, launcher=None):
        return profile_parameters(load(None, TINY + list(overrides)), launcher or {"tasks_per_node": 2})

    cpu = params("cluster=local", "num_gpu=2")  # gres_gpus false: no GPU request at all
    assert "gpus_per_node" not in cpu and "mem_gb" not in cpu and cpu["additional_parameters"] == {"requeue": True}
    gpu = params("cluster=local_gpu", "num_gpu=3", "cluster.mem_gb=2")
    assert gpu["gpus_per_node"] == "h100:3" and gpu["mem_gb"] == 2
    assert executor_parameters(gpu, "slurm")["slurm_gpus_per_node"] == "h100:3"  # past submitit's int check
    assert params("num_gpu=2", "cluster.gres_gpus=true")["gpus_per_node"] == 2  # any GPU type
    # the built-in profile asks the default partition (cpu, no GPUs) for none
    assert "gpus_per_node" not in params("num_gpu=2")
    kept = params("cluster=local_exclusive", "+cluster.sbatch.no_requeue=true")["additional_parameters"]
    assert kept == {"exclusive": True, "no-requeue": True}
    # what the launcher config itself sets wins over the profile
    own = params("cluster=local_gpu", "cluster.mem_gb=2",
                 launcher={"mem_gb": 4, "gpus_per_node": 1, "additional_parameters": {"requeue": False}})
    assert own["mem_gb"] == 4 and own["gpus_per_node"] == 1 and own["additional_parameters"] == {"requeue": False}


@pytest.mark.parametrize("sweep, hint", [("num_gpu=1,2", "`bnnidr-hpc submit CONFIG --gpus 1,2`"),
                                         ("num_nodes=1,2", "`bnnidr-hpc submit CONFIG --nodes N")])
def test_a_gpu_or_node_sweep_is_refused_before_anything_is_submitted(tmp_path, sweep, hint):
    name = job_name("refused")
    started = time.time()
    proc = multirun(tmp_path, name, "+cluster=local", sweep, "batch_size=25,50", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bnnidr-hpc: ") and hint in lines[0], proc.stderr
    assert sweep in lines[0] and "nothing was submitted" in lines[0]
    assert not (tmp_path / "hydra" / ".submitit").exists() and not (tmp_path / "runs").exists()
    assert queued(name) == [] and time.time() - started < 60


def test_a_rerun_of_a_completed_multirun_submits_nothing(completed):
    base, first, _ = completed
    before = snapshot(base / "runs")
    jobs = sorted(p.name for p in (base / "hydra" / ".submitit").iterdir())
    started = time.time()
    proc = multirun(base, job_name("gpu"), *GPU_OPTIONS, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = bnnidr_lines(proc.stdout)
    assert len(lines) == 2 and all("completed, not rerun: " in line for line in lines), proc.stdout
    assert sorted(line.split(": ")[2].split(" (")[0] for line in lines) == sorted(
        str(d) for d in run_dirs(base / "runs"))
    assert sorted(p.name for p in (base / "hydra" / ".submitit").iterdir()) == jobs  # no new job
    assert snapshot(base / "runs") == before  # records, checkpoints, metrics untouched
    assert time.time() - started < 60


def test_a_failing_point_ends_the_multirun_with_its_error(tmp_path):
    started = time.time()
    proc = multirun(tmp_path, job_name("failing"), "+cluster=local", "num_gpu=1", "batch_size=25,50",
                    "run.device=cuda", timeout=240)
    elapsed = time.time() - started
    assert proc.returncode == 1, proc.stderr[-2000:]
    run_dirs_made = run_dirs(tmp_path / "runs")
    failed = [line for line in bnnidr_lines(proc.stderr) if line.startswith("bnnidr-hpc: failed: ")]
    assert len(run_dirs_made) == 2 and len(failed) == 2, proc.stderr[-2000:]
    for run_dir in run_dirs_made:
        (line,) = [line for line in failed if f" {run_dir}: " in line]
        assert "no CUDA device" in line
        assert json.loads((run_dir / "record.json").read_text())["status"] == "failed"
    assert elapsed < 180


def test_a_job_gone_without_a_result_ends_the_multirun(tmp_path):
    """A job Slurm ended before it could write a result (here: cancelled) is reported, not waited on;
    this cluster keeps no accounting, so submitit alone would wait for it forever."""
    name = job_name("cancelled")
    proc = subprocess.Popen(multirun_args(tmp_path, name, "+cluster=local", "num_gpu=1", "batch_size=25",
                                          "max_epochs=5000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        # Cancelled once it trains: Slurm says RUNNING before the job's Python has made its run directory.
        deadline = time.time() + 120
        while not any((run_files.read_record(d) or {}).get("status") == run_record.RUNNING
                      for d in (tmp_path / "runs").glob("*")):
            assert time.time() < deadline and proc.poll() is None, "the job never started training"
            time.sleep(1)
        job = queued(name)[0]
        subprocess.run(["scancel", job], check=True, timeout=30)
        cancelled = time.time()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["scancel", "-n", name], timeout=30)
    assert proc.returncode == 1, err[-2000:]
    (run_dir,) = run_dirs(tmp_path / "runs")
    (line,) = [line for line in bnnidr_lines(err) if line.startswith("bnnidr-hpc: failed: ")]
    assert f" {run_dir}: job {job} ended without a result (cancelled)" in line, err[-2000:]
    # Slurm cancelled it: the record says so, and its checkpoint stays for a retry to resume from
    assert run_files.read_record(run_dir)["status"] == run_record.CANCELLED
    assert time.time() - cancelled < 90
