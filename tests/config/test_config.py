import subprocess
import sys

import pytest
import torch
from conftest import CONF

from bnnidr_hpc import cli
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.config.schema import RunConfig
from bnnidr_hpc.runtime.errors import ConfigError

# Presets of a user's feature files: their placeholder paths are replaced, and their identity
# depends on those paths.
FEATURE_PRESETS = {"imagenet_features.yaml"}


@pytest.fixture(scope="module")
def features_1536(tmp_path_factory):
    import numpy as np

    folder = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    np.save(folder / "x.npy", rng.normal(size=(1200, 1536)).astype(np.float16))
    np.save(folder / "y.npy", rng.integers(0, 10, 1200))
    return [f"data.path={folder / 'x.npy'}", f"data.labels={folder / 'y.npy'}", "eval.queries=40", "eval.gallery=80"]


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_composes_validates_and_builds_its_model(path, features_1536):
    from bnnidr_hpc.model.reducer import Reducer

    c = load(str(path), features_1536 if path.name in FEATURE_PRESETS else [])
    assert c.run.name == path.stem
    with torch.device("meta"):  # the sizes alone, no memory
        model = Reducer(c.model_spec(output_dim=7 if c.output_dim == "auto" else None))
    assert model.hidden[0].linear.in_features == c.data.p  # input_dim comes from the data
    assert [layer.linear.out_features for layer in model.hidden] == c.hidden_sizes()
    assert model.output.out_features == (7 if c.output_dim == "auto" else c.output_dim)
    assert all(o.lr is not None and o.weight_decay is not None and o.schedule is not None for o in c.optimizers)


def test_lab_configs_hold_the_lab_values():
    c = load(str(CONF / "hps_00040.yaml"), [])
    assert (c.data.n, c.data.p, c.data.d, c.batch_size) == (2000, 128, 5, 50)
    c = load(str(CONF / "hps_00043.yaml"), [])
    assert (c.data.n, c.data.p, c.data.d, c.batch_size, c.max_epochs) == (20000, 1024, 50, 500, 50)
    c = load(str(CONF / "imagenet_scale.yaml"), [])
    assert (c.data.n, c.data.p, c.data.d) == (1_300_000, 1536, 50)
    c = load(str(CONF / "bnnidr_00047.yaml"), [])
    schedule = c.lr_schedule
    assert (c.learning_rate, schedule.name, schedule.step_size, schedule.gamma) == (1e-2, "step", 50, 0.9)


def test_overrides_and_lists():
    c = load(None, ["nlayers=3", "layer_size=[16,32,16]", "act_funcs=[gelu,tanh,identity]", "data.p=64"])
    assert c.hidden_sizes() == [16, 32, 16]
    assert c.activations() == ["gelu", "tanh", "identity"]
    assert load(None, ["layer_size=48", "nlayers=3"]).hidden_sizes() == [48, 48, 48]


def test_run_dir_hash_ignores_run_group_only():
    a, b = load(None, ["run.root=/x"]), load(None, ["run.root=/x", "run.progress=false"])
    assert run_dir_for(a) == run_dir_for(b)
    assert run_dir_for(a) != run_dir_for(load(None, ["run.root=/x", "seed=1"]))


# The run directories of the shipped configs. A change here re-keys users' existing runs (no resume,
# no dedupe): only a change of what a config trains may change them (last: DEFAULTS_VERSION 4, the
# graph objective by default, 2026-12-06).
GOLDEN_RUN_DIRS = {
    "bnnidr_00047.yaml": "bnnidr_00047-1b1b1234",
    "curved_d5.yaml": "curved_d5-fd7cba5d",
    "hps_00040.yaml": "hps_00040-acae144e",
    "hps_00043.yaml": "hps_00043-ce6abd73",
    "imagenet_scale.yaml": "imagenet_scale-2f591c5a",
    "sweep_bnnidr_00047.yaml": "sweep_bnnidr_00047-1b1b1234",
    "sweep_hps_00040.yaml": "sweep_hps_00040-acae144e",
    "sweep_hps_00043.yaml": "sweep_hps_00043-ce6abd73",
    "sweep_hps_00045.yaml": "sweep_hps_00045-a3e4b0fa",
    "sweep_output_dim.yaml": "sweep_output_dim-fd7cba5d",
    None: "default-01c67fba",
}


def test_run_identity_of_the_shipped_configs_is_pinned():
    shipped = sorted(p.name for p in CONF.glob("*.yaml") if p.name not in FEATURE_PRESETS)
    assert shipped == sorted(k for k in GOLDEN_RUN_DIRS if k)
    for name, expected in GOLDEN_RUN_DIRS.items():
        assert run_dir_for(load(str(CONF / name) if name else None, [])).name == expected, name


