/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * btrfs subvolumes (private): a tree the store builds on btrfs is a subvolume, so that a
 * child of it is a snapshot (BTRFS_IOC_SNAP_CREATE_V2), made in one call whatever the
 * tree's size, instead of a walk that reflinks file by file. What a snapshot gives is what
 * a reflinked tree gives: every entry its own inode (in the snapshot's own subvolume),
 * data shared until either side writes, the source never changed. A subvolume is deleted
 * with one call too (BTRFS_IOC_SNAP_DESTROY; btrfs frees its blocks in the background).
 * On any other filesystem, or where btrfs refuses, the callers fall back to the tree walk.
 */
#pragma once

#include <stdbool.h>

/* Is the directory fd the root of a btrfs subvolume? */
bool rl_subvol_is_root(int fd);

/* Is the directory fd on btrfs? */
bool rl_subvol_supported(int fd);

/* The new, empty subvolume name in dir_fd, mode 0755 before the umask (as mkdir). */
int rl_subvol_create(int dir_fd, const char *name);

/* name in dir_fd, a writable snapshot of the subvolume whose root is src_fd. Committed by
 * btrfs before it returns (a snapshot is made at a transaction commit): durable. */
int rl_subvol_snapshot(int src_fd, int dir_fd, const char *name);

/* Delete the subvolume name of dir_fd, with whatever it holds. */
int rl_subvol_delete(int dir_fd, const char *name);
