import json

import pytest
import torch

from bnnidr_hpc import cli
from bnnidr_hpc.cluster.job import run_local
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.data.sources import Hypersphere, ShardLoader
from bnnidr_hpc.model import objectives
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.records import run_files, run_record
from bnnidr_hpc.runtime import atomic_files
from bnnidr_hpc.runtime.distributed import DistInfo
from bnnidr_hpc.train.loop import train
from bnnidr_hpc.train.optim import Optimizers, lr_factor
from bnnidr_hpc.train.step import make_step

METRICS = ("final_loss", "ap_in", "ap_out", "ap_retention")


def test_tiny_run_writes_a_complete_run_directory(tiny):
    c = tiny("run.graph=true")
    rd = run_dir_for(c)
    rec = train(c, rd)
    assert rec["status"] == "completed" and rec["epochs_done"] == 3
    on_disk = json.loads((rd / "record.json").read_text())
    assert on_disk["final_loss"] == rec["final_loss"]
    for key in ("n", "p", "d", "batch_size", "world_size", "devices", "epoch_seconds", "total_seconds",
                "time_to_first_step_s", "samples_per_s", "final_loss", "ap_in", "ap_out", "status",
                "versions", "git", "slurm_job_id", "config"):
        assert key in on_disk, key
    assert (on_disk["n"], on_disk["p"], on_disk["d"], on_disk["world_size"]) == (256, 32, 3, 1)
    assert on_disk["steps_per_epoch"] == 256 // 32
    assert len(on_disk["epoch_seconds"]) == 3 and on_disk["samples_per_s"] > 0
    assert 0 < on_disk["ap_in"] <= 1 and 0 < on_disk["ap_out"] <= 1
    assert on_disk["versions"]["torch"] == torch.__version__
    assert (rd / "config.yaml").read_text().count("batch_size: 32") == 1
    assert len((rd / "metrics.jsonl").read_text().splitlines()) == 3
    assert (rd / "checkpoint.pt").exists()
    assert not list(rd.glob(".*.tmp"))  # no temp files left behind


def test_training_reduces_the_loss_and_keeps_ap(tiny):
    # 15 epochs left seed 0 at 0.898-0.904 of the input's AP, depending on the products' rounding
    # (products.py); by 30 every seed and library is at 0.95 or more.
    c = tiny("max_epochs=30", "learning_rate=1e-2")
    rec = train(c, run_dir_for(c))
    losses = [e["loss"] for e in rec["epochs"]]
    assert losses[-1] < 0.5 * losses[0]
    assert rec["ap_retention"] > 0.9


def test_same_seed_gives_identical_metrics(tiny, tmp_path):
    a = train(tiny(), tmp_path / "a")
    b = train(tiny(), tmp_path / "b")
    assert [e["loss"] for e in a["epochs"]] == [e["loss"] for e in b["epochs"]]
    assert all(a[k] == b[k] for k in METRICS)
    c = train(tiny("seed=1"), tmp_path / "c")
    assert c["final_loss"] != a["final_loss"]


def test_tensorboard_holds_scalars_hparams_and_graph_for_bayesian_skip_model(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    c = tiny("bayesian=true", "nlayers=3", "skip_steps=2", "run.graph=true")
    rd = run_dir_for(c)
    rec = train(c, rd)
    assert rec["epochs"][-1]["kl"] > 0  # the KL term is part of the Bayesian loss
    assert rec["final_loss"] == pytest.approx(rec["final_data_loss"] + rec["final_kl"])
    assert (rec["final_data_loss"], rec["final_kl"]) == (rec["epochs"][-1]["data_loss"], rec["epochs"][-1]["kl"])
    # KL / (n (n - 1)) per pair: the KL term is the same order as the data term, not 10^4 times it
    assert 1e-3 < rec["final_kl"] / rec["final_data_loss"] < 1e3
    acc = EventAccumulator(str(rd / "tb")).Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("loss/train", "loss/kl", "ap/reduced", "ap/retention", "lr/optimizer0", "perf/samples_per_s",
                "perf/epoch_seconds"):
        assert tag in tags
    assert [s.step for s in acc.Scalars("loss/train")] == [1, 2, 3]
    graph = acc.Graph()
    shapes = {n.name: [d.size for d in n.attr["_output_shapes"].list.shape[0].dim] for n in graph.node
              if "_output_shapes" in n.attr}
    assert shapes["x"] == [2, 32] and shapes["output"] == [2, 4]  # each node's output shape, for 2 rows
    assert (rd / "tb" / "hparams").is_dir()


def test_two_optimizers_each_step_their_own_parameters_by_their_own_rule(tiny):
    c = tiny("optimizers=[{name:sgd,params:'hidden.*',lr:0.05},{name:adam,params:'output.*',lr:1e-3}]")
    torch.manual_seed(0)
    m = Reducer(c.model_spec())
    opts = Optimizers(c.optimizers, c.max_epochs, m)
    assert [type(o).__name__ for o in opts.optimizers] == ["SGD", "Adam"]
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    m(torch.randn(8, 32)).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    opts.step()
    for n, p in m.named_parameters():
        assert p.grad is None, n  # zeroed for the next step
        if n.startswith("hidden."):  # SGD's first step, momentum or not: p - lr g
            assert torch.allclose(p, before[n] - 0.05 * grads[n], atol=1e-7), n
        else:  # Adam's first step moves every coordinate with a gradient by lr, against its sign
            moved = grads[n].abs() > 1e-6
            assert torch.allclose((before[n] - p)[moved], 1e-3 * grads[n][moved].sign(), rtol=1e-3), n
    assert set(grads) == set(before) and all(n.startswith(("hidden.", "output.")) for n in grads)


def test_step_schedule_changes_lr_on_schedule(tiny):
    c = tiny("max_epochs=6", "learning_rate=0.01", "lr_schedule.name=step", "lr_schedule.step_size=2",
             "lr_schedule.gamma=0.5")
    rec = train(c, run_dir_for(c))
    assert [e["lr"][0] for e in rec["epochs"]] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])


