#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Warm-pool Prepare through the store API (pool-bench.c), on a fresh loop filesystem: the
# focused measurement of the pooled publish path, seconds instead of `make bench`'s minutes.
#
# Run as root: make bench-pool   (or: tests/bench/pool.sh PATH-TO-pool-bench)
#   RUNS=N (default 11), FSTYPE=xfs|btrfs (default xfs), ROOTFS=minbase|large (default
#   minbase), STRACE=FILE: run under strace -f -T, its output in FILE (the Prepares are
#   between faccessat("pool-bench:begin") and faccessat("pool-bench:end")).
set -euo pipefail
BENCH_NAME=bench-pool
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

take_paths PB:pool-bench -- "$@"
check_runs 11
FSTYPE=${FSTYPE:-xfs}
ROOTFS=${ROOTFS:-minbase}
need_root
if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        "$here/../lib/debian-rootfs" "$ROOTFS" >/dev/null
fi
enter_private_ns "$0" "$PB"

WORK=$(mktemp -d /var/tmp/reflayer-bench-pool.XXXXXX)
on_exit "rm -rf '$WORK'"
mkfs_loop "$FSTYPE" 16G "$WORK/fs.img" "$WORK/mnt"
tree=$("$here/../lib/debian-rootfs" "$ROOTFS")
echo "warm-pool Prepare, store API, $FSTYPE (loop), rootfs $ROOTFS; nproc $(nproc); kernel $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ -n ${STRACE:-} ]]; then
        strace -f -T -tt -o "$STRACE" "$PB" "$WORK/mnt/store" "$tree" "$RUNS"
else
        "$PB" "$WORK/mnt/store" "$tree" "$RUNS"
fi
