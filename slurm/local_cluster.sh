#!/usr/bin/env bash
# A one-node SLURM cluster on this machine: munged, slurmctld and slurmd on 127.0.0.1, one node ("localhost")
# with 2 CPUs and one partition. plkit's distributed tests and .ci/run use it; it is also a way to try
# slurm/fit.sbatch before submitting it to a real cluster.
#
#   slurm/local_cluster.sh start STATE_DIR   # then: export SLURM_CONF=STATE_DIR/slurm.conf; sbatch ...
#   slurm/local_cluster.sh stop STATE_DIR
#
# Everything (config, munge key and socket, daemon state, logs, pid files) lives in STATE_DIR: nothing under /etc
# is read or changed, and the ports are picked free at start. `start` on a running cluster and `stop` on a stopped
# one do nothing. Needs root (slurmd runs jobs as their submitter) and Debian's packages:
#   apt-get install -y slurm-wlm munge
set -euo pipefail

usage() {
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 2
}
[[ $# -eq 2 ]] || usage
action=$1
state=$(realpath -m "$2")

# Is the daemon whose pid file is $1 alive?
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stop the daemon whose pid file is $1: SIGTERM, then SIGKILL after 10 s.
stop_daemon() {
    local pidfile=$1 pid
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    # slurmd first: it ends the jobs still running on the node (their slurmstepd and tasks).
    stop_daemon "$state/slurmd.pid"
    stop_daemon "$state/slurmctld.pid"
    stop_daemon "$state/munged.pid"
}

# A TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait up to $1 seconds for the command after it to succeed; on timeout print the daemon logs and fail.
wait_for() {
    local seconds=$1
    shift
    for _ in $(seq $((seconds * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "local_cluster.sh: timed out after ${seconds}s waiting for: $*" >&2
    tail -n 20 "$state"/*.log >&2 || true
    stop
    exit 1
}

start() {
    for tool in munged mungekey slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || {
            echo "local_cluster.sh: $tool is missing: apt-get install -y slurm-wlm munge" >&2
            exit 1
        }
    done
    [[ $(id -u) -eq 0 ]] || {
        echo "local_cluster.sh: run it as root (slurmd starts jobs as the user who submitted them)" >&2
        exit 1
    }
    export SLURM_CONF=$state/slurm.conf
    if alive "$state/slurmctld.pid" && alive "$state/slurmd.pid" && alive "$state/munged.pid"; then
        echo "export SLURM_CONF=$SLURM_CONF"
        return 0
    fi
    stop # whatever half of a cluster an earlier start left behind
    mkdir -p "$state/ctld" "$state/spool"
    chmod 700 "$state"
    [[ -s $state/munge.key ]] || mungekey --create --keyfile="$state/munge.key"
    # --force: the key sits in a temporary folder, which munged would otherwise refuse as insecure.
    munged --force --socket="$state/munge.socket" --key-file="$state/munge.key" --pid-file="$state/munged.pid" \
        --log-file="$state/munged.log" --seed-file="$state/munge.seed"

    cat >"$SLURM_CONF" <<EOF
ClusterName=plkit-local
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$state/munge.socket
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
# No cgroups in a container: track a job's processes by their parent pids and bind no CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
ReturnToService=2
# Refuse at submission a job this cluster can never run, rather than leave it pending forever.
EnforcePartLimits=ALL
# Trust the node line below over what slurmd counts on the machine.
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=2 State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF" -N localhost
    # The node must be idle (registered, not drained) before a job can start on it.
    wait_for 30 bash -c '[[ $(sinfo --noheader --nodes localhost --format %t) == idle ]]'
    echo "export SLURM_CONF=$SLURM_CONF"
}

case $action in
start) start ;;
stop) stop ;;
*) usage ;;
esac
