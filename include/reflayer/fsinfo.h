/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * rl_fsinfo: facts about one mounted filesystem that the clone engine and the store need:
 * its type, device and mount point, and whether it can reflink. Opened on a directory fd;
 * the reflink answer comes from a real FICLONE between two O_TMPFILE files in that
 * directory, never from the filesystem's name.
 *
 * Thread safety: a rl_fsinfo may be shared by threads (its mutable facts are atomics).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <reflayer/error.h>

typedef struct rl_fsinfo rl_fsinfo;

typedef enum rl_reflink {
        RL_REFLINK_UNKNOWN = 0, /* the probe could not run (read-only, no O_TMPFILE, ...) */
        RL_REFLINK_YES,
        RL_REFLINK_NO,
} rl_reflink;

/*
 * Describe the filesystem that holds the directory dir_fd (borrowed, not kept) and probe it
 * for reflink support. Fails only on memory or if dir_fd is not a usable directory.
 */
int rl_fsinfo_open(int dir_fd, rl_fsinfo **ret, rl_error *err);
rl_fsinfo *rl_fsinfo_free(rl_fsinfo *fs);
void rl_fsinfo_freep(rl_fsinfo **fs);

const char *rl_fsinfo_type(const rl_fsinfo *fs);   /* "xfs", "btrfs", ...; "unknown" */
const char *rl_fsinfo_source(const rl_fsinfo *fs); /* "/dev/loop3"; "" when unknown */
const char *rl_fsinfo_target(const rl_fsinfo *fs); /* the mount point; "" when unknown */
uint64_t rl_fsinfo_dev(const rl_fsinfo *fs);       /* st_dev of the probed directory */
rl_reflink rl_fsinfo_reflink(const rl_fsinfo *fs);
const char *rl_reflink_to_string(rl_reflink r);

/*
 * Whether the filesystem keeps small files inside its metadata, where a reflink cannot share
 * them, so that every clone copies them: btrfs unless mounted with max_inline=0 (by default
 * it inlines files up to 2048 bytes: about 12 MiB of a Debian rootfs). Files inlined before
 * the option was set stay inline.
 */
bool rl_fsinfo_inlines_small_files(const rl_fsinfo *fs);

/* Whether copy_file_range has not (yet) proved unavailable on this filesystem. */
bool rl_fsinfo_copy_range(const rl_fsinfo *fs);
