"""The `bnnidr-hpc` command.

  bnnidr-hpc run [CONFIG] [key=value ...] [--gpus N] [--force]   train here (one device, N local ranks, torchrun)
  bnnidr-hpc submit CONFIG --gpus 1,2,4 [key=a,b ...] [--nodes N] [--check|--dry-run] [--local] [--force]
  bnnidr-hpc status DIR... [--follow]                            jobs of run or sweep directories
  bnnidr-hpc logs RUN_DIR [--rank R] [--follow]                  a rank's Slurm logs, over every restart
  bnnidr-hpc cancel DIR                                          scancel the jobs of a run or sweep
  bnnidr-hpc retry DIR [--failed] [--cancelled]                  resubmit the points that did not complete
  bnnidr-hpc estimate-id [CONFIG] [key=value ...] [--sample N]   TwoNN intrinsic dimension of the data
  bnnidr-hpc collect DIR... [--format markdown|csv|json] [--plot F.png]   scaling tables
  bnnidr-hpc reduce RUN_DIR INPUT... OUTPUT [--mc-samples K]      apply a trained reducer to .npy files
  bnnidr-hpc neighbours [CONFIG] [key=value ...] [--gpus N] [--submit [--nodes M]]   the k-NN graph alone

Parsing and dispatch only: each command's work is its layer's (docs/architecture.md). How a
command ended is an exit status (1 failed, 2 bad input, before anything is created; 3 interrupted)
and at most one line on stderr. Modules that import torch are imported inside the commands, so
status and collect start without it.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from pathlib import Path
from typing import List, Optional, Tuple

from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.records.run_files import RunDirBusy, check_free, read_record, set_aside
from bnnidr_hpc.records.run_record import COMPLETED, DIVERGED
from bnnidr_hpc.records.summary import summary
from bnnidr_hpc.runtime.atomic_files import RunFileError
from bnnidr_hpc.runtime.errors import ConfigError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 3


class UsageError(Exception):
    """Bad command-line input; str() is the one line shown."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad flag or value as one line (exit 2) instead of its usage block."""

    def error(self, message):
        raise UsageError(f"{message} ({self.prog} --help)")


def split_config_and_overrides(args: List[str]) -> Tuple[Optional[str], List[str]]:
    config, overrides = None, []
    for i, arg in enumerate(args):
        if "=" in arg:
            overrides.append(arg)
        elif i == 0:
            config = arg
        else:
            raise UsageError(f"unexpected argument {arg!r}: give CONFIG first, then key=value overrides")
    return config, overrides


def parse_gpus(text: str) -> List[int]:
    try:
        gpus = [int(x) for x in text.split(",")]
    except ValueError:
        gpus = []
    if not gpus or min(gpus) < 1:
        raise UsageError(f"--gpus={text!r} is not allowed: a positive integer or a comma list, e.g. 4 or 1,2,4")
    return gpus


def cmd_run(ns) -> int:
    from bnnidr_hpc.cluster.job import check_local
    from bnnidr_hpc.runtime import distributed

    config_path, overrides = split_config_and_overrides(ns.args)
    if ns.gpus is not None:
        gpus = parse_gpus(str(ns.gpus))
        if len(gpus) > 1:
            raise UsageError(f"--gpus={ns.gpus} is not allowed for run: one count (a list is for submit)")
        overrides.append(f"num_gpu={gpus[0]}")
    c = load(config_path, overrides)
    check_local(c)
    main_rank = distributed.describe().is_main  # under torchrun, rank 0 alone speaks
    run_dir = run_dir_for(c)
    if main_rank:
        check_free(run_dir)
    earlier = read_record(run_dir) or {}
    if earlier.get("status") in (COMPLETED, DIVERGED) and not ns.force:
        if main_rank:
            print(f"already {earlier['status']} (use --force to train again):\n{summary(earlier)}")
        return 0 if earlier["status"] == COMPLETED else EXIT_FAILED
    if ns.force and main_rank:
        set_aside(run_dir)
    return _train_here(c, run_dir, main_rank)


