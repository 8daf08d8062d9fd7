"""A run directory's files, each written atomically (temp file in the same folder, then rename).

Used by: train.py (writes), cli.py and launch.py (status), tools/collect.py reads the same files
without importing this package.

Layout of a run directory (decided once, by config.run_dir_for):
  config.yaml     the resolved config
  record.json     one machine-readable record of the job; rewritten after every epoch
  metrics.jsonl   one line per epoch, flushed as written
  checkpoint.pt   model, optimizers, RNG states, epoch and step; the last good one survives a kill
  tb/             TensorBoard events
  slurm/          submitit's scripts and logs (Slurm jobs only)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

SCHEMA = "bnnidr-hpc/record/1"  # tools/collect.py reads records of this schema only
RECORD = "record.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
TENSORBOARD = "tb"

# Statuses a record can hold.
RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write through `write(file)` into a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: json.dump(data, f, indent=1, sort_keys=False, default=str))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def read_record(run_dir: Path) -> Optional[dict]:
    """The run's record, or None when there is none or it cannot be read."""
    try:
        data = json.loads((Path(run_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def append_line(path: Path, data: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(data, default=str) + "\n")
        f.flush()


def versions() -> dict:
    import numpy
    import torch

    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "bnnidr_hpc": __version__, "cuda": torch.version.cuda}


def git_state() -> dict:
    """Commit and dirty flag of the checkout holding this package, if it is one."""
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def process_start_time() -> float:
    """Wall-clock time this process started (Linux /proc), else now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()
