/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * image.c owns reflayerd --image: making the XFS image file, attaching it to a loop device,
 * mounting it at the store's root, and unmounting it at exit (daemon/image.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libmount.h>
#include <limits.h>
#include <linux/loop.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "image.h"
#include "log.h"
#include "util.h"

extern char **environ;

struct image {
        char *path; /* the image file, absolute */
        char *root; /* where it is mounted, absolute */
};

static void mnt_unref_tablep(struct libmnt_table **tb)
{
        mnt_unref_table(*tb);
}

static void closedirp(DIR **d)
{
        if (*d)
                closedir(*d);
}

/* Human-readable size ("512 MiB") for log lines. */
static const char *fmt_size(uint64_t bytes, char buf[static 32])
{
        static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
        unsigned u = 0;
        while (u + 1 < ELEMENTSOF(units) && bytes >= 1024 && bytes % 1024 == 0) {
                bytes /= 1024;
                u++;
        }
        snprintf(buf, 32, "%" PRIu64 " %s", bytes, units[u]);
        return buf;
}

int image_parse_size(const char *s, uint64_t *ret, rl_error *err)
{
        char *end = NULL;
        unsigned shift = 0;

        errno = 0;
        uint64_t v = strtoull(s, &end, 10);
        if (end == s || *s == '-' || errno)
                return rl_error_set(err, -EINVAL, "--image-size '%s': not a size (e.g. 16G)", s);
        switch (*end) {
        case '\0':
                break;
        case 'K':
        case 'k':
                shift = 10;
                break;
        case 'M':
        case 'm':
                shift = 20;
                break;
        case 'G':
        case 'g':
                shift = 30;
                break;
        case 'T':
        case 't':
                shift = 40;
                break;
        default:
                end = NULL;
                break;
        }
        if (!end || (shift && *++end) || (!shift && *end))
                return rl_error_set(err, -EINVAL,
                                    "--image-size '%s': not a size (bytes, or a number with K, "
                                    "M, G or T)", s);
        if (v > (UINT64_MAX >> shift) || (v << shift) > (UINT64_C(1) << 62))
                return rl_error_set(err, -EINVAL, "--image-size '%s': too large", s);
        v <<= shift;
        if (v < IMAGE_SIZE_MIN)
                return rl_error_set(err, -EINVAL,
                                    "--image-size '%s': XFS needs at least 300M", s);
        *ret = v;
        return 0;
}

/*
 * mkfs.xfs -q -m reflink=1 FILE, its output captured for the message. The daemon blocks its
 * signals (they are read from a signalfd); the child must not inherit that mask. mkfs.xfs
 * lives in /usr/sbin, which a daemon's PATH may lack (or it may have none): look there too.
 */
static int run_mkfs(const char *file, rl_error *err)
{
        char *argv[] = { "mkfs.xfs", "-q", "-m", "reflink=1", (char *)file, NULL };
        int pipefd[2];
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        sigset_t none, all;
        pid_t pid;
        int status;

        if (pipe2(pipefd, O_CLOEXEC) < 0)
                return rl_error_set(err, -errno, "mkfs.xfs '%s': pipe", file);
        sigemptyset(&none);
        sigfillset(&all);
        posix_spawnattr_init(&attr);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &all);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
        int r = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
        if (r == ENOENT)
                r = posix_spawn(&pid, "/usr/sbin/mkfs.xfs", &fa, &attr, argv, environ);
        if (r == ENOENT)
                r = posix_spawn(&pid, "/sbin/mkfs.xfs", &fa, &attr, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        close(pipefd[1]);
        if (r != 0) {
                close(pipefd[0]);
                return rl_error_set(err, -r, "mkfs.xfs '%s' (apt-get install xfsprogs)", file);
        }

        char out[1024];
        size_t used = 0;
        ssize_t n;
        while ((n = read(pipefd[0], out + used, sizeof(out) - 1 - used)) != 0) {
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        break;
                used += (size_t)n;
                if (used == sizeof(out) - 1) { /* keep draining, so mkfs never blocks */
                        char sink[4096];
                        while ((n = read(pipefd[0], sink, sizeof(sink))) > 0 ||
                               (n < 0 && errno == EINTR))
                                ;
                        break;
                }
        }
        close(pipefd[0]);
        out[used] = '\0';
        while (used > 0 && (out[used - 1] == '\n' || out[used - 1] == ' '))
                out[--used] = '\0';
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return rl_error_set(err, -errno, "mkfs.xfs '%s': wait", file);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
                return 0;
        return rl_error_set(err, -EIO, "mkfs.xfs -q -m reflink=1 '%s' %s %d: %s", file,
                            WIFEXITED(status) ? "exited with" : "killed by signal",
                            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                            used ? out : "(no output)");
}

