/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The snapshot store: container layers with containerd's snapshotter semantics.
 *
 * A store is a directory (ROOT) on one filesystem:
 *   ROOT/snapshots/ID/fs/        the tree of snapshot ID (decimal, never reused)
 *   ROOT/snapshots/ID/info.json  its metadata
 *   ROOT/ephemeral/BOOT/ID/      an ephemeral snapshot (same layout) made during boot BOOT
 *   ROOT/tmp/                    trees being built (emptied at open)
 *   ROOT/trash/                  removed trees (deleted in the background)
 *   ROOT/lock                    flock: one process per store
 * Kinds: active (writable, from prepare), view (read-only, from view), committed (from commit
 * of an active snapshot; immutable; the only kind that may be a parent). Keys are unique
 * across kinds. Every change is built aside and published with rename(2), so a process that
 * dies at any instant leaves each snapshot either fully there or not there at all.
 *
 * Durability: a call that returns has reached the disk (a power cut loses nothing it did),
 * except for ephemeral snapshots (rl_prepare_options.ephemeral): active snapshots and views
 * that are never flushed, so much quicker to make, and that do not outlive the boot they
 * were made in: the first open after a reboot throws them away, whole, whether the machine
 * went down cleanly or not. A container whose rootfs is rebuilt after a reboot anyway
 * loses nothing. Committing one makes it durable. (Where the kernel's boot id cannot be read,
 * without /proc, they last only until the store is closed.)
 *
 * Errors: negative errnos with a message in rl_error; rl_store_error_code() gives each its
 * stable protocol code (-ENOENT not_found, -EEXIST already_exists, -EINVAL invalid_argument,
 * -EBUSY failed_precondition, -ESHUTDOWN unavailable).
 *
 * Thread safety: a rl_store may be used from many threads at once. Operations on different
 * keys run in parallel (two prepares from one parent clone at the same time); a parent cannot
 * be removed while a child is being prepared from it.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <reflayer/error.h>
#include <reflayer/idmap.h>
#include <reflayer/layer.h>
#include <reflayer/tree.h>
#include <reflayer/usage.h>

typedef struct rl_store rl_store;

typedef enum rl_kind {
        RL_KIND_ACTIVE = 1,
        RL_KIND_VIEW = 2,
        RL_KIND_COMMITTED = 3,
} rl_kind;

const char *rl_kind_to_string(rl_kind kind); /* "active", "view", "committed" */

/* Keys: non-empty UTF-8 without NUL, at most this many bytes. */
#define RL_KEY_MAX 4096
/* A label's key and value together, in bytes (containerd's limit). */
#define RL_LABEL_MAX 4096
/* All labels of one snapshot together, keys and values, in bytes. */
#define RL_LABELS_TOTAL_MAX (512 * 1024)

typedef struct rl_label {
        char *key;
        char *value;
} rl_label;

typedef struct rl_info {
        uint64_t id;
        rl_kind kind;
        char *name;       /* the key */
        char *parent;     /* the parent's key; NULL for none */
        rl_label *labels; /* sorted by key */
        size_t n_labels;
        int64_t created_ns; /* CLOCK_REALTIME */
        int64_t updated_ns;
        bool ephemeral;     /* gone after a reboot (rl_prepare_options.ephemeral) */
} rl_info;

/* Free what an rl_info holds (not the struct itself); leaves it zeroed. */
void rl_info_clear(rl_info *info);

/*
 * The stable error codes of the protocol. rl_store calls fail with these errnos:
 *   -ENOENT      not_found
 *   -EEXIST      already_exists
 *   -EINVAL      invalid_argument
 *   -EBUSY       failed_precondition (has children, in use, wrong kind for the call)
 *   -ESHUTDOWN   unavailable (the store is closed)
 *   -EACCES, -EPERM  permission_denied
 *   anything else    internal
 */
const char *rl_store_error_code(int r);

/* A committed snapshot with this label ("N") is pooled with N ready clones. */
#define RL_POOL_LABEL "reflayer.io/pool"

