"""Applying a trained reducer to new vectors: `bnnidr-hpc reduce` and `load_reducer`.

Used by: cli.py (reduce), users' own code (`bnnidr_hpc.load_reducer(run_dir)`).

A run directory holds everything needed: config.yaml (the model's shape and the normalisation),
checkpoint.pt (the weights), normalization.npz (a feature-file run's statistics). The training
files need not exist any more. `reduce` streams the input in blocks from memory maps into OUTPUT
(a float32 N x output_dim .npy), written block after block beside it and renamed over it when
whole: plain sequential writes, since the dirty pages of an output memory map would count in the
process's memory (500 MB for ImageNet at output_dim 96);
with --mc-samples K > 1 (a Bayesian run) it also writes OUTPUT's stem + ".spread.npy": per vector,
the root-mean-square over output coordinates of the standard deviation over the K samples.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from bnnidr_hpc.config.schema import Config
from bnnidr_hpc.data import features
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.records import run_files, run_record
from bnnidr_hpc.runtime import allocator, atomic_files, products
from bnnidr_hpc.runtime.errors import ConfigError

# Rows per block, from the float32 size of the block's widest tensor (the input or a layer's
# output): below glibc's 32 MB mmap limit each block's tensors are served again from memory the
# process keeps (allocator.py) instead of fresh pages - 4096 rows at p = 1536, and 1.35-1.5x the
# rows/s of 8192-row blocks without it (200,000 rows, 2-core AMD EPYC; 5-6 page faults a row
# before, 0.2 after). MAX_BLOCK_ROWS bounds narrow models' blocks (memory, progress updates).
BLOCK_BYTES = 24 * 2**20
MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 256, 8192


def block_rows(spec) -> int:
    """Rows per block for a model.ModelSpec."""
    widest = max(spec.input_dim, *spec.hidden_sizes, spec.output_dim)
    return max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, BLOCK_BYTES // (4 * widest)))


class AppliedReducer(torch.nn.Module):
    """The trained reducer with the run's input normalisation folded in, in eval mode: float
    rows of the run's input_dim in, reduced float32 rows out (posterior mean of a Bayesian model,
    or the mean of mc_samples posterior draws). cpu_matmul: the run's run.cpu_matmul, which
    `bnnidr-hpc reduce` uses (products.py)."""

    def __init__(self, normalize: torch.nn.Module, model: Reducer, mc_samples: int = 1, cpu_matmul: str = "auto"):
        super().__init__()
        self.normalize, self.model, self.mc_samples, self.cpu_matmul = normalize, model, mc_samples, cpu_matmul
        self.input_dim = model.spec.input_dim
        self.output_dim = model.spec.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(self.normalize(x), self.mc_samples)

    @torch.no_grad()
    def mean_and_spread(self, x: torch.Tensor, samples: int):
        """(mean of `samples` posterior draws, per-row RMS over coordinates of their std)."""
        x = self.normalize(x)
        draws = torch.stack([self.model.sample(x) for _ in range(samples)])
        return draws.mean(0), draws.var(0, unbiased=True).mean(1).sqrt()


def run_config(run_dir: Path) -> Config:
    """The run's resolved config, as training wrote it (not validated again: the training files
    may have moved since)."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / run_files.CONFIG
    if not path.is_file():
        raise ConfigError(f"reduce: {str(run_dir)!r} is not a run directory (no {run_files.CONFIG})")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path)))
    except Exception as exc:  # noqa: BLE001 - a damaged file is one line
        raise ConfigError(f"reduce: {path} does not load as a run config ({str(exc).splitlines()[0]})") from None


