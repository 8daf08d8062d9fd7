"""A rank killed without a word (kill -9, its node gone) is named, with its host, as the lost rank,
not by the transport's error (gloo's "Connection closed by peer"); a local run whose rank 0 is
killed ends with one line, not a C++ stack."""

import json
import os
import socket
import subprocess
import sys
import time

from conftest import TINY, run_dirs

from bnnidr_hpc.cluster import status

# rank KILLED kills itself with SIGKILL at its 5th step (the spawned ranks import this again).
KILLING_SCRIPT = """import os, signal, sys
import bnnidr_hpc.train.step as s
make = s.make_step
KILLED = int(os.environ["BNNIDR_TEST_KILLED_RANK"])
def killing(*a, **k):
    inner, calls = make(*a, **k), [0]
    def step(*b):
        import torch.distributed as d
        calls[0] += 1
        if d.get_rank() == KILLED and calls[0] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(*b)
    return step
import bnnidr_hpc.train.session as t; t.make_step = killing
from bnnidr_hpc import cli
if __name__ == '__main__':
    sys.exit(cli.main(sys.argv[1:]))
"""


def run_with_a_killed_rank(tmp_path, killed: int):
    (tmp_path / "killing_run.py").write_text(KILLING_SCRIPT)
    started = time.time()
    proc = subprocess.run([sys.executable, str(tmp_path / "killing_run.py"), "run", *TINY, "max_epochs=50",
                           f"run.root={tmp_path / 'runs'}", "batch_size=16", "--gpus", "2"],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path), "BNNIDR_TEST_KILLED_RANK": str(killed)})
    (rec_path,) = (tmp_path / "runs").glob("*/record.json")
    return proc, json.loads(rec_path.read_text()), time.time() - started


def test_a_killed_rank_is_named_as_lost_with_its_host(tmp_path):
    proc, rec, seconds = run_with_a_killed_rank(tmp_path, killed=1)
    assert proc.returncode == 1 and rec["status"] == "failed"
    assert f"rank 1 on {socket.gethostname()} was lost" in rec["error"], rec["error"]
    assert "closed by peer" not in rec["error"] and "GLHF" not in rec["error"]
    assert seconds < 90  # the heartbeats tell it, not run.rank_timeout_s (120 s)


def test_a_local_run_whose_rank_0_is_killed_ends_in_one_line(tmp_path):
    proc, rec, _ = run_with_a_killed_rank(tmp_path, killed=0)
    assert proc.returncode == 1 and rec["status"] == "failed"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "frame #" not in proc.stderr and "Exception raised from" not in proc.stderr, \
        proc.stderr[-3000:]
    assert any(line.startswith("bnnidr-hpc: failed:") and "rank 0" in line for line in lines), lines
    assert status.run_status((tmp_path / "runs" / run_dirs(tmp_path / "runs")[0].name))["state"] == "failed"

