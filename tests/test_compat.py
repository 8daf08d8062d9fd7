"""Run directories written before the package was split into layers (main at 3d9d45e, 2026-12-06)
stay readable: a tiny completed run (its checkpoint, record, config and metrics as that code wrote
them, in tests/fixtures/run_before_layout) is applied by load_reducer and `reduce` to the same outputs
that code gave, and status and collect read its record."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bnnidr_hpc import load_reducer

DATA = Path(__file__).resolve().parent / "fixtures"
OLD_RUN = DATA / "run_before_layout"


def _copy(tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / OLD_RUN.name
    shutil.copytree(OLD_RUN, run_dir)
    return run_dir


def test_a_checkpoint_of_the_old_layout_reduces_to_the_same_vectors(tmp_path):
    run_dir = _copy(tmp_path)
    x = np.load(DATA / "run_before_layout_x.npy")
    expected = np.load(DATA / "run_before_layout_y.npy")
    reducer = load_reducer(run_dir)
    with torch.no_grad():
        got = reducer(torch.from_numpy(x)).numpy()
    assert got.shape == (7, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    out = tmp_path / "y.npy"
    proc = subprocess.run([sys.executable, "-m", "bnnidr_hpc.cli", "reduce", str(run_dir),
                           str(DATA / "run_before_layout_x.npy"), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)


def test_status_and_collect_read_a_record_of_the_old_layout(tmp_path):
    run_dir = _copy(tmp_path)
    record = json.loads((run_dir / "record.json").read_text())
    status = subprocess.run([sys.executable, "-m", "bnnidr_hpc.cli", "status", str(tmp_path / "runs")],
                            capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert "completed" in status.stdout and OLD_RUN.name in status.stdout
    collect = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "tools" / "collect.py"),
                              str(tmp_path / "runs"), "--format", "csv"], capture_output=True, text=True)
    assert collect.returncode == 0, collect.stderr
    assert f"{record['samples_per_s']:.0f}"[:3] in collect.stdout.replace(",", "")
