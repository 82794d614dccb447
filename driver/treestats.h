/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * rl_tree_stats field by field (private): the counters listed once, for the JSON codec and
 * for the walks whose workers add up their counts.
 */
#pragma once

#include <reflayer/tree.h>

/* Every counter of rl_tree_stats but methods[] and elapsed_ns. */
#define RL_TREE_STATS_COUNTERS(X)                                                                  \
        X(entries) X(dirs) X(regular) X(hardlinks) X(symlinks) X(fifos) X(sockets) X(chardevs)    \
        X(blockdevs) X(xattrs) X(bytes) X(bytes_reflinked) X(bytes_copied) X(snapshots)

/* to += from, counter by counter (a worker's counts into the walk's). */
static inline void rl_tree_stats_add(rl_tree_stats *to, const rl_tree_stats *from)
{
#define RL_ADD_(f) to->f += from->f;
        RL_TREE_STATS_COUNTERS(RL_ADD_)
#undef RL_ADD_
        for (int m = 0; m < _RL_CLONE_METHOD_MAX; m++)
                to->methods[m] += from->methods[m];
}
