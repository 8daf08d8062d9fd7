"""How small can the output be? output_dim sweeps of the default reducer and of PCA on spheres of
known intrinsic dimension (linear and curved, d = 5, 10, 20) and on scikit-learn's digits, read
with collect's output_dim view: the smallest output_dim keeping >= 0.95 of the input AP (the
knee), beside TwoNN's estimate of the input's intrinsic dimension and beside the one-run estimate
of relevance_prior (relevance.py) at output_dim 32: the shortest prefix of its ordered units that
keeps >= 0.95 of the input AP.

  python benchmarks/bench_output_dim.py [--quick]      # --quick: d = 5 and digits only

Spheres: n = 4000, p = 128; linear: 10 categories, spread 0.35 (the schema's); curved:
conf/curved_d5.yaml with data.d set (100 categories, spread 0.1, frequency 6). Every other key at
its default. A sphere S^d needs d + 1 coordinates to keep its distances.
"""

import json
import sys
import tempfile
from pathlib import Path

from bench_method import digits_files
from common import RESULTS, machine, quick_flag

from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.config.loading import load
from bnnidr_hpc.records import output_dim_view
from bnnidr_hpc.records.run_record import fmt
from bnnidr_hpc.records.scaling import group_key
from bnnidr_hpc.train.loop import train

REPO = Path(__file__).resolve().parents[1]
SIZES = [2, 3, 4, 6, 8, 11, 16, 21, 32]
QUIET = ["run.progress=false", "run.graph=false"]


def sweep(name: str, config, overrides: list, root: Path) -> dict:
    recs = []
    for k in SIZES:
        c = load(config, overrides + QUIET + [f"output_dim={k}", f"run.root={root / name}"])
        recs.append(train(c, run_dir_for(c)))
    c = load(config, overrides + QUIET + [f"output_dim={SIZES[-1]}", "relevance_prior=true", f"run.root={root / name}"])
    one_run = train(c, run_dir_for(c))
    (group,) = output_dim_view.groups(recs + [one_run], group_key)  # the plain sweep, and its one-run estimate
    group["relevance_run"] = one_run.get("relevance") or {}
    print(f"\n{name}: {output_dim_view.summary(group)}", flush=True)
    return group


def table(results: dict) -> str:
    """The README's table: the knees, and what the relevance prior's run keeps at all 32 units
    beside the plain run at output_dim 32 (the prior trains the later units less)."""
    lines = ["| data | TwoNN of the input | reducer knee | one-run estimate (relevance prior) | PCA knee | "
             "retention at 32: relevance run / plain run |", "|---|---|---|---|---|---|"]
    for name, g in results.items():
        twonn = f"{g['twonn']:.1f}" if g["twonn"] is not None else "-"
        widest = next((r["ap_retention"] for r in g["rows"] if r["output_dim"] == SIZES[-1]), None)
        kept = f"{fmt((g['relevance_run'].get('prefix_ap_retention') or [None])[-1], '.3f')} / {fmt(widest, '.3f')}"
        lines.append(f"| {name} | {twonn} | {g['knee'] or '> 32'} | {g['relevance'] or '> 32'} | "
                     f"{g['pca_knee'] or '> 32'} | {kept} |")
    return "\n".join(lines)


def main():
    quick = quick_flag()
    ds = (5,) if quick else (5, 10, 20)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for d in ds:
            results[f"linear d={d}"] = sweep(f"linear-d{d}", None, ["data.n=4000", f"data.d={d}"], tmp)
            results[f"curved d={d}"] = sweep(f"curved-d{d}", str(REPO / "conf" / "curved_d5.yaml"),
                                             [f"data.d={d}"], tmp)
        results["digits"] = sweep("digits", None, [o for o in digits_files(tmp) if not o.startswith("output_dim")],
                                  tmp)
    print(f"\n== output_dim knees ({'quick' if quick else 'full'}) on {machine()}")
    print(table(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "output_dim.json").write_text(json.dumps({"benchmark": "output_dim", "quick": quick,
                                                         "machine": machine(), "rows": [], "groups": results},
                                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
