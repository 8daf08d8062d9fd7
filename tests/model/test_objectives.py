"""The objectives (stress, umap) and their gradients against autograd, and the ranks' pair shares."""
import pytest
import torch

from bnnidr_hpc.model.objectives import (
    pair_blocks,
    pair_targets,
    squared_distances,
    stress,
    stress_share,
    total_squared_distance,
)


def test_distances_and_total():
    x = torch.randn(40, 9, dtype=torch.float64)
    assert torch.allclose(squared_distances(x, x), torch.cdist(x, x) ** 2, atol=1e-9)
    assert total_squared_distance(x).item() == pytest.approx((torch.cdist(x, x) ** 2).sum().item(), rel=1e-5)


def test_a_batch_against_itself_multiplies_half_the_blocks_and_stays_exact():
    # 600 rows: three 256-row blocks, the last one partial
    x = torch.randn(600, 70, dtype=torch.float64)
    mirrored = squared_distances(x, x)
    assert torch.equal(mirrored[:256, 256:], mirrored[256:, :256].T)  # mirrored, not recomputed
    assert torch.allclose(mirrored, torch.cdist(x, x) ** 2, atol=1e-9)
    assert torch.allclose(mirrored, squared_distances(x, x.clone()), atol=1e-9)
    x32 = x.float()
    assert torch.allclose(squared_distances(x32, x32, bf16=True), squared_distances(x32, x32.clone(), bf16=True))


def test_stress_is_zero_for_an_isometry_and_positive_otherwise():
    x = torch.randn(64, 16)
    rot, _ = torch.linalg.qr(torch.randn(16, 16))
    assert stress(x @ rot, x).item() < 1e-5
    assert stress(x[:, :4], x).item() > 0.1
    # normalised: scaling inputs and outputs together leaves it unchanged
    y = torch.randn(64, 4)
    assert stress(3 * y, 3 * x).item() == pytest.approx(stress(y, x).item(), rel=1e-4)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 8])
def test_ranks_compute_every_pair_once_in_equal_shares(world):
    rows = 7
    count = torch.zeros(world * rows, world * rows, dtype=torch.int64)
    work = []
    for rank in range(world):
        own = slice(rank * rows, (rank + 1) * rows)
        count[own, own] += 1
        blocks = pair_blocks(rank, world, rows)
        for r, c in blocks:
            count[r, c] += 1
            count[c, r] += 1
        work.append(sum((r.stop - r.start) * (c.stop - c.start) for r, c in blocks))
    assert torch.equal(count, torch.ones_like(count))
    assert max(work) - min(work) <= rows  # an odd row count splits a shared block 3 + 4


def _share(y, x, rank, world):
    """Rank's stress share, y being every rank's reduced vectors (as gathered)."""
    targets = pair_targets(x, rank, world)
    return stress_share(y[targets.own], lambda: y, targets)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_shares_add_up_to_the_whole(world):
    x, y = torch.randn(12 * world, 12), torch.randn(12 * world, 3)
    whole = stress(y, x)
    parts = sum(_share(y, x, r, world) for r in range(world))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-5)


def test_stress_gradient_is_finite_with_duplicate_points():
    x = torch.randn(8, 5)
    x[1] = x[0]
    y = torch.randn(8, 2, requires_grad=True)
    stress(y, x).backward()
    assert torch.isfinite(y.grad).all()


def test_stress_gradient_matches_the_plain_autograd_formula():
    torch.manual_seed(0)
    x = torch.randn(30, 10, dtype=torch.float64)
    y = torch.randn(30, 3, dtype=torch.float64, requires_grad=True)

    def plain(y):
        d_in, d_out = torch.cdist(x, x), torch.cdist(y, y)
        return ((d_out - d_in) ** 2).sum() / (d_in ** 2).sum()

    ours = stress(y, x)  # one process: the symmetric path (one product in the backward)
    (g_ours,) = torch.autograd.grad(ours, y)
    ref = plain(y)
    (g_ref,) = torch.autograd.grad(ref, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(g_ours, g_ref, rtol=1e-4, atol=1e-7)
    # shares of several ranks (diagonal and off-diagonal blocks) add up to the same gradient
    for world in (2, 3):
        (g_shares,) = torch.autograd.grad(sum(_share(y, x, r, world) for r in range(world)), y)
        assert torch.allclose(g_shares, g_ref, rtol=1e-4, atol=1e-7)


def test_float32_self_pairs_do_not_disturb_the_gradient():
    torch.manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(200, 128), dim=1)
    y = (x @ torch.randn(128, 6) / 4).requires_grad_()
    (g32,) = torch.autograd.grad(stress(y, x), y)
    y64 = y.detach().double().requires_grad_()
    d_in, d_out = torch.cdist(x.double(), x.double()), torch.cdist(y64, y64)
    (g64,) = torch.autograd.grad(((d_out - d_in) ** 2).sum() / (d_in ** 2).sum(), y64)
    assert torch.allclose(g32.double(), g64, rtol=1e-3, atol=1e-6 * g64.abs().max().item())


def test_umap_loss_and_gradient_match_the_plain_formula_and_rank_shares_add_up():
    from bnnidr_hpc.model.objectives import neighbour_scale

    torch.manual_seed(0)
    x = torch.randn(36, 10, dtype=torch.float64)
    y = torch.randn(36, 3, dtype=torch.float64, requires_grad=True)
    sigma2 = neighbour_scale(x, 0.02)
    d2_in = torch.cdist(x, x) ** 2
    off = ~torch.eye(36, dtype=torch.bool)
    # sigma^2 is the 2 % quantile of the squared distances between distinct points
    assert sigma2.item() == pytest.approx(torch.quantile(d2_in[off], 0.02, interpolation="nearest").item(), rel=1e-6)

    def plain(y):  # parametric UMAP's cross-entropy, a = b = 1, over the ordered pairs i != j
        p = torch.exp(-d2_in / sigma2)[off]
        q = 1 / (1 + (torch.cdist(y, y) ** 2)[off])
        return -(p * torch.log(q) + (1 - p) * torch.log(1 - q)).sum() / off.sum()

    ours = stress(y, x, loss="umap")
    (g_ours,) = torch.autograd.grad(ours, y)
    ref = plain(y)
    (g_ref,) = torch.autograd.grad(ref, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(g_ours, g_ref, rtol=1e-5, atol=1e-9)
    for world in (2, 3, 4):
        shares = []
        for r in range(world):
            targets = pair_targets(x, r, world, loss="umap")
            shares.append(stress_share(y[targets.own], lambda: y, targets))
        assert sum(shares).item() == pytest.approx(ref.item(), rel=1e-6)
        (g_shares,) = torch.autograd.grad(sum(shares), y)
        assert torch.allclose(g_shares, g_ref, rtol=1e-5, atol=1e-9)


def test_umap_sigma_leaves_a_small_batch_half_a_neighbour_per_point_at_least():
    from bnnidr_hpc.model.objectives import neighbour_scale

    torch.manual_seed(1)
    x = torch.randn(32, 8, dtype=torch.float64)
    pairs = (torch.cdist(x, x) ** 2)[~torch.eye(32, dtype=torch.bool)].sort().values
    # 0.005 of 992 ordered pairs would be the 6th smallest: 3 pairs, most points with no neighbour
    assert neighbour_scale(x, 0.005).item() == pytest.approx(pairs[32 // 2 - 1].item(), rel=1e-9)
    assert neighbour_scale(x, 0.2).item() == pytest.approx(pairs[round(0.2 * 991)].item(), rel=1e-9)
