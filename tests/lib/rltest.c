/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test helpers: filesystems, the reference tree, tree comparison (tests/lib/rltest.h).
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sched.h>
#include <seccomp.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "rltest.h"

extern char **environ;

static char scratch[PATH_MAX];
static int fds_at_init = -1;
static char mounts[16][PATH_MAX];
static int n_mounts;

static int count_fds(void)
{
        DIR *d = opendir("/proc/self/fd");
        int n = 0;
        if (!d)
                return -1;
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

const char *rlt_fs_name(rlt_fs fs)
{
        switch (fs) {
        case RLT_XFS:
                return "xfs";
        case RLT_BTRFS:
                return "btrfs";
        case RLT_EXT4:
                return "ext4";
        case RLT_TMPFS:
                return "tmpfs";
        }
        return "?";
}

void rlt_init(void)
{
        if (geteuid() != 0)
                cr_assert_fail("the tests need root (loop filesystems, chown, mknod): run "
                               "`make check` as root");
        if (unshare(CLONE_NEWNS) < 0)
                cr_assert_fail("unshare(CLONE_NEWNS): %s", strerror(errno));
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
                cr_assert_fail("make / private: %s", strerror(errno));
        const char *tmp = getenv("TMPDIR");
        snprintf(scratch, sizeof(scratch), "%s/rltest-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(scratch))
                cr_assert_fail("mkdtemp %s: %s", scratch, strerror(errno));
        /* Images and mount points live on a tmpfs of this namespace only: when the test
         * process dies, everything it made goes with it (loop devices autoclear). */
        if (mount("rltest", scratch, "tmpfs", 0, "mode=0755,size=8g") < 0)
                cr_assert_fail("mount scratch tmpfs: %s", strerror(errno));
        fds_at_init = count_fds();
}

void rlt_fini(void)
{
        int fds = count_fds();
        for (int i = n_mounts - 1; i >= 0; i--)
                umount2(mounts[i], MNT_DETACH);
        n_mounts = 0;
        if (scratch[0]) {
                umount2(scratch, MNT_DETACH);
                rmdir(scratch);
        }
        cr_expect_eq(fds, fds_at_init, "file descriptors leaked: %d open at the end, %d at the start",
                     fds, fds_at_init);
}

const char *rlt_scratch(void)
{
        return scratch;
}

int rlt_run(char *const argv[], char *out, size_t out_size)
{
        posix_spawn_file_actions_t fa;
        int pipefd[2] = { -1, -1 };
        pid_t pid;
        int status;

        posix_spawn_file_actions_init(&fa);
        if (out) {
                if (pipe2(pipefd, O_CLOEXEC) < 0)
                        return -errno;
                posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
                posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
        } else {
                posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        }
        int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        if (out)
                close(pipefd[1]);
        if (r != 0) {
                if (out)
                        close(pipefd[0]);
                return -r;
        }
        if (out) {
                size_t used = 0;
                ssize_t n;
                while ((n = read(pipefd[0], out + used, out_size - 1 - used)) > 0)
                        used += (size_t)n;
                out[used] = '\0';
                close(pipefd[0]);
        }
        if (waitpid(pid, &status, 0) < 0)
                return -errno;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void rlt_need_tool(const char *tool, const char *package)
{
        char *argv[] = { "sh", "-c", NULL, NULL };
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null", tool);
        argv[2] = cmd;
        if (rlt_run(argv, NULL, 0) != 0)
                cr_assert_fail("%s not found: apt-get install %s (make deps does it)", tool,
                               package);
}

const char *rlt_mkfs(rlt_fs fs, uint64_t size_mb, const char *name)
{
        static char mnt[PATH_MAX];
        char img[PATH_MAX], size_arg[32], out[4096];
        int r;

        cr_assert(n_mounts < (int)(sizeof(mounts) / sizeof(mounts[0])));
        snprintf(mnt, sizeof(mnt), "%s/%s", scratch, name);
        snprintf(img, sizeof(img), "%s/%s.img", scratch, name);
        cr_assert(mkdir(mnt, 0755) == 0, "mkdir %s: %s", mnt, strerror(errno));

        if (fs == RLT_TMPFS) {
                snprintf(size_arg, sizeof(size_arg), "size=%" PRIu64 "m,mode=0755",
                         size_mb ? size_mb : 512);
                cr_assert(mount("tmpfs", mnt, "tmpfs", 0, size_arg) == 0, "mount tmpfs: %s",
                          strerror(errno));
                snprintf(mounts[n_mounts++], PATH_MAX, "%s", mnt);
                return mnt;
        }
        /* XFS wants 300 MB at least; the image is sparse, so size costs nothing. */
        if (!size_mb)
                size_mb = 320;
        int fd = open(img, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        cr_assert(fd >= 0, "create %s: %s", img, strerror(errno));
        cr_assert(ftruncate(fd, (off_t)(size_mb << 20)) == 0);
        close(fd);

        switch (fs) {
        case RLT_XFS: {
                rlt_need_tool("mkfs.xfs", "xfsprogs");
                char *argv[] = { "mkfs.xfs", "-q", "-f", "-m", "reflink=1", img, NULL };
                r = rlt_run(argv, out, sizeof(out));
                break;
        }
        case RLT_BTRFS: {
                rlt_need_tool("mkfs.btrfs", "btrfs-progs");
                char *argv[] = { "mkfs.btrfs", "-q", "-f", img, NULL };
                r = rlt_run(argv, out, sizeof(out));
                break;
        }
        case RLT_EXT4: {
                rlt_need_tool("mkfs.ext4", "e2fsprogs");
                char *argv[] = { "mkfs.ext4", "-q", "-F", img, NULL };
                r = rlt_run(argv, out, sizeof(out));
                break;
        }
        case RLT_TMPFS:
        default:
                r = -EINVAL;
                break;
        }
        cr_assert_eq(r, 0, "mkfs %s (%s) failed: %s", rlt_fs_name(fs), img, out);

        rlt_need_tool("mount", "mount");
        char *argv[] = { "mount", "-o", "loop", img, mnt, NULL };
        r = rlt_run(argv, out, sizeof(out));
        cr_assert_eq(r, 0, "mount -o loop %s %s failed (%d): %s", img, mnt, r, out);
        snprintf(mounts[n_mounts++], PATH_MAX, "%s", mnt);
        /* The loop device keeps the image open; unlinking it now leaves nothing behind. */
        unlink(img);
        return mnt;
}

void rlt_write_file(const char *path, uint64_t size, unsigned seed)
{
        int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
        char buf[65536];
        uint32_t x = seed * 2654435761u + 1;

        cr_assert(fd >= 0, "create %s: %s", path, strerror(errno));
        for (uint64_t done = 0; done < size;) {
                size_t n = size - done > sizeof(buf) ? sizeof(buf) : (size_t)(size - done);
                for (size_t i = 0; i < n; i++) {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        buf[i] = (char)x;
                }
                cr_assert(write(fd, buf, n) == (ssize_t)n, "write %s: %s", path, strerror(errno));
                done += n;
        }
        close(fd);
}

/* --- the reference tree ---------------------------------------------------------------- */

#define ACL_USER_OBJ 0x01
#define ACL_USER 0x02
#define ACL_GROUP_OBJ 0x04
#define ACL_GROUP 0x08
#define ACL_MASK 0x10
#define ACL_OTHER 0x20

static void put_acl(const char *path, const char *name, uint32_t user, uint32_t group)
{
        struct {
                uint32_t version;
                struct {
                        uint16_t tag, perm;
                        uint32_t id;
                } e[6];
        } __attribute__((packed)) acl = {
                htole32(2),
                {
                        { htole16(ACL_USER_OBJ), htole16(6), htole32(UINT32_MAX) },
                        { htole16(ACL_USER), htole16(6), htole32(user) },
                        { htole16(ACL_GROUP_OBJ), htole16(4), htole32(UINT32_MAX) },
                        { htole16(ACL_GROUP), htole16(4), htole32(group) },
                        { htole16(ACL_MASK), htole16(6), htole32(UINT32_MAX) },
                        { htole16(ACL_OTHER), htole16(0), htole32(UINT32_MAX) },
                },
        };
        cr_assert(lsetxattr(path, name, &acl, sizeof(acl), 0) == 0, "set %s on %s: %s", name,
                  path, strerror(errno));
}

static void put_xattr(const char *path, const char *name, const char *value)
{
        cr_assert(lsetxattr(path, name, value, strlen(value), 0) == 0, "set %s on %s: %s", name,
                  path, strerror(errno));
}

static void mk(const char *root, const char *rel, mode_t type_mode, dev_t rdev, uid_t uid,
               gid_t gid)
{
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/%s", root, rel);
        switch (type_mode & S_IFMT) {
        case S_IFDIR:
                cr_assert(mkdir(p, 0700) == 0, "mkdir %s: %s", p, strerror(errno));
                break;
        case S_IFREG:
                rlt_write_file(p, rdev, (unsigned)strlen(rel)); /* rdev: the size here */
                break;
        default:
                cr_assert(mknod(p, type_mode & S_IFMT, rdev) == 0, "mknod %s: %s", p,
                          strerror(errno));
                break;
        }
        cr_assert(lchown(p, uid, gid) == 0, "chown %s: %s", p, strerror(errno));
        cr_assert(chmod(p, type_mode & 07777) == 0, "chmod %s: %s", p, strerror(errno));
}

static void symlink_in(const char *root, const char *rel, const char *target)
{
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/%s", root, rel);
        cr_assert(symlink(target, p) == 0, "symlink %s: %s", p, strerror(errno));
}

/* Times last, children before parents. Old atimes (2023) would be refreshed under relatime
 * by any read without O_NOATIME, so they prove the clone does not read the ordinary way.
 * Symlinks get an atime just ahead of now: readlink has no O_NOATIME and would otherwise
 * refresh it (cp -a does the same). */
static void set_times(int dir_fd, unsigned *k)
{
        DIR *d = fdopendir(dir_fd);
        struct dirent *e;
        cr_assert(d);
        while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                        continue;
                struct stat st;
                cr_assert(fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0);
                if (S_ISDIR(st.st_mode)) {
                        int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC |
                                                                      O_NOATIME);
                        cr_assert(sub >= 0);
                        set_times(sub, k);
                }
                (*k)++;
                struct timespec ts[2] = { { 1700000000 + *k, 123456789 },
                                          { 1600000000 + *k, 987654321 - *k } };
                if (S_ISLNK(st.st_mode))
                        ts[0] = (struct timespec){ time(NULL) + 3600, 555555555 };
                cr_assert(utimensat(dirfd(d), e->d_name, ts, AT_SYMLINK_NOFOLLOW) == 0);
        }
        closedir(d);
}

void rlt_set_cap(const char *path)
{
        struct vfs_cap_data cap = {
                .magic_etc = htole32(VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE),
                .data = { { htole32(1u << CAP_NET_RAW), 0 }, { 0, 0 } },
        };
        cr_assert(lsetxattr(path, "security.capability", &cap, XATTR_CAPS_SZ_2, 0) == 0,
                  "setcap %s: %s", path, strerror(errno));
}

void rlt_make_rich_tree(const char *dir, const char *name)
{
        char root[PATH_MAX], p[PATH_MAX];
        snprintf(root, sizeof(root), "%s/%s", dir, name);
        cr_assert(mkdir(root, 0755) == 0, "mkdir %s: %s", root, strerror(errno));

        mk(root, "bin", S_IFDIR | 0755, 0, 0, 0);
        mk(root, "bin/ping", S_IFREG | 0755, 70000, 0, 0);
        mk(root, "bin/su", S_IFREG | 04755, 30000, 0, 0);
        mk(root, "bin/wall", S_IFREG | 02755, 12000, 0, 5);
        mk(root, "etc", S_IFDIR | 0755, 0, 0, 0);
        mk(root, "etc/passwd", S_IFREG | 0644, 1200, 0, 0);
        mk(root, "etc/shadow", S_IFREG | 0640, 900, 0, 42);
        symlink_in(root, "etc/link", "passwd");
        symlink_in(root, "etc/abs", "/etc/passwd");
        symlink_in(root, "etc/dangling", "no/such/file");
        mk(root, "tmp", S_IFDIR | 01777, 0, 0, 0);
        mk(root, "home", S_IFDIR | 0755, 0, 0, 0);
        mk(root, "home/user", S_IFDIR | 0750, 0, 1000, 1000);
        mk(root, "home/user/notes.txt", S_IFREG | 0640, 5000, 1000, 1000);
        mk(root, "home/user/shared", S_IFDIR | 02770, 0, 1000, 100);
        mk(root, "data", S_IFDIR | 0755, 0, 0, 0);
        mk(root, "data/big", S_IFREG | 0644, 3 << 20, 0, 0);
        mk(root, "data/empty", S_IFREG | 0600, 0, 0, 0);
        mk(root, "data/odd-size", S_IFREG | 0644, 4097, 0, 0);
        mk(root, "dev", S_IFDIR | 0755, 0, 0, 0);
        mk(root, "dev/fifo", S_IFIFO | 0620, 0, 0, 5);
        mk(root, "dev/sock", S_IFSOCK | 0755, 0, 0, 0);
        mk(root, "dev/null", S_IFCHR | 0666, makedev(1, 3), 0, 0);
        mk(root, "dev/loop200", S_IFBLK | 0660, makedev(7, 200), 0, 6);
        mk(root, "names", S_IFDIR | 0755, 0, 0, 0);
        mk(root, "names/with space", S_IFREG | 0644, 10, 0, 0);
        mk(root, "names/new\nline", S_IFREG | 0644, 11, 0, 0);
        mk(root, "names/ünïcødé-名前",
           S_IFREG | 0644, 12, 0, 0);
        mk(root, "names/-dash", S_IFREG | 0644, 13, 0, 0);
        mk(root, "names/.hidden", S_IFREG | 0644, 14, 0, 0);
        char longname[256];
        memset(longname, 'n', 255);
        longname[255] = '\0';
        snprintf(p, sizeof(p), "names/%s", longname);
        mk(root, p, S_IFREG | 0644, 15, 0, 0);
        mk(root, "empty", S_IFDIR | 0555, 0, 0, 0);
        mk(root, "ro", S_IFDIR | 0755, 0, 0, 0);
        mk(root, "ro/file", S_IFREG | 0444, 100, 0, 0);

        /* Sparse: 64 KiB of data at 0 and at 3 MiB, a hole between, a hole at the end. */
        snprintf(p, sizeof(p), "%s/data/sparse", root);
        int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        char block[65536];
        memset(block, 'S', sizeof(block));
        cr_assert(fd >= 0);
        cr_assert(pwrite(fd, block, sizeof(block), 0) == (ssize_t)sizeof(block));
        cr_assert(pwrite(fd, block, sizeof(block), 3 << 20) == (ssize_t)sizeof(block));
        cr_assert(ftruncate(fd, 5 << 20) == 0);
        close(fd);

        /* Hardlinks: three names of data/big in three directories. */
        char a[PATH_MAX], b[PATH_MAX];
        snprintf(a, sizeof(a), "%s/data/big", root);
        snprintf(b, sizeof(b), "%s/bin/big-link", root);
        cr_assert(link(a, b) == 0);
        snprintf(b, sizeof(b), "%s/home/user/big-link2", root);
        cr_assert(link(a, b) == 0);

        /* xattrs: user., trusted., security.capability (v2, cap_net_raw), ACLs. */
        snprintf(p, sizeof(p), "%s/home/user/notes.txt", root);
        put_xattr(p, "user.comment", "hello");
        put_acl(p, "system.posix_acl_access", 1001, 1002);
        snprintf(p, sizeof(p), "%s/home/user/shared", root);
        put_acl(p, "system.posix_acl_default", 1003, 1004);
        put_acl(p, "system.posix_acl_access", 1003, 1004);
        cr_assert(chmod(p, 02770) == 0);
        snprintf(p, sizeof(p), "%s/data", root);
        put_xattr(p, "trusted.overlay.opaque", "y");
        put_xattr(p, "user.dir", "value");
        snprintf(p, sizeof(p), "%s/etc/link", root);
        put_xattr(p, "trusted.link", "on a symlink");
        snprintf(p, sizeof(p), "%s/dev/fifo", root);
        put_xattr(p, "trusted.fifo", "on a fifo");
        snprintf(p, sizeof(p), "%s/bin/ping", root);
        rlt_set_cap(p);

        unsigned k = 0;
        int rfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOATIME);
        cr_assert(rfd >= 0);
        set_times(rfd, &k);
        struct timespec ts[2] = { { 1700000000, 1 }, { 1600000000, 2 } };
        cr_assert(utimensat(AT_FDCWD, root, ts, AT_SYMLINK_NOFOLLOW) == 0);
}

/* --- comparison ------------------------------------------------------------------------ */

typedef struct cmp {
        const rl_idmap *uids, *gids;
        unsigned flags;
        char *why;
        size_t why_size;
        struct {
                ino_t a, b;
        } links[4096];
        size_t n_links;
} cmp;

static bool differ(cmp *c, const char *path, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static bool differ(cmp *c, const char *path, const char *fmt, ...)
{
        va_list ap;
        int n = snprintf(c->why, c->why_size, "'%s': ", path);
        va_start(ap, fmt);
        vsnprintf(c->why + n, c->why_size - n, fmt, ap);
        va_end(ap);
        return false;
}

static bool same_content(cmp *c, int afd, int bfd, const char *path)
{
        static char ba[65536], bb[65536];
        for (;;) {
                ssize_t na = read(afd, ba, sizeof(ba)), nb = read(bfd, bb, sizeof(bb));
                if (na < 0 || nb < 0)
                        return differ(c, path, "read: %s", strerror(errno));
                if (na != nb || memcmp(ba, bb, na) != 0)
                        return differ(c, path, "content differs");
                if (na == 0)
                        return true;
        }
}

static bool same_xattrs(cmp *c, int adir, int bdir, const char *name, const char *path)
{
        static char la[65536], lb[65536], va[65600], vb[65600]; /* not live across recursion */
        char pa[PATH_MAX], pb[PATH_MAX];
        snprintf(pa, sizeof(pa), "/proc/self/fd/%d/%s", adir, name);
        snprintf(pb, sizeof(pb), "/proc/self/fd/%d/%s", bdir, name);
        ssize_t na = llistxattr(pa, la, sizeof(la)), nb = llistxattr(pb, lb, sizeof(lb));
        if (na < 0 || nb < 0)
                return differ(c, path, "listxattr: %s", strerror(errno));
        size_t count_a = 0, count_b = 0;
        /* XFS's second view of its ACLs (trusted.SGI_ACL_*) is not an xattr of its own. */
#define IS_ALIAS(n) (strncmp((n), "trusted.SGI_ACL_", 16) == 0)
        for (const char *n = lb; n < lb + nb; n += strlen(n) + 1)
                count_b += !IS_ALIAS(n);
        for (const char *n = la; n < la + na; n += strlen(n) + 1) {
                if (IS_ALIAS(n))
                        continue;
                count_a++;
                ssize_t sa = lgetxattr(pa, n, va, 65536), sb = lgetxattr(pb, n, vb, sizeof(vb));
                if (sa < 0)
                        return differ(c, path, "getxattr %s: %s", n, strerror(errno));
                if (sb < 0)
                        return differ(c, path, "xattr %s missing in the copy", n);
                size_t size = (size_t)sa;
                if ((c->uids || c->gids) &&
                    rl_idmap_shift_xattr(c->uids, c->gids, false, n, va, &size, sizeof(va)) < 0)
                        return differ(c, path, "xattr %s: cannot shift", n);
                if (size != (size_t)sb || memcmp(va, vb, size) != 0)
                        return differ(c, path, "xattr %s differs", n);
        }
        if (count_a != count_b)
                return differ(c, path, "%zu xattrs in the source, %zu in the copy", count_a,
                              count_b);
        return true;
}

static bool same_entry(cmp *c, int adir, int bdir, const char *name, const char *path);

static bool same_dir(cmp *c, int afd, int bfd, const char *path)
{
        size_t na = 0, nb = 0;
        DIR *da = fdopendir(dup(afd)), *db = fdopendir(dup(bfd));
        struct dirent *e;
        bool ok = true;

        cr_assert(da && db);
        while ((e = readdir(db)))
                nb++;
        while (ok && (e = readdir(da))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
                        na++;
                        continue;
                }
                na++;
                char *sub = malloc(strlen(path) + strlen(e->d_name) + 2);
                sprintf(sub, "%s/%s", path, e->d_name);
                ok = same_entry(c, afd, bfd, e->d_name, sub);
                free(sub);
        }
        closedir(da);
        closedir(db);
        if (ok && na != nb)
                return differ(c, path, "%zu entries in the source, %zu in the copy", na, nb);
        return ok;
}

static bool same_entry(cmp *c, int adir, int bdir, const char *name, const char *path)
{
        struct stat a, b;
        if (fstatat(adir, name, &a, AT_SYMLINK_NOFOLLOW) < 0)
                return differ(c, path, "stat source: %s", strerror(errno));
        if (fstatat(bdir, name, &b, AT_SYMLINK_NOFOLLOW) < 0)
                return differ(c, path, "missing in the copy: %s", strerror(errno));
        if ((a.st_mode & S_IFMT) != (b.st_mode & S_IFMT))
                return differ(c, path, "type %o vs %o", a.st_mode & S_IFMT, b.st_mode & S_IFMT);
        if (a.st_mode != b.st_mode)
                return differ(c, path, "mode %04o vs %04o", a.st_mode & 07777, b.st_mode & 07777);
        uint32_t uid, gid;
        if (rl_idmap_map(c->uids, a.st_uid, &uid) < 0 || rl_idmap_map(c->gids, a.st_gid, &gid) < 0)
                return differ(c, path, "owner %u:%u outside the maps", a.st_uid, a.st_gid);
        if (uid != b.st_uid || gid != b.st_gid)
                return differ(c, path, "owner %u:%u (mapped %u:%u) vs %u:%u", a.st_uid, a.st_gid,
                              uid, gid, b.st_uid, b.st_gid);
        if (a.st_mtim.tv_sec != b.st_mtim.tv_sec || a.st_mtim.tv_nsec != b.st_mtim.tv_nsec)
                return differ(c, path, "mtime %ld.%09ld vs %ld.%09ld", a.st_mtim.tv_sec,
                              a.st_mtim.tv_nsec, b.st_mtim.tv_sec, b.st_mtim.tv_nsec);
        if (!(c->flags & RLT_CMP_NO_ATIME) &&
            (a.st_atim.tv_sec != b.st_atim.tv_sec || a.st_atim.tv_nsec != b.st_atim.tv_nsec))
                return differ(c, path, "atime %ld.%09ld vs %ld.%09ld", a.st_atim.tv_sec,
                              a.st_atim.tv_nsec, b.st_atim.tv_sec, b.st_atim.tv_nsec);
        if (!S_ISDIR(a.st_mode) && a.st_size != b.st_size)
                return differ(c, path, "size %ld vs %ld", a.st_size, b.st_size);
        if ((S_ISCHR(a.st_mode) || S_ISBLK(a.st_mode)) && a.st_rdev != b.st_rdev)
                return differ(c, path, "device numbers differ");
        if (a.st_dev == b.st_dev && a.st_ino == b.st_ino)
                return differ(c, path, "the copy is the same inode as the source");
        if (!same_xattrs(c, adir, bdir, name, path))
                return false;

        if (S_ISREG(a.st_mode) && a.st_nlink > 1) {
                if (a.st_nlink != b.st_nlink)
                        return differ(c, path, "nlink %lu vs %lu", a.st_nlink, b.st_nlink);
                for (size_t i = 0; i < c->n_links; i++) {
                        if (c->links[i].a == a.st_ino && c->links[i].b != b.st_ino)
                                return differ(c, path, "hardlink goes to another inode");
                        if (c->links[i].b == b.st_ino && c->links[i].a != a.st_ino)
                                return differ(c, path, "hardlink joins two source inodes");
                }
                if (c->n_links < sizeof(c->links) / sizeof(c->links[0]))
                        c->links[c->n_links++] = (typeof(c->links[0])){ a.st_ino, b.st_ino };
        } else if (!S_ISDIR(a.st_mode) && b.st_nlink != 1) {
                return differ(c, path, "nlink %lu in the copy, expected 1", b.st_nlink);
        }

        if (S_ISLNK(a.st_mode)) {
                static char ta[PATH_MAX], tb[PATH_MAX]; /* not live across recursion */
                ssize_t la = readlinkat(adir, name, ta, sizeof(ta)),
                        lb = readlinkat(bdir, name, tb, sizeof(tb));
                if (la != lb || la < 0 || memcmp(ta, tb, la) != 0)
                        return differ(c, path, "symlink target differs");
        }
        if (S_ISREG(a.st_mode)) {
                int fa = openat(adir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
                int fb = openat(bdir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
                bool ok = fa >= 0 && fb >= 0 ? same_content(c, fa, fb, path)
                                             : differ(c, path, "open: %s", strerror(errno));
                if (fa >= 0)
                        close(fa);
                if (fb >= 0)
                        close(fb);
                if (!ok)
                        return false;
        }
        if (S_ISDIR(a.st_mode)) {
                int fa = openat(adir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
                int fb = openat(bdir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
                bool ok = fa >= 0 && fb >= 0 ? same_dir(c, fa, fb, path)
                                             : differ(c, path, "open: %s", strerror(errno));
                if (fa >= 0)
                        close(fa);
                if (fb >= 0)
                        close(fb);
                /* Listing b changed nothing: O_NOATIME. Its times were checked above, first. */
                if (!ok)
                        return false;
        }
        return true;
}

bool rlt_tree_equal(const char *a, const char *b, const rl_idmap *uids, const rl_idmap *gids,
                    char *why, size_t why_size)
{
        return rlt_tree_equal_flags(a, b, uids, gids, 0, why, why_size);
}

bool rlt_tree_equal_flags(const char *a, const char *b, const rl_idmap *uids,
                          const rl_idmap *gids, unsigned flags, char *why, size_t why_size)
{
        cmp *c = calloc(1, sizeof(*c));
        cr_assert(c);
        *c = (cmp){ .uids = uids, .gids = gids, .flags = flags, .why = why,
                    .why_size = why_size };
        why[0] = '\0';
        /* The roots may differ in name: compare each as "." of itself. */
        int ra = open(a, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOATIME);
        int rb = open(b, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOATIME);
        cr_assert(ra >= 0, "open %s: %s", a, strerror(errno));
        cr_assert(rb >= 0, "open %s: %s", b, strerror(errno));
        bool ok = same_entry(c, ra, rb, ".", ".");
        close(ra);
        close(rb);
        free(c);
        return ok;
}

bool rlt_extents_shared(const char *path)
{
        struct {
                struct fiemap f;
                struct fiemap_extent e[64];
        } fm = { .f = { .fm_length = FIEMAP_MAX_OFFSET, .fm_flags = FIEMAP_FLAG_SYNC,
                        .fm_extent_count = 64 } };
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
        int r = ioctl(fd, FS_IOC_FIEMAP, &fm.f);
        close(fd);
        cr_assert(r == 0, "FIEMAP %s: %s", path, strerror(errno));
        if (fm.f.fm_mapped_extents == 0)
                return false;
        for (unsigned i = 0; i < fm.f.fm_mapped_extents; i++)
                if (!(fm.e[i].fe_flags & FIEMAP_EXTENT_SHARED))
                        return false;
        return true;
}

bool rlt_dir_has_prefix(const char *dir, const char *prefix)
{
        DIR *d = opendir(dir);
        struct dirent *e;
        bool found = false;
        cr_assert(d, "opendir %s: %s", dir, strerror(errno));
        while ((e = readdir(d)))
                if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
                        found = true;
        closedir(d);
        return found;
}

char *rlt_read_file(const char *path)
{
        static char buf[4096];
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return NULL;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n < 0)
                return NULL;
        buf[n] = '\0';
        return buf;
}

char *rlt_read_at(const char *dir, const char *rel)
{
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/%s", dir, rel);
        return rlt_read_file(p);
}

bool rlt_exists_at(const char *dir, const char *rel)
{
        char p[PATH_MAX];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", dir, rel);
        return lstat(p, &st) == 0;
}

const char *rlt_store_tree(rl_store *s, const char *key)
{
        static char buf[4][PATH_MAX];
        static unsigned i;
        rl_mount m;
        rl_error err = {};
        cr_assert_eq(rl_store_mounts(s, key, &m, &err), 0, "%s", err.msg);
        char *p = buf[i++ % 4];
        snprintf(p, PATH_MAX, "%s", m.source);
        rl_mount_clear(&m);
        return p;
}

void rlt_store_base(rl_store *s, const rl_label *labels, size_t n)
{
        rl_error err = {};
        cr_assert_eq(rl_store_prepare(s, "b", NULL, NULL, 0, NULL, &err), 0, "%s", err.msg);
        rlt_make_rich_tree(rlt_store_tree(s, "b"), "t");
        cr_assert_eq(rl_store_commit(s, "base", "b", labels, n, &err), 0, "%s", err.msg);
}

rl_pool_stats rlt_store_pool_wait(rl_store *s, uint64_t want, unsigned seconds)
{
        rl_pool_stats ps;
        for (unsigned i = 0; i < seconds * 20; i++) {
                rl_store_pool_stats(s, &ps);
                if (ps.ready >= want && !ps.building)
                        return ps;
                usleep(50000);
        }
        cr_assert_fail("the pool has %" PRIu64 " ready clones after %u s, not %" PRIu64,
                       ps.ready, seconds, want);
        return ps;
}

void rlt_boot_id(char buf[64])
{
        FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
        cr_assert(f && fgets(buf, 64, f), "read the boot id: %s", strerror(errno));
        fclose(f);
        buf[strcspn(buf, "\n")] = '\0';
}

void rlt_fake_reboot(const char *root)
{
        char boot[64], from[PATH_MAX + 64], to[PATH_MAX + 64];
        rlt_boot_id(boot);
        snprintf(from, sizeof(from), "%s/ephemeral/%s", root, boot);
        snprintf(to, sizeof(to), "%s/ephemeral/00000000-0000-4000-8000-000000000000", root);
        cr_assert(rename(from, to) == 0, "rename %s: %s", from, strerror(errno));
}

bool rlt_dir_is_empty(const char *dir)
{
        DIR *d = opendir(dir);
        struct dirent *e;
        int n = 0;
        cr_assert(d, "opendir %s: %s", dir, strerror(errno));
        while ((e = readdir(d)))
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                        n++;
        closedir(d);
        return n == 0;
}

void rlt_oci_two_layers(const char *dir, unsigned blob_kib)
{
        char script[2 * PATH_MAX + 1024], out[8192];
        snprintf(script, sizeof(script),
                 "command -v umoci >/dev/null || { echo 'umoci is missing (make deps installs "
                 "it)'; exit 1; }\n"
                 "cd %s && umoci init --layout img && umoci new --image img:t1\n"
                 "umoci unpack --image img:t1 b >/dev/null\n"
                 "mkdir -p b/rootfs/etc b/rootfs/usr/bin && echo hi > b/rootfs/etc/hello\n"
                 "head -c %uK /dev/urandom > b/rootfs/usr/blob\n"
                 "echo bin > b/rootfs/usr/bin/tool && ln -s tool b/rootfs/usr/bin/alias\n"
                 "umoci repack --image img:t1 b && rm -rf b\n"
                 "umoci unpack --image img:t1 b >/dev/null && rm b/rootfs/etc/hello\n"
                 "echo two > b/rootfs/usr/bin/tool && umoci repack --image img:t1 b\n"
                 "rm -rf b\n",
                 dir, blob_kib);
        char *argv[] = { "sh", "-ec", script, NULL };
        cr_assert_eq(rlt_run(argv, out, sizeof(out)), 0, "make an OCI layout in %s: %s", dir, out);
}

unsigned rlt_dir_count(const char *dir)
{
        DIR *d = opendir(dir);
        struct dirent *e;
        unsigned n = 0;
        cr_assert(d, "opendir %s: %s", dir, strerror(errno));
        while ((e = readdir(d)))
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                        n++;
        closedir(d);
        return n;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
        for (size_t i = 0; i < n; i++)
                h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ULL;
        return h;
}

/* Depth first, in name order, so that equal trees give equal hashes whatever the order
 * readdir returns. */
static uint64_t tree_hash(const char *dir, const char *skip, uint64_t h)
{
        struct dirent **list;
        char path[PATH_MAX];
        int n = scandir(dir, &list, NULL, alphasort);
        cr_assert(n >= 0, "scandir %s: %s", dir, strerror(errno));
        for (int i = 0; i < n; i++) {
                const char *name = list[i]->d_name;
                if (strcmp(name, ".") && strcmp(name, "..") && (!skip || strcmp(name, skip))) {
                        struct stat st;
                        snprintf(path, sizeof(path), "%s/%s", dir, name);
                        cr_assert(lstat(path, &st) == 0, "lstat %s: %s", path, strerror(errno));
                        h = fnv(h, name, strlen(name) + 1);
                        h = fnv(h, &st.st_mode, sizeof(st.st_mode));
                        if (S_ISDIR(st.st_mode)) {
                                h = tree_hash(path, skip, h);
                        } else if (S_ISLNK(st.st_mode)) {
                                char target[PATH_MAX];
                                ssize_t got = readlink(path, target, sizeof(target));
                                cr_assert(got >= 0, "readlink %s: %s", path, strerror(errno));
                                h = fnv(h, target, (size_t)got);
                        } else if (S_ISREG(st.st_mode)) {
                                unsigned char buf[16384];
                                int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
                                ssize_t got;
                                cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
                                while ((got = read(fd, buf, sizeof(buf))) > 0)
                                        h = fnv(h, buf, (size_t)got);
                                cr_assert(got == 0, "read %s: %s", path, strerror(errno));
                                close(fd);
                        }
                }
                free(list[i]);
        }
        free(list);
        return h;
}

uint64_t rlt_tree_hash(const char *dir, const char *skip)
{
        return tree_hash(dir, skip, 14695981039346656037ULL);
}

void rlt_block_reflink(bool also_copy_range)
{
        scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
        cr_assert(ctx);
        cr_assert(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EOPNOTSUPP), SCMP_SYS(ioctl), 1,
                                   SCMP_A1(SCMP_CMP_EQ, FICLONE)) == 0);
        if (also_copy_range)
                cr_assert(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(copy_file_range),
                                           0) == 0);
        cr_assert(seccomp_load(ctx) == 0, "seccomp_load");
        seccomp_release(ctx);
}
