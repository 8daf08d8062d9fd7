"""bnnidr-hpc: train a (Bayesian) neural-network dimension reducer, locally or as Slurm jobs."""

__version__ = "0.1.0"
