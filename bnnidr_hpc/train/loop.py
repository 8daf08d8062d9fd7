"""Training: one plain function, config + run directory + distributed facts in, record out.

Used by: cluster/job.py (`bnnidr-hpc run`, local ranks, Slurm jobs: train, record_failure),
cli.py (one_line), tests, benchmarks.

Every entry point calls `train`. It resumes from the run directory's checkpoint when there is one,
so the first start and every restart take the same path: setup (session.py: data, model,
optimizers, the checkpoint's TrainState), one `_epoch` after another, then `_finish`. Only rank 0
writes files.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from bnnidr_hpc.config.schema import Config, to_dict
from bnnidr_hpc.records import run_files, run_record, tensorboard
from bnnidr_hpc.runtime import allocator, collectives, distributed, products
from bnnidr_hpc.runtime.distributed import DistInfo
from bnnidr_hpc.runtime.errors import ConfigError
from bnnidr_hpc.train import checkpoint, relevance
from bnnidr_hpc.train.checkpoint import TrainState
from bnnidr_hpc.train.evaluate import with_retention
from bnnidr_hpc.train.session import Session, setup
from bnnidr_hpc.train.stopping import StopPoll


class PeerFailed(RuntimeError):
    """Another rank failed (str(): which, where and why); this one's collective broke with it."""


class Diverged(Exception):
    """The loss became non-finite or blew up; str() is the reason, one line."""

    def __init__(self, reason: str, epoch: int, step: int):
        super().__init__(reason)
        self.epoch, self.step = epoch, step


def train(c: Config, run_dir: Path, info: Optional[DistInfo] = None,
          stop_requested: Callable[[], bool] = lambda: False) -> dict:
    """Train (or resume) the run in run_dir; returns its record (status completed, interrupted or
    diverged). An exception is written to the record as failed, with its line, and raised again."""
    info = info or DistInfo()
    if info.world_size != c.world_size:
        raise ConfigError(f"world size: this process is rank {info.rank} of {info.world_size} ({info.source}), "
                          f"but num_nodes x num_gpu = {c.world_size}; launch as many ranks as the config says")
    run_dir = Path(run_dir)
    with run_files.hold(run_dir) if info.is_main else contextlib.nullcontext():
        return _train_holding(c, run_dir, info, stop_requested)


def _train_holding(c: Config, run_dir: Path, info: DistInfo, stop_requested) -> dict:
    session_started = time.time()

    def on_lost(rank: int, message: str) -> None:  # from the watchdog's thread: end this process now
        print(f"bnnidr-hpc: {message}; ending the run", file=sys.stderr, flush=True)
        if info.rank == 0 or (rank == 0 and info.rank == 1):  # one survivor writes the record
            record_failure(c, run_dir, message)
        os._exit(EXIT_LOST_RANK)

    watchdog = None
    try:
        device = distributed.pick_device(info, c.run.device)
        # One thread per core the rank owns: more would oversubscribe the cores and spin-wait.
        threads = c.run.threads or info.cpus_per_task
        if threads:
            torch.set_num_threads(threads)
        products.use(c.run.cpu_matmul)
        allocator.keep_freed_memory()
        watchdog = distributed.init(info, device, c.run.rank_timeout_s, on_lost)
        session, state = setup(c, run_dir, info, device, session_started)
        record = _train_epochs(session, state, stop_requested)
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit, ConfigError)):  # bad input is not the run's end
            line = one_line(exc)
            peer = watchdog.peer_error() if watchdog is not None and _broken_collective(exc) else None
            if watchdog is not None and peer is None:
                watchdog.post_error(line)
            if info.is_main:
                record_failure(c, run_dir, peer or line)
            if peer is not None:
                # A peer that failed and exited broke the collective here first: its reason is the run's.
                distributed.shutdown(together=False)
                raise PeerFailed(peer) from None
        distributed.shutdown(together=False)
        raise
    if watchdog is not None:
        watchdog.stop()
    distributed.shutdown()
    return record


# A rank that found another one lost ends with this status (os._exit: the others may hold locks).
EXIT_LOST_RANK = 4


def _broken_collective(exc: BaseException) -> bool:
    words = ("gloo", "NCCL", "Connection reset", "closed by peer")
    return isinstance(exc, RuntimeError) and any(w in str(exc) for w in words)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def record_failure(c: Config, run_dir: Path, line: str) -> None:
    """The record says failed and why; where even that cannot be written (a full disk), the
    error itself still reaches the terminal."""
    try:
        run_record.mark_failed(run_dir, line, c, to_dict(c))
    except OSError:  # RunFileError included
        pass


