#!/usr/bin/env bash
# Stop the local cluster that slurm/start.sh started (jobs are cancelled; state is kept).
set -uo pipefail
DIR=${BNNIDR_SLURM_DIR:-/tmp/bnnidr-slurm}
export SLURM_CONF=$DIR/slurm.conf
[ -f "$SLURM_CONF" ] && scancel --user="$(id -un)" 2>/dev/null
for pid in "$DIR"/run/slurmd*.pid "$DIR/run/slurmctld.pid"; do
  [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null
done
sleep 1
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
  rm /etc/slurm/slurm.conf
fi
echo "slurm: stopped"
