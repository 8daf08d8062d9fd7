"""Training: one plain function, config + run directory + distributed facts in, record out.

Used by: cli.py (`bnnidr-hpc run`), launch.py (Slurm jobs), hydra_app.py, tests, benchmarks.

Every entry point calls `train`. It resumes from the run directory's checkpoint when there is one,
so the first start and every restart take the same path. Only rank 0 writes files.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import torch

from . import distributed, intrinsic, records
from .config import Config, ScheduleConfig, to_dict, to_yaml
from .data import Hypersphere, ShardLoader
from .distributed import DistInfo
from .metrics import PairTargetsAhead, average_precision_sums, pair_targets, stress_share
from .model import Reducer

# With several ranks, a stop request (preemption, time limit) is agreed on every this many steps,
# so that every rank stops after the same step; one small all-reduce each time.
STOP_CHECK_EVERY = 16


def lr_factor(s: ScheduleConfig, epoch: float, max_epochs: int) -> float:
    """Multiplier of the initial lr at a (fractional) epoch."""
    warm = min(1.0, epoch / s.warmup_epochs) if s.warmup_epochs > 0 else 1.0
    if s.name == "step":
        return warm * s.gamma ** math.floor(epoch / s.step_size)
    if s.name == "cosine":
        return warm * (s.min_factor + (1 - s.min_factor) * 0.5 * (1 + math.cos(math.pi * epoch / max_epochs)))
    return warm


class Optimizers:
    """The configured optimizers, each owning the parameters whose names match its pattern."""

    def __init__(self, c: Config, model: torch.nn.Module):
        named = list(model.named_parameters())
        # One fused kernel per optimizer instead of a dozen per parameter: 3x faster on the CPU.
        fused = next(model.parameters()).device.type in ("cpu", "cuda")
        self.items = []  # (optimizer, schedule, initial lr)
        for oc in c.optimizers:
            params = [p for n, p in named if fnmatch.fnmatchcase(n, oc.params)]
            lr, wd = c.optimizer_setting(oc, "lr"), c.optimizer_setting(oc, "weight_decay")
            if oc.name == "sgd":
                opt = torch.optim.SGD(params, lr=lr, momentum=oc.momentum, nesterov=oc.nesterov, weight_decay=wd,
                                      fused=fused)
            elif oc.name == "adam":
                opt = torch.optim.Adam(params, lr=lr, betas=tuple(oc.betas), weight_decay=wd, fused=fused)
            else:
                opt = torch.optim.AdamW(params, lr=lr, betas=tuple(oc.betas), weight_decay=wd, fused=fused)
            self.items.append((opt, c.optimizer_setting(oc, "schedule"), lr))
        self.max_epochs = c.max_epochs

    def set_lr(self, epoch: float) -> List[float]:
        lrs = []
        for opt, schedule, lr in self.items:
            lr_now = lr * lr_factor(schedule, epoch, self.max_epochs)
            for group in opt.param_groups:
                group["lr"] = lr_now
            lrs.append(lr_now)
        return lrs

    def step(self) -> None:
        for opt, _, _ in self.items:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list:
        return [opt.state_dict() for opt, _, _ in self.items]

    def load_state_dict(self, states: list) -> None:
        for (opt, _, _), state in zip(self.items, states):
            opt.load_state_dict(state)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _Evaluator:
    """Retrieval AP on the held-out set; the queries are split across ranks and their sums added."""

    def __init__(self, c: Config, data: Hypersphere, info: DistInfo):
        (qx, ql), (gx, gl) = data.heldout(c.eval.queries, c.eval.gallery)
        share = slice(info.rank * len(qx) // info.world_size, (info.rank + 1) * len(qx) // info.world_size)
        self.qx, self.ql, self.gx, self.gl = qx[share], ql[share], gx, gl
        self.block, self.mc_samples = c.eval.block, c.eval.mc_samples

    def _ap(self, queries, gallery) -> float:
        sums = torch.stack(average_precision_sums(queries, self.ql, gallery, self.gl, self.block))
        total, count = distributed.all_reduce_sum(sums).tolist()
        return total / max(count, 1)

    def input_ap(self) -> float:
        return self._ap(self.qx, self.gx)

    def model_ap(self, model: Reducer) -> float:
        return self._ap(model.embed(self.qx, self.mc_samples), model.embed(self.gx, self.mc_samples))


def train(c: Config, run_dir: Path, info: Optional[DistInfo] = None,
          stop_requested: Callable[[], bool] = lambda: False) -> dict:
    """Train (or resume) the run in run_dir; returns its record (status completed or interrupted)."""
    info = info or DistInfo()
    started = time.time()
    process_started = records.process_start_time()
    device = distributed.pick_device(info, c.run.device)
    # One thread per core the rank owns: more would oversubscribe the cores and spin-wait.
    threads = c.run.threads or info.cpus_per_task
    if threads:
        torch.set_num_threads(threads)
    distributed.init(info, device)
    try:
        record = _train(c, Path(run_dir), info, device, started, process_started, stop_requested)
    except BaseException:
        distributed.shutdown(together=False)
        raise
    distributed.shutdown()
    return record


def _train(c, run_dir, info, device, started, process_started, stop_requested) -> dict:
    main = info.is_main
    world = info.world_size
    data = Hypersphere(c.data, c.seed, device)
    intrinsic_dim = {}
    if c.output_dim == "auto":
        c, intrinsic_dim = _choose_output_dim(c, data)
    torch.manual_seed(c.seed)
    model = Reducer(c).to(device)
    if world > 1 and c.batch_norm and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizers = Optimizers(c, model)
    loader = ShardLoader(data, c.batch_size, info.rank, world)
    evaluator = _Evaluator(c, data, info)
    steps = loader.steps_per_epoch
    global_batch = c.batch_size * world

    checkpoint_path = run_dir / records.CHECKPOINT
    state = _load_checkpoint(checkpoint_path, model, optimizers, device)
    if state is None:
        state = {"epoch": 0, "step": 0, "stress_sum": 0.0, "kl_sum": 0.0, "history": [],
                 "ap_in": None, "restarts": 0, "seconds_lost": 0.0, "seconds_before": 0.0}
    else:
        state["restarts"] += 1
        # Time lost: from the interruption to this restart (requeue, queueing, start-up).
        state["seconds_lost"] += max(0.0, started - state.pop("interrupted_at", started))
        state["seconds_before"] = state.pop("elapsed_at_interruption", state["seconds_before"])
        _set_rng_state(state.pop("rng"), device)

    averager = distributed.GradientAverager(model)

    writer = None
    record = _base_record(c, info, device, loader, run_dir)
    record["intrinsic_dim"] = intrinsic_dim
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink()
        records.write_text(run_dir / records.CONFIG, to_yaml(c))
        writer = _tensorboard(run_dir, model, c, device, first_start=state["restarts"] == 0)
    if state["ap_in"] is None:
        state["ap_in"] = evaluator.input_ap()
    _update_record(record, state, c, global_batch, steps, started, process_started, records.RUNNING)
    if main:
        records.write_json(run_dir / records.RECORD, record)

    progress = _progress(c, main, state["epoch"])
    train_step = make_step(c, model, optimizers, info, averager)
    first_step_at = None
    interrupted = False
    for epoch in range(state["epoch"], c.max_epochs):
        model.train()
        # Rank 0 wrote the last epoch's files while the others went on to wait in the first step:
        # their clocks would count its writing as training time and make them look like stragglers.
        distributed.barrier()
        epoch_started = time.perf_counter()
        stress_sum = torch.zeros((), device=device)
        kl_sum = torch.zeros((), device=device)
        lrs = optimizers.set_lr(epoch + state["step"] / steps)  # also when no step is left to run
        for step, batch in enumerate(loader.epoch(epoch, state["step"]), start=state["step"]):
            lrs = optimizers.set_lr(epoch + step / steps)
            stress, kl = train_step(*batch)
            stress_sum += stress
            kl_sum += kl
            if first_step_at is None:
                _sync(device)
                first_step_at = time.time()
                record.setdefault("time_to_first_step_s", first_step_at - process_started)
                record.setdefault("first_step_at", first_step_at)
            if _should_stop(stop_requested, step, world, device):
                partial = distributed.all_reduce_sum(torch.stack([stress_sum, kl_sum / world]).double())
                state.update(epoch=epoch, step=step + 1, interrupted_at=time.time(),
                             elapsed_at_interruption=state["seconds_before"] + time.time() - process_started,
                             stress_sum=state["stress_sum"] + partial[0].item(),
                             kl_sum=state["kl_sum"] + partial[1].item())
                interrupted = True
                break
        if interrupted:
            break
        # The epoch's only host synchronisations: the loss sums and the evaluation.
        totals = distributed.all_reduce_sum(torch.stack([stress_sum, kl_sum / world]).double())
        stress_total, kl_total = (totals + torch.tensor([state["stress_sum"], state["kl_sum"]],
                                                        dtype=torch.float64, device=device)).tolist()
        epoch_seconds = time.perf_counter() - epoch_started
        rank_seconds = [s[0] for s in distributed.gather_floats([epoch_seconds], device)]
        eval_started = time.perf_counter()
        last = epoch + 1 == c.max_epochs
        ap_out = None
        if last or (epoch + 1) % c.eval.every == 0:
            averager.sync_buffers()
            ap_out = evaluator.model_ap(model)
        entry = {
            "epoch": epoch + 1,
            "loss": (stress_total + kl_total) / steps,
            "stress": stress_total / steps,
            "kl": kl_total / steps,
            "ap": ap_out,
            "ap_retention": None if ap_out is None else ap_out / state["ap_in"],
            "lr": lrs,
            "epoch_seconds": max(rank_seconds),
            "rank_epoch_seconds": rank_seconds,
            "eval_seconds": time.perf_counter() - eval_started,
            "samples_per_s": global_batch * (steps - state["step"]) / max(rank_seconds),
            "partial": state["step"] > 0,
        }
        state.update(epoch=epoch + 1, step=0, stress_sum=0.0, kl_sum=0.0)
        state["history"].append(entry)
        _update_record(record, state, c, global_batch, steps, started, process_started, records.RUNNING)
        if main:
            _save_checkpoint(checkpoint_path, model, optimizers, state, device)
            records.append_line(run_dir / records.METRICS, entry)
            records.write_json(run_dir / records.RECORD, record)
            _log_epoch(writer, entry)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{entry['loss']:.4f}", ap=_fmt(entry["ap"]),
                                 samples_per_s=f"{entry['samples_per_s']:.0f}")
        elif main and c.run.progress:  # not a terminal (a Slurm log): one plain line per epoch
            print(f"epoch {epoch + 1}/{c.max_epochs} loss {entry['loss']:.4f} AP {_fmt(entry['ap'])} "
                  f"{entry['samples_per_s']:.0f} samples/s {entry['epoch_seconds']:.2f} s", flush=True)

    if progress is not None:
        progress.close()
    status = records.INTERRUPTED if interrupted else records.COMPLETED
    if not interrupted and main:
        # Did the reducer keep the structure? TwoNN of the gallery before and after reduction.
        record["intrinsic_dim"].update(
            gallery_input=intrinsic.estimate(evaluator.gx, "mle").as_dict(),
            gallery_output=intrinsic.estimate(model.embed(evaluator.gx, c.eval.mc_samples), "mle").as_dict())
    _update_record(record, state, c, global_batch, steps, started, process_started, status)
    if main:
        if interrupted:
            _save_checkpoint(checkpoint_path, model, optimizers, state, device)
        elif writer is not None:
            writer.add_hparams(_hparams(c), {"hparam/ap": record["ap_out"] or 0.0,
                                             "hparam/loss": record["final_loss"] or 0.0},
                               run_name="hparams")
        records.write_json(run_dir / records.RECORD, record)
        if writer is not None:
            writer.close()
    return record


def make_step(c: Config, model: Reducer, optimizers: Optimizers, info: DistInfo,
              averager: Optional[distributed.GradientAverager] = None):
    """The training step, (this rank's batch x, the global batch or None, a function returning the
    next step's global batch (data.NextBatch) or None) -> (stress, KL term), both detached on the
    device: no host sync. Without the global batch the step gathers it. Given the next one, the
    step copies it and computes its input distances (the largest product) while it waits for its
    collectives, and uses them in the next call."""
    world = info.world_size
    averager = averager or distributed.GradientAverager(model)
    kl_scale = c.bayes.kl_weight / c.data.n if c.bayesian else 0.0
    zero = torch.zeros((), device=next(model.parameters()).device)
    bf16 = c.precision == "bf16"
    device_type = zero.device.type
    ahead: Optional[PairTargetsAhead] = None  # the next global batch's input distances

    def step(x: torch.Tensor, full_x: Optional[torch.Tensor] = None,
             next_full_x: Optional[Callable[[], torch.Tensor]] = None):
        nonlocal ahead
        current = ahead if ahead is not None and ahead.next_batch() is full_x else None
        # Whenever the step waits for a collective it works on the next batch: copies it, then
        # computes its input distances.
        ahead = PairTargetsAhead(next_full_x, info.rank, world, bf16) if next_full_x is not None else None
        while_waiting = ahead.work_one if ahead is not None else None
        # Without the global batch, gather it; it travels while the forward pass runs.
        gathered_x = distributed.all_gather_async(x) if full_x is None else None
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out = out.float()  # distances of the reduced vectors stay float32: they are cheap
        gathered_out = distributed.all_gather_with_grad_async(out, while_waiting)
        kl = kl_scale * model.kl() if kl_scale else zero  # the parameters alone: before any wait
        if current is not None:
            targets = current.result()
        else:
            targets = pair_targets(full_x if gathered_x is None else gathered_x(), info.rank, world, bf16)
        stress = stress_share(out, gathered_out, targets)
        loss = world * stress + kl  # the gradients are averaged over ranks; the stress is their sum
        loss.backward()
        averager.start()(while_waiting)
        optimizers.step()
        return stress.detach(), kl.detach()

    return step


def _choose_output_dim(c: Config, data: Hypersphere):
    """output_dim: auto -> the TwoNN rule of intrinsic.output_dim_for on a sample of the data."""
    from dataclasses import replace

    sample, _ = data.range(0, min(c.data.n, c.eval.id_sample))
    estimates = intrinsic.estimate_all(sample)
    chosen = intrinsic.output_dim_for(estimates["mle"]["dimension"], c.input_dim)
    info = {"input": estimates, "sample": sample.shape[0], "output_dim": chosen,
            "rule": "round(TwoNN MLE) + 1, at least 2, below p"}
    return replace(c, output_dim=chosen), info


def _should_stop(stop_requested, step: int, world: int, device) -> bool:
    if world == 1:
        return stop_requested()
    if (step + 1) % STOP_CHECK_EVERY:
        return False
    flag = torch.tensor([1.0 if stop_requested() else 0.0], device=device)
    return distributed.all_reduce_sum(flag).item() > 0


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _progress(c: Config, main: bool, start_epoch: int):
    if not (main and c.run.progress and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=c.max_epochs, initial=start_epoch, unit="epoch", desc=c.run.name or "run", leave=True)


def _save_checkpoint(path: Path, model, optimizers: Optimizers, state: dict, device) -> None:
    payload = {"model": model.state_dict(), "optimizers": optimizers.state_dict(),
               "state": {**state, "rng": _rng_state(device)}}
    records.atomic_write(path, lambda f: torch.save(payload, f), binary=True)


def _load_checkpoint(path: Path, model, optimizers: Optimizers, device) -> Optional[dict]:
    if not path.exists():
        return None
    payload = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(payload["model"])
    optimizers.load_state_dict(payload["optimizers"])
    state = payload["state"]
    state["rng"] = {k: v.cpu() for k, v in state["rng"].items()}
    return state


def _tensorboard(run_dir: Path, model: Reducer, c: Config, device, first_start: bool):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / records.TENSORBOARD))
    if c.run.graph and first_start:
        # The graph is traced in eval mode, where a Bayesian layer is its posterior mean.
        was = model.training
        model.eval()
        with warnings.catch_warnings():  # add_graph traces with torch.jit, deprecated in torch 2.9+
            warnings.simplefilter("ignore", DeprecationWarning)
            writer.add_graph(model, torch.zeros(2, c.input_dim, device=device))
        model.train(was)
    return writer


def _log_epoch(writer, entry: dict) -> None:
    if writer is None:
        return
    e = entry["epoch"]
    writer.add_scalar("loss/train", entry["loss"], e)
    writer.add_scalar("loss/stress", entry["stress"], e)
    if entry["kl"]:
        writer.add_scalar("loss/kl", entry["kl"], e)
    if entry["ap"] is not None:
        writer.add_scalar("ap/reduced", entry["ap"], e)
        writer.add_scalar("ap/retention", entry["ap_retention"], e)
    for i, lr in enumerate(entry["lr"]):
        writer.add_scalar(f"lr/optimizer{i}", lr, e)
    writer.add_scalar("perf/samples_per_s", entry["samples_per_s"], e)
    writer.add_scalar("perf/epoch_seconds", entry["epoch_seconds"], e)
    writer.flush()


def _hparams(c: Config) -> dict:
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", {k: v for k, v in to_dict(c).items() if k != "run"})
    return flat


def config_record(c: Config, run_dir: Path) -> dict:
    """The record's fields that the config alone decides; also a failed job's whole record."""
    return {
        "schema": records.SCHEMA,
        "run_dir": str(Path(run_dir).resolve()),
        "name": c.run.name,
        "config": to_dict(c),
        "n": c.data.n, "p": c.data.p, "d": c.data.d,
        "input_dim": c.input_dim, "output_dim": c.output_dim,
        "batch_size": c.batch_size, "global_batch_size": c.batch_size * c.world_size,
        "world_size": c.world_size, "num_gpu": c.num_gpu,
        "max_epochs": c.max_epochs, "epochs_done": 0,
    }


def _base_record(c: Config, info: DistInfo, device, loader: ShardLoader, run_dir: Path) -> dict:
    if device.type == "cuda":
        names = [torch.cuda.get_device_name(device)]
    else:
        names = ["cpu"]
    device_names = names * info.world_size if info.world_size > 1 else names
    return {
        **config_record(c, run_dir),
        "world_size": info.world_size, "global_batch_size": c.batch_size * info.world_size,
        "device_type": device.type, "devices": device_names,
        "steps_per_epoch": loader.steps_per_epoch,
        "data_cached": loader.cached,
        "hostname": info.hostname, "slurm_job_id": info.slurm_job_id,
        "versions": records.versions(), "git": records.git_state(),
    }


def _update_record(record: dict, state: dict, c: Config, global_batch: int, steps: int,
                   started: float, process_started: float, status: str) -> None:
    history = state["history"]
    epoch_seconds = [h["epoch_seconds"] for h in history]
    full = [h for h in history if not h["partial"]]
    steady = [h["samples_per_s"] for h in full[1:]] or [h["samples_per_s"] for h in full] or [None]
    samples_per_s = statistics.median(steady) if steady[0] is not None else None
    last_ap = next((h for h in reversed(history) if h["ap"] is not None), None)
    now = time.time()
    record.update({
        "status": status,
        "epochs_done": state["epoch"],
        "epochs": history,
        "epoch_seconds": epoch_seconds,
        "first_epoch_seconds": epoch_seconds[0] if epoch_seconds else None,
        "steady_epoch_seconds": statistics.median(epoch_seconds[1:]) if len(epoch_seconds) > 1 else
        (epoch_seconds[0] if epoch_seconds else None),
        "slowest_rank_seconds": max((max(h["rank_epoch_seconds"]) for h in history), default=None),
        "train_seconds": sum(epoch_seconds),
        "total_seconds": state["seconds_before"] + now - process_started,  # over every restart
        "session_seconds": now - started,
        "samples_per_s": samples_per_s,
        "samples_per_s_per_gpu": None if samples_per_s is None else samples_per_s / record["world_size"],
        "final_loss": history[-1]["loss"] if history else None,
        "ap_in": state["ap_in"],
        "ap_out": last_ap["ap"] if last_ap else None,
        "ap_retention": last_ap["ap_retention"] if last_ap else None,
        "restarts": state["restarts"],
        "seconds_lost": state["seconds_lost"],
        "updated_at": now,
    })
