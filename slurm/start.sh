#!/usr/bin/env bash
# Start a real one-node Slurm cluster on this machine (Debian's slurm-wlm and munge), for tests and
# demos. The node advertises 4 GPUs as generic resources (backed by /dev/null-like device files), so
# jobs that ask for 4 GPUs are scheduled on a CPU-only machine. Idempotent: running it again
# leaves a healthy cluster alone and repairs a drained node.
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
CPUS=${BNNIDR_SLURM_CPUS:-8}
GPUS=4

for cmd in slurmctld slurmd munged sinfo; do
  command -v $cmd >/dev/null || { echo "start.sh: $cmd not found: apt-get install -y slurm-wlm munge (or bash tools/install.sh)" >&2; exit 1; }
done
mkdir -p "$DIR"/{state,spool,log,run,dev}

# Fake GPUs: character devices like /dev/null (slurmd wants device files for gres/gpu).
gpu_files=()
for i in $(seq 0 $((GPUS - 1))); do
  f=$DIR/dev/gpu$i
  [ -e "$f" ] || mknod "$f" c 1 3 2>/dev/null || touch "$f"
  gpu_files+=("$f")
done

cat > "$CONF.new" <<CONF
# Written by slurm/start.sh; see slurm/README.md.
ClusterName=bnnidr
SlurmctldHost=$HOST
SlurmctldPort=6917
SlurmdPort=6918
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again once its credential expires: 10 s instead of about 165 s.
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups or systemd here.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The node may declare more CPUs than the machine has, so that 4 one-CPU ranks and a second job fit.
SlurmdParameters=config_overrides
GresTypes=gpu
ReturnToService=2
JobRequeue=1
KillWait=10
# Finished jobs stay visible to scontrol for an hour: job states without slurmdbd.
MinJobAge=3600
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Gres=gpu:$GPUS RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
cat > "$DIR/gres.conf.new" <<CONF
AutoDetect=off
NodeName=$HOST Name=gpu File=$(IFS=,; echo "${gpu_files[*]}")
CONF

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
  for pid in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid"; do
    running "$pid" && kill "$(cat "$pid")" && sleep 1 || true
  done
fi
# A fresh controller forgets earlier jobs (-c): this cluster is for tests and demos.
running "$DIR/run/slurmctld.pid" || slurmctld -c -f "$CONF"
running "$DIR/run/slurmd.pid" || slurmd -f "$CONF"

# Wait for the node to be usable; resume it if a previous run left it drained or down.
for i in $(seq 1 30); do
  state=$(timeout 5 sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  case "$state" in
    idle*|mixed*|allocated*) break ;;
    drain*|down*|invalid*|fail*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
case "$state" in
  idle*|mixed*|allocated*) ;;
  *) echo "start.sh: node did not come up (state '$state'); see $DIR/log/" >&2; exit 1 ;;
esac
# Let plain sbatch/sinfo find this cluster when no system configuration exists.
if [ "$(id -u)" = 0 ] && [ ! -e /etc/slurm/slurm.conf ]; then
  mkdir -p /etc/slurm && ln -s "$CONF" /etc/slurm/slurm.conf
fi
echo "slurm: node $HOST $state, $CPUS CPUs, $GPUS GPUs (gres); SLURM_CONF=$CONF"
