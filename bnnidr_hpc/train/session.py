"""One process's training session: everything `train` builds before the first step, held in one
`Session` that every epoch uses.

Used by: train/loop.py (`setup`, then `Session` through every epoch and the finish).

`setup` draws the data, chooses output_dim where it is auto, builds the model, its optimizers and
the evaluator, resumes from the run directory's checkpoint, starts every rank from rank 0's weights
and opens the record; rank 0 writes the run's fixed files (config.yaml, a feature-file run's
held-out rows and normalisation statistics). The training step is built here by `make_step`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from bnnidr_hpc.config.schema import Config, to_dict, to_yaml
from bnnidr_hpc.data import edge_batches, umap_graph
from bnnidr_hpc.data.sources import ShardLoader, source
from bnnidr_hpc.model.graph_loss import fit_ab
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.records import run_files, run_record, tensorboard
from bnnidr_hpc.runtime import atomic_files, collectives, distributed, products
from bnnidr_hpc.runtime.distributed import DistInfo
from bnnidr_hpc.train import checkpoint, intrinsic, relevance
from bnnidr_hpc.train.checkpoint import TrainState
from bnnidr_hpc.train.evaluate import Evaluator
from bnnidr_hpc.train.optim import Optimizers
from bnnidr_hpc.train.step import make_step


@dataclass
class Session:
    """What one process holds while it trains: built by setup, used by every epoch."""

    c: Config
    run_dir: Path
    info: DistInfo
    device: torch.device
    model: Reducer
    optimizers: Optimizers
    loader: ShardLoader
    evaluator: Evaluator
    averager: collectives.GradientAverager
    train_step: Callable
    record: dict
    writer: object  # TensorBoard's SummaryWriter on rank 0 once opened (tensorboard()), else None
    progress: object  # tqdm bar on a terminal, else None
    started: float
    process_started: float
    first_step_at: Optional[float] = None
    checkpoints: checkpoint.Writer = field(default_factory=checkpoint.Writer)  # rank 0's epoch checkpoints
    relevance_prior: Optional[torch.Tensor] = None  # relevance_prior: P(K = k) over the output units

    def tensorboard(self, state: TrainState):
        """Rank 0's SummaryWriter, opened (and the graph written) at the first epoch's end: its
        import and the graph's trace took 0.8 s of the 2 s before the first step."""
        if self.writer is None and self.info.is_main:
            self.writer = tensorboard.open_writer(self.run_dir)
            if self.c.run.graph and state.restarts == 0:
                tensorboard.log_graph(self.writer, self.model, self.c.input_dim)
        return self.writer

    def update_record(self, state: TrainState, status: str) -> None:
        run_record.update_record(self.record, state, status, self.started, self.process_started)
        if self.info.is_main:
            run_files.write_json(self.run_dir / run_files.RECORD, self.record)


def setup(c: Config, run_dir: Path, info: DistInfo, device: torch.device, started: float):
    data = source(c.data, c.seed, device)
    intrinsic_dim = {}
    if c.output_dim == "auto":
        c, intrinsic_dim = _choose_output_dim(c, data)
    torch.manual_seed(c.seed)
    model = Reducer(c.model_spec()).to(device)
    if info.distributed and c.batch_norm and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizers = Optimizers(c.optimizers, c.max_epochs, model)
    loader = ShardLoader(data, c.batch_size, info.rank, info.world_size)
    graph_facts, distance_weight = {}, 0.0
    if c.loss == "graph":
        loader, graph_facts = _edge_loader(c, data, loader, info, device)
        distance_weight = graph_facts["graph_edges"]["distance_weight"]
    evaluator = Evaluator(c.eval, data, info)
    state = checkpoint.resume(run_dir / run_files.CHECKPOINT, model, optimizers, device, started)
    averager = collectives.GradientAverager(model)  # after resuming: it starts every rank from rank 0's weights

    names = [torch.cuda.get_device_name(device)] if device.type == "cuda" else ["cpu"]
    config_dict = to_dict(c)
    record = run_record.start_record(
        c, config_dict, run_dir, device_type=device.type, devices=names * info.world_size,
        cpu_matmul=products.library() if device.type == "cpu" else None,
        steps_per_epoch=loader.steps_per_epoch, data_cached=loader.cached, hosts=distributed.all_hosts(info),
        slurm_job_id=info.slurm_job_id, intrinsic_dim=intrinsic_dim)
    record.update(graph_facts)
    if not evaluator.labelled:
        record["ap_note"] = "no labels (data.labels is not set): no retrieval AP; intrinsic_dim still compares them"
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink()
        run_files.write_text(run_dir / run_files.CONFIG, to_yaml(c))
        if c.data.source == "npy":
            _write_data_files(run_dir, data)
        if state.history:  # a kill between the checkpoint and its metrics line: the checkpoint is right
            run_files.write_lines(run_dir / run_files.METRICS, state.history)
    session = Session(c, run_dir, info, device, model, optimizers, loader, evaluator, averager,
                      make_step(c, model, optimizers, info, averager, distance_weight), record, None,
                      _progress_bar(c, info.is_main, state.epoch), started, run_record.process_start_time())
    if c.relevance_prior:
        if state.relevance_centre is None:
            state.relevance_centre = _relevance_centre(c, data, intrinsic_dim, info, device)
        session.relevance_prior = relevance.prior(state.relevance_centre, c.output_dim)
    session.update_record(state, run_record.RUNNING)
    return session, state


