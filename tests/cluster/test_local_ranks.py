"""Local runs (`bnnidr-hpc run --gpus N`) with more CPU ranks than the machine has cores: refused
past MAX_RANKS_PER_CORE per core, before anything is created; a warning when the cores are shared."""

import pytest
from conftest import TINY

from bnnidr_hpc import cli
from bnnidr_hpc.cluster import job


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(job, "_cores", lambda: 2)
    monkeypatch.setattr(job, "_cuda_ranks", lambda c: False)


def test_40_ranks_on_2_cores_are_refused_in_one_line(two_cores, tmp_path, capsys):
    code = cli.main(["run", *TINY, f"run.root={tmp_path / 'runs'}", "--gpus", "40", "data.n=4096"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "40 CPU ranks on 2 core(s) (at most 4 per core, 8)" in err
    assert not (tmp_path / "runs").exists()


def test_more_ranks_than_cores_train_with_a_warning(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(job, "_cores", lambda: 1)
    monkeypatch.setattr(job, "_cuda_ranks", lambda c: False)
    code = cli.main(["run", *TINY, "max_epochs=1", f"run.root={tmp_path / 'runs'}", "--gpus", "2"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: 2 CPU ranks on 1 core(s) share them" in err
