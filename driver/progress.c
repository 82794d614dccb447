/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * progress.c owns counting a tree operation's progress and reporting it (driver/progress.h).
 */
#include "progress.h"
#include "util.h"

#define METER_BATCH 128 /* entries a worker counts on its own between clock reads */

void rl_meter_init(rl_meter *m, const rl_tree_options *opts, uint64_t start_ns)
{
        *m = (rl_meter){
                .fn = opts->progress,
                .userdata = opts->progress_userdata,
                .interval_ns = opts->progress_interval_ns ? opts->progress_interval_ns
                                                          : 100000000ULL,
                .start_ns = start_ns,
        };
        atomic_init(&m->entries, 0);
        atomic_init(&m->bytes, 0);
        atomic_init(&m->last_ns, start_ns);
        pthread_mutex_init(&m->lock, NULL);
}

void rl_meter_done(rl_meter *m)
{
        pthread_mutex_destroy(&m->lock);
}

/*
 * Workers count on their own and add to the shared totals once every METER_BATCH entries:
 * two atomic adds per entry on one shared cache line would bounce it between the cores for
 * every file.
 */
void rl_meter_count(rl_meter *m, rl_meter_local *l, uint64_t bytes)
{
        if (!m->fn)
                return;
        l->bytes += bytes;
        if (++l->entries < METER_BATCH)
                return;
        atomic_fetch_add_explicit(&m->entries, l->entries, memory_order_relaxed);
        atomic_fetch_add_explicit(&m->bytes, l->bytes, memory_order_relaxed);
        *l = (rl_meter_local){};
        uint64_t now = rl_now_ns();
        if (now - atomic_load(&m->last_ns) < m->interval_ns)
                return;
        if (pthread_mutex_trylock(&m->lock) != 0)
                return;
        atomic_store(&m->last_ns, now);
        rl_tree_progress p = {
                .entries = atomic_load(&m->entries),
                .bytes = atomic_load(&m->bytes),
                .elapsed_ns = now - m->start_ns,
        };
        m->fn(&p, m->userdata);
        pthread_mutex_unlock(&m->lock);
}
