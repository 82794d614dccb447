#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# containerd's ways to a container rootfs, side by side, all through `ctr`: reflayerd as the
# proxy snapshotter `reflayer`, containerd's native snapshotter and its overlayfs snapshotter.
#
# On a fresh loop XFS (reflink=1) holding containerd's root and state and reflayerd's store,
# the Debian minbase OCI image (tests/lib/oci-fixture debian: the rootfs as one layer and a
# small second one, built once with umoci and cached) is imported into each snapshotter with
# `ctr images import --snapshotter S`. Then, in each round, for each snapshotter in an order
# rotated every round:
#
#   - `ctr snapshots --snapshotter S prepare KEY TOP` (TOP: the image's top layer), timed
#     around the ctr command; then `ctr version` (ctr's start-up and one call), so that
#     "prepare minus ctr version" is containerd plus the snapshotter; for reflayer also a
#     Prepare of the same layer straight through reflayerd's JSON-RPC socket, timed around the
#     one request in C (prepare-bench), which is the snapshot creation alone;
#   - what the prepare cost in space: df growth, and new data in the snapshot's own directory
#     (`reflayer du`: bytes of extents not shared with any other file, so reflinked data does
#     not count; the own directory is the bind source for reflayer and native, the upper
#     directory for overlayfs);
#   - `chown -R -h 100000:100000` of the rootfs mounted from `ctr snapshots mounts` output,
#     plus a syncfs: its time, df growth, new data in the own directory, and for overlayfs
#     the files copied up and the upper directory's du;
#   - `ctr snapshots rm`, then a wait (untimed) until containerd's garbage collector has the
#     backend remove the snapshot (`deletion_threshold = 1` runs it on every removal).
#
# reflayerd runs without its warm pool (--pool-size 0): every Prepare is a cold clone.
# `sync -f` before each timed step; the page cache stays warm. Medians of RUNS (default 5).
# One table. Run as root: make bench-containerd [RUNS=N]
#   (or: tests/bench/containerd.sh CLI DAEMON PREPARE-BENCH)
# SNAPSHOTTERS="native overlayfs" leaves reflayer out (a reflayerd without --containerd-socket).
set -euo pipefail
BENCH_NAME=bench-containerd
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

take_paths CLI:reflayer DAEMON:reflayerd PB:prepare-bench -- "$@"
check_runs 5
read -r -a SNS <<<"${SNAPSHOTTERS:-reflayer native overlayfs}"
need_root
need_tools containerd:containerd ctr:containerd mkfs.xfs:xfsprogs umoci:umoci bc:bc
RL=0
for s in "${SNS[@]}"; do
        case $s in
        reflayer) RL=1 ;;
        native | overlayfs) ;;
        *) die "SNAPSHOTTERS: unknown snapshotter '$s' (reflayer, native, overlayfs)" ;;
        esac
done
if ((RL)) && ! "$DAEMON" --help 2>&1 | grep -q -- '--containerd-socket'; then
        die "$DAEMON has no --containerd-socket (containerd's gRPC door):" \
                "SNAPSHOTTERS='native overlayfs' runs the others"
fi

if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        # Built (once, cached) before the namespace: debootstrap and umoci take minutes.
        oci_debian_layout >/dev/null
fi
enter_private_ns "$0" "$CLI" "$DAEMON" "$PB"

# --- inside the private mount namespace ---
LAYOUT=$(oci_debian_layout)
WORK=$(mktemp -d /var/tmp/reflayer-bench-ctr.XXXXXX)
on_exit "rm -rf '$WORK'"
MNT=$WORK/xfs
IMAGE=reflayer.test/debian:debian
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A S # "SNAPSHOTTER/metric" -> samples, space-separated
add() { S[$1/$2]+="$3 "; }
# shellcheck disable=SC2086 # the samples are words
med() { printf '%s\n' ${S[$1/$2]:-} | median; }
secs() { echo "($2 - $1) / 1000000000" | bc -l; }
rl() { "$CLI" --socket "$SOCK" "$@"; }
ctr_() { ctr -a "$CSOCK" -n bench "$@"; }
snaps() { local s=$1; shift; ctr_ snapshots --snapshotter "$s" "$@"; }
df_used() { sync -f "$MNT"; df -B1 --output=used "$MNT" | tail -n 1 | tr -d ' '; }
# new_data DIR: bytes of DIR's files in extents no other file shares.
new_data() { "$CLI" du --json "$1" | grep -o '"bytes_exclusive":[0-9]*' | cut -d: -f2; }

