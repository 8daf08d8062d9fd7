"""model: the network and what it is trained to keep, knowing nothing of configs or files.

reducer.py is the Reducer (an MLP from input_dim to output_dim, deterministic or Bayesian) and the
ModelSpec that shapes it; objectives.py holds the training objectives (pairwise distances of a
batch, the stress and UMAP-style pair losses, their targets). Imports only runtime/ (the matrix
library): config/ builds a ModelSpec from a run's config, train/ and reduce/ use the network.
"""
