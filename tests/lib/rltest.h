/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers: real filesystems in a private mount namespace, a tree with every kind of
 * entry, and an attribute-by-attribute tree comparison.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <reflayer/idmap.h>
#include <reflayer/store.h>

typedef enum rlt_fs {
        RLT_XFS,
        RLT_BTRFS,
        RLT_EXT4,
        RLT_TMPFS,
} rlt_fs;

const char *rlt_fs_name(rlt_fs fs);

/*
 * Enter a private mount namespace with a scratch tmpfs (rlt_scratch()) for images and mount
 * points; everything made there vanishes with the test process. Call from .init; failures
 * abort the test loudly.
 */
void rlt_init(void);
/* Unmount what rlt_init and rlt_mkfs made, remove the scratch directory, check no fd leaked. */
void rlt_fini(void);
const char *rlt_scratch(void);

/* Fail the test when the command tool is not in PATH, naming the Debian package that has it. */
void rlt_need_tool(const char *tool, const char *package);

/* Make and mount a filesystem of `size` bytes (0: a default that every type accepts).
 * Returns the mount point (static storage per call: copy it). Fails the test loudly when a
 * tool is missing, naming the package. */
const char *rlt_mkfs(rlt_fs fs, uint64_t size_mb, const char *name);

/* Run argv (argv[0] looked up in PATH), wait; returns the exit status or -errno. With out,
 * stdout and stderr go to that buffer (NUL-terminated). */
int rlt_run(char *const argv[], char *out, size_t out_size);

/* A v2 file capability (cap_net_raw+ep), as setcap writes it for host root; on a symlink
 * too (lsetxattr). */
void rlt_set_cap(const char *path);

/* Build the reference tree under dir/name: every entry kind, modes, owners, times, xattrs,
 * ACLs, a capability, hardlinks, sparse and empty files, odd names. */
void rlt_make_rich_tree(const char *dir, const char *name);

/* Write a file of `size` bytes of a pattern seeded by `seed`. */
void rlt_write_file(const char *path, uint64_t size, unsigned seed);

/*
 * Compare two trees entry by entry: type, mode, owner (a's ids through the maps must give
 * b's), size, content, atime/mtime to the nanosecond, device numbers, link targets, every
 * xattr (ids inside ACLs and capabilities shifted by the maps) and the hardlink structure.
 * Returns true when identical; otherwise false and `why` says where.
 */
bool rlt_tree_equal(const char *a, const char *b, const rl_idmap *uids, const rl_idmap *gids,
                    char *why, size_t why_size);

typedef enum rlt_cmp_flags {
        /* Leave atimes out: a tree from a tool that sets them to the time of its own run
         * (umoci unpack) against one that keeps what the source said. */
        RLT_CMP_NO_ATIME = 1 << 0,
} rlt_cmp_flags;

/* rlt_tree_equal, with the comparison narrowed by flags (rlt_cmp_flags). */
bool rlt_tree_equal_flags(const char *a, const char *b, const rl_idmap *uids,
                          const rl_idmap *gids, unsigned flags, char *why, size_t why_size);

/* Do all extents of the file at path carry FIEMAP_EXTENT_SHARED (and is there at least one)? */
bool rlt_extents_shared(const char *path);

/* Is there an entry in dir whose name starts with prefix? */
bool rlt_dir_has_prefix(const char *dir, const char *prefix);

/* Does dir hold no entry but . and ..? */
bool rlt_dir_is_empty(const char *dir);

/* The first 4 KiB of the file at path (not followed if a symlink) as a string, in a static
 * buffer; NULL when it cannot be read. rlt_read_at: of dir/rel. */
char *rlt_read_file(const char *path);
char *rlt_read_at(const char *dir, const char *rel);

/* Is there an entry (of any kind, a dangling symlink included) at dir/rel? */
bool rlt_exists_at(const char *dir, const char *rel);

/* The tree of snapshot key in s (its mount's source): one of 4 buffers used in turn. */
const char *rlt_store_tree(rl_store *s, const char *key);

/* The committed snapshot "base" in s holding rlt_make_rich_tree's tree (named "t"), with
 * labels (may be NULL); built as the active snapshot "b", which the commit consumes. */
void rlt_store_base(rl_store *s, const rl_label *labels, size_t n);

/* Wait until s's warm pool has at least want ready clones and builds none; fails the test
 * after seconds. Returns the pool's stats then. */
rl_pool_stats rlt_store_pool_wait(rl_store *s, uint64_t want, unsigned seconds);

/* The kernel's boot id (/proc/sys/kernel/random/boot_id) without its newline. */
void rlt_boot_id(char buf[64]);

/* What a reboot does to the store at root (closed): its ephemeral snapshots become another
 * boot's (ephemeral/BOOT renamed to a boot id that is not this one's). */
void rlt_fake_reboot(const char *root);

/* A two-layer OCI image layout at dir/img, tagged t1, made by umoci (an independent tool):
 * layer 1 adds etc/hello, usr/bin/tool, the symlink usr/bin/alias and usr/blob (blob_kib KiB
 * of random data, which makes the layer that large); layer 2 deletes etc/hello and changes
 * usr/bin/tool. */
void rlt_oci_two_layers(const char *dir, unsigned blob_kib);

/* How many entries dir holds, . and .. aside. */
unsigned rlt_dir_count(const char *dir);

/* A content hash of the tree at dir (FNV-1a over each entry's name, mode, a regular file's
 * data and a symlink's target, in name order), leaving out entries named skip (may be NULL)
 * at any depth: equal trees, equal hashes. Owners and times are not in it. */
uint64_t rlt_tree_hash(const char *dir, const char *skip);

/* Install a seccomp filter failing FICLONE with EOPNOTSUPP and, if also_copy_range,
 * copy_file_range with ENOSYS, so the fallback engines run on a reflink filesystem. */
void rlt_block_reflink(bool also_copy_range);
