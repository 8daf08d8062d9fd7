"""A user's own features (data.source=npy) and `bnnidr-hpc reduce`, on scikit-learn's digits."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, run_dirs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bnnidr_hpc
from bnnidr_hpc import cli
from bnnidr_hpc.cluster.job import run_local
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import load

SMALL = [o for o in TINY if not o.startswith(("data.", "eval.", "output_dim"))] + ["output_dim=8"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """scikit-learn's digits (1797 x 64, 10 classes, shipped with it) as the user would save them."""
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = tmp_path_factory.mktemp("digits")
    np.save(folder / "X.npy", d.data.astype(np.float32))
    np.save(folder / "Y.npy", d.target)
    return folder


def npy(digits, *extra):
    return ["data.source=npy", f"data.path={digits / 'X.npy'}", f"data.labels={digits / 'Y.npy'}", *extra]


def sklearn_ap(z, labels, queries, gallery):
    from sklearn.metrics import average_precision_score

    d = ((z[queries][:, None] - z[gallery][None]) ** 2).sum(-1)
    hits = labels[gallery][None] == labels[queries][:, None]
    return float(np.mean([average_precision_score(hits[i], -d[i]) for i in range(len(queries)) if hits[i].any()]))


def test_digits_train_reduce_and_the_records_ap_is_recomputed_from_reduces_output(digits, tmp_path, capsys):
    root = tmp_path / "runs"
    code = cli.main(["run", *SMALL, *npy(digits), f"run.root={root}", "max_epochs=4"])
    out = capsys.readouterr().out
    assert code == 0 and "completed" in out
    run_dir = run_dirs(root)[0]
    rec = json.loads((run_dir / "record.json").read_text())
    c = rec["config"]
    # Every row not held out trains; the evaluation sizes shrank to the 359 held-out rows.
    assert (c["data"]["n"], c["data"]["p"], c["data"]["heldout"]) == (1797 - 359, 64, 359)
    assert (c["eval"]["queries"], c["eval"]["gallery"]) == (119, 240)
    heldout = np.load(run_dir / "heldout.npy")
    assert heldout.dtype == np.int64 and len(np.unique(heldout)) == 359 and heldout.max() < 1797

    z_path = tmp_path / "Z.npy"
    assert cli.main(["reduce", str(run_dir), str(digits / "X.npy"), str(z_path)]) == 0
    z = np.load(z_path)
    assert z.shape == (1797, 8) and z.dtype == np.float32
    y = np.load(digits / "Y.npy")
    queries, gallery = heldout[:119], heldout[119:359]
    assert sklearn_ap(z, y, queries, gallery) == pytest.approx(rec["ap_out"], abs=1e-5)
    x = np.load(digits / "X.npy")
    assert sklearn_ap(x, y, queries, gallery) == pytest.approx(rec["ap_in"], abs=1e-5)
    # The Python API gives the same vectors.
    reducer = bnnidr_hpc.load_reducer(run_dir)
    assert not reducer.training
    assert np.allclose(reducer(torch.from_numpy(x[:50])).numpy(), z[:50], atol=1e-5)


def test_standardize_uses_training_rows_only_and_reduce_applies_it_again(digits, tmp_path):
    c = load(None, SMALL + npy(digits, "data.normalize=standardize", "data.heldout=0.3", f"run.root={tmp_path}"))
    rec = run_local(c, run_dir_for(c))
    run_dir = run_dir_for(c)
    stats = np.load(run_dir / "normalization.npz")
    x = np.load(digits / "X.npy")
    train_rows = np.setdiff1d(np.arange(1797), np.load(run_dir / "heldout.npy"))
    assert len(train_rows) == 1797 - round(0.3 * 1797) == c.data.n
    assert np.allclose(stats["mean"], x[train_rows].mean(0), atol=1e-4)
    assert not np.allclose(stats["mean"], x.mean(0), atol=1e-4)  # the held-out rows are not in it
    reducer = bnnidr_hpc.load_reducer(run_dir)
    centred, std = x[:20] - x[train_rows].mean(0), x[train_rows].std(0)
    scaled = np.where(std > 1e-6, centred / np.where(std > 0, std, 1), centred)  # a constant pixel stays as it is
    direct = reducer.model.embed(torch.from_numpy(scaled.astype(np.float32))).numpy()
    assert np.allclose(reducer(torch.from_numpy(x[:20])).numpy(), direct, atol=1e-4)
    assert rec["status"] == "completed"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtypes=st.lists(st.sampled_from(["float16", "float32", "float64"]), min_size=1, max_size=3),
       seed=st.integers(0, 2**16), count=st.integers(1, 40))
