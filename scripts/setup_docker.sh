#!/usr/bin/env bash
# setup_docker.sh - make a local Docker engine answer and build the registry-free
# test image used by localjobs' Docker backend tests.
#
# Idempotent: every step is skipped when its result is already there.
#   1. install Debian's docker.io + busybox-static   (only if missing)
#   2. start dockerd in the background                (only if `docker info` fails)
#   3. build image localjobs-test:busybox via `docker import` (only if missing)
#
# Runs as root, non-interactively (CI=true, no stdin). Exits non-zero on failure.
#
# Knobs (environment):
#   LOCALJOBS_TEST_IMAGE   image tag to build       (default localjobs-test:busybox)
#   DOCKERD_LOG            dockerd log file         (default /tmp/localjobs-dockerd.log)
#   DOCKERD_WAIT           seconds to wait for API  (default 60)
#   DOCKERD_STORAGE        force a storage driver   (default: overlay2, fallback vfs)
#   DOCKERD_EXTRA_FLAGS    extra flags for dockerd  (word-split)
set -euo pipefail

IMAGE="${LOCALJOBS_TEST_IMAGE:-localjobs-test:busybox}"
LOG="${DOCKERD_LOG:-/tmp/localjobs-dockerd.log}"
LOG_START=0
WAIT="${DOCKERD_WAIT:-60}"
PIDFILE=/var/run/docker.pid
export DEBIAN_FRONTEND=noninteractive

say() { echo "[setup_docker] $*"; }
die() {
    echo "[setup_docker] ERROR: $*" >&2
    exit 1
}

engine_up() { timeout 15 docker info >/dev/null 2>&1; }

dockerd_alive() {
    # Prints the pid of a live dockerd recorded in the pidfile, if any.
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    grep -q dockerd "/proc/$pid/comm" 2>/dev/null || return 1
    # a killed dockerd may linger as a zombie until init reaps it
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    echo "$pid"
}

clear_stale_pidfiles() {
    # dockerd refuses to start over a pidfile of a live process, and re-uses the
    # containerd named in its pidfile when kill -0 succeeds, which it does for a
    # zombie: after a SIGKILL both linger as zombies until init reaps them. Drop
    # pidfiles whose process is gone or a zombie.
    local f pid st
    for f in "$PIDFILE" /var/run/docker/containerd/containerd.pid; do
        [ -s "$f" ] || continue
        pid="$(cat "$f" 2>/dev/null || true)"
        st="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
        if [ -z "$pid" ] || [ -z "$st" ] || [ "$st" = Z ]; then
            rm -f "$f"
        fi
    done
}

# ---------------------------------------------------------------- 1. packages
install_packages() {
    local pkgs=()
    if ! command -v dockerd >/dev/null 2>&1 && ! engine_up; then
        pkgs+=(docker.io)
    fi
    if ! dpkg -s busybox-static >/dev/null 2>&1; then
        pkgs+=(busybox-static)
    fi
    if [ "${#pkgs[@]}" -eq 0 ]; then
        say "packages: already installed, skipping apt"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "need root to apt-get install ${pkgs[*]}"
    say "packages: apt-get update + install ${pkgs[*]}"
    local apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    apt-get update -q >/tmp/localjobs-apt.log 2>&1 \
        || { tail -20 /tmp/localjobs-apt.log >&2; die "apt-get update failed"; }
    # docker.io pulls containerd, runc, tini (docker-init) and iptables.
    apt-get install "${apt_opts[@]}" "${pkgs[@]}" >>/tmp/localjobs-apt.log 2>&1 \
        || { tail -20 /tmp/localjobs-apt.log >&2; die "apt-get install ${pkgs[*]} failed"; }
    say "packages: installed ${pkgs[*]}"
}

