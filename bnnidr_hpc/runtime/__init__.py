"""runtime: what the process runs on, below every other layer.

The ranks and devices of a run (distributed.py: torch.distributed over NCCL or gloo, Slurm's and
torchrun's variables read in one place) and their collectives (collectives.py), the matrix library
of the CPU products (products.py: oneDNN or BLAS), the allocator settings of a training process
(allocator.py), the error every layer raises for bad input (errors.py), files written whole or not
at all (atomic_files.py), nested mappings as dotted keys (dotted.py), and the toolkit's version.
Imports nothing of the package.
"""

__version__ = "0.1.0"
