"""A run directory's files, and the one schema of its record, for the writer and every reader.

Used by: train.py (builds and writes the record), job.py, status.py, cli.py, and tools/collect.py,
which imports this module alone: standard library only, no torch, no training code.

Layout of a run directory (decided once, by config.run_dir_for):
  config.yaml     the resolved config
  record.json     one machine-readable record of the job; rewritten after every epoch
  metrics.jsonl   one line per epoch, flushed as written
  checkpoint.pt   model, optimizers, RNG states and the TrainState; the last good one survives a kill
  tb/             TensorBoard events
  job.json        submit.py: job id, executor, log paths, resources, the cluster that took the job,
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

import errno
import fcntl
import hashlib
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional

if TYPE_CHECKING:  # for type hints only: this module imports nothing of the package at run time
    from bnnidr_hpc.config.schema import Config

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # bnnidr_hpc/, the code a job runs
SCHEMA = "bnnidr-hpc/record/1"  # readers take records of this schema only
RECORD = "record.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
TENSORBOARD = "tb"
JOB = "job.json"
LOCK = ".lock"
MANIFEST = "sweep.json"

# Statuses a record can hold.
RUNNING, COMPLETED, FAILED, INTERRUPTED, DIVERGED = "running", "completed", "failed", "interrupted", "diverged"



class RunFileError(OSError):
    """A run file that could not be written (full disk, permissions); str() is one line."""

    def __str__(self) -> str:
        return str(self.strerror)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; collaborators on a shared file system read what the umask allows.
FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write through `write(file)` into a temp file beside `path`, fsync, then rename over it:
    the old file stays whole until the new one is. A failed write (ENOSPC...) is one line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise RunFileError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, RunFileError):
            name = errno.errorcode.get(exc.errno, "error") if exc.errno else "error"
            raise RunFileError(exc.errno, f"cannot write {path}: {exc.strerror or exc} ({name}); "
                               "the file it would replace is kept") from None
        raise


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


def problem(record: Any) -> Optional[str]:
    """Why a parsed record.json cannot be used by a reader (None: it can)."""
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        return f"not a bnnidr-hpc record (no schema {SCHEMA})"
    if not isinstance(record.get("config"), dict) or not isinstance(record.get("world_size"), int):
        return "a bnnidr-hpc record without config or world_size"
    return None


def is_complete(record: dict) -> bool:
    return record.get("status") == COMPLETED and record.get("epochs_done") == record.get("max_epochs")


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


def versions() -> dict:
    import numpy
    import torch

    from bnnidr_hpc.runtime import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "bnnidr_hpc": __version__, "cuda": torch.version.cuda}


def git_state() -> dict:
    """Commit and dirty flag of the checkout holding this package, if it is one."""
    here = PACKAGE_DIR

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


def code_state() -> dict:
    """Where this package's code was imported from and a digest of its sources: a submitted job
    runs a frozen copy (submit.py), named by this digest."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"path": str(PACKAGE_DIR), "sha256": digest.hexdigest()[:16]}


def process_start_time() -> float:
    """Wall-clock time this process started (Linux /proc), else now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


# ----------------------------------------------------------------------------- building the record

def config_record(c: "Config", config_dict: dict, run_dir: Path) -> dict:
    """The record's fields that the config alone decides; also a job's whole record when it failed
    before training wrote anything."""
    return {
        "schema": SCHEMA,
        "run_dir": str(Path(run_dir).resolve()),
        "name": c.run.name,
        "config": config_dict,
        "n": c.data.n, "p": c.data.p, "d": c.data.d if c.data.source == "sphere" else None,  # a file's d is unknown
        "input_dim": c.input_dim, "output_dim": c.output_dim,
        "batch_size": c.batch_size, "global_batch_size": c.global_batch,
        "world_size": c.world_size, "num_gpu": c.num_gpu, "num_nodes": c.num_nodes,
        "max_epochs": c.max_epochs, "epochs_done": 0,
    }


def start_record(c: "Config", config_dict: dict, run_dir: Path, *, device_type: str, devices: List[str],
                 cpu_matmul: Optional[str], steps_per_epoch: int, data_cached: bool, hosts: List[str],
                 slurm_job_id: Optional[str], intrinsic_dim: dict) -> dict:
    """The record of a run that starts (or resumes) training: the config's fields and where it runs."""
    return {
        **config_record(c, config_dict, run_dir),
        "device_type": device_type, "devices": devices,
        "cpu_matmul": cpu_matmul,  # the library of the large float32 CPU products (products.py)
        "steps_per_epoch": steps_per_epoch, "data_cached": data_cached,
        "hostname": hosts[0], "hosts": hosts, "slurm_job_id": slurm_job_id,  # every rank's host, by rank
        "versions": versions(), "git": git_state(), "code": code_state(),
        "intrinsic_dim": intrinsic_dim,
    }