def _train_here(c, run_dir: Path, main_rank: bool) -> int:
    """Train, then one summary; every way the run ends is a line and an exit status."""
    from bnnidr_hpc.cluster.job import RunFailed, run_local

    try:
        record = run_local(c, run_dir)
    except (ConfigError, RunDirBusy):
        raise  # bad input: one line and exit 2, from main
    except (RunFailed, RunFileError) as exc:
        print(f"bnnidr-hpc: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the record holds the error; the terminal gets its line
        from bnnidr_hpc.train.loop import one_line

        print(f"bnnidr-hpc: failed: {one_line(exc)} (record: {run_dir / 'record.json'})", file=sys.stderr)
        return EXIT_FAILED
    if main_rank:
        print(summary(record))
    if record["status"] == DIVERGED:
        if main_rank:
            print(f"bnnidr-hpc: diverged: {record.get('error')} (lower learning_rate; a blow-up's bound is "
                  "run.diverge_factor)", file=sys.stderr)
        return EXIT_FAILED
    if record["status"] != COMPLETED:
        if main_rank:
            print("bnnidr-hpc: interrupted; rerun the same command to resume from the checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def cmd_submit(ns) -> int:
    from bnnidr_hpc.cluster import planning, submit_report

    config_path, overrides = split_config_and_overrides(ns.args)
    plan = planning.plan(config_path, overrides, parse_gpus(ns.gpus) if ns.gpus else None, ns.nodes)
    if ns.dry_run:
        submit_report.show_dry_run(plan)
        return 0
    if ns.check and ns.local:
        raise UsageError("submit: --check asks a Slurm cluster; it does not go with --local")
    _need_slurm(ns.local, f"train here with `bnnidr-hpc run {config_path or ''} ...` "
                          "or use `bnnidr-hpc submit --local`")
    planning.classify(plan, ns.force)
    submit_report.show_actions(plan)
    return 0 if submit_report.check_and_submit(plan, ns.local, ns.force, ns.check) else EXIT_BAD_INPUT


def _need_slurm(local: bool, otherwise: str) -> None:
    from bnnidr_hpc.cluster import slurm_queries

    reason = None if local else slurm_queries.slurm_available()
    if reason:
        raise UsageError(f"submit: {reason}; {otherwise}")


def cmd_logs(ns) -> int:
    from bnnidr_hpc.cluster import lifecycle

    run_dir = Path(ns.run_dir).absolute()
    try:
        return lifecycle.show_logs(run_dir, ns.rank, ns.follow)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_cancel(ns) -> int:
    from bnnidr_hpc.cluster import lifecycle

    root = Path(ns.dir).absolute()
    if not root.is_dir():
        raise UsageError(f"cancel: {ns.dir!r} is not a directory (give a run or sweep directory)")
    try:
        jobs = lifecycle.cancel(root)
    except RuntimeError as exc:
        print(f"bnnidr-hpc: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"cancelled {len(jobs)} job(s): {' '.join(jobs)}" if jobs else "nothing to cancel: every job has ended")
    return 0


def cmd_retry(ns) -> int:
    from bnnidr_hpc.cluster import lifecycle

    root = Path(ns.dir).absolute()
    if not root.is_dir():
        raise UsageError(f"retry: {ns.dir!r} is not a directory (give a sweep or run directory)")
    states = (["failed"] if ns.failed else []) + (["cancelled"] if ns.cancelled else [])
    try:
        accepted = lifecycle.retry(root, states or None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if accepted is None:
        print(f"nothing to retry: no {'/'.join(states or lifecycle.RETRIED)} runs under {root}")
    return EXIT_BAD_INPUT if accepted is False else 0


def cmd_status(ns) -> int:
    from bnnidr_hpc.cluster import status

    for folder in ns.dir:
        if not Path(folder).is_dir():
            raise UsageError(f"status: {folder!r} is not a directory (give run or sweep directories)")
    labels = status.labelled_run_dirs([Path(folder) for folder in ns.dir])
    if not labels:
        raise UsageError(f"status: no runs under {' '.join(ns.dir)!r} (a run directory holds record.json or job.json)")
    if not ns.follow:
        for line in status.status_table([{**status.run_status(d), "name": name} for d, name in labels.items()]):
            print(line)
        return 0
    rows = status.follow(list(labels), ns.interval, labels)
    return EXIT_FAILED if any(r["state"] != "completed" for r in rows) else 0


def cmd_estimate_id(ns) -> int:
    from bnnidr_hpc.train import intrinsic

    config_path, overrides = split_config_and_overrides(ns.args)
    if ns.sample < 3:
        raise UsageError(f"--sample={ns.sample} is not allowed: at least 3 points")
    c = load(config_path, overrides)
    result = intrinsic.estimate_config(c, ns.sample)
    for line in intrinsic.report_lines(c, result, ns.json):
        print(line)
    return 0


def cmd_neighbours(ns) -> int:
    from bnnidr_hpc.cluster import neighbours_job

    return neighbours_job.command(*split_config_and_overrides(ns.args), ns.gpus, ns.nodes, ns.submit)


def cmd_reduce(ns) -> int:
    from bnnidr_hpc.reduce import apply

    if len(ns.paths) < 3:
        raise UsageError("reduce: give RUN_DIR INPUT... OUTPUT (.npy inputs or globs, then the output .npy)")
    result = apply.run(ns.paths[0], ns.paths[1:-1], ns.paths[-1], ns.mc_samples, ns.device,
                        ns.allow_incomplete, ns.block)
    print(apply.summary_line(result))
    return 0


def cmd_collect(ns) -> int:
    from bnnidr_hpc.records.collect import main as collect_main

    return collect_main(ns.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bnnidr-hpc", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train locally: CONFIG (a YAML file; default: built-in) and key=value overrides")
    run.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    run.add_argument("--gpus", type=str, default=None, help="ranks on this machine (GPUs, or gloo CPU processes)")
    run.add_argument("--force", action="store_true", help="train again even if this config already completed")
    run.set_defaults(func=cmd_run)
    sub_ = sub.add_parser("submit", help="submit Slurm job(s) through submitit; comma lists make a sweep")
    sub_.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    sub_.add_argument("--gpus", type=str, default=None, help="GPUs (= ranks) per node; 1,2,4 submits each")
    sub_.add_argument("--nodes", type=int, default=None, help="nodes per job (default: the config's num_nodes)")
    sub_.add_argument("--dry-run", action="store_true",
                      help="validate, print configs and sbatch scripts, submit nothing")
    sub_.add_argument("--check", action="store_true",
                      help="ask the cluster (sbatch --test-only, partition time limits) and submit nothing")
    sub_.add_argument("--local", action="store_true", help="run through submitit's local executor instead of Slurm")
    sub_.add_argument("--force", action="store_true", help="rerun completed runs")
    sub_.set_defaults(func=cmd_submit)
    st = sub.add_parser("status", help="state of the jobs of run or sweep directories")
    st.add_argument("dir", nargs="+")
    st.add_argument("--follow", action="store_true", help="print progress until every job has ended")
    st.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    st.set_defaults(func=cmd_status)
    logs = sub.add_parser("logs", help="a submitted run's Slurm logs (stdout, stderr) over every restart")
    logs.add_argument("run_dir")
    logs.add_argument("--rank", type=int, default=0, help="which rank's logs (default 0)")
    logs.add_argument("--follow", action="store_true", help="keep printing until the run ends")
    logs.set_defaults(func=cmd_logs)
    can = sub.add_parser("cancel", help="cancel the Slurm jobs of a run or sweep directory")
    can.add_argument("dir")
    can.set_defaults(func=cmd_cancel)
    ret = sub.add_parser("retry", help="resubmit a sweep's failed, cancelled and unsubmitted points (one array)")
    ret.add_argument("dir")
    ret.add_argument("--failed", action="store_true", help="only the failed points")
    ret.add_argument("--cancelled", action="store_true", help="only the cancelled points")
    ret.set_defaults(func=cmd_retry)
    est = sub.add_parser("estimate-id", help="TwoNN intrinsic dimension of the configured data set")
    est.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    est.add_argument("--sample", type=int, default=10000, help="points to estimate on (default 10000)")
    est.add_argument("--json", action="store_true", help="also print the estimates as one JSON line")
    est.set_defaults(func=cmd_estimate_id)
    red = sub.add_parser("reduce", help="apply a completed run's reducer to .npy files: RUN_DIR INPUT... OUTPUT")
    red.add_argument("paths", nargs="*", metavar="RUN_DIR INPUT... OUTPUT")
    red.add_argument("--mc-samples", type=int, default=1,
                     help="Bayesian run: average K posterior draws and save their spread (default 1: posterior mean)")
    red.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    red.add_argument("--allow-incomplete", action="store_true", help="use the last checkpoint of an unfinished run")
    red.add_argument("--block", type=int, default=None, help=argparse.SUPPRESS)
    red.set_defaults(func=cmd_reduce)
    nn = sub.add_parser("neighbours", help="build the k-NN graph of a config's training rows into its cache")
    nn.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    nn.add_argument("--gpus", type=int, default=None, help="ranks (GPUs or gloo CPU processes); per node if --submit")
    nn.add_argument("--submit", action="store_true", help="as a Slurm job of its own (the config's cluster profile)")
    nn.add_argument("--nodes", type=int, default=None, help="--submit: nodes (default: the config's num_nodes)")
    nn.set_defaults(func=cmd_neighbours)
    col = sub.add_parser("collect", help="scaling tables from the records under DIR... (tools/collect.py)",
                         add_help=False)
    col.add_argument("rest", nargs=argparse.REMAINDER)
    col.set_defaults(func=cmd_collect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # Overrides may come before or after the options: collect the stray positionals.
        ns, extra = build_parser().parse_known_args(argv)
        if ns.command == "collect":  # every argument after the word is collect's own, --help included
            ns.rest, extra = argv[argv.index("collect") + 1:], []
        unknown = [a for a in extra if a.startswith("-")]
        if unknown or (extra and not hasattr(ns, "args")):
            raise UsageError(f"unrecognized arguments: {' '.join(unknown or extra)} (bnnidr-hpc --help)")
        if extra:
            ns.args = list(ns.args) + extra
        return ns.func(ns)
    except (ConfigError, UsageError, RunDirBusy) as exc:
        print(f"bnnidr-hpc: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry() -> None:
    """The `bnnidr-hpc` command: main(), then the exit without Python's teardown of torch's modules
    (0.5 s of a run here: benchmarks/bench_overheads.py). Every file a command writes is closed
    by then, and what the normal exit would still run is run first, in its order: threading's
    shutdown, the exit handlers (multiprocessing joins its children), the flush of the streams."""
    code = main()
    threading._shutdown()  # what Py_FinalizeEx calls first; there is no public name for it
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # `bnnidr-hpc collect ... | head`, or a closed stream
            pass
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    entry()
