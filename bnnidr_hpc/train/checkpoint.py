"""What a run keeps between sessions: the TrainState, and the checkpoint that holds it.

Used by: train/loop.py.

checkpoint.pt holds the model's and optimizers' state dicts, the RNG states and the TrainState.
It is written atomically by rank 0 after every epoch and at an interruption, so the last good
one survives a kill; every rank loads it, and a restart continues from its epoch and step.
The epochs' checkpoints are written and fsynced on a thread of their own (Writer) while training
goes on: 4-5 ms of hps_00043's epochs on this machine (benchmarks/bench_overheads.py).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import torch

from bnnidr_hpc.runtime import atomic_files
from bnnidr_hpc.runtime.errors import ConfigError


@dataclass
class TrainState:
    """A run's progress; everything a restart needs besides the weights and optimizer moments."""

    epoch: int = 0              # epochs completed
    step: int = 0               # steps done of the current epoch (> 0 only after an interruption)
    # The interrupted epoch's loss sums so far: every rank's own float32 (stress, KL), by rank,
    # so that the resumed epoch adds up as the uninterrupted one would.
    rank_sums: Optional[List[List[float]]] = None
    stress_sum: float = 0.0     # the same, summed over the ranks, in checkpoints written before rank_sums
    kl_sum: float = 0.0
    history: List[dict] = field(default_factory=list)  # one metrics entry per completed epoch
    ap_in: Optional[float] = None                      # retrieval AP in the input space
    reference: Optional[dict] = None  # the input AP's error and the baselines' scores (evaluate.py), once
    restarts: int = 0
    # From each session's last checkpoint to the next session's start: the wait for a requeue,
    # or the work a kill threw away.
    seconds_lost: float = 0.0
    seconds_before: float = 0.0  # time of the earlier sessions, for the record's total_seconds
    relevance_centre: Optional[float] = None  # relevance_prior's centre (relevance.py): rank 0's, kept


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def save(path: Path, model, optimizers, state: TrainState, device: torch.device, process_started: float) -> None:
    """The checkpoint, with when it was written and how long the run had taken by then (every
    session so far), so a restart after any end, kill -9 included, counts each session."""
    _write(path, _serialise(model, optimizers, state, device, process_started))


class Writer:
    """Checkpoints written on a thread of their own, one at a time: save() takes the snapshot
    (serialises it) in the caller's thread, then waits for the write before it and raises that
    write's error (a full disk, as save() would have) before starting this one; wait() does the
    same for the last one, join() waits without raising (an exception already in flight). So a
    full disk is noticed one epoch later than a write in the training thread would notice it;
    the checkpoint before the failed one is the run's."""

    def __init__(self):
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def save(self, path: Path, model, optimizers, state: TrainState, device: torch.device,
             process_started: float) -> None:
        blob = _serialise(model, optimizers, state, device, process_started)
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(path, blob), name="checkpoint", daemon=True)
        self._thread.start()

    def _write(self, path: Path, blob: io.BytesIO) -> None:
        try:
            _write(path, blob)
        except BaseException as exc:  # noqa: BLE001 - raised in the training thread by wait()
            self._error = exc

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wait(self) -> None:
        self.join()
        error, self._error = self._error, None
        if error is not None:
            raise error


def _write(path: Path, blob: io.BytesIO) -> None:
    atomic_files.atomic_write(path, lambda f: f.write(blob.getbuffer()), binary=True)


def _serialise(model, optimizers, state: TrainState, device: torch.device, process_started: float) -> io.BytesIO:
    now = time.time()
    payload = {"model": model.state_dict(), "optimizers": optimizers.state_dict(),
               "state": asdict(state), "rng": _rng_state(device),
               "saved_at": now, "elapsed_s": state.seconds_before + now - process_started,
               "device_type": device.type}
    # Serialised in memory first: torch.save reports a full disk as an opaque RuntimeError, a
    # plain write as ENOSPC; and the bytes are the snapshot a Writer's thread writes.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer


def resume(path: Path, model, optimizers, device: torch.device, now: float) -> TrainState:
    """A new TrainState, or the checkpoint's with the model, optimizers and RNGs restored from it
    and this restart counted."""
    if not path.exists():
        return TrainState()
    payload = torch.load(path, map_location=device, weights_only=False)
    made_on = payload.get("device_type", device.type)
    if made_on != device.type:  # the generator makes other points on another device type
        raise ConfigError(f"run.device: this run's data were made on {made_on} and it resumes on {device.type}, "
                          f"which would train on other points; resume it with run.device={made_on}")
    model.load_state_dict(payload["model"])
    optimizers.load_state_dict(payload["optimizers"])
    _set_rng_state(payload["rng"], device)
    state = TrainState(**payload["state"])
    state.restarts += 1
    state.seconds_lost += max(0.0, now - payload["saved_at"])
    state.seconds_before = payload["elapsed_s"]
    return state
