"""The data sources (synthetic hyperspheres; a user's feature files) and the loader of one rank's batches.

Used by: train/loop.py (training shards), train/evaluate.py (held-out points), train/intrinsic.py (estimate-id).

Both sources give: rows(index) -> (points, labels or None) of training positions 0..n-1, range(start,
stop), sample(count) (for TwoNN), heldout(queries, gallery); `source` picks one from the config.

Synthetic hyperspheres: n labelled points of intrinsic dimension d embedded in R^p.

Generative model (README, "Data"):
  centres  mu_c ~ uniform on the unit sphere S^d in R^(d+1), c = 1..categories
  point i  c_i ~ uniform category;  u_i = normalise(mu_c + spread * z / sqrt(d+1)),  z ~ N(0, I)
  linear     x_i = Q u_i                                Q: p x (d+1), orthonormal columns
  nonlinear  x_i = Q [u_i, sqrt(2/k) sin(3 W u_i + b)]  W: k x (d+1) Gaussian, Q: p x (d+1+k)
  curved     x_i = sqrt(2/p) cos(F u_i + b)             F: p x (d+1), N(0, frequency^2); b ~ U[0, 2 pi)
             (random Fourier features: a smooth curved embedding whose linear span is all of p, so
             PCA to d+1 dimensions loses neighbours; README "Data")
  noise      x_i += noise / sqrt(p) * N(0, I_p)

Point i depends on (seed, i) alone: points are made in chunks of CHUNK consecutive indices, each
from its own generator, so any process can make any index range directly, without making or
holding the rest. The data set's random draws are deterministic for a seed and a device type.
Points n, n+1, ... follow the training set and serve as the held-out evaluation set.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch

from bnnidr_hpc.data import features

CHUNK = 64


class NextBatch:
    """The next step's global batch, copied from the cached points when first asked for: a step
    that waits for a collective copies it then (step.make_step), else the loader does."""

    def __init__(self, copy: Callable[[], torch.Tensor]):
        self._copy, self._batch = copy, None

    def __call__(self) -> torch.Tensor:
        if self._batch is None:
            self._batch = self._copy()
        return self._batch


# (this rank's batch, the global batch or None, the next step's global batch or None)
Batch = Tuple[torch.Tensor, Optional[torch.Tensor], Optional[NextBatch]]


def _stream_seed(seed: int, stream: int, index: int) -> int:
    # Disjoint integer seeds per (seed, stream, index); torch's generators decorrelate them.
    return (seed * 2_654_435_761 + stream * 1_000_000_007 + index) % (2**63 - 1)


def source(cfg, seed: int, device: torch.device | str = "cpu"):
    """The data source data.source names."""
    return NpyFeatures(cfg, seed, device) if cfg.source == "npy" else Hypersphere(cfg, seed, device)


class Hypersphere:
    prefetch = False  # made on the fly by the same cores that run the step: nothing to overlap

    def __init__(self, cfg, seed: int, device: torch.device | str = "cpu"):
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        d1 = cfg.d + 1
        # The global parameters come from a CPU generator so they match on every device.
        g = torch.Generator().manual_seed(_stream_seed(seed, 0, 0))
        centres = torch.randn(cfg.categories, d1, generator=g, dtype=torch.float64)
        self.centres = (centres / centres.norm(dim=1, keepdim=True)).float().to(self.device)
        if cfg.embedding == "curved":
            self.frequencies = (cfg.frequency * torch.randn(cfg.p, d1, generator=g)).to(self.device)
            self.phases = (2 * math.pi * torch.rand(cfg.p, generator=g)).to(self.device)
            return
        features = d1
        if cfg.embedding == "nonlinear":
            self.sine_dim = min(d1, cfg.p - d1)
            features += self.sine_dim
            self.sine_w = (3.0 * torch.randn(self.sine_dim, d1, generator=g)).to(self.device)
            self.sine_b = (2 * math.pi * torch.rand(self.sine_dim, generator=g)).to(self.device)
        q, _ = torch.linalg.qr(torch.randn(cfg.p, features, generator=g, dtype=torch.float64))
        self.basis = q.float().T.contiguous().to(self.device)  # features x p, orthonormal rows

    @property
    def p(self) -> int:
        return self.cfg.p

    def _chunk(self, chunk: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        cfg = self.cfg
        g = torch.Generator(device=self.device).manual_seed(_stream_seed(self.seed, 1, chunk))
        labels = torch.randint(cfg.categories, (CHUNK,), generator=g, device=self.device)
        z = torch.randn(CHUNK, cfg.d + 1, generator=g, device=self.device)
        noise = None
        if cfg.noise > 0:
            noise = torch.randn(CHUNK, cfg.p, generator=g, device=self.device)
        return labels, z, noise

    def _embed(self, u: torch.Tensor) -> torch.Tensor:
        if self.cfg.embedding == "curved":
            return math.sqrt(2.0 / self.cfg.p) * torch.cos(u @ self.frequencies.T + self.phases)
        if self.cfg.embedding == "nonlinear":
            wiggle = math.sqrt(2.0 / self.sine_dim) * torch.sin(u @ self.sine_w.T + self.sine_b)
            u = torch.cat([u, wiggle], dim=1)
        return u @ self.basis

    def rows(self, index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Points and labels at the given indices (any order, any range), made on the fly."""
        index = index.to(self.device)
        chunks, which = torch.unique(torch.div(index, CHUNK, rounding_mode="floor"), return_inverse=True)
        offset = index % CHUNK
        parts = [self._chunk(c) for c in chunks.tolist()]
        labels = torch.stack([p[0] for p in parts])[which, offset]
        z = torch.stack([p[1] for p in parts])[which, offset]
        centre = self.centres[labels]
        u = centre + (self.cfg.spread / math.sqrt(self.cfg.d + 1)) * z
        u = u / u.norm(dim=1, keepdim=True)
        x = self._embed(u)
        if self.cfg.noise > 0:
            noise = torch.stack([p[2] for p in parts])[which, offset]
            x = x + (self.cfg.noise / math.sqrt(self.cfg.p)) * noise
        return x, labels

    def range(self, start: int, stop: int, block: int = 65536) -> Tuple[torch.Tensor, torch.Tensor]:
        """Points start..stop-1, made block by block."""
        xs, ys = [], []
        for lo in range(start, stop, block):
            x, y = self.rows(torch.arange(lo, min(stop, lo + block), device=self.device))
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), torch.cat(ys)

    def heldout(self, queries: int, gallery: int):
        """Evaluation points that follow the n training points: (queries, gallery), each (x, labels)."""
        n = self.cfg.n
        return self.range(n, n + queries), self.range(n + queries, n + queries + gallery)

    def sample(self, count: int) -> torch.Tensor:
        """count training points for TwoNN (independent draws already: the first ones)."""
        return self.range(0, min(count, self.cfg.n))[0]


