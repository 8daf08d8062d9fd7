"""A finished run's record in a few lines for the terminal: status and run directory, epochs, loss
and throughput, the reducer's AP beside the input's and the baselines', and the relevance prior's
estimate where the run had one.

Used by: cli.py (what `bnnidr-hpc run` prints when a run ends, or finds it already ended).
"""

from __future__ import annotations

from bnnidr_hpc.records.run_record import fmt


def summary(record: dict) -> str:
    baselines = record.get("baselines") or {}
    beside = "  ".join(f"{name} {fmt(b.get('ap'))} ± {fmt(b.get('ap_se'))} (knn {fmt(b.get('knn_recall'), '.3f')})"
                       for name, b in (("PCA", baselines.get("pca", {})), ("random", baselines.get("random", {}))))
    return (f"{record['status']}: {record['run_dir']}\n"
            f"  epochs {record['epochs_done']}/{record['max_epochs']}  loss {fmt(record['final_loss'])}  "
            f"{fmt(record['samples_per_s'], '.0f')} samples/s  {fmt(record['total_seconds'], '.1f')} s\n"
            f"  AP in {fmt(record['ap_in'])} ± {fmt(record.get('ap_in_se'))}  reducer {fmt(record['ap_out'])} ± "
            f"{fmt(record.get('ap_out_se'))} (retention {fmt(record['ap_retention'], '.3f')}, knn "
            f"{fmt(record.get('knn_recall'), '.3f')})\n"
            f"  at output_dim {record['output_dim']}: {beside}"
            + (f"\n  {record['ap_note']}" if record.get("ap_note") else "")
            + (f"\n  {_relevance_line(record['relevance'])}" if isinstance(record.get("relevance"), dict) else ""))


def _relevance_line(rel: dict) -> str:
    """relevance_prior's one-run estimate (train/relevance.py)."""
    return (f"relevance prior (centred on TwoNN {fmt(rel.get('centre'), '.1f')}): the shortest prefix of the units "
            f"keeping >= {rel.get('keep')} of the input AP: {rel.get('dimension') or 'none'}; of the whole output's "
            f"knn_recall: {rel.get('dimension_knn_recall') or 'none'}")
