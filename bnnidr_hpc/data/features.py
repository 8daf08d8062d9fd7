"""A user's own feature vectors: N x p .npy files (one, a list, or a glob of shards), memory-mapped.

Used by: config/loading.py (`derive`: p, n and the evaluation sizes come from the files, and every file
problem is one line before anything is created), data/sources.py (`NpyFeatures`, the data source of
data.source=npy), reduce/apply.py (`Shards`, `normalizer`).

Rows: the shards are read as one table, file after file. `data.heldout` rows, drawn from the seed,
are set aside for evaluation (never trained on): the first eval.queries of them are the queries,
the next eval.gallery the gallery; the rest are the training rows, in file order, of which the
first data.n are used. Every read goes through a memory map that is dropped and opened again after
REMAP_BYTES, so the file pages a process has touched leave its resident memory: a file far larger
than RAM trains with bounded memory.
"""

from __future__ import annotations

import glob
import io
import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from bnnidr_hpc.runtime.errors import ConfigError

DTYPES = ("float16", "float32", "float64")
# Pages read through one memory map before it is reopened; bounds the file-backed resident memory.
REMAP_BYTES = 128 * 2**20
# Rows read (evenly spaced) to look for NaN/inf before a run starts, and to compute the
# standardisation statistics.
FINITE_CHECK_ROWS = 4096
STATS_ROWS = 65536
NORMALIZATION = "normalization.npz"
HELDOUT = "heldout.npy"


def expand(spec, key: str) -> List[Path]:
    """data.path / data.labels / reduce's inputs: a path, a glob, or a list of either, in order
    (each glob sorted, as shard names sort)."""
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    paths: List[Path] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"config: {key}={spec!r} is not allowed: a .npy path, a glob, or a list of them")
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise ConfigError(f"config: {key}={item!r} matches no file")
        paths.extend(Path(m) for m in matches)
    return paths


def header(path: Path, key: str) -> Tuple[tuple, np.dtype, bool, int]:
    """(shape, dtype, fortran order, data offset) of a .npy file, read from its header alone."""
    if not path.is_file():
        raise ConfigError(f"config: {key}: no such file {str(path)!r}")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset, size = f.tell(), os.fstat(f.fileno()).st_size
    except PermissionError:
        raise ConfigError(f"config: {key}: {str(path)!r} is not readable (permission denied)") from None
    except Exception as exc:  # noqa: BLE001 - a damaged header fails in numpy's parser (ValueError, TokenError, ...)
        raise ConfigError(f"config: {key}: {str(path)!r} is not a .npy file ({(str(exc).splitlines() or [''])[0]}); "
                          "save features with numpy.save") from None
    # A copy cut short keeps its header: the memory map would fail much later, in numpy's words.
    expected = offset + math.prod(shape) * dtype.itemsize
    if size < expected and not dtype.hasobject:  # object arrays are pickled: no fixed size
        raise ConfigError(f"config: {key}: {str(path)!r} is truncated: its header promises {shape} "
                          f"{dtype.name} ({expected} bytes), the file has {size}; copy or save it again")
    return shape, dtype, fortran, offset


