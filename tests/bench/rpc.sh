#!/usr/bin/env bash
# RPC benchmark of reflayerd: Stat of a committed layer over 1 and 16 connections (5 s each),
# and Stats on a second connection while a Prepare of that layer (a Debian minbase rootfs)
# runs on the first. Each measurement 3 times, medians printed. On a fresh loop XFS
# (reflink=1) in a private mount namespace. Run as root, from anywhere:
#   bash tests/bench/rpc.sh
set -euo pipefail
BENCH_NAME=bench-rpc
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

top=$(cd "$here/../.." && pwd)
SECS=5 RUNS=3
bench=$top/build/bench/rpc-bench src=$top/tests/bench/rpc-bench.c
daemon=$top/build/reflayerd cli=$top/build/reflayer
need_root
if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        [[ -x $daemon && -x $cli && -f $top/build/libreflayer-client.a ]] ||
                die "build first: make -s all"
        "$here/../lib/debian-rootfs" minbase >/dev/null # built once, before the namespace
        if [[ ! -x $bench || $src -nt $bench ]]; then
                mkdir -p "${bench%/*}"
                # shellcheck disable=SC2046 # pkg-config prints several words
                cc -O2 -Wall -I"$top/include" -I"$top/driver" -o "$bench" "$src" \
                        "$top/build/libreflayer-client.a" $(pkg-config --libs jansson) -pthread ||
                        die "cannot build $bench"
        fi
fi
enter_private_ns "$0" "$@"

ROOTFS=$("$here/../lib/debian-rootfs" minbase)
work=$(mktemp -d /var/tmp/reflayer-bench-rpc.XXXXXX)
on_exit "rm -rf '$work'"
mkfs_loop xfs 8G "$work/xfs.img" "$work/mnt"
sock=$work/r.sock log=$work/reflayerd.log
daemon_start "$daemon" "$cli" "$work/mnt/store" "$sock" "$log"
rl() { "$cli" --socket "$sock" "$@"; }

# The layer: the rootfs copied into an active snapshot, then committed.
read -r _ _ _ source _ < <(rl prepare import)
[[ $source == /* && -d $source ]] || die "prepare import gave '$source'"
cp -a "$ROOTFS/." "$source/"
rl commit base import
sync -f "$work/mnt" # else the first Prepare's syncfs pays for writing back the copy
files=$(find "$ROOTFS" | wc -l)

# Each run prints "NAME k=v ..." lines; collect every value as "NAME.k v".
vals=$work/vals failed=0
collect() { awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); print $1 "." kv[1], kv[2] } }'; }
for r in $(seq "$RUNS"); do
        out=$("$bench" "$sock" base "$SECS") || failed=1
        printf 'run %d: %s\n' "$r" "$out" | sed '2,$s/^/       /' >&2
        collect <<<"$out" >>"$vals"
        out=$("$bench" "$sock" --during-prepare base "ctr$r") || failed=1
        printf 'run %d: %s\n' "$r" "$out" >&2
        collect <<<"$out" >>"$vals"
done
med() { awk -v k="$1" '$1 == k { print $2 }' "$vals" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'; }

daemon_stop "$DAEMON_PID" "$log" || failed=1
if [[ -s $log ]]; then
        note "reflayerd logged:"
        cat "$log" >&2
fi

echo "reflayerd RPC benchmark: XFS loop (reflink=1), nproc $(nproc), kernel $(uname -r)"
echo "Stat of a committed layer; Prepare clones it (Debian minbase, $files files)."
echo "Median of $RUNS runs; Stat runs last ${SECS} s each."
echo
printf '%-34s %10s %9s %9s %9s\n' "" "calls/s" "p50 us" "p99 us" "max us"
for m in stat-1:"Stat, 1 connection" stat-16:"Stat, 16 connections (total)"; do
        printf '%-34s %10s %9s %9s %9s\n' "${m#*:}" "$(med "${m%%:*}.rps")" \
                "$(med "${m%%:*}.p50_us")" "$(med "${m%%:*}.p99_us")" "-"
done
printf '%-34s %10s %9s %9s %9s\n' "Stat during a Prepare, 2nd conn." "-" \
        "$(med during-prepare.p50_us)" "$(med during-prepare.p99_us)" "$(med during-prepare.max_us)"
echo
echo "Prepare of the layer: $(med during-prepare.prepare_s) s;" \
        "Stats answered meanwhile: $(med during-prepare.ok)"
fails=$(awk '$1 ~ /\.fail$/ { n += $2 } END { print n + 0 }' "$vals")
((fails == 0)) || echo "FAILED calls: $fails (see above)"
((failed == 0 && fails == 0))
