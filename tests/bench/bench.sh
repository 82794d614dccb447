#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Issue 7's side-by-side benchmark. On a fresh loop XFS (reflink=1) and then a loop btrfs, for
# a Debian bookworm minbase rootfs and a larger one (build-essential, python3, perl, git):
#
#   - reflayerd Prepare, cold (a plain committed layer) and from the warm pool (a layer
#     labelled reflayer.io/pool=1, reflayerd --pool-size 1), timed around the one request in
#     a C client (prepare-bench.c), so no process start-up is counted; both again with
#     --ephemeral (published without any flush; gone after a reboot);
#   - cp -a --reflink=always of the same tree (and with the syncfs that makes a Prepare
#     durable, the like-for-like figure);
#   - containerd's native snapshotter: `ctr snapshots prepare` against a containerd started
#     here on its own socket, root and state on the same filesystem; also minus the start-up
#     and round trip of ctr itself (`ctr version`, timed in the same round);
#   - an overlayfs mount over the same tree: the mount(2) call, timed in C;
#   - one flush alone (a 4 KiB overwrite of a file and its fdatasync, timed in C, after the
#     same sync and process start as a Prepare): the least a durable Prepare must wait for;
#   - Remove latency (every Remove of a prepared snapshot: p50 and max);
#   - chown -R 100000:100000 of the whole tree (plus a syncfs) on a reflayer snapshot and on
#     an overlayfs mount: time, files copied up, new file data blocks (usage or du exclusive
#     minus metadata), filesystem blocks used; and
#     the reflayer way to shift owners, Prepare with --uid-map/--gid-map;
#   - 50 snapshots of the rootfs: filesystem blocks used (df); new file data (the sum of
#     `reflayer usage` exclusive minus metadata bytes: extents of regular files no other file
#     shares); and the blocks of their own directories and symlinks (usage metadata), each as
#     % of the rootfs's data (once: a size, not a time).
#
# Every time is the median of RUNS runs (default 5); each round runs every tool once, in an
# order rotated each round; `sync -f` before each timed step so no one pays for another's
# writeback; the page cache stays warm. One table per filesystem, with the goals of issue 7.
#
# Run as root: make bench [RUNS=N]    (or: tests/bench/bench.sh CLI DAEMON PREPARE-BENCH)
# FSTYPES="xfs btrfs" and ROOTFSES="minbase large" choose a subset.
set -euo pipefail
BENCH_NAME=bench
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

take_paths CLI:reflayer DAEMON:reflayerd PB:prepare-bench -- "$@"
check_runs 5
FSTYPES=${FSTYPES:-xfs btrfs}
ROOTFSES=${ROOTFSES:-minbase large}
need_root
need_tools containerd:containerd ctr:containerd mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs bc:bc

if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        # Built (once, cached) before the namespace: debootstrap takes minutes, say so here.
        for name in $ROOTFSES; do "$here/../lib/debian-rootfs" "$name" >/dev/null; done
fi
enter_private_ns "$0" "$CLI" "$DAEMON" "$PB"

# --- inside the private mount namespace ---
WORK=$(mktemp -d /var/tmp/reflayer-bench.XXXXXX)
on_exit "rm -rf '$WORK'"
MAP=0:100000:65536
POOL=0
"$DAEMON" --help 2>&1 | grep -q -- '--pool-size' && POOL=1

declare -A S # "FS/ROOTFS/metric" -> samples, space-separated
add() { S[$FS/$NAME/$1]+="$2 "; }
# shellcheck disable=SC2086 # the samples are words
samples() { printf '%s\n' ${S[$FS/$NAME/$1]:-}; }
med() { samples "$1" | median; }
st() { samples "$1" | stats; }
secs() { echo "($2 - $1) / 1000000000" | bc -l; }

