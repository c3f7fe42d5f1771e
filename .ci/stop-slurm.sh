#!/usr/bin/env bash
# Stop the single-node SLURM cluster that .ci/start-slurm.sh started: cancel jobs, shut the daemons down,
# end munged by its pid file.
set -uo pipefail

SLURM_DIR=${PIXSEG_SLURM_DIR:-/tmp/pixseg-slurm}

if ! grep -qF "# written by pixseg .ci/start-slurm.sh" /etc/slurm/slurm.conf 2>/dev/null; then
    echo "stop-slurm: no cluster started by .ci/start-slurm.sh" >&2
    exit 0
fi
scancel -u "$(id -un)" 2>/dev/null
scontrol shutdown 2>/dev/null
for _ in $(seq 100); do
    [ -e "$SLURM_DIR/slurmctld.pid" ] || [ -e "$SLURM_DIR/slurmd.pid" ] || break
    pgrep -F "$SLURM_DIR/slurmctld.pid" >/dev/null 2>&1 || pgrep -F "$SLURM_DIR/slurmd.pid" >/dev/null 2>&1 || break
    sleep 0.1
done
for pidfile in /run/munge/munged.pid /var/run/munge/munged.pid; do
    if [ -s "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null
        break
    fi
done
exit 0
