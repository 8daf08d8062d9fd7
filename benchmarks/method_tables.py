"""bench_method.py's results: every method's scores per data set and output size (over seeds), the
Markdown tables it prints (docs/method.md and the README take them as printed), and the rows of
its report, each target beside its figure (issue 25, item 4).

Used by: bench_method.py.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Optional

DIGITS_TARGETS = {2: 0.85, 4: 0.88, 8: 0.88}
DIGITS_SECONDS = 30.0
CURVED_K, CURVED_RETENTION = 6, 0.98
PCA_MARGIN = 0.01
LINEAR_RECALL, LINEAR_RECALL_FROM = 0.95, 6  # PCA is exact from d + 1 = 6 on: there it keeps every 10-NN
SPHERES = ("curved", "linear")
TITLES = {"digits": "digits", "wine": "wine", "breast_cancer": "breast_cancer",
          "curved": "curved sphere (curved_d5)", "linear": "linear sphere (hps_00040)"}
SUPERVISED = ("reducer graph.labels=true", "LDA", "supervised UMAP")


def fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("0.") else text


class Results:
    def __init__(self):
        self.runs, self.errors = defaultdict(list), {}

    def add(self, data: str, k, method: str, scores: dict, seconds: float, run_s: Optional[float] = None) -> None:
        self.runs[(data, k, method)].append({**scores, "seconds": seconds, "run_s": run_s})

    def fail(self, data: str, k, method: str, error: str) -> None:
        self.errors[(data, k, method)] = error

    def summary(self, data: str, k, method: str) -> Optional[dict]:
        """Mean AP over the seeds, its standard error over them (None with one seed), the mean
        bootstrap error, mean 10-NN recall and seconds, the slowest `run`."""
        runs = self.runs.get((data, k, method))
        if not runs:
            return None
        aps = [r["ap"] for r in runs]
        seed_se = statistics.stdev(aps) / math.sqrt(len(aps)) if len(aps) > 1 else None
        run_s = [r["run_s"] for r in runs if r["run_s"] is not None]
        return {"ap": statistics.mean(aps), "seed_se": seed_se, "seeds": len(aps),
                "boot_se": statistics.mean(r["ap_se"] for r in runs), "knn": statistics.mean(r["knn"] for r in runs),
                "seconds": statistics.mean(r["seconds"] for r in runs), "run_s": max(run_s) if run_s else None}

    def methods(self) -> list:
        """Every method with a result or a failure, in the order first seen."""
        return list(dict.fromkeys(m for (_, _, m) in list(self.runs) + list(self.errors)))

    def sizes(self, data: str) -> list:
        return sorted({k for (d, k, _) in list(self.runs) + list(self.errors) if d == data and k is not None})

    def datasets(self) -> list:
        return list(dict.fromkeys(d for (d, _, _) in self.runs))

    def cell(self, data: str, k, method: str, knn: bool = False) -> str:
        if (data, k, method) in self.errors:
            return "failed"
        s = self.summary(data, k, method)
        if s is None:
            return "—"
        text = f"{fmt(s['ap'])} ± {fmt(s['seed_se'])} (boot. {fmt(s['boot_se'])})" if s["seed_se"] is not None \
            else f"{fmt(s['ap'])} ± {fmt(s['boot_se'])}"
        if knn:
            text += f", 10-NN {fmt(s['knn'], 2)}"
        return text + (f", {s['seconds']:.1f} s" if method != "input" else "")

    def line(self, data: str, k) -> str:
        return "; ".join(f"{m} {fmt(s['ap'])}" for m in self.methods()
                         if (s := self.summary(data, k, m)) is not None and m != "input")


def _table(results: Results, methods: list, datasets: list, knn: bool = False) -> None:
    print("| data | k | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for data in datasets:
        for k in results.sizes(data):
            cells = [results.cell(data, None if m == "input" else k, m, knn=knn or data in SPHERES) for m in methods]
            print(f"| {TITLES[data]} | {k} | " + " | ".join(cells) + " |")


def print_tables(results: Results, umap_ok: bool, quick: bool) -> None:
    methods = ["input"] + [m for m in results.methods() if m.startswith("reducer") and m not in SUPERVISED]
    methods += ["PCA"] + (["UMAP"] if umap_ok else [])
    print(f"\n== held-out leave-one-out AP ± standard error, wall seconds ({'quick' if quick else 'full'})")
    if not umap_ok:
        print("(UMAP columns skipped: umap-learn is not installed; pip install -e .[bench])")
    _table(results, methods, [d for d in results.datasets()])
    supervised = [m for m in SUPERVISED if m in results.methods()]
    if supervised:
        print("\n== supervised (labels of the training rows), reported apart; 10-NN: the input's neighbours kept")
        _table(results, supervised, ["digits"], knn=True)
    for (data, k, method), error in results.errors.items():
        print(f"FAILED: {method} on {data} k={k}: {error}")


def _reducer_rows(results: Results, method: str) -> list:
    rows = []
    for k in results.sizes("digits"):
        s, u = results.summary("digits", k, method), results.summary("digits", k, "UMAP")
        if s is not None:
            spread = f"± {fmt(s['seed_se'])} over {s['seeds']} seeds" if s["seed_se"] is not None else \
                f"± {fmt(s['boot_se'])} (one seed)"
            beside = f"; UMAP {fmt(u['ap'])}" if u else ""
            rows.append((f"digits k={k}: {method} AP", s["ap"], spread + beside, f">= {DIGITS_TARGETS[k]}",
                         s["ap"] >= DIGITS_TARGETS[k]))
    slowest = [s["run_s"] for k in results.sizes("digits") if (s := results.summary("digits", k, method))]
    if slowest:
        rows.append((f"digits: {method} end to end (run), slowest", max(slowest), "s", f"<= {DIGITS_SECONDS:g}",
                     max(slowest) <= DIGITS_SECONDS))
    s, x = results.summary("curved", CURVED_K, method), results.summary("curved", None, "input")
    if s and x:
        rows.append((f"curved k={CURVED_K}: {method} AP retention", s["ap"] / x["ap"], "",
                     f">= {CURVED_RETENTION}", s["ap"] / x["ap"] >= CURVED_RETENTION))
    for data in ("linear", "wine", "breast_cancer"):
        for k in results.sizes(data):
            s, p = results.summary(data, k, method), results.summary(data, k, "PCA")
            if s and p:
                gap = s["ap"] - p["ap"]
                rows.append((f"{data} k={k}: {method} AP - PCA AP", gap, "", f">= -{PCA_MARGIN}", gap >= -PCA_MARGIN))
            if s and data == "linear" and k >= LINEAR_RECALL_FROM:
                rows.append((f"linear k={k}: {method} 10-NN recall", s["knn"], "", f">= {LINEAR_RECALL}",
                             s["knn"] >= LINEAR_RECALL))
    return rows


def target_rows(results: Results) -> list:
    """(figure, value, unit, target, met) rows for the report: each reducer variant against every
    target; the baselines' figures beside them, without targets."""
    rows = []
    failed = defaultdict(list)
    for (_, _, method), error in results.errors.items():
        failed[method].append(error)
    for method in [m for m in results.methods() if m.startswith("reducer") and m != SUPERVISED[0]]:
        rows += _reducer_rows(results, method)
    for k in results.sizes("digits"):
        if (u := results.summary("digits", k, "UMAP")) is not None:
            rows.append((f"digits k={k}: UMAP AP", u["ap"], f"({u['seconds']:.1f} s)", None, None))
    s, p = results.summary("curved", CURVED_K, "PCA"), results.summary("curved", None, "input")
    if s and p:
        rows.append((f"curved k={CURVED_K}: PCA AP retention", s["ap"] / p["ap"], "", None, None))
    for k in results.sizes("digits"):
        s, u = results.summary("digits", k, SUPERVISED[0]), results.summary("digits", k, SUPERVISED[2])
        lda = results.summary("digits", k, "LDA")
        if s and u:
            rows.append((f"digits k={k}: {SUPERVISED[0]} AP (supervised)", s["ap"], f"LDA {fmt(lda and lda['ap'])}",
                         f">= supervised UMAP {fmt(u['ap'])}", s["ap"] >= u["ap"]))
    for method, errors in failed.items():
        rows.append((f"{method}: failed to run ({len(errors)} runs)", float("nan"), errors[0][:100], None, None))
    return rows
