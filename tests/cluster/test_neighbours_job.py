"""`bnnidr-hpc neighbours --submit`: the k-NN graph built by a Slurm job of its own on the local
cluster, across its ranks, into the cache a run then reads; bad input refused before anything."""

import json
import re

import pytest
from conftest import TINY

from bnnidr_hpc import cli

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

GRAPH = [*TINY, "loss=graph", "graph.k=8", "cluster=local"]


def _wait_for_meta(cache, timeout=180):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(cache.glob("knn-*/meta.json"))
        if found:
            return json.loads(found[0].read_text())
        time.sleep(1)
    raise AssertionError(f"no graph in {cache} after {timeout} s")


def test_a_submitted_graph_is_built_by_two_ranks_and_read_by_the_run(tmp_path, capsys):
    root = f"run.root={tmp_path / 'runs'}"
    code = cli.main(["neighbours", *GRAPH, root, "--gpus", "2", "--submit"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"^submitted job \d+: the k-NN graph into ", out, re.M), out
    meta = _wait_for_meta(tmp_path / "runs" / "graphs")
    assert (meta["method"], meta["n"], meta["k"], meta["world_size"]) == ("exact", 256, 8, 2)
    assert list((tmp_path / "runs" / "graphs" / "jobs" / "slurm").iterdir())  # its script and logs
    assert cli.main(["neighbours", *GRAPH, root]) == 0
    assert "read from the cache" in capsys.readouterr().out
    assert cli.main(["run", *GRAPH, root]) == 0
    (record,) = (tmp_path / "runs").glob("*/record.json")
    assert json.loads(record.read_text())["graph_reused"] is True


@pytest.mark.parametrize("extra,words", [
    (["graph.k=0", "--submit"], "graph.k=0"),
    (["--nodes", "2"], "--nodes=2 goes with --submit"),
    (["batch_size=16,32", "--submit"], "one graph per job"),
])
def test_bad_neighbours_jobs_are_one_line_before_anything_is_made(tmp_path, capsys, extra, words):
    code = cli.main(["neighbours", *GRAPH, f"run.root={tmp_path / 'runs'}", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()
