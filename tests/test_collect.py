"""tools/collect.py on records: speedup and efficiency, groups, failed runs, corrupt files."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

from bnnidr_hpc import records
from bnnidr_hpc.collect import main, strong_scaling, weak_scaling


def fake_record(world, epoch_s, n=2000, batch=50, lr=1e-3, status="completed", epochs=3):
    return {
        "schema": records.SCHEMA, "status": status, "world_size": world, "n": n, "p": 128, "d": 5,
        "batch_size": batch, "epochs_done": epochs if status == "completed" else 1, "max_epochs": epochs,
        "config": {"data": {"n": n, "p": 128, "d": 5}, "batch_size": batch, "learning_rate": lr,
                   "num_gpu": world, "num_nodes": 1, "run": {"root": "x"}, "cluster": {"name": "local"}},
        "epoch_seconds": [epoch_s * 3] + [epoch_s] * (epochs - 1), "steady_epoch_seconds": epoch_s,
        "first_epoch_seconds": epoch_s * 3, "total_seconds": 10.0 + epoch_s * epochs, "time_to_first_step_s": 4.0,
        "steps_per_epoch": n // (batch * world), "samples_per_s": n / epoch_s,
        "samples_per_s_per_gpu": n / epoch_s / world, "final_loss": 0.01, "ap_out": 0.9, "ap_retention": 0.98,
    }


def markdown_rows(out: str):
    """The markdown table's rows as {header: cell}."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def write(tmp_path, name, rec):
    d = tmp_path / name
    d.mkdir(parents=True)
    (d / "record.json").write_text(rec if isinstance(rec, str) else json.dumps(rec))
    return d


def test_speedup_and_efficiency_per_group_never_mixed():
    recs = [fake_record(1, 8.0), fake_record(2, 5.0), fake_record(4, 4.0),
            fake_record(1, 2.0, lr=1e-2), fake_record(2, 1.0, lr=1e-2)]
    rows = strong_scaling(recs)
    assert [(r["gpu"], r["group"].split()[0]) for r in rows] == [(1, "1"), (2, "1"), (4, "1"), (1, "2"), (2, "2")]
    first = {r["gpu"]: r for r in rows[:3]}
    assert first[2]["speedup"] == pytest.approx(8 / 5) and first[2]["efficiency"] == pytest.approx(0.8)
    assert first[4]["speedup"] == pytest.approx(2.0) and first[4]["efficiency"] == pytest.approx(0.5)
    assert rows[4]["speedup"] == pytest.approx(2.0) and rows[4]["efficiency"] == pytest.approx(1.0)
    assert "learning_rate" in rows[0]["group"]  # the label says what differs between groups


def test_weak_scaling_when_n_grows_with_gpus():
    rows = weak_scaling([fake_record(1, 2.0, n=1000), fake_record(2, 2.5, n=2000), fake_record(4, 4.0, n=4000)])
    assert [r["gpu"] for r in rows] == [1, 2, 4]
    assert [r["weak_efficiency"] for r in rows] == pytest.approx([1.0, 0.8, 0.5])


def test_cli_lists_failed_apart_and_skips_corrupt_files(tmp_path, capsys):
    write(tmp_path, "a", fake_record(1, 8.0))
    write(tmp_path, "b", fake_record(2, 4.0))
    write(tmp_path, "c", fake_record(4, 1.0, status="failed") | {"error": "RuntimeError: boom"})
    write(tmp_path, "d", fake_record(4, 1.0, status="running"))
    truncated = write(tmp_path, "e", json.dumps(fake_record(4, 1.0))[:200])
    foreign = write(tmp_path, "f", {"hello": "world"})
    assert main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    table = markdown_rows(out)
    assert [row["gpu"] for row in table] == ["1", "2"]  # only the completed 1- and 2-GPU runs are in the table
    assert (table[1]["speedup"], table[1]["efficiency"]) == ("2", "1")  # 8/4 = 2, efficiency 1
    assert "failed: " in out and "RuntimeError: boom" in out and "running: " in out
    assert f"skipped {truncated / 'record.json'}" in err and "truncated" in err
    assert f"skipped {foreign / 'record.json'}" in err and "not a bnnidr-hpc record" in err


def test_formats_and_plot(tmp_path, capsys):
    for w, s in ((1, 8.0), (2, 4.4), (4, 2.5)):
        write(tmp_path, f"r{w}", fake_record(w, s))
    assert main([str(tmp_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [round(r["efficiency"], 3) for r in data["strong_scaling"]] == [1.0, round(8 / 4.4 / 2, 3), 0.8]
    assert main([str(tmp_path), "--format", "csv", "--plot", str(tmp_path / "s.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("group,n,p,d,batch_size,gpu") and len(lines) == 4
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_nothing_readable_exits_1_and_the_script_imports_no_training_code(tmp_path):
    write(tmp_path, "x", "{broken")
    script = REPO / "tools" / "collect.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "skipped" in proc.stderr and "no readable record" in proc.stderr
    write(tmp_path, "y", fake_record(1, 1.0))
    probe = ("import runpy, sys\nsys.argv = ['collect', sys.argv[1]]\n"
             "try:\n    runpy.run_path(%r, run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\nprint('CODE', code, 'torch' in sys.modules, "
             "'bnnidr_hpc.train' in sys.modules)" % str(script))
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "CODE 0 False False"


def test_a_trained_run_is_collected_with_the_figures_of_its_record(tiny, capsys):
    """The writer (train) and the reader (collect) share one record schema: a key renamed on one
    side breaks this test, which trains a tiny run and reads it back."""
    from bnnidr_hpc.config import run_dir_for
    from bnnidr_hpc.train import train

    c = tiny("max_epochs=2")
    rec = train(c, run_dir_for(c))
    assert main([str(run_dir_for(c)), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["strong_scaling"]
    assert (row["n"], row["p"], row["d"], row["batch_size"], row["gpu"], row["runs"]) == (256, 32, 3, 32, 1, 1)
    assert row["epoch_s"] == rec["steady_epoch_seconds"] and row["total_s"] == rec["total_seconds"]
    assert row["first_step_s"] == rec["time_to_first_step_s"] and row["steps_per_epoch"] == 8
    assert row["samples_per_s"] == rec["samples_per_s"] and row["final_loss"] == rec["final_loss"]
    assert row["ap"] == rec["ap_out"] and row["ap_retention"] == rec["ap_retention"]
    assert (row["speedup"], row["efficiency"]) == (1.0, 1.0)
    assert main([str(run_dir_for(c))]) == 0
    (shown,) = markdown_rows(capsys.readouterr().out)
    assert shown["gpu"] == "1" and float(shown["AP"]) == pytest.approx(rec["ap_out"], abs=1e-3)
