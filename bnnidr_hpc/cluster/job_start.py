"""The first Python a Slurm job runs: it catches a warning signal that comes before the job's own
handlers are in place, then hands over to submitit.

  python -m bnnidr_hpc.cluster.job_start -u -m submitit.core._submit FOLDER    (submit.py writes this)

Slurm's warning signal (USR2) or a preemption's SIGTERM may arrive while the interpreter is still
importing torch and unpickling the job; their default action would end the job with no record.
Caught here, the signal is kept in PENDING, and job.StopFlag acts on it as soon as training
starts, so the job checkpoints and requeues as it would a moment later. Only the interpreter's
own start, before this module runs, is not covered.
"""

import os
import runpy
import signal
import sys

PENDING = None  # the signal that arrived before job.StopFlag took over


def _remember(signum, frame) -> None:
    global PENDING
    PENDING = PENDING or signum


def main() -> None:
    # Run as __main__: under its package name too, so that job.StopFlag reads this PENDING.
    sys.modules.setdefault("bnnidr_hpc.cluster.job_start", sys.modules[__name__])
    for sig in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, _remember)
    args = sys.argv[1:]
    if args[:1] == ["-u"]:  # unbuffered output, as `python -u` would give
        args = args[1:]
        os.environ["PYTHONUNBUFFERED"] = "1"
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
    if args[:1] != ["-m"] or len(args) < 2:
        sys.exit("usage: python -m bnnidr_hpc.cluster.job_start [-u] -m MODULE ARGS...")
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
