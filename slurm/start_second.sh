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
DIR=${BNNIDR_SLURM2_DIR:-/tmp/bnnidr-slurm2}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
NODES="a100-n1 a100-n2 a100-n3"
GPUS=2

for cmd in slurmctld slurmd munged sinfo; do
  command -v $cmd >/dev/null || { echo "start_second.sh: $cmd not found: apt-get install -y slurm-wlm munge" >&2; exit 1; }
done
mkdir -p "$DIR"/{state,spool,log,run,gpus}

gres_lines=()
node_lines=()
addr=12
port=6941
for node in $NODES; do
  mkdir -p "$DIR/gpus/$node"
  for i in $(seq 0 $((GPUS - 1))); do
    f=$DIR/gpus/$node/gpu$i
    [ -e "$f" ] || mknod "$f" c 1 3 2>/dev/null || touch "$f"
  done
  gres_lines+=("NodeName=$node Name=gpu Type=a100 File=$DIR/gpus/$node/gpu[0-$((GPUS - 1))]")
  node_lines+=("NodeName=$node NodeHostname=$HOST NodeAddr=127.0.0.$addr Port=$port CPUs=4 Gres=gpu:a100:$GPUS RealMemory=8000 State=UNKNOWN")
  addr=$((addr + 1)); port=$((port + 1))
done
cat > "$CONF.new" <<CONF
# Written by slurm/start_second.sh; the settings are start.sh's (see slurm/README.md), the shape differs.
ClusterName=bnnidr2
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6937
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
GresTypes=gpu
ReturnToService=2
JobRequeue=0
KillWait=10
MinJobAge=3600
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
$(printf '%s\n' "${node_lines[@]}")
PartitionName=debug Nodes=a100-n1 Default=YES MaxTime=30 State=UP OverSubscribe=NO
PartitionName=batch-a100 Nodes=a100-n1,a100-n2,a100-n3 MaxTime=240 State=UP OverSubscribe=NO
CONF
{ echo "AutoDetect=off"; printf '%s\n' "${gres_lines[@]}"; } > "$DIR/gres.conf.new"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
changed=0
cmp -s "$CONF.new" "$CONF" || changed=1
cmp -s "$DIR/gres.conf.new" "$DIR/gres.conf" || changed=1
mv "$CONF.new" "$CONF"; mv "$DIR/gres.conf.new" "$DIR/gres.conf"
export SLURM_CONF=$CONF

if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  [ -f /etc/munge/munge.key ] || mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f
  munged --force 2>>"$DIR/log/munged.err" || { echo "start_second.sh: munged failed" >&2; exit 1; }
fi
if [ $changed = 1 ]; then
  for pid in "$DIR"/run/slurmd*.pid "$DIR/run/slurmctld.pid"; do
    if running "$pid"; then
      kill "$(cat "$pid")" || true
      for i in $(seq 1 20); do running "$pid" || break; sleep 0.5; done
    fi
  done
fi
running "$DIR/run/slurmctld.pid" || slurmctld -c -f "$CONF"
for node in $NODES; do
  running "$DIR/run/slurmd-$node.pid" || slurmd -N "$node" -f "$CONF"
done

usable() { case "$1" in idle*|mixed*|allocated*|completing*) return 0 ;; *) return 1 ;; esac; }
for i in $(seq 1 40); do
  bad=""
  for node in $NODES; do
    state=$(timeout 5 sinfo -h -n "$node" -N -o '%T' 2>/dev/null | head -1 || true)
    usable "$state" && continue
    bad="$bad $node($state)"
    case "$state" in
      drain*|down*|invalid*|fail*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
    esac
  done
  [ -z "$bad" ] && break
  sleep 1
done
[ -z "$bad" ] || { echo "start_second.sh: nodes did not come up:$bad; see $DIR/log/" >&2; exit 1; }
echo "slurm (bnnidr2): partitions debug (a100-n1, default) and batch-a100 (a100-n1..3: 4 CPUs, gres gpu:a100:$GPUS each) up; SLURM_CONF=$CONF"