rl() { "$CLI" --socket "$SOCK" "$@"; }
ctr_() { ctr -a "$CSOCK" -n bench "$@"; }
ctrs() { ctr_ snapshots --snapshotter native "$@"; }
# df_used: the filesystem's used bytes, once what was deleted is freed: btrfs drops a
# deleted subvolume later, in its cleaner thread (a commit wakes it, subvolume sync waits for
# it), and the blocks it frees count as free only after the next commit.
df_used() {
        if [[ $FS == btrfs ]]; then
                { btrfs filesystem sync "$MNT" && btrfs subvolume sync "$MNT" &&
                        btrfs filesystem sync "$MNT"; } >/dev/null || die "btrfs sync of $MNT failed"
        fi
        sync -f "$MNT"
        df -B1 --output=used "$MNT" | tail -n 1 | tr -d ' '
}
exclusive() { rl --json usage "$1" | grep -o '"exclusive":[0-9]*' | cut -d: -f2; }
metadata() { rl --json usage "$1" | grep -o '"metadata":[0-9]*' | cut -d: -f2; }
# own_data JSON: of a usage (or du --json) object, the file data no other file shares
# (exclusive minus metadata: directories and symlinks are not data, and on btrfs a snapshot
# shares them only until their inode changes, as a chown changes every one).
own_data() {
        local e m
        e=$(grep -o '"\(bytes_\)\?exclusive":[0-9]*' <<<"$1" | cut -d: -f2)
        m=$(grep -o '"\(bytes_\)\?metadata":[0-9]*' <<<"$1" | cut -d: -f2)
        echo $((e - m))
}
# df_settled: df_used once two readings a second apart agree (at most 60 s): what the steps
# before left to be freed in the background (containerd's removals) is freed by then, so
# that it does not come off the next measurement.
df_settled() {
        local a b i
        a=$(df_used)
        for ((i = 0; i < 60; i++)); do
                sleep 1
                b=$(df_used)
                [[ $a == "$b" ]] && break
                a=$b
        done
        echo "$b"
}
# pb_prepare PARENT KEY [maps]: the Prepare's seconds in T, the tree in SRC.
pb_prepare() {
        local out
        out=$("$PB" prepare "$SOCK" "$@") || die "Prepare ${*:2} from $1 failed"
        read -r _ T SRC <<<"$out"
}
# pb_remove KEY...: each Remove's seconds added to the remove samples; then, untimed, wait for
# the trees to be deleted so the next step does not share the machine with that.
pb_remove() {
        local out k t
        out=$("$PB" remove "$SOCK" "$@") || die "Remove $* failed"
        while read -r k t; do add remove "$t"; done <<<"$out"
        rl cleanup
}
# pool_stat FIELD: reflayerd's Status pool.FIELD (ready, building, hits, misses, ...).
pool_stat() {
        rl --json status | grep -o '"pool":{[^}]*}' | grep -o "\"$1\":[0-9]*" | cut -d: -f2
}
# The warm pool refills in the background after a Prepare takes a clone: wait for it so that
# the next step (of any tool) runs on an idle machine and the next warm Prepare finds a clone.
pool_wait() {
        local i
        for i in $(seq 1200); do
                (($(pool_stat ready) >= 1 && $(pool_stat building) == 0)) && return 0
                sleep 0.1
        done
        die "the warm pool of '$1' did not fill within 120 s (Status: $(rl --json status))"
}

