#!/usr/bin/env bash
# RPC benchmark of reflayerd: Stat of a committed layer over 1 and 16 connections (5 s each),
# and Stats on a second connection while a Prepare of that layer (a Debian minbase rootfs)
# runs on the first. Each measurement 3 times, medians printed. On a fresh loop XFS
# (reflink=1) in a private mount namespace. Run as root, from anywhere:
#   bash tests/bench/rpc.sh
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROOTFS=/var/tmp/reflayer-cache/rootfs-minbase
SECS=5 RUNS=3
bench=$top/build/bench/rpc-bench src=$top/tests/bench/rpc-bench.c
daemon=$top/build/reflayerd cli=$top/build/reflayer

[[ $(id -u) -eq 0 ]] || { echo "rpc.sh: run as root" >&2; exit 1; }
if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        [[ -x $daemon && -x $cli && -f $top/build/libreflayer-client.a ]] ||
                { echo "rpc.sh: build first: make -s all" >&2; exit 1; }
        [[ -d $ROOTFS ]] ||
                { echo "rpc.sh: no $ROOTFS (make bench-store creates it)" >&2; exit 1; }
        if [[ ! -x $bench || $src -nt $bench ]]; then
                mkdir -p "${bench%/*}"
                # shellcheck disable=SC2046 # pkg-config prints several words
                cc -O2 -Wall -I"$top/include" -I"$top/driver" -o "$bench" "$src" \
                        "$top/build/libreflayer-client.a" $(pkg-config --libs jansson) -pthread
        fi
        REFLAYER_BENCH_NS=1 exec unshare -m --propagation private -- "$BASH" "$0" "$@"
fi

work=$(mktemp -d /var/tmp/reflayer-bench-rpc.XXXXXX)
mnt=$work/mnt sock=$work/r.sock pid=
cleanup() {
        local rc=$?
        cd /
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null || true
                wait "$pid" 2>/dev/null || true
        fi
        if mountpoint -q "$mnt" 2>/dev/null; then
                local dev
                dev=$(findmnt -n -o SOURCE "$mnt" || true)
                umount "$mnt" || umount -l "$mnt" || true
                if [[ $dev == /dev/loop* ]]; then losetup -d "$dev" 2>/dev/null || true; fi
        fi
        rm -rf "$work"
        exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

truncate -s 8G "$work/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$work/xfs.img"
mkdir "$mnt"
mount -o loop "$work/xfs.img" "$mnt"

"$daemon" --root "$mnt/store" --socket "$sock" --log-level warning 2>"$work/reflayerd.log" &
pid=$!
rl() { "$cli" --socket "$sock" "$@"; }
for i in $(seq 101); do
        rl version 2>/dev/null | grep -q '^reflayerd' && break
        if ((i > 100)) || ! kill -0 "$pid" 2>/dev/null; then
                echo "rpc.sh: reflayerd did not start:" >&2; cat "$work/reflayerd.log" >&2; exit 1
        fi
        sleep 0.1
done

# The layer: the rootfs copied into an active snapshot, then committed.
read -r _ _ _ source _ < <(rl prepare import)
[[ $source == /* && -d $source ]] || { echo "rpc.sh: prepare import gave '$source'" >&2; exit 1; }
cp -a "$ROOTFS/." "$source/"
rl commit base import
sync -f "$mnt" # else the first Prepare's syncfs pays for writing back the copy
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

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
((rc == 0)) || { echo "rpc.sh: reflayerd exited with status $rc" >&2; failed=1; }
if [[ -s $work/reflayerd.log ]]; then
        echo "rpc.sh: reflayerd logged:" >&2
        cat "$work/reflayerd.log" >&2
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
