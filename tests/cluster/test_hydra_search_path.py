"""The Hydra launchers (hydra/launcher=bnnidr_slurm, bnnidr_local) ship inside the package and are
found with the user's own --config-dir, through hydra_plugins/bnnidr_hpc_searchpath."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF


@pytest.mark.parametrize("launcher,target", [("bnnidr_slurm", "BnnidrSlurmLauncher"),
                                             ("bnnidr_local", "BnnidrLocalLauncher")])
def test_the_launchers_are_found_with_a_config_folder_of_the_users(tmp_path, launcher, target):
    (tmp_path / "my_conf").mkdir()
    (tmp_path / "my_conf" / "mine.yaml").write_text((CONF / "hps_00040.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "bnnidr_hpc.cluster.hydra_app", "--config-dir", "my_conf",
                           "--config-name", "mine", f"hydra/launcher={launcher}", "--cfg", "hydra", "-p",
                           "hydra.launcher"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert f"_target_: hydra_plugins.bnnidr_hpc.{target}" in proc.stdout
    assert "tasks_per_node: ${num_gpu}" in proc.stdout


def test_the_plugin_points_at_the_package_folder_that_holds_them():
    import bnnidr_hpc
    from hydra_plugins.bnnidr_hpc_searchpath import launcher_conf_dir

    assert launcher_conf_dir().parent.parent == Path(bnnidr_hpc.__file__).parent
    assert sorted(p.name for p in (launcher_conf_dir() / "hydra" / "launcher").glob("*.yaml")) == [
        "bnnidr_local.yaml", "bnnidr_slurm.yaml"]
