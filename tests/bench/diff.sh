#!/usr/bin/env bash
# Diff benchmark: a Debian minbase rootfs on a fresh loop XFS (reflink=1), a reflink clone of
# it, and rl_tree_diff of the unchanged clone against reading both trees whole (a C loop and
# GNU diff -rq), median of RUNS=5 alternating runs, warm and cold (remounted) page cache.
# Run as root: make bench-diff   (or: tests/bench/diff.sh PATH-TO-diff-bench)
set -euo pipefail
BENCH_NAME=bench-diff
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

take_paths BENCH:diff-bench -- "$@"
check_runs 5
need_root
need_tools mkfs.xfs:xfsprogs losetup:mount
if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        "$here/../lib/debian-rootfs" minbase >/dev/null # built once, before the namespace
fi
enter_private_ns "$0" "$BENCH"

ROOTFS=$("$here/../lib/debian-rootfs" minbase)
WORK=$(mktemp -d /var/tmp/reflayer-bench-diff.XXXXXX)
on_exit "rm -rf '$WORK'"
truncate -s 4G "$WORK/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$WORK/xfs.img" || die "mkfs.xfs failed"
mkdir "$WORK/mnt"
# Direct I/O: the image's pages stay out of the page cache, so a remount means a cold cache
# (the bench remounts the device itself, hence no mkfs_loop here).
dev=$(losetup --find --show --direct-io=on "$WORK/xfs.img") || die "losetup failed"
on_exit "losetup -d '$dev'"
mount "$dev" "$WORK/mnt" || die "cannot mount $dev"
on_exit "umount '$WORK/mnt' || umount -l '$WORK/mnt'"
echo "diff benchmark on XFS (reflink=1), nproc $(nproc), kernel $(uname -r), rootfs $ROOTFS"
"$BENCH" "$WORK/mnt" "$ROOTFS" "$RUNS" "$dev"
