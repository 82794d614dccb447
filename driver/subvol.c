/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * subvol.c owns the btrfs subvolume calls (driver/subvol.h).
 */
#include <endian.h>
#include <errno.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include "subvol.h"
#include "util.h"

bool rl_subvol_supported(int fd)
{
        struct statfs sf;
        return fstatfs(fd, &sf) == 0 && sf.f_type == BTRFS_SUPER_MAGIC;
}

bool rl_subvol_is_root(int fd)
{
        struct stat st;
        return fstat(fd, &st) == 0 && S_ISDIR(st.st_mode) && st.st_ino == RL_SUBVOL_ROOT_INO &&
               rl_subvol_supported(fd);
}

/* The name into the ioctl's fixed buffer: one component that fits, or -EINVAL. */
static int put_name(char *buf, size_t size, const char *name)
{
        size_t len = strlen(name);
        if (!len || len >= size || strchr(name, '/'))
                return -EINVAL;
        memcpy(buf, name, len + 1);
        return 0;
}

/* An ioctl that names one entry of dir_fd in struct btrfs_ioctl_vol_args. */
static int name_ioctl(int dir_fd, unsigned long request, const char *name)
{
        struct btrfs_ioctl_vol_args a = {};
        int r = put_name(a.name, sizeof(a.name), name);
        if (r < 0)
                return r;
        return ioctl(dir_fd, request, &a) < 0 ? -errno : 0;
}

int rl_subvol_create(int dir_fd, const char *name)
{
        return name_ioctl(dir_fd, BTRFS_IOC_SUBVOL_CREATE, name);
}

int rl_subvol_mkdir(int dir_fd, const char *name, mode_t mode)
{
        if (rl_subvol_supported(dir_fd) && rl_subvol_create(dir_fd, name) == 0)
                return 0;
        return RL_NERRNO(mkdirat(dir_fd, name, mode));
}

int rl_subvol_snapshot(int src_fd, int dir_fd, const char *name)
{
        struct btrfs_ioctl_vol_args_v2 a = { .fd = src_fd };
        int r = put_name(a.name, sizeof(a.name), name);
        if (r < 0)
                return r;
        return ioctl(dir_fd, BTRFS_IOC_SNAP_CREATE_V2, &a) < 0 ? -errno : 0;
}

void rl_subvol_refs_free(rl_subvol_ref *refs, size_t n)
{
        for (size_t i = 0; i < n; i++)
                free(refs[i].path);
        free(refs);
}

int rl_subvol_nested(int fd, rl_subvol_ref **ret, size_t *ret_n)
{
        /* 4 KiB each: off the stack, which may be a worker thread's. */
        _cleanup_free_ struct btrfs_ioctl_get_subvol_rootref_args *refs = calloc(1, sizeof(*refs));
        _cleanup_free_ struct btrfs_ioctl_ino_lookup_user_args *look = malloc(sizeof(*look));
        rl_subvol_ref *out = NULL;
        size_t n = 0;
        int r = 0;

        if (!refs || !look)
                return -ENOMEM;
        /* The ioctls answer for the subvolume fd is in, paths from fd: only its root will do. */
        if (!rl_subvol_is_root(fd))
                return -EINVAL;
        for (bool more = true; more && r == 0;) {
                /* 255 references a call; EOVERFLOW says there are more, and min_treeid, which
                 * the kernel moved past the last one returned, is where the next call goes on. */
                more = false;
                if (ioctl(fd, BTRFS_IOC_GET_SUBVOL_ROOTREF, refs) < 0) {
                        if (errno != EOVERFLOW) {
                                r = -errno;
                                break;
                        }
                        more = true;
                }
                for (unsigned i = 0; i < refs->num_items && r == 0; i++) {
                        /* Its directory's path from fd (empty, or ending in '/') and its name. */
                        *look = (struct btrfs_ioctl_ino_lookup_user_args){
                                .dirid = refs->rootref[i].dirid,
                                .treeid = refs->rootref[i].treeid,
                        };
                        rl_subvol_ref *grown = realloc(out, (n + 1) * sizeof(*out));
                        if (!grown) {
                                r = -ENOMEM;
                                break;
                        }
                        out = grown;
                        out[n].id = refs->rootref[i].treeid;
                        if (ioctl(fd, BTRFS_IOC_INO_LOOKUP_USER, look) < 0)
                                r = -errno;
                        else if (asprintf(&out[n].path, "%s%s", look->path, look->name) < 0)
                                r = -ENOMEM;
                        else
                                n++;
                }
        }
        if (r < 0) {
                rl_subvol_refs_free(out, n);
                return r;
        }
        *ret = out;
        *ret_n = n;
        return 0;
}

