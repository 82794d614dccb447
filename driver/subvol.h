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
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* The inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID): who has
 * a statx of a directory at hand tests it before asking rl_subvol_supported(). */
#define RL_SUBVOL_ROOT_INO 256
/* The inode number of the empty stub a snapshot holds where its source had a subvolume
 * (BTRFS_EMPTY_SUBVOL_DIR_OBJECTID). */
#define RL_SUBVOL_STUB_INO 2

/* Is the directory fd the root of a btrfs subvolume? */
bool rl_subvol_is_root(int fd);

/* Is the directory fd on btrfs? */
bool rl_subvol_supported(int fd);

/* The new, empty subvolume name in dir_fd, mode 0755 before the umask (as mkdir). */
int rl_subvol_create(int dir_fd, const char *name);

/* A new directory name in dir_fd: a subvolume where dir_fd is on btrfs and btrfs makes one
 * (mode 0755 before the umask: the caller chmods, as after any mkdir), else mkdirat(mode).
 * Whatever keeps btrfs from making one (a quota, no permission) leaves a directory, which
 * serves all the same, only its children are clones instead of snapshots. */
int rl_subvol_mkdir(int dir_fd, const char *name, mode_t mode);

/* name in dir_fd, a writable snapshot of the subvolume whose root is src_fd. Committed by
 * btrfs before it returns (a snapshot is made at a transaction commit): durable. */
int rl_subvol_snapshot(int src_fd, int dir_fd, const char *name);

/* A subvolume nested in another: its path from the other's root ("etc/nest"), its id. */
typedef struct rl_subvol_ref {
        char *path;
        uint64_t id;
} rl_subvol_ref;

/* The subvolumes nested directly in the one whose root is fd (not those nested in them),
 * a malloc'd array of *ret_n in *ret (NULL when none; free with rl_subvol_refs_free). A
 * snapshot of fd's subvolume holds an empty stub (inode RL_SUBVOL_STUB_INO) at each.
 * -EINVAL: fd is no subvolume root; -EACCES: a path is not the caller's to search. */
int rl_subvol_nested(int fd, rl_subvol_ref **ret, size_t *ret_n);
void rl_subvol_refs_free(rl_subvol_ref *refs, size_t n);

/* The id of the subvolume whose root is fd, or -errno. */
int rl_subvol_id(int fd, uint64_t *ret);

/* When the subvolume whose root is fd was taken as a snapshot of one that still exists: 0
 * and *ret. -ENOENT: it is no snapshot (made empty), or its source is gone; other -errno:
 * this cannot be told (no btrfs subvolume; -EPERM: finding the source by its UUID takes
 * CAP_SYS_ADMIN). */
int rl_subvol_source_time(int fd, struct timespec *ret);

/* Delete the subvolume name of dir_fd, with whatever it holds. */
int rl_subvol_delete(int dir_fd, const char *name);
