"""The k-NN graph stage of a `loss: graph` run: built before the first epoch into the cache under
run.root, its figures in the record, and read back by `bnnidr-hpc neighbours` and by every other
run over the same data."""

import json

from conftest import TINY

from bnnidr_hpc import cli


def records(root):
    return {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/record.json")}


def test_a_graph_run_builds_the_graph_once_and_every_run_over_the_same_data_reads_it(tmp_path, capsys):
    common = [*TINY, f"run.root={tmp_path}", "loss=graph", "max_epochs=1"]
    assert cli.main(["run", *common]) == 0
    (first,) = records(tmp_path).values()
    assert first["status"] == "completed" and first["graph_method"] == "exact" and first["graph_k"] == 15
    assert first["graph_reused"] is False and first["graph_seconds"] > 0 and first["graph_rows_per_s"] > 0
    assert first["graph_recall"] == 1.0 and first["graph_path"].startswith(str(tmp_path / "graphs"))
    capsys.readouterr()
    assert cli.main(["neighbours", *common]) == 0
    assert f"{first['graph_path']}\nmethod exact, read from the cache" in capsys.readouterr().out
    # another point of a sweep over the same data (another batch size) reads it too
    assert cli.main(["run", *common, "batch_size=16"]) == 0
    (second,) = [r for r in records(tmp_path).values() if r["batch_size"] == 16]
    assert second["graph_reused"] is True and second["graph_seconds"] == 0
    assert second["graph_path"] == first["graph_path"] and second["graph_rows_per_s"] == first["graph_rows_per_s"]
    assert len(list((tmp_path / "graphs").iterdir())) == 1
