"""Submitting to clusters of shapes the toolkit was not written against, without a cluster: a fake
`sinfo` on PATH describes slurm/start_second.sh's (partitions debug and batch-a100, gpu:a100:2 on 3
nodes). The refusal names the limit; the built-in profile asks for GPUs only where the partition has
them; --nodes does not silently replace the config's num_nodes; a short time limit is warned about."""

import os
import stat

import pytest
from conftest import CONF, TINY

from bnnidr_hpc import cli
from bnnidr_hpc.cluster import planning, slurm_nodes, submit_report
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.runtime.errors import ConfigError

SECOND_SHAPE = """debug*|a100-n1|gpu:a100:2(S:0)|4
batch-a100|a100-n1|gpu:a100:2(S:0)|4
batch-a100|a100-n2|gpu:a100:2(S:0)|4
batch-a100|a100-n3|gpu:a100:2(S:0)|4
"""
FIRST_SHAPE = """cpu*|cpu1|(null)|8
gpu|gpu1|gpu:h100:4|4
gpu|gpu2|gpu:h100:4|4
"""


@pytest.fixture
def fake_sinfo(tmp_path, monkeypatch):
    def install(rows: str):
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        script = folder / "sinfo"
        script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{rows}EOF\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    return install


def config(*overrides, nodes=1, gpus=2):
    return load(None, TINY + [f"num_nodes={nodes}", f"num_gpu={gpus}", *overrides])


@pytest.mark.parametrize("overrides,nodes,gpus,limit", [
    (["cluster.gpu_type=a100"], 1, 3, "--gpus 3 > 2 GPU(s) per node"),
    (["cluster.gpu_type=a100"], 4, 2, "--nodes 4 > its 3 node(s)"),
    (["cluster.gpu_type=h100"], 1, 2, "gpu_type=h100 but its GPUs are a100"),
    (["cluster.gpu_type=a100", "cluster.cpus_per_task=3"], 1, 2, "6 CPUs per node"),
], ids=["gpus", "nodes", "gpu-type", "cpus"])
def test_a_refusal_names_the_limit_the_nodes_and_what_was_asked(fake_sinfo, overrides, nodes, gpus, limit):
    fake_sinfo(SECOND_SHAPE)
    c = config("cluster.partition=batch-a100", *overrides, nodes=nodes, gpus=gpus)
    slurm_nodes.resolve_gpu_request(c)
    detail = slurm_nodes.limit_detail(c)
    assert limit in detail and "\n" not in detail
    assert "partition batch-a100 has 3 node(s): a100-n1 (gpu:a100:2(S:0), 4 CPUs)" in detail
    assert f"asked {nodes} node(s) x {gpus} rank(s)" in detail


def test_an_unknown_partition_says_so(fake_sinfo):
    fake_sinfo(SECOND_SHAPE)
    assert "partition gpu is not known" in slurm_nodes.limit_detail(config("cluster.partition=gpu"))


@pytest.mark.parametrize("shape,partition,expected", [
    (FIRST_SHAPE, None, False),  # the default partition cpu has no GPUs: CPU ranks, as the README's example needs
    (FIRST_SHAPE, "gpu", True),
    (SECOND_SHAPE, None, True),  # debug has a100s
])
def test_the_built_in_profile_asks_for_gpus_only_where_the_partition_has_them(fake_sinfo, shape, partition,
                                                                                   expected):
    fake_sinfo(shape)
    c = config(*([f"cluster.partition={partition}"] if partition else []))
    slurm_nodes.resolve_gpu_request(c)
    assert c.cluster.gres_gpus is expected


def test_a_profile_that_says_gres_gpus_is_not_second_guessed(fake_sinfo):
    fake_sinfo(FIRST_SHAPE)
    c = config("cluster.gres_gpus=true")
    slurm_nodes.resolve_gpu_request(c)
    assert c.cluster.gres_gpus is True


def test_the_readme_first_example_plans_cpu_ranks_on_this_repository_cluster(fake_sinfo, tmp_path, capsys):
    fake_sinfo(FIRST_SHAPE)
    p = planning.plan(str(CONF / "hps_00040.yaml"), [f"run.root={tmp_path}"], [1])
    assert p.points[0].config.cluster.gres_gpus is False
    submit_report.show_dry_run(p)
    script = capsys.readouterr().out
    assert "--partition" not in script and "gpus" not in script.split("#!/bin/bash")[1]


def test_nodes_come_from_the_config_unless_given(tmp_path):
    path = tmp_path / "two_nodes.yaml"
    path.write_text("defaults: [bnnidr_schema, _self_]\nnum_nodes: 2\n")
    root = f"run.root={tmp_path / 'runs'}"
    assert planning.plan(str(path), [*TINY, root], [1]).points[0].config.num_nodes == 2
    assert planning.plan(str(path), [*TINY, root], [1], 2).points[0].config.num_nodes == 2
    with pytest.raises(ConfigError, match="--nodes=3 is not allowed: the config says num_nodes=2"):
        planning.plan(str(path), [*TINY, root], [1], 3)
    with pytest.raises(ConfigError, match="--nodes=3 is not allowed: the config says num_nodes=1"):
        planning.plan(None, [*TINY, root, "num_nodes=1"], [1], 3)
    assert planning.plan(None, [*TINY, root], [1], 3).points[0].config.num_nodes == 3


@pytest.mark.parametrize("mode", ["--check", "--dry-run"])
def test_num_nodes_zero_is_refused_by_check_and_dry_run(tmp_path, capsys, mode):
    code = cli.main(["submit", *TINY, "num_nodes=0", f"run.root={tmp_path / 'runs'}", "--gpus", "1", mode])
    err = capsys.readouterr().err
    assert code == 2 and "num_nodes=0 is not allowed" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("timeout_min,signal_delay_s,warned", [(1, 30, True), (1, 1, True), (2, 61, True),
                                                                (2, 60, False)])
def test_a_time_limit_that_leaves_under_a_minute_before_the_warning_is_warned_about(
        tmp_path, timeout_min, signal_delay_s, warned):
    p = planning.plan(None, [*TINY, f"run.root={tmp_path}", f"cluster.timeout_min={timeout_min}",
                             f"cluster.signal_delay_s={signal_delay_s}"], [1])
    lines = submit_report.short_limit_warnings(p)
    assert bool(lines) is warned
    if warned:
        assert f"leaves {timeout_min * 60 - signal_delay_s} s before the warning signal" in lines[0]


def test_a_warning_signal_that_would_come_before_the_start_is_refused():
    with pytest.raises(ConfigError, match=r"signal_delay_s=90 is not allowed: under cluster.timeout_min x 60 = 60"):
        load(None, TINY + ["cluster.timeout_min=1"])