typedef struct rl_store_options {
        unsigned jobs;  /* tree workers per clone; 0: online CPUs */
        bool no_sync;   /* skip syncfs before publishing trees (tests and benchmarks only:
                         * a power cut may then lose a published tree's data) */
        /* The warm pool: ready clones of parents that are prepared often, built in the
         * background at low priority; a Prepare (or View) takes one and publishes it with a
         * rename. pool_size: clones kept per pooled parent (and id maps); 0: no pool at all.
         * pool_after: pool a parent automatically once prepared that many times (0: only
         * parents labelled RL_POOL_LABEL). pool_min_free_percent: below that much free space
         * or inodes the pool builds nothing and drops what it has (0: 10). */
        unsigned pool_size;
        unsigned pool_after;
        unsigned pool_min_free_percent;
} rl_store_options;

typedef struct rl_pool_stats {
        uint64_t ready;    /* clones ready now */
        uint64_t building; /* being built now (0 or 1) */
        uint64_t pooled;   /* parents (with maps) the pool keeps clones of */
        uint64_t hits;     /* Prepares and Views served from the pool */
        uint64_t misses;   /* of pooled parents, served by a clone meanwhile */
        uint64_t built;    /* clones built */
        uint64_t dropped;  /* clones thrown away (parent removed, pressure) */
} rl_pool_stats;

/*
 * Open (creating what is missing) the store at root, an absolute or relative path. Takes the
 * store's lock: -EBUSY when another process has it. Empties tmp/, queues trash/ for deletion
 * in the background, and rebuilds the index from snapshots/. opts may be NULL.
 */
int rl_store_open(const char *root, const rl_store_options *opts, rl_store **ret,
                  rl_error *err);

/* Refuse new calls, wait for those in flight, stop the trash thread (a tree half deleted
 * stays for the next open), release the lock and every fd. A second close does nothing;
 * calls on a closed store fail with -ESHUTDOWN. Never close a store from inside one of its
 * own calls (a walk callback): the close would wait for that call. */
int rl_store_close(rl_store *s);
/* Close if needed, and free. Accepts NULL. */
rl_store *rl_store_free(rl_store *s);
void rl_store_freep(rl_store **s);

typedef struct rl_prepare_options {
        const rl_idmap *uid_map; /* shift owners while cloning (NULL: keep) */
        const rl_idmap *gid_map;
        bool keep_unmapped;      /* ids outside the maps stay as they are */
        /* Called every 100 ms or so while the parent's tree is cloned (NULL: not). */
        rl_tree_progress_fn progress;
        void *progress_userdata;
        /* Set to true to abandon the clone: the call fails with -ECANCELED and nothing is
         * published. NULL: not cancellable. */
        const atomic_bool *cancel;
        /* Never flushed, gone at the first open after a reboot (see the top of this file):
         * the snapshot is published with no flush at all (no syncfs of a cold clone, no
         * fsync of its record or of the directory it appears in). */
        bool ephemeral;
        /* Durable whatever the default: a store call always is unless ephemeral; through
         * reflayerd (rl_client_prepare) it overrides a daemon started with --ephemeral.
         * Both set: -EINVAL. */
        bool durable;
} rl_prepare_options;

/*
 * A new active snapshot `key`, its tree a clone of committed `parent` (NULL or "": an empty
 * tree, mode 0755). labels may be NULL. opts may be NULL.
 */
int rl_store_prepare(rl_store *s, const char *key, const char *parent, const rl_label *labels,
                     size_t n_labels, const rl_prepare_options *opts, rl_error *err);

/* The same, as a read-only view. */
int rl_store_view(rl_store *s, const char *key, const char *parent, const rl_label *labels,
                  size_t n_labels, const rl_prepare_options *opts, rl_error *err);

/*
 * Commit the active snapshot `key` as the committed snapshot `name`: the active one is
 * consumed, its tree becomes the layer without a copy. The committed snapshot gets `labels`.
 * The tree is flushed first (syncfs), so a committed snapshot is durable whole, data
 * included; an ephemeral active snapshot moves to snapshots/ and stops being ephemeral.
 */
int rl_store_commit(rl_store *s, const char *name, const char *key, const rl_label *labels,
                    size_t n_labels, rl_error *err);

