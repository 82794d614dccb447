#!/usr/bin/env bash
# Import benchmark: a Debian-sized OCI image (tests/lib/oci-fixture debian: a minbase rootfs
# as one gzip layer plus a small one, built with umoci and cached) imported by
# `reflayer import` into reflayerd's store on a fresh loop XFS, side by side with umoci's own
# unpack and a plain `tar -xzf` of the same blobs onto the same filesystem, each followed by
# a syncfs as reflayer's import does before it publishes a layer. Each tool runs
# RUNS times (default 5), alternating; the table shows medians. Run as root: make bench-import
set -euo pipefail
cli=$(realpath -e "$1")
daemon=$(realpath -e "$2")
RUNS=${RUNS:-5}
here=$(cd "$(dirname "$0")" && pwd)
cache=/var/tmp/reflayer-cache/oci-debian
[[ $(id -u) -eq 0 ]] || { echo "bench-import: run as root" >&2; exit 1; }
if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        if [[ ! -d $cache/layout ]]; then
                echo "== building the Debian OCI image once (umoci; cached in $cache)" >&2
                rm -rf "$cache.tmp"
                mkdir -p "$cache.tmp"
                "$here/../lib/oci-fixture" debian "$cache.tmp" >/dev/null
                mv -T "$cache.tmp" "$cache"
        fi
        REFLAYER_BENCH_NS=1 exec unshare -m --propagation private -- "$BASH" "$0" "$@"
fi
work=$(mktemp -d /var/tmp/reflayer-bench-import.XXXXXX)
trap 'kill $dpid 2>/dev/null; wait 2>/dev/null; cd /; umount -l "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
truncate -s 8G "$work/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$work/xfs.img"
mkdir "$work/mnt"
mount -o loop "$work/xfs.img" "$work/mnt"
sock=$work/reflayer.sock
"$daemon" --root "$work/mnt/store" --socket "$sock" --log-level warning &
dpid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
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
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -a t_import t_umoci t_tar
for i in $(seq "$RUNS"); do
        sync; echo 3 >/proc/sys/vm/drop_caches
        s=$(now); "${R[@]}" import "$layout" >/dev/null; e=$(now)
        t_import+=("$(echo "$e - $s" | bc)")
        for k in $("${R[@]}" ls | awk 'NR>1 {print $1}' | tac); do "${R[@]}" rm "$k"; done
        "${R[@]}" cleanup

        sync; echo 3 >/proc/sys/vm/drop_caches
        s=$(now); umoci unpack --image "$layout:debian" "$work/mnt/u" >/dev/null; sync -f "$work/mnt"; e=$(now)
        t_umoci+=("$(echo "$e - $s" | bc)")
        rm -rf "$work/mnt/u"

        sync; echo 3 >/proc/sys/vm/drop_caches
        mkdir "$work/mnt/t"
        s=$(now); for b in $blobs; do tar --xattrs --xattrs-include='*' -C "$work/mnt/t" -xzf "$b"; done; sync -f "$work/mnt"; e=$(now)
        t_tar+=("$(echo "$e - $s" | bc)")
        rm -rf "$work/mnt/t"
done
mi=$(printf '%s\n' "${t_import[@]}" | median)
mu=$(printf '%s\n' "${t_umoci[@]}" | median)
mt=$(printf '%s\n' "${t_tar[@]}" | median)
echo "import of a Debian minbase image ($entries entries, $size, 2 gzip layers) on XFS (reflink=1), nproc $(nproc), $RUNS runs, cold cache, medians:"
printf '  %-34s %8.3f s\n' "reflayer import (digests checked)" "$mi" \
        "umoci unpack + sync" "$mu" "tar -xzf of the layer blobs + sync" "$mt"
printf '  reflayer import vs umoci unpack: %.2fx faster; vs tar -xzf: %.2fx\n' \
        "$(echo "$mu / $mi" | bc -l)" "$(echo "$mt / $mi" | bc -l)"
