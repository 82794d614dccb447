/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * harness.c owns what the fuzz harnesses share (harness-priv.h): the sandbox they run in,
 * the fixed layer blobs, and putting the sandbox back as it was between inputs.
 */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/tree.h>

#include "digest.h"
#include "harness-priv.h"
#include "util.h"

/* In the sanitizer runtimes (clang's and gcc's); absent from a plain build. */
void __sanitizer_symbolize_pc(void *pc, const char *fmt, char *out, size_t out_size)
        __attribute__((weak));

static char complaint[1024];
static char program_top[NAME_MAX + 1];

const char *fuzz_fail(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(complaint, sizeof(complaint), fmt, ap);
        va_end(ap);
        return complaint;
}

static int sandbox_fail(char *msg, size_t msg_size, const char *what)
{
        int r = -errno;
        snprintf(msg, msg_size, "fuzz sandbox: %s: %s (the harnesses need root)", what,
                 strerror(errno));
        return r;
}

static int bind_ro(const char *from, const char *to)
{
        if (mount(from, to, NULL, MS_BIND | MS_REC, NULL) < 0 ||
            mount(NULL, to, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) <
                    0)
                return -errno;
        return 0;
}

int fuzz_sandbox(char *msg, size_t msg_size)
{
        if (unshare(CLONE_NEWNS) < 0)
                return sandbox_fail(msg, msg_size, "unshare(CLONE_NEWNS)");
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
                return sandbox_fail(msg, msg_size, "make / private");
        /* Bounded: a sparse or runaway tree fails with ENOSPC instead of eating the RAM. */
        if (mount("rl-fuzz", "/tmp", "tmpfs", MS_NOSUID, "size=256m,mode=0755") < 0)
                return sandbox_fail(msg, msg_size, "mount tmpfs on /tmp");
        /* /proc/self (and /proc/PID, which LeakSanitizer reads) only, read-only: the driver
         * reaches symlinks' xattrs through /proc/self/fd and reads /proc/self/status and
         * mountinfo; a whole /proc would give Clone "/" files like kcore to copy, and
         * anything that escapes sysctls to write. Paths through /proc/self/fd still reach
         * the files below, on their own mount. */
        char self[64], pid_dir[64];
        snprintf(self, sizeof(self), "/proc/%d", (int)getpid());
        snprintf(pid_dir, sizeof(pid_dir), "/tmp/proc/%d", (int)getpid());
        if (mkdir("/tmp/proc", 0555) < 0 ||
            mount("rl-fuzz-proc", "/tmp/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "size=64k,mode=0555") < 0 ||
            mkdir("/tmp/proc/self", 0555) < 0 || mkdir(pid_dir, 0555) < 0)
                return sandbox_fail(msg, msg_size, "make /tmp/proc");
        if (bind_ro(self, "/tmp/proc/self") < 0 || bind_ro(self, pid_dir) < 0)
                return sandbox_fail(msg, msg_size, "bind /proc/self");
        if (mount(NULL, "/tmp/proc", NULL,
                  MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
                return sandbox_fail(msg, msg_size, "make /tmp/proc read-only");
        /* The program at its own path, so the sanitizers' reports name functions and lines
         * (the symbolizer reads it by the path in /proc/self/maps). */
        char exe[PATH_MAX], at[PATH_MAX + 8];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n <= 0 || exe[0] != '/')
                return sandbox_fail(msg, msg_size, "readlink /proc/self/exe");
        exe[n] = '\0';
        /* A program under /tmp itself is hidden by the sandbox's tmpfs: then its reports
         * go unsymbolized (only that; the checks are the same). */
        if (strncmp(exe, "/tmp/", 5) != 0) {
                snprintf(at, sizeof(at), "/tmp%s", exe);
                snprintf(program_top, sizeof(program_top), "%.*s", (int)strcspn(exe + 1, "/"), exe + 1);
                for (char *p = strchr(at + 5, '/'); p; p = strchr(p + 1, '/')) {
                        *p = '\0';
                        if (mkdir(at, 0755) < 0 && errno != EEXIST)
                                return sandbox_fail(msg, msg_size, "mkdir for the program");
                        *p = '/';
                }
                _cleanup_close_ int fd = open(at, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
                if (fd < 0 || bind_ro(exe, at) < 0)
                        return sandbox_fail(msg, msg_size, "bind the program");
        }
        /* The sanitizer's symbolizer is a process of its own, started at the first report and
         * then asked over a pipe: start it here, so it keeps the host's root and finds the
         * binaries and libraries it reads after the chroot. */
        if (__sanitizer_symbolize_pc) {
                char buf[256];
                __sanitizer_symbolize_pc((void *)fuzz_sandbox, "%p %F %L", buf, sizeof(buf));
        }
        if (chroot("/tmp") < 0)
                return sandbox_fail(msg, msg_size, "chroot /tmp");
        return 0;
}

/* --- layer blobs ---------------------------------------------------------------------------- */

typedef struct membuf {
        char *data;
        size_t size, cap;
} membuf;

static la_ssize_t membuf_write(struct archive *a _unused_, void *userdata, const void *buf,
                               size_t n)
{
        membuf *m = userdata;
        if (m->size + n > m->cap) {
                size_t cap = (m->size + n) * 2;
                char *p = realloc(m->data, cap);
                if (!p)
                        return -1;
                m->data = p;
                m->cap = cap;
        }
        memcpy(m->data + m->size, buf, n);
        m->size += n;
        return (la_ssize_t)n;
}

typedef struct blob_entry {
        const char *path;
        mode_t type;
        const char *data; /* a file's content, a link's target */
        bool hardlink;
        const char *xattr; /* a user. xattr with value "v" */
} blob_entry;

static const blob_entry base_entries[] = {
        {"etc", S_IFDIR, NULL, false, NULL},
        {"etc/hostname", S_IFREG, "fuzz\n", false, "user.origin"},
        {"etc/gone", S_IFREG, "x", false, NULL},
        {"var", S_IFDIR, NULL, false, NULL},
        {"var/old", S_IFREG, "old", false, NULL},
        {"hostname", S_IFLNK, "etc/hostname", false, NULL},
        {NULL, 0, NULL, false, NULL},
};
static const blob_entry upper_entries[] = {
        {"etc", S_IFDIR, NULL, false, NULL},
        {"etc/.wh.gone", S_IFREG, "", false, NULL},
        {"etc/new", S_IFREG, "new\n", false, NULL},
        {"etc/new-link", S_IFREG, "etc/new", true, NULL},
        {"var", S_IFDIR, NULL, false, NULL},
        {"var/.wh..wh..opq", S_IFREG, "", false, NULL},
        {NULL, 0, NULL, false, NULL},
};

static int write_blob(const blob_entry *e, bool gzip, membuf *out, char *msg, size_t msg_size)
{
        struct archive *a = archive_write_new();
        int r = 0;
        if (!a)
                return -ENOMEM;
        if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
            (gzip && archive_write_add_filter_gzip(a) != ARCHIVE_OK) ||
            archive_write_open(a, out, NULL, membuf_write, NULL) != ARCHIVE_OK)
                r = -EIO;
        for (; r == 0 && e->path; e++) {
                struct archive_entry *ae = archive_entry_new();
                if (!ae) {
                        r = -ENOMEM;
                        break;
                }
                archive_entry_set_pathname(ae, e->path);
                archive_entry_set_mtime(ae, 1700000000, 123456789);
                archive_entry_set_uid(ae, 0);
                archive_entry_set_gid(ae, 0);
                if (e->hardlink) {
                        archive_entry_set_filetype(ae, AE_IFREG);
                        archive_entry_set_perm(ae, 0644);
                        archive_entry_set_hardlink(ae, e->data);
                } else if (e->type == S_IFLNK) {
                        archive_entry_set_filetype(ae, AE_IFLNK);
                        archive_entry_set_perm(ae, 0777);
                        archive_entry_set_symlink(ae, e->data);
                } else {
                        archive_entry_set_filetype(ae, e->type == S_IFDIR ? AE_IFDIR : AE_IFREG);
                        archive_entry_set_perm(ae, e->type == S_IFDIR ? 0755 : 0644);
                        if (e->type == S_IFREG)
                                archive_entry_set_size(ae, (la_int64_t)strlen(e->data));
                }
                if (e->xattr)
                        archive_entry_xattr_add_entry(ae, e->xattr, "v", 1);
                if (archive_write_header(a, ae) != ARCHIVE_OK ||
                    (e->type == S_IFREG && !e->hardlink &&
                     archive_write_data(a, e->data, strlen(e->data)) < 0))
                        r = -EIO;
                archive_entry_free(ae);
        }
        if (r == 0 && archive_write_close(a) != ARCHIVE_OK)
                r = -EIO;
        if (r < 0)
                snprintf(msg, msg_size, "fuzz: build a layer blob: %s", archive_error_string(a));
        archive_write_free(a);
        return r;
}

/* The diff_id of a compressed blob: the digest of what libarchive decompresses (its tar
 * writer pads the tar inside a compressed stream differently from a plain one). */
static int diff_id_of(const void *data, size_t size, char out[RL_DIGEST_MAX])
{
        _cleanup_(rl_sha256_freep) rl_sha256 *h = NULL;
        struct archive *a = archive_read_new();
        struct archive_entry *ae;
        char buf[4096];
        la_ssize_t n;
        int r = a ? rl_sha256_new(&h) : -ENOMEM;

        if (r == 0 && (archive_read_support_filter_all(a) != ARCHIVE_OK ||
                       archive_read_support_format_raw(a) != ARCHIVE_OK ||
                       archive_read_open_memory(a, data, size) != ARCHIVE_OK ||
                       archive_read_next_header(a, &ae) != ARCHIVE_OK))
                r = -EIO;
        while (r == 0 && (n = archive_read_data(a, buf, sizeof(buf))) != 0) {
                if (n < 0)
                        r = -EIO;
                else
                        rl_sha256_update(h, buf, (size_t)n);
        }
        if (r == 0)
                rl_sha256_final(h, out);
        archive_read_free(a);
        return r;
}

int fuzz_layer_blob(unsigned which, const fuzz_blob **ret, char *msg, size_t msg_size)
{
        static fuzz_blob blobs[2];
        if (which > 1)
                return -EINVAL;
        fuzz_blob *b = &blobs[which];
        if (!b->data) {
                membuf out = {};
                int r = write_blob(which ? upper_entries : base_entries, which, &out, msg,
                                   msg_size);
                if (r == 0 && (r = diff_id_of(out.data, out.size, b->diff_id)) < 0)
                        snprintf(msg, msg_size, "fuzz: decompress a layer blob: %s", strerror(-r));
                if (r < 0) {
                        free(out.data);
                        return r;
                }
                b->data = out.data;
                b->size = out.size;
                rl_sha256_of(b->data, b->size, b->digest);
        }
        *ret = b;
        return 0;
}

int fuzz_memfd(const void *data, size_t size)
{
        _cleanup_close_ int fd = memfd_create("fuzz-input", MFD_CLOEXEC);
        if (fd < 0)
                return -errno;
        int r = rl_write_all(fd, data, size);
        if (r < 0)
                return r;
        if (lseek(fd, 0, SEEK_SET) < 0)
                return -errno;
        return TAKE_FD(fd);
}

/* --- putting things back ------------------------------------------------------------------ */

typedef struct names {
        char **v;
        size_t n;
} names;

static int collect_name(const rl_info *info, void *userdata)
{
        names *ns = userdata;
        char **v = realloc(ns->v, (ns->n + 1) * sizeof(*v));
        if (!v)
                return -ENOMEM;
        ns->v = v;
        if (!(v[ns->n] = strdup(info->name)))
                return -ENOMEM;
        ns->n++;
        return 0;
}

static void names_free(names *ns)
{
        for (size_t i = 0; i < ns->n; i++)
                free(ns->v[i]);
        free(ns->v);
        *ns = (names){};
}

const char *fuzz_store_empty(rl_store *s)
{
        rl_error err = {};
        names ns = {};
        int r = rl_store_walk(s, NULL, 0, collect_name, &ns, &err);
        if (r < 0) {
                names_free(&ns);
                return fuzz_fail("store walk: %s", err.msg);
        }
        /* Children first: each round removes the snapshots nothing else uses. */
        size_t left = ns.n;
        while (left > 0) {
                size_t removed = 0;
                for (size_t i = 0; i < ns.n; i++) {
                        if (!ns.v[i])
                                continue;
                        r = rl_store_remove(s, ns.v[i], &err);
                        if (r == -EBUSY)
                                continue;
                        if (r < 0) {
                                const char *m =
                                        fuzz_fail("remove snapshot '%.200s': %s", ns.v[i], err.msg);
                                names_free(&ns);
                                return m;
                        }
                        free(ns.v[i]);
                        ns.v[i] = NULL;
                        removed++;
                }
                if (removed == 0) {
                        for (size_t i = 0; i < ns.n; i++)
                                if (ns.v[i]) {
                                        const char *m = fuzz_fail(
                                                "snapshot '%.200s' cannot be removed (%zu left)",
                                                ns.v[i], left);
                                        names_free(&ns);
                                        return m;
                                }
                }
                left -= removed;
        }
        names_free(&ns);
        if (rl_store_cleanup(s, &err) < 0)
                return fuzz_fail("store cleanup: %s", err.msg);
        return NULL;
}

static bool kept(const char *name, const char *const *keep)
{
        for (; *keep; keep++)
                if (strcmp(name, *keep) == 0)
                        return true;
        return false;
}

const char *fuzz_root_check(const char *const *keep, bool expect_clean)
{
        _cleanup_close_ int root_fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (root_fd < 0)
                return fuzz_fail("open the sandbox's root: %s", strerror(errno));
        int fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 3);
        DIR *d = fd < 0 ? NULL : fdopendir(fd);
        if (!d) {
                if (fd >= 0)
                        close(fd);
                return fuzz_fail("read the sandbox's root: %s", strerror(errno));
        }
        const char *bad = NULL;
        struct dirent *de;
        while (!bad && (de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
                    strcmp(de->d_name, program_top) == 0 || kept(de->d_name, keep))
                        continue;
                if (expect_clean) {
                        bad = fuzz_fail("'/%.200s' appeared outside the tree (an escape)",
                                        de->d_name);
                        break;
                }
                rl_error err = {};
                if (rl_tree_remove(root_fd, de->d_name, 1, NULL, &err) < 0)
                        bad = fuzz_fail("remove '/%.200s': %s", de->d_name, err.msg);
                else
                        rewinddir(d);
        }
        closedir(d);
        return bad;
}