class Shards:
    """Several N_i x p .npy files read as one table of sum N_i rows, through memory maps that are
    reopened every REMAP_BYTES read."""

    def __init__(self, paths: Sequence[Path], key: str = "data.path"):
        self.paths = [Path(p) for p in paths]
        headers = [header(p, key) for p in self.paths]
        for path, (shape, dtype, fortran, _) in zip(self.paths, headers):
            if len(shape) != 2:
                raise ConfigError(f"config: {key}: {str(path)!r} has shape {shape}: features must be N x p (ndim 2)")
            if dtype.name not in DTYPES:
                raise ConfigError(f"config: {key}: {str(path)!r} holds {dtype.name}: allowed {', '.join(DTYPES)}")
            if fortran:
                raise ConfigError(f"config: {key}: {str(path)!r} is in Fortran order: save it C-ordered "
                                  "(numpy.save(path, numpy.ascontiguousarray(x)))")
        widths = sorted({h[0][1] for h in headers})
        if len(widths) > 1:
            raise ConfigError(f"config: {key}: the shards have different widths p ({', '.join(map(str, widths))}); "
                              "every file must have the same p")
        self.p = widths[0]
        self.row_bytes = [self.p * h[1].itemsize for h in headers]
        self.offsets = [h[3] for h in headers]
        self._fds: List[Optional[int]] = [None] * len(self.paths)
        self.rows_per_file = [h[0][0] for h in headers]
        self.starts = np.cumsum([0] + self.rows_per_file)
        self.n = int(self.starts[-1])
        self._maps: List[Optional[np.ndarray]] = [None] * len(self.paths)
        self._read = [0] * len(self.paths)

    def _map(self, i: int) -> np.ndarray:
        if self._maps[i] is None or self._read[i] > REMAP_BYTES:
            self._maps[i] = None  # drop the old map first: its pages leave this process's memory
            self._maps[i] = np.load(self.paths[i], mmap_mode="r")
            self._read[i] = 0
        return self._maps[i]

    def read(self, rows: np.ndarray):
        """The given rows (int64, any order) as a float32 torch tensor. Each file's rows are read in
        index order (sequential on disk) and in the file's dtype, then put back in the given order
        and converted by torch: numpy converts float16 15x slower (1024 x 1536: 2.1 ms against
        0.14 ms), which was a tenth of a training step on a float16 file."""
        import torch

        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        bounds = np.searchsorted(ordered, self.starts)
        parts = []
        for i in range(len(self.paths)):
            lo, hi = bounds[i], bounds[i + 1]
            if lo < hi:
                local = ordered[lo:hi] - self.starts[i]
                mapped = self._map(i)
                if (np.diff(local) == 1).all():  # a contiguous run: a slice, no index array
                    parts.append(torch.from_numpy(np.array(mapped[local[0]:local[-1] + 1])))
                else:
                    parts.append(torch.from_numpy(mapped[local]))
                self._read[i] += (hi - lo) * self.row_bytes[i]
        if not parts:
            return torch.empty(0, self.p)
        x = parts[0] if len(parts) == 1 else torch.cat(parts)  # shards of different dtypes: the widest
        if np.any(order[1:] < order[:-1]):
            back = torch.empty(len(rows), dtype=torch.long)
            back[torch.from_numpy(order)] = torch.arange(len(rows))
            x = x.index_select(0, back)
        return x.float()

    def advise(self, rows: np.ndarray) -> None:
        """Ask the kernel to start reading these rows (sorted) into the page cache now, so that a
        later read() finds them there: read-ahead without a thread competing for the cores."""
        if not hasattr(os, "posix_fadvise") or not len(rows):
            return
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run in np.split(rows, breaks):
            i = int(np.searchsorted(self.starts, run[0], side="right")) - 1
            lo, hi = run[0] - self.starts[i], min(run[-1] + 1, self.starts[i + 1]) - self.starts[i]
            if self._fds[i] is None:
                self._fds[i] = os.open(self.paths[i], os.O_RDONLY)
            os.posix_fadvise(self._fds[i], int(self.offsets[i] + lo * self.row_bytes[i]),
                             int((hi - lo) * self.row_bytes[i]), os.POSIX_FADV_WILLNEED)

    def block(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi-1 in the files' own dtype (a copy): the caller converts, e.g. in torch,
        which converts float16 faster than numpy."""
        parts = []
        for i in range(len(self.paths)):
            a, b = max(lo, self.starts[i]), min(hi, self.starts[i + 1])
            if a < b:
                parts.append(np.array(self._map(i)[a - self.starts[i]:b - self.starts[i]]))
                self._read[i] += (b - a) * self.row_bytes[i]
        return parts[0] if len(parts) == 1 else np.concatenate([p.astype(np.float32) for p in parts])


def evenly_spaced(n: int, count: int) -> np.ndarray:
    """count evenly spaced indices into n rows (all of them when there are fewer), ascending: a
    sample of a file that may be sorted by class, without randomness."""
    return np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(np.int64))


def read_labels(paths: Sequence[Path], rows: int, key: str = "data.labels") -> np.ndarray:
    """The labels, one integer per row of the features, as int64 (small: read whole)."""
    parts = []
    for path in paths:
        shape, dtype, _, _ = header(path, key)
        if len(shape) != 1 and not (len(shape) == 2 and shape[1] == 1):
            raise ConfigError(f"config: {key}: {str(path)!r} has shape {shape}: one integer label per row (ndim 1)")
        if dtype.kind not in "iub":
            raise ConfigError(f"config: {key}: {str(path)!r} holds {dtype.name}: labels must be integers")
        parts.append(np.load(path, mmap_mode="r").reshape(-1))
    labels = np.concatenate(parts).astype(np.int64)
    if len(labels) != rows:
        raise ConfigError(f"config: {key}: {len(labels)} labels for {rows} feature rows; give one label per row")
    return labels


def check_rows(shards: Shards, key: str = "data.path") -> None:
    """On a sample of the rows: none holds NaN or inf, and they are not all one vector (a file of
    copies: no distances to keep, and TwoNN's ratios and every AP are undefined)."""
    sample = evenly_spaced(shards.n, FINITE_CHECK_ROWS)
    x = shards.read(sample)
    bad = (~x.isfinite().all(dim=1)).numpy()
    if bad.any():
        raise ConfigError(f"config: {key}: row {int(sample[bad][0])} holds NaN or inf (found in a sample of "
                          f"{len(sample)} rows); clean the features first")
    if len(sample) > 1 and bool((x == x[0]).all()):
        raise ConfigError(f"config: {key}: every one of {len(sample)} rows sampled is the same vector: nothing to "
                          "reduce (were the features saved right?)")


def heldout_rows(cfg, total: int, evaluation_rows: int) -> int:
    """cfg is the run's data section (config.schema.DataConfig). data.heldout: a fraction of the
    rows (< 1), a count (>= 1), or None: the evaluation's
    queries + gallery, at most a fifth of the rows."""
    if cfg.heldout is None:
        return min(evaluation_rows, total // 5)
    return int(round(cfg.heldout * total)) if cfg.heldout < 1 else int(cfg.heldout)


def split(total: int, heldout: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(held-out rows in evaluation order, training rows in file order), deterministic in the seed."""
    order = np.random.default_rng([seed, 3]).permutation(total)
    return order[:heldout].astype(np.int64), np.sort(order[heldout:]).astype(np.int64)


# ----------------------------------------------------------------------------- normalisation

def normalization_stats(mode: str, shards: Shards, train_rows: np.ndarray) -> dict:
    """standardize: per-feature mean and 1/std from up to STATS_ROWS evenly spaced training rows
    (float64 sums); l2 and none need none."""
    if mode != "standardize":
        return {}
    pick = train_rows[evenly_spaced(len(train_rows), STATS_ROWS)]
    total = np.zeros(shards.p)
    squares = np.zeros(shards.p)
    for lo in range(0, len(pick), 8192):
        x = shards.read(pick[lo:lo + 8192]).double().numpy()
        total += x.sum(0)
        squares += (x * x).sum(0)
    mean = total / len(pick)
    std = np.sqrt(np.maximum(squares / len(pick) - mean * mean, 0.0))
    # A constant feature carries nothing; dividing it by ~0 would only amplify rounding.
    scale = np.where(std > 1e-8 * max(std.max(), 1e-30), 1.0 / np.where(std > 0, std, 1.0), 1.0)
    return {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}


def stats_bytes(mode: str, stats: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, mode=np.array(mode), **stats)
    return buffer.getvalue()


def load_stats(path: Path) -> Tuple[str, dict]:
    with np.load(path) as f:
        return str(f["mode"]), {k: f[k] for k in f.files if k != "mode"}


def normalizer(mode: str, stats: dict):
    """A torch module applying the run's normalisation (what training saw) to float32 rows."""
    import torch

    class Normalize(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mode = mode
            p = len(stats["mean"]) if stats else 0
            self.register_buffer("mean", torch.as_tensor(stats.get("mean", np.zeros(p, np.float32))))
            self.register_buffer("scale", torch.as_tensor(stats.get("scale", np.ones(p, np.float32))))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.float()
            if self.mode == "standardize":
                return (x - self.mean) * self.scale
            if self.mode == "l2":
                return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
            return x

        def extra_repr(self) -> str:
            return f"mode={self.mode}"

    return Normalize()
