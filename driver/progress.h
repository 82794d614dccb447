/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The progress of one tree operation (private): entries and bytes counted by its workers,
 * handed to the caller's rl_tree_progress_fn at most once an interval. A clone and the
 * shift of a snapshot's owners (which a clone may start with) count into one meter, so the
 * caller sees one operation. The daemon's callback also notices a client that hung up, so
 * whatever walks a tree for a caller counts here, or a hang-up goes unseen until the end.
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <reflayer/tree.h>

typedef struct rl_meter {
        rl_tree_progress_fn fn; /* NULL: nothing is counted */
        void *userdata;
        uint64_t interval_ns;
        uint64_t start_ns; /* elapsed_ns counts from here */
        atomic_uint_fast64_t entries, bytes, last_ns;
        pthread_mutex_t lock; /* one call of fn at a time; a worker finding it held skips */
} rl_meter;

/* A worker's counts not yet added to the meter's. */
typedef struct rl_meter_local {
        unsigned entries;
        uint64_t bytes;
} rl_meter_local;

/* fn (NULL: count nothing) called with userdata at most once every interval_ns (0: 100
 * ms); elapsed_ns from start_ns. */
void rl_meter_init(rl_meter *m, rl_tree_progress_fn fn, void *userdata, uint64_t interval_ns,
                   uint64_t start_ns);
void rl_meter_done(rl_meter *m);

/* One entry of bytes (file data; 0 for the others), by the worker owning l. */
void rl_meter_count(rl_meter *m, rl_meter_local *l, uint64_t bytes);

/* For a caller that counts on its own, in one thread: the totals so far, reported if an
 * interval has passed since the last report. Cheap enough to call per entry and per chunk
 * of a file's data (a clock read). */
void rl_meter_report(rl_meter *m, uint64_t entries, uint64_t bytes);
