#!/usr/bin/env bash
# An emulated Raspberry Pi 4 (arm64 Debian bookworm under qemu-user) reachable over ssh.
#
# Usage: bash scripts/pi-device.sh up|down|status
#
#   up      install host packages if missing, build (once, cached) the arm64 rootfs with numpy and
#           ai-edge-litert, mount it, start sshd from it on 127.0.0.1:$TFEDGE_PI_PORT and write
#           $TFEDGE_DEVICE_DIR/ssh_config with a "Host tfedge-pi" entry. Idempotent.
#   down    stop sshd and unmount everything. Idempotent.
#   status  print whether the device is up (exit 0 up, 1 down).
#
# Then:  ssh -F .device/ssh_config tfedge-pi uname -m          -> aarch64
#        tfedge bench model.tflite --ssh-config .device/ssh_config --device ssh://tfedge-pi
#
# Environment:
#   TFEDGE_CACHE          cache root (default ~/.cache/tfedge); the rootfs is $TFEDGE_CACHE/pi-rootfs
#   TFEDGE_PI_PORT        sshd port on 127.0.0.1 (default 2222)
#   TFEDGE_DEVICE_DIR     where keys, ssh_config, known_hosts, sshd.pid go (default ./.device)
#   TFEDGE_PI_CPU         qemu CPU model (default cortex-a72 = Pi 4; cortex-a76 = Pi 5)
#   TFEDGE_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   TFEDGE_PI_LITERT      pip requirement for the device runtime (default ai-edge-litert==2.3.0)
#
# Emulated inference is 150-500x slower than the host: the device proves the harness (transport,
# runtime discovery, accuracy, bit-exact outputs), never a latency figure.
#
# Safety: the rootfs gets the host's /dev bind-mounted into it while up. Never delete the rootfs
# while it is up; `down` first (this script refuses to touch a rootfs that still has mounts).
set -euo pipefail

CACHE="${TFEDGE_CACHE:-$HOME/.cache/tfedge}"
ROOTFS="$CACHE/pi-rootfs"
PORT="${TFEDGE_PI_PORT:-2222}"
DEVDIR="${TFEDGE_DEVICE_DIR:-$(pwd)/.device}"
QEMU_CPU_MODEL="${TFEDGE_PI_CPU:-cortex-a72}"
MIRROR="${TFEDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
LITERT_REQ="${TFEDGE_PI_LITERT:-ai-edge-litert==2.3.0}"
HOST_ALIAS="tfedge-pi"
SUITE="bookworm"
INCLUDE="python3,python3-numpy,python3-venv,python3-pip,ca-certificates,openssh-server"

