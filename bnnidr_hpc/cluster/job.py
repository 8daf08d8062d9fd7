"""What runs on every rank of a job: local ranks, torchrun ranks, or a Slurm job through submitit.

Used by: cli.py (`bnnidr-hpc run [--gpus N]`, also under torchrun; `neighbours`), submit.py (SlurmJob is what
submitit pickles), hydra_app.py.

Every rank calls the same `train`, which resumes from the run directory's checkpoint, so the first
start and every restart take one path. On Slurm's warning signal (USR2, sent `signal_delay_s`
before the time limit, or on preemption) or SIGTERM, the ranks agree to stop after the same step,
rank 0 writes the checkpoint and requeues the job (`scontrol requeue`, in a child that ignores
SIGTERM so preemption's SIGTERM cannot kill it), and the requeued job resumes. A job that Slurm
is ending (cancelled, its time limit, a node lost) is not requeued: rank 0 writes that end into
the record (slurm_end.py), as it does a time limit's warning it cannot requeue from (timeout).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch.multiprocessing as mp

from bnnidr_hpc.cluster import slurm_end
from bnnidr_hpc.config.schema import Config, to_dict
from bnnidr_hpc.records import run_files, run_record
from bnnidr_hpc.runtime import distributed
from bnnidr_hpc.runtime.distributed import DistInfo
from bnnidr_hpc.runtime.errors import ConfigError
from bnnidr_hpc.train.loop import record_failure, train


class StopFlag:
    """Set by a stop signal; training polls it between steps (a Python attribute, no sync)."""

    def __init__(self, signals=(signal.SIGUSR2, signal.SIGTERM)):
        from bnnidr_hpc.cluster import job_start

        self.signum: Optional[int] = None
        for sig in signals:
            signal.signal(sig, self._handle)
        if job_start.PENDING in signals:  # it came while the job was still starting
            self._handle(job_start.PENDING, None)

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            print(f"bnnidr-hpc: caught {signal.Signals(signum).name}: checkpointing after this step",
                  file=sys.stderr, flush=True)
        self.signum = self.signum or signum

    def __call__(self) -> bool:
        return self.signum is not None


# ----------------------------------------------------------------------------- local ranks

class RunFailed(Exception):
    """A run that ended with an error; str() is the one line (also in its record)."""


# Local gloo ranks beyond this many per CPU core only wait for each other (and may miss the
# rendezvous): refused. Between one and this many per core: a warning.
MAX_RANKS_PER_CORE = 4


def check_local(c: Config) -> None:
    """What `run` can do on this machine, checked before anything is created."""
    if c.num_nodes != 1:
        raise ConfigError(f"num_nodes={c.num_nodes} is not allowed for run: one machine; use submit --nodes")
    cores = _cores()
    if c.world_size > MAX_RANKS_PER_CORE * cores and not _cuda_ranks(c):
        raise ConfigError(f"num_gpu={c.num_gpu} is not allowed for run here: {c.world_size} CPU ranks on {cores} "
                          f"core(s) (at most {MAX_RANKS_PER_CORE} per core, {MAX_RANKS_PER_CORE * cores}); use fewer "
                          "ranks, or submit them to a cluster")
    if c.run.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("config: run.device='cuda' is not allowed here: this machine has no CUDA device "
                              "(use auto or cpu, or submit to GPU nodes)")


def make_root(root: str) -> None:
    """run.root, the first folder a run makes. Validation only looks (it creates nothing), and a
    root may pass every look and still refuse a folder (/proc, a read-only mount): bad input, exit 2."""
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"config: run.root={root!r} is not allowed: it cannot be created "
                          f"({exc.strerror or exc})") from None


def run_local(c: Config, run_dir: Path) -> dict:
    """Train c.world_size ranks on this machine: this process alone, this process as one of
    torchrun's ranks, or c.world_size spawned ranks (one per GPU, or gloo CPU processes)."""
    check_local(c)
    make_root(c.run.root)
    launched = distributed.describe()
    if launched.source == "torch":  # started by torchrun (or another launcher setting RANK/WORLD_SIZE)
        return train(c, run_dir, launched, StopFlag((signal.SIGTERM, signal.SIGINT)))
    run_files.check_free(run_dir)
    if c.world_size == 1:
        return train(c, run_dir, distributed.describe({}), StopFlag((signal.SIGTERM, signal.SIGINT)))
    if not c.run.threads:  # share the cores instead of oversubscribing them
        c = replace(c, run=replace(c.run, threads=max(1, (os.cpu_count() or 1) // c.world_size)))
    if c.world_size > _cores() and not _cuda_ranks(c):
        print(f"bnnidr-hpc: warning: {c.world_size} CPU ranks on {_cores()} core(s) share them: the run is slower "
              "than with one rank per core", file=sys.stderr, flush=True)
    port = distributed.free_port()
    # A rank that loses its peers says so in one line; torch's C++ warnings would add their stacks.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    ranks = mp.start_processes(_local_rank, args=(c, str(run_dir), port), nprocs=c.world_size,
                               start_method="spawn", join=False)
    # Ctrl-C reaches every rank from the terminal; a SIGTERM sent to this process alone is passed
    # on. Either way the ranks stop together and checkpoint; this process only waits.
    forward = lambda signum, frame: [os.kill(pid, signum) for pid in ranks.pids() if _alive(pid)]
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    # After one rank ends with an error the others find out (a peer's error, a stopped heartbeat)
    # and end themselves within this long, naming the rank they lost; only then are they terminated.
    grace_s = 3 * distributed.Watchdog.interval_for(c.run.rank_timeout_s) + 10
    try:
        while not ranks.join(grace_period=grace_s):
            pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        line = _failure_line(exc, run_dir)
        record_failure(c, run_dir, line)
        raise RunFailed(line) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return run_files.read_record(run_dir)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cuda_ranks(c: Config) -> bool:
    """Ranks on GPUs here (a rank per GPU), not gloo CPU processes."""
    if c.run.device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _failure_line(exc, run_dir: Path) -> str:
    """The first failing rank's error: its exception's last line, else what its record says (a
    rank that found another lost wrote it there), else how the process ended."""
    rank = getattr(exc, "error_index", "?")
    lines = [line for line in str(getattr(exc, "msg", exc)).splitlines() if line.strip()]
    if isinstance(exc, mp.ProcessRaisedException) and lines:
        last = lines[-1].strip()
        if "PeerFailed: " in last:  # this rank only saw another one fail: that one's line
            return last.split("PeerFailed: ", 1)[1]
        return f"rank {rank}: {last}"
    record = run_files.read_record(run_dir) or {}
    if record.get("status") == run_record.FAILED and record.get("error"):
        return record["error"]
    return f"rank {rank}: {lines[0] if lines else exc}"


def _local_rank(rank: int, c: Config, run_dir: str, port: int) -> None:
    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(c.world_size),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    train(c, Path(run_dir), distributed.describe(env), StopFlag((signal.SIGTERM, signal.SIGINT)))


def neighbours_command(config_path: Optional[str], overrides: list, gpus: Optional[int]) -> int:
    """`bnnidr-hpc neighbours [CONFIG] [key=value ...] [--gpus N]`: the graph's checks as if it
    were used (one line, exit 2, before anything is created), the build, rank 0's summary; its
    exit status."""
    from bnnidr_hpc.config.graph_checks import check_graph
    from bnnidr_hpc.config.loading import load
    from bnnidr_hpc.train.graph_stage import summary_line

    c = load(config_path, overrides + ([] if gpus is None else [f"num_gpu={gpus}"]))
    check_graph(c, used=True)
    try:
        found = neighbours_local(c)
    except (RunFailed, OSError) as exc:
        print(f"bnnidr-hpc: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C reaches every local rank: each stops between blocks
        print("bnnidr-hpc: interrupted; the same command resumes from the finished blocks", file=sys.stderr)
        return 3
    if distributed.describe().is_main:  # under torchrun, rank 0 alone speaks
        print(summary_line(found))
    return 0


def neighbours_local(c: Config) -> dict:
    """`bnnidr-hpc neighbours`: build c's k-NN graph on c.world_size ranks here, started as
    run_local starts them (this process, torchrun's ranks, or spawned ones); rank 0's summary."""
    from bnnidr_hpc.train import graph_stage

    check_local(c)
    make_root(c.run.root)
    launched = distributed.describe()
    if launched.source == "torch":
        return graph_stage.build_alone(c, launched)
    if c.world_size == 1:
        return graph_stage.build_alone(c, distributed.describe({}))
    if not c.run.threads:
        c = replace(c, run=replace(c.run, threads=max(1, (os.cpu_count() or 1) // c.world_size)))
    results = mp.get_context("spawn").SimpleQueue()
    try:
        mp.start_processes(_neighbours_rank, args=(c, distributed.free_port(), results), nprocs=c.world_size,
                           start_method="spawn")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        lines = [line for line in str(getattr(exc, "msg", exc)).splitlines() if line.strip()]
        raise RunFailed(f"rank {getattr(exc, 'error_index', '?')}: {lines[-1].strip() if lines else exc}") from None
    return results.get()


def _neighbours_rank(rank: int, c: Config, port: int, results) -> None:
    from bnnidr_hpc.train import graph_stage

    env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(c.world_size),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    found = graph_stage.build_alone(c, distributed.describe(env))
    if rank == 0:
        results.put(found)


# ----------------------------------------------------------------------------- Slurm job

class SlurmJob:
    """What submitit runs on every rank of a job; picklable, no state beyond its config."""

    def __init__(self, config: Config, run_dir: str):
        self.config, self.run_dir = config, run_dir

    def __call__(self) -> dict:
        # Ranks from Slurm's task variables, meeting at the first node (distributed.describe). Every
        # GPU of a node stays visible, so NCCL keeps its peer-to-peer paths; a rank binds cuda:LOCAL_RANK.
        info = distributed.describe()
        stop = StopFlag()
        run_dir = Path(self.run_dir)
        record = train(self.config, run_dir, info, stop)  # a failure is in the record, then raised
        if record["status"] == run_record.DIVERGED:
            raise RuntimeError(f"diverged: {record['error']}")  # the job fails; the record says why
        if record["status"] == run_record.INTERRUPTED:
            if info.is_main:
                self._requeue_or_fail(info, record)
            _wait_to_be_requeued(run_dir)
        return {k: record.get(k) for k in ("status", "run_dir", "final_loss", "ap_out", "ap_retention",
                                           "total_seconds", "world_size", "slurm_job_id")}

    def checkpoint(self, *args, **kwargs):
        """submitit's own handler calls this for a signal that comes after it took over and
        before StopFlag did: nothing is trained yet, so the same job simply starts again."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

    def _requeue_or_fail(self, info: DistInfo, record: dict) -> None:
        from bnnidr_hpc.cluster.status import job_state

        job, limit = info.slurm_job_id, self.config.cluster.max_requeues
        # A warning signal or a preemption leaves the job RUNNING; scancel has already moved it to
        # COMPLETING or CANCELLED by the time its SIGTERM arrives, and a cancelled job stays ended.
        fields = job_state(job)
        state = fields.get("JobState")
        if _requeued_by_slurm(fields):  # `scontrol requeue`, a node failure: Slurm already put it back
            print(f"bnnidr-hpc: job {job} was requeued by Slurm ({state}, restart {fields.get('Restarts')}); "
                  "it resumes from the checkpoint", file=sys.stderr, flush=True)
            return
        ended = slurm_end.ended_by(fields, stopping=True)
        if ended:  # Slurm is ending it: the record says how (timeout, cancelled, node_fail, ...)
            error = slurm_end.why(ended, fields, record, job)
            run_record.mark_ended(Path(self.run_dir), ended, error)
            print(f"bnnidr-hpc: job {job} is {state}: not requeued; {error}", file=sys.stderr, flush=True)
            return
        if state != "RUNNING":
            print(f"bnnidr-hpc: job {job} is {state}: not requeued; submit again to resume", file=sys.stderr)
            return
        # Where the job cannot go on at its time limit's warning, its time limit ended it.
        limited = slurm_end.at_time_limit(fields, self.config.cluster.signal_delay_s)
        if record["restarts"] >= limit:
            self._end(limited, f"interrupted after {record['restarts']} restarts (cluster.max_requeues={limit})")
            return
        print(f"bnnidr-hpc: requeueing job {job} (restart {record['restarts'] + 1})", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60,
                                  preexec_fn=_ignore_sigterm)
            refusal = proc.returncode and (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            refusal = str(exc)
        if refusal:  # e.g. JobRequeue=0 with --no-requeue: "Requested operation is presently disabled"
            self._end(limited, f"interrupted, and Slurm refused to requeue job {job}: "
                      f"{refusal.replace('scontrol: error: ', '')}")

    def _end(self, at_time_limit: bool, reason: str) -> None:
        """The run ends here without a requeue: timeout at the time limit's warning, else failed."""
        if at_time_limit:
            reason = f"Slurm's time limit ({self.config.cluster.timeout_min} min) came, and the job was {reason}"
        run_record.mark_ended(Path(self.run_dir), run_record.TIMEOUT if at_time_limit else run_record.FAILED,
                              f"{reason}; submit again to resume", self.config, to_dict(self.config))


def _requeued_by_slurm(fields: dict) -> bool:
    """Slurm counts a requeue as soon as it is asked for (Restarts), before this start's tasks
    end; SLURM_RESTART_COUNT is the count this start began with."""
    if fields.get("JobState") in ("REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "PENDING"):
        return True
    try:
        return int(fields.get("Restarts", 0)) > int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return False


def _ignore_sigterm() -> None:
    # Runs in the child before exec; an ignored signal stays ignored across exec.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _wait_to_be_requeued(run_dir: Path, seconds: int = 300) -> None:
    """Slurm ends every task when it requeues (or cancels) the job. If rank 0 ended the run instead
    (the record says failed, timeout, ...), or nothing happens, end here rather than hold the allocation."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        status = (run_files.read_record(run_dir) or {}).get("status")
        if status is not None and status not in (run_record.INTERRUPTED, run_record.RUNNING):
            sys.exit(1)
        time.sleep(1)
    sys.exit(3)
