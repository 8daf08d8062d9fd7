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
DIR=${BNNIDR_SLURM_DIR:-/tmp/bnnidr-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
GPU_NODES="gpu1 gpu2"
NODES="cpu1 $GPU_NODES"
GPUS=4

for cmd in slurmctld slurmd munged sinfo; do
  command -v $cmd >/dev/null || { echo "start.sh: $cmd not found: apt-get install -y slurm-wlm munge (or bash tools/install.sh)" >&2; exit 1; }
done
mkdir -p "$DIR"/{state,spool,log,run,gpus}

# Fake GPUs: character devices like /dev/null (slurmd wants device files for gres/gpu).
gres_lines=()
for node in $GPU_NODES; do
  mkdir -p "$DIR/gpus/$node"
  for i in $(seq 0 $((GPUS - 1))); do
    f=$DIR/gpus/$node/gpu$i
    [ -e "$f" ] || mknod "$f" c 1 3 2>/dev/null || touch "$f"
  done
  gres_lines+=("NodeName=$node Name=gpu Type=h100 File=$DIR/gpus/$node/gpu[0-$((GPUS - 1))]")
done
cat > "$CONF.new" <<CONF
# Written by slurm/start.sh; see slurm/README.md.
ClusterName=bnnidr
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6917
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again once its credential expires: 10 s instead of about 165 s.
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
# One slurmd per node (slurmd -N NAME): %n keeps their files apart.
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
# No cgroups or systemd here.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Nodes may declare more CPUs than the machine has, so that 4 one-CPU ranks and a second job fit.
SlurmdParameters=config_overrides
GresTypes=gpu
ReturnToService=2
# Off, as on many clusters: a job is requeueable only when submitted with --requeue.
JobRequeue=0
KillWait=10
# Finished jobs stay visible to scontrol for an hour: job states without slurmdbd.
MinJobAge=3600
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=cpu1 NodeHostname=$HOST NodeAddr=127.0.0.2 Port=6921 CPUs=8 RealMemory=8000 State=UNKNOWN
NodeName=gpu1 NodeHostname=$HOST NodeAddr=127.0.0.3 Port=6922 CPUs=4 Gres=gpu:h100:$GPUS RealMemory=8000 State=UNKNOWN
NodeName=gpu2 NodeHostname=$HOST NodeAddr=127.0.0.4 Port=6923 CPUs=4 Gres=gpu:h100:$GPUS RealMemory=8000 State=UNKNOWN
# Limits in minutes: a job asking for more is refused by 'bnnidr-hpc submit --check'.
PartitionName=cpu Nodes=cpu1 Default=YES MaxTime=120 State=UP OverSubscribe=NO
PartitionName=gpu Nodes=gpu1,gpu2 MaxTime=120 State=UP OverSubscribe=NO
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
  munged --force 2>>"$DIR/log/munged.err" || { echo "start.sh: munged failed: $(tail -1 "$DIR/log/munged.err")" >&2; exit 1; }
fi
if [ $changed = 1 ]; then
  # A new configuration: restart the daemons that run with the old one.
  for pid in "$DIR"/run/slurmd*.pid "$DIR/run/slurmctld.pid"; do
    if running "$pid"; then
      kill "$(cat "$pid")" || true
      for i in $(seq 1 20); do running "$pid" || break; sleep 0.5; done
    fi
  done
fi
# A fresh controller forgets earlier jobs (-c): this cluster is for tests and demos.
running "$DIR/run/slurmctld.pid" || slurmctld -c -f "$CONF"
for node in $NODES; do
  running "$DIR/run/slurmd-$node.pid" || slurmd -N "$node" -f "$CONF"
done

# Wait for every node to be usable; resume those a previous run left drained or down.
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
[ -z "$bad" ] || { echo "start.sh: nodes did not come up:$bad; see $DIR/log/" >&2; exit 1; }
# Let plain sbatch/sinfo find this cluster when no system configuration exists.
if [ "$(id -u)" = 0 ] && [ ! -e /etc/slurm/slurm.conf ]; then
  mkdir -p /etc/slurm && ln -s "$CONF" /etc/slurm/slurm.conf
fi
echo "slurm: partitions cpu (cpu1, 8 CPUs) and gpu (gpu1, gpu2: 4 CPUs, gres gpu:h100:$GPUS each) up; SLURM_CONF=$CONF"