# --- one timed step each; $1 is the round ---
# step_cold ROUND [--ephemeral]: samples cold (or cold_eph)
step_cold() {
        local s=cold${2:+_eph}
        sync -f "$MNT"
        pb_prepare "base-$NAME" "$s-$NAME-$1" ${2:-}
        add "$s" "$T"
        pb_remove "$s-$NAME-$1"
}
step_cold_eph() { step_cold "$1" --ephemeral; }
# step_warm ROUND [--ephemeral]: samples warm (or warm_eph) and their misses
step_warm() {
        ((POOL)) || return 0
        local hits s=warm${2:+_eph}
        pool_wait "pool-$NAME"
        sync -f "$MNT"
        hits=$(pool_stat hits)
        pb_prepare "pool-$NAME" "$s-$NAME-$1" ${2:-}
        add "$s" "$T"
        # A miss would be a cold Prepare counted as a warm one: count them in the table.
        add "${s}_miss" $((hits + 1 - $(pool_stat hits)))
        pb_remove "$s-$NAME-$1"
        pool_wait "pool-$NAME"
}
step_warm_eph() { step_warm "$1" --ephemeral; }
step_cp() {
        local t0 t1 t2
        sync -f "$MNT"
        t0=$(now_ns)
        cp -a --reflink=always "$LOWER" "$MNT/cp-dst"
        t1=$(now_ns)
        sync -f "$MNT"
        t2=$(now_ns)
        add cp "$(secs "$t0" "$t1")"
        add cp_sync "$(secs "$t0" "$t2")"
        rm -rf "$MNT/cp-dst"
}
step_ctr() {
        local t0 t1 t2
        sync -f "$MNT"
        t0=$(now_ns)
        ctrs prepare "c-$NAME-$1" "cbase-$NAME"
        t1=$(now_ns)
        ctr_ version >/dev/null
        t2=$(now_ns)
        add ctr "$(secs "$t0" "$t1")"
        add ctr_version "$(secs "$t1" "$t2")"
        add ctr_net "$(echo "($t1 - $t0 - $t2 + $t1) / 1000000000" | bc -l)"
        ctrs rm "c-$NAME-$1"
}
# ovl_mount DIR: a fresh upper and work dir in DIR, merged on DIR/m; the mount's seconds in T.
ovl_mount() {
        mkdir -p "$1/u" "$1/w" "$1/m"
        sync -f "$MNT"
        T=$("$PB" overlay "$LOWER" "$1/u" "$1/w" "$1/m") || die "overlay mount on $1/m failed"
}
ovl_drop() { umount "$1/m" && rm -rf "$1"; }
# The probe file is made (and synced) by load_rootfs: the timed write overwrites a written
# block (on XFS in place; btrfs copies on write, as it does for a Prepare's journal entry).
step_flush() {
        sync -f "$MNT"
        T=$("$PB" flush "$MNT/flush-probe") || die "4 KiB overwrite + fdatasync of $MNT/flush-probe failed"
        add flush "$T"
}
step_ovl() {
        ovl_mount "$MNT/ovl-$NAME-$1"
        add ovl "$T"
        ovl_drop "$MNT/ovl-$NAME-$1"
}
# chown_timed DIR: chown -R (never through a symlink: -h) and the syncfs that writes it out.
chown_timed() {
        local t0 t1
        t0=$(now_ns)
        chown -R -h 100000:100000 "$1"
        sync -f "$MNT"
        t1=$(now_ns)
        secs "$t0" "$t1"
}
step_chown_rl() {
        local k=chown-$NAME-$1 e0 e1 d0 d1
        pb_prepare "base-$NAME" "$k"
        e0=$(own_data "$(rl --json usage "$k")")
        d0=$(df_used)
        add chown_rl "$(chown_timed "$SRC")"
        d1=$(df_used)
        e1=$(own_data "$(rl --json usage "$k")")
        add chown_rl_new $((e1 - e0))
        add chown_rl_df $((d1 - d0))
        add chown_rl_files 0
        pb_remove "$k"
}
step_chown_ovl() {
        local d=$MNT/ovlc-$NAME-$1 d0 d1
        ovl_mount "$d"
        d0=$(df_used)
        add chown_ovl "$(chown_timed "$d/m")"
        d1=$(df_used)
        add chown_ovl_df $((d1 - d0))
        add chown_ovl_files "$(find "$d/u" -type f | wc -l)"
        add chown_ovl_du "$(du -s -B1 "$d/u" | cut -f1)"
        add chown_ovl_new "$(own_data "$("$CLI" du --json "$d/u")")"
        ovl_drop "$d"
}
step_shift() {
        local k=shift-$NAME-$1 d0 d1
        d0=$(df_used)
        pb_prepare "base-$NAME" "$k" --uid-map "$MAP" --gid-map "$MAP"
        d1=$(df_used)
        add shift "$T"
        add shift_df $((d1 - d0))
        add shift_new "$(own_data "$(rl --json usage "$k")")"
        [[ $(stat -c %u:%g "$SRC/etc/passwd") == 100000:100000 ]] ||
                die "Prepare --uid-map $MAP: $SRC/etc/passwd is $(stat -c %u:%g "$SRC/etc/passwd"), not 100000:100000"
        pb_remove "$k"
}
STEPS=(cold warm cp ctr ovl chown_rl chown_ovl shift cold_eph warm_eph flush)