log() { printf 'pi-device: %s\n' "$*" >&2; }
die() {
    printf 'Error: %s\n' "$1" >&2
    [[ $# -gt 1 ]] && printf 'Hint: %s\n' "$2" >&2
    exit 1
}

abspath() { # make a path absolute without requiring it to exist
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$(pwd)" "$1" ;;
    esac
}
DEVDIR="$(abspath "$DEVDIR")"
CACHE="$(abspath "$CACHE")"
ROOTFS="$CACHE/pi-rootfs"

KEY="$DEVDIR/id_ed25519"
KNOWN_HOSTS="$DEVDIR/known_hosts"
SSH_CONFIG="$DEVDIR/ssh_config"
PIDFILE="$DEVDIR/sshd.pid"
SSHD_LOG="$DEVDIR/sshd.log"
# Inside the rootfs (paths as the device sees them).
SSHD_CONFIG_IN="/etc/ssh/sshd_config_tfedge_$PORT"
SSHD_PID_IN="/run/tfedge-sshd-$PORT.pid"
SSHD_OWNER_IN="/run/tfedge-sshd-$PORT.owner" # the device folder of the checkout that started it

need_root() {
    [[ $EUID -eq 0 ]] || die "'$1' needs root (chroot, mount, binfmt); running as uid $EUID" \
        "run it as root, e.g. sudo bash scripts/pi-device.sh $1"
}

# ---------------------------------------------------------------- host set-up

install_host_packages() {
    local missing=() pkg
    for pkg in qemu-user-static binfmt-support debootstrap openssh-client; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null || die "host packages missing: ${missing[*]}" \
            "install them with your package manager (this script knows apt-get only)"
        log "installing host packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

enable_binfmt() {
    if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc" "the host kernel needs binfmt_misc (modprobe binfmt_misc)"
    fi
    if ! grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
        || die "qemu-aarch64 is not registered in binfmt_misc" \
            "check 'update-binfmts --display qemu-aarch64' (package qemu-user-static)"
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || die "qemu-aarch64 binfmt entry lacks the F flag (needed inside a chroot)" \
            "reinstall qemu-user-static / binfmt-support"
}

# ---------------------------------------------------------------- mounts

is_mounted() { mountpoint -q "$1" 2>/dev/null; }

inroot() { # run a command inside a rootfs, in a clean environment, as the emulated CPU
    local r="$1"
    shift
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU_MODEL" chroot "$r" "$@"
}

rootfs_mounts_under() { # is anything mounted at or below directory $1?
    awk -v r="$1/" '{ if (index($2 "/", r) == 1) found = 1 } END { exit !found }' /proc/self/mounts
}

write_cpuinfo() { # a Raspberry Pi 4 style /proc/cpuinfo: LiteRT segfaults on the host's x86 one
    local out="$1" i
    {
        for i in 0 1 2 3; do
            printf 'processor\t: %d\n' "$i"
            printf 'BogoMIPS\t: 108.00\n'
            printf 'Features\t: fp asimd evtstrm crc32 cpuid\n'
            printf 'CPU implementer\t: 0x41\n'
            printf 'CPU architecture: 8\n'
            printf 'CPU variant\t: 0x0\n'
            printf 'CPU part\t: 0xd08\n'
            printf 'CPU revision\t: 3\n\n'
        done
        printf 'Hardware\t: BCM2835\n'
        printf 'Revision\t: c03111\n'
        printf 'Serial\t\t: 10000000tfedge00\n'
        printf 'Model\t\t: Raspberry Pi 4 Model B Rev 1.1\n'
    } >"$out"
}

mount_rootfs() {
    local r="$1"
    is_mounted "$r/proc" || mount -t proc proc "$r/proc"
    is_mounted "$r/sys" || mount --rbind /sys "$r/sys"
    is_mounted "$r/dev" || mount --rbind /dev "$r/dev"
    mkdir -p "$r/etc/tfedge"
    write_cpuinfo "$r/etc/tfedge/cpuinfo"
    is_mounted "$r/proc/cpuinfo" || mount --bind "$r/etc/tfedge/cpuinfo" "$r/proc/cpuinfo"
    cp -L /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
}

umount_rootfs() {
    local r="$1" m
    is_mounted "$r/proc/cpuinfo" && umount "$r/proc/cpuinfo"
    for m in proc sys dev; do
        if is_mounted "$r/$m"; then
            umount -R "$r/$m" 2>/dev/null || umount -R -l "$r/$m"
        fi
    done
    if rootfs_mounts_under "$r"; then
        die "mounts are left under $r" "see 'grep $r /proc/self/mounts'; unmount them by hand"
    fi
}

# ---------------------------------------------------------------- rootfs build (once, atomic)

build_rootfs() {
    [[ -f "$ROOTFS/etc/tfedge/complete" ]] && return 0
    [[ -e "$ROOTFS" ]] && die "$ROOTFS exists but is not a complete tfedge rootfs" \
        "run 'bash scripts/pi-device.sh down', then remove it: rm -rf --one-file-system '$ROOTFS'"
    mkdir -p "$CACHE"
    # Built in $tmp and renamed when complete, so an interrupted build is never taken as cached.
    # A finished debootstrap stage in $tmp is reused by the next attempt (it is the slow part).
    local tmp="$CACHE/pi-rootfs.build"
    local start=$SECONDS
    # shellcheck disable=SC2064
    trap "umount_rootfs '$tmp' >/dev/null 2>&1 || true" EXIT
    umount_rootfs "$tmp" >/dev/null 2>&1 || true
    if [[ ! -f "$tmp/etc/tfedge/debootstrap-done" ]]; then
        if [[ -e "$tmp" ]]; then
            rootfs_mounts_under "$tmp" && die "mounts are left under $tmp" "unmount them by hand"
            rm -rf --one-file-system "$tmp"
        fi
        log "building the arm64 $SUITE rootfs in $tmp (once; takes about 5 minutes)"
        debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" \
            "$SUITE" "$tmp" "$MIRROR" >"$CACHE/pi-rootfs.debootstrap.log" 2>&1 \
            || die "debootstrap failed (log: $CACHE/pi-rootfs.debootstrap.log)" \
                "check that $MIRROR is reachable; a rerun starts a fresh build"
        mkdir -p "$tmp/etc/tfedge"
        touch "$tmp/etc/tfedge/debootstrap-done"
        log "debootstrap done in $((SECONDS - start)) s"
    else
        log "resuming the rootfs build in $tmp after its debootstrap stage"
    fi
    log "installing $LITERT_REQ in /opt/venv (about a minute under emulation)"

    mount_rootfs "$tmp"
    # The runtime: a venv that sees Debian's numpy, with ai-edge-litert; wheels only (no
    # compiling under emulation).
    # pip inside trusts the host's CA bundle (a TLS-inspecting proxy's CA included) and the
    # host's proxy settings, for this build only.
    local ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" pipenv=() v
    if [[ -f "$ca" ]]; then
        cp "$ca" "$tmp/etc/tfedge/host-ca.crt"
        pipenv+=(PIP_CERT=/etc/tfedge/host-ca.crt)
    fi
    for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL; do
        [[ -n "${!v:-}" ]] && pipenv+=("$v=${!v}")
    done
    rm -rf "$tmp/opt/venv"
    inroot "$tmp" /usr/bin/python3 -m venv --system-site-packages /opt/venv
    inroot "$tmp" /usr/bin/env PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "${pipenv[@]}" \
        /opt/venv/bin/pip install -q --only-binary=:all: "$LITERT_REQ" >"$CACHE/pi-rootfs.pip.log" 2>&1 \
        || die "pip install $LITERT_REQ failed inside the rootfs (log: $CACHE/pi-rootfs.pip.log)" \
            "check that PyPI is reachable; a rerun starts a fresh build"
    # python3 for ssh sessions is the venv's: sshd's default PATH puts /usr/local/bin first.
    # (A wrapper, not a symlink: a symlink would not activate the venv.) /usr/bin/python3 stays
    # the plain Debian python (numpy, no LiteRT).
    cat >"$tmp/usr/local/bin/python3" <<'EOF'
#!/bin/sh
exec /opt/venv/bin/python3 "$@"
EOF
    chmod 755 "$tmp/usr/local/bin/python3"
    ln -sf python3 "$tmp/usr/local/bin/python"
    inroot "$tmp" /usr/local/bin/python3 -c \
        'import numpy, ai_edge_litert.interpreter' \
        || die "the runtime does not import inside the new rootfs" "see $CACHE/pi-rootfs.pip.log"

    # sshd: its own host key, generated once with the rootfs.
    rm -f "$tmp"/etc/ssh/ssh_host_*
    inroot "$tmp" /usr/bin/ssh-keygen -q -t ed25519 -N '' -C tfedge-pi \
        -f /etc/ssh/ssh_host_ed25519_key
    mkdir -p "$tmp/root/.ssh" "$tmp/run/sshd"
    chmod 700 "$tmp/root/.ssh"
    touch "$tmp/root/.ssh/authorized_keys"
    chmod 600 "$tmp/root/.ssh/authorized_keys"
    rm -f "$tmp/etc/tfedge/host-ca.crt"
    echo "$SUITE arm64 $LITERT_REQ $(date -u +%FT%TZ)" >"$tmp/etc/tfedge/complete"

    umount_rootfs "$tmp"
    trap - EXIT
    mv -T "$tmp" "$ROOTFS"
    log "rootfs ready in $((SECONDS - start)) s: $ROOTFS ($(du -sh --one-file-system "$ROOTFS" | cut -f1))"
}

# ---------------------------------------------------------------- sshd

sshd_pid() { # the pid of our running sshd, or nothing
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(cat "$PIDFILE" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "sshd" || return 1
    echo "$pid"
}

ssh_ok() {
    ssh -F "$SSH_CONFIG" -o ConnectTimeout=10 "$HOST_ALIAS" true >/dev/null 2>&1
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

other_owner() { # the device folder of another checkout whose sshd serves $PORT, or nothing
    local pid owner
    [[ -f "$ROOTFS$SSHD_PID_IN" && -f "$ROOTFS$SSHD_OWNER_IN" ]] || return 1
    pid="$(cat "$ROOTFS$SSHD_PID_IN" 2>/dev/null)"
    owner="$(cat "$ROOTFS$SSHD_OWNER_IN" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ -n "$owner" && "$owner" != "$DEVDIR" ]] || return 1
    echo "$owner (sshd pid $pid)"
}

refuse_other_owner() {
    local owner
    owner="$(other_owner)" || return 0
    die "port $PORT is held by the emulated Pi of another checkout: $owner" \
        "use that device (ssh -F ${owner%% (*}/ssh_config $HOST_ALIAS), stop it from its checkout (make device-down), or start this one on another port: TFEDGE_PI_PORT=2223 make device-up"
}

write_client_files() {
    mkdir -p "$DEVDIR"
    chmod 700 "$DEVDIR"
    [[ -f "$KEY" ]] || ssh-keygen -q -t ed25519 -N '' -C "tfedge-device-client" -f "$KEY"
    # authorize this client key on the device (the rootfs may be shared by several checkouts)
    local pub
    pub="$(cat "$KEY.pub")"
    grep -qxF "$pub" "$ROOTFS/root/.ssh/authorized_keys" 2>/dev/null \
        || echo "$pub" >>"$ROOTFS/root/.ssh/authorized_keys"
    # known_hosts holds the device's real host key
    local hostkey
    hostkey="$(cut -d' ' -f1,2 "$ROOTFS/etc/ssh/ssh_host_ed25519_key.pub")"
    if [[ "$PORT" == 22 ]]; then
        echo "127.0.0.1 $hostkey" >"$KNOWN_HOSTS"
    else
        echo "[127.0.0.1]:$PORT $hostkey" >"$KNOWN_HOSTS"
    fi
    cat >"$SSH_CONFIG" <<EOF
# Written by scripts/pi-device.sh: the emulated Raspberry Pi 4 (qemu $QEMU_CPU_MODEL).
Host $HOST_ALIAS
    HostName 127.0.0.1
    Port $PORT
    User root
    IdentityFile $KEY
    UserKnownHostsFile $KNOWN_HOSTS
    StrictHostKeyChecking yes
    IdentitiesOnly yes
    BatchMode yes
    LogLevel ERROR
EOF
}

write_sshd_config() {
    cat >"$ROOTFS$SSHD_CONFIG_IN" <<EOF
# Written by scripts/pi-device.sh
Port $PORT
ListenAddress 127.0.0.1
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile $SSHD_PID_IN
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
# every process started in a session runs as the same emulated CPU
SetEnv QEMU_CPU=$QEMU_CPU_MODEL
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
EOF
}

start_sshd() {
    port_in_use && die "port $PORT on 127.0.0.1 is already in use by something else" \
        "stop it, or pick another port: TFEDGE_PI_PORT=2223 bash scripts/pi-device.sh up"
    write_sshd_config
    mkdir -p "$ROOTFS/run/sshd"
    rm -f "$ROOTFS$SSHD_PID_IN"
    # sshd daemonizes itself (no inherited stdout: a caller capturing our output does not hang)
    # and writes its pid file inside the rootfs; the pid is a host pid (qemu-user).
    inroot "$ROOTFS" /usr/sbin/sshd -f "$SSHD_CONFIG_IN" \
        -E "/var/log/tfedge-sshd-$PORT.log" </dev/null >>"$SSHD_LOG" 2>&1 \
        || die "sshd did not start (see $ROOTFS/var/log/tfedge-sshd-$PORT.log and $SSHD_LOG)"
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s "$ROOTFS$SSHD_PID_IN" ]] && break
        sleep 0.1
    done
    [[ -s "$ROOTFS$SSHD_PID_IN" ]] || die "sshd wrote no pid file" \
        "see $ROOTFS/var/log/tfedge-sshd-$PORT.log"
    cp "$ROOTFS$SSHD_PID_IN" "$PIDFILE"
    echo "$DEVDIR" >"$ROOTFS$SSHD_OWNER_IN"
}

wait_ssh() {
    local i
    for ((i = 0; i < 60; i++)); do
        ssh_ok && return 0
        sshd_pid >/dev/null || break
        sleep 0.5
    done
    return 1
}

# ---------------------------------------------------------------- commands

cmd_up() {
    need_root up
    if sshd_pid >/dev/null && [[ -f "$SSH_CONFIG" ]] && ssh_ok; then
        log "already up: ssh -F $SSH_CONFIG $HOST_ALIAS"
        return 0
    fi
    refuse_other_owner
    local start=$SECONDS
    install_host_packages
    enable_binfmt
    build_rootfs
    # a stale sshd of ours (pid alive but not answering): stop it before starting afresh
    cmd_down >/dev/null 2>&1 || true
    mount_rootfs "$ROOTFS"
    write_client_files
    start_sshd
    wait_ssh || {
        cmd_down >/dev/null 2>&1 || true
        die "sshd started but ssh -F $SSH_CONFIG $HOST_ALIAS does not answer" \
            "see $ROOTFS/var/log/tfedge-sshd-$PORT.log"
    }
    log "up in $((SECONDS - start)) s: ssh -F $SSH_CONFIG $HOST_ALIAS (pid $(cat "$PIDFILE"))"
}

other_sshd_running() { # another port's tfedge sshd still serving from the same rootfs?
    local f pid
    for f in "$ROOTFS"/run/tfedge-sshd-*.pid; do
        [[ -f "$f" && "$f" != "$ROOTFS$SSHD_PID_IN" ]] || continue
        pid="$(cat "$f" 2>/dev/null)"
        [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}

cmd_down() {
    need_root down
    local pid i child owner
    if ! sshd_pid >/dev/null && [[ -d "$ROOTFS" ]] && owner="$(other_owner)"; then
        log "the device on port $PORT belongs to another checkout ($owner): left running"
        return 0
    fi
    if pid="$(sshd_pid)"; then
        # the per-connection sshd processes first (they outlive a killed listener), then it
        for child in $(pgrep -P "$pid" 2>/dev/null || true); do
            kill "$child" 2>/dev/null || true
        done
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$PIDFILE"
    [[ -d "$ROOTFS" ]] && rm -f "$ROOTFS$SSHD_PID_IN" "$ROOTFS$SSHD_OWNER_IN"
    if [[ -d "$ROOTFS" ]]; then
        if other_sshd_running; then
            log "another tfedge sshd still serves from $ROOTFS: its mounts are left in place"
        else
            umount_rootfs "$ROOTFS"
        fi
    fi
    log "down"
}

cmd_status() {
    local pid
    if pid="$(sshd_pid)" && [[ -f "$SSH_CONFIG" ]] && ssh_ok; then
        echo "up: ssh -F $SSH_CONFIG $HOST_ALIAS (127.0.0.1:$PORT, sshd pid $pid, rootfs $ROOTFS)"
        return 0
    fi
    echo "down"
    return 1
}

lock() { # one up/down at a time per cache (tests and a developer may call up together)
    mkdir -p "$CACHE"
    exec 9>"$CACHE/pi-device.lock"
    flock -w 900 9 || die "another pi-device.sh has held $CACHE/pi-device.lock for 15 minutes"
}

case "${1:-}" in
    up) need_root up && lock && cmd_up ;;
    down) need_root down && lock && cmd_down ;;
    status) cmd_status ;;
    *)
        echo "usage: bash scripts/pi-device.sh up|down|status" >&2
        exit 2
        ;;
esac
