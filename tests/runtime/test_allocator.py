"""allocator.py: a training step's few-MB temporaries stop costing page faults once the
thresholds are set, as train() sets them."""

import subprocess
import sys

import pytest

from bnnidr_hpc.runtime import allocator

# Steps at batch 1024, whose pair matrices are 4 MB each; prints the page faults of the last 20.
STEPS = """
import resource, sys, torch
from bnnidr_hpc.runtime import allocator
from bnnidr_hpc.data.sources import Hypersphere, ShardLoader
from bnnidr_hpc.runtime.distributed import DistInfo
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.model.reducer import Reducer
from bnnidr_hpc.train.optim import Optimizers
from bnnidr_hpc.train.step import make_step
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
c = load(None, ["data.n=8192", "data.p=128", "batch_size=1024", "layer_size=128", "output_dim=8", "loss=umap"])
loader = ShardLoader(Hypersphere(c.data, c.seed), c.batch_size, 0, 1)
model = Reducer(c.model_spec())
step = make_step(c, model, Optimizers(c.optimizers, c.max_epochs, model), DistInfo())
batches = [b for e in range(4) for b in loader.epoch(e)]
for b in batches[:12]:
    step(*b)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for b in batches[12:]:
    step(*b)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not allocator.glibc(), reason="the C library is not glibc")
def test_kept_memory_serves_a_steps_temporaries_without_page_faults():
    default = faults("default")
    if default < 20 * 1000:  # e.g. transparent huge pages for everything: few, large faults
        pytest.skip(f"this machine's default allocation faults only {default} times in 20 steps")
    assert faults("keep") < 20 * 10  # against several 4 MB matrices (1,024 pages each) fresh every step
