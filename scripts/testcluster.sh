#!/usr/bin/env bash
# A real single-node SLURM cluster plus a real OpenSSH server on 127.0.0.1, for the test suite.
#
#   scripts/testcluster.sh start    install what is missing, start munged, slurmctld, slurmd, sshd
#   scripts/testcluster.sh stop     stop the daemons this script started (by their pid files)
#   scripts/testcluster.sh status   show each daemon and the node state (exit 0 only when all up)
#   scripts/testcluster.sh env      print `export` lines for the tests (eval "$(... env)")
#
# Needs root on Debian 12 without systemd. Idempotent: `start` on a running cluster only checks
# it and says so. Settings (environment): HPCSERVE_TESTCLUSTER_STATE (state dir,
# default /var/lib/hpcserve-testcluster), HPCSERVE_TESTCLUSTER_SSH_PORT (default 2222),
# HPCSERVE_TESTCLUSTER_USER (default hpcuser), HPCSERVE_TESTCLUSTER_TIMEOUT (seconds, default 60).
set -euo pipefail

STATE=${HPCSERVE_TESTCLUSTER_STATE:-/var/lib/hpcserve-testcluster}
SSH_PORT=${HPCSERVE_TESTCLUSTER_SSH_PORT:-2222}
TEST_USER=${HPCSERVE_TESTCLUSTER_USER:-hpcuser}
TIMEOUT=${HPCSERVE_TESTCLUSTER_TIMEOUT:-60}
SSH_HOST=127.0.0.1
PARTITION=debug
GPU_COUNT=4
GPU_DEV_PREFIX=/dev/hpcserve-fakegpu
SLURM_CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
PROJECT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGES=(slurmctld slurmd slurm-client munge openssh-server openssh-client iproute2)

ETC=$STATE/etc
KEYS=$STATE/keys
RUN=$STATE/run
LOGS=$STATE/log
SSHD_CONFIG=$ETC/sshd_config
SSHD_HOST_KEY=$ETC/ssh_host_ed25519_key
KEY=$KEYS/id_ed25519
PASS_KEY=$KEYS/id_ed25519_passphrase
PASS_FILE=$KEYS/id_ed25519_passphrase.txt
KNOWN_HOSTS=$STATE/known_hosts
JOBCOMP=$LOGS/jobcomp.txt
MUNGE_PID=/run/munge/munged.pid
SLURMCTLD_PID=$RUN/slurmctld.pid
SLURMD_PID=$RUN/slurmd.pid
SSHD_PID=$RUN/sshd.pid

log() { echo "testcluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (the daemons, users and device files need it)"
}

# --- small helpers ----------------------------------------------------------------------------

pid_alive() {  # pid_alive PIDFILE: true when the pid in the file is a live process
    local pid
    [[ -s $1 ]] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

write_if_changed() {  # write_if_changed PATH MODE <content: rewrite only on change, so reruns are no-ops
    local path=$1 mode=$2 tmp
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$path"
    return 0
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.1 s until the command succeeds
    local seconds=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s) + seconds))
    until "$@" >/dev/null 2>&1; do
        if (($(date +%s) >= deadline)); then
            log "timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.1
    done
}

show_logs_and_die() {  # on a failed start, print the daemon logs so the cause is visible
    local f
    for f in "$LOGS"/slurmctld.log "$LOGS"/slurmd.log "$LOGS"/sshd.log /var/log/munge/munged.log; do
        [[ -f $f ]] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 25 "$f" >&2
    done
    die "$*"
}

# --- installation (once per machine) ----------------------------------------------------------

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    local out
    out=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"; } >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        die "apt-get could not install ${missing[*]}"
    fi
    rm -f "$out"
}

make_dirs() {
    install -d -m 0755 "$STATE" "$ETC" "$RUN" "$LOGS" /etc/slurm /run/sshd
    install -d -m 0700 "$KEYS"
    install -d -m 0755 -o slurm -g slurm "$STATE/slurmctld" "$LOGS/slurm"
    install -d -m 0755 "$STATE/slurmd"
    install -d -m 0755 -o munge -g munge /run/munge /var/log/munge /var/lib/munge
    install -d -m 0700 -o munge -g munge /etc/munge
}

ensure_munge_key() {
    local keyfile=/etc/munge/munge.key
    if [[ ! -s $keyfile ]]; then
        log "creating $keyfile"
        dd if=/dev/urandom of="$keyfile" bs=1024 count=1 status=none
    fi
    chown munge:munge "$keyfile"
    chmod 0400 "$keyfile"
}

