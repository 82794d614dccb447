/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The warm pool of the store: ready clones of committed snapshots that are prepared often,
 * built in the background at low priority, so that a Prepare takes one and publishes it
 * with a rename instead of cloning a whole tree. Private to the store (store.c).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <reflayer/error.h>
#include <reflayer/store.h>

typedef struct rl_pool rl_pool;

typedef struct rl_pool_config {
        unsigned size;  /* ready clones kept per pooled parent (and id maps) */
        unsigned after; /* pool a parent once it has been prepared this many times; 0: only
                         * parents labelled RL_POOL_LABEL */
        unsigned min_free_percent; /* free space or inodes below this: build nothing, drop
                                    * what is ready */
        bool no_sync;   /* the store's no_sync */
} rl_pool_config;

/*
 * Start the pool in ROOT/pool (made if missing; the store sweeps it at open), cloning
 * parents from snaps_fd/ID/fs; what it throws away goes to trash_fd, and kick_trash(userdata)
 * is called to delete it. All fds are borrowed and must outlive the pool.
 */
int rl_pool_start(int root_fd, int snaps_fd, int trash_fd, const rl_pool_config *cfg,
                  void (*kick_trash)(void *userdata), void *userdata, rl_pool **ret,
                  rl_error *err);

/* Stop the builder (a clone in progress is abandoned) and free. Ready trees stay in pool/
 * for the next open to throw away. Accepts NULL. */
void rl_pool_stop(rl_pool *p);

/* Where the ready clones are, in the store's root. */
#define RL_POOL_DIR "pool"
/* The longest name of a ready clone in pool/, with its NUL. */
#define RL_POOL_NAME_MAX 32

/*
 * Move a ready clone of parent (with these maps) to (dir_fd, name): a directory holding the
 * tree as fs/ and a placeholder record (rl_meta_reserve) as info.json, both durable, under
 * the name pool/`taken` (a name the pool gives out once in its life: after a crash, the
 * clone is still there under it unless the move reached the disk). 0 when taken, -ENOENT
 * when none is ready. Counts a hit or a miss. The refill waits for the next rl_pool_note:
 * call it once the snapshot is published.
 */
int rl_pool_take(rl_pool *p, uint64_t parent, const rl_prepare_options *popts, int dir_fd,
                 const char *name, char taken[RL_POOL_NAME_MAX]);

/* A Prepare or View of parent: counted toward pooling it automatically. labelled: the
 * parent's RL_POOL_LABEL value (0: none), which pools it at once with that many clones. */
void rl_pool_note(rl_pool *p, uint64_t parent, const rl_prepare_options *popts,
                  unsigned labelled);

/* parent is gone: its ready clones too. */
void rl_pool_forget(rl_pool *p, uint64_t parent);

void rl_pool_get_stats(rl_pool *p, rl_pool_stats *ret);
