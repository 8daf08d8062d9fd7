"""The `bnnidr-hpc` command.

  bnnidr-hpc run [CONFIG] [key=value ...] [--gpus N] [--force]   train here (one device, or N local ranks)
  bnnidr-hpc submit CONFIG --gpus 1,2,4 [key=a,b ...] [--nodes N] [--dry-run] [--local] [--force]
  bnnidr-hpc status DIR [--follow]                               jobs of a run or sweep directory
  bnnidr-hpc estimate-id [CONFIG] [key=value ...] [--sample N]   TwoNN intrinsic dimension of the data
  bnnidr-hpc collect DIR... [--format markdown|csv|json] [--plot F.png]   scaling tables

Bad input is one line on stderr and exit status 2, before anything is created.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from .config import ConfigError, Config, load, run_dir_for
from .records import COMPLETED, read_record

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line input; str() is the one line shown."""


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


def _summary(record: dict) -> str:
    def f(v, spec=".4f"):
        return "-" if v is None else format(v, spec)

    return (f"{record['status']}: {record['run_dir']}\n"
            f"  epochs {record['epochs_done']}/{record['max_epochs']}  loss {f(record['final_loss'])}  "
            f"AP in {f(record['ap_in'])} -> out {f(record['ap_out'])} (retention {f(record['ap_retention'], '.3f')})  "
            f"{f(record['samples_per_s'], '.0f')} samples/s  {f(record['total_seconds'], '.1f')} s")


