"""Cluster profiles outside the checkout (config/profiles.py): cluster=PATH, a profile beside the
user's config, $BNNIDR_CLUSTER_DIR, then the checkout's conf/cluster/, first match wins; without
cluster= the built-in profile, named `builtin`."""

import pytest
from conftest import CONF, TINY

from bnnidr_hpc import cli
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.runtime.errors import ConfigError


def write_profile(path, timeout_min, extra=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"partition: batch-a100\ngpu_type: a100\ntimeout_min: {timeout_min}\n{extra}")
    return path


def test_a_profile_given_as_a_path_is_read_and_named_by_its_file(tmp_path):
    profile = write_profile(tmp_path / "elsewhere" / "my_cluster.yaml", 17)
    c = load(str(CONF / "hps_00040.yaml"), [f"cluster={profile}", "cluster.cpus_per_task=3"])
    assert (c.cluster.name, c.cluster.partition, c.cluster.gpu_type) == ("my_cluster", "batch-a100", "a100")
    assert (c.cluster.timeout_min, c.cluster.cpus_per_task) == (17, 3)  # overrides still win over the profile
    assert c.cluster.profile_path == str(profile)


def test_the_search_order_is_beside_the_config_then_the_user_folder_then_the_checkout(tmp_path, monkeypatch):
    config = tmp_path / "mine" / "hps.yaml"
    config.parent.mkdir()
    config.write_text((CONF / "hps_00040.yaml").read_text())
    user = tmp_path / "user_profiles"
    monkeypatch.setenv("BNNIDR_CLUSTER_DIR", str(user))
    # only the checkout has `local`
    assert load(str(config), ["cluster=local"]).cluster.profile_path == str(CONF / "cluster" / "local.yaml")
    # the user's folder comes before the checkout
    write_profile(user / "local.yaml", 21)
    assert load(str(config), ["cluster=local"]).cluster.timeout_min == 21
    # a profile beside the config comes first
    write_profile(config.parent / "cluster" / "local.yaml", 22)
    assert load(str(config), ["cluster=local"]).cluster.timeout_min == 22
    # the built-in default config looks in the user's folder too
    write_profile(user / "only_mine.yaml", 23)
    assert load(None, ["cluster=only_mine"]).cluster.timeout_min == 23


def test_without_the_variable_the_user_folder_is_under_the_home_config(tmp_path, monkeypatch):
    monkeypatch.delenv("BNNIDR_CLUSTER_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    write_profile(tmp_path / ".config" / "bnnidr-hpc" / "cluster" / "site.yaml", 24)
    assert load(str(CONF / "hps_00040.yaml"), ["cluster=site"]).cluster.timeout_min == 24


@pytest.mark.parametrize("value,expected", [
    ("nosuch", "no nosuch.yaml in"),
    ("/no/such/profile.yaml", "no such profile file"),
    ("a b", "a profile NAME"),
])
def test_a_profile_not_found_is_one_line_saying_where_it_was_looked_for(value, expected, capsys, tmp_path):
    code = cli.main(["run", str(CONF / "hps_00040.yaml"), f"cluster={value}", f"run.root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("text,expected", [
    ("- a\n- b\n", "must hold a mapping"),
    ("gres_gpus: 2\n", "cluster.gres_gpus=2 is not allowed"),
    ("partitionn: gpu\n", "partitionn"),
])
def test_a_bad_profile_file_is_one_line(tmp_path, text, expected):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load(None, TINY + [f"cluster={tmp_path / 'bad.yaml'}"])
    assert "\n" not in str(info.value)


def test_the_built_in_profile_has_its_own_name_and_leaves_the_gpu_request_open():
    c = load(None, TINY)
    assert c.cluster.name == "builtin" and c.cluster.profile_path is None
    assert c.cluster.gres_gpus is None  # decided at submission from the partition (cluster/slurm_nodes.py)


def test_two_profiles_at_once_are_refused():
    with pytest.raises(ConfigError, match="cluster= is given 2 times"):
        load(None, TINY + ["cluster=local", "cluster=local_gpu"])
