#!/usr/bin/env bash
# Start a real Slurm cluster of three nodes on this machine (Debian's slurm-wlm and munge), for
# tests and demos, shaped like a real one: a CPU-only default partition `cpu` (node cpu1) beside a
# `gpu` partition of two nodes (gpu1, gpu2) with 4 typed GPUs each (gres gpu:h100:4, backed by
# /dev/null-like device files), so multi-node jobs and typed GPU requests are scheduled on a
# CPU-only machine. Every node is a slurmd of its own with its own loopback address; the node
# names do not resolve (as on clusters whose node names are not in DNS), so jobs rendezvous at
# the address Slurm gives. Requeueing is off by default (JobRequeue=0), as on many clusters; jobs
# ask for it. Idempotent: running it again leaves a healthy cluster alone and repairs drained nodes.
#
#   bash slurm/start.sh          # then: export SLURM_CONF=/tmp/bnnidr-slurm/slurm.conf
#   bash slurm/stop.sh
#
# Everything lives under $BNNIDR_SLURM_DIR (default /tmp/bnnidr-slurm); ports are off Slurm's
# defaults so a system cluster cannot clash.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DIR=${BNNIDR_SLURM_DIR:-/tmp/bnnidr-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
GPU_NODES="gpu1 gpu2"
NODES="cpu1 $GPU_NODES"
GPUS=4

require_slurm start.sh
mkdir -p "$DIR"/{state,spool,log,run,gpus}
gres_lines=()
for node in $GPU_NODES; do
  gres_lines+=("$(fake_gpus "$DIR" "$node" h100 $GPUS)")
done
cat > "$CONF.new" <<CONF
# Written by slurm/start.sh; see slurm/README.md.
ClusterName=bnnidr
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6917
$(shared_settings "$DIR")
NodeName=cpu1 NodeHostname=$HOST NodeAddr=127.0.0.2 Port=6921 CPUs=8 RealMemory=8000 State=UNKNOWN
NodeName=gpu1 NodeHostname=$HOST NodeAddr=127.0.0.3 Port=6922 CPUs=4 Gres=gpu:h100:$GPUS RealMemory=8000 State=UNKNOWN
NodeName=gpu2 NodeHostname=$HOST NodeAddr=127.0.0.4 Port=6923 CPUs=4 Gres=gpu:h100:$GPUS RealMemory=8000 State=UNKNOWN
# Limits in minutes: a job asking for more is refused by 'bnnidr-hpc submit --check'.
PartitionName=cpu Nodes=cpu1 Default=YES MaxTime=120 State=UP OverSubscribe=NO
PartitionName=gpu Nodes=gpu1,gpu2 MaxTime=120 State=UP OverSubscribe=NO
CONF
{ echo "AutoDetect=off"; printf '%s\n' "${gres_lines[@]}"; } > "$DIR/gres.conf.new"
export SLURM_CONF=$CONF
start_cluster start.sh "$DIR" "$CONF" "$NODES"
wait_for_nodes start.sh "$DIR" "$NODES"
# Let plain sbatch/sinfo find this cluster when no system configuration exists.
if [ "$(id -u)" = 0 ] && [ ! -e /etc/slurm/slurm.conf ]; then
  mkdir -p /etc/slurm && ln -s "$CONF" /etc/slurm/slurm.conf
fi
echo "slurm: partitions cpu (cpu1, 8 CPUs) and gpu (gpu1, gpu2: 4 CPUs, gres gpu:h100:$GPUS each) up; SLURM_CONF=$CONF"
