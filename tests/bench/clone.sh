#!/usr/bin/env bash
# Benchmark: `reflayer clone` (default jobs and --jobs 1) against `cp -a --reflink=always`,
# replicating a Debian bookworm minbase rootfs on a fresh reflink-enabled XFS (a loop-mounted
# sparse image inside a private mount namespace). Rounds alternate the three tools in rotating
# order; the outputs are removed and `sync` runs before each timed run (page cache stays warm).
# Prints median/min/max wall time, us per entry and cp's median over each reflayer median
# (>1: reflayer is faster), then checks reflayer's tree matches what `cp -a` makes.
#
# Run as root:  make bench-clone            (or: tests/bench/clone.sh build/reflayer)
#               RUNS=N make bench-clone     rounds, default 5
# The rootfs is built once with debootstrap and cached in /var/tmp/reflayer-cache.
set -euo pipefail

die() { echo "bench-clone: error: $*" >&2; exit 1; }
[[ $# -eq 1 ]] || die "usage: $0 PATH-TO-reflayer-CLI"
RUNS=${RUNS:-5}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, mount)"
CLI=$(realpath -e -- "$1" 2>/dev/null) || die "CLI '$1' not found"
[[ -x $CLI ]] || die "CLI '$CLI' is not executable"
CACHE=/var/tmp/reflayer-cache
ROOTFS=$CACHE/rootfs-minbase

if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        if [[ ! -d $ROOTFS ]]; then
                if ! command -v debootstrap >/dev/null; then
                        apt-get update -qq || die "apt-get update failed"
                        apt-get install -y debootstrap || die "cannot install debootstrap"
                fi
                mkdir -p "$CACHE"
                tmp=$ROOTFS.tmp.$$
                trap 'rm -rf "$tmp"' EXIT
                echo "bench-clone: building $ROOTFS with debootstrap (once)..." >&2
                debootstrap --variant=minbase bookworm "$tmp" >&2 || die "debootstrap failed"
                mv -T "$tmp" "$ROOTFS"
                trap - EXIT
        fi
        REFLAYER_BENCH_NS=1 exec unshare -m --propagation private -- "$BASH" "$0" "$CLI"
fi

# --- inside the private mount namespace ---
WORK=$(mktemp -d /var/tmp/reflayer-bench.XXXXXX)
MNT=$WORK/mnt
cleanup() {
        cd /
        if mountpoint -q "$MNT"; then
                umount "$MNT" || { echo "bench-clone: cannot unmount $MNT; left $WORK" >&2; return; }
        fi
        rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

truncate -s 4G "$WORK/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$WORK/xfs.img" || die "mkfs.xfs failed"
mkdir "$MNT"
mount -o loop "$WORK/xfs.img" "$MNT" || die "cannot loop-mount the XFS image"
cd "$MNT"
cp -a "$ROOTFS" src || die "cannot copy the cached rootfs into the image"

probe=$(find src/usr/bin -type f -size +8k -print -quit)
[[ -n $probe ]] || die "no file to probe reflink with"
cp --reflink=always "$probe" reflink-probe 2>/dev/null ||
        die "XFS at $MNT does not reflink (cp --reflink=always failed); results would be meaningless"
rm -f reflink-probe

ENTRIES=$(find src | wc -l)
TOOLS=(rl cp rl1)
declare -A NAME=([rl]="reflayer clone" [cp]="cp -a --reflink" [rl1]="reflayer --jobs 1") T=()
run_tool() { # TOOL: one run (reflayer's summary line goes to /dev/null)
        case $1 in
        rl) "$CLI" clone --no-progress src dst-rl >/dev/null ;;
        cp) cp -a --reflink=always src dst-cp ;;
        rl1) "$CLI" clone --no-progress --jobs 1 src dst-rl1 >/dev/null ;;
        esac || die "${NAME[$1]} failed"
}
reset_state() { rm -rf dst-rl dst-cp dst-rl1; sync; }

