"""A cluster this repository was not written against (slurm/start_second.sh: partitions `debug` and
`batch-a100`, typed GPUs gpu:a100:2 on 3 nodes whose names do not resolve, ClusterName bnnidr2),
used as a new user would: a profile of their own outside the repository, found by path and through
$BNNIDR_CLUSTER_DIR; a job that completes on two nodes; refusals that name the limit and the
cluster asked. It runs beside start.sh's cluster: only these commands see the second SLURM_CONF."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY

pytestmark = pytest.mark.slurm

SECOND_CONF = Path(os.environ.get("BNNIDR_SLURM2_DIR", "/tmp/bnnidr-slurm2")) / "slurm.conf"


@pytest.fixture(scope="module")
def second_env():
    proc = subprocess.run(["bash", str(REPO / "slurm" / "start_second.sh")], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, f"slurm/start_second.sh failed: {proc.stderr}"
    return {**os.environ, "SLURM_CONF": str(SECOND_CONF)}


def bnnidr(env, cwd, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "bnnidr_hpc.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def profile(tmp_path):
    """The user's profile, in a folder of theirs (not the repository's conf/cluster/)."""
    path = tmp_path / "my_profiles" / "a100.yaml"
    path.parent.mkdir()
    path.write_text("partition: batch-a100\ngpu_type: a100\ntimeout_min: 20\nsignal_delay_s: 30\n")
    return path


@pytest.mark.parametrize("args,limit", [
    (["--gpus", "3"], "--gpus 3 > 2 GPU(s) per node"),
    (["--gpus", "2", "--nodes", "4"], "--nodes 4 > its 3 node(s)"),
    (["--gpus", "1", "cluster.gpu_type=h100"], "gpu_type=h100 but its GPUs are a100"),
], ids=["gpus", "nodes", "gpu-type"])
def test_a_refusal_names_the_limit_the_nodes_and_the_cluster(second_env, tmp_path, profile, args, limit):
    proc = bnnidr(second_env, tmp_path, "submit", *TINY, f"run.root={tmp_path / 'runs'}", f"cluster={profile}",
                  *args, "--check")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err, err
    assert "Requested node configuration is not available" in err and limit in err
    assert "a100-n1 (gpu:a100:2" in err and "cluster bnnidr2" in err and str(SECOND_CONF) in err
    assert f"cluster=a100 ({profile})" in err  # which profile was used
    assert not (tmp_path / "runs").exists()


def test_a_user_profile_outside_the_repository_runs_a_two_node_job(second_env, tmp_path, profile):
    env = {**second_env, "BNNIDR_CLUSTER_DIR": str(profile.parent)}
    args = [str(REPO / "conf" / "hps_00040.yaml"), *TINY, "max_epochs=2", f"run.root={tmp_path / 'runs'}",
            "cluster=a100"]
    check = bnnidr(env, tmp_path, "submit", *args, "--gpus", "2", "--nodes", "2", "--check")
    assert check.returncode == 0 and "in partition batch-a100" in check.stdout, check.stderr
    proc = bnnidr(env, tmp_path, "submit", *args, "--gpus", "2", "--nodes", "2")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [Path(line.split(": ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("submitted job")]
    deadline = time.time() + 240
    record = {}
    while time.time() < deadline:
        record = json.loads((run_dir / "record.json").read_text()) if (run_dir / "record.json").exists() else {}
        if record.get("status") in ("completed", "failed"):
            break
        time.sleep(2)
    assert record.get("status") == "completed", bnnidr(env, tmp_path, "status", str(run_dir)).stdout
    assert record["world_size"] == 4 and set(record["hosts"]) <= {"a100-n1", "a100-n2", "a100-n3"}
    assert len(set(record["hosts"])) == 2
    job = json.loads((run_dir / "job.json").read_text())
    assert job["slurm_cluster"] == "bnnidr2" and job["cluster"] == "a100"
    # status asks the cluster the job ran on, not whichever SLURM_CONF is set now
    status = bnnidr({k: v for k, v in os.environ.items() if k != "SLURM_CONF"}, tmp_path, "status", str(run_dir))
    assert status.returncode == 0 and "completed" in status.stdout
