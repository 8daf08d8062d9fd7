"""The `bnnidr-hpc` command.

  bnnidr-hpc run [CONFIG] [key=value ...] [--gpus N] [--force]   train here (CPU, or N local ranks)

Bad input is one line on stderr and exit status 2, before anything is created.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from .config import ConfigError, Config, load, run_dir_for

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
    from .records import COMPLETED, read_record

    run_dir = run_dir_for(c)
    record = read_record(run_dir)
    if record and record.get("status") == COMPLETED and not force:
        return run_dir, record
    if force and run_dir.exists():
        # Keep the old run beside the new one rather than deleting results.
        shutil.move(str(run_dir), f"{run_dir}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    return run_dir, None


def cmd_run(ns) -> int:
    from .train import train

    config_path, overrides = split_config_and_overrides(ns.args)
    c = load(config_path, overrides)
    run_dir, done = _prepare_run_dir(c, ns.force)
    if done:
        print(f"already completed (use --force to train again):\n{_summary(done)}")
        return 0
    record = train(c, run_dir)
    print(_summary(record))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnnidr-hpc", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train locally: CONFIG (a YAML file; default: built-in) and key=value overrides")
    run.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    run.add_argument("--force", action="store_true", help="train again even if this config already completed")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return ns.func(ns)
    except (ConfigError, UsageError) as exc:
        print(f"bnnidr-hpc: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