def test_rows_read_from_shards_equal_the_table_in_any_order(tmp_path, monkeypatch, dtypes, seed, count):
    """Shards.read gives exactly the concatenated files' rows as float32, in the order asked, across
    shards of different dtypes, repeated rows and contiguous runs, also when the maps reopen."""
    from bnnidr_hpc.data import features

    monkeypatch.setattr(features, "REMAP_BYTES", 256)  # reopen after every few rows
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((int(rng.integers(1, 12)), 5)).astype(dt) for dt in dtypes]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"{seed}-{i}.npy")
        np.save(paths[-1], part)
    table = np.concatenate([part.astype(np.float32) for part in parts])
    shards = features.Shards(paths)
    rows = rng.integers(0, len(table), count) if seed % 2 else np.arange(rng.integers(0, len(table)), len(table))
    got = shards.read(rows.astype(np.int64))
    assert got.dtype == torch.float32 and got.shape == (len(rows), 5)
    assert np.array_equal(got.numpy(), table[rows])


def test_shards_by_glob_train_like_the_single_file(digits, tmp_path):
    x, y = np.load(digits / "X.npy"), np.load(digits / "Y.npy")
    for i, part in enumerate(np.array_split(np.arange(1797), 3)):
        np.save(tmp_path / f"part-{i}.npy", x[part].astype(np.float16))
    np.save(tmp_path / "labels.npy", y)
    whole = tmp_path / "whole.npy"
    np.save(whole, x.astype(np.float16))
    common = SMALL + ["data.source=npy", f"data.labels={tmp_path / 'labels.npy'}", f"run.root={tmp_path / 'r'}"]
    sharded = load(None, common + [f"data.path={tmp_path / 'part-*.npy'}"])
    single = load(None, common + [f"data.path={whole}"])
    assert sharded.data.path == [str(tmp_path / f"part-{i}.npy") for i in range(3)]  # the glob, expanded
    a, b = run_local(sharded, run_dir_for(sharded)), run_local(single, run_dir_for(single))
    assert [e["loss"] for e in a["epochs"]] == [e["loss"] for e in b["epochs"]]
    assert a["ap_out"] == b["ap_out"]


def test_without_labels_the_run_completes_and_says_why_there_is_no_ap(digits, tmp_path, capsys):
    c = load(None, SMALL + ["data.source=npy", f"data.path={digits / 'X.npy'}", f"run.root={tmp_path}"])
    rec = run_local(c, run_dir_for(c))
    assert rec["status"] == "completed" and rec["ap_in"] is None and rec["ap_out"] is None
    assert "no labels" in rec["ap_note"]
    assert rec["intrinsic_dim"]["gallery_output"]["dimension"] > 0


@pytest.mark.parametrize("cache_gb", [1, 1e-9])
def test_two_gloo_ranks_on_npy_equal_one_rank_with_the_global_batch(digits, tmp_path, cache_gb):
    # cache_gb=1e-9: every rank reads only its own rows of each batch from the memory map (read
    # ahead by the loader) and the step gathers them.
    common = SMALL + npy(digits, "optimizers.0.name=sgd", f"data.cache_gb={cache_gb}", f"run.root={tmp_path}")
    c1 = load(None, common + ["batch_size=48", "num_gpu=1"])
    c2 = load(None, common + ["batch_size=24", "num_gpu=2"])
    one, two = run_local(c1, run_dir_for(c1)), run_local(c2, run_dir_for(c2))
    assert one["data_cached"] == two["data_cached"] == (cache_gb >= 1)
    assert [e["loss"] for e in two["epochs"]] == pytest.approx([e["loss"] for e in one["epochs"]], rel=1e-5)
    assert two["ap_in"] == pytest.approx(one["ap_in"], abs=1e-9)


def test_estimate_id_and_output_dim_auto_on_npy(digits, tmp_path, capsys):
    assert cli.main(["estimate-id", *npy(digits)]) == 0
    out = capsys.readouterr().out
    assert "mle" in out and "output_dim=auto would choose" in out and "true d" not in out
    c = load(None, [o for o in SMALL if not o.startswith("output_dim")] + npy(digits, "output_dim=auto",
                                                                             f"run.root={tmp_path}"))
    rec = run_local(c, run_dir_for(c))
    chosen = rec["intrinsic_dim"]["output_dim"]
    assert rec["output_dim"] == chosen and 5 <= chosen <= 15  # digits: TwoNN about 9


def test_reduce_a_bayesian_run_with_samples_saves_their_spread(digits, tmp_path):
    c = load(None, SMALL + npy(digits, "bayesian=true", "bayes.init_sigma=0.05", f"run.root={tmp_path}"))
    run_local(c, run_dir_for(c))
    out = tmp_path / "Z.npy"
    assert cli.main(["reduce", str(run_dir_for(c)), str(digits / "X.npy"), str(out), "--mc-samples", "4"]) == 0
    z, spread = np.load(out), np.load(tmp_path / "Z.spread.npy")
    assert z.shape == (1797, 8) and spread.shape == (1797,) and (spread > 0).all()
    mean = bnnidr_hpc.load_reducer(run_dir_for(c))(torch.from_numpy(np.load(digits / "X.npy")))
    assert np.abs(z - mean.numpy()).max() < 10 * spread.max()  # 4 draws scatter around the posterior mean


