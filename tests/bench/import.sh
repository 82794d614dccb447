#!/usr/bin/env bash
# Import benchmark: a Debian-sized OCI image (tests/lib/oci-fixture debian: a minbase rootfs
# as one gzip layer plus a small one, built with umoci and cached) imported by
# `reflayer import` into reflayerd's store on a fresh loop XFS, side by side with umoci's own
# unpack and a plain `tar -xzf` of the same blobs onto the same filesystem, each followed by
# a syncfs as reflayer's import does before it publishes a layer. Each tool runs
# RUNS times (default 5), alternating; the table shows medians. Run as root: make bench-import
set -euo pipefail
BENCH_NAME=bench-import
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

take_paths cli:reflayer daemon:reflayerd -- "$@"
check_runs 5
need_root
need_tools umoci:umoci bc:bc python3:python3
cache=/var/tmp/reflayer-cache/oci-debian
if [[ -z ${REFLAYER_BENCH_NS:-} && ! -d $cache/layout ]]; then
        note "building the Debian OCI image once (umoci; cached in $cache)"
        rm -rf "$cache.tmp"
        mkdir -p "$cache.tmp"
        "$here/../lib/oci-fixture" debian "$cache.tmp" >/dev/null || die "oci-fixture failed"
        mv -T "$cache.tmp" "$cache"
fi
enter_private_ns "$0" "$cli" "$daemon"

WORK=$(mktemp -d /var/tmp/reflayer-bench-import.XXXXXX)
on_exit "rm -rf '$WORK'"
mkfs_loop xfs 8G "$WORK/xfs.img" "$WORK/mnt"
sock=$WORK/reflayer.sock
daemon_start "$daemon" "$cli" "$WORK/mnt/store" "$sock" "$WORK/reflayerd.log"
R=("$cli" --socket "$sock")
layout=$cache/layout
blobs=$(python3 - "$layout" <<'PY'
import json, sys
d = sys.argv[1]
idx = json.load(open(d + "/index.json"))
m = json.load(open(d + "/blobs/sha256/" + idx["manifests"][0]["digest"][7:]))
print(" ".join(d + "/blobs/sha256/" + l["digest"][7:] for l in m["layers"]))
PY
)
entries=$(find "$cache/ref/rootfs" | wc -l)
size=$(du -sh --apparent-size "$cache/ref/rootfs" | cut -f1)

now() { date +%s.%N; }
declare -a t_import t_umoci t_tar
for i in $(seq "$RUNS"); do
        sync; echo 3 >/proc/sys/vm/drop_caches
        s=$(now); "${R[@]}" import "$layout" >/dev/null; e=$(now)
        t_import+=("$(echo "$e - $s" | bc)")
        for k in $("${R[@]}" ls | awk 'NR>1 {print $1}' | tac); do "${R[@]}" rm "$k"; done
        "${R[@]}" cleanup

        sync; echo 3 >/proc/sys/vm/drop_caches
        s=$(now); umoci unpack --image "$layout:debian" "$WORK/mnt/u" >/dev/null; sync -f "$WORK/mnt"; e=$(now)
        t_umoci+=("$(echo "$e - $s" | bc)")
        rm -rf "$WORK/mnt/u"

        sync; echo 3 >/proc/sys/vm/drop_caches
        mkdir "$WORK/mnt/t"
        s=$(now); for b in $blobs; do tar --xattrs --xattrs-include='*' -C "$WORK/mnt/t" -xzf "$b"; done; sync -f "$WORK/mnt"; e=$(now)
        t_tar+=("$(echo "$e - $s" | bc)")
        rm -rf "$WORK/mnt/t"
done
mi=$(printf '%s\n' "${t_import[@]}" | median)
mu=$(printf '%s\n' "${t_umoci[@]}" | median)
mt=$(printf '%s\n' "${t_tar[@]}" | median)
echo "import of a Debian minbase image ($entries entries, $size, 2 gzip layers) on XFS (reflink=1), nproc $(nproc), $RUNS runs, cold cache, medians:"
printf '  %-34s %8.3f s\n' "reflayer import (digests checked)" "$mi" \
        "umoci unpack + sync" "$mu" "tar -xzf of the layer blobs + sync" "$mt"
printf '  reflayer import vs umoci unpack: %.2fx faster; vs tar -xzf: %.2fx\n' \
        "$(echo "$mu / $mi" | bc -l)" "$(echo "$mt / $mi" | bc -l)"
