"""The training objectives over the pairs of a batch (metric MDS stress, or parametric UMAP's
cross-entropy), their pair targets and each rank's share, and the squared distances they rest on.

Used by: train.step (the loss and its targets), train.retrieval (squared distances), benchmarks.

Stress (DeepMDS, normalised as Kruskal's stress-1 squared):
    sum_{i != j} (|f(x_i) - f(x_j)| - |x_i - x_j|)^2  /  sum_{i != j} |x_i - x_j|^2
over every ordered pair of the *global* batch, so the loss, and the trained model, are the same
with any number of ranks. The pair matrix is symmetric: split into one block of rows per rank, each
rank computes its own diagonal block and an equal share of the blocks above the diagonal (the
round-robin of all-pairs N-body codes), so every pair is computed once over all ranks - half the
work of each rank taking its rows against the whole batch. The gradients of the gathered outputs
are summed over ranks (collectives.all_gather_with_grad_async), which adds the shares up.
"""

from __future__ import annotations

from typing import Callable, Generator, List, NamedTuple, Tuple

import torch

from bnnidr_hpc.runtime import products

# Rows per block of a symmetric product: large enough that each block runs at the BLAS's full rate.
GRAM_BLOCK = 256
# A batch against itself is multiplied block by block from this many columns up: below it, the
# mirrored copies cost more than the products they save (output_dim 64 at batch 500-1024 on this
# machine's CPU, either library).
SYMMETRIC_MIN_DIM = 512


def squared_distances(a: torch.Tensor, b: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """|a_i - b_j|^2 through matrix products (the cheapest exact form), clamped at 0.
    The product is added in place to the norms (products.addmm_).
    b is a (a batch against itself) with SYMMETRIC_MIN_DIM columns or more: the result is
    symmetric, so only the blocks on and above the diagonal are multiplied and the others
    mirrored - 5/8 of the product's FLOPs at 1024 rows.
    bf16: the product in bfloat16 (norms stay float32), for the higher bfloat16 matrix rate of
    GPUs and AVX512-BF16/AMX CPUs (docs/performance.md); |error| ~ 2^-8 |a||b|."""
    return Pieces(squared_distance_pieces(a, b, bf16)).result()


def squared_distance_pieces(a: torch.Tensor, b: torch.Tensor, bf16: bool = False
                            ) -> Generator[None, None, torch.Tensor]:
    """squared_distances one block product at a time: yields after each, returns the matrix."""
    a_norms = _squared_norms(a)
    b_norms = a_norms if b is a else _squared_norms(b)
    out = a_norms[:, None] + b_norms[None, :]
    xa = a.bfloat16() if bf16 else a
    xb = xa if b is a else (b.bfloat16() if bf16 else b)
    blocks = [slice(lo, lo + GRAM_BLOCK) for lo in range(0, a.shape[0], GRAM_BLOCK)]
    if b is a and a.shape[1] >= SYMMETRIC_MIN_DIM:
        for i, rows in enumerate(blocks):
            for cols in blocks[i:]:
                _sub_2_product(out[rows, cols], xa[rows], xa[cols], bf16)
                if cols != rows:
                    out[cols, rows].copy_(out[rows, cols].T)
                yield
    else:
        for rows in blocks:
            _sub_2_product(out[rows], xa[rows], xb, bf16)
            yield
    return out.clamp_min_(0.0)


def _sub_2_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, bf16: bool) -> None:
    """out -= 2 a b^T in place."""
    if bf16:  # the in-place subtraction reads the bfloat16 product as float32
        out.sub_(a @ b.T, alpha=2.0)
    else:
        products.addmm_(out, a, b.T, alpha=-2.0)


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    # A fused reduction: (x * x).sum(1) would write and read a temporary the size of x.
    return torch.linalg.vector_norm(x, dim=1).square_()


class Pieces:
    """A computation split into pieces (a generator that yields after each and returns its
    result): work_one() runs the next piece, result() the rest. Lets a step fill the time it waits
    for a collective with independent work (collectives.wait)."""

    def __init__(self, pieces: Generator):
        self._pieces = pieces
        self._result = None
        self._done = False

    def work_one(self) -> bool:
        """One piece of the work; False once there is none left."""
        if not self._done:
            try:
                next(self._pieces)
            except StopIteration as done:
                self._result, self._done = done.value, True
        return not self._done

    def result(self):
        while self.work_one():
            pass
        return self._result


def total_squared_distance(x: torch.Tensor) -> torch.Tensor:
    """sum_{i,j} |x_i - x_j|^2 = 2 N sum_i |x_i|^2 - 2 |sum_i x_i|^2, in O(N p): the products go
    through BLAS (no float64 copy of x) and are combined in float64."""
    flat = x.reshape(-1)
    ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    sum_sq, col_sums = torch.dot(flat, flat).double(), (ones @ x).double()
    return (2 * x.shape[0] * sum_sq - 2 * (col_sums * col_sums).sum()).float()