# load_rootfs: the rootfs as reflayer layer base-NAME (and pool-NAME, a clone labelled for
# the pool), as the native snapshotter's committed cbase-NAME, and as the plain tree LOWER
# that cp -a copies and overlayfs mounts.
load_rootfs() {
        local src
        note "$FS/$NAME: loading $ROOTFS (reflayer, containerd, plain copy)"
        pb_prepare "" "import-$NAME"
        cp -a "$ROOTFS/." "$SRC/"
        rl commit "base-$NAME" "import-$NAME"
        if ((POOL)); then
                pb_prepare "base-$NAME" "pimport-$NAME"
                rl commit "pool-$NAME" "pimport-$NAME" --label reflayer.io/pool=1
        fi
        ctrs prepare "cimport-$NAME"
        src=$(ctrs mounts /unused "cimport-$NAME" | awk '{ print $4 }')
        [[ -d $src ]] || die "ctr snapshots mounts cimport-$NAME gave no directory ('$src')"
        cp -a "$ROOTFS/." "$src/"
        ctrs commit "cbase-$NAME" "cimport-$NAME"
        LOWER=$MNT/lower-$NAME
        cp -a "$ROOTFS" "$LOWER"
        "$PB" flush "$MNT/flush-probe" >/dev/null || die "cannot make $MNT/flush-probe"
        sync -f "$MNT"
}

# fifty: 50 Prepares of the layer at once, the blocks they take, their Removes.
fifty() {
        local d0 d1 keys=() k sum=0 meta=0 m
        for k in $(seq 50); do keys+=("s50-$NAME-$k"); done
        rl cleanup
        d0=$(df_settled)
        "$PB" prepare "$SOCK" "base-$NAME" "${keys[@]}" >/dev/null || die "50 Prepares failed"
        d1=$(df_used)
        for k in "${keys[@]}"; do
                m=$(metadata "$k")
                sum=$((sum + $(exclusive "$k") - m))
                meta=$((meta + m))
        done
        add fifty_df $((d1 - d0))
        add fifty_new "$sum"
        add fifty_meta "$meta"
        pb_remove "${keys[@]}"
}

# containerd on this filesystem, for `ctr snapshots`: no CRI, no snapshotter but native.
start_containerd() {
        containerd_start "$FS" "$MNT/containerd" '"io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"'
}

# ms SECONDS; mib BYTES; pct PART WHOLE; ratio A B (A/B); "-" (no samples) stays "-"
ms() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.2f", v * 1000 }'; }
mib() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.1f MiB", v / 1048576 }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f%%", 100 * a / b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