# How many snapshots the backend of $1 holds: reflayer's store, or containerd's directories.
backend_count() {
        case $1 in
        reflayer) rl --json ls | grep -o '"name":' | wc -l ;;
        *) find "$MNT/containerd/root/io.containerd.snapshotter.v1.$1/snapshots" \
                -mindepth 1 -maxdepth 1 | wc -l ;;
        esac
}
# wait_removed S: until the backend of S is back to its BASE count (the image's layers).
wait_removed() {
        local i
        for i in $(seq 1200); do
                (($(backend_count "$1") == ${BASE[$1]})) && break
                ((i < 1200)) || die "$1: removed snapshots still in the backend after 120 s"
                sleep 0.1
        done
        if [[ $1 == reflayer ]]; then rl cleanup; fi
}

# The mount command for snapshot KEY of S on TARGET; the own directory in OWN.
mount_line() {
        local s=$1 key=$2 target=$3
        LINE=$(snaps "$s" mounts "$target" "$key")
        [[ $LINE == "mount -t "* ]] || die "ctr snapshots mounts $key ($s) printed: $LINE"
        case $LINE in
        "mount -t overlay "*) OWN=$(grep -o 'upperdir=[^,]*' <<<"$LINE" | cut -d= -f2) ;;
        "mount -t bind "*) OWN=$(awk '{ print $4 }' <<<"$LINE") ;;
        *) die "ctr snapshots mounts $key ($s): neither overlay nor bind: $LINE" ;;
        esac
        [[ -d $OWN ]] || die "ctr snapshots mounts $key ($s): no directory '$OWN'"
}

# step S ROUND: prepare (timed), ctr version (timed), space, chown (timed), space, rm.
step() {
        local s=$1 k=p-$1-$2 t0 t1 t2 d0 d1 d2 n0 n1 target=$WORK/m-$1-$2
        d0=$(df_used)
        t0=$(now_ns)
        snaps "$s" prepare "$k" "${TOP[$s]}"
        t1=$(now_ns)
        ctr_ version >/dev/null
        t2=$(now_ns)
        add "$s" prepare "$(secs "$t0" "$t1")"
        add "$s" version "$(secs "$t1" "$t2")"
        add "$s" net "$(echo "($t1 - $t0 - $t2 + $t1) / 1000000000" | bc -l)"
        d1=$(df_used)
        add "$s" prepare_df $((d1 - d0))
        mkdir -p "$target"
        mount_line "$s" "$k" "$target"
        n0=$(new_data "$OWN")
        add "$s" prepare_new "$n0"
        sh -ec "$LINE" || die "$LINE failed"
        [[ -f $target/etc/debian_version ]] || die "$s: $target has no Debian rootfs"
        sync -f "$MNT"
        t0=$(now_ns)
        chown -R -h 100000:100000 "$target"
        sync -f "$MNT"
        t1=$(now_ns)
        [[ $(stat -c %u:%g "$target/etc/passwd") == 100000:100000 ]] ||
                die "$s: chown -R did not reach $target/etc/passwd"
        add "$s" chown "$(secs "$t0" "$t1")"
        d2=$(df_used)
        add "$s" chown_df $((d2 - d1))
        n1=$(new_data "$OWN")
        add "$s" chown_new $((n1 - n0))
        if [[ $s == overlayfs ]]; then
                add "$s" chown_files "$(find "$OWN" -type f | wc -l)"
                add "$s" chown_du "$(du -s -B1 "$OWN" | cut -f1)"
        fi
        umount "$target"
        rmdir "$target"
        snaps "$s" rm "$k"
        wait_removed "$s"
}
# rlrpc ROUND: reflayerd's own Prepare of the image's top layer, one JSON-RPC request in C.
step_rlrpc() {
        local out
        sync -f "$MNT"
        out=$("$PB" prepare "$SOCK" "$RLTOP" "rpc-$1") || die "reflayerd Prepare from $RLTOP failed"
        add reflayer rpc "$(awk '{ print $2 }' <<<"$out")"
        "$PB" remove "$SOCK" "rpc-$1" >/dev/null || die "reflayerd Remove rpc-$1 failed"
        rl cleanup
}

