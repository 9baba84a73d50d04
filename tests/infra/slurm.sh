#!/usr/bin/env bash
# A real Slurm for Balsam's tests: Debian's slurm-wlm packages on this one machine, with
# emulated compute nodes n1..nN (one slurmd each, on its own port, in its own UTS namespace
# so that `hostname` on a node prints its name). Daemons are started directly (no systemd)
# and tracked by PID files; nothing is ever stopped by name.
#
#   tests/infra/slurm.sh start    (root) install slurm-wlm + munge if missing, write the config,
#                                 start what is not running, wait until every node is idle;
#                                 says "started" if it started slurmctld, else "was running".
#                                 Safe to run again: running daemons are kept unless the
#                                 config changed (then they restart and their jobs are lost).
#   tests/infra/slurm.sh stop     (root) cancel all jobs; stop slurmctld, the slurmds (and
#                                 slurmdbd), and munged/MariaDB if this script started them
#   tests/infra/slurm.sh status   daemons and nodes; exit 0 only if the cluster is usable
#   tests/infra/slurm.sh up       exit 0 if slurmctld answers, nodes take jobs and (with our
#                                 config) every node's slurmd runs; prints nothing
#   tests/infra/slurm.sh env      KEY=VALUE lines describing the cluster, for tests
#   tests/infra/slurm.sh logs     the last lines of every daemon log (to debug a failure)
#
# Settings (environment): BALSAM_SLURM_NODES (4), BALSAM_SLURM_CPUS (CPUs per node, default
# nproc; may exceed the real count), BALSAM_SLURM_ACCOUNTING (jobcomp: no database, final states
# through `sacct -c` / `scontrol`; slurmdbd: MariaDB + slurmdbd so that plain `sacct` works,
# about 5 s more to install and 8 s more to stop), BALSAM_SLURM_INSTALL (1; 0 = never apt-get).
# Written for Debian 12's Slurm 22.05; see shared/reference/slurm-recipe.md for the reasoning.
set -u -o pipefail

NODES=${BALSAM_SLURM_NODES:-4}
CPUS=${BALSAM_SLURM_CPUS:-$(nproc)}
ACCOUNTING=${BALSAM_SLURM_ACCOUNTING:-jobcomp}
INSTALL=${BALSAM_SLURM_INSTALL:-1}
PARTITION=debug
CLUSTER=balsamtest

ETC=/etc/slurm
CONF=$ETC/slurm.conf
DBD_CONF=$ETC/slurmdbd.conf
RUN=/run/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
MUNGE_PID=/run/munge/munged.pid
DB_PID=/run/mysqld/mysqld.pid
DB_SOCK=/run/mysqld/mysqld.sock
DB_PASS=balsam-test-local        # MariaDB listens on 127.0.0.1 only
MARK="# Written by Balsam's tests/infra/slurm.sh; rewritten on every start."

export SLURM_CONF=$CONF
unset SLURM_JOB_ID SLURM_JOBID    # never act as if inside an allocation
# Daemons get a small fixed environment, no terminal and cwd /: nothing of the caller's
# (a venv's PATH, CI's output pipe, a checkout that is removed later) leaks into them.
DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SLURM_CONF="$CONF" LANG=C.UTF-8)

