"""Every benchmark, each in its own process, then one table of every figure beside its target.

  python benchmarks/run_all.py --quick      # 20-40 minutes on a 2-core CPU (bench_method's trainings most of it)
  python benchmarks/run_all.py              # longer runs, a whole ImageNet-scale epoch

Results: benchmarks/results/*.json (BNNIDR_BENCH_OUT moves them). The tooling benchmark also
times submit -> first step when the local Slurm cluster runs (bash slurm/start.sh).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, machine

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_step", "bench_workloads", "bench_whole", "bench_overheads", "bench_data", "bench_distributed",
              "bench_tooling", "bench_method", "bench_bayes", "bench_npy", "bench_graph"]


def main():
    flags = [a for a in sys.argv[1:] if a == "--quick"]
    started = time.time()
    failed = []
    for name in BENCHMARKS:
        code = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *flags], cwd=HERE.parent).returncode
        if code:
            failed.append(name)
    print(f"\n== summary ({'quick' if flags else 'full'}, {time.time() - started:.0f} s) on {machine()}, "
          f"{time.strftime('%Y-%m-%d')}")
    met = missed = 0
    for path in sorted(RESULTS.glob("*.json")):
        if path.stat().st_mtime < started:  # an earlier run's, or a variant run by hand (bench_method's flags)
            continue
        result = json.loads(path.read_text())
        for r in result["rows"]:
            if r["met"] is None:
                continue
            met, missed = met + r["met"], missed + (not r["met"])
            print(f"  {'met   ' if r['met'] else 'MISSED'}  {result['benchmark']}: {r['figure']} = "
                  f"{r['value']:.4g} {r['unit']} (target {r['target']})")
    print(f"{met} targets met, {missed} missed" + (f"; failed to run: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
