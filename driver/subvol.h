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
#include <sys/types.h>
#include <time.h>

/* The inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID): who has
 * a statx of a directory at hand tests it before asking rl_subvol_supported(). */
#define RL_SUBVOL_ROOT_INO 256

/* Is the directory fd the root of a btrfs subvolume? */
bool rl_subvol_is_root(int fd);

/* Is the directory fd on btrfs? */
bool rl_subvol_supported(int fd);

/* The new, empty subvolume name in dir_fd, mode 0755 before the umask (as mkdir). */
int rl_subvol_create(int dir_fd, const char *name);

/* A new directory name in dir_fd: a subvolume where dir_fd is on btrfs and btrfs makes one
 * (mode 0755 before the umask: the caller chmods, as after any mkdir), else mkdirat(mode). */
int rl_subvol_mkdir(int dir_fd, const char *name, mode_t mode);

/* name in dir_fd, a writable snapshot of the subvolume whose root is src_fd. Committed by
 * btrfs before it returns (a snapshot is made at a transaction commit): durable. */
int rl_subvol_snapshot(int src_fd, int dir_fd, const char *name);

/* The subvolumes nested directly in the one whose root is fd (not those nested in them):
 * their paths from fd ("etc/nest"), a malloc'd array of n malloc'd strings in *ret (NULL
 * when n is 0). A snapshot of fd's subvolume holds an empty stub (inode 2) at each. */
int rl_subvol_nested(int fd, char ***ret, size_t *n);

/* When the subvolume whose root is fd was taken as a snapshot of another: 0 and *ret, or
 * -ENOENT when it is no snapshot (made empty), -errno where this is no btrfs subvolume. */
int rl_subvol_snapshot_time(int fd, struct timespec *ret);

/* Delete the subvolume name of dir_fd, with whatever it holds. */
int rl_subvol_delete(int dir_fd, const char *name);
