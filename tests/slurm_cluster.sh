#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests that submit benchmark cells as job arrays:
#   bash tests/slurm_cluster.sh start    munged, slurmctld and slurmd (as root, no systemd); waits for the node
#   bash tests/slurm_cluster.sh stop     stops the three daemons by PID
# Needs Debian's slurm-wlm and munge (installed here if missing). No accounting database: nothing
# the tests run calls sacct. State and logs live in $SLURM_CI_DIR (default /tmp/scorelift-slurm).
set -euo pipefail
dir=${SLURM_CI_DIR:-/tmp/scorelift-slurm}
conf=/etc/slurm/slurm.conf

start() {
  if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge > /dev/null 2>&1 \
      || { apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge > /dev/null; }
  fi
  mkdir -p "$dir"/{spool,state,log} /run/munge /var/log/munge /var/lib/munge /etc/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat > "$conf" <<CONF
ClusterName=scorelift-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=30
# A requeued job waits out the job credential's lifetime before it may start again (default 120 s);
# the tests requeue jobs, so keep it short. The main scheduling loop then runs every 2 s.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2
MinJobAge=300
MaxArraySize=1001
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  runuser -u munge -- /usr/sbin/munged --pid-file "$dir/munged.pid" 2>/dev/null || /usr/sbin/munged -f --pid-file "$dir/munged.pid"
  # the pid file may lag behind the fork; slurmctld needs munged answering
  for _ in $(seq 50); do munge -n > /dev/null 2>&1 && break; sleep 0.1; done
  slurmctld -c -f "$conf"
  slurmd -f "$conf"
  for _ in $(seq 300); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    case "$state" in idle|mix|alloc) echo "slurm: node $host $state"; return 0;; esac
    sleep 0.1
  done
  echo "slurm: the node did not come up (state '${state:-none}'); logs in $dir/log" >&2
  tail -n 20 "$dir"/log/*.log >&2 || true
  return 1
}

stop() {
  for name in slurmd slurmctld munged; do
    pid=$(cat "$dir/$name.pid" 2>/dev/null || pidof -s "$name" || true)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: bash tests/slurm_cluster.sh start|stop" >&2; exit 2 ;;
esac