say() { printf 'slurm.sh: %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }
nodes() { seq -f "n%g" 1 "$NODES"; }
need_root() { [ "$(id -u)" = 0 ] || fail "$1 needs root"; }

# live_pid FILE NAME: the PID in FILE if that process is alive and called NAME
live_pid() {
    local pid
    [ -r "$1" ] || return 1
    pid=$(tr -dc 0-9 <"$1")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

# wait_until SECONDS COMMAND...: poll COMMAND every 0.1 s
wait_until() {
    local deadline=$(( $(ms) + $1 * 1000 )); shift
    until "$@"; do
        [ "$(ms)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

ctld_answers() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
munge_answers() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
db_answers() { mariadb-admin --socket="$DB_SOCK" ping >/dev/null 2>&1; }

# all_idle [MIN]: at least MIN (default 1) nodes, each answering and idle or running jobs
# (sinfo appends "*" to the state of a node that does not answer)
all_idle() {
    local n state count=0
    while read -r n state; do
        case $state in *'*') return 1 ;; idle*|mix*|alloc*|comp*) count=$((count + 1)) ;; *) return 1 ;; esac
    done < <(sinfo -h -N -o '%N %t' 2>/dev/null)
    [ "$count" -ge "${1:-1}" ]
}
# conf_nodes: node names of our slurm.conf (none for a configuration not written here)
conf_nodes() { grep -qF "$MARK" "$CONF" 2>/dev/null && sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$CONF"; }
# slurmds_alive: the slurmd of every node in our slurm.conf runs (the controller notices a
# dead one only minutes later)
slurmds_alive() {
    local n
    for n in $(conf_nodes); do live_pid "$RUN/slurmd-$n.pid" slurmd >/dev/null || return 1; done
}
dbd_answers() { sacctmgr -n show cluster >/dev/null 2>&1; }

# ------------------------------------------------------------------ install
install_packages() {
    local pkgs="slurm-wlm munge" bins="/usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged" b
    [ "$ACCOUNTING" = slurmdbd ] && { pkgs="$pkgs slurmdbd mariadb-server"; bins="$bins /usr/sbin/slurmdbd /usr/sbin/mariadbd"; }
    local missing=0
    for b in $bins; do [ -x "$b" ] || missing=1; done
    [ "$missing" = 0 ] && return 0
    [ "$INSTALL" = 1 ] || fail "Slurm is not installed and BALSAM_SLURM_INSTALL=0"
    command -v apt-get >/dev/null || fail "Slurm is not installed and there is no apt-get"
    say "installing $pkgs (apt-get --no-install-recommends)"
    # Package scripts must not start daemons behind our back (no systemd; we start them).
    local policy=/usr/sbin/policy-rc.d ours=0 rc=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; ours=1; fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0)
    # Try the package lists we have first; refresh them only if that fails (saves ~1-3 s).
    # shellcheck disable=SC2086
    "${apt[@]}" install --no-install-recommends $pkgs >/dev/null 2>&1 ||
        { "${apt[@]}" update >/dev/null && "${apt[@]}" install --no-install-recommends $pkgs >/dev/null; } || rc=1
    [ "$ours" = 1 ] && rm -f "$policy"
    [ "$rc" = 0 ] || fail "apt-get install $pkgs failed"
}

# Debian builds Slurm with --enable-multiple-slurmd, which several slurmds sharing one munged
# need (a job credential decoded on each node looks like a replay otherwise).
multiple_slurmd() {
    local so
    for so in /usr/lib/*/slurm-wlm/auth_munge.so /usr/lib/slurm/auth_munge.so; do
        [ -r "$so" ] && { grep -aq 'multiple slurmd mode' "$so"; return; }
    done
    return 1
}

# ------------------------------------------------------------------ config
render_conf() {
    local mem user=root n
    mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 / NODES ))
    [ "$mem" -gt 8192 ] && mem=8192
    getent passwd slurm >/dev/null && user=slurm
    cat <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=$user
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
# No cgroups: works in VMs and containers alike (a job's double-forked daemon survives it).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
EOF
    if [ "$ACCOUNTING" = slurmdbd ]; then
        printf 'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n'
    else
        echo "AccountingStorageType=accounting_storage/none"
    fi
    cat <<EOF
# Fast turnaround: a batch job starts on the controller's next 1 s tick (default: 3 s later).
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=1,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=300
KillWait=2
InactiveLimit=0
ReturnToService=2
SlurmdParameters=config_overrides
TreeWidth=128
EOF
    for n in $(nodes); do
        echo "NodeName=$n NodeHostname=$n NodeAddr=127.0.0.1 Port=$((17000 + ${n#n})) Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN"
    done
    echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE OverSubscribe=NO State=UP"
}

render_dbd_conf() {
    cat <<EOF
$MARK
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
SlurmUser=$(getent passwd slurm >/dev/null && echo slurm || echo root)
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
EOF
}

# put_file PATH TEXT [MODE]: write TEXT unless it is already there; returns 0 if it changed.
# A file not written by this script is never replaced.
put_file() {
    if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then return 1; fi
    if [ -f "$1" ] && ! grep -qF "$MARK" "$1"; then
        fail "$1 exists and was not written by this script; not replacing it"
    fi
    printf '%s\n' "$2" >"$1"
    chmod "${3:-0644}" "$1"
    return 0
}

prepare() {
    local owner=root n
    getent passwd slurm >/dev/null && owner=slurm
    mkdir -p "$ETC" "$RUN" "$STATE" "$LOGS"
    chown "$owner:" "$RUN" "$STATE" "$LOGS"
    for n in $(nodes); do mkdir -p "$SPOOL/$n"; done
    [ -e "$LOGS/jobcomp.log" ] || install -m 0644 -o "$owner" /dev/null "$LOGS/jobcomp.log"
    # slurmctld refuses a state directory saved under another cluster name
    if [ -f "$STATE/clustername" ] && [ "$(cat "$STATE/clustername")" != "$CLUSTER" ]; then
        say "clearing $STATE (saved by another cluster)"
        find "$STATE" -mindepth 1 -delete
    fi
    # The emulated node names (and this host) must resolve for hydra/MPICH; only appended,
    # since /etc/hosts may be a bind mount.
    local missing=""
    for n in $(hostname -s) $(nodes); do getent hosts "$n" >/dev/null || missing="$missing $n"; done
    [ -z "$missing" ] || echo "127.0.0.1$missing # Balsam tests: emulated Slurm nodes" >>/etc/hosts
}

# ------------------------------------------------------------------ daemons
start_munge() {
    local key=/etc/munge/munge.key
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    chown munge: /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/log/munge
    chmod 0755 /run/munge
    if [ ! -s "$key" ]; then
        say "creating $key"
        mungekey --create --keyfile="$key" --force || fail "mungekey failed"
    fi
    chown munge: "$key" && chmod 0400 "$key"
    munge_answers && return 0
    # 8 threads: every slurmd, srun and sbatch on this machine goes through this one munged
    "${DAEMON_ENV[@]}" runuser -u munge -- /usr/sbin/munged --num-threads=8 </dev/null >/dev/null 2>&1 ||
        fail "munged did not start (see /var/log/munge/munged.log)"
    wait_until 5 munge_answers || fail "munged does not answer"
    live_pid "$MUNGE_PID" munged >"$RUN/munged.ours" || fail "munged wrote no PID file"
}

start_mariadb() {
    if ! db_answers; then
        mkdir -p /run/mysqld /var/log/mysql && chown mysql: /run/mysqld /var/log/mysql
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null ||
            fail "mariadb-install-db failed"
        (cd / && "${DAEMON_ENV[@]}" setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql \
            --socket="$DB_SOCK" --pid-file="$DB_PID" --bind-address=127.0.0.1 \
            --innodb-buffer-pool-size=64M --log-error=/var/log/mysql/error.log \
            </dev/null >/dev/null 2>&1 &)
        wait_until 30 db_answers || fail "mariadbd does not answer (see /var/log/mysql/error.log)"
        live_pid "$DB_PID" mariadbd >"$RUN/mariadbd.ours" || fail "mariadbd wrote no PID file"
    fi
    mariadb --socket="$DB_SOCK" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || fail "cannot create the accounting DB"
}

start_slurm_daemons() {
    local n
    if [ "$ACCOUNTING" = slurmdbd ] && ! live_pid "$RUN/slurmdbd.pid" slurmdbd >/dev/null; then
        (cd / && "${DAEMON_ENV[@]}" /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1) || fail "slurmdbd did not start (see $LOGS/slurmdbd.log)"
        wait_until 30 dbd_answers || fail "slurmdbd does not answer (see $LOGS/slurmdbd.log)"
    fi
    if ! live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then
        CTLD_STARTED=1
        (cd / && "${DAEMON_ENV[@]}" /usr/sbin/slurmctld -i </dev/null >/dev/null 2>&1) ||
            fail "slurmctld did not start (see $LOGS/slurmctld.log)"
    fi
    wait_until 30 ctld_answers || fail "slurmctld does not answer (see $LOGS/slurmctld.log)"
    for n in $(nodes); do
        live_pid "$RUN/slurmd-$n.pid" slurmd >/dev/null && continue
        if [ "$UTS" = 1 ]; then
            (cd / && "${DAEMON_ENV[@]}" unshare --uts /bin/sh -c 'hostname "$1" && exec /usr/sbin/slurmd -N "$1"' \
                slurmd "$n" </dev/null >/dev/null 2>&1)
        else
            (cd / && "${DAEMON_ENV[@]}" /usr/sbin/slurmd -N "$n" </dev/null >/dev/null 2>&1)
        fi || fail "slurmd $n did not start (see $LOGS/slurmd-$n.log)"
    done
    if ! wait_until 10 all_idle "$NODES"; then
        # nodes left down by an earlier run come back on request
        scontrol update NodeName="$(nodes | paste -sd,)" State=RESUME 2>/dev/null
        wait_until 20 all_idle "$NODES" || fail "nodes not idle: $(sinfo -h -N -o '%N:%t' | paste -sd' ') (see $LOGS/slurmd-*.log)"
    fi
}

# same_process PID START: true if PID is alive and started at START (field 22 of its stat)
same_process() { [ "$(cut -d')' -f2- "/proc/$1/stat" 2>/dev/null | cut -d' ' -f21)" = "$2" ]; }

# stop_pids NAME:PIDFILE...: SIGTERM each live one, SIGKILL whatever is left after 15 s (a
# process that ended meanwhile is not looked for again: its pid may be another's by now)
stop_pids() {
    local arg pid start pids=() left
    for arg in "$@"; do
        pid=$(live_pid "${arg#*:}" "${arg%%:*}") || continue
        start=$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f21)
        [ -n "$start" ] && { kill -TERM "$pid"; pids+=("$pid:$start"); }
    done
    left=1
    for _ in $(seq 150); do
        left=0
        for arg in "${pids[@]}"; do same_process "${arg%%:*}" "${arg#*:}" && left=1; done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    for arg in "${pids[@]}"; do
        pid=${arg%%:*}
        same_process "$pid" "${arg#*:}" && { say "SIGKILL $pid"; kill -KILL "$pid"; }
    done
    for arg in "$@"; do rm -f "${arg#*:}"; done
}

stop_slurm_daemons() {
    local f args=("slurmctld:$RUN/slurmctld.pid") jobs
    if ctld_answers; then
        jobs=$(squeue -h -o %A 2>/dev/null | paste -sd' ')
        if [ -n "$jobs" ]; then
            say "cancelling jobs $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null
            wait_until 10 test -z "$(squeue -h -o %A 2>/dev/null)"
        fi
    fi
    for f in "$RUN"/slurmd-*.pid; do [ -e "$f" ] && args+=("slurmd:$f"); done
    stop_pids "${args[@]}"
    stop_pids "slurmdbd:$RUN/slurmdbd.pid"   # after slurmctld has handed over its records
}

# stop_ours NAME PIDFILE: stop a helper daemon only if this script started it
stop_ours() {
    local pid
    if pid=$(live_pid "$RUN/$1.ours" "$1") && [ "$(live_pid "$2" "$1")" = "$pid" ]; then
        stop_pids "$1:$2"
    fi
    rm -f "$RUN/$1.ours"
}

# ------------------------------------------------------------------ commands
cmd_start() {
    local t0 changed=0
    CTLD_STARTED=0
    t0=$(ms)
    need_root start
    install_packages
    if [ "$NODES" -gt 1 ] && ! multiple_slurmd; then
        fail "this Slurm build cannot run several slurmd on one machine (no multiple-slurmd support)"
    fi
    if unshare --uts true 2>/dev/null; then UTS=1; else UTS=0; fi
    prepare
    put_file "$CONF" "$(render_conf)" && changed=1
    if [ "$ACCOUNTING" = slurmdbd ]; then
        put_file "$DBD_CONF" "$(render_dbd_conf)" 0600 && changed=1
        chown "$(stat -c %U "$STATE"):" "$DBD_CONF"
    fi
    if [ "$changed" = 1 ] && live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then
        say "configuration changed: restarting the Slurm daemons (their jobs are cancelled)"
        stop_slurm_daemons
    fi
    start_munge
    [ "$ACCOUNTING" = slurmdbd ] && start_mariadb
    start_slurm_daemons
    # "started" only if slurmctld was started here: tests/run.sh then stops it afterwards
    say "Slurm $(sinfo -V | cut -d' ' -f2) $([ "$CTLD_STARTED" = 1 ] && echo started || echo "was running, checked") in" \
        "$(( $(ms) - t0 )) ms: $NODES nodes x $CPUS CPUs," \
        "per-node hostnames: $([ "$UTS" = 1 ] && echo yes || echo no), accounting: $ACCOUNTING"
}

cmd_stop() {
    need_root stop
    stop_slurm_daemons
    stop_ours mariadbd "$DB_PID"
    stop_ours munged "$MUNGE_PID"
    say "stopped"
}

report() { # report NAME PIDFILE
    local pid
    [ -e "$2" ] || return 0
    if pid=$(live_pid "$2" "$1"); then echo "$1 running (pid $pid, $2)"; else echo "$1 dead (stale $2)"; fi
}

cmd_status() {
    local n
    report munged "$MUNGE_PID"
    report mariadbd "$DB_PID"
    report slurmdbd "$RUN/slurmdbd.pid"
    report slurmctld "$RUN/slurmctld.pid"
    for n in $(conf_nodes); do
        [ -e "$RUN/slurmd-$n.pid" ] || echo "slurmd $n not running"
        report slurmd "$RUN/slurmd-$n.pid"
    done
    ctld_answers || { echo "slurmctld does not answer"; return 1; }
    sinfo -N
    all_idle && slurmds_alive
}

cmd_env() {
    ctld_answers || fail "slurmctld does not answer"
    echo "SLURM_CONF=$CONF"
    echo "BALSAM_TEST_SLURM_PARTITION=$(sinfo -h -o '%P' | tr -d '*' | head -1)"
    echo "BALSAM_TEST_SLURM_NODES=$(sinfo -h -N -o '%N' | sort -u | paste -sd,)"
    echo "BALSAM_TEST_SLURM_CPUS=$(sinfo -h -N -o '%c' | sort -n | head -1)"
    echo "BALSAM_TEST_SLURM_ACCOUNTING=$(scontrol show config | awk '/^AccountingStorageType/ {print $3}')"
    echo "BALSAM_TEST_SLURM_JOBCOMP=$(scontrol show config | awk '/^JobCompLoc/ {print $3}')"
}

cmd_logs() {
    local f
    for f in "$LOGS"/*.log /var/log/munge/munged.log; do
        [ -r "$f" ] || continue
        echo "== $f"; tail -n "${LINES_PER_LOG:-15}" "$f"
    done
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    up) # our config but no slurmctld of ours: down (without waiting for `scontrol ping`)
        if [ -n "$(conf_nodes)" ] && ! live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then exit 1; fi
        ctld_answers && all_idle && slurmds_alive ;;
    env) cmd_env ;;
    logs) cmd_logs ;;
    *) echo "usage: $0 start|stop|status|up|env|logs" >&2; exit 2 ;;
esac