def test_schedules():
    from bnnidr_hpc.config.schema import ScheduleConfig as S

    assert lr_factor(S(name="step", step_size=50, gamma=0.9), 120, 200) == pytest.approx(0.81)
    assert lr_factor(S(name="cosine"), 0, 10) == 1 and lr_factor(S(name="cosine"), 10, 10) == pytest.approx(0)
    assert lr_factor(S(name="cosine", min_factor=0.1), 5, 10) == pytest.approx(0.55)
    assert lr_factor(S(name="none", warmup_epochs=2), 0.5, 10) == pytest.approx(0.25)
    assert lr_factor(S(name="none", warmup_epochs=2), 3, 10) == 1


def test_per_optimizer_schedule_and_weight_decay(tiny):
    c = tiny("weight_decay=0.01", "optimizers=[{name:sgd,params:'hidden.*',schedule:{name:step,step_size:1,gamma:0.5}},"
             "{name:adamw,params:'output.*',weight_decay:0.1}]")
    m = Reducer(c.model_spec())
    opts = Optimizers(c.optimizers, c.max_epochs, m)
    assert [o.param_groups[0]["weight_decay"] for o in opts.optimizers] == [0.01, 0.1]
    assert opts.set_lr(2.0) == pytest.approx([c.learning_rate * 0.25, c.learning_rate])


def test_interrupted_run_resumes_to_the_same_result(tiny, tmp_path):
    straight = train(tiny("bayesian=true"), tmp_path / "straight")
    calls = {"n": 0}

    def stop_after_11_steps():
        calls["n"] += 1
        return calls["n"] == 11  # mid-epoch 2 (8 steps per epoch)

    first = train(tiny("bayesian=true"), tmp_path / "resumed", stop_requested=stop_after_11_steps)
    assert first["status"] == "interrupted" and first["epochs_done"] == 1
    before_restart = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert (before_restart["state"]["epoch"], before_restart["state"]["step"]) == (1, 3)  # 11 = 8 + 3 steps
    # a later save killed mid-write leaves only its temp file; the last good checkpoint still counts
    (tmp_path / "resumed" / ".checkpoint.pt.killed.tmp").write_bytes(b"half a checkpoint")
    resumed = train(tiny("bayesian=true"), tmp_path / "resumed")
    assert resumed["status"] == "completed" and resumed["restarts"] == 1
    assert resumed["seconds_lost"] >= 0 and not list((tmp_path / "resumed").glob(".*.tmp"))
    # total_seconds adds each session once: the interrupted one's (kept by the checkpoint), then
    # this one's, from process start to the record's last update
    assert 0 < before_restart["elapsed_s"] <= first["total_seconds"]
    this_session = resumed["updated_at"] - run_record.process_start_time()
    assert resumed["total_seconds"] == pytest.approx(before_restart["elapsed_s"] + this_session, rel=1e-9)
    for key in METRICS:
        assert resumed[key] == pytest.approx(straight[key], rel=1e-6), key
    assert [e["loss"] for e in resumed["epochs"]] == pytest.approx([e["loss"] for e in straight["epochs"]], rel=1e-6)