/*
 * Create FILE sparse and put an XFS on it. O_EXCL: two daemons racing to create one image
 * must not both mkfs it. A file that did not become an XFS is removed, so that a retry starts
 * from nothing instead of refusing a half-made image.
 */
static int create_image(const char *file, uint64_t size, rl_error *err)
{
        _cleanup_close_ int fd = open(file, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                                      0600);
        char sz[32];
        int r;

        if (fd < 0)
                return rl_error_set(err, -errno, "image '%s': create", file);
        if (ftruncate(fd, (off_t)size) < 0) {
                r = rl_error_set(err, -errno, "image '%s': make it %s", file, fmt_size(size, sz));
                goto out_remove;
        }
        closep(&fd);
        fd = -EBADF;
        log_info("image %s: made a sparse %s file; mkfs.xfs -m reflink=1 on it", file,
                 fmt_size(size, sz));
        r = run_mkfs(file, err);
        if (r < 0)
                goto out_remove;
        return 0;

out_remove:
        (void)unlink(file);
        return r;
}

/* Does the file hold an XFS? Its superblock starts with the magic "XFSB". */
static int check_xfs(int fd, const char *file, rl_error *err)
{
        char magic[4];
        ssize_t n = pread(fd, magic, sizeof(magic), 0);
        if (n < 0)
                return rl_error_set(err, -errno, "image '%s': read", file);
        if (n != sizeof(magic) || memcmp(magic, "XFSB", 4) != 0)
                return rl_error_set(err, -EINVAL,
                                    "image '%s' holds no XFS filesystem (an interrupted mkfs? "
                                    "remove the file and reflayerd makes a new one)", file);
        return 0;
}

/* Is the open block device a loop device backed by the inode st? */
static bool loop_backs(int dev_fd, const struct stat *st)
{
        struct loop_info64 info;
        if (ioctl(dev_fd, LOOP_GET_STATUS64, &info) < 0)
                return false; /* ENXIO: not bound; ENOTTY: not a loop device */
        return info.lo_device == (uint64_t)st->st_dev && info.lo_inode == (uint64_t)st->st_ino;
}

/*
 * A loop device the image is already attached to (a mount of it left behind elsewhere, say
 * by bind mounts that outlived our unmount). Mounting the image through a second device
 * would put two XFS instances on one file; XFS refuses a second mount of one UUID anyway.
 * Returns an fd of the device, -ENOENT when there is none.
 */
static int find_loop(const struct stat *st, char dev[static 32])
{
        _cleanup_(closedirp) DIR *d = opendir("/sys/block");
        struct dirent *de;
        unsigned n;
        char tail;

        if (!d)
                return -ENOENT;
        while ((de = readdir(d))) {
                if (sscanf(de->d_name, "loop%u%c", &n, &tail) != 1)
                        continue;
                snprintf(dev, 32, "/dev/loop%u", n);
                _cleanup_close_ int fd = open(dev, O_RDWR | O_CLOEXEC);
                if (fd >= 0 && loop_backs(fd, st))
                        return TAKE_FD(fd);
        }
        return -ENOENT;
}

/*
 * Attach the image to a free loop device: LOOP_CTL_GET_FREE, then LOOP_CONFIGURE in one
 * step. Another process may take the device between the two calls (EBUSY): ask again.
 * LO_FLAGS_AUTOCLEAR detaches the device at its last close, i.e. when the returned fd is
 * closed if the mount failed, or when the filesystem is unmounted.
 */