def _edge_loader(c: Config, data, shards: ShardLoader, info: DistInfo, device: torch.device):
    """`loss: graph`: the k-NN graph of the training rows (data.neighbours, built across the ranks
    or read from its cache), its fuzzy edges (data.umap_graph, with the training labels where
    graph.labels), and the loader drawing batches of them; with what the record says of them."""
    from bnnidr_hpc.train import graph_stage

    knn = graph_stage.build(c, data, info, device)  # its cache: graph_stage.cache_root
    labels = edge_batches.training_labels(data) if c.graph.labels else None
    edges = umap_graph.fuzzy_edges(knn.indices, knn.distances, labels, c.graph.target_weight)
    a, b = fit_ab(c.graph.spread, c.graph.min_dist)
    weight, variance_kept = graph_stage.distance_weight(c, data, info, device)
    loader = edge_batches.EdgeLoader(shards, edges, c.graph.negatives, labels, c.graph.class_pairs)
    facts = {"graph_edges": {"edges": len(edges.weights), "weight_sum": float(edges.weights.sum()),
                             "supervised": labels is not None, "class_pairs": loader.class_pairs, "a": a, "b": b,
                             "distance_weight": weight, "pca_variance_kept": variance_kept},
             **run_record.graph_fields(knn)}
    return loader, facts


def _relevance_centre(c: Config, data, intrinsic_dim: dict, info: DistInfo, device: torch.device) -> float:
    """TwoNN of the training data, rank 0's on every rank: the prior's probabilities, and so every
    step's draw, must be the same on all of them whatever their devices' rounding."""
    centre = 0.0
    if info.is_main:
        centre = (intrinsic_dim["input"]["mle"]["dimension"] if intrinsic_dim else
                  intrinsic.estimate(data.sample(c.eval.id_sample), "mle").dimension)
    return collectives.all_reduce_sum(torch.tensor([centre], dtype=torch.float64, device=device)).item()


def _write_data_files(run_dir: Path, data) -> None:
    """What `reduce` and a collaborator need of a feature-file run: the held-out rows' indices
    (queries first, then the gallery) and the normalisation statistics of the training rows."""
    import io

    import numpy as np

    from bnnidr_hpc.data import features

    buffer = io.BytesIO()
    np.save(buffer, data.heldout_index)
    atomic_files.atomic_write(run_dir / features.HELDOUT, lambda f: f.write(buffer.getbuffer()), binary=True)
    blob = features.stats_bytes(data.cfg.normalize, data.stats)
    atomic_files.atomic_write(run_dir / features.NORMALIZATION, lambda f: f.write(blob), binary=True)


def _choose_output_dim(c: Config, data):
    """output_dim: auto -> the TwoNN rule of intrinsic.output_dim_for on a sample of the data."""
    sample = data.sample(c.eval.id_sample)
    estimates = intrinsic.estimate_all(sample)
    chosen = intrinsic.output_dim_for(estimates["mle"]["dimension"], c.input_dim)
    info = {"input": estimates, "sample": sample.shape[0], "output_dim": chosen,
            "rule": "round(TwoNN MLE) + 1, at least 2, below p"}
    return replace(c, output_dim=chosen), info


def _progress_bar(c: Config, main: bool, start_epoch: int):
    if not (main and c.run.progress and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=c.max_epochs, initial=start_epoch, unit="epoch", desc=c.run.name or "run", leave=True)