/* The subvolume item of fd's subvolume (id, UUIDs, when it was made): malloc'd, or NULL
 * and errno. */
static struct btrfs_ioctl_get_subvol_info_args *subvol_info(int fd)
{
        struct btrfs_ioctl_get_subvol_info_args *info = calloc(1, sizeof(*info));
        if (info && ioctl(fd, BTRFS_IOC_GET_SUBVOL_INFO, info) < 0) {
                int saved = errno;
                free(info);
                errno = saved;
                return NULL;
        }
        return info;
}

int rl_subvol_id(int fd, uint64_t *ret)
{
        _cleanup_free_ struct btrfs_ioctl_get_subvol_info_args *info = subvol_info(fd);
        if (!info)
                return -errno;
        *ret = info->treeid;
        return 0;
}

/* Does a subvolume with this UUID exist? 1, 0, or -errno (-EPERM: CAP_SYS_ADMIN needed). */
static int uuid_exists(int fd, const uint8_t uuid[BTRFS_UUID_SIZE])
{
        _cleanup_free_ struct btrfs_ioctl_search_args *a = calloc(1, sizeof(*a));
        uint64_t lo, hi;

        if (!a)
                return -ENOMEM;
        /* The UUID tree keys a subvolume's UUID as (first 8 bytes, type, last 8 bytes),
         * both halves little-endian. */
        memcpy(&lo, uuid, sizeof(lo));
        memcpy(&hi, uuid + sizeof(lo), sizeof(hi));
        a->key = (struct btrfs_ioctl_search_key){
                .tree_id = BTRFS_UUID_TREE_OBJECTID,
                .min_objectid = le64toh(lo),
                .max_objectid = le64toh(lo),
                .min_offset = le64toh(hi),
                .max_offset = le64toh(hi),
                .max_transid = UINT64_MAX,
                .min_type = BTRFS_UUID_KEY_SUBVOL,
                .max_type = BTRFS_UUID_KEY_SUBVOL,
                .nr_items = 1,
        };
        if (ioctl(fd, BTRFS_IOC_TREE_SEARCH, a) < 0)
                return -errno;
        return a->key.nr_items > 0;
}

int rl_subvol_source_time(int fd, struct timespec *ret)
{
        static const uint8_t none[BTRFS_UUID_SIZE];
        /* The root directory's own times are the source's (a snapshot copies its inode);
         * the subvolume's item has when it was made, and of what. */
        _cleanup_free_ struct btrfs_ioctl_get_subvol_info_args *info = subvol_info(fd);

        if (!info)
                return -errno;
        if (!memcmp(info->parent_uuid, none, sizeof(none)))
                return -ENOENT;
        int r = uuid_exists(fd, info->parent_uuid);
        if (r <= 0)
                return r < 0 ? r : -ENOENT;
        *ret = (struct timespec){ .tv_sec = (time_t)info->otime.sec, .tv_nsec = info->otime.nsec };
        return 0;
}

int rl_subvol_delete(int dir_fd, const char *name)
{
        return name_ioctl(dir_fd, BTRFS_IOC_SNAP_DESTROY, name);
}