echo "bench-clone: $RUNS rounds, $ENTRIES entries, CLI $CLI" >&2
for ((r = 0; r < RUNS; r++)); do
        order=()
        for ((i = 0; i < 3; i++)); do order+=("${TOOLS[(r + i) % 3]}"); done
        for t in "${order[@]}"; do
                reset_state
                t0=$(date +%s%N)
                run_tool "$t"
                t1=$(date +%s%N)
                T[$t]+="$((t1 - t0)) "
        done
        echo "bench-clone: round $((r + 1))/$RUNS done (order: ${order[*]})" >&2
done

# stats NS... -> "median min max" in ns
stats() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END {
        m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.0f %d %d\n", m, v[1], v[NR] }'; }
declare -A MED MIN MAX
for t in "${TOOLS[@]}"; do
        # shellcheck disable=SC2086 # word splitting of the ns list is intended
        read -r MED[$t] MIN[$t] MAX[$t] < <(stats ${T[$t]})
done

echo
echo "reflayer clone vs cp -a --reflink=always: Debian bookworm minbase on XFS (reflink=1)"
echo "entries: $ENTRIES   runs: $RUNS   nproc: $(nproc)   kernel: $(uname -r)"
printf '%-20s %9s %9s %9s %10s %10s\n' tool median_s min_s max_s us/entry cp/tool
for t in "${TOOLS[@]}"; do
        awk -v n="${NAME[$t]}" -v med="${MED[$t]}" -v mn="${MIN[$t]}" -v mx="${MAX[$t]}" \
                -v e="$ENTRIES" -v cp="${MED[cp]}" 'BEGIN {
                printf "%-20s %9.3f %9.3f %9.3f %10.1f %10.2f\n", n, med / 1e9, mn / 1e9,
                        mx / 1e9, med / 1e3 / e, cp / med }'
done
echo

# --- correctness: fresh (untimed) outputs compared with src and with each other ---
reset_state
for t in "${TOOLS[@]}"; do run_tool "$t"; done
listing() { # DIR: metadata (not atime) of every entry, plus device numbers
        (cd "$1" && { find . -printf '%M %U %G %s %T@ %n %l %p\n'
                find . \( -type b -o -type c \) -exec stat -c 'rdev %t:%T %n' {} +; } | sort)
}
xattrs() { # DIR: "path name=value" lines, sorted (getfattr walks in readdir order)
        getfattr -R -d -m - -h --absolute-names "$1" | awk -v p="$1" '
                /^# file: / { f = substr($0, 9); if (index(f, p) == 1) f = "." substr(f, length(p) + 1); next }
                NF { print f " " $0 }' | sort
}
contents() { # A B: diff -r, minus its notes on special files (whose rdev is in listing)
        diff -r --no-dereference "$1" "$2" 2>&1 | grep -Ev \
                '^File .* is a (character special file|block special file|fifo|socket) while file .* is a \1$' || true
}
fail=0
report() { # WHAT FILE: FILE, if not empty, holds differences
        [[ -s $2 ]] || return 0
        echo "MISMATCH ($1):" >&2; head -n 40 "$2" >&2; fail=1
}
for d in src dst-cp dst-rl dst-rl1; do listing "$d" >"$WORK/list.$d"; xattrs "$d" >"$WORK/xattr.$d"; done
for pair in "src dst-cp" "src dst-rl" "src dst-rl1" "dst-cp dst-rl" "dst-cp dst-rl1"; do
        read -r a b <<<"$pair"
        diff -u "$WORK/list.$a" "$WORK/list.$b" >"$WORK/diff" || true
        report "metadata, $a vs $b" "$WORK/diff"
        diff -u "$WORK/xattr.$a" "$WORK/xattr.$b" >"$WORK/diff" || true
        report "xattrs, $a vs $b" "$WORK/diff"
        [[ $b == dst-cp ]] || { contents "$a" "$b" >"$WORK/diff"; report "contents, $a vs $b" "$WORK/diff"; }
done
((fail == 0)) || die "trees differ (see MISMATCH above): reflayer clone is not equivalent to cp -a"
echo "tree identical to cp -a: yes ($ENTRIES entries, $(wc -l <"$WORK/xattr.src") xattrs compared)"