def load_reducer(run_dir, mc_samples: int = 1, device: str = "cpu", allow_incomplete: bool = False) -> AppliedReducer:
    """A completed run's reducer as a torch module in eval mode, normalisation included.

    >>> reducer = bnnidr_hpc.load_reducer("runs/hps_00040-1a2b3c4d")
    >>> z = reducer(torch.from_numpy(x))      # x: N x input_dim, float16/32/64
    """
    run_dir = Path(run_dir)
    c = run_config(run_dir)
    _check_completed(run_dir, allow_incomplete)
    checkpoint = run_dir / run_files.CHECKPOINT
    if not checkpoint.is_file():
        raise ConfigError(f"reduce: {run_dir} has no {run_files.CHECKPOINT}: the run saved no weights")
    model = _load_weights(c, checkpoint)
    mode, stats = c.data.normalize, {}
    if (run_dir / features.NORMALIZATION).is_file():
        try:
            mode, stats = features.load_stats(run_dir / features.NORMALIZATION)
        except Exception as exc:  # noqa: BLE001 - truncated, not a zip, keys missing: one line
            raise ConfigError(f"reduce: {run_dir / features.NORMALIZATION} does not load ({_first_line(exc)}); "
                              "the run directory is damaged") from None
    if mode == "standardize" and not stats:
        raise ConfigError(f"reduce: {run_dir} lacks {features.NORMALIZATION}, the statistics its inputs were "
                          "standardised with")
    reducer = AppliedReducer(features.normalizer(mode, stats), model, mc_samples, c.run.cpu_matmul)
    return reducer.to(device).eval()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _load_weights(c: Config, checkpoint: Path) -> Reducer:
    """The checkpoint's weights in the model c describes; a damaged checkpoint (cut short,
    overwritten) or one of another shape is one line. The shapes are compared on a model without
    storage first: config.yaml is read unvalidated, and a damaged size would allocate gigabytes."""
    config = checkpoint.parent / run_files.CONFIG
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch and pickle raise a dozen kinds for a bad file
        raise ConfigError(f"reduce: {checkpoint} does not load ({_first_line(exc)}); the run directory "
                          "is damaged: train it again") from None
    weights = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(w, torch.Tensor) for w in weights.values()):
        raise ConfigError(f"reduce: {checkpoint} holds no model weights; the run directory is damaged")
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in Reducer(c.model_spec()).state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - sizes and names that build no model
        raise ConfigError(f"reduce: {config} describes no model this version builds ({_first_line(exc)}); "
                          "the run directory is damaged") from None
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if found != shapes:
        differ = sorted(k for k in shapes.keys() | found.keys() if shapes.get(k) != found.get(k))
        raise ConfigError(f"reduce: {checkpoint} does not fit the model of {config} ({len(differ)} tensors differ, "
                          f"e.g. {differ[0]}: {found.get(differ[0])} in the checkpoint, {shapes.get(differ[0])} in "
                          "the model); the two files come from different runs")
    model = Reducer(c.model_spec())
    try:
        model.load_state_dict(weights)
    except Exception as exc:  # noqa: BLE001 - the right shapes of a type that does not convert
        raise ConfigError(f"reduce: {checkpoint}'s weights do not load ({_first_line(exc)})") from None
    return model


def _check_completed(run_dir: Path, allow_incomplete: bool) -> None:
    record = run_files.read_record(run_dir) or {}
    status = record.get("status", "unknown (no readable record.json)")
    if status != run_record.COMPLETED and not allow_incomplete:
        raise ConfigError(f"reduce: the run in {run_dir} is {status}, not completed; finish it, or pass "
                          "--allow-incomplete to use its last checkpoint")


def check_paths(reducer: AppliedReducer, inputs: Sequence[str], output: str, samples: int = 1) -> features.Shards:
    """Every problem with the inputs or the output, one line, before anything is written."""
    shards = features.Shards(features.expand(list(inputs), "reduce INPUT"), key="reduce INPUT")
    sample = features.evenly_spaced(shards.n, features.FINITE_CHECK_ROWS)
    bad = (~shards.read(sample).isfinite().all(dim=1)).numpy()
    if bad.any():
        raise _not_finite(shards, int(sample[bad][0]))
    if shards.p != reducer.input_dim:
        raise ConfigError(f"reduce: the inputs have p={shards.p} columns; this run's reducer takes "
                          f"{reducer.input_dim} (its data.p)")
    out = Path(output)
    if out.suffix != ".npy":
        raise ConfigError(f"reduce: OUTPUT={output!r} is not allowed: a .npy path")
    for target in (out, spread_path(out))[:1 + (samples > 1)]:
        if target.exists() and not target.is_file():
            raise ConfigError(f"reduce: OUTPUT={output!r} is not allowed: {target} exists and is not a file "
                              "(a folder?); name a .npy file")
    parent = out.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"reduce: OUTPUT={output!r}: {parent} is not a writable folder")
    if any(out.resolve() == p.resolve() for p in shards.paths):
        raise ConfigError(f"reduce: OUTPUT={output!r} is one of the inputs; write elsewhere")
    return shards


