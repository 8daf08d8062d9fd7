"""model: the network and what it is trained to keep, knowing nothing of configs or files.

reducer.py is the Reducer (an MLP from input_dim to output_dim, deterministic or Bayesian) and the
ModelSpec that shapes it; objectives.py holds the objectives over a batch's pairs (pairwise
distances, the stress and UMAP-style pair losses, their targets), graph_loss.py UMAP's
cross-entropy on the k-NN graph's edges (loss: graph). Imports only runtime/ (the matrix library):
config/ builds a ModelSpec from a run's config, train/ and reduce/ use the network.
"""
