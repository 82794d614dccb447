#!/usr/bin/env bash
# Store benchmark: 20 snapshots of a Debian minbase rootfs on a fresh loop XFS (reflink=1),
# their reflink-aware usage against du and df, prepare latency, and the time to open a store
# of 1,000 snapshots. Run as root: make bench-store   (N=20 snapshots by default)
#   (or: tests/bench/store.sh PATH-TO-store-bench)
set -euo pipefail
BENCH_NAME=bench-store
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

take_paths BENCH:store-bench -- "$@"
N=${N:-20}
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$N'"
need_root
if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        "$here/../lib/debian-rootfs" minbase >/dev/null # built once, before the namespace
fi
enter_private_ns "$0" "$BENCH"

ROOTFS=$("$here/../lib/debian-rootfs" minbase)
WORK=$(mktemp -d /var/tmp/reflayer-bench-store.XXXXXX)
on_exit "rm -rf '$WORK'"
mkfs_loop xfs 8G "$WORK/xfs.img" "$WORK/mnt"
echo "store benchmark on XFS (reflink=1), nproc $(nproc), kernel $(uname -r)"
"$BENCH" "$WORK/mnt/store" "$ROOTFS" "$N"
