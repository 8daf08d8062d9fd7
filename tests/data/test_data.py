import torch
from conftest import CONF

from bnnidr_hpc.config.schema import DataConfig
from bnnidr_hpc.data.sources import CHUNK, Hypersphere, ShardLoader
from bnnidr_hpc.train import intrinsic


def test_points_depend_on_seed_and_index_only():
    h = Hypersphere(DataConfig(n=500, p=32, d=3), seed=7)
    x, y = h.range(0, 500)
    again = Hypersphere(DataConfig(n=500, p=32, d=3), seed=7)
    idx = torch.tensor([499, 3, 130, 64, 65])
    xi, yi = again.rows(idx)
    assert torch.equal(xi, x[idx]) and torch.equal(yi, y[idx])
    other = Hypersphere(DataConfig(n=500, p=32, d=3), seed=8).range(0, 500)[0]
    assert not torch.allclose(other, x)


def test_points_lie_on_the_embedded_unit_sphere_with_labels():
    cfg = DataConfig(n=1000, p=64, d=4, categories=5)
    x, y = Hypersphere(cfg, 0).range(0, 1000)
    assert x.shape == (1000, 64)
    assert torch.allclose(x.norm(dim=1), torch.ones(1000), atol=1e-5)  # the linear embedding is an isometry
    assert set(y.tolist()) == set(range(5))
    # linear: the points span exactly d + 1 dimensions
    s = torch.linalg.svdvals(x - x.mean(0))
    assert (s > 1e-3 * s[0]).sum() == 5


def test_nonlinear_embedding_is_not_undone_by_pca():
    cfg = DataConfig(n=1000, p=64, d=4, embedding="nonlinear")
    x, _ = Hypersphere(cfg, 0).range(0, 1000)
    s = torch.linalg.svdvals(x - x.mean(0))
    assert (s > 1e-3 * s[0]).sum() > 5 + 3


def test_noise_is_isotropic_with_the_given_total_std():
    clean = Hypersphere(DataConfig(n=2000, p=256, d=3), 0).range(0, 2000)[0]
    noisy = Hypersphere(DataConfig(n=2000, p=256, d=3, noise=0.1), 0).range(0, 2000)[0]
    assert abs((noisy - clean).norm(dim=1).mean().item() - 0.1) < 0.01


def test_twonn_measures_the_intrinsic_dimension():
    x, _ = Hypersphere(DataConfig(n=4000, p=128, d=5), 0).range(0, 4000)
    est = intrinsic.estimate(x, "mle")
    assert abs(est.dimension - 5) < 0.4, est
    x, _ = Hypersphere(DataConfig(n=4000, p=128, d=5, embedding="nonlinear"), 0).range(0, 4000)
    assert abs(intrinsic.estimate(x, "fit").dimension - 5) < 0.5


def test_ranks_slice_one_global_batch():
    cfg = DataConfig(n=600, p=16, d=2)
    h = Hypersphere(cfg, 3)
    one = ShardLoader(h, 40, rank=0, world=1)
    halves = [ShardLoader(h, 20, rank=r, world=2) for r in range(2)]
    assert one.steps_per_epoch == 600 // 40 == halves[0].steps_per_epoch
    previous_next = None
    for (whole, _, following), (a, full_a, _), (b, full_b, _) in zip(one.epoch(1), halves[0].epoch(1),
                                                                     halves[1].epoch(1)):
        assert torch.equal(whole, torch.cat([a.clone(), b.clone()]))
        assert torch.equal(full_a, whole) and torch.equal(full_b, whole)  # cached: each rank has the global batch
        if previous_next is not None:
            assert torch.equal(previous_next, whole)  # the batch announced as next is the next one
        previous_next = following().clone()
    # after the last step, the batch announced as next is the next epoch's first, the same tensor
    first_of_next = next(one.epoch(2))
    assert torch.equal(previous_next, first_of_next[1]) and first_of_next[1] is following()
    assert not torch.equal(previous_next[:5], whole[:5])


def test_streamed_epoch_matches_its_order_and_covers_each_point_once():
    cfg = DataConfig(n=10 * CHUNK + 5, p=16, d=2, cache_gb=1e-9)  # too big to cache: streamed
    h = Hypersphere(cfg, 0)
    loader = ShardLoader(h, 16, rank=1, world=2)
    assert not loader.cached
    order = loader.order(0)
    assert sorted(order.tolist()) == list(range(cfg.n))
    x_all, _ = h.range(0, cfg.n)
    for step, (x, full, following) in enumerate(loader.epoch(0)):
        lo = step * 32 + 16
        assert torch.allclose(x, x_all[order[lo:lo + 16]], atol=1e-6)
        assert full is None and following is None  # streamed: the step gathers the other ranks' points
    # resuming mid-epoch yields the same later batches
    later = list(loader.epoch(0, start_step=3))
    assert torch.equal(later[0][0], list(loader.epoch(0))[3][0])


def test_curved_embedding_spans_p_and_pca_to_d_plus_1_loses_ap():
    from bnnidr_hpc.config.loading import load
    from bnnidr_hpc.train.retrieval import mean_average_precision

    c = load(str(CONF / "curved_d5.yaml"), [])
    sphere = Hypersphere(c.data, c.seed)
    x, _ = sphere.range(0, c.data.n)
    variances = torch.linalg.svdvals(x - x.mean(0)) ** 2
    needed = int((variances.cumsum(0) / variances.sum() < 0.99).sum()) + 1
    assert needed > 100  # of p = 128: the linear embedding needs d + 1 = 6
    assert abs(x.norm(dim=1).mean().item() - 1) < 0.05
    (qx, ql), (gx, gl) = sphere.heldout(500, 1000)
    ap_in = mean_average_precision(qx, ql, gx, gl)
    mean = x.mean(0)
    components = torch.linalg.svd(x - mean, full_matrices=False).Vh[:c.output_dim].T
    ap_pca = mean_average_precision((qx - mean) @ components, ql, (gx - mean) @ components, gl)
    assert ap_in > 0.95 and ap_pca / ap_in < 0.9, (ap_in, ap_pca)
