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
# The rootfs is built once with debootstrap and cached (tests/lib/debian-rootfs).
set -euo pipefail
BENCH_NAME=bench-clone
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

take_paths CLI:reflayer -- "$@"
check_runs 5
need_root
need_tools getfattr:attr
if [[ -z ${REFLAYER_BENCH_NS:-} ]]; then
        "$here/../lib/debian-rootfs" minbase >/dev/null # built once, before the namespace
fi
enter_private_ns "$0" "$CLI"

# --- inside the private mount namespace ---
ROOTFS=$("$here/../lib/debian-rootfs" minbase)
WORK=$(mktemp -d /var/tmp/reflayer-bench.XXXXXX)
MNT=$WORK/mnt
on_exit "rm -rf '$WORK'"
mkfs_loop xfs 4G "$WORK/xfs.img" "$MNT"
cd "$MNT"
cp -a "$ROOTFS" src || die "cannot copy the cached rootfs into the image"

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

declare -A MED MIN MAX
for t in "${TOOLS[@]}"; do
        # shellcheck disable=SC2086 # word splitting of the ns list is intended
        read -r MED[$t] MIN[$t] MAX[$t] < <(printf '%s\n' ${T[$t]} | stats)
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
