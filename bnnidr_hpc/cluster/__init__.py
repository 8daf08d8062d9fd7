"""cluster: turning configs into jobs, locally or on Slurm, and following them.

planning.py plans a submission (one run or a sweep), slurm_queries.py checks it against the cluster
(slurm_nodes.py: what its partitions hold), submit.py submits it through submitit with the sbatch
script of sbatch.py, and submit_report.py prints what was planned, refused and submitted; job.py is
the small picklable job every Slurm task runs (and its checkpoint hook for requeues), and
neighbours_job.py the one that builds a k-NN graph alone (`neighbours --submit`); job_start.py
keeps early signals before torch loads; slurm_end.py tells how Slurm ended a job (time limit,
cancel, node failure, preemption, OOM); status.py and lifecycle.py show, cancel, retry and read
logs of runs; hydra_app.py and hydra_launcher.py are the Hydra entry point and launcher plugins
(python -m bnnidr_hpc.cluster.hydra_app, hydra/launcher=bnnidr_slurm).
"""
