"""A run directory's files: their layout, atomic writes, JSON reading and writing, and the lock that
keeps one writer per run directory.

Its atomic writer lives in runtime/atomic_files.py (the graph cache of data/ uses it too).

Used by: run_record.py (what goes into record.json), train/ (the loop, its session and
checkpoints), cluster/ (job, planning, submit, status, lifecycle, hydra_app, hydra_launcher),
reduce/apply.py, tensorboard.py, record_files.py and cli.py. Standard library only, no torch, no
training code: collect reads records through it.

Layout of a run directory (decided once, by config.identity.run_dir_for):
  config.yaml     the resolved config
  record.json     one machine-readable record of the job; rewritten after every epoch (run_record.py)
  metrics.jsonl   one line per epoch, flushed as written
  checkpoint.pt   model, optimizers, RNG states and the TrainState; the last good one survives a kill
  tb/             TensorBoard events
  job.json        cluster/submit.py: job id, executor, log paths, resources, the cluster that took the job,
                  the frozen code's folder and the config (submitted runs only); status adds Slurm's
                  final state once it sees one, for after the cluster has forgotten the job
  .lock           held by the one process that writes the run (host and pid inside)
  slurm/          submitit's scripts and logs (submitted runs only)
  code/SHA/       the package as it was at submission; the job imports it (submitted runs only)
A sweep directory holds one run directory per point, plus slurm/, code/ and sweep.json (every
point by run directory name: its config, and why Slurm refused it if it did).
Every file is written to a temp file in the same folder and renamed over the old one.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, List, Optional

# Re-exported: every writer of a run directory imports them from here.
from bnnidr_hpc.runtime.atomic_files import FILE_MODE, RunFileError, atomic_write

RECORD = "record.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
TENSORBOARD = "tb"
JOB = "job.json"
LOCK = ".lock"
MANIFEST = "sweep.json"


def finite(value: Any) -> Any:
    """value with every non-finite float (NaN, inf) as None: records are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def to_json(data: Any, indent: Optional[int] = None) -> str:
    return json.dumps(finite(data), indent=indent, allow_nan=False, default=str)


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(to_json(data, indent=1)))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def read_json(path: Path) -> Optional[dict]:
    """A JSON object from a file, or None when there is none or it cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_record(run_dir: Path) -> Optional[dict]:
    """The run's record, or None when there is none or it cannot be read."""
    return read_json(Path(run_dir) / RECORD)


def read_job(run_dir: Path) -> Optional[dict]:
    """What submit wrote of a submitted run (job id, executor, log paths), or None."""
    return read_json(Path(run_dir) / JOB)


class RunDirBusy(Exception):
    """The run directory is held by another process; str() is one line."""


def _busy(run_dir: Path, fd: int) -> RunDirBusy:
    holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
    return RunDirBusy(f"{run_dir} is in use by {holder} (one run directory, one writer); "
                      "wait for that run, or stop it and run again to resume")


def check_free(run_dir: Path) -> None:
    """Raise RunDirBusy when another process holds run_dir; creates nothing."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody ever held it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise _busy(run_dir, fd) from None
    finally:
        os.close(fd)


def is_held(run_dir: Path) -> bool:
    """Whether a process on this host holds run_dir now (a killed one no longer does)."""
    try:
        check_free(run_dir)
    except RunDirBusy:
        return True
    return False


@contextmanager
def hold(run_dir: Path):
    """One writer per run directory: an exclusive lock on run_dir/.lock, naming its holder. The
    lock is the kernel's (flock), so a holder that died, even by kill -9, has released it."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        raise RunFileError(exc.errno, f"cannot write {run_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        error = _busy(run_dir, fd)
        os.close(fd)
        raise error from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def set_aside(run_dir: Path) -> None:
    """Move a run directory out of the way (--force) rather than delete its results."""
    if Path(run_dir).exists():
        os.replace(run_dir, f"{run_dir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")


def append_line(path: Path, data: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(to_json(data) + "\n")
            f.flush()
    except OSError as exc:
        raise RunFileError(exc.errno, f"cannot write {path}: {exc.strerror}") from None


def write_lines(path: Path, rows: List[dict]) -> None:
    """A JSON-lines file made whole again (metrics.jsonl from the checkpoint's history)."""
    atomic_write(path, lambda f: f.write("".join(to_json(row) + "\n" for row in rows)))
