"""reduce: applying a trained reducer to new data (`bnnidr-hpc reduce`, `bnnidr_hpc.load_reducer`).

Loads a completed run's checkpoint and normalisation, and streams .npy files of any size through
the network in blocks, writing the reduced vectors atomically.
"""
