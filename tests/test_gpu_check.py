"""benchmarks/gpu_check.py, the one-GPU check of issue 25, run end to end on the CPU at tiny sizes:
its exit status, its checks of the device against the CPU, and its figures."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

SCRIPT = str(REPO / "benchmarks" / "gpu_check.py")
CHECKS = ("graph: fp32 indices equal to the CPU's up to ties", "graph: bf16 recall of the fp32 graph",
          "step: loss=umap fp32", "step: loss=umap bf16", "step: loss=graph fp32", "step: loss=graph bf16",
          "reduce: outputs within")


def test_gpu_check_runs_end_to_end_on_the_cpu_and_its_checks_pass(tmp_path):
    env = {**os.environ, "BNNIDR_BENCH_OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for check in CHECKS:
        found = [line for line in lines if check in line]
        assert len(found) == 1 and found[0].strip().startswith("ok"), (check, proc.stdout[-3000:])
    assert f"{len(CHECKS)} of {len(CHECKS)} checks passed" in proc.stdout
    rows = {r["figure"]: r for r in json.loads((tmp_path / "gpu_check_cpu.json").read_text())["rows"]}
    graph = [r for name, r in rows.items() if name.startswith("exact graph 3,000 x 64")]
    assert [r["unit"] for r in graph] == ["s", "s"] and all(r["value"] > 0 for r in graph)
    for name, r in rows.items():  # every figure measured: no placeholder
        assert r["value"] == r["value"] and r["value"] >= 0, name
    assert rows["`reduce` command, 4,000 rows .npy -> .npy"]["value"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2():
    proc = subprocess.run([sys.executable, SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr
