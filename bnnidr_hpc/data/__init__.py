"""data: where the points come from, given plain parameters (a run's data section), not the config.

sources.py makes a run's points: synthetic hyperspheres generated on the fly from the seed (any
rank makes any index range) or a user's .npy features, and the ShardLoader that hands each rank its
shard of every batch; features.py reads N x p .npy shards through memory maps (files larger than
memory), holds rows out for evaluation, and normalises. neighbours.py builds the training rows'
k-nearest-neighbour graph across the ranks (knn_exact.py, or FAISS in knn_faiss.py) and keeps it in
a cache (graph_cache.py); umap_graph.py turns it into UMAP's fuzzy graph, and edge_batches.py draws
each step's edges and negatives for loss: graph. Imports only runtime/.
"""
