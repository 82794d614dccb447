/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * util.c owns the small fd and time helpers that every driver file needs (driver/util.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

const char *rl_strerror(int errnum)
{
        /* strerrordesc_np reads a constant table: thread-safe and locale-free. */
        const char *s = strerrordesc_np(errnum);
        return s ? s : "Unknown error";
}

/* One O_NOFOLLOW component at a time: the fallback for kernels without openat2. */
static int openat_by_component(int dir_fd, const char *path, int flags, mode_t mode)
{
        _cleanup_free_ char *copy = strdup(path);
        _cleanup_close_ int cur = -EBADF;
        char *save = NULL;

        if (!copy)
                return -ENOMEM;

        char *comp = strtok_r(copy, "/", &save);
        if (!comp)
                return -EINVAL;
        for (;;) {
                char *next = strtok_r(NULL, "/", &save);
                int from = cur >= 0 ? cur : dir_fd;

                if (strcmp(comp, "..") == 0)
                        return -EXDEV;
                if (!next) {
                        int fd = RL_NERRNO(openat(from, comp, flags | O_NOFOLLOW | O_CLOEXEC, mode));
                        return fd;
                }
                int fd = RL_NERRNO(
                        openat(from, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
                if (fd < 0)
                        return fd;
                closep(&cur);
                cur = fd;
                comp = next;
        }
}

static int openat_resolve(int dir_fd, const char *path, int flags, mode_t mode,
                          uint64_t resolve)
{
        struct open_how how = {
                .flags = (uint64_t)(flags | O_CLOEXEC),
                .mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
                .resolve = resolve,
        };

        if (path[0] == '/' || path[0] == '\0')
                return -EINVAL;

        int fd = (int)syscall(SYS_openat2, dir_fd, path, &how, sizeof(how));
        if (fd >= 0)
                return fd;
        /* ENOSYS: an old kernel; ENAMETOOLONG: a path past PATH_MAX, which a deep tree has.
         * Fall back to a checked walk, one component at a time, never to plain openat. */
        if (errno != ENOSYS && errno != ENAMETOOLONG)
                return -errno;
        return openat_by_component(dir_fd, path, flags, mode);
}

int rl_openat_beneath(int dir_fd, const char *path, int flags, mode_t mode)
{
        return openat_resolve(dir_fd, path, flags, mode,
                              RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
}

int rl_openat_beneath_follow(int dir_fd, const char *path, int flags, mode_t mode)
{
        return openat_resolve(dir_fd, path, flags, mode,
                              RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV);
}

int rl_proc_fd_path(char *buf, size_t size, int dir_fd, const char *name)
{
        if (strchr(name, '/'))
                return -EINVAL;
        int n = snprintf(buf, size, "/proc/self/fd/%d/%s", dir_fd, name);
        if (n < 0 || (size_t)n >= size)
                return -ENAMETOOLONG;
        return 0;
}

static int write_loop(int fd, const char *p, size_t len, bool sock)
{
        while (len > 0) {
                ssize_t n = sock ? send(fd, p, len, MSG_NOSIGNAL) : write(fd, p, len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == ENOTSOCK && sock) {
                                sock = false;
                                continue;
                        }
                        return -errno;
                }
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

int rl_write_all(int fd, const void *buf, size_t len)
{
        return write_loop(fd, buf, len, false);
}

int rl_send_all(int fd, const void *buf, size_t len)
{
        return write_loop(fd, buf, len, true);
}

void *rl_grow_array(void *array, size_t *cap, size_t need, size_t size)
{
        if (need <= *cap)
                return array;
        size_t n = *cap ? *cap : 16;
        while (n < need)
                n *= 2;
        if (n > SIZE_MAX / size)
                return NULL;
        void *p = realloc(array, n * size);
        if (p)
                *cap = n;
        return p;
}

int rl_pwrite_all(int fd, const void *buf, size_t size, uint64_t off)
{
        for (size_t done = 0; done < size;) {
                ssize_t n = pwrite(fd, (const char *)buf + done, size - done,
                                   (off_t)(off + done));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return n < 0 ? -errno : -EIO;
                done += (size_t)n;
        }
        return 0;
}

ssize_t rl_pread_all(int fd, void *buf, size_t size, uint64_t off)
{
        size_t done = 0;

        while (done < size) {
                ssize_t n = pread(fd, (char *)buf + done, size - done, (off_t)(off + done));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                done += (size_t)n;
        }
        return (ssize_t)done;
}

int rl_open_noatime(int dir_fd, const char *name, int flags)
{
        int fd = openat(dir_fd, name, flags | O_CLOEXEC | O_NOATIME);
        if (fd < 0 && errno == EPERM)
                fd = openat(dir_fd, name, flags | O_CLOEXEC);
        return fd < 0 ? -errno : fd;
}

uint64_t rl_now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

unsigned rl_online_cpus(void)
{
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (unsigned)n : 1;
}

/* setfsuid(-1) changes nothing (-1 is not a valid id) and returns the current fsuid. */
uid_t rl_fsuid(void)
{
        return (uid_t)setfsuid((uid_t)-1);
}

gid_t rl_fsgid(void)
{
        return (gid_t)setfsgid((gid_t)-1);
}