class NpyFeatures:
    """data.source=npy: training positions 0..n-1 are the files' training rows in file order
    (features.split), read through memory maps and normalised (data.normalize) on the device."""

    prefetch = True  # reading waits on the disk: the loader asks for the next batch's rows ahead

    def __init__(self, cfg, seed: int, device: torch.device | str = "cpu"):
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        self.shards = features.Shards(features.expand(cfg.path, "data.path"))
        self.labels = None if cfg.labels is None else \
            features.read_labels(features.expand(cfg.labels, "data.labels"), self.shards.n)
        held = features.heldout_rows(cfg, self.shards.n, 0)
        self.heldout_index, train_rows = features.split(self.shards.n, held, seed)
        self.train_rows = train_rows[:cfg.n]
        self.stats = features.normalization_stats(cfg.normalize, self.shards, self.train_rows)
        self.normalize = features.normalizer(cfg.normalize, self.stats).to(self.device)

    @property
    def p(self) -> int:
        return self.shards.p

    def _file_rows(self, file_rows: np.ndarray) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Rows of the files in the given order (features.Shards.read), normalised on the device."""
        x = self.normalize(self.shards.read(file_rows).to(self.device, non_blocking=True))
        labels = None if self.labels is None else torch.from_numpy(self.labels[file_rows]).to(self.device)
        return x, labels

    def rows(self, index: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self._file_rows(self.train_rows[index.cpu().numpy()])

    def advise(self, index: torch.Tensor) -> None:
        """Start reading these training positions' rows from the disk (features.Shards.advise)."""
        self.shards.advise(np.sort(self.train_rows[index.cpu().numpy()]))

    def range(self, start: int, stop: int, block: int = 65536):
        xs, ys = [], []
        for lo in range(start, stop, block):
            x, y = self.rows(torch.arange(lo, min(stop, lo + block)))
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), None if self.labels is None else torch.cat(ys)

    def heldout(self, queries: int, gallery: int):
        """The first `queries` held-out rows and the next `gallery` ones, each (x, labels or None)."""
        return (self._file_rows(self.heldout_index[:queries]),
                self._file_rows(self.heldout_index[queries:queries + gallery]))

    def sample(self, count: int) -> torch.Tensor:
        """count training rows spread evenly over the files (a file sorted by class would make
        its first rows a few classes only)."""
        return self.rows(torch.from_numpy(features.evenly_spaced(len(self.train_rows), count)))[0]


