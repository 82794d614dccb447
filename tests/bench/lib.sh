# shellcheck shell=bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# What the benchmark scripts share (sourced, never run): dying with a message, a private mount
# namespace, loop filesystems that are checked to reflink, reflayerd on a scratch store, clocks
# and medians, and one cleanup list run on exit in reverse order.
#
# The caller sets BENCH_NAME (for messages) before sourcing.

die() { echo "${BENCH_NAME:-bench}: error: $*" >&2; exit 1; }
note() { echo "${BENCH_NAME:-bench}: $*" >&2; }

# Commands run at exit, last registered first: each undoes one thing set up (a mount, a
# daemon), so a failure or ^C half-way leaves no mount, loop device or process behind.
BENCH_CLEANUPS=()
on_exit() { BENCH_CLEANUPS+=("$*"); }
run_cleanups() {
        local rc=$? i
        cd /
        for ((i = ${#BENCH_CLEANUPS[@]} - 1; i >= 0; i--)); do
                eval "${BENCH_CLEANUPS[i]}" || true
        done
        BENCH_CLEANUPS=()
        exit "$rc"
}
# cleanups_since N: run (and forget) those registered after the first N, now.
cleanups_since() {
        local i
        for ((i = ${#BENCH_CLEANUPS[@]} - 1; i >= $1; i--)); do
                eval "${BENCH_CLEANUPS[i]}" || true
                unset 'BENCH_CLEANUPS[i]'
        done
}
trap run_cleanups EXIT
trap 'exit 130' INT TERM

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (mount, mkfs, debootstrap)"; }

# take_paths VAR:WHAT... -- ARG...: each ARG, an existing path made absolute, into its VAR;
# dies with the usage (PATH-TO-WHAT...) when the count differs or a path is missing.
take_paths() {
        local -a specs=()
        while [[ $1 != -- ]]; do specs+=("$1"); shift; done
        shift
        (($# == ${#specs[@]})) || die "usage: $0$(printf ' PATH-TO-%s' "${specs[@]#*:}")"
        local s p
        for s in "${specs[@]}"; do
                p=$(realpath -e -- "$1") || die "${s#*:} '$1' not found"
                printf -v "${s%%:*}" '%s' "$p"
                shift
        done
}
# check_runs DEFAULT: RUNS from the environment, else DEFAULT; a positive integer.
check_runs() {
        RUNS=${RUNS:-$1}
        [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
}
# need_tools TOOL:PACKAGE...: need_tool for each.
need_tools() {
        local t
        for t; do need_tool "${t%%:*}" "${t#*:}"; done
}
# need_tool CMD DEBIAN-PACKAGE: a missing tool is an error that names the fix.
need_tool() { command -v "$1" >/dev/null || die "$1 not found: apt-get install $2 (or make deps)"; }

# enter_private_ns SCRIPT ARGS...: run SCRIPT again in a private mount namespace (unless this
# already is that run), so every mount it makes vanishes with it. Sets nothing; call first.
enter_private_ns() {
        [[ -n ${REFLAYER_BENCH_NS:-} ]] && return 0
        REFLAYER_BENCH_NS=1 exec unshare -m --propagation private -- "$BASH" "$@"
}

# Nanoseconds on the monotonic-ish wall clock (date's %N; fine at ms resolution).
now_ns() { date +%s%N; }

# stats: numbers on stdin, one a line -> "median min max" (median of an even count: the mean
# of the middle two). Nothing in, "- - -" out.
stats() {
        sort -g | awk '{ v[NR] = $1 } END {
                if (!NR) { print "- - -"; exit }
                m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                print m, v[1], v[NR] }'
}
median() { stats | cut -d' ' -f1; }

# mkfs_loop TYPE SIZE IMG MNT: a fresh TYPE (xfs with reflink=1, or btrfs mounted with
# max_inline=0, as the README advises for a store: inline files cannot be shared) in the
# sparse file IMG of SIZE (truncate's syntax), loop-mounted on MNT and unmounted at exit.
# Dies unless a file on it can be reflinked: figures from a filesystem that copies would
# mean nothing.
mkfs_loop() {
        local type=$1 size=$2 img=$3 mnt=$4 opts=
        [[ $type == btrfs ]] && opts=max_inline=0
        truncate -s "$size" "$img"
        case $type in
        xfs) need_tool mkfs.xfs xfsprogs; mkfs.xfs -q -f -m reflink=1 "$img" ;;
        btrfs) need_tool mkfs.btrfs btrfs-progs; mkfs.btrfs -q -f "$img" >/dev/null ;;
        *) die "mkfs_loop: unknown filesystem '$type'" ;;
        esac || die "mkfs.$type $img failed"
        mkdir -p "$mnt"
        mount -o "loop${opts:+,$opts}" "$img" "$mnt" || die "cannot loop-mount $img ($type) on $mnt"
        on_exit "umount '$mnt' || umount -l '$mnt'"
        head -c 65536 /dev/urandom >"$mnt/.reflink-probe"
        cp --reflink=always "$mnt/.reflink-probe" "$mnt/.reflink-probe2" 2>/dev/null ||
                die "$type at $mnt does not reflink (cp --reflink=always failed)"
        rm -f "$mnt/.reflink-probe" "$mnt/.reflink-probe2"
}

# daemon_start DAEMON CLI ROOT SOCKET LOG [ARGS...]: reflayerd on the store ROOT, serving
# SOCKET, logging to LOG; returns once it answers Version, stopped (and its status checked)
# at exit. Sets DAEMON_PID.
daemon_start() {
        local daemon=$1 cli=$2 root=$3 sock=$4 log=$5 i
        shift 5
        "$daemon" --root "$root" --socket "$sock" --log-level warning "$@" 2>"$log" &
        DAEMON_PID=$!
        on_exit "daemon_stop $DAEMON_PID '$log'"
        for i in $(seq 101); do
                "$cli" --socket "$sock" version 2>/dev/null | grep -q '^reflayerd' && return 0
                if ((i > 100)) || ! kill -0 "$DAEMON_PID" 2>/dev/null; then
                        cat "$log" >&2
                        die "reflayerd did not start on $sock (its log is above)"
                fi
                sleep 0.1
        done
}

# daemon_stop PID LOG: SIGTERM, wait up to 10 s, then SIGKILL; says so, and returns 1, if it
# did not exit 0.
daemon_stop() {
        local pid=$1 log=$2 rc=0 i
        kill -0 "$pid" 2>/dev/null || return 0
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" || rc=$?
        ((rc == 0)) && return 0
        note "reflayerd exited with status $rc; its log:"
        cat "$log" >&2
        return 1
}

# containerd_start NAME DIR DISABLED [TABLES]: Debian's containerd with root and state under DIR
# (on the filesystem measured), its own gRPC and ttrpc sockets in $WORK (never the system's),
# the plugins in DISABLED (TOML strings, comma-separated) off, and the TOML TABLES appended
# (proxy plugins, plugin settings). Returns once `ctr version` answers; stopped at exit. Sets
# CSOCK (the gRPC socket) and CTRD_PID; its log is $WORK/containerd-NAME.log.
containerd_start() {
        local name=$1 dir=$2 disabled=$3 tables=${4:-} i
        CSOCK=$WORK/containerd-$name.sock
        mkdir -p "$dir"
        cat >"$WORK/containerd-$name.toml" <<EOT
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [$disabled]
[grpc]
  address = "$CSOCK"
[ttrpc]
  address = "$CSOCK.ttrpc"
$tables
EOT
        containerd --config "$WORK/containerd-$name.toml" >"$WORK/containerd-$name.log" 2>&1 &
        CTRD_PID=$!
        on_exit "kill $CTRD_PID; wait $CTRD_PID"
        for i in $(seq 101); do
                ctr -a "$CSOCK" version >/dev/null 2>&1 && return 0
                if ((i > 100)) || ! kill -0 "$CTRD_PID" 2>/dev/null; then
                        tail -n 20 "$WORK/containerd-$name.log" >&2
                        die "containerd did not start on $CSOCK (log above)"
                fi
                sleep 0.1
        done
}

# oci_debian_layout: print the path of a Debian minbase OCI image layout (tests/lib/oci-fixture
# debian: the rootfs as one gzip layer and a small second one, tagged "debian"), built once with
# umoci and cached beside the rootfs (the cache `make bench-import` uses too).
oci_debian_layout() {
        local cache=${RL_CACHE:-/var/tmp/reflayer-cache}/oci-debian
        local lib
        lib=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
        if [[ ! -d $cache/layout ]]; then
                note "building the Debian OCI image once (umoci; cached in $cache)"
                rm -rf "$cache.tmp"
                mkdir -p "$cache.tmp"
                "$lib/oci-fixture" debian "$cache.tmp" >/dev/null || die "oci-fixture debian failed"
                mv -T "$cache.tmp" "$cache"
        fi
        echo "$cache/layout"
}
