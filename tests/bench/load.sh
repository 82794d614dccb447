#!/usr/bin/env bash
# Load run of reflayerd: 64 clients issue mixed calls (Stat, List, Prepare, Commit, Remove,
# Usage, Mounts, Diff, Apply) for LOAD_SECONDS (default 300) over the unix socket, on a fresh
# loop XFS (reflink=1) in a private mount namespace. Fails on any unexpected error, or when
# the daemon's open fds or RSS grew; prints calls/s, Stat and Prepare latency, RSS and fds.
# Run as root, from anywhere:   LOAD_SECONDS=300 bash tests/bench/load.sh
set -euo pipefail
BENCH_NAME=bench-load
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

top=$(cd "$here/../.." && pwd)
SECS=${LOAD_SECONDS:-300}
[[ $SECS =~ ^[1-9][0-9]*$ ]] || die "LOAD_SECONDS must be a positive integer, got '$SECS'"
bench=$top/build/bench/load-bench daemon=$top/build/reflayerd cli=$top/build/reflayer
need_root
[[ -x $bench && -x $daemon && -x $cli ]] || die "build first: make bench-load"
enter_private_ns "$0" "$@"

work=$(mktemp -d /var/tmp/reflayer-bench-load.XXXXXX)
on_exit "rm -rf '$work'"
mkfs_loop xfs 8G "$work/xfs.img" "$work/mnt"

# The layer some clients apply: 20 small files and a directory.
mkdir -p "$work/layer/etc/app"
for i in $(seq 20); do seq "$i" 400 > "$work/layer/etc/app/conf$i"; done
tar -C "$work/layer" -cf "$work/layer.tar" etc

log=$work/reflayerd.log
daemon_start "$daemon" "$cli" "$work/mnt/store" "$work/r.sock" "$log"

echo "reflayerd load run: XFS loop (reflink=1), nproc $(nproc), kernel $(uname -r), $(date -u +%F)"
failed=0
"$bench" "$work/r.sock" "$DAEMON_PID" "$SECS" "$work/layer.tar" || failed=1
daemon_stop "$DAEMON_PID" "$log" || failed=1
if [[ -s $log ]]; then
        note "reflayerd logged:"
        head -50 "$log" >&2
fi
((failed == 0)) || note "FAILED"
((failed == 0))