/* Remove `key` (not one with children). Returns at once; its tree is deleted in the
 * background (rl_store_cleanup waits for that). */
int rl_store_remove(rl_store *s, const char *key, rl_error *err);

int rl_store_stat(rl_store *s, const char *key, rl_info *ret, rl_error *err);

/*
 * Update the labels of info->name. fieldpaths: "labels" (replace them all with info's) or
 * "labels.KEY" (set KEY from info, or delete it when info lacks it); none: "labels". Any
 * other field is immutable: -EINVAL. Returns the updated info in ret (may be NULL).
 */
int rl_store_update(rl_store *s, const rl_info *info, const char *const *fieldpaths,
                    size_t n_fieldpaths, rl_info *ret, rl_error *err);

/*
 * Call fn for every snapshot that matches any of the filters (none: all), in no set order,
 * outside the store's lock. A filter is a comma-separated conjunction of
 *   FIELD  FIELD==VALUE  FIELD!=VALUE  FIELD~=REGEX
 * over kind, name, parent, labels.KEY (KEY or VALUE may be "quoted"); containerd's syntax.
 * fn returns 0 to go on, or a negative errno to stop the walk with that error.
 */
typedef int (*rl_store_walk_fn)(const rl_info *info, void *userdata);
int rl_store_walk(rl_store *s, const char *const *filters, size_t n_filters, rl_store_walk_fn fn,
                  void *userdata, rl_error *err);

int rl_store_usage(rl_store *s, const char *key, rl_usage *ret, rl_error *err);

typedef struct rl_mount {
        char *type;      /* "bind" */
        char *source;    /* absolute path of the snapshot's tree */
        char **options;  /* "rbind", then "rw" (active) or "ro" (view, committed) */
        size_t n_options;
} rl_mount;

void rl_mount_clear(rl_mount *m);
int rl_store_mounts(rl_store *s, const char *key, rl_mount *ret, rl_error *err);

/* Wait until every removed tree is deleted. -ESHUTDOWN if the store closes meanwhile. */
int rl_store_cleanup(rl_store *s, rl_error *err);

/* The store's root (absolute) and numbers for Status. */
const char *rl_store_root(const rl_store *s);

/*
 * Apply the OCI layer read from tar_fd (tar, plain, gzip or zstd; layer.h) onto the active
 * snapshot key. The layer goes into a clone of the snapshot's tree, which replaces the tree
 * in one rename once the whole layer is in: on failure the snapshot is as it was. A bind
 * mount of the snapshot made before keeps showing the tree it had (mount again). ret may be
 * NULL. Errors: -ENOENT, -EBUSY (not active), rl_layer_apply's.
 */
int rl_store_apply(rl_store *s, const char *key, int tar_fd, const rl_apply_options *opts,
                   rl_layer_stats *ret, rl_error *err);

/*
 * The committed snapshot name: committed parent (NULL: empty) plus the layer read from
 * tar_fd, made and published whole in one step (what unpacking an image layer needs: no
 * active snapshot in between, nothing left by a failure). ret may be NULL.
 */
int rl_store_commit_layer(rl_store *s, const char *name, const char *parent,
                          const rl_label *labels, size_t n_labels, int tar_fd,
                          const rl_apply_options *opts, rl_layer_stats *ret, rl_error *err);

/*
 * The changes of snapshot key against its parent (layer.h, rl_tree_diff), any kind of
 * snapshot: for an active one, what its container changed; for a committed one, its layer.
 * Neither tree can be removed meanwhile. ret may be NULL.
 */
int rl_store_diff(rl_store *s, const char *key, rl_change_fn fn, void *userdata,
                  rl_diff_stats *ret, rl_error *err);

/* Those changes written to out_fd as an OCI layer (layer.h, rl_layer_export). */
int rl_store_export(rl_store *s, const char *key, int out_fd, const rl_export_options *opts,
                    rl_layer_stats *ret, rl_error *err);

/* The warm pool's figures (all 0 without a pool). */
void rl_store_pool_stats(rl_store *s, rl_pool_stats *ret);