# row LABEL FUNC ARGS...: FUNC ARGS run once per rootfs (NAME set), one cell each.
row() {
        local label=$1 cells=() n
        shift
        for n in $ROOTFSES; do cells+=("$(NAME=$n "$@")"); done
        printf '%-46s' "$label"
        printf ' %24s' "${cells[@]}"
        printf '\n'
}
c_name() { echo "$NAME"; }
c_ms() { ms "$(med "$1")"; }
c_mib() { mib "$(med "$1")"; }
c_us() { awk -v v="$(med "$1")" -v e="${ENTRIES[$NAME]}" 'BEGIN { printf "%.1f", v * 1e6 / e }'; }
c_entries() { echo "${ENTRIES[$NAME]}"; }
c_data() { mib "${DATA[$NAME]}"; }
c_warm() { # c_warm SAMPLES (warm, warm_eph)
        ((POOL)) || { echo "n/a (no pool yet)"; return; }
        local miss; miss=$(samples "$1_miss" | awk '{ n += $1 } END { print n + 0 }')
        if ((miss)); then echo "$(ms "$(med "$1")") ($miss misses)"; else ms "$(med "$1")"; fi
}
c_remove() { local m mx; read -r m _ mx < <(st remove); echo "$(ms "$m") / $(ms "$mx")"; }
c_pair() { echo "$("$1" "$2") / $("$1" "$3")"; }
c_num() { med "$1"; }
c_fifty() { echo "$(mib "$(med "$1")") ($(pct "$(med "$1")" "${DATA[$NAME]}"))"; }
# Goals: "value ok" or "value MISS".
g_faster() { # g_faster SLOW FAST: SLOW/FAST >= 2
        local v; v=$(ratio "$(med "$1")" "$(med "$2")")
        awk -v v="$v" 'BEGIN { if (v == "-") print "-"; else printf "%sx %s", v, (v >= 2 ? "ok" : "MISS") }'
}
g_warm() { # g_warm SAMPLES
        ((POOL)) || { echo "n/a (no pool yet)"; return; }
        awk -v v="$(med "$1")" 'BEGIN { printf "%.2f ms %s", v * 1000, (v < 0.005 ? "ok" : "MISS") }'
}
g_warm_ovl() { # g_warm_ovl SAMPLES
        ((POOL)) || { echo "n/a (no pool yet)"; return; }
        awk -v v="$(ratio "$(med "$1")" "$(med ovl)")" 'BEGIN { printf "%sx %s", v, (v <= 3 ? "ok" : "MISS") }'
}
g_remove() {
        local mx; read -r _ _ mx < <(st remove)
        awk -v v="$mx" 'BEGIN { printf "max %.2f ms %s", v * 1000, (v < 0.005 ? "ok" : "MISS") }'
}
g_chown() {
        awk -v v="$(med chown_rl_new)" 'BEGIN { printf "%d B %s", v, (v == 0 ? "ok" : "MISS") }'
}
g_fifty() {
        awk -v v="$(med fifty_new)" -v d="${DATA[$NAME]}" 'BEGIN {
                printf "%.2f%% %s", 100 * v / d, (100 * v / d < 2 ? "ok" : "MISS") }'
}