def test_run_identity_is_the_difference_from_the_defaults():
    from bnnidr_hpc.config.identity import identity

    # a value given at its default (as a key added to the schema later would be) changes nothing
    assert run_dir_for(load(None, ["data.noise=0.0", "eval.every=1", "optimizers.0.momentum=0.9"])) == \
        run_dir_for(load(None, []))
    assert identity(load(str(CONF / "hps_00040.yaml"), [])) == {"batch_size": 50, "max_epochs": 20}
    # each optimizer is compared with the default optimizer, key by key
    two = load(None, ["optimizers=[{name:sgd,params:'hidden.*'},{name:adam,params:'output.*',lr:2e-3}]"])
    assert identity(two) == {"optimizers.0.name": "sgd", "optimizers.0.params": "hidden.*",
                             "optimizers.1.name": "adam", "optimizers.1.params": "output.*", "optimizers.1.lr": 2e-3}
    # what does not change the result is not part of it
    assert identity(load(None, ["run.name=x", "cluster.timeout_min=5", "eval.block=7", "sweep.gpus=[1,2]"])) == {}


BAD = [
    (["data.n=0"], "data.n=0", "positive"),
    (["nlayers=-1"], "nlayers=-1", "an integer >= 0"),
    (["nlayers=3", "layer_size=[64,64]"], "layer_size=[64, 64]", "one entry per hidden layer"),
    (["act_funcs=swish"], "act_funcs='swish'", "relu, leaky_relu, gelu"),
    (["act_funcs=[relu,bogus]"], "act_funcs[1]='bogus'", "one of"),
    (["optimizers.0.name=rmsprop"], "optimizers[0].name='rmsprop'", "sgd, adam, adamw"),
    (["lr_schedule.name=linear"], "lr_schedule.name='linear'", "none, step, cosine"),
    (["output_dim=128"], "output_dim=128", "smaller than the input dimension data.p=128"),
    (["data.d=128"], "data.d=128", "smaller than data.p=128"),
    (["optimizers.0.params=nothing*"], "optimizers[0].params='nothing*'", "matches no parameter"),
    (["optimizers=[{name:sgd,params:'*'},{name:adam,params:'output.*'}]"], "optimizers[1].params='output.*'",
     "already owned by optimizers[0]"),
    (["optimizers=[{name:sgd,params:'hidden.*'}]"], "optimizers=", "belong to no optimizer"),
    (["batch_size=2001"], "batch_size=2001", "exceeds data.n=2000"),
    (["batch_size=1500", "num_gpu=2"], "batch_size=1500", "at most 1000"),
    (["skip_steps=1"], "skip_steps=1", "0 (none) or 2.."),
    (["foo=1"], "unknown key 'foo'", "batch_size"),
    (["data.foo=1"], "unknown key 'data.foo'", "n, p, d"),
    (["max_epochs=abc"], "max_epochs", "could not be converted to Integer"),
    # the audit of bad inputs: each was a traceback or was accepted silently
    (["optimizers.0.betas=[0.9]"], "optimizers[0].betas=[0.9]", "two numbers"),
    (["optimizers.0.betas=[1.5,0.9]"], "optimizers[0].betas[0]=1.5", "[0, 1)"),
    (["optimizers.0.momentum=-1"], "optimizers[0].momentum=-1.0", "[0, 1)"),
    (["optimizers.0.momentum=1"], "optimizers[0].momentum=1.0", "[0, 1)"),
    (["learning_rate=nan"], "learning_rate=nan", "a finite number"),
    (["optimizers.0.lr=inf"], "optimizers[0].lr=inf", "a finite number"),
    (["data.cache_gb=nan"], "data.cache_gb=nan", "a finite number"),
    (["data.noise=nan"], "data.noise=nan", "a finite number"),
    (["data.spread=inf"], "data.spread=inf", "a finite number"),
    (["lr_schedule.gamma=inf"], "lr_schedule.gamma=inf", "a finite number"),
    (["lr_schedule.warmup_epochs=inf"], "lr_schedule.warmup_epochs=inf", "a finite number"),
    (["bayes.kl_weight=-inf"], "bayes.kl_weight=-inf", "a finite number"),
    (["cluster.mem_gb=nan"], "cluster.mem_gb=nan", "a finite number"),
    (["weight_decay=nan"], "weight_decay=nan", "a finite number"),
    (["seed=${nope}"], "seed='${nope}'", "an interpolation that resolves"),
    (["seed=${oc.env:BNNIDR_TEST_UNSET_VARIABLE}"], "seed='${oc.env:BNNIDR_TEST_UNSET_VARIABLE}'",
     "Environment variable 'BNNIDR_TEST_UNSET_VARIABLE' not found"),
    (["run.name=\\${x}"], "run.name='${x}'", "no '${' in a value"),
    (["data.n=1000000000000000000000000000000"], "data.n=1000000000000000000000000000000", "at most 2147483647"),
    (["seed=-99999999999999999999"], "seed=-99999999999999999999", "at most 2147483647"),
    (["run.root=/dev/null/x"], "run.root='/dev/null/x'", "/dev/null is not a directory"),
    (["+batchsize=10"], "unknown key 'batchsize'", "batch_size"),
    (["+foo=1"], "unknown key 'foo'", "batch_size"),
    (["++data.foo=1"], "unknown key 'data.foo'", "n, p, d"),
    (["+optimizers.0.foo=1"], "unknown key 'optimizers.0.foo'", "name, params, lr"),
    (["batch_norm=2"], "batch_norm=2", "true or false"),
    (["optimizers.0.nesterov=0"], "optimizers.0.nesterov=0", "true or false"),
    (["run.progress=yes"], "run.progress='yes'", "true or false"),
    (["batch_size=1", "batch_norm=true"], "batch_norm=True", "BatchNorm cannot train on one point per device"),
    (["output_dim=auto", "eval.id_sample=2"], "eval.id_sample=2", "at least 10 points for output_dim=auto"),
    (["relevance_prior=true", "eval.id_sample=5"], "eval.id_sample=5", "at least 10 points for relevance_prior=true"),
    (["relevance_prior=true", "output_dim=3"], "output_dim=3", "more than 3 with relevance_prior=true"),
    (["nlayers=0", "skip_steps=2"], "skip_steps=2", "no layer to skip"),
    (["nlayers=0", "layer_size=[8]"], "layer_size=[8]", "one entry per hidden layer (nlayers=0)"),
    (["run.name=/abs"], "run.name='/abs'", "a plain name"),
    (["run.name=a/b"], "run.name='a/b'", "no '/', no '..'"),
    (["run.name=.."], "run.name='..'", "a plain name"),
    (["cluster.setup=[{a:1}]"], "cluster.setup[0]=", "a shell line"),
]
# Keys the schema gains with the rank watchdog and the divergence stop; checked once they are there.
if hasattr(RunConfig(), "diverge_factor"):
    BAD += [
        (["run.rank_timeout_s=0"], "run.rank_timeout_s=0.0", "positive"),
        (["run.rank_timeout_s=inf"], "run.rank_timeout_s=inf", "a finite number"),
        (["run.diverge_factor=1"], "run.diverge_factor=1.0", "0 (stop only on a non-finite loss) or a factor > 1"),
        (["run.diverge_factor=-2"], "run.diverge_factor=-2.0", "a factor > 1"),
        (["run.diverge_factor=nan"], "run.diverge_factor=nan", "a finite number"),
    ]


