"""The objective (metric MDS stress over the pairs of a batch) and retrieval mean average precision.

Used by: train.py; benchmarks.

Stress (DeepMDS, normalised as Kruskal's stress-1 squared):
    sum_{i != j} (|f(x_i) - f(x_j)| - |x_i - x_j|)^2  /  sum_{i != j} |x_i - x_j|^2
over every ordered pair of the *global* batch. With several ranks each rank computes the rows of
its own points against the gathered batch, so the loss, and the trained model, are the same as one
rank with the whole batch.
"""

from __future__ import annotations

from typing import Tuple

import torch


# Rows per block of a symmetric product: large enough that each block runs at the BLAS's full rate.
GRAM_BLOCK = 256


def squared_distances(a: torch.Tensor, b: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """|a_i - b_j|^2 through one matrix product (the cheapest exact form), clamped at 0.
    addmm folds the norms into the product's epilogue: one pass over the result, not three.
    b is a (a batch against itself): the result is symmetric, so only the blocks on and above the
    diagonal are multiplied and the others mirrored - 5/8 of the product's FLOPs at 1024 rows.
    bf16: the product in bfloat16 (norms stay float32): ~4x faster, |error| ~ 2^-8 |a||b|."""
    a_norms = _squared_norms(a)
    b_norms = a_norms if b is a else _squared_norms(b)
    outer = a_norms[:, None] + b_norms[None, :]
    if b is a:
        return _symmetric_minus_2_gram(outer, a, bf16).clamp_min_(0.0)
    if bf16:
        return outer.sub_(a.bfloat16() @ b.bfloat16().T, alpha=2.0).clamp_min_(0.0)
    return torch.addmm(outer, a, b.T, alpha=-2.0).clamp_min_(0.0)


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    # A fused reduction: (x * x).sum(1) would write and read a temporary the size of x.
    return torch.linalg.vector_norm(x, dim=1).square_()


def _symmetric_minus_2_gram(out: torch.Tensor, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """out - 2 x x^T in place, multiplying only the blocks on and above the diagonal; those below
    are copies of their mirror images."""
    xs = x.bfloat16() if bf16 else x
    blocks = [slice(lo, lo + GRAM_BLOCK) for lo in range(0, x.shape[0], GRAM_BLOCK)]
    for i, rows in enumerate(blocks):
        for cols in blocks[i:]:
            if bf16:  # the in-place subtraction reads the bfloat16 product as float32
                out[rows, cols].sub_(xs[rows] @ xs[cols].T, alpha=2.0)
            else:
                out[rows, cols].addmm_(xs[rows], xs[cols].T, alpha=-2.0)
            if cols != rows:
                out[cols, rows].copy_(out[rows, cols].T)
    return out


def total_squared_distance(x: torch.Tensor) -> torch.Tensor:
    """sum_{i,j} |x_i - x_j|^2 = 2 N sum_i |x_i|^2 - 2 |sum_i x_i|^2, in O(N p): the products go
    through BLAS (no float64 copy of x) and are combined in float64."""
    flat = x.reshape(-1)
    ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    sum_sq, col_sums = torch.dot(flat, flat).double(), (ones @ x).double()
    return (2 * x.shape[0] * sum_sq - 2 * (col_sums * col_sums).sum()).float()


class _PairSquaredError(torch.autograd.Function):
    """E = sum_ij (|y_i - Y_j| - d_in_ij)^2 with a hand-written backward.

    With D2 = |y_i - Y_j|^2 and d = sqrt(D2): dE/dD2_ij = (d_ij - d_in_ij) / d_ij =: R_ij, and
    dD2/dy_i = 2 (y_i - Y_j), so dE/dy = 2 (y * rowsum R - R Y) and, for the gathered columns,
    dE/dY = 2 (Y * colsum R - R^T y): two small products and a few passes over the B x G
    matrices instead of autograd's dozen. When Y is y (one rank), R is symmetric and the two
    terms are equal: one product, doubled."""

    @staticmethod
    def forward(ctx, y, full_y, d_in):
        ctx.symmetric = full_y is y
        d_out = squared_distances(y, full_y).sqrt_()
        err = d_out - d_in
        flat = err.view(-1)
        total = torch.dot(flat, flat)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # Below this floor the product form's rounding (about sqrt(float eps) |y|) is all there is.
            floor = 1e-3 * (y * y).sum(1).mean().sqrt().clamp_min(1e-12)
            ctx.save_for_backward(y, full_y, err.div_(d_out.clamp_min_(floor)))
        return total

    @staticmethod
    def backward(ctx, grad):
        y, full_y, ratio = ctx.saved_tensors
        g = 2.0 * grad.to(y.dtype)
        if ctx.symmetric:
            return 2.0 * g * (y * ratio.sum(1, keepdim=True) - ratio @ y), None, None
        grad_y = g * (y * ratio.sum(1, keepdim=True) - ratio @ full_y)
        grad_full = g * (full_y * ratio.sum(0)[:, None] - ratio.T @ y) if ctx.needs_input_grad[1] else None
        return grad_y, grad_full, None


def stress_rows(local_out: torch.Tensor, all_out: torch.Tensor, local_in: torch.Tensor,
                all_in: torch.Tensor, row_offset: int = 0, bf16: bool = False) -> torch.Tensor:
    """This rank's share of the normalised stress: its rows against the whole (gathered) batch.

    row_offset is where this rank's rows sit in the gathered batch: self-pairs are set to d_in = 0
    exactly. The denominator, sum of d_in^2 over the whole batch, is an O(N p) closed form.
    bf16: the input-space product (the largest, B x G x p) in bfloat16."""
    if local_in.shape[0] == all_in.shape[0]:  # one rank: the batch against itself, symmetric
        local_in, local_out = all_in, all_out
    with torch.no_grad():
        d_in = squared_distances(local_in, all_in, bf16).sqrt_()
        rows = torch.arange(local_in.shape[0], device=local_in.device)
        d_in[rows, rows + row_offset] = 0.0
        denominator = total_squared_distance(all_in).clamp_min(1e-30)
    return _PairSquaredError.apply(local_out, all_out, d_in) / denominator


def stress(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Normalised stress of one batch on one process."""
    return stress_rows(out, out, x, x, 0)


def average_precision_sums(queries: torch.Tensor, query_labels: torch.Tensor,
                           gallery: torch.Tensor, gallery_labels: torch.Tensor,
                           block: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-query AP, number of queries with at least one relevant item).

    Each query ranks the gallery by Euclidean distance; its AP is the mean, over the gallery items
    of its category, of the precision at that item's rank. Queries are taken in blocks so memory
    stays at block x gallery; the sums let ranks add their shares before dividing.
    """
    total = torch.zeros((), dtype=torch.float64, device=queries.device)
    count = torch.zeros((), dtype=torch.float64, device=queries.device)
    ranks = torch.arange(1, gallery.shape[0] + 1, device=queries.device, dtype=torch.float32)
    for lo in range(0, queries.shape[0], block):
        q, ql = queries[lo:lo + block], query_labels[lo:lo + block]
        order = squared_distances(q, gallery).argsort(dim=1)
        relevant = gallery_labels[order] == ql[:, None]
        hits = relevant.cumsum(1, dtype=torch.float32)
        n_relevant = hits[:, -1]
        ap = ((hits / ranks) * relevant).sum(1) / n_relevant.clamp_min(1)
        valid = n_relevant > 0
        total += ap[valid].sum(dtype=torch.float64)
        count += valid.sum()
    return total, count


def mean_average_precision(queries, query_labels, gallery, gallery_labels, block: int = 1024) -> float:
    total, count = average_precision_sums(queries, query_labels, gallery, gallery_labels, block)
    return (total / count.clamp_min(1)).item()
