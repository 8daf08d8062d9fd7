"""tools/collect.py on records: speedup and efficiency, groups, failed runs, corrupt files, bad values,
copies, and files that are not records at all."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

from bnnidr_hpc.records import run_record
from bnnidr_hpc.records.collect import main
from bnnidr_hpc.records.scaling import left_out, strong_scaling, weak_scaling


def fake_record(world, epoch_s, n=2000, batch=50, lr=1e-3, status="completed", epochs=3, nodes=1):
    return {
        "schema": run_record.SCHEMA, "status": status, "world_size": world, "n": n, "p": 128, "d": 5,
        "num_nodes": nodes, "num_gpu": world // nodes,
        "batch_size": batch, "epochs_done": epochs if status == "completed" else 1, "max_epochs": epochs,
        "config": {"data": {"n": n, "p": 128, "d": 5}, "batch_size": batch, "learning_rate": lr,
                   "num_gpu": world // nodes, "num_nodes": nodes, "run": {"root": "x"}, "cluster": {"name": "local"}},
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


HOSTS_2X2 = ["gpu1", "gpu1", "gpu2", "gpu2"]  # index = rank


def test_2x2_and_1x4_are_two_rows_each_against_the_1_gpu_run(tmp_path, capsys):
    write(tmp_path, "one", fake_record(1, 8.0))
    write(tmp_path, "two", fake_record(2, 5.0))
    write(tmp_path, "1x4", fake_record(4, 2.5) | {"hosts": ["gpu1"] * 4})
    write(tmp_path, "2x2", fake_record(4, 4.0, nodes=2) | {"hosts": HOSTS_2X2})
    write(tmp_path, "2x2b", fake_record(4, 3.0, nodes=2) | {"hosts": HOSTS_2X2})  # a repeat: median 3.5
    assert main([str(tmp_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    got = [(r["nodes"], r["gpus_per_node"], r["gpu"], r["runs"], r["hosts"]) for r in data["strong_scaling"]]
    assert got == [(1, 1, 1, 1, None), (1, 2, 2, 1, None), (1, 4, 4, 1, 1), (2, 2, 4, 2, 2)]
    assert [r["speedup"] for r in data["strong_scaling"]] == pytest.approx([1.0, 1.6, 3.2, 8 / 3.5])
    assert [r["efficiency"] for r in data["strong_scaling"]] == pytest.approx([1.0, 0.8, 0.8, 2 / 3.5])
    assert data["notes"] == []
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = [(r["nodes"], r["gpus/node"], r["gpu"], r["speedup"], r["efficiency"]) for r in markdown_rows(out)]
    assert table == [("1", "1", "1", "1", "1"), ("1", "2", "2", "1.6", "0.8"), ("1", "4", "4", "3.2", "0.8"),
                     ("2", "2", "4", "2.29", "0.571")]
    assert "baseline" not in out


def test_a_layout_follows_from_world_size_where_the_record_lacks_it_and_a_contradiction_is_left_out():
    old = fake_record(2, 4.0)  # a record that says neither: one node
    del old["num_nodes"], old["num_gpu"], old["config"]["num_nodes"], old["config"]["num_gpu"]
    half = fake_record(4, 2.0, nodes=2)
    del half["num_gpu"], half["config"]["num_gpu"]  # 4 ranks on 2 nodes: 2 per node
    wrong = fake_record(4, 1.0) | {"num_nodes": 3}  # 3 nodes x 4 is not 4
    rows = strong_scaling([fake_record(1, 8.0), old, half, wrong])
    assert [(r["nodes"], r["gpus_per_node"], r["speedup"]) for r in rows] == [(1, 1, 1.0), (1, 2, 2.0), (2, 2, 4.0)]
    assert left_out(wrong) == "num_nodes=3 x num_gpu=4 per node is not world_size=4"


def test_a_group_without_a_1_gpu_run_gets_no_assumed_speedup_and_a_note_names_it(tmp_path, capsys):
    write(tmp_path, "a1", fake_record(1, 8.0))
    write(tmp_path, "a2", fake_record(2, 4.0))
    write(tmp_path, "b2", fake_record(2, 4.0, lr=1e-2))  # formerly speedup 2, efficiency 1 "by assumption"
    write(tmp_path, "b4", fake_record(4, 2.5, lr=1e-2))
    assert main([str(tmp_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    got = [(r["group"].split()[0], r["gpu"], r["speedup"], r["efficiency"]) for r in data["strong_scaling"]]
    assert got == [("1", 1, 1.0, 1.0), ("1", 2, 2.0, 1.0), ("2", 2, None, None), ("2", 4, None, None)]
    b = data["strong_scaling"][2]["group"]
    assert b == "2 (learning_rate=0.01)"
    note = f"no 1-GPU baseline in group {b}: speedup and efficiency left empty, not assumed (fewest GPUs run: 2)"
    assert data["notes"] == [note]
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [(r["speedup"], r["efficiency"]) for r in markdown_rows(out)][2:] == [("-", "-"), ("-", "-")]
    assert line_with(out, "no 1-GPU baseline") == note
    assert main([str(tmp_path), "--format", "csv", "--plot", str(tmp_path / "s.png")]) == 0  # empty efficiencies
    assert line_with(capsys.readouterr().err, "no 1-GPU baseline") == f"collect: {note}"
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_weak_scaling_without_a_1_gpu_run_assumes_no_base(tmp_path, capsys):
    two_nodes = fake_record(4, 3.0, n=4000, nodes=2)
    rows = weak_scaling([fake_record(2, 2.0, n=2000), fake_record(4, 2.5, n=4000), two_nodes])
    assert [(r["nodes"], r["gpu"], r["weak_efficiency"]) for r in rows] == [(1, 2, None), (1, 4, None), (2, 4, None)]
    write(tmp_path, "w2", fake_record(2, 2.0, n=2000))
    write(tmp_path, "w4", fake_record(4, 2.5, n=4000))
    assert main([str(tmp_path)]) == 0
    assert line_with(capsys.readouterr().out, "no 1-GPU baseline in weak-scaling family 1: weak efficiency left empty")


def test_weak_scaling_when_n_grows_with_gpus():
    rows = weak_scaling([fake_record(1, 2.0, n=1000), fake_record(2, 2.5, n=2000), fake_record(4, 4.0, n=4000),
                         fake_record(4, 5.0, n=4000, nodes=2)])
    assert [(r["nodes"], r["gpus_per_node"], r["gpu"]) for r in rows] == [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 2, 4)]
    assert [r["weak_efficiency"] for r in rows] == pytest.approx([1.0, 0.8, 0.5, 0.4])


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
    assert lines[0].startswith("group,n,p,d,batch_size,nodes,gpus_per_node,gpu,") and len(lines) == 4
    assert lines[0].endswith(",hosts") and lines[3].startswith("1,2000,128,5,50,1,4,4,")
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
             "'bnnidr_hpc.train.loop' in sys.modules)" % str(script))
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "CODE 0 False False"


def test_a_trained_run_is_collected_with_the_figures_of_its_record(tiny, capsys):
    """The writer (train) and the reader (collect) share one record schema: a key renamed on one
    side breaks this test, which trains a tiny run and reads it back."""
    from bnnidr_hpc.config.identity import run_dir_for
    from bnnidr_hpc.train.loop import train

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


NAN, INF = math.nan, math.inf
POSIX = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and symlinks")


def line_with(text: str, *parts) -> str:
    """The one line of text holding every part (str() of each)."""
    (line,) = [line for line in text.splitlines() if all(str(p) in line for p in parts)]
    return line


@POSIX
def test_any_file_is_skipped_with_why_and_the_table_still_prints(tmp_path):
    write(tmp_path, "a", fake_record(1, 8.0))
    write(tmp_path, "b", fake_record(2, 4.0))
    deep = fake_record(1, 1.0)
    for _ in range(200):
        deep["config"] = {"x": deep["config"]}
    write(tmp_path, "deeper", deep)
    for name, raw in {"binary": b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "deep": b"[" * 100000, "digits": b"1" * 5000}.items():
        (write(tmp_path, name, "") / "record.json").write_bytes(raw)
    for name in ("fifo", "dangling", "loop"):
        (tmp_path / name).mkdir()
    os.mkfifo(tmp_path / "fifo" / "record.json")  # opened, it would block until a writer came
    (tmp_path / "dangling" / "record.json").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop" / "record.json").symlink_to(tmp_path / "loop" / "record.json")
    (tmp_path / "dir" / "record.json").mkdir(parents=True)
    (tmp_path / "up").symlink_to(tmp_path)  # a directory loop
    script = [sys.executable, str(REPO / "tools" / "collect.py")]
    proc = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    table = markdown_rows(proc.stdout)
    assert [(r["gpu"], r["speedup"]) for r in table] == [("1", "1"), ("2", "2")]
    why = {"binary": "not valid JSON", "deep": "not valid JSON", "digits": "not valid JSON", "deeper": "nested deeper",
           "fifo": "a FIFO, not a regular file", "dangling": "dangling symlink", "loop": "symlink loop",
           "dir": "a directory, not a regular file"}
    for name, because in why.items():
        assert line_with(proc.stderr, f"skipped {tmp_path / name / 'record.json'}: ", because), proc.stderr
    assert line_with(proc.stderr, f"skipped {tmp_path / 'up'}: directory already searched as {tmp_path}")
    assert len(proc.stderr.splitlines()) == len(why) + 1  # one line each, nothing else
    only_bad = [str(tmp_path / n) for n in ("binary", "fifo", "dir", "dangling")]
    proc = subprocess.run([*script, *only_bad], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no readable record" in proc.stderr


def test_a_completed_run_with_a_bad_n_world_size_or_epoch_time_is_left_out_and_named(tmp_path, capsys):
    write(tmp_path, "a", fake_record(1, 8.0))
    write(tmp_path, "b", fake_record(2, 4.0))
    epoch = "steady_epoch_seconds"
    bad = [("n", None, "n missing"), ("n", "2000", 'n="2000"'), ("n", 0, "n=0"), ("world_size", 0, "world_size=0"),
           ("world_size", -2, "world_size=-2"), (epoch, "abc", f'{epoch}="abc"'), (epoch, [1, 2], f"{epoch}=[1, 2]"),
           (epoch, 0, f"{epoch}=0"), (epoch, -3.0, f"{epoch}=-3.0"), (epoch, NAN, f"{epoch}=NaN"),
           (epoch, INF, f"{epoch}=Infinity")]
    for i, (key, value, _) in enumerate(bad):
        rec = fake_record(1, 8.0) | {key: value}
        if value is None:
            del rec[key]
        write(tmp_path, f"bad{i}", json.dumps(rec).replace("Infinity", "1e400"))  # json reads 1e400 as inf
    assert main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    table = markdown_rows(out)
    assert [(r["gpu"], r["runs"], r["speedup"], r["efficiency"]) for r in table] == [("1", "1", "1", "1"),
                                                                                    ("2", "1", "2", "1")]
    for i, (_, _, shown) in enumerate(bad):
        assert line_with(out, f"completed, left out: {tmp_path / f'bad{i}'}: {shown}: not a positive ")


def test_an_impossible_epoch_time_does_not_spoil_its_group():
    rows = strong_scaling([fake_record(1, NAN), fake_record(2, 4.0), fake_record(4, 2.0)])  # no 1-GPU base left
    assert [(r["gpu"], r["speedup"], r["efficiency"]) for r in rows] == [(2, None, None), (4, None, None)]
    zero = fake_record(1, 8.0) | {"steady_epoch_seconds": 0}
    rows = strong_scaling([zero, fake_record(1, 8.0), fake_record(2, 4.0), fake_record(4, 1.0) | {"n": -1}])
    assert [(r["gpu"], r["runs"], r["epoch_s"], r["speedup"]) for r in rows] == [(1, 1, 8.0, 1.0), (2, 1, 4.0, 2.0)]
    rows = weak_scaling([fake_record(1, 2.0, n=1000), fake_record(1, NAN, n=1000), fake_record(2, 2.5, n=2000)])
    assert [r["weak_efficiency"] for r in rows] == pytest.approx([1.0, 0.8])


def test_a_bad_optional_figure_is_a_dash_and_not_aggregated(tmp_path, capsys):
    write(tmp_path, "a", fake_record(1, 8.0) | {"final_loss": 0.02})
    bad = {"final_loss": NAN, "total_seconds": 0, "samples_per_s": -1.0, "ap_out": "x", "steps_per_epoch": 2.5}
    b = write(tmp_path, "b", fake_record(1, 8.0) | bad)
    write(tmp_path, "c", fake_record(2, 4.0) | {"final_loss": NAN, "ap_retention": INF})
    assert main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    one, two = markdown_rows(out)
    assert (one["runs"], one["loss"], one["total runtime (s)"], one["samples/s"], one["AP"]) == ("2", "0.02", "34",
                                                                                              "250", "0.9")
    assert (two["loss"], two["AP retention"], two["speedup"], two["efficiency"]) == ("-", "-", "2", "1")
    line = line_with(err, b / "record.json", "not aggregated")
    assert all(s in line for s in ("final_loss=NaN", "total_seconds=0", "samples_per_s=-1.0", 'ap_out="x"'))


@POSIX
def test_a_run_counts_once_however_often_it_is_reached(tmp_path, capsys):
    runs = tmp_path / "runs"
    one = write(runs, "one", fake_record(1, 8.0) | {"run_dir": "/scratch/one", "updated_at": 1.5})
    write(runs, "two", fake_record(2, 4.0) | {"run_dir": "/scratch/two", "updated_at": 2.5})
    shutil.copytree(one, tmp_path / "backup" / "one")  # a copied run directory
    (runs / "z-file").mkdir()
    (runs / "z-file" / "record.json").symlink_to(one / "record.json")
    (runs / "zlink").symlink_to(one)
    bare = write(tmp_path, "bare", fake_record(4, 2.0))  # no run_dir or updated_at: the file is its identity
    assert main([str(runs), str(tmp_path / "backup"), str(runs), str(bare / "record.json"), str(bare)]) == 0
    out, err = capsys.readouterr()
    assert [(r["gpu"], r["runs"]) for r in markdown_rows(out)] == [("1", "1"), ("2", "1"), ("4", "1")]
    original = one / "record.json"
    for copy in (runs / "z-file", tmp_path / "backup" / "one"):
        assert line_with(err, f"skipped {copy / 'record.json'}: duplicate of {original} (same run_dir and updated_at)")
    assert line_with(err, f"skipped {runs / 'zlink'}: directory already searched as {one}")
    assert line_with(err, f"skipped {runs}: directory already searched as {runs}")
    assert line_with(err, f"skipped {bare / 'record.json'}: duplicate of {bare / 'record.json'} (same file)")


def test_diverged_and_other_unfinished_runs_are_listed_with_their_error_never_averaged(tmp_path, capsys):
    write(tmp_path, "a", fake_record(1, 8.0))
    diverged = write(tmp_path, "d", fake_record(1, 0.1, status="diverged") | {
        "final_loss": NAN, "error": "loss is NaN at epoch 2\n(learning rate too high?)"})
    write(tmp_path, "i", fake_record(2, 4.0, status="interrupted"))
    write(tmp_path, "f", fake_record(2, 4.0, status="failed") | {"run_dir": "/scratch/\udcff"})  # not UTF-8
    assert main([str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    (row,) = markdown_rows(out)
    assert (row["gpu"], row["runs"], row["epoch runtime (s)"]) == ("1", "1", "8")
    line = line_with(out, f"  diverged: {diverged} (epoch 1/3): loss is NaN at epoch 2")
    assert line.endswith("(learning rate too high?)")  # one line, whatever the error holds
    assert "interrupted: " in out and line_with(out, "failed: /scratch/")


def test_odd_text_in_a_config_prints_on_one_line(tmp_path, capsys):
    odd = fake_record(1, 8.0)
    odd["config"]["a|b\n\udcff"] = "x|y"  # a key with a newline and a byte that is not UTF-8
    write(tmp_path, "a", fake_record(1, 8.0))
    write(tmp_path, "b", odd)
    assert main([str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("| 1") or line.startswith("| 2")]
    assert len(rows) == 2 and any("a\\|b\\n\\udcff=\"x\\|y\"" in row for row in rows)
    assert main([str(tmp_path), "--format", "csv"]) == 0 and len(capsys.readouterr().out.splitlines()) == 3


def test_json_is_strict_json(tmp_path, capsys):
    write(tmp_path, "a", fake_record(1, 1e308) | {"final_loss": NAN})  # its total_seconds overflow to inf
    write(tmp_path, "b", fake_record(2, 1e-300))  # speedup 1e308 x 1 / 1e-300 overflows a float
    left = write(tmp_path, "c", fake_record(1, NAN))
    write(tmp_path, "d", fake_record(4, 1.0, status="running") | {"max_epochs": INF})
    assert main([str(tmp_path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out, parse_constant=lambda token: pytest.fail(f"{token} in the JSON"))
    one, two = data["strong_scaling"]
    assert (one["final_loss"], one["total_s"], one["speedup"]) == (None, None, 1.0)
    assert (two["gpu"], two["speedup"], two["efficiency"]) == (2, None, None)
    assert data["left_out"] == [{"run_dir": str(left), "why": "steady_epoch_seconds=NaN: not a positive finite number"}]
    assert data["not_completed"][0]["max_epochs"] is None


def test_output_dim_view_sets_reducer_beside_pca_and_marks_the_knee(tiny, capsys):
    from bnnidr_hpc.cluster.job import run_local
    from bnnidr_hpc.config.identity import run_dir_for

    dirs = []
    for k in (2, 4, 6):  # the tiny sphere is S^3: PCA to d + 1 = 4 keeps every distance
        c = tiny(f"output_dim={k}")
        run_local(c, run_dir_for(c))
        dirs.append(run_dir_for(c))
    assert main([str(dirs[0].parent), "--view", "output_dim", "--format", "json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)
    rows = group["rows"]
    assert [r["output_dim"] for r in rows] == [2, 4, 6]
    assert rows[1]["pca_retention"] == pytest.approx(1.0, abs=1e-5) == rows[2]["pca_retention"]
    for key, knee in (("ap_retention", "knee"), ("pca_retention", "pca_knee")):
        assert group[knee] == next((r["output_dim"] for r in rows if r[key] >= 0.95), None)
    recorded = [json.loads((d / "record.json").read_text()) for d in dirs]
    assert [r["ap"] for r in rows] == [rec["ap_out"] for rec in recorded]
    assert group["twonn"] == pytest.approx(recorded[0]["intrinsic_dim"]["gallery_input"]["dimension"])
    assert main([str(dirs[0].parent), "--view", "output_dim"]) == 0
    out = capsys.readouterr().out
    assert "| output_dim |" in out and f"PCA {group['pca_knee']}" in out and "TwoNN of the input" in out


def test_output_dim_view_sets_the_relevance_priors_one_run_estimate_beside_the_sweeps_knee(tiny, capsys):
    from bnnidr_hpc.cluster.job import run_local
    from bnnidr_hpc.config.identity import run_dir_for

    plain = []
    for k in (2, 4):
        c = tiny(f"output_dim={k}")
        run_local(c, run_dir_for(c))
        plain.append(run_dir_for(c))
    c = tiny("output_dim=8", "relevance_prior=true")
    one_run = run_local(c, run_dir_for(c))["relevance"]
    assert main([str(plain[0].parent), "--view", "output_dim", "--format", "json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)  # one group: the relevance run joins the plain sweep
    assert [r["output_dim"] for r in group["rows"]] == [2, 4]  # the rows are the plain runs
    assert group["relevance"] == one_run["dimension"] is not None
    assert main([str(plain[0].parent), "--view", "output_dim"]) == 0
    assert f"relevance prior's one-run estimate: {one_run['dimension']}" in capsys.readouterr().out


@pytest.mark.parametrize("plot,expected", [("missing/s.png", "is not a writable folder"),
                                           ("s.unknown", "a file ending in one of"), ("d.png", "it is a folder")])
def test_a_plot_that_cannot_be_written_is_refused_in_one_line_before_reading(tmp_path, capsys, monkeypatch, plot,
                                                                            expected):
    write(tmp_path, "a", fake_record(1, 8.0))
    (tmp_path / "d.png").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main([str(tmp_path), "--plot", plot]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("collect: --plot=") and expected in err


def test_bad_arguments_are_one_line_and_collect_help_works_through_the_cli(tmp_path, capsys):
    from bnnidr_hpc import cli

    for argv in (["--format", "xml", str(tmp_path)], ["--nope", str(tmp_path)], []):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("collect: ") and "usage" not in err, err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["collect", "--help"])
    assert exit_.value.code == 0 and "usage: collect" in capsys.readouterr().out


def test_a_reader_that_leaves_early_ends_collect_quietly(tmp_path):
    for i in range(50):
        write(tmp_path, f"r{i}", fake_record(1, 8.0, lr=i / 1000))
    script = REPO / "tools" / "collect.py"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -0`: gone before collect writes its first line
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""  # as a Unix tool stopped by SIGPIPE; no traceback


def test_impossible_aps_set_aside_runs_and_long_errors(tmp_path, capsys):
    write(tmp_path, "a", fake_record(1, 8.0) | {"ap_retention": 0.9, "ap_out": 0.8})
    bad = write(tmp_path, "b", fake_record(1, 8.0) | {"ap_retention": -2.02, "ap_out": 1.5})
    write(tmp_path, "a.replaced-20261206-101010", fake_record(1, 1.0))  # `run --force` set it aside
    failed = write(tmp_path, "f", fake_record(2, 4.0, status="failed") | {"error": "E" * 100_000})
    assert main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    (row,) = markdown_rows(out)
    assert (row["runs"], row["AP retention"], row["AP"], row["epoch runtime (s)"]) == ("2", "0.9", "0.8", "8")
    assert line_with(err, bad / "record.json", "not aggregated", "ap_retention=-2.02", "ap_out=1.5")
    assert line_with(err, "skipped", "a.replaced-20261206-101010", "set aside")
    line = line_with(out, f"failed: {failed}")
    assert len(line) < 600 and line.endswith("(99700 more characters in its record.json)")
    assert main([str(tmp_path / "a.replaced-20261206-101010")]) == 0  # named itself, it is read
    assert markdown_rows(capsys.readouterr().out)[0]["epoch runtime (s)"] == "1"
