/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * entry.c owns writing the metadata of one entry addressed by fd or by (dir fd, name):
 * what the tree cloner and the layer applier share.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "entry.h"
#include "util.h"

/* xattr calls on a name that must not be followed or opened: through /proc/self/fd/DIR/NAME,
 * whose last component the l*xattr calls do not follow. */
#define REF_PROC_PATH(r, p)                                                                        \
        do {                                                                                       \
                if (rl_proc_fd_path(p, sizeof(p), (r)->dir_fd, (r)->name) < 0) {                   \
                        errno = ENAMETOOLONG;                                                      \
                        return -1;                                                                 \
                }                                                                                  \
        } while (0)

ssize_t rl_ref_listxattr(const rl_ref *r, char *buf, size_t size)
{
        char p[RL_PROC_FD_PATH_MAX];
        if (r->fd >= 0)
                return flistxattr(r->fd, buf, size);
        REF_PROC_PATH(r, p);
        return llistxattr(p, buf, size);
}

ssize_t rl_ref_getxattr(const rl_ref *r, const char *name, void *buf, size_t size)
{
        char p[RL_PROC_FD_PATH_MAX];
        if (r->fd >= 0)
                return fgetxattr(r->fd, name, buf, size);
        REF_PROC_PATH(r, p);
        return lgetxattr(p, name, buf, size);
}

int rl_ref_setxattr(const rl_ref *r, const char *name, const void *buf, size_t size)
{
        char p[RL_PROC_FD_PATH_MAX];
        if (r->fd >= 0)
                return fsetxattr(r->fd, name, buf, size, 0);
        REF_PROC_PATH(r, p);
        return lsetxattr(p, name, buf, size, 0);
}

int rl_ref_chown(const rl_ref *r, uid_t uid, gid_t gid, const char *path, rl_error *err)
{
        int q = r->fd >= 0 ? fchown(r->fd, uid, gid)
                           : fchownat(r->dir_fd, r->name, uid, gid, AT_SYMLINK_NOFOLLOW);
        if (q < 0)
                return rl_error_set(err, -errno, "'%s': chown to %u:%u", path, (unsigned)uid,
                                    (unsigned)gid);
        return 0;
}

int rl_ref_chmod(const rl_ref *r, mode_t mode, const char *path, rl_error *err)
{
        int q = r->fd >= 0 ? fchmod(r->fd, mode)
                           : fchmodat(r->dir_fd, r->name, mode, AT_SYMLINK_NOFOLLOW);
        if (q < 0)
                return rl_error_set(err, -errno, "'%s': chmod %04o", path, (unsigned)mode);
        return 0;
}

int rl_ref_utimens(const rl_ref *r, const struct timespec ts[2], const char *path,
                   rl_error *err)
{
        int q = r->fd >= 0 ? futimens(r->fd, ts)
                           : utimensat(r->dir_fd, r->name, ts, AT_SYMLINK_NOFOLLOW);
        if (q < 0)
                return rl_error_set(err, -errno, "'%s': set times", path);
        return 0;
}

int rl_map_owner(const rl_idmap *uids, const rl_idmap *gids, bool keep_unmapped, uint32_t uid,
                 uint32_t gid, const char *path, uid_t *ret_uid, gid_t *ret_gid, rl_error *err)
{
        uint32_t u, g;
        if (rl_idmap_map(uids, uid, &u) < 0) {
                if (!keep_unmapped)
                        return rl_error_set(err, -ERANGE, "'%s': uid %u is outside the uid map",
                                            path, uid);
                u = uid;
        }
        if (rl_idmap_map(gids, gid, &g) < 0) {
                if (!keep_unmapped)
                        return rl_error_set(err, -ERANGE, "'%s': gid %u is outside the gid map",
                                            path, gid);
                g = gid;
        }
        *ret_uid = u;
        *ret_gid = g;
        return 0;
}

bool rl_xattr_is_alias(const char *name)
{
        return strcmp(name, "trusted.SGI_ACL_FILE") == 0 ||
               strcmp(name, "trusted.SGI_ACL_DEFAULT") == 0;
}
