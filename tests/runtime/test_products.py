"""The float32 products' library (products.py): both give float32 results and the same gradients,
auto picks oneDNN on AMD CPUs only, and a run records the one it used."""

import pytest
import torch

from bnnidr_hpc.config.loading import load
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.runtime import products
from bnnidr_hpc.runtime.errors import ConfigError
from bnnidr_hpc.train.loop import train

LIBRARIES = ["blas", pytest.param("onednn", marks=pytest.mark.skipif(
    products.resolve("onednn") != "onednn", reason="this PyTorch build has no oneDNN"))]


@pytest.fixture
def library(request):
    chosen = products.use(request.param)
    yield chosen
    products.use("auto")


@pytest.fixture
def onednn_calls(monkeypatch):
    """How many products went to oneDNN."""
    calls = []
    op = products._LINEAR
    monkeypatch.setattr(products, "_LINEAR", lambda *args: calls.append(1) or op(*args))
    return calls


@pytest.mark.parametrize("library", LIBRARIES, indirect=True)
def test_products_are_float32_exact_and_their_gradients_are_autograds(library, onednn_calls):
    assert products.library() == library
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 700, generator=g)
    w = torch.randn(200, 700, generator=g, requires_grad=True)
    b = torch.randn(200, generator=g, requires_grad=True)
    exact = x.double() @ w.detach().double().T + b.detach().double()
    y = products.linear(x.requires_grad_(), w, b)
    # float32's rounding over 700 terms is ~1e-6 of the largest entry; bfloat16's would be ~4e-3
    assert ((y.double() - exact).abs().max() / exact.abs().max()).item() < 2e-5
    upstream = torch.randn(300, 200, generator=g)
    grads = torch.autograd.grad(y, (x, w, b), upstream)
    want = torch.autograd.grad(torch.nn.functional.linear(x, w, b), (x, w, b), upstream)
    for got, ref in zip(grads, want):
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # mm and addmm_ with transposed (strided) operands, as the loss's backward and the distances use them
    a, c = torch.randn(1000, 128, generator=g), torch.randn(1000, 128, generator=g)
    assert torch.allclose(products.mm(a.T, c), a.T @ c, rtol=1e-5, atol=1e-3)
    out = torch.randn(1000, 1000, generator=g)
    assert torch.allclose(products.addmm_(out.clone(), a, c.T, alpha=-2.0), out - 2 * a @ c.T, rtol=1e-5, atol=1e-3)
    expected_calls = 5 if library == "onednn" else 0  # the layer's 3 products, mm, addmm_
    assert len(onednn_calls) == expected_calls
    small = torch.randn(64, 64)  # a product too small for oneDNN's fixed cost stays on the BLAS
    assert torch.equal(products.mm(small, small), small @ small) and len(onednn_calls) == expected_calls
    # A 2-rank step's pair block (8M multiply-adds) is a bare product worth oneDNN; a layer of that
    # size, which also pays for its autograd Function, stays on the BLAS.
    products.mm(torch.randn(250, 64), torch.randn(64, 500))
    products.linear(torch.randn(500, 256), torch.randn(64, 256))
    assert len(onednn_calls) == (expected_calls + 1 if library == "onednn" else 0)


@pytest.mark.parametrize("library", LIBRARIES, indirect=True)
def test_bfloat16_and_reduced_float32_precision_keep_pytorchs_path(library, onednn_calls, monkeypatch):
    monkeypatch.setattr(products, "MIN_MULTIPLY_ADDS", 0)  # any size would go to oneDNN
    monkeypatch.setattr(products, "MIN_PRODUCT_MULTIPLY_ADDS", 0)
    layer, x = products.Linear(32, 8), torch.randn(4, 32)
    layer(x)
    assert len(onednn_calls) == (1 if library == "onednn" else 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast's own bfloat16 product
    # "medium" lets oneDNN multiply float32 in bfloat16, which the BLAS would not
    torch.set_float32_matmul_precision("medium")
    try:
        layer(x), products.mm(x, x.T)
    finally:
        torch.set_float32_matmul_precision("highest")
    assert len(onednn_calls) == (1 if library == "onednn" else 0)


@pytest.mark.parametrize("cpu, chosen", [({"vendor_id": "AuthenticAMD", "flags": "fpu avx2 avx512f"}, "onednn"),
                                         ({"vendor_id": "AuthenticAMD", "flags": "fpu avx2"}, "blas"),
                                         ({"vendor_id": "GenuineIntel", "flags": "fpu avx2 avx512f"}, "blas"),
                                         ({}, "blas")])
def test_auto_sends_amd_cpus_with_avx512_to_onednn_and_the_others_to_the_blas(monkeypatch, cpu, chosen):
    if products.resolve("onednn") != "onednn":
        chosen = "blas"
    monkeypatch.setattr(products, "cpu_info", lambda: cpu)
    assert products.resolve("auto") == chosen
    assert products.resolve("blas") == "blas"


@pytest.fixture
def restore_library():
    yield
    products.use("auto")


def test_a_run_records_its_library_and_both_train_the_same_model(tiny, tmp_path, onednn_calls, restore_library):
    big = ["data.p=512", "layer_size=256", "batch_size=128", "max_epochs=2"]  # products oneDNN takes
    runs, calls = {}, {}
    for lib in ("blas", "onednn"):
        runs[lib] = train(tiny(f"run.cpu_matmul={lib}", *big), tmp_path / lib)
        calls[lib] = len(onednn_calls) - sum(calls.values())
    assert calls["blas"] == 0 and (calls["onednn"] > 0) == (products.resolve("onednn") == "onednn")
    assert runs["blas"]["cpu_matmul"] == "blas"
    assert runs["onednn"]["cpu_matmul"] == products.resolve("onednn")
    # Adam amplifies the libraries' different roundings step by step (5e-4 of the loss by the
    # first epoch's end here); a wrong gradient would move it by far more.
    first, last = (runs["blas"]["epochs"][i]["loss"] / runs["onednn"]["epochs"][i]["loss"] for i in (0, -1))
    assert first == pytest.approx(1, abs=2e-3) and last == pytest.approx(1, abs=2e-2)
    assert runs["blas"]["ap_out"] == pytest.approx(runs["onednn"]["ap_out"], abs=0.01)


def test_an_unknown_library_is_refused():
    with pytest.raises(ConfigError, match=r"run\.cpu_matmul.*one of auto, blas, onednn"):
        load(None, ["run.cpu_matmul=openblas"])


def test_the_model_keeps_nn_linear_parameters_and_state_dict():
    m = Reducer(load(None, ["data.p=32", "output_dim=4", "layer_size=16"]).model_spec())
    assert all(isinstance(layer.linear, torch.nn.Linear) for layer in m.hidden)
    assert sorted(m.state_dict()) == sorted(["hidden.0.linear.weight", "hidden.0.linear.bias", "hidden.1.linear.weight",
                                              "hidden.1.linear.bias", "output.weight", "output.bias"])
