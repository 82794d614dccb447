/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Shift the owners of a tree in place (private): what a clone with id maps does to the
 * entries it creates, done to entries that exist already. For a btrfs snapshot taken for a
 * Prepare with id maps (tree.c): the snapshot is one call, and the shift touches each
 * inode's metadata only, where a clone would create every entry anew.
 */
#pragma once

#include <reflayer/error.h>
#include <reflayer/tree.h>

#include "progress.h"

/*
 * Every inode below and including the directory root_fd (borrowed), once however many names
 * it has: owner through opts->uid_map and opts->gid_map (outside them -ERANGE, unless
 * RL_TREE_KEEP_UNMAPPED), the ids inside its POSIX ACLs and file capability shifted the way
 * rl_idmap_shift_xattr() does for a clone, the setuid/setgid bits that chown clears put
 * back; times untouched. opts->jobs workers, opts->cancel honoured; each entry counted into
 * meter (opts->progress, if any, is the meter's). Counts go into *stats
 * (entries by type; hardlinks: further names of an inode already shifted; xattrs: values
 * rewritten). The tree must be private to the caller while it runs.
 */
int rl_shift_tree(int root_fd, const rl_tree_options *opts, rl_meter *meter,
                  rl_tree_stats *stats, rl_error *err);
