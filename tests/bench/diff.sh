#!/usr/bin/env bash
# Diff benchmark: a Debian minbase rootfs on a fresh loop XFS (reflink=1), a reflink clone of
# it, and rl_tree_diff of the unchanged clone against reading both trees whole (a C loop and
# GNU diff -rq), median of RUNS=5 alternating runs, warm and cold (remounted) page cache.
# Run as root: make bench-diff
set -euo pipefail
bench=$(realpath -e "$1")
RUNS=${RUNS:-5}
[[ $(id -u) -eq 0 ]] || { echo "bench-diff: run as root" >&2; exit 1; }
if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        ROOTFS=$("$(dirname "$0")/../lib/debian-rootfs")
        REFLAYER_BENCH_NS=1 ROOTFS=$ROOTFS exec unshare -m --propagation private -- \
                "$BASH" "$0" "$bench"
fi
work=$(mktemp -d /var/tmp/reflayer-bench-diff.XXXXXX)
trap 'rm -rf "$work"' EXIT
truncate -s 4G "$work/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$work/xfs.img"
mkdir "$work/mnt"
# Direct I/O: the image's pages stay out of the page cache, so a remount means a cold cache.
dev=$(losetup --find --show --direct-io=on "$work/xfs.img")
trap 'cd /; umount -l "$work/mnt" 2>/dev/null || true; losetup -d "$dev" 2>/dev/null || true; rm -rf "$work"' EXIT
mount "$dev" "$work/mnt"
echo "diff benchmark on XFS (reflink=1), nproc $(nproc), kernel $(uname -r), rootfs $ROOTFS"
"$bench" "$work/mnt" "$ROOTFS" "$RUNS" "$dev"
