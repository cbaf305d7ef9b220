#!/usr/bin/env bash
# A real single-node SLURM on this machine, for `make test-slurm` (tests/test_slurm.py).
#
#   tests/slurm/setup_slurm.sh          install (if missing) and start munge, slurmctld, slurmd
#   tests/slurm/setup_slurm.sh stop     stop the daemons this script started (by their pid files)
#
# Idempotent: daemons already running are left alone; run it as often as you like.
# Needs root (apt-get, /etc/slurm, daemons). No systemd needed: the daemons are started directly.
#
# The cluster: one node (this machine: its CPUs and memory), one partition `AIS_SLURM_PARTITION`
# (default `local`, the default partition), no accounting database (slurmdbd): `sacct` does not
# work here, which is exactly the situation where the plugin needs `slurm-status-command: squeue`.
# `AIS_SLURM_GPUS` (default 2) fake GPUs are declared through gres.conf on character devices
# that behave like /dev/null, so `--gpus=1` jobs are scheduled and get CUDA_VISIBLE_DEVICES
# from SLURM, while torch finds no CUDA and runs on the CPU.
#
# A slurm.conf that this script did not write is never overwritten: the script stops instead.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
GRES_CONF="$CONF_DIR/gres.conf"
MARK="# Written by AIS tests/slurm/setup_slurm.sh (single-node test cluster)"
PARTITION="${AIS_SLURM_PARTITION:-local}"
N_GPUS="${AIS_SLURM_GPUS:-2}"
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGDIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

say() { echo "setup_slurm: $*"; }
die() { echo "setup_slurm: error: $*" >&2; exit 1; }

running() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {  # stop one daemon by its pid file, wait until it is gone
    local name=$1 pidfile=$2 pid
    if running "$pidfile"; then
        pid=$(cat "$pidfile")
        say "stopping $name (pid $pid)"
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
}

if [[ "${1:-start}" == "stop" ]]; then
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
    exit 0
fi
[[ "${1:-start}" == "start" ]] || die "usage: $0 [start|stop]"
[[ $EUID -eq 0 ]] || die "must run as root (installs packages, writes $CONF, starts daemons)"

# 1. Packages (Debian/Ubuntu).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || die "slurmctld/slurmd/munge/slurm-client missing and no apt-get to install them"
    say "installing slurmctld slurmd munge slurm-client"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd munge slurm-client >/dev/null
fi

# 2. munge: a key and a running daemon.
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n </dev/null | unmunge >/dev/null || die "munged does not answer"
fi

# 3. Configuration: this machine as the only node.
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
if [[ -e "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching it (move it away to use the test cluster)"
fi
mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGDIR"
GRES_LINE=""
GRES_TYPES=""
GRES_SPEC=""
if (( N_GPUS > 0 )); then
    GRES_LINE=" Gres=gpu:$N_GPUS"
    GRES_TYPES="GresTypes=gpu"
    GRES_SPEC="File=/dev/ais-fake-gpu[0-$((N_GPUS - 1))]"
    for ((i = 0; i < N_GPUS; i++)); do
        # Same major/minor as /dev/null: opening one works, and nothing can be done with it.
        # slurmd accepts only character or block devices; where mknod is not allowed, two
        # existing harmless ones stand in (no device cgroups here: task/none).
        if [[ ! -c /dev/ais-fake-gpu$i ]] && ! mknod -m 666 "/dev/ais-fake-gpu$i" c 1 3 2>/dev/null; then
            say "mknod not allowed: /dev/zero and /dev/full stand in for 2 fake GPUs"
            N_GPUS=2
            GRES_LINE=" Gres=gpu:2"
            GRES_SPEC="File=/dev/zero"$'\n'"NodeName=$HOST Name=gpu File=/dev/full"
            break
        fi
    done
fi
NEW_CONF=$(cat <<EOF
$MARK
ClusterName=ais-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
$GRES_TYPES
# No slurmdbd: sacct cannot answer (see profiles/slurm/config.yaml, slurm-status-command).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue this long (s); the plugin needs >= 3 x its first status delay.
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB$GRES_LINE State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
NEW_GRES=""
(( N_GPUS > 0 )) && NEW_GRES=$(printf '%s\nNodeName=%s Name=gpu %s\n' "$MARK" "$HOST" "$GRES_SPEC")
CHANGED=0
if [[ "$(cat "$CONF" 2>/dev/null)" != "$NEW_CONF" ]]; then
    say "writing $CONF (node $HOST: $CPUS CPUs, $MEM_MB MB, $N_GPUS fake GPUs; partition $PARTITION)"
    printf '%s\n' "$NEW_CONF" > "$CONF"
    CHANGED=1
fi
if [[ "$(cat "$GRES_CONF" 2>/dev/null)" != "$NEW_GRES" ]]; then
    if [[ -e "$GRES_CONF" ]] && ! grep -qF "$MARK" "$GRES_CONF"; then
        die "$GRES_CONF exists and was not written by this script; not touching it"
    fi
    printf '%s\n' "$NEW_GRES" > "$GRES_CONF"
    CHANGED=1
fi
if (( CHANGED )); then  # a running cluster with another configuration: restart it
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
fi

# 4. Daemons.
if ! running "$CTLD_PID"; then
    say "starting slurmctld (log $LOGDIR/slurmctld.log)"
    /usr/sbin/slurmctld
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.3; done
scontrol ping | grep -q "is UP" || die "slurmctld does not answer; see $LOGDIR/slurmctld.log"
if ! running "$SLURMD_PID"; then
    say "starting slurmd (log $LOGDIR/slurmd.log)"
    /usr/sbin/slurmd
fi

# 5. Wait for the node; bring it back if an earlier run left it down or drained.
state=""
for _ in $(seq 100); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.3
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) die "node $HOST is '$state', not usable; see $LOGDIR/slurmd.log and $LOGDIR/slurmctld.log" ;;
esac
sinfo -o "%P %a %D %T %N %c %m %G"
say "ready: partition $PARTITION, node $HOST"
