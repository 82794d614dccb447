/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * progress.c owns counting a tree operation's progress and reporting it (driver/progress.h).
 */
#include "progress.h"
#include "util.h"

#define METER_BATCH 128 /* entries a worker counts on its own between clock reads */

void rl_meter_init(rl_meter *m, rl_tree_progress_fn fn, void *userdata, uint64_t interval_ns,
                   uint64_t start_ns)
{
        *m = (rl_meter){
                .fn = fn,
                .userdata = userdata,
                .interval_ns = interval_ns ? interval_ns : 100000000ULL,
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
        rl_meter_report(m, 0, 0);
}

void rl_meter_report(rl_meter *m, uint64_t entries, uint64_t bytes)
{
        if (!m->fn)
                return;
        uint64_t now = rl_now_ns();
        if (now - atomic_load(&m->last_ns) < m->interval_ns)
                return;
        if (pthread_mutex_trylock(&m->lock) != 0)
                return;
        atomic_store(&m->last_ns, now);
        /* Counted here (workers) or by the caller: one of the two is 0. */
        rl_tree_progress p = {
                .entries = entries + atomic_load(&m->entries),
                .bytes = bytes + atomic_load(&m->bytes),
                .elapsed_ns = now - m->start_ns,
        };
        m->fn(&p, m->userdata);
        pthread_mutex_unlock(&m->lock);
}