ensure_fake_gpus() {  # char devices with the NVIDIA major give real per-job CUDA_VISIBLE_DEVICES
    local i dev
    for ((i = 0; i < GPU_COUNT; i++)); do
        dev=$GPU_DEV_PREFIX$i
        if [[ ! -c $dev ]]; then
            rm -f "$dev"
            mknod -m 0666 "$dev" c 195 "$i"
        fi
    done
}

ensure_user() {
    if ! id "$TEST_USER" >/dev/null 2>&1; then
        log "creating user $TEST_USER"
        useradd --create-home --shell /bin/bash "$TEST_USER"
    fi
    # useradd locks the password ('!'), and sshd without PAM then refuses even key logins.
    usermod -p '*' "$TEST_USER"
}

ensure_keys() {
    [[ -f $KEY ]] || ssh-keygen -q -t ed25519 -N '' -C "hpcserve-test" -f "$KEY"
    if [[ ! -f $PASS_KEY ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$PASS_FILE")
        ssh-keygen -q -t ed25519 -N "$(cat "$PASS_FILE")" -C "hpcserve-test-passphrase" -f "$PASS_KEY"
    fi
    [[ -f $SSHD_HOST_KEY ]] || ssh-keygen -q -t ed25519 -N '' -C "hpcserve-test-host" -f "$SSHD_HOST_KEY"
    chmod 0600 "$KEY" "$PASS_KEY" "$PASS_FILE" "$SSHD_HOST_KEY"

    local home ssh_dir
    home=$(getent passwd "$TEST_USER" | cut -d: -f6)
    ssh_dir=$home/.ssh
    install -d -m 0700 -o "$TEST_USER" -g "$TEST_USER" "$ssh_dir"
    cat "$KEY.pub" "$PASS_KEY.pub" | write_if_changed "$ssh_dir/authorized_keys" 0600 || true
    chown "$TEST_USER:$TEST_USER" "$ssh_dir/authorized_keys"

    local host_key
    read -r keytype keydata _ <"$SSHD_HOST_KEY.pub"
    host_key="[$SSH_HOST]:$SSH_PORT $keytype $keydata"
    echo "$host_key" | write_if_changed "$KNOWN_HOSTS" 0644 || true
}

ensure_venv_readable() {  # jobs and SSH sessions run as the test user and need the project's venv
    local venv=$PROJECT_DIR/.venv python target dir
    python=$venv/bin/python
    [[ -x $python ]] || return 0
    if runuser -u "$TEST_USER" -- "$python" -c 'import hpcserve_jupyter' >/dev/null 2>&1; then
        return 0
    fi
    for target in "$venv" "$(readlink -f "$python")" "$PROJECT_DIR/src"; do
        dir=$(dirname "$target")
        [[ -d $target ]] && dir=$target
        while [[ $dir != / ]]; do
            if [[ $(stat -c %A "$dir") != *x ]]; then
                log "chmod o+x $dir (so $TEST_USER can reach $target)"
                chmod o+x "$dir"
            fi
            dir=$(dirname "$dir")
        done
    done
    runuser -u "$TEST_USER" -- "$python" -c 'import hpcserve_jupyter' >/dev/null 2>&1 ||
        log "WARNING: $TEST_USER cannot run $python -c 'import hpcserve_jupyter'; check permissions"
}

# --- configuration ----------------------------------------------------------------------------

node_line() {  # the hardware line from `slurmd -C`, with our address and fake GPUs
    local hw
    hw=$(slurmd -C 2>/dev/null | head -n 1)
    [[ $hw == NodeName=* ]] || die "slurmd -C printed no NodeName line: $hw"
    echo "$hw NodeAddr=127.0.0.1 Gres=gpu:$GPU_COUNT State=UNKNOWN"
}

slurm_conf() {
    local host=$1 node=$2
    cat <<EOF
# Written by hpcserve-jupyter scripts/testcluster.sh: single-node test cluster.
ClusterName=hpcserve-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
MailProg=/bin/true
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$node
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

gres_conf() {
    echo "# Written by hpcserve-jupyter scripts/testcluster.sh: fake GPUs (device files only)."
    echo "Name=gpu File=${GPU_DEV_PREFIX}[0-$((GPU_COUNT - 1))]"
}

sshd_conf() {
    cat <<EOF
# Written by hpcserve-jupyter scripts/testcluster.sh: test sshd on $SSH_HOST:$SSH_PORT.
ListenAddress $SSH_HOST
Port $SSH_PORT
HostKey $SSHD_HOST_KEY
PidFile $SSHD_PID
UsePAM no
PermitRootLogin no
AllowUsers $TEST_USER
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
MaxSessions 100
MaxStartups 100:30:200
LogLevel VERBOSE
Subsystem sftp internal-sftp
EOF
}

write_configs() {  # returns 0 when a SLURM config changed (running daemons must then restart)
    local changed=1 host node
    host=$(hostname -s)
    node=$(node_line)
    slurm_conf "$host" "$node" | write_if_changed "$SLURM_CONF" 0644 && changed=0
    gres_conf | write_if_changed "$GRES_CONF" 0644 && changed=0
    sshd_conf | write_if_changed "$SSHD_CONFIG" 0644 || true
    # `sacct -c` loads the jobcomp plugin, which opens the file for append: the user needs write.
    touch "$JOBCOMP"
    chown "slurm:$TEST_USER" "$JOBCOMP"
    chmod 0664 "$JOBCOMP"
    return $changed
}

# --- daemons ----------------------------------------------------------------------------------

start_munged() {
    pid_alive "$MUNGE_PID" && return 0
    log "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" 9>&- ||
        show_logs_and_die "munged did not start"
    wait_for 10 "munged socket" bash -c 'munge -n | unmunge' || show_logs_and_die "munge does not work"
}

start_slurmctld() {
    pid_alive "$SLURMCTLD_PID" && return 0
    log "starting slurmctld"
    slurmctld -i -f "$SLURM_CONF" 9>&- || show_logs_and_die "slurmctld did not start"
}

start_slurmd() {
    pid_alive "$SLURMD_PID" && return 0
    log "starting slurmd"
    slurmd -f "$SLURM_CONF" 9>&- || show_logs_and_die "slurmd did not start"
}

start_sshd() {
    pid_alive "$SSHD_PID" && return 0
    log "starting sshd on $SSH_HOST:$SSH_PORT"
    /usr/sbin/sshd -t -f "$SSHD_CONFIG" || show_logs_and_die "sshd config $SSHD_CONFIG is invalid"
    /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$LOGS/sshd.log" 9>&- || show_logs_and_die "sshd did not start"
}

node_state() {
    sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null | head -n 1
}

node_is_ready() {
    case $(node_state) in
        idle* | mixed* | allocated* | completing*) return 0 ;;
        *) return 1 ;;
    esac
}

ssh_login_works() {
    ssh -q -i "$KEY" -p "$SSH_PORT" -o BatchMode=yes -o IdentitiesOnly=yes \
        -o UserKnownHostsFile="$KNOWN_HOSTS" -o StrictHostKeyChecking=yes -o ConnectTimeout=5 \
        "$TEST_USER@$SSH_HOST" true </dev/null
}

wait_until_ready() {
    wait_for "$TIMEOUT" "sshd login as $TEST_USER@$SSH_HOST:$SSH_PORT" ssh_login_works ||
        show_logs_and_die "sshd does not accept the test key"
    if ! wait_for "$TIMEOUT" "node to become idle" node_is_ready; then
        scontrol show node >&2 || true
        show_logs_and_die "SLURM node is '$(node_state)', not idle"
    fi
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: TERM, wait up to 10 s, then KILL
    local name=$1 file=$2 pid i
    if ! pid_alive "$file"; then
        rm -f "$file"
        return 0
    fi
    pid=$(tr -dc '0-9' <"$file")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop in 10 s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

stop_sshd() {  # the listener, then the per-connection sshd processes it forked (open logins)
    local pid children=""
    if pid_alive "$SSHD_PID"; then
        pid=$(tr -dc '0-9' <"$SSHD_PID")
        children=$(ps -o pid= --ppid "$pid" || true)
    fi
    stop_pidfile sshd "$SSHD_PID"
    for pid in $children; do
        kill -TERM "$pid" 2>/dev/null || true
    done
}

all_running() {
    pid_alive "$MUNGE_PID" && pid_alive "$SLURMCTLD_PID" && pid_alive "$SLURMD_PID" &&
        pid_alive "$SSHD_PID"
}

# --- subcommands ------------------------------------------------------------------------------

cmd_start() {
    require_root
    local t0=$SECONDS
    install_packages
    make_dirs
    exec 9>"$RUN/lock"
    flock 9  # concurrent starts (parallel test workers) wait for the first one
    ensure_munge_key
    ensure_fake_gpus
    ensure_user
    ensure_keys
    ensure_venv_readable
    local was_running=no
    all_running && was_running=yes
    if write_configs && [[ $was_running == yes ]]; then
        log "SLURM configuration changed: restarting slurmctld and slurmd"
        stop_pidfile slurmd "$SLURMD_PID"
        stop_pidfile slurmctld "$SLURMCTLD_PID"
        was_running=no
    fi
    start_munged
    start_slurmctld
    start_slurmd
    start_sshd
    wait_until_ready
    if [[ $was_running == yes ]]; then
        log "already running (checked in $((SECONDS - t0)) s)"
    else
        log "started in $((SECONDS - t0)) s"
    fi
    log "node $(hostname -s) is $(node_state); ssh -i $KEY -p $SSH_PORT $TEST_USER@$SSH_HOST"
}

cmd_stop() {
    require_root
    if pid_alive "$SLURMCTLD_PID"; then
        local jobs
        jobs=$(squeue -h -o '%i' 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling jobs: $(tr '\n' ' ' <<<"$jobs")"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
        fi
    fi
    stop_sshd
    stop_pidfile slurmd "$SLURMD_PID"
    stop_pidfile slurmctld "$SLURMCTLD_PID"
    stop_pidfile munged "$MUNGE_PID"
    log "stopped"
}

cmd_status() {
    local ok=0 name file
    for name in munged slurmctld slurmd sshd; do
        case $name in
            munged) file=$MUNGE_PID ;;
            slurmctld) file=$SLURMCTLD_PID ;;
            slurmd) file=$SLURMD_PID ;;
            sshd) file=$SSHD_PID ;;
        esac
        if pid_alive "$file"; then
            printf '%-10s running (pid %s)\n' "$name" "$(tr -dc '0-9' <"$file")"
        else
            printf '%-10s stopped\n' "$name"
            ok=1
        fi
    done
    if pid_alive "$SLURMCTLD_PID"; then
        printf '%-10s %s\n' node "$(node_state)"
    fi
    if pid_alive "$SSHD_PID" && ssh_login_works; then
        printf '%-10s %s\n' ssh "login ok as $TEST_USER@$SSH_HOST:$SSH_PORT"
    else
        printf '%-10s %s\n' ssh "no login"
        ok=1
    fi
    return $ok
}

