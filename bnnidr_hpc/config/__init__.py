"""config: a run's configuration, from YAML and overrides to one validated, typed Config.

schema.py (with cluster_schema.py) is the single source of truth: typed dataclasses registered in
Hydra's ConfigStore, every default once; loading.py composes conf/ files and key=value overrides
through Hydra and converts once, after the raw YAML and overrides pass raw_checks.py, finding
cluster profiles by profiles.py's search order; validation.py (with graph_checks.py) checks every
value (one line naming the key and what is allowed); derive.py fills in what the data decide (p and
n from feature files); identity.py names a run by its difference from the defaults (run_dir_for).
Nothing here creates a file.
"""
