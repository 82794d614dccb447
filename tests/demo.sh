#!/usr/bin/env bash
# The demo `make run` shows beside reflayerd: a layer, two containers' snapshots of it, what
# they share and what they don't. Only the CLI `reflayer` and coreutils.
#
#   tests/demo.sh CLI SOCKET [DAEMON_PID]
#
# Its snapshots are named demo-*; it removes them at the end, and the leftovers of an
# interrupted run at the start, so it can run again and again on the same store.
set -euo pipefail
cli=$1
sock=$2
daemon_pid=${3:-}

rl() { "$cli" --socket "$sock" "$@"; }
# Show a command, then run it.
show() {
        echo "\$ reflayer $*"
        rl "$@"
}
step() { printf '\n== %s\n' "$*"; }

# Remove the demo's snapshots. One that is not there (exit 3) is fine; one that still has
# children (exit 5: an interrupted run may have left any shape) goes in a later pass.
remove_demo_snapshots() {
        local pass key rc busy
        for pass in 1 2 3 4; do
                busy=
                for key in demo-a demo-b demo-e demo-work demo-layer; do
                        rc=0
                        rl rm "$key" 2>/dev/null || rc=$?
                        case $rc in
                        0 | 3) ;;
                        5) busy="$busy $key" ;;
                        *) echo "demo: reflayer rm $key failed (exit $rc)" >&2; return 1 ;;
                        esac
                done
                [ -n "$busy" ] || return 0
        done
        echo "demo: cannot remove$busy: they have children that are not the demo's" >&2
        return 1
}

# --- wait for the daemon: up to 60 s, or until it has died -------------------------------
for ((i = 0; ; i++)); do
        rl status >/dev/null 2>&1 && break
        if [ -n "$daemon_pid" ] && ! kill -0 "$daemon_pid" 2>/dev/null; then
                echo "demo: reflayerd exited before it served $sock (its log is above)" >&2
                exit 1
        fi
        [ "$i" -lt 600 ] || { echo "demo: nothing answers on $sock after 60 s" >&2; exit 1; }
        sleep 0.1
done

# Mount points for the snapshots (what a container runtime would do), undone on any exit.
mnt=$(mktemp -d /tmp/reflayer-demo.XXXXXX)
cleanup() {
        local d
        for d in "$mnt"/*; do
                [ -d "$d" ] && { rl umount "$d" 2>/dev/null || true; }
        done
        rm -rf --one-file-system "$mnt"
}
trap cleanup EXIT

remove_demo_snapshots

step "the store"
show status

step "a layer: prepare an empty snapshot, write a small tree into it, commit it"
show prepare demo-work
mkdir "$mnt/work"
show mount demo-work "$mnt/work"
mkdir -p "$mnt/work/etc" "$mnt/work/usr/bin" "$mnt/work/var/lib/app"
cp /etc/os-release "$mnt/work/etc/os-release"
echo "welcome to the demo layer" >"$mnt/work/etc/motd"
cp /usr/bin/ls /usr/bin/cat /bin/bash "$mnt/work/usr/bin/"
head -c 8M /dev/urandom >"$mnt/work/var/lib/app/data.bin"
ln -s ../usr/bin "$mnt/work/bin"
echo "   wrote $(du -s --inodes "$mnt/work" | cut -f1) entries, $(du -sh "$mnt/work" | cut -f1)"
show umount "$mnt/work"
show commit demo-layer demo-work

step "two containers' snapshots of the layer: every file a reflink of the layer's"
show prepare demo-a demo-layer
show prepare demo-b demo-layer
mkdir "$mnt/a" "$mnt/b" "$mnt/layer"
rl mount demo-a "$mnt/a"
rl mount demo-b "$mnt/b"
rl mount demo-layer "$mnt/layer" # committed: read-only

step "write in demo-a; demo-b and the layer do not change"
echo "changed by container a" >"$mnt/a/etc/motd"
head -c 1M /dev/urandom | dd of="$mnt/a/var/lib/app/data.bin" bs=1M seek=2 conv=notrunc status=none
echo "   demo-a/etc/motd:     $(cat "$mnt/a/etc/motd")"
echo "   demo-b/etc/motd:     $(cat "$mnt/b/etc/motd")"
echo "   demo-layer/etc/motd: $(cat "$mnt/layer/etc/motd")"
sum() { sha256sum <"$1" | cut -d' ' -f1; }
if [ "$(sum "$mnt/a/var/lib/app/data.bin")" = "$(sum "$mnt/layer/var/lib/app/data.bin")" ]; then
        echo "demo: the write to demo-a's data.bin is not there" >&2
        exit 1
fi
if [ "$(sum "$mnt/b/var/lib/app/data.bin")" != "$(sum "$mnt/layer/var/lib/app/data.bin")" ]; then
        echo "demo: demo-b's data.bin changed with demo-a's" >&2
        exit 1
fi
echo "   data.bin: 1 MiB rewritten in demo-a; demo-b's still equals the layer's"
echo "   inodes of etc/motd: layer $(stat -c %i "$mnt/layer/etc/motd"), demo-a" \
     "$(stat -c %i "$mnt/a/etc/motd"), demo-b $(stat -c %i "$mnt/b/etc/motd")"
if { echo x >"$mnt/layer/etc/motd"; } 2>/dev/null; then
        echo "demo: the committed layer took a write" >&2
        exit 1
fi
echo "   a write to the layer's mount: refused (read-only)"

step "an ephemeral snapshot: published with no flush at all, gone after the next reboot"
show prepare demo-e demo-layer --ephemeral
show stat demo-e

step "the snapshots"
show ls
show tree

step "disk usage: what each snapshot holds alone, and what it shares"
# Written back first: until then XFS has not given demo-a's rewritten megabyte blocks of its
# own, and the extent map (FIEMAP) still shows the shared ones.
sync -f "$mnt/a"
show usage demo-layer
show usage demo-a
show usage demo-b

step "reflayer clone: any directory, no daemon needed (here inside demo-b's snapshot)"
echo "\$ reflayer clone --no-progress $mnt/b/usr $mnt/b/usr.copy"
"$cli" clone --no-progress "$mnt/b/usr" "$mnt/b/usr.copy"
sync -f "$mnt/b"
show usage demo-b

step "clean up: the demo's snapshots go"
for d in a b layer; do rl umount "$mnt/$d"; done
show rm demo-a demo-b demo-e
show rm demo-layer
show ls
echo
echo "demo: done"
