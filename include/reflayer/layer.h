/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * OCI layer tars in and out of trees (the OCI image spec's layer format): apply a layer onto
 * a tree, the changes of a tree against its lower tree, and those changes written as a layer.
 *
 * Layer semantics: an entry `DIR/.wh.NAME` deletes NAME from the lower layers; an entry
 * `DIR/.wh..wh..opq` makes DIR opaque (everything the lower layers had in DIR is gone, what
 * this layer puts there stays). Other entries add or replace. Entry names are relative;
 * `./` prefixes are accepted.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <reflayer/error.h>
#include <reflayer/idmap.h>
#include <reflayer/tree.h>

typedef enum rl_compression {
        RL_COMPRESSION_NONE,
        RL_COMPRESSION_GZIP,
        RL_COMPRESSION_ZSTD,
} rl_compression;

/* "none", "gzip", "zstd"; and back (-EINVAL for anything else). */
const char *rl_compression_to_string(rl_compression c);
int rl_compression_from_string(const char *s, rl_compression *ret);

#define RL_DIGEST_MAX 72 /* "sha256:" + 64 hex digits + NUL, rounded up */

typedef struct rl_layer_stats {
        uint64_t entries;   /* tar entries read or written */
        uint64_t whiteouts; /* deletions (.wh.NAME) */
        uint64_t opaques;   /* opaque directories (.wh..wh..opq) */
        uint64_t bytes;     /* file data bytes */
        uint64_t size;      /* the layer blob's size: the stream as read or written */
        char digest[RL_DIGEST_MAX];  /* sha256 of the blob as read or written (compressed) */
        char diff_id[RL_DIGEST_MAX]; /* sha256 of the uncompressed tar */
        uint64_t elapsed_ns;
} rl_layer_stats;

typedef struct rl_apply_options {
        const rl_idmap *uid_map; /* shift owners (and ids in ACLs, capabilities); NULL: keep */
        const rl_idmap *gid_map;
        bool keep_unmapped;      /* ids outside the maps stay as they are */
        /* When set, the blob must hash to digest and its uncompressed tar to diff_id
         * ("sha256:HEX"); a mismatch fails the apply with -EBADMSG. */
        const char *expect_digest;
        const char *expect_diff_id;
        const atomic_bool *cancel; /* set: stop with -ECANCELED */
        rl_tree_progress_fn progress; /* entries and file bytes so far, every 100 ms or so */
        void *progress_userdata;
} rl_apply_options;

/*
 * Apply the layer read from tar_fd (a tar stream: uncompressed, gzip or zstd, detected)
 * onto the tree of the directory dir_fd. Every path resolves beneath dir_fd without
 * following a symlink that leaves it; an absolute name, a `..` component, a hardlink or
 * write through a symlink that would leave the tree, a whiteout of `.` or `..`, a name past
 * PATH_MAX, a truncated archive or one that is not a tar are refused with -EINVAL (-EBADMSG
 * for a digest mismatch), the message naming the entry. NOT atomic: a failed apply leaves
 * the tree half changed (the store applies into a clone and publishes it on success).
 */
int rl_layer_apply(int dir_fd, int tar_fd, const rl_apply_options *opts, rl_layer_stats *ret,
                   rl_error *err);

typedef enum rl_change_kind {
        RL_CHANGE_ADDED = 'A',
        RL_CHANGE_MODIFIED = 'C',
        RL_CHANGE_DELETED = 'D',
} rl_change_kind;

typedef struct rl_change {
        rl_change_kind kind;
        bool metadata_only; /* MODIFIED, and the data is the lower file's (mode, owner,
                             * times or xattrs changed) */
        const char *path;   /* relative to the trees' roots, no leading "/"; "." for the root */
} rl_change;

/* Called once per change, in path order (byte-wise, a directory before its entries); a
 * negative return stops the diff and is returned. */
typedef int (*rl_change_fn)(const rl_change *change, void *userdata);

typedef struct rl_diff_stats {
        uint64_t entries;      /* entries compared */
        uint64_t by_extents;   /* regular files found unchanged from FIEMAP alone */
        uint64_t files_read;   /* regular files whose data had to be compared */
        uint64_t bytes_read;
        uint64_t elapsed_ns;
} rl_diff_stats;

/*
 * The changes of the tree upper_fd against the tree lower_fd (lower_fd -1: an empty lower,
 * everything is added). A deleted directory is one change (not its entries); an added
 * directory is one change and so is each entry in it. Unchanged means: same type, mode,
 * owner, mtime, xattrs and, for a regular file, the same link count (a name added to or
 * removed from an inode elsewhere changes its other names: a layer must carry the inode
 * to link the new name to) and the same data, decided from the extent maps (FIEMAP: every
 * extent at the same physical address, as a reflink clone has) and by reading both files
 * only where they cannot decide. ret_stats may be NULL.
 */
int rl_tree_diff(int lower_fd, int upper_fd, rl_change_fn fn, void *userdata,
                 rl_diff_stats *ret_stats, rl_error *err);

typedef struct rl_export_options {
        rl_compression compression;
        int level; /* 0: the compressor's default */
        const atomic_bool *cancel;
        rl_tree_progress_fn progress; /* entries and file bytes written so far */
        void *progress_userdata;
        uint64_t progress_interval_ns; /* 0: every 100 ms */
} rl_export_options;

/*
 * Write the changes of upper_fd against lower_fd (-1: empty) to out_fd as an OCI layer
 * tar (PAX: nanosecond times, xattrs as SCHILY.xattr.*; deletions as whiteouts; a
 * directory whose lower entries are all gone as an opaque directory; hardlinks within the
 * layer as links; the directories above each change too, so their times survive). Applying
 * it onto the lower tree reproduces the upper one, sockets aside (tar has no type for them:
 * they are left out). An entry named .wh.* is refused with -EINVAL (it would read as a
 * whiteout). ret (may be NULL) gets the digest of what was written and the diff_id of the
 * uncompressed tar.
 */
int rl_layer_export(int lower_fd, int upper_fd, int out_fd, const rl_export_options *opts,
                    rl_layer_stats *ret, rl_error *err);