def test_working_ahead_on_the_next_batch_changes_nothing(tiny, monkeypatch):
    """A step given the next batch computes its input distances early (while it would wait for
    collectives); the losses and the model must be exactly those of steps that compute them when
    they need them, from the loader's two alternating buffers."""
    import bnnidr_hpc.train.step as step_module

    computed_in_step = []
    monkeypatch.setattr(step_module, "pair_targets",
                        lambda *a: computed_in_step.append(1) or objectives.pair_targets(*a))
    c = tiny("batch_size=600", "data.n=1800", "data.p=16", "loss=umap")  # 3 steps, several 256-row blocks
    losses, models, in_step = [], [], []
    for ahead in (True, False):
        computed_in_step.clear()
        torch.manual_seed(0)
        model = Reducer(c.model_spec())
        step = make_step(c, model, Optimizers(c.optimizers, c.max_epochs, model), DistInfo())
        loader = ShardLoader(Hypersphere(c.data, c.seed), c.batch_size, 0, 1)
        losses.append([step(x, full, following if ahead else None)[0].item()
                       for epoch in range(2) for x, full, following in loader.epoch(epoch)])
        models.append(model.state_dict())
        in_step.append(len(computed_in_step))
    assert in_step == [1, 6]  # ahead: only the first batch is computed in its own step, not each epoch's
    assert losses[0] == losses[1] and len(losses[0]) == 6
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "record.json"
    run_files.write_json(path, {"status": "completed"})

    def explode(f):
        f.write("{half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_files.atomic_write(path, explode)
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert list(tmp_path.iterdir()) == [path]


def test_cli_run_reports_a_completed_run_instead_of_rerunning(tmp_path, capsys):
    from conftest import TINY

    args = ["run", *TINY, f"run.root={tmp_path}"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("completed: ") and "AP in" in out
    assert cli.main(args) == 0
    assert "already completed" in capsys.readouterr().out
    assert cli.main(args + ["--force"]) == 0
    assert len(list(tmp_path.glob("*.replaced-*"))) == 1


def test_hydra_app_trains_the_same_run(tmp_path):
    import subprocess
    import sys

    from conftest import CONF

    proc = subprocess.run([sys.executable, "-m", "bnnidr_hpc.cluster.hydra_app", "--config-dir", str(CONF),
                           "--config-name",
                           "hps_00040", "max_epochs=1", "run.progress=false", f"run.root={tmp_path}",
                           "hydra.run.dir=" + str(tmp_path / "hydra")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = [d for d in tmp_path.iterdir() if d.name.startswith("hps_00040-")]
    assert json.loads((run_dir / "record.json").read_text())["status"] == "completed"


def test_hydra_multirun_with_the_local_submitit_launcher_runs_num_gpu_ranks(tmp_path):
    import subprocess
    import sys

    from conftest import CONF

    proc = subprocess.run([sys.executable, "-m", "bnnidr_hpc.cluster.hydra_app", "--config-dir", str(CONF),
                           "--config-name",
                           "hps_00040", "-m", "hydra/launcher=bnnidr_local", "num_gpu=2", "max_epochs=1",
                           "batch_size=25", "run.progress=false", f"run.root={tmp_path / 'runs'}",
                           f"hydra.sweep.dir={tmp_path / 'hydra'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = (tmp_path / "runs").glob("hps_00040-*/record.json")
    rec = json.loads(record.read_text())
    assert rec["status"] == "completed" and rec["world_size"] == 2


def test_train_refuses_an_environment_whose_world_size_is_not_the_configs(tiny, tmp_path):
    from bnnidr_hpc.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match=r"rank 0 of 1 .*num_nodes x num_gpu = 2"):
        train(tiny("num_gpu=2"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_torchrun_ranks_train_one_run_and_a_mismatch_is_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import TINY

    from bnnidr_hpc.runtime import distributed

    def torchrun(*args):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-port", str(distributed.free_port()), "-m", "bnnidr_hpc.cli", "run", *TINY,
                               f"run.root={tmp_path}", *args], capture_output=True, text=True, timeout=240)

    proc = torchrun("num_gpu=2", "batch_size=16", "optimizers.0.name=sgd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("completed: ") == 1  # rank 0 alone reports
    (rec_path,) = tmp_path.glob("*/record.json")
    rec = json.loads(rec_path.read_text())
    assert rec["status"] == "completed" and rec["world_size"] == 2 and rec["global_batch_size"] == 32
    # the same as `run --gpus 2` (spawned ranks): same losses
    spawned = cli.main(["run", *TINY, f"run.root={tmp_path / 'spawned'}", "batch_size=16", "optimizers.0.name=sgd",
                        "--gpus", "2"])
    (other,) = (tmp_path / "spawned").glob("*/record.json")
    assert spawned == 0
    assert [e["loss"] for e in rec["epochs"]] == pytest.approx(
        [e["loss"] for e in json.loads(other.read_text())["epochs"]], rel=1e-6)
    mismatch = torchrun("num_gpu=1", "seed=5")
    assert mismatch.returncode != 0
    assert "bnnidr-hpc: world size: this process is rank" in mismatch.stderr
    assert not list(tmp_path.glob("*/record.json"))[1:]  # nothing created for the refused run


def test_every_record_holds_pca_and_random_baselines_with_standard_errors(tiny):
    import math

    from bnnidr_hpc.train.retrieval import bootstrap_se

    # The linear embedding spans d + 1 = 4 dimensions: PCA to output_dim 4 keeps every distance.
    c = tiny("output_dim=4", "eval.queries=128")
    rec = run_local(c, run_dir_for(c))
    pca, rand = rec["baselines"]["pca"], rec["baselines"]["random"]
    assert pca["ap"] == pytest.approx(rec["ap_in"], abs=1e-5) and pca["ap_retention"] == pytest.approx(1, abs=1e-5)
    assert pca["knn_recall"] == pytest.approx(1.0, abs=0.01)
    assert rand["ap"] < pca["ap"] and 0 < rand["knn_recall"] < 1  # 4 random directions of 32 lose neighbours
    for scores in (pca, rand, {"ap_se": rec["ap_out_se"]}, {"ap_se": rec["ap_in_se"]}):
        assert 0 < scores["ap_se"] < 0.1
    assert 0 < rec["knn_recall"] <= 1 and rec["epochs"][-1]["ap_se"] == rec["ap_out_se"]
    # The bootstrap's error of a mean agrees with the textbook std / sqrt(n).
    values = torch.rand(400, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert bootstrap_se(values) == pytest.approx(values.std().item() / math.sqrt(400), rel=0.15)


@pytest.mark.parametrize("name,kw", [("sgd", {"momentum": 0.0}), ("sgd", {"momentum": 0.9}),
                                     ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
                                     ("adam", {"weight_decay": 0.01}), ("adamw", {"weight_decay": 0.1}),
                                     ("adamw", {"betas": [0.8, 0.99]})])
@pytest.mark.parametrize("fused", [True, False], ids=["fused kernel", "foreach ops"])
def test_each_optimizer_rule_steps_exactly_as_torch_optim(name, kw, fused, monkeypatch):
    from bnnidr_hpc.config.schema import OptimizerConfig
    from bnnidr_hpc.model.reducer import ModelSpec
    from bnnidr_hpc.train import optim

    if not fused:
        monkeypatch.setattr(optim, "_fused", lambda params: False)
    oc = OptimizerConfig(name=name, lr=0.01, **{"weight_decay": 0.0, **kw})
    torch.manual_seed(0)
    ours_model = Reducer(ModelSpec(16, (12,), ("relu",), 4))
    ref_model = Reducer(ours_model.spec)
    ref_model.load_state_dict(ours_model.state_dict())
    ours = Optimizers([oc], 10, ours_model)
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    extra = {"momentum": oc.momentum, "nesterov": oc.nesterov} if name == "sgd" else {"betas": tuple(oc.betas)}
    ref = cls(ref_model.parameters(), lr=0.01, weight_decay=oc.weight_decay, **extra)
    for step in range(6):
        x = torch.randn(8, 16)
        for model in (ours_model, ref_model):
            model(x).square().sum().backward()
        ours.step()
        ref.step()
        ref.zero_grad(set_to_none=True)
        for (n, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (step, n)
    # The state survives a checkpoint: a copy loaded from it steps the same.
    again = Optimizers([oc], 10, ours_model)
    again.load_state_dict(ours.state_dict())
    assert again.optimizers[0].steps == 6
    saved = ours.state_dict()[0]["buffers"]
    assert all(torch.equal(a, b) for k in saved for a, b in zip(again.optimizers[0]._buffers()[k], saved[k]))


@pytest.mark.parametrize("queries,gallery", [(1, 1), (1, 2), (3, 5)])
def test_a_held_out_set_smaller_than_the_neighbourhoods_still_evaluates(tiny, queries, gallery):
    # knn_recall keeps up to 10 neighbours per gallery point; a smaller gallery keeps what it has
    # (none for one point: no figure, null in the record), and the run completes.
    c = tiny(f"eval.queries={queries}", f"eval.gallery={gallery}")
    rec = run_local(c, run_dir_for(c))
    assert rec["status"] == "completed" and rec["epochs_done"] == 3
    saved = json.loads((run_dir_for(c) / "record.json").read_text())
    if gallery == 1:
        assert saved["knn_recall"] is None
    else:
        assert 0 <= saved["knn_recall"] <= 1


def test_a_step_of_one_point_is_refused_before_anything_is_created(tmp_path, capsys):
    from conftest import TINY

    root = tmp_path / "runs"
    for loss in ("umap", "stress"):
        assert cli.main(["run", *TINY, f"run.root={root}", "batch_size=1", f"loss={loss}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "batch_size=1 is not allowed: at least 2 points per step" in err
    assert not root.exists()
