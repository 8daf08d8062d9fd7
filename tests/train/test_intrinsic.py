"""TwoNN estimates against scikit-dimension, the Bayesian form, and output_dim=auto."""

import json

import numpy as np
import pytest
import torch
from conftest import CONF

from bnnidr_hpc import cli
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.schema import DataConfig
from bnnidr_hpc.data.sources import Hypersphere
from bnnidr_hpc.train import intrinsic
from bnnidr_hpc.train.loop import train


def sphere(d, p=128, n=4000, **kw):
    return Hypersphere(DataConfig(n=n, p=p, d=d, **kw), seed=0).range(0, n)[0]


def test_matches_scikit_dimension_on_spheres():
    import skdim  # a dev dependency: an independent TwoNN
    for d in (5, 10):
        x = sphere(d)
        ours = intrinsic.estimate_all(x)
        theirs = skdim.id.TwoNN(discard_fraction=0.1).fit(x.double().numpy()).dimension_
        assert ours["fit"]["dimension"] == pytest.approx(theirs, rel=0.03), (d, ours, theirs)
        if d == 5:
            assert ours["mle"]["dimension"] == pytest.approx(5, abs=0.4)
            assert ours["fit"]["dimension"] == pytest.approx(5, abs=0.4)


def test_mle_matches_the_closed_form_on_exact_pareto_ratios():
    torch.manual_seed(0)  # the draw below uses the global generator
    logs = torch.distributions.Exponential(7.0).sample((20000,)).double()  # log mu ~ Exp(d) with d = 7
    est = intrinsic.mle(logs)
    assert est.dimension == pytest.approx(7.0, rel=0.03) and est.error == pytest.approx(7 / np.sqrt(20000), rel=0.05)
    assert intrinsic.linear_fit(logs).dimension == pytest.approx(7.0, rel=0.05)


def test_bayesian_posterior_moves_from_the_prior_to_the_data_as_n_grows():
    logs = intrinsic.log_mu(sphere(5, n=8000))
    prior_shape, prior_rate = 20.0, 1.0  # prior mean 20, far from 5
    means = [intrinsic.bayes(logs[:n], prior_shape, prior_rate).dimension for n in (0, 10, 100, 1000, 8000)]
    data = intrinsic.mle(logs).dimension
    assert means[0] == pytest.approx(20.0)
    gaps = [abs(m - data) for m in means]
    assert gaps[0] > gaps[1] > gaps[2] > 0.5 > gaps[-1]  # from the prior toward the data
    assert means[-1] == pytest.approx(data, rel=0.02)
    errors = [intrinsic.bayes(logs[:n], prior_shape, prior_rate).error for n in (10, 1000, 8000)]
    assert errors[0] > errors[1] > errors[2]


def test_noise_inflates_and_nonlinear_embedding_keeps_the_estimate():
    clean = intrinsic.estimate(sphere(5), "mle").dimension
    noisy = intrinsic.estimate(sphere(5, noise=0.1), "mle").dimension
    bent = intrinsic.estimate(sphere(5, embedding="nonlinear"), "mle").dimension
    assert noisy > clean + 3 and bent == pytest.approx(clean, abs=0.5)


def test_no_n_by_n_matrix_and_duplicates_are_not_neighbours():
    x = sphere(3, n=3000)
    assert torch.allclose(intrinsic.two_nearest(x, block=256), intrinsic.two_nearest(x, block=4096), atol=1e-5)
    dup = torch.cat([x[:500], x[:10]])
    assert torch.isfinite(intrinsic.log_mu(dup)).all()


def test_output_dim_rule():
    assert intrinsic.output_dim_for(4.8, 128) == 6
    assert intrinsic.output_dim_for(0.3, 128) == 2
    assert intrinsic.output_dim_for(200.0, 64) == 63


def test_estimate_id_command(capsys):
    assert cli.main(["estimate-id", str(CONF / "hps_00040.yaml"), "--sample", "2000", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out.strip().splitlines()[-1])
    assert data["true_d"] == 5 and data["n"] == 2000
    assert data["estimates"]["mle"]["dimension"] == pytest.approx(5, abs=0.5)
    assert "true d" in out and "output_dim=auto would choose" in out


def test_output_dim_auto_chooses_from_the_estimate_and_records_it(tmp_path):
    from bnnidr_hpc.config.loading import load

    c = load(str(CONF / "hps_00040.yaml"), ["output_dim=auto", "run.progress=false", "run.graph=false",
                                            f"run.root={tmp_path}", "max_epochs=10"])
    rec = train(c, run_dir_for(c))
    chosen = rec["intrinsic_dim"]["output_dim"]
    assert rec["output_dim"] == chosen == rec["config"]["output_dim"] and 5 <= chosen <= 7
    assert rec["intrinsic_dim"]["input"]["mle"]["dimension"] == pytest.approx(5, abs=0.5)
    assert rec["ap_retention"] >= 0.95
    assert rec["intrinsic_dim"]["gallery_output"]["dimension"] == pytest.approx(
        rec["intrinsic_dim"]["gallery_input"]["dimension"], abs=1.0)


def test_points_with_too_few_distinct_neighbours_have_no_dimension_rather_than_an_error():
    x = sphere(3, n=500)
    for points in (x[:1].repeat(50, 1), torch.cat([x[:1].repeat(30, 1), x[1:2].repeat(30, 1)]), x[:2], x[:1]):
        estimates = intrinsic.estimate_all(points)
        assert all(np.isnan(e["dimension"]) for e in estimates.values()), estimates
        assert np.isnan(intrinsic.estimate(points, "mle").dimension)
    with pytest.raises(ValueError, match="output_dim='auto' is not allowed for these data"):
        intrinsic.output_dim_for(float("nan"), 128)


def test_estimate_id_on_a_few_distinct_rows_or_on_cuda_without_one_is_one_line(tmp_path, capsys):
    rows = np.tile(np.eye(8, dtype=np.float32)[:2], (100, 1))  # two points, each 100 times
    np.save(tmp_path / "two.npy", rows)
    assert cli.main(["estimate-id", "data.source=npy", f"data.path={tmp_path / 'two.npy'}", "output_dim=2",
                     "--sample", "100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rows are identical or nearly so" in err
    if not torch.cuda.is_available():
        assert cli.main(["estimate-id", "run.device=cuda", "--sample", "100"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "run.device='cuda' is not allowed here" in err
