"""TensorBoard: per-epoch scalars, the run's hyperparameters, and the model graph.

Used by: train/loop.py (rank 0 only). `tensorboard --logdir runs` shows every run.

The graph comes from torch.fx's symbolic trace (no example run of the model, no deprecated
torch.jit.trace, which SummaryWriter.add_graph uses), written as TensorBoard's GraphDef: one node
per layer, parameter and operation, scoped by module path, with its output shape. It is the
eval-mode graph, in which a Bayesian layer uses its posterior mean.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bnnidr_hpc.records import run_files
from bnnidr_hpc.runtime.dotted import flatten

SCALARS = {"loss/train": "loss", "loss/data": "data_loss", "loss/kl": "kl", "ap/reduced": "ap",
           "ap/retention": "ap_retention", "perf/samples_per_s": "samples_per_s",
           "perf/epoch_seconds": "epoch_seconds"}


# TensorBoard's file layer imports these, for s3:// and other remote paths, wherever they are
# installed (fsspec comes with torch): 0.02-0.07 s of a run here (benchmarks/bench_overheads.py).
# Run directories are local paths, so while TensorBoard is imported `import boto3` and
# `import fsspec` fail, as they do where those are not installed; one already imported is used.
REMOTE_FILE_SYSTEMS = ("boto3", "fsspec")


def open_writer(run_dir: Path):
    kept_out = [name for name in REMOTE_FILE_SYSTEMS if name not in sys.modules]
    sys.modules.update({name: None for name in kept_out})
    try:
        from torch.utils.tensorboard import SummaryWriter
    finally:
        for name in kept_out:
            del sys.modules[name]
    return SummaryWriter(str(run_dir / run_files.TENSORBOARD))


def log_epoch(writer, entry: dict) -> None:
    e = entry["epoch"]
    for tag, key in SCALARS.items():
        if entry[key] is not None and (key != "kl" or entry[key]):
            writer.add_scalar(tag, entry[key], e)
    for i, lr in enumerate(entry["lr"]):
        writer.add_scalar(f"lr/optimizer{i}", lr, e)
    writer.flush()


def log_hparams(writer, config_dict: dict, record: dict) -> None:
    """Every config value but run.*, beside the final AP and loss (TensorBoard's HPARAMS tab)."""
    flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in flatten(config_dict).items() if not k.startswith("run.")}
    writer.add_hparams(flat, {"hparam/ap": record["ap_out"] or 0.0, "hparam/loss": record["final_loss"] or 0.0},
                       run_name="hparams")


class _Shapes(torch.fx.Interpreter):
    """Runs the traced graph once, keeping each node's output shape in its meta. torch.fx's own
    ShapeProp does the same but first looks for a fake-tensor mode: 0.3-0.4 s of a run here, this
    0.02 s (benchmarks/bench_overheads.py)."""

    def run_node(self, n):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["shape"] = tuple(result.shape)
        return result


class _Tracer(torch.fx.Tracer):
    """Layers stay whole, as PyTorch's own do: products.Linear is an nn.Linear too."""

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return isinstance(m, torch.nn.Linear) or super().is_leaf_module(m, qualname)


def graph_def(model: torch.nn.Module, input_dim: int):
    """The model's eval-mode graph as a TensorBoard GraphDef."""
    from tensorboard.compat.proto.attr_value_pb2 import AttrValue
    from tensorboard.compat.proto.graph_pb2 import GraphDef
    from tensorboard.compat.proto.node_def_pb2 import NodeDef
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

    was = model.training
    model.eval()
    try:
        traced = torch.fx.GraphModule(model, _Tracer().trace(model))
        device = next(model.parameters()).device
        with torch.no_grad():
            _Shapes(traced).run(torch.zeros(2, input_dim, device=device))
    finally:
        model.train(was)
    modules = dict(traced.named_modules())
    names = {}
    nodes = []
    for n in traced.graph.nodes:
        params = [a for a in n.all_input_nodes if a.op == "get_attr"]
        if n.op in ("call_module", "get_attr"):
            names[n] = n.target.replace(".", "/")
        elif params:  # an operation on a layer's parameters (a Bayesian layer's linear) is in its scope
            names[n] = names[params[0]].rsplit("/", 1)[0] + "/" + n.name
        else:
            names[n] = n.name
        if n.op == "call_module":
            op = type(modules[n.target]).__name__
        elif n.op == "call_function":
            op = getattr(n.target, "__name__", str(n.target))
        else:
            op = {"placeholder": "Input", "get_attr": "Parameter", "output": "Output"}.get(n.op, n.op)
        attr = {}
        if "shape" in n.meta:
            shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=s) for s in n.meta["shape"]])
            attr["_output_shapes"] = AttrValue(list=AttrValue.ListValue(shape=[shape]))
        nodes.append(NodeDef(name=names[n], op=op, input=[names[a] for a in n.all_input_nodes], attr=attr))
    return GraphDef(node=nodes)


def log_graph(writer, model: torch.nn.Module, input_dim: int) -> None:
    writer.file_writer.add_onnx_graph(graph_def(model, input_dim))  # writes any GraphDef as the run's graph
    writer.flush()
