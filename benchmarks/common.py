"""Shared by the benchmarks: honest timing, peak memory, and a result table with targets.

Timing follows one rule: warm-up iterations are dropped, the device is synchronised before the
clock is read, and figures are per second of steady state.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

RESULTS = Path(os.environ.get("BNNIDR_BENCH_OUT", Path(__file__).resolve().parent / "results"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    started = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - started) / iters


def interleaved_seconds(calls: Dict[str, Callable[[], object]], device: torch.device, rounds: int,
                        iters: int, warmup: int = 3) -> Dict[str, float]:
    """Median seconds per call of each function, timed in alternating rounds so that a slow spell
    of a shared machine falls on all of them alike rather than on whichever ran then."""
    times = {name: [] for name in calls}
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(seconds_per_call(fn, device, warmup=0, iters=iters))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_rss_gb() -> float:
    """Peak resident memory of this process (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    from bnnidr_hpc.runtime import products

    model = products.cpu_info().get("model name") or platform.processor() or platform.machine()
    return f"{model} CPU x{os.cpu_count()}, torch {torch.__version__}, float32 products: {products.resolve('auto')}"


class Report:
    """Rows of (figure, value, unit, target, met); printed as a table and written as JSON."""

    def __init__(self, name: str, quick: bool):
        self.name, self.quick, self.rows = name, quick, []

    def add(self, figure: str, value: float, unit: str, target: Optional[str] = None,
            met: Optional[bool] = None) -> None:
        self.rows.append({"figure": figure, "value": value, "unit": unit, "target": target, "met": met})

    def finish(self) -> dict:
        width = max(len(r["figure"]) for r in self.rows)
        print(f"\n== {self.name} ({'quick' if self.quick else 'full'}) on {machine()}")
        for r in self.rows:
            mark = "" if r["met"] is None else ("  met" if r["met"] else "  MISSED")
            target = f"  target {r['target']}" if r["target"] else ""
            print(f"  {r['figure']:<{width}}  {r['value']:>12.4g} {r['unit']}{target}{mark}")
        result = {"benchmark": self.name, "quick": self.quick, "machine": machine(),
                  "date": time.strftime("%Y-%m-%d"), "rows": self.rows}
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{self.name}.json").write_text(json.dumps(result, indent=1))
        return result


def quick_flag() -> bool:
    return "--quick" in sys.argv


def run_child(cmd, env=None, cwd=None):
    """Run a command; (wall seconds from start to exit, its peak resident memory in GB, output)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryFile("w+") as log:  # a pipe would block a child that writes much
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 2**20, output
