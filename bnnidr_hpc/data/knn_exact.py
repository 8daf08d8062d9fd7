"""The exact k nearest neighbours of query rows among all training rows: blocks of keys through the
training's matrix products, squared distances by |a|^2 + |b|^2 - 2 a.b (ranked without |a|^2, the
same for all of a query's keys), a running top-k.

Used by: data/neighbours.py (each rank's query blocks), data/knn_faiss.py (the exact neighbours of
the rows that measure an approximate graph's recall, and of rows FAISS found too few for).

`GraphRows` is the training rows as the graph sees them: normalised by the data source, then
L2-normalised for the cosine metric, made (a sphere) or read (memory-mapped files) block by block,
and held on the device only when they fit in data.cache_gb. The query and key grids are fixed by n
alone, so a build resumed with another number of ranks reuses the finished blocks, and a row's
neighbours do not depend on which rank computed them.

The expansion loses the small distances to cancellation (float32: |a|^2 ~ 1 leaves a distance of
0.01 about 0.1 % off), and the nearest distance is what the fuzzy graph's rho is: the chosen rows'
distances are measured again as differences (k rows per query, against the n of the search). At
precision bf16 the products take bfloat16 operands (half the bytes, the tensor cores' rate) and sum
in float32, which blurs distances by about 2^-9 of the rows' norms over sqrt(p): the running top-k
keeps 2k candidates, whose measured distances pick the k.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Tuple

import torch

from bnnidr_hpc.runtime import products

QUERY_BLOCK = 2048  # query rows per block (a part file); 2048 x KEY_BLOCK float32 distances: 64 MiB
KEY_BLOCK = 8192
REFINE_ROWS = 256   # the candidates are measured again this many query rows at a time


# On a GPU the rows are held whenever they fit in this share of its free memory, even above
# data.cache_gb: otherwise every query block makes or reads all n rows again (at 1.3M x 1,536, 635
# times: 10-30 minutes of an H100, docs/performance.md), and the device's memory is idle while the
# graph is built.
GPU_HOLD_SHARE = 0.5


def hold_budget(cache_gb: float, device: torch.device, mem_get_info=None) -> float:
    """Bytes of rows GraphRows may hold on device: data.cache_gb, or on a GPU up to
    GPU_HOLD_SHARE of its free memory (mem_get_info: torch.cuda.mem_get_info's signature)."""
    budget = cache_gb * 2**30
    if device.type == "cuda":
        free, _ = (mem_get_info or torch.cuda.mem_get_info)(device)
        budget = max(budget, GPU_HOLD_SHARE * free)
    return budget


class GraphRows:
    """The n training rows of a data source, as float32 rows on `device`."""

    def __init__(self, source, metric: str, device: torch.device, hold_bytes: Optional[float] = None):
        self.source, self.metric, self.device = source, metric, torch.device(device)
        self.n, self.p = int(source.cfg.n), int(source.p)
        hold = self.n * self.p * 4 <= (hold_budget(source.cfg.cache_gb, self.device) if hold_bytes is None
                                       else hold_bytes)
        self.held = torch.cat([self._made(a, b) for a, b in blocks(self.n, KEY_BLOCK)]) if hold else None
        self.held_norms = None if self.held is None else self.held.square().sum(1)

    def _prepared(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if self.metric == "cosine":
            x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
        return x

    def _made(self, start: int, stop: int) -> torch.Tensor:
        return self._prepared(self.source.range(start, stop)[0])

    def block(self, start: int, stop: int) -> torch.Tensor:
        return self.held[start:stop] if self.held is not None else self._made(start, stop)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at any training positions."""
        if self.held is not None:
            return self.held[index.to(self.device)]
        return self._prepared(self.source.rows(index.to(self.source.device))[0])

    def key_blocks(self) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
        """(first position, rows, their squared norms) of every key block, in order."""
        for start, stop in blocks(self.n, KEY_BLOCK):
            if self.held is not None:
                yield start, self.held[start:stop], self.held_norms[start:stop]
            else:
                keys = self._made(start, stop)
                yield start, keys, keys.square().sum(1)


def blocks(n: int, size: int):
    """[(start, stop)] covering 0..n-1 in blocks of `size` rows."""
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def rank_share(items: list, rank: int, world: int) -> list:
    """Rank r's contiguous share of the items, the shares as equal as they can be."""
    return items[len(items) * rank // world:len(items) * (rank + 1) // world]


def _merge(best_d, best_i, d2, start: int, keep: int):
    """The running top-k: the `keep` smallest of the best so far and this key block's distances.
    The block's own top-k first, then the small merge: a copy of the block beside the best (the
    old torch.cat of both) cost as much as the top-k itself."""
    block_d, block_i = torch.topk(d2, min(keep, d2.shape[1]), dim=1, largest=False, sorted=False)
    values, positions = torch.topk(torch.cat([best_d, block_d], dim=1), keep, dim=1, largest=False, sorted=True)
    return values, torch.cat([best_i, block_i + start], dim=1).gather(1, positions)


def _not_itself(d2, query_ids, start: int) -> None:
    """A row is not its own neighbour: inf at each query's own column of this key block, if it is
    in it (one element per query, where comparing every id with every key's cost a pass over d2)."""
    local = query_ids - start
    inside = (local >= 0) & (local < d2.shape[1])
    cols = local.clamp(0, d2.shape[1] - 1)[:, None]
    d2.scatter_(1, cols, torch.where(inside[:, None], math.inf, d2.gather(1, cols)))


def nearest(rows: GraphRows, queries: torch.Tensor, query_ids: torch.Tensor, k: int,
            precision: str = "fp32") -> Tuple[torch.Tensor, torch.Tensor]:
    """(distances (q, k) float32 ascending, positions (q, k) int64) of each query's k nearest
    training rows other than itself (query_ids: the queries' own positions). No host sync."""
    bf16 = precision == "bf16"
    keep = min(2 * k, rows.n - 1) if bf16 else k
    q, device = queries.shape[0], queries.device
    query_ids = query_ids.to(device)
    best_d = torch.full((q, keep), math.inf, device=device)
    best_i = torch.full((q, keep), -1, dtype=torch.int64, device=device)
    # |q|^2 is the same for every key of a row, so the ranking needs only |k|^2 - 2 q.k (the
    # candidates' distances are measured again below): one pass over each block after its product.
    left = (-2 * queries).bfloat16() if bf16 else -2 * queries
    for start, keys, key_norms in rows.key_blocks():
        product = _bf16_product(left, keys) if bf16 else products.mm(left, keys.T)
        d2 = product.add_(key_norms[None, :])
        _not_itself(d2, query_ids, start)
        best_d, best_i = _merge(best_d, best_i, d2, start, keep)
    return _refine(rows, queries, best_i, k)


def _bf16_product(left: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """left @ keys^T from bfloat16 operands, summed and returned in float32: a bfloat16 result
    would round the products themselves (2^-9 of |a||b|, more than the neighbours' distances of
    dense data). On a GPU cuBLAS does it (mm's out_dtype); elsewhere the same arithmetic runs in
    float32 on the rounded operands, the same neighbours without the speed."""
    right = keys.bfloat16()
    if left.device.type == "cuda":
        try:
            return torch.mm(left, right.T, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # a torch without mm's out_dtype
            pass
    return products.mm(left.float(), right.float().T)


def _refine(rows: GraphRows, queries: torch.Tensor, candidates: torch.Tensor, k: int):
    """The k nearest of each query's candidates by the norms of their float32 differences (one
    fused reduction: 6x faster than square() then sum()), nearest first."""
    out_d, out_i = [], []
    for lo in range(0, queries.shape[0], REFINE_ROWS):
        cand = candidates[lo:lo + REFINE_ROWS]
        near = rows.take(cand.flatten()).view(*cand.shape, -1)
        distances = torch.linalg.vector_norm(near - queries[lo:lo + REFINE_ROWS, None, :], dim=-1)
        values, order = torch.topk(distances, k, dim=1, largest=False, sorted=True)
        out_d.append(values)
        out_i.append(cand.gather(1, order))
    return torch.cat(out_d), torch.cat(out_i)


def nearest_of_block(rows: GraphRows, start: int, stop: int, k: int, precision: str = "fp32"):
    """nearest() of training positions start..stop-1."""
    ids = torch.arange(start, stop, device=rows.device)
    return nearest(rows, rows.block(start, stop), ids, k, precision)


def nearest_of(rows: GraphRows, positions: torch.Tensor, k: int, precision: str = "fp32",
               tick: Optional[Callable[[int], None]] = None):
    """nearest() of any training positions, QUERY_BLOCK at a time, as numpy (distances, indices)."""
    out_d, out_i = [], []
    for lo in range(0, len(positions), QUERY_BLOCK):
        ids = positions[lo:lo + QUERY_BLOCK].to(rows.device)
        d, i = nearest(rows, rows.take(ids), ids, k, precision)
        out_d.append(d.cpu())
        out_i.append(i.cpu())
        if tick is not None:
            tick(len(ids))
    return torch.cat(out_d).numpy(), torch.cat(out_i).numpy()
