#!/usr/bin/env bash
# Start a second real Slurm cluster on this machine, shaped unlike slurm/start.sh's, for the test
# that the toolkit works on a cluster it was not written against: partitions `batch-a100` (three
# nodes) and `debug` (the default, one node, 30 min), typed GPUs `gpu:a100:2` on every node (device
# files standing in for GPUs), node names (a100-n1..3) that do not resolve. It has its own
# ClusterName (bnnidr2), ports, loopback addresses and state folder, so it runs beside start.sh's
# cluster; munged is shared. Idempotent, like start.sh.
#
#   bash slurm/start_second.sh          # then: export SLURM_CONF=/tmp/bnnidr-slurm2/slurm.conf
#   BNNIDR_SLURM_DIR=/tmp/bnnidr-slurm2 bash slurm/stop.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DIR=${BNNIDR_SLURM2_DIR:-/tmp/bnnidr-slurm2}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
NODES="a100-n1 a100-n2 a100-n3"
GPUS=2

require_slurm start_second.sh
mkdir -p "$DIR"/{state,spool,log,run,gpus}
gres_lines=()
node_lines=()
addr=12
port=6941
for node in $NODES; do
  gres_lines+=("$(fake_gpus "$DIR" "$node" a100 $GPUS)")
  node_lines+=("NodeName=$node NodeHostname=$HOST NodeAddr=127.0.0.$addr Port=$port CPUs=4 Gres=gpu:a100:$GPUS RealMemory=8000 State=UNKNOWN")
  addr=$((addr + 1)); port=$((port + 1))
done
cat > "$CONF.new" <<CONF
# Written by slurm/start_second.sh; the settings are start.sh's (see slurm/README.md), the shape differs.
ClusterName=bnnidr2
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6937
$(shared_settings "$DIR")
$(printf '%s\n' "${node_lines[@]}")
PartitionName=debug Nodes=a100-n1 Default=YES MaxTime=30 State=UP OverSubscribe=NO
PartitionName=batch-a100 Nodes=a100-n1,a100-n2,a100-n3 MaxTime=240 State=UP OverSubscribe=NO
CONF
{ echo "AutoDetect=off"; printf '%s\n' "${gres_lines[@]}"; } > "$DIR/gres.conf.new"
export SLURM_CONF=$CONF
start_cluster start_second.sh "$DIR" "$CONF" "$NODES"
wait_for_nodes start_second.sh "$DIR" "$NODES"
echo "slurm (bnnidr2): partitions debug (a100-n1, default) and batch-a100 (a100-n1..3: 4 CPUs, gres gpu:a100:$GPUS each) up; SLURM_CONF=$CONF"
