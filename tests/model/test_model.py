import pytest
import torch
from torch import nn

from bnnidr_hpc.config.loading import load
from bnnidr_hpc.model.reducer import BayesLinear, Reducer


def model(*overrides):
    torch.manual_seed(0)
    return Reducer(load(None, ["data.p=32", "output_dim=4", "layer_size=16", *overrides]).model_spec())


def test_shapes_and_per_layer_sizes_and_activations():
    m = model("nlayers=3", "layer_size=[8,16,12]", "act_funcs=[gelu,tanh,elu]")
    assert [layer.linear.out_features for layer in m.hidden] == [8, 16, 12]
    assert [type(layer.act) for layer in m.hidden] == [nn.GELU, nn.Tanh, nn.ELU]
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


def test_skip_steps_2_adds_layer_i_to_the_input_of_layer_i_plus_2():
    """The lab's "a skip value of 2 means layer 1 is fully connected to layer 3, and 2 to 4",
    computed by hand: hidden 1 -> hidden 3 (same size: identity), hidden 2 -> output (a projection)."""
    m = model("nlayers=3", "skip_steps=2", "act_funcs=tanh").eval()
    x = torch.randn(5, 32)
    h = [x]
    for j, layer in enumerate(m.hidden, start=1):
        pre = layer.linear(h[-1]) + (h[1] if j == 3 else 0)
        h.append(torch.tanh(pre))
    expected = m.output(h[3]) + h[2] @ m.skips["4"].weight.T
    assert torch.allclose(m(x), expected, atol=1e-6)
    assert not torch.allclose(model("nlayers=3", "act_funcs=tanh").eval()(x), expected, atol=1e-3)


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
    layer = BayesLinear(3, 2, prior_sigma=0.5, init_sigma=0.2)
    prior = torch.distributions.Normal(0.0, 0.5)
    expected = sum(torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.nn.functional.softplus(rho)), prior).sum()
        for mu, rho in layer._pairs())
    assert layer.kl().item() == pytest.approx(expected.item(), rel=1e-5)
    at_prior = BayesLinear(3, 2, prior_sigma=0.5, init_sigma=0.5)
    with torch.no_grad():
        for mu, _ in at_prior._pairs():
            mu.zero_()
    assert at_prior.kl().item() == pytest.approx(0.0, abs=1e-5)
    assert model().kl().item() == 0.0
    assert model("bayesian=true").kl().item() > 0


@pytest.mark.parametrize("overrides", [["bayesian=true", "nlayers=3", "skip_steps=2"],
                                       ["batch_norm=true", "skip_steps=2"]], ids=["bayesian-skip", "batchnorm-skip"])
def test_tensorboard_graph_has_every_layer_with_its_shape_and_no_deprecated_tracing(tmp_path, overrides):
    import warnings

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from bnnidr_hpc.records import tensorboard

    m = model(*overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.jit.trace's DeprecationWarning would fail here
        writer = tensorboard.open_writer(tmp_path)
        tensorboard.log_graph(writer, m, 32)
        writer.close()
    assert m.training  # the graph is traced in eval mode, and the model is left as it was
    nodes = {n.name: n for n in EventAccumulator(str(tmp_path / "tb")).Reload().Graph().node}
    shape = lambda n: [d.size for d in nodes[n].attr["_output_shapes"].list.shape[0].dim]
    assert shape("x") == [2, 32] and nodes["x"].op == "Input"
    if "bayesian=true" in overrides:  # a Bayesian layer's posterior means, and its linear map of them
        assert nodes["hidden/0/linear/weight_mu"].op == "Parameter" and shape("hidden/0/linear/weight_mu") == [16, 32]
        assert shape("hidden/0/linear/linear") == [2, 16]
    else:
        assert nodes["hidden/0/linear"].op == "Linear" and shape("hidden/0/linear") == [2, 16]
    if "batch_norm=true" in overrides:
        assert nodes["hidden/0/norm"].op == "BatchNorm1d" and shape("hidden/0/norm") == [2, 16]
    adds = [n for n in nodes.values() if n.op == "add"]
    assert len(adds) == len(m.skips)  # one sum per skip connection
    (output,) = [n for n in nodes.values() if n.op == "Output"]
    assert shape(output.name) == [2, 4]
