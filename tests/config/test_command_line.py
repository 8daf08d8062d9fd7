"""The command line's own input: flags, their values, and values that only fail once acted on.
Every refusal is one line "bnnidr-hpc: ..." and exit 2, without argparse's usage block."""

import dataclasses
import time

import pytest
from conftest import CONF, TINY

from bnnidr_hpc import cli
from bnnidr_hpc.config.identity import config_hash
from bnnidr_hpc.config.loading import load


@pytest.mark.parametrize("argv,expected", [
    (["run", "--nope"], "unrecognized arguments: --nope"),
    (["submit", str(CONF / "hps_00040.yaml"), "--nodes", "x"], "--nodes: invalid int value: 'x'"),
    (["submit", str(CONF / "hps_00040.yaml"), "--nodes"], "--nodes: expected one argument"),
    (["estimate-id", "--sample", "1.5"], "--sample: invalid int value"),
    (["estimate-id", "--sample", "2"], "--sample=2 is not allowed"),
    (["reduce", "--device", "tpu"], "--device: invalid choice: 'tpu'"),
    (["logs", "x", "--rank", "first"], "--rank: invalid int value"),
    (["status"], "the following arguments are required: dir"),
    (["bogus"], "invalid choice: 'bogus'"),
    ([], "the following arguments are required: command"),
])
def test_bad_flags_and_flag_values_are_one_line(argv, expected, capsys):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("bnnidr-hpc: ") and expected in err and "usage" not in err, err


@pytest.mark.parametrize("command", [["run"], ["submit", "--local", "--gpus", "1"]])
def test_a_run_root_that_cannot_be_created_is_bad_input(capsys, command):
    # Validation only looks at run.root; /proc passes every look (a folder root may write in).
    assert cli.main([*command, *TINY, "run.root=/proc/bnnidr-nope/runs"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run.root='/proc/bnnidr-nope/runs' is not allowed: it cannot be created" in err


def test_a_huge_setup_list_neither_hangs_the_hash_nor_passes_validation(tmp_path, capsys):
    c = load(None, [*TINY, f"run.root={tmp_path}"])
    huge = dataclasses.replace(c, cluster=dataclasses.replace(c.cluster, setup=["module load x"] * 200_000))
    started = time.perf_counter()
    assert config_hash(huge) == config_hash(c)  # setup lines are not what a run trains
    assert time.perf_counter() - started < 2.0
    # Composing takes Hydra ~0.6 ms a value: a long list is refused before it, by size or count.
    lines = lambda count: ("defaults: [bnnidr_schema, _self_]\ncluster:\n  setup:\n"
                           + "".join(f"    - echo {i}\n" for i in range(count)))
    for count, expected, seconds in ((200_000, "bytes: a config file is at most 1048576", 5),
                                     (20_000, "holds more than 10000 values", 10),  # YAML's own parsing
                                     (1_200, "cluster.setup='[1200 lines]' is not allowed: at most 1000 lines", 30)):
        config = tmp_path / f"setup_{count}.yaml"
        config.write_text(lines(count))
        started = time.perf_counter()
        assert cli.main(["submit", str(config), "--dry-run", f"run.root={tmp_path / 'runs'}"]) == 2
        assert time.perf_counter() - started < seconds
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    setup = "cluster.setup=[" + ",".join(["x"] * 200_000) + "]"
    assert cli.main(["submit", str(CONF / "hps_00040.yaml"), "--dry-run", setup]) == 2
    assert "cluster.setup=... is not allowed: more than 10000 values" in capsys.readouterr().err
