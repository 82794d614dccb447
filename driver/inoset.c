/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * inoset.c owns the set of inodes a walk has met (driver/inoset.h).
 */
#include <errno.h>
#include <stdlib.h>

#include "inoset.h"

size_t rl_inode_hash(uint64_t dev, uint64_t ino)
{
        uint64_t h = ino * 0x9E3779B97F4A7C15ULL ^ dev * 0xC2B2AE3D27D4EB4FULL;
        return (size_t)(h ^ (h >> 29));
}

/* The slot of (dev, ino), or the free one where it would go; cap is a power of two and the
 * table never full, so the probe ends. */
static rl_inoset_slot *find(rl_inoset_slot *slots, size_t cap, uint64_t dev, uint64_t ino)
{
        for (size_t i = rl_inode_hash(dev, ino) & (cap - 1);; i = (i + 1) & (cap - 1))
                if (!slots[i].used || (slots[i].dev == dev && slots[i].ino == ino))
                        return &slots[i];
}

static int grow(rl_inoset *s)
{
        size_t cap = s->cap ? s->cap * 2 : 256;
        rl_inoset_slot *slots = calloc(cap, sizeof(*slots));
        if (!slots)
                return -ENOMEM;
        for (size_t i = 0; i < s->cap; i++)
                if (s->slots[i].used)
                        *find(slots, cap, s->slots[i].dev, s->slots[i].ino) = s->slots[i];
        free(s->slots);
        s->slots = slots;
        s->cap = cap;
        return 0;
}

int rl_inoset_add(rl_inoset *s, uint64_t dev, uint64_t ino)
{
        int r = 0;

        pthread_mutex_lock(&s->lock);
        if (s->len * 2 >= s->cap)
                r = grow(s);
        if (r == 0) {
                rl_inoset_slot *slot = find(s->slots, s->cap, dev, ino);
                if (!slot->used) {
                        *slot = (rl_inoset_slot){ .dev = dev, .ino = ino, .used = 1 };
                        s->len++;
                        r = 1;
                }
        }
        pthread_mutex_unlock(&s->lock);
        return r;
}

void rl_inoset_done(rl_inoset *s)
{
        free(s->slots);
        s->slots = NULL;
        s->cap = s->len = 0;
        pthread_mutex_destroy(&s->lock);
}