def _not_finite(shards: features.Shards, row: int) -> ConfigError:
    """Training refuses NaN and inf rows; reduced, they would be rows of NaN in OUTPUT."""
    i = int(np.searchsorted(shards.starts, row, side="right")) - 1
    return ConfigError(f"reduce: INPUT {str(shards.paths[i])!r} row {row - int(shards.starts[i])} holds NaN or inf "
                       "(training refuses such rows too); clean the features first")


def finite_block(shards: features.Shards, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi-1 (Shards.block), checked: every row is reduced, so every row is looked at."""
    x = shards.block(lo, hi)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise _not_finite(shards, lo + int(np.argmin(finite)))
    return x


def spread_path(output: Path) -> Path:
    return output.with_name(output.stem + ".spread.npy")


def reduce_files(reducer: AppliedReducer, shards: features.Shards, output: str, samples: int = 1,
                 block: Optional[int] = None, progress: bool = True) -> dict:
    """Stream every row of `shards` through the reducer into OUTPUT (and its spread with samples
    > 1); returns {rows, output, spread, seconds}."""
    import time

    from tqdm.auto import tqdm

    out = Path(output)
    block = block or block_rows(reducer.model.spec)
    device = next(reducer.parameters()).device
    targets = [(out, (shards.n, reducer.output_dim))]
    if samples > 1:
        targets.append((spread_path(out), (shards.n,)))
    temps = [t.with_name(f".{t.name}.{os.getpid()}.tmp") for t, _ in targets]
    started = time.perf_counter()
    files = []
    try:
        for tmp, (_, shape) in zip(temps, targets):
            files.append(open(tmp, "wb"))
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": shape}
            np.lib.format.write_array_header_2_0(files[-1], header)
        bar = tqdm(total=shards.n, unit="row", unit_scale=True, desc="reduce", disable=None if progress else True)
        with ThreadPoolExecutor(max_workers=1) as reader, torch.no_grad():
            starts = list(range(0, shards.n, block))
            # The reader thread checks each block while the reducer works on the one before.
            pending = reader.submit(finite_block, shards, 0, min(block, shards.n)) if starts else None
            for lo in starts:
                hi = min(lo + block, shards.n)
                x = torch.from_numpy(pending.result())
                if hi < shards.n:
                    pending = reader.submit(finite_block, shards, hi, min(hi + block, shards.n))
                x = x.to(device, non_blocking=True)
                if samples > 1:
                    z, spread = reducer.mean_and_spread(x, samples)
                    files[1].write(spread.float().cpu().numpy().tobytes())
                else:
                    z = reducer(x)
                files[0].write(z.float().cpu().numpy().tobytes())
                bar.update(hi - lo)
        bar.close()
        for f, tmp in zip(files, temps):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.chmod(tmp, atomic_files.FILE_MODE)
        for tmp, (final, _) in zip(temps, targets):
            os.replace(tmp, final)
    except BaseException:
        for f in files:
            f.close()
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    return {"rows": shards.n, "output": str(out), "spread": str(spread_path(out)) if samples > 1 else None,
            "seconds": time.perf_counter() - started}


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("reduce: --device=cuda is not allowed here: no CUDA device is visible")
    return name


def run(run_dir: str, inputs: List[str], output: str, mc_samples: int = 1, device: str = "auto",
        allow_incomplete: bool = False, block: Optional[int] = None, progress: bool = True) -> dict:
    """`bnnidr-hpc reduce`: every check first, then the streaming."""
    if mc_samples < 1:
        raise ConfigError(f"reduce: --mc-samples={mc_samples} is not allowed: a positive integer")
    reducer = load_reducer(run_dir, 1, pick_device(device), allow_incomplete)
    if mc_samples > 1 and not reducer.model.bayes_layers():
        raise ConfigError(f"reduce: --mc-samples={mc_samples} is not allowed: the run is not Bayesian "
                          "(bayesian=false), so every draw is the same")
    shards = check_paths(reducer, inputs, output, mc_samples)
    products.use(reducer.cpu_matmul)  # the run's choice, resolved on this machine
    allocator.keep_freed_memory()
    return reduce_files(reducer, shards, output, mc_samples, block, progress)


def summary_line(result: dict) -> str:
    """What `bnnidr-hpc reduce` prints of `run`'s result: rows, output, spread file, speed."""
    spread = f", spread per vector in {result['spread']}" if result["spread"] else ""
    return (f"reduced {result['rows']} rows into {result['output']}{spread} "
            f"({result['rows'] / max(result['seconds'], 1e-9):.0f} rows/s)")
