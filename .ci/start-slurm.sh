#!/usr/bin/env bash
# Start a single-node SLURM cluster on loopback for the SLURM tests (CI runs this as root; no systemd).
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge if missing, writes /etc/slurm/slurm.conf
# (state, spool, logs and pid files under $PIXSEG_SLURM_DIR, default /tmp/pixseg-slurm), starts munged as
# user munge, then slurmctld and slurmd, and waits until the node is idle. Idempotent: a cluster this
# script started earlier is left running. Stop it with .ci/stop-slurm.sh.
set -euo pipefail

SLURM_DIR=${PIXSEG_SLURM_DIR:-/tmp/pixseg-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by pixseg .ci/start-slurm.sh"

log() { echo "start-slurm: $*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "timed out after ${seconds}s waiting for $what"
    return 1
}

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs packages and starts daemons)"
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    log "$CONF exists and was not written by this script; not touching it"
    exit 1
fi

if scontrol ping 2>/dev/null | grep -q "is UP" && sinfo -h -o %T 2>/dev/null | grep -q idle; then
    log "already running"
    exit 0
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p "$SLURM_DIR"/{state,spool,log} /etc/slurm
cat >"$CONF" <<EOF
$MARKER
ClusterName=pixseg-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    su -s /bin/sh munge -c "/usr/sbin/munged"
    wait_for 20 "munge" sh -c "munge -n | unmunge"
fi

log "starting slurmctld and slurmd (logs in $SLURM_DIR/log)"
/usr/sbin/slurmctld
wait_for 30 "slurmctld (scontrol ping)" sh -c "scontrol ping | grep -q 'is UP'"
/usr/sbin/slurmd
if ! wait_for 30 "node $host to be idle (sinfo)" sh -c "sinfo -h -o %T | grep -q idle"; then
    sinfo >&2 || true
    tail -n 20 "$SLURM_DIR"/log/*.log >&2 || true
    exit 1
fi
log "single-node cluster up: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
