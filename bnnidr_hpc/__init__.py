"""bnnidr-hpc: train a (Bayesian) neural-network dimension reducer, locally or as Slurm jobs."""

from bnnidr_hpc.runtime import __version__

__all__ = ["__version__", "load_reducer"]


def load_reducer(run_dir, mc_samples: int = 1, device: str = "cpu", allow_incomplete: bool = False):
    """A completed run's reducer, normalisation folded in, as a torch module in eval mode
    (bnnidr_hpc.reduce.apply.load_reducer; imported here lazily so the CLI starts without torch)."""
    from bnnidr_hpc.reduce.apply import load_reducer as load

    return load(run_dir, mc_samples, device, allow_incomplete)
