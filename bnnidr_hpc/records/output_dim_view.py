"""How small can the reduced vector be? `collect --view output_dim`: AP retention against output_dim,
the reducer and PCA side by side, for runs that differ only in output_dim (conf/sweep_output_dim.yaml).

Used by: collect.py.

For each group, the knee is the smallest output_dim whose AP retention is at least KEEP (0.95):
the reducer's own answer to "how many dimensions does this data need", beside PCA's and beside
TwoNN's estimate of the input's intrinsic dimension (of the gallery, in the record's
intrinsic_dim). A sphere S^d needs d + 1 coordinates to keep its distances, so on the synthetic
spheres a knee of d + 1 means the reducer found the intrinsic dimension.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional

from bnnidr_hpc.records import run_record

KEEP = 0.95
COLUMNS = ["output_dim", "runs", "ap", "ap_se", "ap_retention", "knn_recall", "pca_ap", "pca_retention",
           "random_ap"]
HEADERS = {"output_dim": "output_dim", "runs": "runs", "ap": "AP", "ap_se": "± SE", "ap_retention": "retention",
           "knn_recall": "knn recall", "pca_ap": "PCA AP", "pca_retention": "PCA retention",
           "random_ap": "random AP"}


def _number(value) -> Optional[float]:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else None


def _twonn(rec: dict) -> Optional[float]:
    dims = rec.get("intrinsic_dim")
    gallery = dims.get("gallery_input") if isinstance(dims, dict) else None
    return _number(gallery.get("dimension")) if isinstance(gallery, dict) else None


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _knee(rows: List[dict], key: str) -> Optional[int]:
    return next((r["output_dim"] for r in rows if r[key] is not None and r[key] >= KEEP), None)


def _relevance(runs: List[dict]) -> Optional[int]:
    """relevance_prior's one-run estimate (relevance.py), of the widest of these runs that has one."""
    for rec in sorted(runs, key=lambda r: -r["output_dim"]):
        rel = rec.get("relevance")
        if isinstance(rel, dict) and isinstance(rel.get("dimension"), int):
            return rel["dimension"]
    return None


def groups(recs: List[dict], group_key) -> List[dict]:
    """[{label, rows (one per output_dim, sorted), knee, pca_knee, twonn, relevance}] for the completed
    records, grouped by everything of their config but output_dim and relevance_prior
    (group_key(config)). A relevance_prior run (relevance.py) gives the group its one-run
    estimate beside the plain sweep's knee; the rows are the plain runs, or the relevance runs
    where the group has no plain one."""
    by_group: Dict[str, Dict[bool, Dict[int, List[dict]]]] = {}
    for rec in recs:
        k = rec.get("output_dim")
        if not isinstance(k, int) or not isinstance(rec.get("config"), dict):
            continue
        config = {key: value for key, value in rec["config"].items() if key not in ("output_dim", "relevance_prior")}
        prior = rec["config"].get("relevance_prior") is True
        by_group.setdefault(group_key(config), {}).setdefault(prior, {}).setdefault(k, []).append(rec)
    out = []
    for key, by_kind in sorted(by_group.items()):
        relevance_runs = [r for runs in by_kind.get(True, {}).values() for r in runs]
        by_dim = by_kind.get(False) or by_kind[True]
        rows = []
        for k in sorted(by_dim):
            runs = by_dim[k]
            rows.append({
                "output_dim": k, "runs": len(runs),
                "ap": _mean(_number(r.get("ap_out")) for r in runs),
                "ap_se": _mean(_number(r.get("ap_out_se")) for r in runs),
                "ap_retention": _mean(_number(r.get("ap_retention")) for r in runs),
                "knn_recall": _mean(_number(r.get("knn_recall")) for r in runs),
                "pca_ap": _mean(run_record.baseline(r, "pca") for r in runs),
                "pca_retention": _mean(run_record.baseline(r, "pca", "ap_retention") for r in runs),
                "random_ap": _mean(run_record.baseline(r, "random") for r in runs),
            })
        config = json.loads(key)
        data = config.get("data") if isinstance(config.get("data"), dict) else {}
        label = (f"{data.get('source', 'sphere')}: " +
                 (f"{data.get('path')}" if data.get("source") == "npy" else
                  f"d={data.get('d')} p={data.get('p')} {data.get('embedding', 'linear')}"))
        out.append({"label": label, "rows": rows, "knee": _knee(rows, "ap_retention"),
                    "pca_knee": _knee(rows, "pca_retention"),
                    "twonn": _mean(_twonn(r) for runs in by_dim.values() for r in runs),
                    "relevance": _relevance(relevance_runs)})
    return out


def summary(group: dict) -> str:
    def knee(k):
        return str(k) if k is not None else f"none of these (all below {KEEP})"

    twonn = f"{group['twonn']:.1f}" if group["twonn"] is not None else "-"
    one_run = (f"; relevance prior's one-run estimate: {group['relevance']}"
               if group.get("relevance") is not None else "")
    return (f"smallest output_dim keeping >= {KEEP} of the input AP: reducer {knee(group['knee'])}, "
            f"PCA {knee(group['pca_knee'])}; TwoNN of the input: {twonn}{one_run}")