# ---------------------------------------------------------------- 2. dockerd
prepare_cgroups() {
    # cgroup v2 without systemd (e.g. nested container): the root cgroup may hold
    # processes, which forbids enabling controllers for children. Move them into
    # a leaf cgroup and enable all controllers (same trick as docker:dind).
    # Not needed on cgroup v1 / hybrid hosts (e.g. this project's CI VM).
    [ -f /sys/fs/cgroup/cgroup.controllers ] || return 0
    [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && return 0
    if ! grep -qw memory /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
        say "cgroups: v2 without systemd, enabling controllers (moving procs to /init)"
        mkdir -p /sys/fs/cgroup/init
        xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true
        sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers \
            >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    fi
}

network_flags() {
    # Fills NET_FLAGS. Docker needs a working iptables (nat table) for bridge
    # networking with port publishing / masquerade; without it fall back.
    NET_FLAGS=()
    if ! iptables -t nat -L -n >/dev/null 2>&1; then
        if [ -x /usr/sbin/iptables-legacy ] && iptables-legacy -t nat -L -n >/dev/null 2>&1; then
            say "network: iptables-nft unusable, switching to iptables-legacy"
            update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
            update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null 2>&1 || true
        else
            say "network: iptables unusable -> --iptables=false --ip-masq=false"
            NET_FLAGS+=(--iptables=false --ip-masq=false)
        fi
    fi
    # No IPv6 NAT games.
    NET_FLAGS+=(--ip6tables=false)
    if ip link add name ljprobe0 type bridge 2>/dev/null; then
        ip link del ljprobe0 2>/dev/null || true
    else
        say "network: cannot create bridges -> --bridge=none (use --network host)"
        NET_FLAGS+=(--bridge=none)
    fi
}

log_tail() { # the interesting end of the dockerd log
    { log_since_start | grep -E 'level=(error|fatal)|failed to start|^[a-z][a-z ]*: ' \
        || log_since_start | tail -n 5; } \
        | tail -n 8 | sed 's/^/    /' >&2
}

log_since_start() { tail -c +"$((LOG_START + 1))" "$LOG" 2>/dev/null || true; }

start_dockerd() { # $1 = storage driver; returns 0 when the API answers
    local driver="$1" pid i
    local flags=(
        --host=unix:///var/run/docker.sock
        --pidfile="$PIDFILE"
        --storage-driver="$driver"
        --exec-opt=native.cgroupdriver=cgroupfs
        "${NET_FLAGS[@]}"
    )
    # shellcheck disable=SC2206
    [ -n "${DOCKERD_EXTRA_FLAGS:-}" ] && flags+=(${DOCKERD_EXTRA_FLAGS})
    say "dockerd: starting: dockerd ${flags[*]}  (log: $LOG)"
    echo "=== $(date -u +%FT%TZ) dockerd ${flags[*]}" >>"$LOG"
    LOG_START="$(stat -c %s "$LOG")"
    setsid nohup dockerd "${flags[@]}" </dev/null >>"$LOG" 2>&1 &
    pid=$!
    for ((i = 0; i < WAIT; i++)); do
        if engine_up; then
            say "dockerd: up after ${i}s (pid $pid, storage $driver)"
            return 0
        fi
        # ($pid is dockerd itself unless setsid had to fork; then use the pidfile)
        if ! kill -0 "$pid" 2>/dev/null && ! dockerd_alive >/dev/null; then
            say "dockerd: exited during startup with storage $driver; log tail:"
            log_tail
            return 1
        fi
        sleep 1
    done
    say "dockerd: no answer within ${WAIT}s (storage $driver); log tail:"
    log_tail
    pid="$(dockerd_alive || echo "$pid")"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    return 1
}

ensure_engine() {
    if engine_up; then
        say "engine: already answering, not starting dockerd"
        return
    fi
    local pid i
    if pid="$(dockerd_alive)"; then
        say "engine: dockerd pid $pid is running but not answering yet; waiting"
        for ((i = 0; i < WAIT; i++)); do
            engine_up && { say "engine: up"; return; }
            sleep 1
        done
        die "dockerd pid $pid alive but API does not answer after ${WAIT}s (see $LOG)"
    fi
    [ "$(id -u)" -eq 0 ] || die "need root to start dockerd"
    command -v dockerd >/dev/null 2>&1 || die "dockerd not installed"
    clear_stale_pidfiles
    prepare_cgroups
    network_flags
    local drivers=(overlay2 vfs)
    [ -n "${DOCKERD_STORAGE:-}" ] && drivers=("$DOCKERD_STORAGE")
    local d
    for d in "${drivers[@]}"; do
        if [ "$d" = overlay2 ] && ! grep -qw overlay /proc/filesystems \
            && ! modprobe overlay 2>/dev/null; then
            say "dockerd: kernel has no overlayfs, skipping overlay2"
            continue
        fi
        clear_stale_pidfiles
        start_dockerd "$d" && return
        # Only a storage-driver failure is worth another driver.
        if ! log_since_start | grep -qiE 'graphdriver|driver not supported|storage-driver'; then
            die "dockerd failed to start (not a storage-driver problem); see $LOG"
        fi
    done
    die "could not start dockerd (tried: ${drivers[*]}); see $LOG"
}

# ---------------------------------------------------------------- 3. image
build_image() {
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
        say "image: $IMAGE already present, skipping build"
        return
    fi
    local bb=/bin/busybox
    dpkg -s busybox-static >/dev/null 2>&1 || die "busybox-static not installed"
    [ -x "$bb" ] || bb="$(dpkg -L busybox-static | grep -m1 '/busybox$')"
    [ -x "$bb" ] || die "static busybox binary not found"
    local root
    root="$(mktemp -d /tmp/localjobs-rootfs.XXXXXX)"
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" EXIT
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/tmp,proc,sys,dev,home}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 700 "$root/root"
    cp "$bb" "$root/bin/busybox"
    chmod 755 "$root/bin/busybox"
    local app
    # Every applet (sh, echo, sleep, cat, env, true, false, kill, yes, head, dd,
    # seq, tail, nslookup, ping, wget, nc, ...) at its usual path.
    while read -r app; do
        [ "$app" = bin/busybox ] && continue
        [ -e "$root/$app" ] || ln -s /bin/busybox "$root/$app"
    done < <("$bb" --list-full)
    [ -e "$root/bin/sh" ] || ln -s /bin/busybox "$root/bin/sh"
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
        'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"
    say "image: importing $IMAGE ($("$bb" --list | wc -l) busybox applets)"
    tar --numeric-owner --owner=0 --group=0 -C "$root" -c . \
        | docker import \
            --change 'CMD ["/bin/sh"]' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --message "localjobs test image (busybox-static, no registry)" \
            - "$IMAGE" >/dev/null \
        || die "docker import failed"
    rm -rf "$root"
    trap - EXIT
    local out
    out="$(docker run --rm "$IMAGE" sh -c 'echo ok' 2>&1)" \
        || die "smoke run of $IMAGE failed: $out"
    [ "$out" = ok ] || die "smoke run of $IMAGE printed: $out"
    say "image: $IMAGE built and runs"
}

main() {
    install_packages
    command -v docker >/dev/null 2>&1 || die "docker CLI not found"
    ensure_engine
    build_image
    say "done: $(docker version --format 'server {{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo engine up)"
}

main "$@"
