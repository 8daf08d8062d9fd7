import pytest
import torch
from torch import nn

from bnnidr_hpc.config import load
from bnnidr_hpc.model import BayesLinear, Reducer


def model(*overrides):
    torch.manual_seed(0)
    return Reducer(load(None, ["data.p=32", "output_dim=4", "layer_size=16", *overrides]))


def test_shapes_and_per_layer_sizes_and_activations():
    m = model("nlayers=3", "layer_size=[8,16,12]", "act_funcs=[gelu,tanh,elu]")
    assert [l.linear.out_features for l in m.hidden] == [8, 16, 12]
    assert [type(l.act) for l in m.hidden] == [nn.GELU, nn.Tanh, nn.ELU]
    assert m(torch.randn(5, 32)).shape == (5, 4)


def test_skip_steps_connect_layer_i_to_i_plus_k():
    plain, skip = model("nlayers=4"), model("nlayers=4", "skip_steps=2")
    assert len(plain.skips) == 0
    # k=2 over hidden layers 1..4 and the output (5): 1->3, 2->4, 3->5
    assert sorted(skip.skips.keys()) == ["3", "4", "5"]
    assert isinstance(skip.skips["3"], nn.Identity)  # same size: identity
    assert isinstance(skip.skips["5"], nn.Linear)  # 16 -> output 4: a projection
    x = torch.randn(3, 32)
    with torch.no_grad():
        base = skip(x)
        skip.skips["5"].weight.zero_()
        assert not torch.allclose(skip(x), base)  # the skip path carries signal


def test_skip_graph_differs_in_traced_ops():
    x = torch.randn(2, 32)
    plain = torch.jit.trace(model("nlayers=3").eval(), x)
    skip = torch.jit.trace(model("nlayers=3", "skip_steps=2").eval(), x)
    count = lambda g: str(g.inlined_graph).count("aten::add")
    assert count(skip) > count(plain)


def test_batch_norm_normalises_hidden_pre_activations():
    m = model("batch_norm=true", "act_funcs=identity")
    assert sum(isinstance(x, nn.BatchNorm1d) for x in m.modules()) == 2
    h = m.hidden[0].norm(m.hidden[0].linear(5 + 3 * torch.randn(256, 32)))
    assert h.mean(0).abs().max() < 1e-4 and (h.std(0) - 1).abs().max() < 0.01
    assert not any(isinstance(x, nn.BatchNorm1d) for x in model().modules())


def test_bayesian_layers_sample_in_training_and_use_the_mean_in_eval():
    m = model("bayesian=true", "bayes.init_sigma=0.1")
    assert all(isinstance(x, BayesLinear) for x in [m.hidden[0].linear, m.output])
    x = torch.randn(4, 32)
    m.train()
    assert not torch.allclose(m(x), m(x))
    assert torch.equal(m.embed(x), m.embed(x))
    assert not torch.equal(m.embed(x, mc_samples=8), m.embed(x))
    # posterior-mean forward equals a deterministic linear of the means
    layer = m.output
    h = torch.randn(3, 16)
    layer.eval()
    assert torch.allclose(layer(h), h @ layer.weight_mu.T + layer.bias_mu)


def test_kl_matches_closed_form_and_vanishes_at_the_prior():
    from bnnidr_hpc.config import BayesConfig

    layer = BayesLinear(3, 2, BayesConfig(prior_sigma=0.5, init_sigma=0.2))
    prior = torch.distributions.Normal(0.0, 0.5)
    expected = sum(torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.nn.functional.softplus(rho)), prior).sum()
        for mu, rho in layer._pairs())
    assert layer.kl().item() == pytest.approx(expected.item(), rel=1e-5)
    at_prior = BayesLinear(3, 2, BayesConfig(prior_sigma=0.5, init_sigma=0.5))
    with torch.no_grad():
        for mu, _ in at_prior._pairs():
            mu.zero_()
    assert at_prior.kl().item() == pytest.approx(0.0, abs=1e-5)
    assert model().kl().item() == 0.0
    assert model("bayesian=true").kl().item() > 0


def test_graph_traces_for_bayesian_and_skip_models(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for overrides in (["bayesian=true", "nlayers=3", "skip_steps=2"], ["batch_norm=true", "skip_steps=2"]):
        m = model(*overrides).eval()
        with SummaryWriter(str(tmp_path / "tb")) as w:
            w.add_graph(m, torch.zeros(2, 32))
