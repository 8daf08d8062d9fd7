"""bnnidr-hpc: train a (Bayesian) neural-network dimension reducer, locally or as Slurm jobs."""

__version__ = "0.1.0"


def load_reducer(run_dir, mc_samples: int = 1, device: str = "cpu", allow_incomplete: bool = False):
    """A completed run's reducer, normalisation folded in, as a torch module in eval mode
    (bnnidr_hpc.reduce.load_reducer; imported here lazily so the CLI starts without torch)."""
    from .reduce import load_reducer as load

    return load(run_dir, mc_samples, device, allow_incomplete)