mkfs_loop xfs 16G "$WORK/xfs.img" "$MNT"
tables='[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1'
if ((RL)); then
        SOCK=$WORK/reflayer.sock
        # No warm pool: every Prepare a cold clone, as native's copy is, and no clone built
        # in the background while another snapshotter is timed (`make bench` has the pool).
        daemon_start "$DAEMON" "$CLI" "$MNT/store" "$SOCK" "$WORK/reflayerd.log" \
                --containerd-socket "$WORK/reflayer-containerd.sock" --pool-size 0
        tables+="
[proxy_plugins.reflayer]
  type = \"snapshot\"
  address = \"$WORK/reflayer-containerd.sock\""
fi
containerd_start xfs "$MNT/containerd" '"io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"' "$tables"

# The image, named by --base-name and its ref.name "debian", into each snapshotter.
tar -C "$LAYOUT" -cf "$WORK/debian-oci.tar" .
declare -A TOP BASE
for s in "${SNS[@]}"; do
        note "importing $IMAGE with --snapshotter $s"
        ctr_ images import --base-name "${IMAGE%:*}" --snapshotter "$s" "$WORK/debian-oci.tar" \
                >/dev/null || die "ctr images import --snapshotter $s failed"
        TOP[$s]=$(snaps "$s" ls | awk 'NR > 1 && $3 == "Committed" { print $1 }')
        [[ $(wc -w <<<"${TOP[$s]}") -eq 1 ]] ||
                die "$s: the image's top layer is not one snapshot: '${TOP[$s]}'"
        BASE[$s]=$(backend_count "$s")
done
if ((RL)); then
        RLTOP=$(rl --json ls | grep -o "\"name\":\"[^\"]*/${TOP[reflayer]}\"" | cut -d'"' -f4)
        [[ -n $RLTOP ]] || die "reflayer's store has no snapshot for ${TOP[reflayer]}: $(rl ls)"
fi
STEPS=("${SNS[@]}")
((RL)) && STEPS+=(rlrpc)
for r in $(seq "$RUNS"); do
        k=$(((r - 1) % ${#STEPS[@]}))
        order=("${STEPS[@]:k}" "${STEPS[@]:0:k}")
        for s in "${order[@]}"; do
                if [[ $s == rlrpc ]]; then step_rlrpc "$r"; else step "$s" "$r"; fi
        done
        note "round $r/$RUNS done (order: ${order[*]})"
done

ms() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.1f", v * 1000 }'; }
mib() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.2f MiB", v / 1048576 }'; }
row() {
        local label=$1 f=$2 m=$3 s cells=()
        for s in "${SNS[@]}"; do cells+=("$("$f" "$(med "$s" "$m")")"); done
        printf '%-46s' "$label"
        printf ' %14s' "${cells[@]}"
        printf '\n'
}
num() { echo "$1"; }
echo
echo "== containerd $(containerd --version | awk '{ print $3 }'), Debian minbase image (2 layers)" \
        "on loop XFS (reflink=1); nproc $(nproc); kernel $(uname -r); $(date -u +%Y-%m-%d)"
echo "   reflayerd --pool-size 0 (cold Prepares); times in ms, medians of $RUNS rounds (order rotated each round); load average $LOAD0" \
        "at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
printf '%-46s' ""
printf ' %14s' "${SNS[@]}"
printf '\n'
row "ctr snapshots prepare" ms prepare
row "  ctr version (ctr start-up + 1 call)" ms version
row "  prepare minus ctr version" ms net
((RL)) && printf '%-46s %14s\n' "  reflayerd Prepare alone (JSON-RPC, in C)" "$(ms "$(med reflayer rpc)")"
row "  df growth" mib prepare_df
row "  new data in its own directory" mib prepare_new
row "chown -R 100000:100000 + syncfs" ms chown
row "  df growth" mib chown_df
row "  new data in its own directory" mib chown_new
[[ " ${SNS[*]} " == *" overlayfs "* ]] &&
        printf '%-46s %14s / %s\n' "  overlayfs: files copied up / upper du" \
                "$(med overlayfs chown_files)" "$(mib "$(med overlayfs chown_du)")"
echo "   (new data: \`reflayer du\` bytes_exclusive of the snapshot's own directory, the bind" \
        "source or the overlay upper dir: extents no other file shares; df: used blocks after syncfs)"
