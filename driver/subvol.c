/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * subvol.c owns the btrfs subvolume calls (driver/subvol.h).
 */
#include <errno.h>
#include <linux/btrfs.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include "subvol.h"

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
        return mkdirat(dir_fd, name, mode) < 0 ? -errno : 0;
}

int rl_subvol_snapshot(int src_fd, int dir_fd, const char *name)
{
        struct btrfs_ioctl_vol_args_v2 a = { .fd = src_fd };
        int r = put_name(a.name, sizeof(a.name), name);
        if (r < 0)
                return r;
        return ioctl(dir_fd, BTRFS_IOC_SNAP_CREATE_V2, &a) < 0 ? -errno : 0;
}

int rl_subvol_delete(int dir_fd, const char *name)
{
        return name_ioctl(dir_fd, BTRFS_IOC_SNAP_DESTROY, name);
}
