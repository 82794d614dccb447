/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A set of inodes (device, inode number), shared by a walk's workers (private): the walks
 * that must meet an inode of several names once (usage counts it once, an id shift shifts
 * it once) ask it whether they saw the inode first.
 */
#pragma once

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct rl_inoset_slot {
        uint64_t dev, ino;
        int used;
} rl_inoset_slot;

typedef struct rl_inoset {
        pthread_mutex_t lock;
        rl_inoset_slot *slots; /* open addressing, at most half full */
        size_t cap, len;
} rl_inoset;

#define RL_INOSET_INIT { .lock = PTHREAD_MUTEX_INITIALIZER }

/* Where (dev, ino) hashes to: also the hardlink map's hash (tree.c). */
size_t rl_inode_hash(uint64_t dev, uint64_t ino);

/* Add (dev, ino): 1 if it was not there (the caller is first), 0 if it was, -ENOMEM. */
int rl_inoset_add(rl_inoset *s, uint64_t dev, uint64_t ino);

void rl_inoset_done(rl_inoset *s);
