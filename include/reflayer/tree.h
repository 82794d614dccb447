/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Replicate ONE directory tree, every entry's type, content, mode, owner, times, xattrs and
 * hardlinks, file data by the clone engine (reflink where the filesystem can); and remove
 * ONE tree. Both walk by directory fds and never follow a symlink.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <reflayer/clone.h>
#include <reflayer/error.h>
#include <reflayer/idmap.h>

typedef enum rl_tree_flags {
        RL_TREE_KEEP_UNMAPPED = 1 << 0, /* ids outside the maps are kept, not an error */
        RL_TREE_SYNC = 1 << 1,          /* syncfs the new tree before it is published */
        /* On btrfs, the new tree is a subvolume: a snapshot of the source when the source
         * is one (one call, no walk: the stats stay 0 but elapsed_ns and snapshots),
         * subvolumes nested in it snapshotted into place too, and with id maps its owners
         * shifted in place (the stats count what was shifted); else, or where that cannot
         * be done (a nested subvolume the caller may not list, an immutable inode the shift
         * cannot chown), a new subvolume the walk fills. Elsewhere, a directory as
         * without it. */
        RL_TREE_SUBVOLUME = 1 << 2,
} rl_tree_flags;

typedef struct rl_tree_stats {
        uint64_t entries;   /* everything below and including the root */
        uint64_t dirs;
        uint64_t regular;   /* regular files with their own inode */
        uint64_t hardlinks; /* further names of an inode already cloned */
        uint64_t symlinks;
        uint64_t fifos;
        uint64_t sockets;
        uint64_t chardevs;
        uint64_t blockdevs;
        uint64_t xattrs;          /* xattrs written, ACLs and capabilities included */
        uint64_t bytes;           /* logical size of the regular files, each inode once */
        uint64_t bytes_reflinked; /* of which shared with the source by FICLONE */
        uint64_t bytes_copied;    /* data bytes moved by copy_file_range or read/write */
        uint64_t methods[_RL_CLONE_METHOD_MAX]; /* files by the method that cloned them */
        uint64_t elapsed_ns;
        /* RL_TREE_SUBVOLUME: btrfs subvolumes snapshotted whole (the source's, and those
         * nested in it); what they hold is neither walked nor counted above. */
        uint64_t snapshots;
} rl_tree_stats;

typedef struct rl_tree_progress {
        uint64_t entries;
        uint64_t bytes;
        uint64_t elapsed_ns;
} rl_tree_progress;

/* Called from a worker thread, never from two at once. */
typedef void (*rl_tree_progress_fn)(const rl_tree_progress *progress, void *userdata);

typedef struct rl_tree_options {
        unsigned jobs;              /* worker threads; 0: online CPUs */
        unsigned flags;             /* rl_tree_flags */
        const rl_idmap *uid_map;    /* NULL: keep uids */
        const rl_idmap *gid_map;    /* NULL: keep gids */
        rl_tree_progress_fn progress;
        void *progress_userdata;
        uint64_t progress_interval_ns; /* 0: every 100 ms */
        /* When set to true (from a signal handler, say), the clone stops with -ECANCELED
         * and removes what it built. NULL: not cancellable. */
        const atomic_bool *cancel;
} rl_tree_options;

/*
 * Replicate the tree of the directory src_fd (borrowed) as the new entry dst_name of the
 * directory dst_dir_fd (borrowed). dst_name is one component. The tree is built in a
 * temporary sibling and renamed into place at the end: on failure dst_name does not exist
 * and no temporary is left. opts may be NULL (defaults). ret_stats may be NULL.
 *
 * Errors: -EEXIST dst_name exists; -EINVAL dst lies inside src, or a bad name or map;
 * -ERANGE an id outside the maps; -ESTALE the source changed under the clone; -ELOOP too
 * deep; -ECANCELED opts->cancel was set; anything the filesystems say (-ENOSPC, -EACCES,
 * ...), the message naming the path.
 */
int rl_tree_clone(int src_fd, int dst_dir_fd, const char *dst_name, const rl_tree_options *opts,
                  rl_tree_stats *ret_stats, rl_error *err);

/*
 * Remove the entry name of dir_fd and, if it is a directory, everything below it, without
 * following symlinks or crossing into another mount (-EBUSY). A btrfs subvolume in it (or
 * it) is deleted whole, in one call. jobs as above; cancel (may be
 * NULL) stops the removal early with -ECANCELED, leaving the rest for later.
 */
int rl_tree_remove(int dir_fd, const char *name, unsigned jobs, const atomic_bool *cancel,
                   rl_error *err);

/*
 * Split the path dst into its directory, opened (O_DIRECTORY, following symlinks as any
 * path given by a person does), and its last component (to free), ignoring trailing
 * slashes: what rl_tree_clone wants as dst_dir_fd and dst_name. -EINVAL for an empty
 * path or one whose last component is "." or "..".
 */
int rl_tree_open_destination(const char *dst, int *ret_dir_fd, char **ret_name, rl_error *err);
