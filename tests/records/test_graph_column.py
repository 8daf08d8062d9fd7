"""collect's graph column: the k-NN graph stage of loss: graph runs beside the epochs."""

from test_collect import fake_record, markdown_rows, write

from bnnidr_hpc.records.collect import main


def test_the_scaling_table_shows_the_graph_stage_beside_the_epochs(tmp_path, capsys):
    write(tmp_path, "a", fake_record(1, 8.0) | {"graph_seconds": 12.5, "graph_method": "exact"})
    write(tmp_path, "b", fake_record(2, 5.0) | {"graph_seconds": 0.0, "graph_reused": True})  # the cache had it
    write(tmp_path, "c", fake_record(4, 4.0) | {"graph_seconds": float("nan")})  # unusable: shown as "-"
    assert main([str(tmp_path)]) == 0
    rows = markdown_rows(capsys.readouterr().out)
    assert [(r["gpu"], r["graph (s)"], r["epoch runtime (s)"]) for r in rows] == [
        ("1", "12.5", "8"), ("2", "0", "5"), ("4", "-", "4")]
    headers = list(rows[0])
    assert headers.index("graph (s)") + 1 == headers.index("epoch runtime (s)")
