#!/bin/bash
# Nightly incremental run: label the scans that arrived since the last run, with the same cohort model.
# Images whose outputs are complete and whose fingerprint (input size and time, settings, model) matches
# are skipped; an interrupted run is picked up where it stopped; one bad scan fails alone and the exit
# status is 3 (the run summary in the output directory lists done, skipped and failed images).
#
# crontab -e:
#   30 1 * * *  /path/to/pixseg/workflows/nightly-cron.sh /path/to/nightly.yaml
# or, on a cluster, submit the driver job instead of running it on the cron host:
#   30 1 * * *  cd /path/to/project && sbatch --export=ALL,CONFIG=nightly.yaml workflows/slurm-run.sbatch
#
# Logs: $LOG_DIR/pixseg-YYYY-MM-DD.log (default: ~/pixseg-logs). A run still going when the next one
# starts is not disturbed: the second exits at once (flock).
set -euo pipefail

CONFIG=${1:?usage: nightly-cron.sh CONFIG.yaml [pixseg run options...]}
shift
PIXSEG=${PIXSEG:-pixseg}
LOG_DIR=${LOG_DIR:-$HOME/pixseg-logs}
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/pixseg-$(date +%F).log"

exec 9>"$LOG_DIR/.nightly.lock"
if ! flock -n 9; then
    echo "$(date -Is) another nightly run holds $LOG_DIR/.nightly.lock; not starting" >>"$LOG"
    exit 0
fi
echo "$(date -Is) pixseg run $CONFIG $*" >>"$LOG"
status=0
$PIXSEG run "$CONFIG" --quiet "$@" >>"$LOG" 2>&1 || status=$?
echo "$(date -Is) finished with status $status" >>"$LOG"
exit "$status"
