"""data: where the points come from, given plain parameters (a run's data section), not the config.

sources.py makes a run's points: synthetic hyperspheres generated on the fly from the seed (any
rank makes any index range) or a user's .npy features, and the ShardLoader that hands each rank its
shard of every batch; features.py reads N x p .npy shards through memory maps (files larger than
memory), holds rows out for evaluation, and normalises. Imports only runtime/.
"""
