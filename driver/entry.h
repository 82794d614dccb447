/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Metadata of one entry being written (tree.c clones, layer.c applies): the entry is an
 * open fd, or (directory fd, name) for entries that must not be opened (symlinks, devices,
 * fifos, sockets), never a path that is resolved again.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <reflayer/error.h>
#include <reflayer/idmap.h>

/* Buffers for one call each, never a size probe: a whole xattr name list (XATTR_LIST_MAX),
 * one value (XATTR_SIZE_MAX) plus room for a v2 capability grown into v3. */
#define RL_XATTR_LIST_BUF (64u * 1024)
#define RL_XATTR_VALUE_BUF (64u * 1024 + 64)

typedef struct rl_ref {
        int fd;     /* >= 0: this open entry */
        int dir_fd; /* else: name in dir_fd, symlinks not followed */
        const char *name;
} rl_ref;

/* The xattr calls on a ref (-1 and errno, as the system calls). */
ssize_t rl_ref_listxattr(const rl_ref *r, char *buf, size_t size);
ssize_t rl_ref_getxattr(const rl_ref *r, const char *name, void *buf, size_t size);
int rl_ref_setxattr(const rl_ref *r, const char *name, const void *buf, size_t size);

/* Owner, mode (not for symlinks), times: errors named after path. */
int rl_ref_chown(const rl_ref *r, uid_t uid, gid_t gid, const char *path, rl_error *err);
int rl_ref_chmod(const rl_ref *r, mode_t mode, const char *path, rl_error *err);
int rl_ref_utimens(const rl_ref *r, const struct timespec ts[2], const char *path,
                   rl_error *err);

/* uid and gid through the maps (NULL: identity); outside them -ERANGE naming path, or kept
 * as they are when keep_unmapped. */
int rl_map_owner(const rl_idmap *uids, const rl_idmap *gids, bool keep_unmapped, uint32_t uid,
                 uint32_t gid, const char *path, uid_t *ret_uid, gid_t *ret_gid, rl_error *err);

/*
 * XFS also lists its on-disk ACLs as trusted.SGI_ACL_FILE / trusted.SGI_ACL_DEFAULT (to
 * CAP_SYS_ADMIN): the same ACLs as system.posix_acl_*, in XFS's own big-endian layout.
 * Copying them would set each ACL twice, the second time with unshifted ids, and plant XFS's
 * layout on other filesystems. libattr's xattr.conf skips them for the same reason.
 */
bool rl_xattr_is_alias(const char *name);