def _prepare_run_dir(c: Config, force: bool) -> Tuple[Path, Optional[dict]]:
    """The run's directory; a completed record there is returned (and not rerun) unless force."""
    run_dir = run_dir_for(c)
    record = read_record(run_dir)
    if record and record.get("status") == COMPLETED and not force:
        return run_dir, record
    if force and run_dir.exists():
        # Keep the old run beside the new one rather than deleting results.
        shutil.move(str(run_dir), f"{run_dir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    return run_dir, None


def parse_gpus(text: str) -> List[int]:
    try:
        gpus = [int(x) for x in text.split(",")]
    except ValueError:
        gpus = []
    if not gpus or min(gpus) < 1:
        raise UsageError(f"--gpus={text!r} is not allowed: a positive integer or a comma list, e.g. 4 or 1,2,4")
    return gpus


def cmd_run(ns) -> int:
    from .launch import run_local

    config_path, overrides = split_config_and_overrides(ns.args)
    if ns.gpus is not None:
        overrides.append(f"num_gpu={parse_gpus(str(ns.gpus))[0]}")
    c = load(config_path, overrides)
    if c.num_nodes != 1:
        raise UsageError(f"num_nodes={c.num_nodes} is not allowed for run: one machine; use submit --nodes")
    run_dir, done = _prepare_run_dir(c, ns.force)
    if done:
        print(f"already completed (use --force to train again):\n{_summary(done)}")
        return 0
    record = run_local(c, run_dir)
    print(_summary(record))
    if record["status"] != "completed":
        print("interrupted: run the same command again to resume from the checkpoint", file=sys.stderr)
        return 3
    return 0


def expand_sweep(overrides: List[str]) -> List[List[str]]:
    """Hydra's sweep syntax (batch_size=128,256 ...) expanded into one override list per point."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise UsageError(f"overrides: {str(exc).splitlines()[0]}; write key=value or key=a,b,c") from None
    return BasicSweeper.split_arguments(parsed, None)[0] if parsed else [[]]


def _sweep_dir(root: str, name: str, spec: dict) -> Path:
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return Path(root).resolve() / f"{name or 'default'}-sweep-{digest}"


def cmd_submit(ns) -> int:
    from . import launch
    from .config import to_yaml

    config_path, overrides = split_config_and_overrides(ns.args)
    if ns.nodes < 1:
        raise UsageError(f"--nodes={ns.nodes} is not allowed: a positive integer")
    # The config's own sweep preset (read, not validated: the sweep's values are not in yet).
    from omegaconf import OmegaConf

    from .config import compose

    preset = OmegaConf.to_object(compose(config_path, [o for o in overrides if "," not in o]).sweep)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    overrides = overrides + [f"{k}={v}" for k, v in preset.grid.items() if k not in given]
    combos = expand_sweep(overrides)
    gpus_list = parse_gpus(ns.gpus) if ns.gpus else (list(preset.gpus) or [None])
    first = load(config_path, combos[0])
    sweep_dir = None
    if len(combos) * len(gpus_list) > 1:
        spec = {"config": str(Path(config_path).resolve()) if config_path else None, "gpus": gpus_list,
                "nodes": ns.nodes, "overrides": overrides}
        sweep_dir = _sweep_dir(first.run.root, first.run.name, spec)
    # Every point is validated before anything is submitted.
    points = []
    for gpus in gpus_list:
        for combo in combos:
            extra = [f"num_nodes={ns.nodes}"] + ([f"num_gpu={gpus}"] if gpus else [])
            extra += [f"run.root={sweep_dir}"] if sweep_dir else []
            c = load(config_path, combo + extra)
            points.append(launch.Point(c, run_dir_for(c)))

    groups: dict = {}
    for point in points:
        c = point.config
        groups.setdefault((c.num_gpu, c.num_nodes, c.cluster.name), []).append(point)

    def folder_of(group):
        return (sweep_dir / "slurm") if sweep_dir else (group[0].run_dir / "slurm")

    if ns.dry_run:
        for point in points:
            print(f"# run directory: {point.run_dir}\n{to_yaml(point.config)}")
        for group in groups.values():
            print(f"# sbatch script for {len(group)} run(s), {group[0].config.num_nodes} node(s) x "
                  f"{group[0].config.num_gpu} GPU(s)")
            print(launch.sbatch_script(group[0].config, folder_of(group), len(group) if len(group) > 1 else None))
        print(f"dry run: {len(points)} run(s) validated, nothing submitted")
        return 0
    if not ns.local:
        reason = launch.slurm_available()
        if reason:
            raise UsageError(f"submit: {reason}; train here with `bnnidr-hpc run {config_path or ''} ...` "
                             f"or use `bnnidr-hpc submit --local`")

    for key, group in list(groups.items()):
        todo = []
        for point in group:
            record = read_record(point.run_dir)
            job = launch.read_job(point.run_dir)
            slurm = launch.job_state(job["job_id"]) if job and job.get("executor") == "slurm" else {}
            if record and record.get("status") == "completed" and not ns.force:
                print(f"completed, not rerun (--force to rerun): {point.run_dir}  AP {record.get('ap_out')}")
            elif slurm.get("JobState") and slurm["JobState"] not in launch.TERMINAL and not ns.force:
                print(f"already {slurm['JobState'].lower()} as job {job['job_id']}: {point.run_dir}")
            else:
                if ns.force:
                    _prepare_run_dir(point.config, force=True)
                elif record:
                    print(f"resuming from its checkpoint: {point.run_dir}")
                todo.append(point)
        if todo:
            for point, info in zip(todo, launch.submit_group(todo, folder_of(todo), ns.local)):
                print(f"submitted job {info['job_id']}: {point.run_dir}")
    target = sweep_dir or points[0].run_dir
    print(f"follow with: bnnidr-hpc status {target} --follow")
    return 0


def cmd_status(ns) -> int:
    from . import launch

    root = Path(ns.dir)
    if not root.is_dir():
        raise UsageError(f"status: {ns.dir!r} is not a directory (give a run or sweep directory)")
    run_dirs = launch.find_run_dirs(root)
    if not run_dirs:
        raise UsageError(f"status: no runs under {ns.dir!r} (a run directory holds record.json or job.json)")
    if not ns.follow:
        for line in launch.status_table([launch.run_status(d) for d in run_dirs]):
            print(line)
        return 0
    return launch.follow(run_dirs, ns.interval)


def cmd_estimate_id(ns) -> int:
    import torch

    from . import intrinsic
    from .data import Hypersphere
    from .distributed import DistInfo, pick_device

    config_path, overrides = split_config_and_overrides(ns.args)
    c = load(config_path, overrides)
    if ns.sample < 3:
        raise UsageError(f"--sample={ns.sample} is not allowed: at least 3 points")
    n = min(ns.sample, c.data.n)
    device = pick_device(DistInfo(), c.run.device)
    started = time.perf_counter()
    x, _ = Hypersphere(c.data, c.seed, device).range(0, n)
    estimates = intrinsic.estimate_all(x)
    seconds = time.perf_counter() - started
    print(f"TwoNN intrinsic dimension of {n} points of {c.run.name or 'the default data'} "
          f"(p={c.data.p}, embedding={c.data.embedding}, noise={c.data.noise}) on {device.type}, {seconds:.1f} s")
    for name, e in estimates.items():
        print(f"  {name:<6} {e['dimension']:7.2f} +- {e['error']:.2f}")
    print(f"  true d {c.data.d:7d}   (output_dim=auto would choose "
          f"{intrinsic.output_dim_for(estimates['mle']['dimension'], c.data.p)})")
    if ns.json:
        print(json.dumps({"n": n, "p": c.data.p, "true_d": c.data.d, "seconds": seconds, "estimates": estimates}))
    return 0


def cmd_collect(ns) -> int:
    from .collect import main as collect_main

    return collect_main(ns.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnnidr-hpc", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train locally: CONFIG (a YAML file; default: built-in) and key=value overrides")
    run.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    run.add_argument("--gpus", type=str, default=None, help="ranks on this machine (GPUs, or gloo CPU processes)")
    run.add_argument("--force", action="store_true", help="train again even if this config already completed")
    run.set_defaults(func=cmd_run)
    sub_ = sub.add_parser("submit", help="submit Slurm job(s) through submitit; comma lists make a sweep")
    sub_.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    sub_.add_argument("--gpus", type=str, default=None, help="GPUs (= ranks) per node; 1,2,4 submits each")
    sub_.add_argument("--nodes", type=int, default=1, help="nodes per job")
    sub_.add_argument("--dry-run", action="store_true", help="validate, print configs and sbatch scripts, submit nothing")
    sub_.add_argument("--local", action="store_true", help="run through submitit's local executor instead of Slurm")
    sub_.add_argument("--force", action="store_true", help="rerun completed runs")
    sub_.set_defaults(func=cmd_submit)
    st = sub.add_parser("status", help="state of the jobs of a run or sweep directory")
    st.add_argument("dir")
    st.add_argument("--follow", action="store_true", help="print progress until every job has ended")
    st.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    st.set_defaults(func=cmd_status)
    est = sub.add_parser("estimate-id", help="TwoNN intrinsic dimension of the configured data set")
    est.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    est.add_argument("--sample", type=int, default=10000, help="points to estimate on (default 10000)")
    est.add_argument("--json", action="store_true", help="also print the estimates as one JSON line")
    est.set_defaults(func=cmd_estimate_id)
    col = sub.add_parser("collect", help="scaling tables from the records under DIR... (tools/collect.py)",
                         add_help=False)
    col.add_argument("rest", nargs=argparse.REMAINDER)
    col.set_defaults(func=cmd_collect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    # Overrides may come before or after the options: collect the stray positionals.
    ns, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-")]
    if unknown or (extra and not hasattr(ns, "args")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        ns.args = list(ns.args) + extra
    try:
        return ns.func(ns)
    except (ConfigError, UsageError) as exc:
        print(f"bnnidr-hpc: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
