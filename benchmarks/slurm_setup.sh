#!/usr/bin/env bash
# A single-node SLURM on this machine (root, Debian's slurm-wlm), for benchmarks/dask_slurm.py.
#
#   sudo benchmarks/slurm_setup.sh          # install if needed, configure, start; sinfo at the end
#   sudo benchmarks/slurm_setup.sh stop     # stop slurmd, slurmctld, munged
#
# One node (this host, 127.0.0.1) with all its CPUs, one partition "debug". No cgroups
# (proctrack/linuxproc, task/none): containers rarely allow them, and the benchmark needs none.
set -euo pipefail

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
CONF=/etc/slurm/slurm.conf

stop() {
    for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
        if [[ -f $pidfile ]]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
    done
    if [[ -f /run/munge/munged.pid ]]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    fi
}

if [[ ${1:-} == stop ]]; then stop; exit 0; fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi

# munge: a key, its folders, the daemon (it refuses root unless --force)
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
[[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    sleep 1
fi
munge -n | unmunge >/dev/null

mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >"$CONF" <<EOF
# written by idcmap benchmarks/slurm_setup.sh
ClusterName=idcmap
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=60
KillWait=5
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF

stop
sleep 1
runuser -u munge -- /usr/sbin/munged 2>/dev/null || true  # stop() ended it: start again
/usr/sbin/slurmctld
/usr/sbin/slurmd
for _ in $(seq 1 30); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then break; fi
    sleep 1
done
scontrol update nodename="$HOST" state=resume 2>/dev/null || true
sinfo