def _write(path: Path, array) -> str:
    np.save(path, array)
    return str(path)


def bad_files(folder: Path) -> dict:
    x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    text = folder / "x.txt"
    text.write_text("not an array")
    nan = x.copy()
    nan[150, 3] = np.nan
    return {
        "missing": (["data.path=" + str(folder / "nope.npy")], "no such file"),
        "not npy": (["data.path=" + str(text)], "not a .npy file"),
        "ndim 3": (["data.path=" + _write(folder / "3d.npy", x.reshape(300, 4, 4))], "ndim 2"),
        "int dtype": (["data.path=" + _write(folder / "int.npy", x.astype(np.int32))], "allowed float16"),
        "shards' p": ([f"data.path=[{_write(folder / 'a.npy', x)},{_write(folder / 'b.npy', x[:, :8])}]"],
                      "different widths"),
        "labels' length": (["data.path=" + _write(folder / "ok.npy", x),
                            "data.labels=" + _write(folder / "short.npy", np.zeros(299, np.int64))],
                           "299 labels for 300"),
        "float labels": (["data.path=" + str(folder / "ok.npy"),
                          "data.labels=" + _write(folder / "fl.npy", np.zeros(300))], "must be integers"),
        "nan": (["data.path=" + _write(folder / "nan.npy", nan)], "row 150 holds NaN"),
        "output_dim >= p": (["data.path=" + str(folder / "ok.npy"), "output_dim=16"], "smaller than the input"),
        "heldout too small": (["data.path=" + str(folder / "ok.npy"), "data.heldout=20", "eval.queries=30"],
                              "fewer than eval.queries"),
        "heldout 1.5": (["data.path=" + str(folder / "ok.npy"), "data.heldout=1.5"], "a fraction in (0, 1)"),
        "n over rows": (["data.path=" + str(folder / "ok.npy"), "data.n=290"], "training rows"),
        "no path": ([], "data.path is not set"),
        "normalize": (["data.path=" + str(folder / "ok.npy"), "data.normalize=zscore"], "none, l2, standardize"),
        "path on a sphere": (["data.source=sphere", "data.path=" + str(folder / "ok.npy")], "data.source=npy"),
    }


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return bad_files(tmp_path_factory.mktemp("bad"))


BAD_CASES = ["missing", "not npy", "ndim 3", "int dtype", "shards' p", "labels' length", "float labels", "nan",
             "output_dim >= p", "heldout too small", "heldout 1.5", "n over rows", "no path", "normalize",
             "path on a sphere"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_feature_files_are_one_line_and_exit_2_before_anything_is_created(bad, case, tmp_path, capsys):
    overrides, expected = bad[case]
    root = tmp_path / "runs"
    code = cli.main(["run", "data.source=npy", "output_dim=4", f"run.root={root}", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not root.exists()


def test_reduce_refuses_what_it_cannot_do_in_one_line(digits, tmp_path, capsys):
    c = load(None, SMALL + npy(digits, f"run.root={tmp_path}"))
    run_dir = run_dir_for(c)
    run_local(c, run_dir)
    wide = _write(tmp_path / "wide.npy", np.zeros((10, 65), np.float32))
    cases = [
        ([str(tmp_path / "nowhere"), str(digits / "X.npy"), str(tmp_path / "o.npy")], "not a run directory"),
        ([str(run_dir), wide, str(tmp_path / "o.npy")], "p=65 columns"),
        ([str(run_dir), str(digits / "X.npy"), str(tmp_path / "o.txt")], "a .npy path"),
        ([str(run_dir), str(digits / "X.npy"), str(digits / "X.npy")], "one of the inputs"),
        ([str(run_dir), str(digits / "X.npy"), str(tmp_path / "o.npy"), "--mc-samples", "3"], "not Bayesian"),
        ([str(run_dir), str(tmp_path / "o.npy")], "RUN_DIR INPUT... OUTPUT"),
    ]
    for args, expected in cases:
        assert cli.main(["reduce", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (args, err)
    assert not (tmp_path / "o.npy").exists() and not list(tmp_path.glob(".o.npy*"))
    # A run that did not complete is refused unless asked for.
    rec_path = run_dir / "record.json"
    rec = json.loads(rec_path.read_text())
    rec_path.write_text(json.dumps({**rec, "status": "interrupted"}))
    assert cli.main(["reduce", str(run_dir), str(digits / "X.npy"), str(tmp_path / "o.npy")]) == 2
    assert "interrupted, not completed" in capsys.readouterr().err
    assert cli.main(["reduce", str(run_dir), str(digits / "X.npy"), str(tmp_path / "o.npy"),
                     "--allow-incomplete"]) == 0
    assert np.load(tmp_path / "o.npy").shape == (1797, 8)
