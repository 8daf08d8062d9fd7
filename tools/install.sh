#!/usr/bin/env bash
# Install bnnidr-hpc with its test dependencies and the Debian packages of the local Slurm cluster.
# Idempotent. torch==2.13.0 is the CPU build these machines carry; on a GPU machine install the
# torch build for your CUDA first and pip keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  else
    echo "install.sh: Slurm is not installed and apt-get is not usable here; Slurm tests will fail" >&2
  fi
fi
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev]'
# pyenv puts new console scripts on PATH only after a rehash.
if command -v pyenv >/dev/null; then pyenv rehash; fi
