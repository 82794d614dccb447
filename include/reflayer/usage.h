/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Disk usage that understands reflinks: of the bytes a tree holds, which are its own and
 * which it shares with other files (FIEMAP_EXTENT_SHARED). `du` counts a reflinked clone
 * at full size; this tells what removing it would give back.
 */
#pragma once

#include <stdint.h>

#include <reflayer/error.h>

typedef struct rl_usage {
        uint64_t inodes;          /* entries of the tree, the root included, each inode once */
        uint64_t bytes;           /* allocated bytes, each inode once */
        uint64_t bytes_exclusive; /* of which in extents no other file shares */
        uint64_t bytes_shared;    /* of which in extents shared with other files (reflinks) */
        /* Of bytes_exclusive, the blocks of directories, symlinks and other entries that are
         * not regular files: metadata every tree has its own of (a directory cannot be
         * reflinked). bytes_exclusive - bytes_metadata is file data no other file shares. */
        uint64_t bytes_metadata;
} rl_usage;

/*
 * Usage of the tree of the directory dir_fd (borrowed), on `jobs` workers (0: online CPUs).
 * Regular files are measured by FIEMAP extents; where the filesystem has no FIEMAP (tmpfs),
 * and for directories and symlinks, allocated blocks count as exclusive. But where dir_fd
 * is the root of a btrfs snapshot whose source still exists (looking it up takes
 * CAP_SYS_ADMIN; without, this is not done), which shares the source's metadata and inline
 * data until it changes them: those of an entry whose ctime is older than the snapshot
 * count as shared. (That holds while the source does not change them either, as a store's
 * parents never do.)
 */
int rl_usage_tree(int dir_fd, unsigned jobs, rl_usage *ret, rl_error *err);