static int loop_attach(int image_fd, const char *file, char dev[static 32], rl_error *err)
{
        _cleanup_close_ int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
        struct loop_config cfg = { .fd = (uint32_t)image_fd };

        if (ctl < 0)
                return rl_error_set(err, -errno, "image '%s': open /dev/loop-control", file);
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        snprintf((char *)cfg.info.lo_file_name, sizeof(cfg.info.lo_file_name), "%s", file);
        for (int attempt = 0; attempt < 64; attempt++) {
                int n = ioctl(ctl, LOOP_CTL_GET_FREE);
                if (n < 0)
                        return rl_error_set(err, -errno, "image '%s': find a free loop device",
                                            file);
                snprintf(dev, 32, "/dev/loop%d", n);
                _cleanup_close_ int fd = open(dev, O_RDWR | O_CLOEXEC);
                if (fd < 0)
                        return rl_error_set(err, -errno, "image '%s': open %s", file, dev);
                if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0)
                        return TAKE_FD(fd);
                if (errno != EBUSY)
                        return rl_error_set(err, -errno, "image '%s': attach to %s", file, dev);
        }
        return rl_error_set(err, -EBUSY, "image '%s': every free loop device was taken first",
                            file);
}

static struct libmnt_fs *find_mount_id(struct libmnt_table *tb, uint64_t id)
{
        struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
        struct libmnt_fs *m = NULL, *found = NULL;
        while (!found && it && mnt_table_next_fs(tb, it, &m) == 0)
                if ((uint64_t)mnt_fs_get_id(m) == id)
                        found = m;
        mnt_free_iter(it);
        return found;
}

/*
 * What is at root: 0 a directory fit to mount on (missing ones are made, 0711 as the store
 * makes its root), 1 a mount of exactly the image img (NULL: not made yet), else an error
 * saying why not.
 */
static int check_root(const char *root, const struct stat *img, rl_error *err)
{
        if (mkdir(root, 0711) < 0 && errno != EEXIST)
                return rl_error_set(err, -errno, "--root '%s': create", root);
        _cleanup_close_ int fd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return rl_error_set(err, -errno, "--root '%s': open", root);
        _cleanup_free_ char *canon = realpath(root, NULL);
        if (!canon)
                return rl_error_set(err, -errno, "--root '%s': resolve", root);

        /* The mount the directory lives on; root is a mount point if that mount's target is
         * root itself. Found by mount id, not by path, so an overmounted path cannot fool it. */
        struct statx stx;
        if (statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &stx) < 0)
                return rl_error_set(err, -errno, "--root '%s': statx", root);
        _cleanup_(mnt_unref_tablep) struct libmnt_table *tb =
                mnt_new_table_from_file("/proc/self/mountinfo");
        if (!tb)
                return rl_error_set(err, -EIO, "--root '%s': read /proc/self/mountinfo", root);
        struct libmnt_fs *m = (stx.stx_mask & STATX_MNT_ID)
                                      ? find_mount_id(tb, stx.stx_mnt_id)
                                      : mnt_table_find_target(tb, canon, MNT_ITER_BACKWARD);
        const char *target = m ? mnt_fs_get_target(m) : NULL;
        if (!target || strcmp(target, canon) != 0) {
                _cleanup_(closedirp) DIR *d = fdopendir(fd);
                if (!d)
                        return rl_error_set(err, -errno, "--root '%s': read", root);
                fd = -EBADF; /* the DIR owns it now */
                struct dirent *de;
                while ((de = readdir(d)))
                        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, ".."))
                                return rl_error_set(err, -EEXIST,
                                                    "--root '%s' is a non-empty directory (it "
                                                    "holds '%s'), not the image's mount: "
                                                    "refusing to mount the image over it; "
                                                    "choose an empty or new directory",
                                                    canon, de->d_name);
                return 0;
        }

        /* A mount point: reuse it only if it is the image's own filesystem, whole. */
        const char *src = mnt_fs_get_srcpath(m), *fstype = mnt_fs_get_fstype(m);
        const char *fsroot = mnt_fs_get_root(m);
        _cleanup_close_ int dev_fd = src ? open(src, O_RDONLY | O_CLOEXEC) : -EBADF;
        struct stat dst, rst;
        if (dev_fd >= 0 && fstat(dev_fd, &dst) == 0 && S_ISBLK(dst.st_mode) &&
            fstat(fd, &rst) == 0 && dst.st_rdev == rst.st_dev && img && loop_backs(dev_fd, img) &&
            fsroot && strcmp(fsroot, "/") == 0)
                return 1;
        return rl_error_set(err, -EEXIST,
                            "--root '%s' is already a mount point of %s (%s), not of this image: "
                            "refusing to mount the image over it",
                            canon, src ? src : mnt_fs_get_source(m), fstype ? fstype : "?");
}

