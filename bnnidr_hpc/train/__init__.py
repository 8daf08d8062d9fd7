"""train: one training run, from a validated Config and a run directory to a finished record.

loop.py is the training loop (every entry point calls loop.train: the CLI, a Slurm job, the Hydra
app, tests) and stopping.py how its ranks agree to stop; session.py what a run sets up before its
first epoch (data, model, optimizers, resume, output_dim: auto, the k-NN graph through
graph_stage.py); step.py one optimisation step; optim.py the optimizers and schedules;
checkpoint.py saving and resuming; evaluate.py the retrieval evaluation beside PCA and random
baselines, with the metrics of retrieval.py (average precision, k-NN recall); intrinsic.py the
TwoNN intrinsic dimension (output_dim: auto); relevance.py the relevance prior.
"""