def _train_epochs(s: Session, state: TrainState, stop_requested: Callable[[], bool]) -> dict:
    try:
        return _train_epochs_writing(s, state, stop_requested)
    finally:
        s.checkpoints.join()  # _finish raised its error, or another exception is on its way


def _train_epochs_writing(s: Session, state: TrainState, stop_requested: Callable[[], bool]) -> dict:
    poll = StopPoll(stop_requested, s.info.world_size)
    for epoch in range(state.epoch, s.c.max_epochs):
        try:
            entry = _epoch(s, state, epoch, poll)
            _check_divergence(s.c, state, entry)
        except Diverged as why:
            kept = f"the checkpoint of epoch {state.epoch} is kept" if state.epoch else "no epoch had completed"
            s.record.update(error=f"{why}; {kept}", diverged_at={"epoch": why.epoch, "step": why.step})
            return _finish(s, state, run_record.DIVERGED)
        if entry is None:
            return _finish(s, state, run_record.INTERRUPTED)
        state.epoch, state.step, state.stress_sum, state.kl_sum, state.rank_sums = epoch + 1, 0, 0.0, 0.0, None
        state.history.append(entry)
        s.update_record(state, run_record.RUNNING)
        if s.info.is_main:
            s.checkpoints.save(s.run_dir / run_files.CHECKPOINT, s.model, s.optimizers, state, s.device,
                               s.process_started)
            run_files.append_line(s.run_dir / run_files.METRICS, entry)
            tensorboard.log_epoch(s.tensorboard(state), entry)
        _show_progress(s, entry)
    return _finish(s, state, run_record.COMPLETED)


def _check_divergence(c: Config, state: TrainState, entry: Optional[dict]) -> None:
    """A whole epoch's loss that blew up past run.diverge_factor x the first epoch's."""
    if entry is None:
        return
    steps = entry["epoch"], None
    if not math.isfinite(entry["loss"]):
        raise Diverged(f"non-finite loss ({entry['loss']}) in epoch {entry['epoch']}", *steps)
    first = state.history[0]["loss"] if state.history else None
    if c.run.diverge_factor and first and entry["loss"] > c.run.diverge_factor * first:
        raise Diverged(f"loss {entry['loss']:.4g} in epoch {entry['epoch']} is over run.diverge_factor="
                       f"{c.run.diverge_factor:g} x the first epoch's {first:.4g}", *steps)


def _epoch(s: Session, state: TrainState, epoch: int, poll: StopPoll) -> Optional[dict]:
    """Train one epoch (from state.step) and evaluate; its metrics entry, or None when the ranks
    agreed to stop, at the latest after its last step (state then holds the partial epoch)."""
    c, world, steps = s.c, s.info.world_size, s.loader.steps_per_epoch
    s.model.train()
    # Rank 0 wrote the last epoch's files while the others went on to wait in the first step:
    # their clocks would count its writing as training time and make them look like stragglers.
    collectives.barrier()
    epoch_started = time.perf_counter()
    poll.start_epoch()
    # stress, KL: summed on the device, read once per epoch; an interrupted epoch's go on from
    # this rank's own float32 sums, so the epoch's loss is bit for bit the uninterrupted one's
    sums = (torch.zeros(2, device=s.device) if state.rank_sums is None else
            torch.tensor(state.rank_sums[s.info.rank], dtype=torch.float32, device=s.device))
    lrs = s.optimizers.set_lr(epoch + state.step / steps)  # also when no step is left to run
    masks = (relevance.epoch_masks(s.relevance_prior, c.seed, epoch, steps, s.device)
             if s.relevance_prior is not None else None)
    # An epoch stopped after its last step has only its end left to do.
    batches = s.loader.epoch(epoch, state.step) if state.step < steps else ()
    for step, batch in enumerate(batches, start=state.step):
        lrs = s.optimizers.set_lr(epoch + step / steps)
        keep = () if masks is None else (masks[step],)  # the relevance prior's units, after the batch
        sums += torch.stack(s.train_step(*batch, *keep))
        if s.first_step_at is None:
            _first_step(s)
        stop, non_finite = poll.after_step(sums, last_of_epoch=step + 1 == steps)
        if non_finite:
            raise Diverged(f"non-finite loss in epoch {epoch + 1} by step {step + 1} of {steps}", epoch + 1, step + 1)
        if stop:
            state.rank_sums = collectives.gather_floats(sums.tolist(), s.device)  # float32 values, exact
            state.step = step + 1
            return None
    # The epoch's only host synchronisations: the loss sums and the evaluation.
    totals = collectives.all_reduce_sum(_rank_sums(sums, world))
    earlier = torch.tensor([state.stress_sum, state.kl_sum], dtype=torch.float64)  # an older checkpoint's
    stress_total, kl_total = (totals.cpu() + earlier).tolist()
    epoch_seconds = time.perf_counter() - epoch_started
    rank_seconds = [r[0] for r in collectives.gather_floats([epoch_seconds], s.device)]
    eval_started = time.perf_counter()
    scores = {"ap": None, "ap_se": None, "ap_retention": None, "knn_recall": None}
    if epoch + 1 == c.max_epochs or (epoch + 1) % c.eval.every == 0:
        s.averager.sync_buffers()
        if state.reference is None:
            _evaluate_references(s, state)
        scores = with_retention(s.evaluator.model_scores(s.model), state.ap_in)
    return {
        "epoch": epoch + 1,
        "loss": (stress_total + kl_total) / steps,
        "data_loss": stress_total / steps,  # the objective's term (config loss), without the KL
        "kl": kl_total / steps,
        **scores,
        "lr": lrs,
        "epoch_seconds": max(rank_seconds),
        "rank_epoch_seconds": rank_seconds,
        "eval_seconds": time.perf_counter() - eval_started,
        "samples_per_s": c.global_batch * (steps - state.step) / max(rank_seconds),
        "partial": state.step > 0,
    }