def update_record(record: dict, state, status: str, session_started: float,
                  process_started: float) -> None:
    """The record's figures from the epochs done so far (state.history), in place."""
    history = state.history
    epoch_seconds = [h["epoch_seconds"] for h in history]
    full = [h["samples_per_s"] for h in history if not h["partial"]]
    steady = full[1:] or full  # the first full epoch carries the start-up
    samples_per_s = statistics.median(steady) if steady else None
    last_ap = next((h for h in reversed(history) if h["ap"] is not None or h.get("knn_recall") is not None), None)
    now = time.time()
    record.update({
        "status": status,
        "epochs_done": state.epoch,
        "epochs": history,
        "epoch_seconds": epoch_seconds,
        "first_epoch_seconds": epoch_seconds[0] if epoch_seconds else None,
        "steady_epoch_seconds": statistics.median(epoch_seconds[1:] or epoch_seconds) if epoch_seconds else None,
        "slowest_rank_seconds": max((max(h["rank_epoch_seconds"]) for h in history), default=None),
        "train_seconds": sum(epoch_seconds),
        "total_seconds": state.seconds_before + now - process_started,  # over every restart
        "session_seconds": now - session_started,
        "samples_per_s": samples_per_s,
        "samples_per_s_per_gpu": None if samples_per_s is None else samples_per_s / record["world_size"],
        "final_loss": history[-1]["loss"] if history else None,
        # its two terms: the objective's (config loss) and, for a Bayesian model, the KL term
        "final_data_loss": history[-1].get("data_loss") if history else None,
        "final_kl": history[-1]["kl"] if history else None,
        "ap_in": state.ap_in,
        "ap_in_se": (state.reference or {}).get("ap_in_se"),
        "ap_out": last_ap["ap"] if last_ap else None,
        "ap_out_se": last_ap.get("ap_se") if last_ap else None,
        "ap_retention": last_ap["ap_retention"] if last_ap else None,
        "knn_recall": last_ap.get("knn_recall") if last_ap else None,
        # PCA and a random projection to the same output_dim, on the same held-out points
        "baselines": (state.reference or {}).get("baselines"),
        "restarts": state.restarts,
        "seconds_lost": state.seconds_lost,
        "updated_at": now,
    })


def mark_failed(run_dir: Path, error: str, c: "Config", config_dict: dict) -> None:
    """Record a failure; a job that failed before training wrote anything still gets a record."""
    record = read_record(run_dir) or config_record(c, config_dict, run_dir)
    record.update(status=FAILED, error=error, updated_at=time.time())
    write_json(Path(run_dir) / RECORD, record)


# ----------------------------------------------------------------------------- reading helpers

def baseline(record: dict, name: str, key: str = "ap") -> Optional[float]:
    """A baseline's figure (name: pca or random; key: ap, ap_se, ap_retention, knn_recall) from a
    record, None where the record holds no usable (finite) number there."""
    scores = record.get("baselines")
    scores = scores.get(name) if isinstance(scores, dict) else None
    value = scores.get(key) if isinstance(scores, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def fmt(value, spec: str = ".4f") -> str:
    """A record's value for a table: '-' where there is none."""
    return "-" if value is None else format(value, spec)