class ShardLoader:
    """One rank's batches: the global batch at each step is batch_size x world points, and rank r
    takes its slice, so the data a step sees does not depend on how it is split across ranks.

    A data set up to cache_gb is made once and indexed (a full random permutation every epoch);
    a larger one is made on the fly, every step only the rank's own points, in an order of
    shuffled CHUNK-point chunks, so no process ever holds it whole.
    """

    def __init__(self, data: Hypersphere, batch_size: int, rank: int, world: int):
        cfg = data.cfg
        self.data, self.batch_size, self.rank, self.world = data, batch_size, rank, world
        self.steps_per_epoch = cfg.n // (batch_size * world)
        self.cached = cfg.n * cfg.p * 4 <= cfg.cache_gb * 2**30
        self.points = data.range(0, cfg.n)[0] if self.cached else None
        self._buffers = None
        self._taken = 0        # batches copied into the buffers, which alternate
        self._announced = None  # ((epoch, step), batch): the next epoch's first, given ahead

    def order(self, epoch: int) -> torch.Tensor:
        n = self.data.cfg.n
        g = torch.Generator().manual_seed(_stream_seed(self.data.seed, 2, epoch))
        if self.cached:
            return torch.randperm(n, generator=g)
        chunks = torch.randperm(-(-n // CHUNK), generator=g)
        order = (chunks[:, None] * CHUNK + torch.arange(CHUNK)).flatten()
        return order[order < n]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """(this rank's batch, the whole global batch, the next step's global batch) per step.
        A cached data set gives every rank the global batch from its own copy, so no rank has to
        gather the others' inputs, and the next one (after the last step, the next epoch's first),
        not yet copied (NextBatch), so that a step can copy it and work ahead on it while it waits
        (step.make_step); a streamed one gives (batch, None, None) and the step gathers."""
        device = self.data.device
        order = self.order(epoch).to(device)
        global_batch = self.batch_size * self.world
        rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        steps = range(start_step, self.steps_per_epoch)
        if not self.cached:
            yield from self._streamed(order, steps, global_batch, rows)
            return
        if self._buffers is None:  # two reused buffers, this step's and the next's: no allocation per step
            self._buffers = [torch.empty(global_batch, self.data.p, device=device) for _ in range(2)]

        def take(indices: torch.Tensor) -> torch.Tensor:
            self._taken += 1
            return torch.index_select(self.points, 0, indices, out=self._buffers[self._taken % 2])

        # The batch announced as the next epoch's first is that epoch's first: the same tensor,
        # so the work a step did ahead on it is used.
        announced, self._announced = self._announced, None
        full = announced[1]() if announced is not None and announced[0] == (epoch, start_step) else \
            take(order[start_step * global_batch:(start_step + 1) * global_batch])
        for step in steps:
            if step + 1 < self.steps_per_epoch:
                following = NextBatch(lambda lo=(step + 1) * global_batch: take(order[lo:lo + global_batch]))
            else:
                following = NextBatch(lambda: take(self.order(epoch + 1)[:global_batch].to(device)))
                self._announced = ((epoch + 1, 0), following)
            yield full[rows], full, following
            full = following()

    def _streamed(self, order: torch.Tensor, steps: range, global_batch: int, rows: slice) -> Iterator[Batch]:
        """Only this rank's points of each global batch. A source that reads files has the kernel
        read the next step's rows from the disk while this step trains; copying them out of the
        page cache (a few ms) stays in the step: a reader thread would take a core from the
        step's threads, which all wait for the slowest (benchmarks/bench_npy.py: 0.75x the sphere's
        samples/s with a reader thread, 0.93x without)."""
        def positions(step: int) -> torch.Tensor:
            lo = step * global_batch
            return order[lo + rows.start:lo + rows.stop]

        for step in steps:
            if self.data.prefetch and step + 1 < steps.stop:
                self.data.advise(positions(step + 1))
            yield self.data.rows(positions(step))[0], None, None