def _evaluate_references(s: Session, state: TrainState) -> None:
    """The input space's AP and the baselines at the same output size (evaluate.py), once per run,
    at its first evaluation rather than before the first step."""
    inputs = s.evaluator.input_scores()
    state.ap_in = inputs["ap"]
    baselines = s.evaluator.baseline_scores(s.c.output_dim, s.c.seed)
    state.reference = {"ap_in_se": inputs["ap_se"],
                       "baselines": {name: with_retention(b, state.ap_in) for name, b in baselines.items()}}


def _rank_sums(sums: torch.Tensor, world: int) -> torch.Tensor:
    """What a rank adds to the all-reduce of (stress, KL): its stress share, and 1/world of the KL
    term, which every rank computes whole."""
    return (sums / torch.tensor([1.0, world], device=sums.device)).double()


def _first_step(s: Session) -> None:
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    s.first_step_at = time.time()
    s.record.setdefault("time_to_first_step_s", s.first_step_at - s.process_started)
    s.record.setdefault("first_step_at", s.first_step_at)


def _finish(s: Session, state: TrainState, status: str) -> dict:
    """The record's last word. A diverged run keeps the last finite checkpoint as it is."""
    s.checkpoints.wait()
    if s.progress is not None:
        s.progress.close()
    if status == run_record.COMPLETED and s.relevance_prior is not None:  # every rank: the APs are gathered
        s.record["relevance"] = relevance.result(state.relevance_centre, s.relevance_prior,
                                                 s.evaluator.prefix_scores(s.model), state.ap_in)
    if status == run_record.COMPLETED and s.info.is_main:
        s.record["intrinsic_dim"].update(s.evaluator.gallery_dimensions(s.model))
    if status == run_record.INTERRUPTED and s.info.is_main:
        checkpoint.save(s.run_dir / run_files.CHECKPOINT, s.model, s.optimizers, state, s.device,
                        s.process_started)
    s.update_record(state, status)
    if s.info.is_main:
        if status == run_record.COMPLETED:
            tensorboard.log_hparams(s.tensorboard(state), s.record["config"], s.record)
        if s.writer is not None:
            s.writer.close()
    return s.record


def _show_progress(s: Session, entry: dict) -> None:
    ap, pca = run_record.fmt(entry["ap"], ".3f"), run_record.fmt(run_record.baseline(s.record, "pca"), ".3f")
    if s.progress is not None:
        s.progress.update(1)
        s.progress.set_postfix(loss=f"{entry['loss']:.4f}", ap=ap, pca=pca,
                               samples_per_s=f"{entry['samples_per_s']:.0f}")
    elif s.info.is_main and s.c.run.progress:  # not a terminal (a Slurm log): one plain line per epoch
        print(f"epoch {entry['epoch']}/{s.c.max_epochs} loss {entry['loss']:.4f} AP {ap} (PCA {pca}) "
              f"{entry['samples_per_s']:.0f} samples/s {entry['epoch_seconds']:.2f} s", flush=True)

