#!/usr/bin/env bash
# Load run of reflayerd: 64 clients issue mixed calls (Stat, List, Prepare, Commit, Remove,
# Usage, Mounts, Diff, Apply) for LOAD_SECONDS (default 300) over the unix socket, on a fresh
# loop XFS (reflink=1) in a private mount namespace. Fails on any unexpected error, or when
# the daemon's open fds or RSS grew; prints calls/s, Stat and Prepare latency, RSS and fds.
# Run as root, from anywhere:   LOAD_SECONDS=300 bash tests/bench/load.sh
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECS=${LOAD_SECONDS:-300}
bench=$top/build/bench/load-bench daemon=$top/build/reflayerd

[[ $(id -u) -eq 0 ]] || { echo "load.sh: run as root" >&2; exit 1; }
[[ -x $bench && -x $daemon ]] || { echo "load.sh: build first: make bench-load" >&2; exit 1; }
if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        REFLAYER_BENCH_NS=1 exec unshare -m --propagation private -- "$BASH" "$0" "$@"
fi

work=$(mktemp -d /var/tmp/reflayer-bench-load.XXXXXX)
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
                umount "$mnt" || umount -l "$mnt" || true
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

# The layer some clients apply: 20 small files and a directory.
mkdir -p "$work/layer/etc/app"
for i in $(seq 20); do seq "$i" 400 > "$work/layer/etc/app/conf$i"; done
tar -C "$work/layer" -cf "$work/layer.tar" etc

"$daemon" --root "$mnt/store" --socket "$sock" --log-level warning 2>"$work/reflayerd.log" &
pid=$!
for i in $(seq 101); do
        [[ -S $sock ]] && break
        if ((i > 100)) || ! kill -0 "$pid" 2>/dev/null; then
                echo "load.sh: reflayerd did not start:" >&2; cat "$work/reflayerd.log" >&2; exit 1
        fi
        sleep 0.1
done

echo "reflayerd load run: XFS loop (reflink=1), nproc $(nproc), kernel $(uname -r), $(date -u +%F)"
failed=0
"$bench" "$sock" "$pid" "$SECS" "$work/layer.tar" || failed=1

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
((rc == 0)) || { echo "load.sh: reflayerd exited with status $rc" >&2; failed=1; }
if [[ -s $work/reflayerd.log ]]; then
        echo "load.sh: reflayerd logged:" >&2
        head -50 "$work/reflayerd.log" >&2
fi
((failed == 0)) || echo "load.sh: FAILED" >&2
((failed == 0))