class _PairLoss(torch.autograd.Function):
    """E = sum_ij e(D2_ij, t_ij) over the pairs (y_i, Y_j), D2 = |y_i - Y_j|^2, t the input-side
    target of each pair, with a hand-written backward through R = dE/dD2:
    dD2/dy_i = 2 (y_i - Y_j), so dE/dy = 2 (y * rowsum R - R Y) and, for the gathered columns,
    dE/dY = 2 (Y * colsum R - R^T y): two small products and a few passes over the B x G
    matrices instead of autograd's dozen. When Y is y (one rank), R is symmetric and the two
    terms are equal: one product, doubled. Subclasses give their forward through `_forward` with
    a `terms(D2, t, needs_grad, y) -> (E, R)`."""

    @staticmethod
    def _forward(ctx, y, full_y, target, terms):
        ctx.symmetric = full_y is y
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total, ratio = terms(squared_distances(y, full_y), target, needs_grad, y)
        if needs_grad:
            ctx.save_for_backward(y, full_y, ratio)
        return total

    @staticmethod
    def backward(ctx, grad):
        y, full_y, ratio = ctx.saved_tensors
        g = 2.0 * grad.to(y.dtype)
        if ctx.symmetric:
            return 2.0 * g * (y * ratio.sum(1, keepdim=True) - products.mm(ratio, y)), None, None
        grad_y = g * (y * ratio.sum(1, keepdim=True) - products.mm(ratio, full_y))
        grad_full = g * (full_y * ratio.sum(0)[:, None] - products.mm(ratio.T, y)) if ctx.needs_input_grad[1] else None
        return grad_y, grad_full, None


class _PairSquaredError(_PairLoss):
    """Stress: e = (|y_i - Y_j| - d_in_ij)^2; with d = sqrt(D2), R = (d - d_in) / d."""

    @staticmethod
    def forward(ctx, y, full_y, d_in):
        return _PairLoss._forward(ctx, y, full_y, d_in, _PairSquaredError.terms)

    @staticmethod
    def terms(d2, d_in, needs_grad, y):
        d_out = d2.sqrt_()
        err = d_out - d_in
        flat = err.view(-1)
        total = torch.dot(flat, flat)
        if not needs_grad:
            return total, None
        # Below this floor the product form's rounding (about sqrt(float eps) |y|) is all there is.
        floor = 1e-3 * (y * y).sum(1).mean().sqrt().clamp_min(1e-12)
        return total, err.div_(d_out.clamp_min_(floor))


class _PairFuzzyCrossEntropy(_PairLoss):
    """Parametric UMAP's cross-entropy of the neighbour weights p_ij (input) and
    q_ij = 1 / (1 + D2_ij) (output): e = -[p log q + (1 - p) log(1 - q)]
    = log(1 + D2) - (1 - p) log D2, so R = 1 / (1 + D2) - (1 - p) / D2. The target is the
    repulsion weight 1 - p (pair_target_pieces), computed ahead; every pass here is over a
    rows x columns matrix, so there are as few as the formula allows."""

    @staticmethod
    def forward(ctx, y, full_y, repel):
        return _PairLoss._forward(ctx, y, full_y, repel, _PairFuzzyCrossEntropy.terms)

    @staticmethod
    def terms(d2, repel, needs_grad, y):
        d2 = d2.clamp_min_(MIN_SQUARED_DISTANCE)
        total = torch.log1p(d2).sum() - torch.dot(repel.reshape(-1), torch.log(d2).view(-1))
        if not needs_grad:
            return total, None
        return total, torch.add(d2, 1.0).reciprocal_().sub_(torch.div(repel, d2))


# Output pairs closer than this (squared) are treated as this close: bounds UMAP's repulsion 1/D2.
MIN_SQUARED_DISTANCE = 1e-10
LOSSES = {"stress": _PairSquaredError, "umap": _PairFuzzyCrossEntropy}


