#!/usr/bin/env bash
# Store benchmark: 20 snapshots of a Debian minbase rootfs on a fresh loop XFS (reflink=1),
# their reflink-aware usage against du and df, prepare latency, and the time to open a store
# of 1,000 snapshots. Run as root: make bench-store   (N=20 snapshots by default)
set -euo pipefail
bench=$(realpath -e "$1")
N=${N:-20}
ROOTFS=/var/tmp/reflayer-cache/rootfs-minbase
[[ $(id -u) -eq 0 ]] || { echo "bench-store: run as root" >&2; exit 1; }
if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        if [[ ! -d $ROOTFS ]]; then
                command -v debootstrap >/dev/null ||
                        { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
                mkdir -p "${ROOTFS%/*}"
                debootstrap --variant=minbase bookworm "$ROOTFS.tmp.$$" >&2
                mv -T "$ROOTFS.tmp.$$" "$ROOTFS"
        fi
        REFLAYER_BENCH_NS=1 exec unshare -m --propagation private -- "$BASH" "$0" "$bench"
fi
work=$(mktemp -d /var/tmp/reflayer-bench-store.XXXXXX)
trap 'cd /; umount -l "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
truncate -s 8G "$work/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$work/xfs.img"
mkdir "$work/mnt"
mount -o loop "$work/xfs.img" "$work/mnt"
echo "store benchmark on XFS (reflink=1), nproc $(nproc), kernel $(uname -r)"
"$bench" "$work/mnt/store" "$ROOTFS" "$N"
