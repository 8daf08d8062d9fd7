"""Damaged or degenerate feature files and run directories through run, reduce and estimate-id:
each is one line on stderr and exit 2, with nothing created or written, never a traceback."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY

from bnnidr_hpc import cli
from bnnidr_hpc.cluster.job import run_local
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.data import features

SMALL = [o for o in TINY if not o.startswith(("data.", "eval.", "output_dim"))] + ["output_dim=4", "max_epochs=2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Clustered features (400 x 16), a copy cut short, and a file of one row repeated."""
    folder = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    x = (rng.normal(size=(4, 16))[labels] + 0.3 * rng.normal(size=(400, 16))).astype(np.float32)
    np.save(folder / "X.npy", x)
    np.save(folder / "Y.npy", labels)
    blob = (folder / "X.npy").read_bytes()
    (folder / "X_cut.npy").write_bytes(blob[:len(blob) // 2])  # the header says 400 rows
    np.save(folder / "X_const.npy", np.tile(x[:1], (400, 1)))
    return folder


@pytest.fixture(scope="module")
def trained(files, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    c = load(None, SMALL + ["data.source=npy", f"data.path={files / 'X.npy'}", f"data.labels={files / 'Y.npy'}",
                            f"run.root={root}"])
    run_dir = run_dir_for(c)
    assert run_local(c, run_dir)["status"] == "completed"
    return run_dir


def refused(capsys, argv, expected):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("bnnidr-hpc: ") and expected in err, (argv, err)
    return err


@pytest.mark.parametrize("command", ["run", "estimate-id"])
@pytest.mark.parametrize("name,expected", [("X_cut.npy", "is truncated"), ("X_const.npy", "the same vector")])
def test_a_truncated_or_constant_file_is_refused_before_anything_is_created(files, tmp_path, capsys, command,
                                                                           name, expected):
    root = tmp_path / "runs"
    refused(capsys, [command, *SMALL, "data.source=npy", f"data.path={files / name}", f"run.root={root}"], expected)
    assert not root.exists()


def test_reduce_refuses_a_truncated_input_and_nan_rows_in_one_line(files, trained, tmp_path, capsys):
    out = tmp_path / "Z.npy"
    refused(capsys, ["reduce", str(trained), str(files / "X_cut.npy"), str(out)], "is truncated")
    x = np.tile(np.load(files / "X.npy"), (13, 1))[:5000]
    sampled = set(features.evenly_spaced(len(x), features.FINITE_CHECK_ROWS).tolist())
    unsampled = next(r for r in range(len(x) // 2, len(x)) if r not in sampled)  # found while streaming
    for row in (0, unsampled):
        nan = x.copy()
        nan[row, 5] = np.nan
        np.save(tmp_path / "nan.npy", nan)
        err = refused(capsys, ["reduce", str(trained), str(tmp_path / "nan.npy"), str(out), "--block", "256"],
                      "holds NaN or inf")
        assert f"row {row} " in err
        assert not out.exists() and not list(tmp_path.glob(".Z.npy*"))


def test_reduce_into_a_folder_named_like_the_output_is_refused(files, trained, tmp_path, capsys):
    (tmp_path / "Z.npy").mkdir()
    refused(capsys, ["reduce", str(trained), str(files / "X.npy"), str(tmp_path / "Z.npy")], "is not a file")
    assert not any((tmp_path / "Z.npy").iterdir()) and not list(tmp_path.glob(".Z.npy*"))


def damage(run_dir, how):
    checkpoint = run_dir / "checkpoint.pt"
    if how == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    elif how == "garbage":
        checkpoint.write_bytes(b"\x00garbage" * 100)
    elif how == "not a checkpoint":
        torch.save([1, 2, 3], checkpoint)
    elif how == "other shape":  # a checkpoint from a run with other layer sizes
        saved = torch.load(checkpoint, weights_only=False)
        saved["model"] = {k: torch.cat([v, v]) for k, v in saved["model"].items()}
        torch.save(saved, checkpoint)
    elif how == "normalization":
        (run_dir / "normalization.npz").write_bytes(b"PK\x03\x04 cut")


@pytest.mark.parametrize("how,expected", [("truncated", "does not load"), ("garbage", "does not load"),
                                          ("not a checkpoint", "holds no model weights"),
                                          ("other shape", "does not fit the model"),
                                          ("normalization", "normalization.npz does not load")])
def test_reduce_with_a_damaged_run_directory_is_one_line(files, trained, tmp_path, capsys, how, expected):
    run_dir = tmp_path / trained.name
    shutil.copytree(trained, run_dir)
    damage(run_dir, how)
    refused(capsys, ["reduce", str(run_dir), str(files / "X.npy"), str(tmp_path / "Z.npy")], expected)
    assert not (tmp_path / "Z.npy").exists()


def test_the_undamaged_copy_still_reduces(files, trained, tmp_path, capsys):
    assert cli.main(["reduce", str(trained), str(files / "X.npy"), str(tmp_path / "Z.npy")]) == 0
    z = np.load(tmp_path / "Z.npy")
    assert z.shape == (400, 4) and np.isfinite(z).all()
    assert json.loads((trained / "record.json").read_text())["status"] == "completed"