def pair_blocks(rank: int, world: int, rows: int) -> List[Tuple[slice, slice]]:
    """The blocks above the diagonal of the global batch's pair matrix that this rank computes,
    as (row slice, column slice) of the gathered batch; rank r owns rows r*rows..(r+1)*rows.
    Rank r pairs its rows with those of the next (world - 1) // 2 ranks; with an even world the
    block with the rank half-way round is shared, each partner taking half of its rows."""
    def block(r: int) -> slice:
        return slice(r * rows, (r + 1) * rows)

    blocks = [(block(rank), block((rank + k) % world)) for k in range(1, (world - 1) // 2 + 1)]
    if world % 2 == 0:
        low, high = sorted((rank, (rank + world // 2) % world))
        middle = low * rows + rows // 2
        half = slice(low * rows, middle) if rank == low else slice(middle, (low + 1) * rows)
        blocks.append((half, block(high)))
    return blocks


class PairTargets(NamedTuple):
    """The input-space side of a rank's share of the loss (no gradient): each pair's target in its
    blocks (stress: the input distance; umap: the neighbour weight) and the loss's denominator."""
    own: slice               # this rank's rows of the global batch
    d_own: torch.Tensor      # their targets with each other
    off_diagonal: list       # [(row slice, column slice, their targets)]
    denominator: torch.Tensor
    loss: str = "stress"


# umap's sigma is a quantile of the input distances among the global batch's first rows: the same
# on every rank, whatever the split, and cheap (rows^2 of the batch's pairs).
SIGMA_ROWS = 128


def neighbour_scale(all_in: torch.Tensor, quantile: float, bf16: bool = False) -> torch.Tensor:
    """sigma^2 of umap's neighbour weights: the `quantile` of the squared distances between the
    first SIGMA_ROWS points of the global batch (pairs i != j), and at least their m/2-th
    smallest (m points): in a small batch a small quantile would leave most points without a
    neighbour, so nothing would pull them together (tests/test_train.py's batch-32 run keeps its
    AP only with this floor)."""
    x = all_in[:SIGMA_ROWS]
    d2 = squared_distances(x, x, bf16)
    pairs = d2[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
    k = max(1, int(round(quantile * (pairs.numel() - 1))) + 1, len(x) // 2)
    return pairs.kthvalue(min(k, pairs.numel())).values.clamp_min(1e-30)


def pair_target_pieces(all_in: torch.Tensor, rank: int = 0, world: int = 1, bf16: bool = False,
                       loss: str = "stress", quantile: float = 0.02) -> Generator[None, None, PairTargets]:
    """Targets of this rank's pair blocks of the global batch all_in, one block product at a time
    (yields after each, returns the PairTargets). stress: input distances, and the denominator, sum
    of d_in^2 over the whole batch, an O(N p) closed form. umap: 1 - p_ij with p_ij = exp(-|x_i -
    x_j|^2 / sigma^2) (neighbour_scale), over the number of ordered pairs. bf16: these products (the
    largest, rows x rows x p) in bfloat16."""
    all_in = all_in.detach()
    rows = all_in.shape[0] // world
    own = slice(rank * rows, (rank + 1) * rows)
    if loss == "umap":
        scale = -1.0 / neighbour_scale(all_in, quantile, bf16)
        target = lambda d2: d2.mul_(scale).exp_().neg_().add_(1.0)  # noqa: E731 - the repulsion 1 - p
        denominator = torch.tensor(float(all_in.shape[0] * (all_in.shape[0] - 1)), device=all_in.device)
    else:
        target = lambda d2: d2.sqrt_()  # noqa: E731
        denominator = total_squared_distance(all_in).clamp_min(1e-30)
    x = all_in[own]
    d_own = (yield from squared_distance_pieces(x, x, bf16))
    d_own.fill_diagonal_(0.0)  # a point's distance to itself is 0, not the product's rounding
    d_own = target(d_own)
    off_diagonal = []
    for r, c in pair_blocks(rank, world, rows):
        off_diagonal.append((r, c, target((yield from squared_distance_pieces(all_in[r], all_in[c], bf16)))))
    return PairTargets(own, d_own, off_diagonal, denominator, loss)


def pair_targets(all_in: torch.Tensor, rank: int = 0, world: int = 1, bf16: bool = False,
                 loss: str = "stress", quantile: float = 0.02) -> PairTargets:
    """The whole of pair_target_pieces at once."""
    return Pieces(pair_target_pieces(all_in, rank, world, bf16, loss, quantile)).result()


class PairTargetsAhead(Pieces):
    """The pair targets of the global batch that next_batch() returns, computed ahead: a first
    work_one() call gets the batch (copies it, data.NextBatch), each later one does a block
    product, so that a step can fill the time it waits for a collective with the next batch's
    work; result() does whatever is left."""

    def __init__(self, next_batch: Callable[[], torch.Tensor], rank: int, world: int, bf16: bool,
                 loss: str = "stress", quantile: float = 0.02):
        def pieces():
            all_in = next_batch()
            yield
            return (yield from pair_target_pieces(all_in, rank, world, bf16, loss, quantile))

        super().__init__(pieces())
        self.next_batch = next_batch


def stress_share(out: torch.Tensor, gathered: Callable[[], torch.Tensor], targets: PairTargets) -> torch.Tensor:
    """This rank's share of the normalised loss (targets.loss) of the global batch; the shares of
    all ranks add up to the loss. out: this rank's reduced vectors; gathered: returns every rank's,
    with their gradient (collectives.all_gather_with_grad_async). The rank's own block needs out
    alone, so it is computed before gathered() is called: the gather travels meanwhile."""
    pair_loss = LOSSES[targets.loss]
    total = pair_loss.apply(out, out, targets.d_own)
    if targets.off_diagonal:
        all_out = gathered()
        for r, c, d_in in targets.off_diagonal:
            total = total + 2.0 * pair_loss.apply(all_out[r], all_out[c], d_in)  # (i, j) and (j, i)
    return total / targets.denominator


def stress(out: torch.Tensor, x: torch.Tensor, loss: str = "stress", quantile: float = 0.02) -> torch.Tensor:
    """The normalised loss (stress by default) of one batch on one process."""
    return stress_share(out, lambda: out, pair_targets(x, loss=loss, quantile=quantile))
