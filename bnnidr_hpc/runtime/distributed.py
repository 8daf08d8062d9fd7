"""Where this process stands: rank, world, device, Slurm job. Every environment variable about
ranks, devices and Slurm is read here, once, into one frozen `DistInfo`; training sees only that.
Here too the process group is joined (rendezvous), watched (Watchdog: a lost rank is named) and
left (shutdown); the collectives that travel over it are in collectives.py.

Used by: cluster/job.py (`run`, `run --gpus N`, torchrun, Slurm jobs through submitit),
train/loop.py (device, init, shutdown), train/session.py (every rank's host), train/step.py,
train/evaluate.py and train/intrinsic.py (DistInfo, pick_device), cli.py (is this rank 0?).

Sources, first match wins (DistInfo.source says which):
  RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT   "torch": torchrun, `run --gpus N`
  SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID                  "srun": Slurm's tasks (submitted jobs)
  SUBMITIT_LOCAL_GLOBALID / _NTASKS / _LOCALID / _JOB_ID       "submitit-local": submit --local, and
      Hydra's bnnidr_local launcher (one machine: 127.0.0.1, a port from the job's pid)
  nothing                                                      "single": one process, rank 0 of 1
Also read here: SLURM_JOB_ID / SLURM_ARRAY_JOB_ID / SLURM_ARRAY_TASK_ID (the record's job id),
SLURM_JOB_NODELIST and SLURMD_NODENAME (where the ranks are), SLURM_CPUS_PER_TASK (threads per
rank), TORCHELASTIC_USE_AGENT_STORE (torchrun: join its store instead of starting one).

A Slurm job's ranks meet at the allocation's first node: at MASTER_ADDR / MASTER_PORT where the
job's environment sets them (a profile's setup line may), else at that node's name where it
resolves, else at the address Slurm knows it by (NodeAddr), on a port drawn from the job id below
Linux's ephemeral range (32768-60999), so no outgoing connection can hold it. A rendezvous that
cannot connect fails within run.rank_timeout_s, naming address and port; the same timeout bounds
how long a rank waits for a lost one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, List, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    hostname: str = ""
    slurm_job_id: Optional[str] = None
    cpus_per_task: int = 0  # cores Slurm gave each rank (0: not under Slurm)
    source: str = "single"  # which variables described the ranks: torch, srun, submitit-local or single
    agent_store: bool = False  # torchrun's agent already serves the rendezvous store at MASTER_PORT

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env, *names, default: int) -> int:
    for name in names:
        if env.get(name):
            return int(env[name])
    return default


# Slurm jobs' rendezvous ports: below Linux's ephemeral range (32768-60999).
SLURM_PORTS = (20000, 32000)


def describe(env: Optional[dict] = None) -> DistInfo:
    env = dict(os.environ if env is None else env)
    job = env.get("SLURM_ARRAY_JOB_ID") and f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    common = dict(
        hostname=env.get("SLURMD_NODENAME") or socket.gethostname(),
        slurm_job_id=job or env.get("SLURM_JOB_ID"),
        cpus_per_task=_int(env, "SLURM_CPUS_PER_TASK", default=0),
        agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
    )
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                        local_rank=_int(env, "LOCAL_RANK", default=0), source="torch",
                        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                        master_port=_int(env, "MASTER_PORT", default=29500), **common)
    if "SLURM_PROCID" in env and _int(env, "SLURM_NTASKS", default=1) > 1:
        low, high = SLURM_PORTS
        return DistInfo(rank=int(env["SLURM_PROCID"]), world_size=int(env["SLURM_NTASKS"]),
                        local_rank=_int(env, "SLURM_LOCALID", default=0), source="srun",
                        master_addr=env.get("MASTER_ADDR") or first_node_address(env),
                        master_port=_int(env, "MASTER_PORT", default=low + _int(env, "SLURM_JOB_ID", default=0)
                                         % (high - low)), **common)
    if _int(env, "SUBMITIT_LOCAL_NTASKS", default=1) > 1:
        low, high = SLURM_PORTS
        return DistInfo(rank=_int(env, "SUBMITIT_LOCAL_GLOBALID", default=0),
                        world_size=int(env["SUBMITIT_LOCAL_NTASKS"]),
                        local_rank=_int(env, "SUBMITIT_LOCAL_LOCALID", default=0), source="submitit-local",
                        master_port=low + _int(env, "SUBMITIT_LOCAL_JOB_ID", default=0) % (high - low), **common)
    return DistInfo(**common)


def first_node_address(env: dict) -> str:
    """The allocation's first node as the other nodes can reach it: its name where that
    resolves, else the address Slurm knows it by (NodeAddr)."""
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    first = _scontrol("show", "hostnames", nodes).split()[:1] if nodes else []
    if not first:
        return "127.0.0.1"
    try:
        socket.getaddrinfo(first[0], None)
        return first[0]
    except OSError:
        fields = dict(t.split("=", 1) for t in _scontrol("show", "node", "-o", first[0]).split() if "=" in t)
        return fields.get("NodeAddr") or first[0]


def _scontrol(*args: str) -> str:
    try:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def pick_device(info: DistInfo, wanted: str = "auto") -> torch.device:
    """One GPU per rank (its local rank) when GPUs are present, else the CPU."""
    if wanted == "cpu" or (wanted == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is visible")
    return torch.device("cuda", info.local_rank % torch.cuda.device_count())


def init(info: DistInfo, device: torch.device, timeout_s: float = 120.0,
         on_lost: Optional[Callable[[int, str], None]] = None) -> Optional["Watchdog"]:
    """Join the process group: NCCL bound to this rank's GPU, or gloo on the CPU. A collective
    that waits longer than timeout_s fails; a rank that stops answering (killed, stopped) is
    reported to on_lost(rank, message) by the Watchdog this returns, within timeout_s."""
    if not info.distributed or dist.is_initialized():
        return None
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    if info.agent_store:  # torchrun's agent holds MASTER_PORT: env:// joins its store
        kwargs["init_method"] = "env://"
    else:
        kwargs["store"] = rendezvous(info, timeout_s)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=info.world_size,
        # Later than the watchdog, which names a lost rank; this catches ranks alive but stuck.
        timeout=timedelta(seconds=timeout_s + 3 * Watchdog.interval_for(timeout_s) + 5), **kwargs)
    return Watchdog(info, timeout_s, on_lost) if on_lost is not None else None


class RendezvousFailed(RuntimeError):
    """The ranks could not meet; str() is one line naming the address and port."""


def rendezvous(info: DistInfo, timeout_s: float) -> "dist.TCPStore":
    """Rank 0 serves the store at MASTER_PORT and waits for every rank; the others connect to
    MASTER_ADDR. Either side gives up after timeout_s with one line."""
    started = time.time()
    try:
        return dist.TCPStore(info.master_addr, info.master_port, info.world_size, is_master=info.is_main,
                             timeout=timedelta(seconds=timeout_s), wait_for_workers=True)
    except Exception as exc:  # noqa: BLE001 - DistNetworkError, DistStoreError, RuntimeError, OSError
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RendezvousFailed(
            f"rank {info.rank} on {info.hostname}: rendezvous at {info.master_addr}:{info.master_port} failed after "
            f"{time.time() - started:.0f} s ({why}); set MASTER_ADDR in cluster.setup to an address every node "
            "reaches") from None


class Watchdog:
    """Every rank beats a counter in the rendezvous store from a thread of its own; a rank whose
    counter stops for timeout_s (killed, stopped with SIGSTOP, its node gone), or that posts an
    error, is named with its host to on_lost. Counters, not clocks: nodes' clocks may differ.
    A store that no longer answers means rank 0, which serves it, is gone."""

    PREFIX = "bnnidr/"

    @staticmethod
    def interval_for(timeout_s: float) -> float:
        return max(0.2, min(5.0, timeout_s / 4))

    def __init__(self, info: DistInfo, timeout_s: float, on_lost: Callable[[int, str], None]):
        self.info, self.timeout_s, self.on_lost = info, timeout_s, on_lost
        self.interval = self.interval_for(timeout_s)
        self.store = dist.TCPStore(info.master_addr, info.master_port, is_master=False,
                                   timeout=timedelta(seconds=max(timeout_s, 10)))
        self.store.set(f"{self.PREFIX}host/{info.rank}", info.hostname or socket.gethostname())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bnnidr-watchdog", daemon=True)
        self._thread.start()

    def post_error(self, message: str) -> None:
        """Tell the other ranks why this one is about to end."""
        try:
            self.store.set(f"{self.PREFIX}error/{self.info.rank}", message)
        except Exception:  # noqa: BLE001 - the store may be gone with rank 0; nothing to tell then
            pass

    def peer_error(self, wait_s: float = 5.0) -> Optional[str]:
        """Why another rank failed: what it said (post_error), or, for one that ended without a
        word (killed, its node gone), that its heartbeat stopped: a collective that broke because
        that rank exited is reported as that rank's loss, not as the transport's error. Waits
        up to wait_s, or 3 heartbeats where those are longer."""
        others = [r for r in range(self.info.world_size) if r != self.info.rank]
        started = time.monotonic()
        first_beats = None
        while True:
            try:
                for r in others:
                    if self.store.check([self._key("error", r)]):
                        return f"rank {r} on {self._host(r)} failed: {self.store.get(self._key('error', r)).decode()}"
                beats = {r: self.store.add(self._key("beat", r), 0) for r in others
                         if not self.store.check([self._key("done", r)])}
                first_beats = beats if first_beats is None else first_beats
                if time.monotonic() - started > 2.5 * self.interval:  # a live rank has beaten twice by now
                    silent = [r for r in beats if beats[r] == first_beats.get(r)]
                    if silent:
                        return (f"rank {silent[0]} on {self._host(silent[0])} was lost: its process ended without "
                                "a word (killed, or its node failed)")
            except Exception:  # noqa: BLE001 - the store went with rank 0
                return self._rank0_gone()
            if time.monotonic() - started > max(wait_s, 3 * self.interval):
                return None
            time.sleep(0.05)

    def stop(self) -> None:
        """This rank ends normally: the others stop watching it."""
        self._stop.set()
        self._thread.join()
        try:
            self.store.set(f"{self.PREFIX}done/{self.info.rank}", "1")
        except Exception:  # noqa: BLE001
            pass

    def _key(self, kind: str, rank: int) -> str:
        return f"{self.PREFIX}{kind}/{rank}"

    def _host(self, rank: int) -> str:
        key = self._key("host", rank)
        return self.store.get(key).decode() if self.store.check([key]) else "an unknown host"

    def _run(self) -> None:
        others = [r for r in range(self.info.world_size) if r != self.info.rank]
        seen = {r: (-1, time.monotonic()) for r in others}
        while not self._stop.wait(self.interval):
            try:
                self.store.add(self._key("beat", self.info.rank), 1)
                for r in others:
                    if self.store.check([self._key("done", r)]):
                        continue
                    if self.store.check([self._key("error", r)]):
                        error = self.store.get(self._key("error", r)).decode()
                        return self.on_lost(r, f"rank {r} on {self._host(r)} failed: {error}")
                    beats = self.store.add(self._key("beat", r), 0)
                    if beats != seen[r][0]:
                        seen[r] = (beats, time.monotonic())
                    elif time.monotonic() - seen[r][1] > self.timeout_s:
                        return self.on_lost(r, f"rank {r} on {self._host(r)} has not answered for "
                                               f"{self.timeout_s:.0f} s (killed, stopped or hung; run.rank_timeout_s)")
            except Exception:  # noqa: BLE001 - any store failure: the rank serving it is gone
                if self._stop.is_set():
                    return None
                return self.on_lost(0, self._rank0_gone())
        return None

    def _rank0_gone(self) -> str:
        return f"rank 0 (which serves the rendezvous at {self.info.master_addr}:{self.info.master_port}) is gone"


def shutdown(together: bool = True) -> None:
    """Leave the process group; `together` waits for every rank first (gloo aborts a rank that tears
    down while another still talks to it), which a failing rank skips so it cannot hang."""
    if dist.is_initialized():
        try:
            if together:
                if dist.get_backend() == "gloo":
                    # A gloo barrier keeps the collectives still in flight when it starts, and
                    # its worker thread may release them (and their tensors, taking the GIL)
                    # after this process has begun to exit: SIGABRT (seen in a core dump).
                    # The monitored barrier meets through point-to-point messages instead.
                    dist.monitored_barrier()
                else:
                    dist.barrier()
        finally:
            dist.destroy_process_group()


def all_hosts(info: DistInfo) -> List[str]:
    """Every rank's host, by rank (one gather, at setup)."""
    if not info.distributed:
        return [info.hostname]
    hosts: List[Optional[str]] = [None] * info.world_size
    dist.all_gather_object(hosts, info.hostname)
    return [str(h) for h in hosts]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