@pytest.mark.parametrize("overrides,names,allowed", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_values_exit_2_with_one_line(overrides, names, allowed, tmp_path, capsys):
    code = cli.main(["run", str(CONF / "hps_00040.yaml"), f"run.root={tmp_path / 'runs'}", *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and names in err and allowed in err, err
    assert not (tmp_path / "runs").exists()


def test_unparsable_yaml_and_unknown_yaml_key(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("defaults: [bnnidr_schema, _self_]\ndata:\n  n: [1,\n")
    assert cli.main(["run", str(broken)]) == 2
    assert "does not parse as YAML" in capsys.readouterr().err
    typo = tmp_path / "typo.yaml"
    typo.write_text("defaults: [bnnidr_schema, _self_]\nbatchsize: 3\n")
    assert cli.main(["run", str(typo)]) == 2
    assert "unknown key 'batchsize'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no such file"):
        load(str(tmp_path / "missing.yaml"), [])


def test_cli_exit_code_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bnnidr_hpc.cli", "run", "act_funcs=swish",
                           f"run.root={tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_submit_without_slurm_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    code = cli.main(["submit", str(CONF / "hps_00040.yaml"), f"run.root={tmp_path / 'runs'}", "--gpus", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no Slurm on this machine" in err and "bnnidr-hpc run" in err and "--local" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("path", sorted((CONF / "cluster").glob("*.yaml")), ids=lambda p: p.name)
def test_every_cluster_profile_composes(path):
    c = load(str(CONF / "hps_00040.yaml"), [f"cluster={path.stem}"])
    assert c.cluster.name == path.stem


@pytest.mark.parametrize("name", ["hps.yml", "hps", ".yml", "hps.txt"])
def test_a_config_file_of_any_name_composes_and_leaves_nothing_behind(name, tmp_path):
    path = tmp_path / name
    path.write_text((CONF / "hps_00040.yaml").read_text())
    c = load(str(path), [f"run.root={tmp_path / 'runs'}"])
    reference = load(str(CONF / "hps_00040.yaml"), [f"run.root={tmp_path / 'runs'}"])
    assert c.run.name == path.stem and c.batch_size == reference.batch_size == 50
    assert run_dir_for(c).name.split("-")[-1] == run_dir_for(reference).name.split("-")[-1]  # the same hash
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_config_not_named_yaml_still_finds_its_base_and_cluster_profiles(tmp_path):
    (tmp_path / "base.yaml").write_text("defaults: [bnnidr_schema, _self_]\nbatch_size: 40\n")
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "mine.yaml").write_text("name: mine\ntimeout_min: 7\n")
    (tmp_path / "child").write_text("defaults: [base, _self_]\nseed: 3\n")
    c = load(str(tmp_path / "child"), ["cluster=mine"])
    assert (c.batch_size, c.seed, c.cluster.name, c.cluster.timeout_min) == (40, 3, "mine", 7)


@pytest.mark.parametrize("content,expected", [
    (b"defaults: [bnnidr_schema, _self_]\nrun:\n  name: caf\xe9\n", "is not UTF-8 text (byte 0xe9"),
    (bytes(range(256)), "is not UTF-8 text"),
    (b"defaults: [bnnidr_schema, _self_]\nsweep:\n  grid:\n    x: " + b"[" * 5000 + b"]" * 5000, "nests deeper"),
    (b"defaults: [bnnidr_schema, _self_]\ncluster:\n  sbatch:\n" + b"".join(
        b"  " * (i + 2) + b"a:\n" for i in range(40)) + b"  " * 42 + b"b: 1\n", "nests deeper than 16"),
    (b"defaults: 3\n", "defaults=3 is not allowed"),
    (b"defaults: [bnnidr_schema, _self_]\nbatch_norm: 2\n", "batch_norm=2 is not allowed: true or false"),
    (b"defaults: [bnnidr_schema, _self_]\nseed: ${oc.env:BNNIDR_TEST_UNSET_VARIABLE}\n", "interpolation"),
    (b"defaults: [bnnidr_schema, _self_]\ndata: 3\n", "not a subclass of DataConfig"),
])
def test_bad_yaml_files_are_one_line(content, expected, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert cli.main(["run", str(path), f"run.root={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bnnidr-hpc: ") and expected in err, err
    assert not (tmp_path / "runs").exists()


def test_interpolations_are_resolved_once(tmp_path, monkeypatch):
    monkeypatch.setenv("BNNIDR_TEST_ROOT", str(tmp_path))
    c = load(None, ["run.root=${oc.env:BNNIDR_TEST_ROOT}/runs", "eval.gallery=${data.categories}"])
    assert c.run.root == f"{tmp_path}/runs" and c.eval.gallery == 10
    path = tmp_path / "interp.yaml"
    path.write_text("defaults: [bnnidr_schema, _self_]\nseed: ${data.d}\n")
    assert load(str(path), []).seed == 5


def test_run_root_below_a_file_and_blank_run_name(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match="afile is not a directory"):
        load(None, [f"run.root={tmp_path / 'afile' / 'runs'}"])
    assert load(None, [f"run.root={tmp_path / 'new' / 'deeper'}"]).run.root.endswith("deeper")  # made by the run
    assert not (tmp_path / "new").exists()
    blank = load(None, ["run.name='  '"])
    assert blank.run.name == "" and run_dir_for(blank).name.startswith("default-")


@pytest.mark.parametrize("bayesian", [False, True])
def test_nlayers_0_is_a_linear_reducer(bayesian):
    from bnnidr_hpc.model.reducer import Reducer, parameter_names

    c = load(None, ["nlayers=0", "data.p=16", "output_dim=3", "batch_norm=true", f"bayesian={bayesian}"])
    assert c.hidden_sizes() == [] and c.activations() == []
    assert load(None, ["nlayers=0", "layer_size=[]", "act_funcs=[]"]).hidden_sizes() == []
    torch.manual_seed(0)
    model = Reducer(c.model_spec()).eval()
    assert len(model.hidden) == 0 and len(model.skips) == 0
    assert all(name.startswith("output.") for name in parameter_names(c.model_spec()))
    x = torch.randn(4, 16)
    weight = model.output.weight_mu if bayesian else model.output.weight
    bias = model.output.bias_mu if bayesian else model.output.bias
    assert torch.allclose(model(x), x @ weight.T + bias)  # y = W x + v, nothing else
    model.train()
    loss = model(x).square().mean() + model.kl()
    loss.backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()