int image_open(const char *file, uint64_t size, const char *root, image **ret, rl_error *err)
{
        _cleanup_free_ image *img = calloc(1, sizeof(*img));
        _cleanup_close_ int fd = -EBADF, loop_fd = -EBADF;
        char dev[32], sz[32], sz2[32];
        bool fresh = false;
        struct stat st;
        int r;

        if (!img)
                return rl_error_set(err, -ENOMEM, "image '%s'", file);
        fd = open(file, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
                if (!size)
                        return rl_error_set(err, -ENOENT,
                                            "image '%s' does not exist: give --image-size SIZE "
                                            "(e.g. 16G; sparse) to create it", file);
                /* A root we would refuse anyway is refused before making an image for it. */
                r = check_root(root, NULL, err);
                if (r < 0)
                        return r;
                r = create_image(file, size, err);
                if (r < 0)
                        return r;
                fresh = true;
                fd = open(file, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        }
        if (fd < 0)
                return rl_error_set(err, -errno, "image '%s': open", file);
        if (fstat(fd, &st) < 0)
                return rl_error_set(err, -errno, "image '%s': stat", file);
        if (!S_ISREG(st.st_mode))
                return rl_error_set(err, -EINVAL, "image '%s': not a regular file", file);
        if (!fresh && size && (uint64_t)st.st_size != size)
                log_info("image %s is %s: kept as it is (--image-size %s is only for creating "
                         "it; reflayerd never grows or shrinks an image)", file,
                         fmt_size((uint64_t)st.st_size, sz), fmt_size(size, sz2));
        r = check_xfs(fd, file, err);
        if (r < 0)
                return r;

        _cleanup_free_ char *path = realpath(file, NULL);
        if (!path)
                return rl_error_set(err, -errno, "image '%s': resolve", file);
        r = fresh ? 0 : check_root(root, &st, err);
        if (r < 0)
                return r;
        _cleanup_free_ char *canon_root = realpath(root, NULL);
        if (!canon_root)
                return rl_error_set(err, -errno, "--root '%s': resolve", root);
        if (r == 1) {
                log_info("image %s: already mounted at %s, using that mount", path, canon_root);
        } else {
                loop_fd = find_loop(&st, dev);
                if (loop_fd >= 0) {
                        log_info("image %s: already attached to %s, mounting that device", path,
                                 dev);
                } else {
                        loop_fd = loop_attach(fd, path, dev, err);
                        if (loop_fd < 0)
                                return loop_fd;
                }
                if (mount(dev, canon_root, "xfs", 0, NULL) < 0)
                        return rl_error_set(err, -errno, "image '%s': mount %s on '%s' as xfs",
                                            path, dev, canon_root);
                /* A new XFS's root is 0755; the store's root is 0711 (entries reachable
                 * by full path only), as rl_store_open makes it. */
                if (fresh) {
                        _cleanup_close_ int rfd = open(canon_root, O_RDONLY | O_DIRECTORY |
                                                                   O_NOFOLLOW | O_CLOEXEC);
                        if (rfd < 0 || fchmod(rfd, 0711) < 0)
                                log_warning("image %s: chmod 0711 %s: %s", path, canon_root,
                                            rl_strerror(errno));
                }
                log_info("image %s (%s) mounted at %s through %s", path,
                         fmt_size((uint64_t)st.st_size, sz), canon_root, dev);
        }
        img->path = TAKE_PTR(path);
        img->root = TAKE_PTR(canon_root);
        *ret = TAKE_PTR(img);
        return 0;
}

const char *image_path(const image *img)
{
        return img->path;
}

image *image_close(image *img)
{
        if (!img)
                return NULL;
        if (umount2(img->root, UMOUNT_NOFOLLOW) == 0)
                log_info("image %s: unmounted from %s", img->path, img->root);
        else if (errno == EBUSY)
                log_warning("image %s: %s is still in use (a process inside it?): left "
                            "mounted; the next start uses it as it is", img->path, img->root);
        else
                log_warning("image %s: unmount %s: %s: left mounted", img->path, img->root,
                            rl_strerror(errno));
        free(img->path);
        free(img->root);
        free(img);
        return NULL;
}

void image_closep(image **img)
{
        *img = image_close(*img);
}
