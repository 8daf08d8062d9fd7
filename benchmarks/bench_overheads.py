"""What a run spends outside its steps, piece by piece, each beside what it cost before the change
that cut it (docs/performance.md, "what the whole command waits for"):

  python benchmarks/bench_overheads.py [--quick]

- exit: seconds from a process's last line of work to its end, for a bare `import torch`, for
  `bnnidr-hpc run conf/hps_00040.yaml` (from its record's last update; cli.entry skips Python's
  teardown) and for the same run through cli.main with the normal exit;
- the TensorBoard graph of hps_00043's model: tensorboard_log.graph_def (one torch.fx Interpreter
  pass) against torch.fx's ShapeProp, each in a fresh process (ShapeProp's cost is a first call's);
- opening TensorBoard's writer in a fresh process, with boto3 and fsspec kept out of its import
  (tensorboard_log.open_writer) and without;
- hps_00043's checkpoint: serialising it (the training thread) and writing + fsyncing it (the
  checkpoint thread's part).

Each fresh-process figure is the median of ROUNDS processes.
"""

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Report, quick_flag

REPO = Path(__file__).resolve().parents[1]
HPS_00043 = str(REPO / "conf" / "hps_00043.yaml")


def _child_seconds(code: str) -> float:
    """Run code in a fresh interpreter; the float it prints last."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return float(out.strip().splitlines()[-1])


def _exit_after(code: str) -> float:
    """Seconds from the time.time() that code prints last to the process's end."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    ended = time.time()
    return ended - float(proc.stdout.strip().splitlines()[-1])


def _run_exit(root: Path, entry: bool) -> float:
    """Seconds from hps_00040's record's last update to the end of the process that trained it."""
    call = "cli.entry()" if entry else "sys.exit(cli.main())"
    argv = ["bnnidr-hpc", "run", str(REPO / "conf" / "hps_00040.yaml"), f"run.root={root}", "run.progress=false",
            "loss=stress", "max_epochs=2"]
    code = f"import sys; from bnnidr_hpc import cli; sys.argv = {argv!r}; {call}"
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, cwd=REPO)
    ended = time.time()
    (record,) = root.glob("*/record.json")
    return ended - json.loads(record.read_text())["updated_at"]


MODEL = ("import time, torch\nfrom bnnidr_hpc.config.loading import load\n"
         "from bnnidr_hpc.model.reducer import Reducer\n"
         f"c = load({HPS_00043!r}, [])\nmodel = Reducer(c.model_spec())\n")
GRAPH_NOW = MODEL + ("from bnnidr_hpc.records import tensorboard as tensorboard_log\nt = time.perf_counter()\n"
                     "tensorboard_log.graph_def(model, c.input_dim)\nprint(time.perf_counter() - t)")
GRAPH_SHAPEPROP = MODEL + ("from torch.fx.passes.shape_prop import ShapeProp\nt = time.perf_counter()\n"
                           "model.eval()\n"
                           "ShapeProp(torch.fx.symbolic_trace(model)).propagate(torch.zeros(2, c.input_dim))\n"
                           "print(time.perf_counter() - t)")
WRITER_NOW = ("import time, torch, tempfile\nfrom pathlib import Path\n"
              "from bnnidr_hpc.records import tensorboard as tensorboard_log\n"
              "t = time.perf_counter(); tensorboard_log.open_writer(Path(tempfile.mkdtemp()))\n"
              "print(time.perf_counter() - t)")
WRITER_PLAIN = ("import time, torch, tempfile\nt = time.perf_counter()\n"
                "from torch.utils.tensorboard import SummaryWriter; SummaryWriter(tempfile.mkdtemp())\n"
                "print(time.perf_counter() - t)")


def checkpoint_seconds(rounds: int) -> tuple:
    """Median (serialise, write + fsync) seconds of hps_00043's checkpoint after one step."""
    import torch

    from bnnidr_hpc.config.loading import load
    from bnnidr_hpc.model.reducer import Reducer
    from bnnidr_hpc.train import checkpoint
    from bnnidr_hpc.train.checkpoint import TrainState
    from bnnidr_hpc.train.optim import Optimizers

    c = load(HPS_00043, [])
    model = Reducer(c.model_spec())
    optimizers = Optimizers(c.optimizers, c.max_epochs, model)
    model(torch.randn(8, c.input_dim)).square().sum().backward()
    optimizers.step()  # the optimizers' moments exist, as in every checkpoint after the first epoch
    serialise, write = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            t0 = time.perf_counter()
            blob = checkpoint._serialise(model, optimizers, TrainState(), torch.device("cpu"), time.time())
            t1 = time.perf_counter()
            checkpoint._write(Path(tmp) / "checkpoint.pt", blob)
            serialise.append(t1 - t0)
            write.append(time.perf_counter() - t1)
    return statistics.median(serialise), statistics.median(write), len(blob.getbuffer()) / 1e6


def main():
    quick = quick_flag()
    rounds = 3 if quick else 7
    report = Report("overheads", quick)

    def median(fn, *args):
        return statistics.median(fn(*args) for _ in range(rounds))

    report.add(f"exit: bare `import torch`, last line -> process end (median of {rounds})",
               median(_exit_after, "import time, torch; print(time.time())"), "s")
    with tempfile.TemporaryDirectory() as tmp:
        entry = [_run_exit(Path(tmp) / f"entry{i}", True) for i in range(rounds)]
        normal = [_run_exit(Path(tmp) / f"normal{i}", False) for i in range(rounds)]
    report.add("exit: hps_00040 run, record's last update -> process end, cli.entry", statistics.median(entry), "s")
    report.add("exit: the same, cli.main with Python's normal exit", statistics.median(normal), "s")
    report.add("TensorBoard graph of hps_00043's model: graph_def (fx Interpreter)", median(_child_seconds, GRAPH_NOW),
               "s")
    report.add("  torch.fx ShapeProp alone, as graph_def used before", median(_child_seconds, GRAPH_SHAPEPROP), "s")
    report.add("TensorBoard writer opened, boto3/fsspec kept out (open_writer)", median(_child_seconds, WRITER_NOW),
               "s")
    report.add("  SummaryWriter imported and opened plainly", median(_child_seconds, WRITER_PLAIN), "s")
    serialise, write, size = checkpoint_seconds(rounds * 3)
    report.add(f"hps_00043 checkpoint ({size:.1f} MB): serialise, training thread", serialise * 1e3, "ms")
    report.add("  write + fsync, now on the checkpoint thread", write * 1e3, "ms")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
