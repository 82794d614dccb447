/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private helpers shared by the driver (and, in-tree, by the daemon and the CLI; this header
 * is never installed): cleanup attributes, errno wrappers, fd-relative path helpers.
 */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

#define RL_EXPORT __attribute__((visibility("default")))

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))
#define _unused_ __attribute__((unused))

static inline void freep(void *p)
{
        free(*(void **)p);
}

static inline void closep(int *fd)
{
        if (*fd >= 0) {
                int saved = errno;
                close(*fd);
                errno = saved;
        }
}

/* Hand a resource over to the caller: return the value and leave the cleanup nothing. */
#define TAKE_GENERIC(var, empty)                                                                   \
        ({                                                                                         \
                __typeof__(var) _taken = (var);                                                    \
                (var) = (empty);                                                                   \
                _taken;                                                                            \
        })
#define TAKE_FD(fd) TAKE_GENERIC(fd, -EBADF)
#define TAKE_PTR(p) TAKE_GENERIC(p, NULL)

/* libc call returning -1 + errno → negative errno; otherwise the call's own value. */
#define RL_NERRNO(expr)                                                                            \
        ({                                                                                         \
                __typeof__(expr) _r = (expr);                                                      \
                _r < 0 ? -errno : _r;                                                              \
        })

/* Thread-safe errno text. */
const char *rl_strerror(int errnum);

/*
 * Open a multi-component relative path strictly beneath dir_fd: no "..", no absolute paths,
 * no symlinks in any component (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
 * RESOLVE_NO_MAGICLINKS; one O_NOFOLLOW component at a time where the kernel lacks openat2).
 * Returns the new fd (O_CLOEXEC is always added) or a negative errno.
 */
int rl_openat_beneath(int dir_fd, const char *path, int flags, mode_t mode);

/* As rl_openat_beneath, but a symlink that stays beneath dir_fd is followed, as a layer's
 * paths may go through one (lib -> usr/lib); one that leads out (or is absolute) fails with
 * -EXDEV, and so does a mount crossing. Where openat2 is missing, the strict walk above
 * refuses every symlink instead (-ELOOP). */
int rl_openat_beneath_follow(int dir_fd, const char *path, int flags, mode_t mode);

/*
 * "/proc/self/fd/DIRFD/NAME", for the calls that have no fd form and must not follow
 * NAME (l*xattr on a symlink or a device node). NAME must be one component.
 */
#define RL_PROC_FD_PATH_MAX (sizeof("/proc/self/fd/") + 12 + 256)
int rl_proc_fd_path(char *buf, size_t size, int dir_fd, const char *name);

/*
 * Write all of buf to fd, through EINTR and short writes. rl_write_all uses write(2): for
 * files and pipes. rl_send_all is for a socket: it sends with MSG_NOSIGNAL, so that a peer
 * that went away is -EPIPE, not a SIGPIPE that kills a library's user; handed an fd that is
 * not a socket, it falls back to write(2).
 */
int rl_write_all(int fd, const void *buf, size_t len);
int rl_send_all(int fd, const void *buf, size_t len);

/*
 * openat(dir_fd, name, flags | O_CLOEXEC) with O_NOATIME, so that reading a tree does not
 * change it (under relatime a read refreshes an atime older than a day). Only the owner or
 * CAP_FOWNER may ask for O_NOATIME; anyone else opens the ordinary way. Returns the fd or a
 * negative errno.
 */
int rl_open_noatime(int dir_fd, const char *name, int flags);

/*
 * Make room for `need` elements of `size` bytes in an array of capacity *cap (doubling, so
 * appending one at a time stays linear). Returns the array, moved or not, with *cap updated;
 * NULL when memory is short, the old array still valid. RL_GROW(array, cap, need) does it in
 * place and says whether it worked.
 */
void *rl_grow_array(void *array, size_t *cap, size_t need, size_t size);
#define RL_GROW(array, cap, need)                                                                  \
        ({                                                                                         \
                void *_g = rl_grow_array((array), &(cap), (need), sizeof(*(array)));               \
                if (_g)                                                                            \
                        (array) = _g;                                                              \
                _g != NULL;                                                                        \
        })

/* Read size bytes at off, through EINTR and short reads; fewer only at the end of the file.
 * Returns the bytes read or a negative errno. */
ssize_t rl_pread_all(int fd, void *buf, size_t size, uint64_t off);

/* pwrite all of buf at off, through EINTR and short writes: 0 or -errno (-EIO: nothing
 * written, no error). */
int rl_pwrite_all(int fd, const void *buf, size_t size, uint64_t off);

/* Monotonic clock in nanoseconds. */
uint64_t rl_now_ns(void);

/* Number of online CPUs, at least 1. */
unsigned rl_online_cpus(void);

/* The identity new files get: the fsuid and fsgid (the euid and egid, unless a thread took
 * on another identity with setfsuid, as reflayerd does when it acts for a client). */
uid_t rl_fsuid(void);
gid_t rl_fsgid(void);
