# What slurm/start.sh and slurm/start_second.sh share: the checks, the fake GPUs, the settings every
# local cluster has, and starting, restarting and waiting for the daemons. Sourced, not run; each
# function takes what differs between the clusters as arguments. The settings are explained in
# slurm/README.md.

require_slurm() {  # NAME: the script's name, for the message
  for cmd in slurmctld slurmd munged sinfo; do
    command -v $cmd >/dev/null || { echo "$1: $cmd not found: apt-get install -y slurm-wlm munge (or bash tools/install.sh)" >&2; exit 1; }
  done
}

fake_gpus() {  # DIR NODE TYPE COUNT: character devices like /dev/null (slurmd wants device files for gres/gpu); prints the node's gres.conf line
  local dir=$1 node=$2 type=$3 count=$4 i f
  mkdir -p "$dir/gpus/$node"
  for i in $(seq 0 $((count - 1))); do
    f=$dir/gpus/$node/gpu$i
    [ -e "$f" ] || mknod "$f" c 1 3 2>/dev/null || touch "$f"
  done
  echo "NodeName=$node Name=gpu Type=$type File=$dir/gpus/$node/gpu[0-$((count - 1))]"
}

shared_settings() {  # DIR: the slurm.conf lines every local cluster has
  cat <<CONF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again once its credential expires: 10 s instead of about 165 s.
AuthInfo=cred_expire=10
StateSaveLocation=$1/state
# One slurmd per node (slurmd -N NAME): %n keeps their files apart.
SlurmdSpoolDir=$1/spool/%n
SlurmctldPidFile=$1/run/slurmctld.pid
SlurmdPidFile=$1/run/slurmd-%n.pid
SlurmctldLogFile=$1/log/slurmctld.log
SlurmdLogFile=$1/log/slurmd-%n.log
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
CONF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_cluster() {  # NAME DIR CONF NODES: install $CONF.new and gres.conf.new, then start what is not running
  local name=$1 dir=$2 conf=$3 nodes=$4 changed=0 pid i node
  cmp -s "$conf.new" "$conf" || changed=1
  cmp -s "$dir/gres.conf.new" "$dir/gres.conf" || changed=1
  mv "$conf.new" "$conf"; mv "$dir/gres.conf.new" "$dir/gres.conf"
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    [ -f /etc/munge/munge.key ] || mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f
    munged --force 2>>"$dir/log/munged.err" || { echo "$name: munged failed: $(tail -1 "$dir/log/munged.err")" >&2; exit 1; }
  fi
  if [ $changed = 1 ]; then
    # A new configuration: restart the daemons that run with the old one.
    for pid in "$dir"/run/slurmd*.pid "$dir/run/slurmctld.pid"; do
      if running "$pid"; then
        kill "$(cat "$pid")" || true
        for i in $(seq 1 20); do running "$pid" || break; sleep 0.5; done
      fi
    done
  fi
  # A fresh controller forgets earlier jobs (-c): these clusters are for tests and demos.
  running "$dir/run/slurmctld.pid" || slurmctld -c -f "$conf"
  for node in $nodes; do
    running "$dir/run/slurmd-$node.pid" || slurmd -N "$node" -f "$conf"
  done
}

usable() { case "$1" in idle*|mixed*|allocated*|completing*) return 0 ;; *) return 1 ;; esac; }

wait_for_nodes() {  # NAME DIR NODES: until every node is usable, resuming those left drained or down
  local name=$1 dir=$2 nodes=$3 bad="" state i node
  for i in $(seq 1 40); do
    bad=""
    for node in $nodes; do
      state=$(timeout 5 sinfo -h -n "$node" -N -o '%T' 2>/dev/null | head -1 || true)
      usable "$state" && continue
      bad="$bad $node($state)"
      case "$state" in
        drain*|down*|invalid*|fail*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
      esac
    done
    [ -z "$bad" ] && return 0
    sleep 1
  done
  echo "$name: nodes did not come up:$bad; see $dir/log/" >&2
  exit 1
}
