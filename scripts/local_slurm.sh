#!/usr/bin/env bash
# A one-machine Slurm (slurmctld + one slurmd, munge auth) for testing the srun path, run as root without systemd.
# Idempotent: when the daemons are up it only waits for the node to be idle. Debian/Ubuntu only (apt).
# Usage: sudo bash scripts/local_slurm.sh        State and logs: $LOCAL_SLURM_DIR (default /tmp/local_slurm)
set -euo pipefail
dir=${LOCAL_SLURM_DIR:-/tmp/local_slurm}
host=$(hostname -s)
say() { echo "[local_slurm] $*" >&2; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! command -v slurmctld >/dev/null || ! command -v srun >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurmctld slurmd slurm-client munge"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
# Lightning resolves the first SLURM_NODELIST host as the rendezvous address: the name must resolve.
getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts

mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
fi
if ! running /run/munge/munged.pid; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

mkdir -p "$dir/state" "$dir/log" "$dir/spool"
memory=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# also the delay before a requeued job may start again (default 120 s)
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=2,bf_interval=1
# trust the node line below even if it claims more CPUs than there are cores
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=${LOCAL_SLURM_CPUS:-4} RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
running "$dir/slurmctld.pid" || { say "starting slurmctld"; slurmctld -i; }
running "$dir/slurmd.pid" || { say "starting slurmd"; slurmd; }
for _ in $(seq 100); do
  sinfo -h -o %T 2>/dev/null | grep -qx idle && { say "ready: $(sinfo -h -o '%N %T')"; exit 0; }
  sleep 0.2
done
say "the node did not become idle; see $dir/log"; exit 1
