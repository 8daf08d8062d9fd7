#!/usr/bin/env python3
"""Scaling tables from run records: python tools/collect.py DIR... [--format markdown|csv|json] [--plot F.png]

The same as `bnnidr-hpc collect`. It reads record.json files only; see bnnidr_hpc/records/collect.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from bnnidr_hpc.records.collect import main  # noqa: E402  (stdlib only: no torch, no training code)

if __name__ == "__main__":
    sys.exit(main())