print_table() {
        echo
        echo "== $FSDESC (loop, 16 GiB); nproc $(nproc); kernel $(uname -r); $(date -u +%Y-%m-%d)"
        echo "   times in ms, medians of $RUNS alternating runs (sizes: one run);" \
                "load average $LOAD0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
        row "" c_name
        row "rootfs: entries" c_entries
        row "rootfs: data (usage of the layer)" c_data
        row "reflayer Prepare, cold (pool off)" c_ms cold
        row "reflayer Prepare, warm pool" c_warm warm
        row "reflayer Prepare --ephemeral, cold" c_ms cold_eph
        row "reflayer Prepare --ephemeral, warm pool" c_warm warm_eph
        row "cp -a --reflink=always" c_ms cp
        row "cp -a --reflink=always, + syncfs" c_ms cp_sync
        row "ctr snapshots prepare (native)" c_ms ctr
        row "  ctr version (ctr start-up + 1 call)" c_ms ctr_version
        row "  ctr prepare minus ctr version" c_ms ctr_net
        row "overlayfs mount(2)" c_ms ovl
        row "4 KiB overwrite + fdatasync (one flush)" c_ms flush
        row "reflayer Remove, p50 / max" c_remove
        row "us/entry: Prepare cold / cp -a" c_pair c_us cold cp
        row "chown -R + syncfs: reflayer snapshot" c_ms chown_rl
        row "chown -R + syncfs: overlayfs" c_ms chown_ovl
        row "  files copied up: reflayer / overlayfs" c_pair c_num chown_rl_files chown_ovl_files
        row "  du of the overlayfs upper dir" c_mib chown_ovl_du
        row "  new data: reflayer / overlayfs upper" c_pair c_mib chown_rl_new chown_ovl_new
        row "  df growth: reflayer / overlayfs" c_pair c_mib chown_rl_df chown_ovl_df
        row "reflayer Prepare --uid-map --gid-map" c_ms shift
        row "  new data / df growth" c_pair c_mib shift_new shift_df
        row "50 snapshots: new file data (usage)" c_fifty fifty_new
        row "50 snapshots: own directory/symlink blocks" c_fifty fifty_meta
        row "50 snapshots: df growth" c_fifty fifty_df
        echo "goals (issue 7):"
        row "cold Prepare >= 2x faster than cp -a" g_faster cp cold
        row "  (cp -a + syncfs, like for like)" g_faster cp_sync cold
        row "cold Prepare >= 2x faster than ctr" g_faster ctr cold
        row "  (ctr minus ctr version)" g_faster ctr_net cold
        row "warm-pool Prepare p50 < 5 ms" g_warm warm
        row "  (--ephemeral)" g_warm warm_eph
        row "warm-pool Prepare <= 3x overlayfs mount" g_warm_ovl warm
        row "  (--ephemeral)" g_warm_ovl warm_eph
        row "  (one flush alone: a durable one's floor)" g_warm_ovl flush
        row "Remove < 5 ms" g_remove
        row "chown of the rootfs: 0 new data (reflayer)" g_chown
        row "50 snapshots: new file data < 2% of the rootfs" g_fifty
}

declare -A ENTRIES DATA
for FS in $FSTYPES; do
        MNT=$WORK/$FS
        case $FS in
        xfs) FSDESC="XFS, reflink=1" ;;
        btrfs) FSDESC="btrfs, max_inline=0" ;;
        *) die "FSTYPES: unknown filesystem '$FS' (xfs or btrfs)" ;;
        esac
        mark=${#BENCH_CLEANUPS[@]}
        LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
        mkfs_loop "$FS" 16G "$WORK/$FS.img" "$MNT"
        SOCK=$WORK/reflayer-$FS.sock
        pool_args=()
        # Only the layer labelled reflayer.io/pool is pooled (--pool-after 0): the cold
        # Prepares of the other one must stay cold however often they run.
        ((POOL)) && pool_args=(--pool-size 1 --pool-after 0)
        daemon_start "$DAEMON" "$CLI" "$MNT/store" "$SOCK" "$WORK/reflayerd-$FS.log" "${pool_args[@]}"
        start_containerd
        for NAME in $ROOTFSES; do
                ROOTFS=$("$here/../lib/debian-rootfs" "$NAME")
                ENTRIES[$NAME]=$(find "$ROOTFS" | wc -l)
                load_rootfs
                DATA[$NAME]=$(rl --json usage "base-$NAME" | grep -o '"size":[0-9]*' | cut -d: -f2)
                for r in $(seq "$RUNS"); do
                        k=$(((r - 1) % ${#STEPS[@]}))
                        order=("${STEPS[@]:k}" "${STEPS[@]:0:k}")
                        for s in "${order[@]}"; do "step_$s" "$r"; done
                        note "$FS/$NAME: round $r/$RUNS done (order: ${order[*]})"
                done
                fifty
                note "$FS/$NAME: 50 snapshots done"
        done
        print_table
        # The next filesystem starts from nothing: stop what runs on this one, unmount it.
        cleanups_since "$mark"
done