q() {  # q NAME VALUE: one shell-quoted export line
    printf 'export %s=%q\n' "$1" "$2"
}

cmd_env() {
    [[ -f $KNOWN_HOSTS ]] || die "no test cluster state in $STATE: run '$0 start' first"
    q HPCSERVE_TEST_STATE_DIR "$STATE"
    q HPCSERVE_TEST_SSH_HOST "$SSH_HOST"
    q HPCSERVE_TEST_SSH_PORT "$SSH_PORT"
    q HPCSERVE_TEST_SSH_USER "$TEST_USER"
    q HPCSERVE_TEST_SSH_KEY "$KEY"
    q HPCSERVE_TEST_SSH_KEY_PASSPHRASE "$PASS_KEY"
    q HPCSERVE_TEST_SSH_KEY_PASSPHRASE_FILE "$PASS_FILE"
    q HPCSERVE_TEST_SSH_KNOWN_HOSTS "$KNOWN_HOSTS"
    q HPCSERVE_TEST_SSH_HOST_KEY_PUB "$SSHD_HOST_KEY.pub"
    q HPCSERVE_TEST_SSHD_PID_FILE "$SSHD_PID"
    q HPCSERVE_TEST_SSHD_CONFIG "$SSHD_CONFIG"
    q HPCSERVE_TEST_SSHD_LOG "$LOGS/sshd.log"
    q HPCSERVE_TEST_SLURM_CONF "$SLURM_CONF"
    q HPCSERVE_TEST_SLURM_PARTITION "$PARTITION"
    q HPCSERVE_TEST_SLURM_NODE "$(hostname -s)"
    q HPCSERVE_TEST_SLURM_GPUS "$GPU_COUNT"
    q HPCSERVE_TEST_SLURM_JOBCOMP "$JOBCOMP"
    q HPCSERVE_TEST_SLURMCTLD_LOG "$LOGS/slurmctld.log"
    q HPCSERVE_TEST_SLURMD_LOG "$LOGS/slurmd.log"
    q HPCSERVE_TEST_REMOTE_PYTHON "$PROJECT_DIR/.venv/bin/python"
}

main() {
    case ${1:-} in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) cmd_env ;;
        *)
            echo "usage: $0 {start|stop|status|env}" >&2
            exit 2
            ;;
    esac
}

main "$@"
