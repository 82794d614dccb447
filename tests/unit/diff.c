/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * diff.c and export.c: the changes of a reflink clone against its parent on loop XFS (every
 * kind of edit, reported exactly, unchanged data decided from extent maps alone), and the
 * same changes as an OCI layer tar read back with libarchive: names, whiteouts, the opaque
 * marker, hardlinks, xattrs, nanosecond times, compression and digests.
 */
#include <archive.h>
#include <archive_entry.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/layer.h>
#include <reflayer/tree.h>

#include "digest.h"
#include "rltest.h"

#define ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

TestSuite(diff, .init = rlt_init, .fini = rlt_fini, .timeout = 180);

/* --- trees --------------------------------------------------------------------------------- */

typedef struct trees {
        char mnt[PATH_MAX];
        char lower[PATH_MAX];
        char upper[PATH_MAX];
} trees;

static int open_dir(const char *path)
{
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
        return fd;
}

static void clone_tree(const char *src, const char *dir, const char *name, unsigned flags)
{
        rl_error err = {};
        rl_tree_options o = { .flags = flags };
        int s = open_dir(src), d = open_dir(dir);
        int r = rl_tree_clone(s, d, name, &o, NULL, &err);
        close(s);
        close(d);
        cr_assert_eq(r, 0, "rl_tree_clone %s → %s/%s: %s", src, dir, name, err.msg);
}

/* The rich tree as lower on a fresh filesystem, and a clone of it as upper. On btrfs, as
 * the store makes them: lower a subvolume, upper its snapshot. */
static void make_trees(trees *t, rlt_fs fs)
{
        snprintf(t->mnt, sizeof(t->mnt), "%s", rlt_mkfs(fs, 0, rlt_fs_name(fs)));
        snprintf(t->lower, sizeof(t->lower), "%s/lower", t->mnt);
        snprintf(t->upper, sizeof(t->upper), "%s/upper", t->mnt);
        if (fs == RLT_BTRFS) {
                char src[PATH_MAX];
                rlt_make_rich_tree(t->mnt, "src");
                snprintf(src, sizeof(src), "%s/src", t->mnt);
                clone_tree(src, t->mnt, "lower", RL_TREE_SUBVOLUME);
                clone_tree(t->lower, t->mnt, "upper", RL_TREE_SUBVOLUME);
                return;
        }
        rlt_make_rich_tree(t->mnt, "lower");
        clone_tree(t->lower, t->mnt, "upper", 0);
}

static const char *at(const char *root, const char *rel)
{
        static char bufs[4][PATH_MAX];
        static int next;
        char *p = bufs[next++ % 4];
        snprintf(p, PATH_MAX, "%s/%s", root, rel);
        return p;
}

static void sh(const char *cmd, const char *arg)
{
        char *argv[] = { "sh", "-c", (char *)cmd, "sh", (char *)arg, NULL };
        char out[4096];
        int r = rlt_run(argv, out, sizeof(out));
        cr_assert_eq(r, 0, "%s (%s): %d: %s", cmd, arg, r, out);
}

#define LONG_NAME                                                                                  \
        "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn" \
        "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn" \
        "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"

/* Every kind of edit on upper. */
static void edit(const char *u)
{
        struct stat st;

        /* Added: a file, a directory with a file, a symlink (its atime ahead of now, as the
         * rich tree's: readlink has no O_NOATIME, and relatime would otherwise refresh it). */
        rlt_write_file(at(u, "etc/new.conf"), 100, 1);
        cr_assert(mkdir(at(u, "opt"), 0755) == 0);
        rlt_write_file(at(u, "opt/tool"), 5000, 2);
        cr_assert(symlink("passwd", at(u, "etc/newlink")) == 0);
        struct timespec lts[2] = { { time(NULL) + 3600, 0 }, { 1650000000, 42 } };
        cr_assert(utimensat(AT_FDCWD, at(u, "etc/newlink"), lts, AT_SYMLINK_NOFOLLOW) == 0);

        /* Data changed, size and times kept: only reading can tell. */
        cr_assert(stat(at(u, "etc/passwd"), &st) == 0);
        int fd = open(at(u, "etc/passwd"), O_WRONLY | O_CLOEXEC);
        cr_assert(fd >= 0);
        cr_assert(pwrite(fd, "CHANGED-DATA", 12, 100) == 12);
        close(fd);
        struct timespec ts[2] = { st.st_atim, st.st_mtim };
        cr_assert(utimensat(AT_FDCWD, at(u, "etc/passwd"), ts, 0) == 0);

        /* Data changed, size too. */
        fd = open(at(u, "data/odd-size"), O_WRONLY | O_APPEND | O_CLOEXEC);
        cr_assert(fd >= 0);
        cr_assert(write(fd, "more", 4) == 4);
        close(fd);

        /* Metadata only: mode, owner, an xattr. */
        cr_assert(chmod(at(u, "bin/su"), 04750) == 0);
        cr_assert(lchown(at(u, "home/user/notes.txt"), 1001, 1001) == 0);
        cr_assert(setxattr(at(u, "data/empty"), "user.x", "1", 1, 0) == 0);

        /* Deleted: a file, a whole directory. */
        cr_assert(unlink(at(u, "etc/shadow")) == 0);
        sh("rm -rf -- \"$1\"", at(u, "ro"));

        /* A directory replaced by a file, a file by a directory. */
        cr_assert(rmdir(at(u, "empty")) == 0);
        rlt_write_file(at(u, "empty"), 300, 3);
        cr_assert(unlink(at(u, "bin/wall")) == 0);
        cr_assert(mkdir(at(u, "bin/wall"), 0755) == 0);
        rlt_write_file(at(u, "bin/wall/inner"), 200, 4);

        /* Everything in a directory gone, one new entry. */
        DIR *d = opendir(at(u, "names"));
        struct dirent *e;
        cr_assert(d);
        while ((e = readdir(d)))
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                        cr_assert(unlinkat(dirfd(d), e->d_name, 0) == 0, "%s", e->d_name);
        closedir(d);
        rlt_write_file(at(u, "names/fresh"), 50, 5);

        /* A second name for an inode. */
        cr_assert(link(at(u, "bin/ping"), at(u, "bin/ping6")) == 0);
}

/* What edit() must give, in order: kind, '*' for metadata only, path. */
static const char *const expected_changes[] = {
        "C* .",
        "C* bin",
        "C* bin/ping",
        "A bin/ping6",
        "C* bin/su",
        "C bin/wall",
        "A bin/wall/inner",
        "C* data/empty",
        "C data/odd-size",
        "C empty",
        "C* etc",
        "A etc/new.conf",
        "A etc/newlink",
        "C etc/passwd",
        "D etc/shadow",
        "C* home/user/notes.txt",
        "C* names",
        "D names/-dash",
        "D names/.hidden",
        "A names/fresh",
        "D names/new\nline",
        "D names/" LONG_NAME,
        "D names/with space",
        "D names/ünïcødé-名前",
        "A opt",
        "A opt/tool",
        "D ro",
};

/* --- rl_tree_diff ---------------------------------------------------------------------------- */

typedef struct changes {
        char *v[512];
        size_t n;
        size_t stop_at;   /* return -EINTR at this change (1-based); 0: never */
        char text[16384]; /* all of them, a line each, for messages */
} changes;

static int collect(const rl_change *c, void *userdata)
{
        changes *s = userdata;
        char *line = NULL;
        cr_assert(s->n < ELEMENTS(s->v), "too many changes");
        cr_assert(asprintf(&line, "%c%s %s", (char)c->kind, c->metadata_only ? "*" : "", c->path) >
                  0);
        s->v[s->n++] = line;
        if (s->stop_at && s->n == s->stop_at)
                return -EINTR;
        return 0;
}

static void changes_free(changes *s)
{
        for (size_t i = 0; i < s->n; i++)
                free(s->v[i]);
        s->n = 0;
}

static int diff_paths(const char *lower, const char *upper, changes *s, rl_diff_stats *st,
                      rl_error *err)
{
        int l = lower ? open_dir(lower) : -1, u = open_dir(upper);
        int r = rl_tree_diff(l, u, collect, s, st, err);
        if (l >= 0)
                close(l);
        close(u);
        return r;
}

/* Diff lower (NULL: empty) against upper, which must succeed; the changes go to s. */
static void diff_ok(const char *lower, const char *upper, changes *s, rl_diff_stats *st)
{
        rl_error err = {};
        int r = diff_paths(lower, upper, s, st, &err);
        cr_assert_eq(r, 0, "rl_tree_diff: %s", err.msg);
        size_t used = 0;
        s->text[0] = '\0';
        for (size_t i = 0; i < s->n && used < sizeof(s->text); i++)
                used += (size_t)snprintf(s->text + used, sizeof(s->text) - used, "  %s\n",
                                         s->v[i]);
}

/* An unchanged copy on fs: no change, and how many files were decided which way. */
static void diff_unchanged(rlt_fs fs, uint64_t by_extents, uint64_t files_read)
{
        static changes s;
        trees t;
        rl_diff_stats st;

        make_trees(&t, fs);
        diff_ok(t.lower, t.upper, &s, &st);
        cr_expect_eq(s.n, 0, "an unchanged copy reports changes:\n%s", s.text);
        cr_expect_eq(st.by_extents, by_extents, "%lu files decided by extents", st.by_extents);
        cr_expect_eq(st.files_read, files_read, "%lu files read", st.files_read);
        cr_expect_eq(st.bytes_read == 0, files_read == 0, "%lu bytes read", st.bytes_read);
        /* 12 directories (the root too), 19 regular names, 3 symlinks, 4 special files. */
        cr_expect_eq(st.entries, 38, "%lu entries compared", st.entries);
        changes_free(&s);
}

/* A reflink clone: all 19 regular names (data/big's three each count) from FIEMAP alone. */
Test(diff, unchanged_clone_is_decided_by_extents)
{
        diff_unchanged(RLT_XFS, 19, 0);
}

/* A btrfs snapshot: a device number of its own, the parent's extents: decided by FIEMAP
 * too (before, the device numbers sent every file to be read: 0 and 19). The 9 small files
 * btrfs keeps inline in its metadata (default max_inline) have no address: read. */
Test(diff, unchanged_btrfs_snapshot_is_decided_by_extents)
{
        diff_unchanged(RLT_BTRFS, 10, 9);
}

/* tmpfs has no FIEMAP (and the clone is a copy): every file is read. */
Test(diff, without_fiemap_the_data_is_read)
{
        diff_unchanged(RLT_TMPFS, 0, 19);
}

Test(diff, every_edit_is_reported_exactly)
{
        static changes s;
        trees t;
        rl_diff_stats st;

        make_trees(&t, RLT_XFS);
        edit(t.upper);
        diff_ok(t.lower, t.upper, &s, &st);
        cr_assert_eq(s.n, ELEMENTS(expected_changes), "%zu changes, expected %zu:\n%s", s.n,
                     ELEMENTS(expected_changes), s.text);
        for (size_t i = 0; i < s.n; i++)
                cr_expect_str_eq(s.v[i], expected_changes[i], "change %zu:\n%s", i, s.text);
        /* etc/passwd alone kept its size while its extents moved: the one file read. */
        cr_expect_eq(st.files_read, 1, "%lu files read", st.files_read);
        cr_expect_eq(st.bytes_read, 2 * 1200, "%lu bytes read", st.bytes_read);
        cr_expect_gt(st.by_extents, 5);
        changes_free(&s);
}

Test(diff, empty_lower_adds_everything)
{
        static changes s;
        trees t;
        rl_diff_stats st;

        make_trees(&t, RLT_XFS);
        diff_ok(NULL, t.lower, &s, &st);
        cr_assert_eq(s.n, st.entries, "%zu changes for %lu entries", s.n, st.entries);
        cr_expect_str_eq(s.v[0], "A .");
        cr_expect_str_eq(s.v[1], "A bin");
        cr_expect_str_eq(s.v[2], "A bin/big-link");
        for (size_t i = 0; i < s.n; i++)
                cr_expect_eq(s.v[i][0], 'A', "%s", s.v[i]);
        cr_expect_eq(s.n, 38, "%zu changes:\n%s", s.n, s.text);
        cr_expect_eq(st.files_read, 0);
        changes_free(&s);
}

Test(diff, a_callback_error_stops_the_diff)
{
        static changes s = { .stop_at = 3 };
        trees t;
        rl_error err = {};

        make_trees(&t, RLT_XFS);
        edit(t.upper);
        int r = diff_paths(t.lower, t.upper, &s, NULL, &err);
        cr_assert_eq(r, -EINTR, "rl_tree_diff: %d (%s)", r, err.msg);
        cr_expect_eq(s.n, 3);
        cr_expect(strstr(err.msg, "'bin/ping'"), "the message names where: %s", err.msg);
        changes_free(&s);
}

/* --- rl_layer_export ------------------------------------------------------------------------- */

typedef struct tar_entry {
        char name[PATH_MAX];
        char link[PATH_MAX];   /* hardlink target */
        char target[PATH_MAX]; /* symlink target */
        mode_t mode;
        int64_t size, mtime, atime;
        long mtime_ns, atime_ns;
        char xattrs[1024];     /* names, space-separated */
} tar_entry;

typedef struct tar {
        tar_entry *e;
        size_t n;
} tar;

static void read_tar(const char *path, tar *t)
{
        struct archive *a = archive_read_new();
        struct archive_entry *ae;

        cr_assert(a);
        archive_read_support_filter_all(a);
        archive_read_support_format_tar(a);
        cr_assert_eq(archive_read_open_filename(a, path, 65536), ARCHIVE_OK, "open %s: %s", path,
                     archive_error_string(a));
        t->e = calloc(256, sizeof(*t->e));
        t->n = 0;
        int r;
        while ((r = archive_read_next_header(a, &ae)) == ARCHIVE_OK) {
                cr_assert(t->n < 256);
                tar_entry *e = &t->e[t->n++];
                snprintf(e->name, sizeof(e->name), "%s", archive_entry_pathname(ae));
                if (archive_entry_hardlink(ae))
                        snprintf(e->link, sizeof(e->link), "%s", archive_entry_hardlink(ae));
                if (archive_entry_symlink(ae))
                        snprintf(e->target, sizeof(e->target), "%s", archive_entry_symlink(ae));
                e->mode = archive_entry_mode(ae);
                e->size = archive_entry_size(ae);
                e->mtime = archive_entry_mtime(ae);
                e->mtime_ns = archive_entry_mtime_nsec(ae);
                e->atime = archive_entry_atime(ae);
                e->atime_ns = archive_entry_atime_nsec(ae);
                const char *xn;
                const void *xv;
                size_t xs;
                archive_entry_xattr_reset(ae);
                while (archive_entry_xattr_next(ae, &xn, &xv, &xs) == ARCHIVE_OK) {
                        strncat(e->xattrs, xn, sizeof(e->xattrs) - strlen(e->xattrs) - 2);
                        strcat(e->xattrs, " ");
                }
        }
        cr_assert_eq(r, ARCHIVE_EOF, "read %s: %s", path, archive_error_string(a));
        archive_read_free(a);
}

static const tar_entry *find(const tar *t, const char *name)
{
        for (size_t i = 0; i < t->n; i++)
                if (strcmp(t->e[i].name, name) == 0)
                        return &t->e[i];
        cr_assert_fail("no entry '%s' in the layer", name);
        return NULL;
}

static int export_paths(const char *lower, const char *upper, const char *out,
                        const rl_export_options *o, rl_layer_stats *st, rl_error *err)
{
        int l = lower ? open_dir(lower) : -1, u = open_dir(upper);
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        cr_assert(fd >= 0, "create %s: %s", out, strerror(errno));
        int r = rl_layer_export(l, u, fd, o, st, err);
        if (l >= 0)
                close(l);
        close(u);
        close(fd);
        return r;
}

static void file_digest(const char *path, char out[RL_DIGEST_MAX], uint64_t *size)
{
        rl_sha256 *h = NULL;
        char buf[65536];
        ssize_t n;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
        cr_assert_eq(rl_sha256_new(&h), 0);
        *size = 0;
        while ((n = read(fd, buf, sizeof(buf))) > 0) {
                rl_sha256_update(h, buf, (size_t)n);
                *size += (uint64_t)n;
        }
        cr_assert_eq(n, 0);
        close(fd);
        rl_sha256_final(h, out);
        rl_sha256_free(h);
}

/* What edit() gives as a layer, in order. */
static const char *const expected_entries[] = {
        "./",           "bin/",          "bin/ping",        "bin/ping6",         "bin/su",
        "bin/wall/",    "bin/wall/inner", "data/",          "data/empty",        "data/odd-size",
        "empty",        "etc/",          "etc/new.conf",    "etc/newlink",       "etc/passwd",
        "etc/.wh.shadow", "home/",       "home/user/",      "home/user/notes.txt", "names/",
        "names/.wh..wh..opq", "names/fresh", "opt/",        "opt/tool",          ".wh.ro",
};

Test(diff, export_writes_the_layer)
{
        trees t;
        tar tr;
        rl_layer_stats st;
        rl_error err = {};
        char out[PATH_MAX], got[8192] = "";
        struct statx sx;

        make_trees(&t, RLT_XFS);
        edit(t.upper);
        snprintf(out, sizeof(out), "%s/layer.tar", rlt_scratch());
        int r = export_paths(t.lower, t.upper, out, NULL, &st, &err);
        cr_assert_eq(r, 0, "rl_layer_export: %s", err.msg);
        read_tar(out, &tr);

        for (size_t i = 0, used = 0; i < tr.n && used < sizeof(got); i++)
                used += (size_t)snprintf(got + used, sizeof(got) - used, "  %s\n", tr.e[i].name);
        cr_assert_eq(tr.n, ELEMENTS(expected_entries), "%zu entries:\n%s", tr.n, got);
        for (size_t i = 0; i < tr.n; i++)
                cr_expect_str_eq(tr.e[i].name, expected_entries[i], "entry %zu:\n%s", i, got);
        cr_expect_eq(st.entries, tr.n);
        cr_expect_eq(st.whiteouts, 2);
        cr_expect_eq(st.opaques, 1);
        cr_expect_eq(st.bytes, 70000 + 30000 + 200 + 4101 + 300 + 100 + 1200 + 5000 + 50 + 5000,
                     "%lu bytes", st.bytes);

        /* Whiteouts and the opaque marker: empty files, mode 0, the parent's times. */
        const tar_entry *wh = find(&tr, "etc/.wh.shadow"), *etc = find(&tr, "etc/");
        cr_expect_eq(wh->mode, S_IFREG, "whiteout mode %o", wh->mode);
        cr_expect_eq(wh->size, 0);
        cr_expect(wh->mtime == etc->mtime && wh->mtime_ns == etc->mtime_ns);
        cr_expect_eq(find(&tr, "names/.wh..wh..opq")->mode, S_IFREG);

        /* A hardlink within the layer; a symlink; a file that replaced a directory. */
        cr_expect_str_eq(find(&tr, "bin/ping6")->link, "bin/ping");
        cr_expect_eq(find(&tr, "bin/ping6")->size, 0);
        cr_expect_eq(find(&tr, "bin/ping")->size, 70000);
        cr_expect_str_eq(find(&tr, "etc/newlink")->target, "passwd");
        cr_expect(S_ISREG(find(&tr, "empty")->mode));
        cr_expect(S_ISDIR(find(&tr, "bin/wall/")->mode));
        cr_expect_eq(find(&tr, "bin/su")->mode, S_IFREG | 04750);

        /* xattrs: a capability, ACLs, user. ones; XFS's ACL aliases stay out. */
        cr_expect(strstr(find(&tr, "bin/ping")->xattrs, "security.capability "),
                  "bin/ping: %s", find(&tr, "bin/ping")->xattrs);
        const char *nx = find(&tr, "home/user/notes.txt")->xattrs;
        cr_expect(strstr(nx, "system.posix_acl_access ") && strstr(nx, "user.comment "), "%s", nx);
        cr_expect(!strstr(nx, "SGI_ACL"), "%s", nx);
        cr_expect_str_eq(find(&tr, "data/empty")->xattrs, "user.x ");

        /* Nanosecond mtime and atime. */
        cr_assert(statx(AT_FDCWD, at(t.upper, "etc/passwd"), AT_SYMLINK_NOFOLLOW,
                        STATX_ATIME | STATX_MTIME, &sx) == 0);
        const tar_entry *pw = find(&tr, "etc/passwd");
        cr_expect(pw->mtime == sx.stx_mtime.tv_sec && pw->mtime_ns == sx.stx_mtime.tv_nsec,
                  "mtime %ld.%09ld vs %lld.%09u", (long)pw->mtime, pw->mtime_ns,
                  (long long)sx.stx_mtime.tv_sec, sx.stx_mtime.tv_nsec);
        cr_expect(pw->atime == sx.stx_atime.tv_sec && pw->atime_ns == sx.stx_atime.tv_nsec,
                  "atime %ld.%09ld vs %lld.%09u", (long)pw->atime, pw->atime_ns,
                  (long long)sx.stx_atime.tv_sec, sx.stx_atime.tv_nsec);
        cr_expect_neq(pw->mtime_ns, 0, "the rich tree's mtimes have nanoseconds");
        free(tr.e);
}

/* diff_id of the tar inside a compressed layer, read back through libarchive's filters. */
static void inner_digest(const char *path, char out[RL_DIGEST_MAX])
{
        struct archive *a = archive_read_new();
        struct archive_entry *ae;
        rl_sha256 *h = NULL;
        char buf[65536];
        la_ssize_t n;

        archive_read_support_filter_all(a);
        archive_read_support_format_raw(a);
        cr_assert_eq(archive_read_open_filename(a, path, 65536), ARCHIVE_OK);
        cr_assert_eq(archive_read_next_header(a, &ae), ARCHIVE_OK);
        cr_assert_eq(rl_sha256_new(&h), 0);
        while ((n = archive_read_data(a, buf, sizeof(buf))) > 0)
                rl_sha256_update(h, buf, (size_t)n);
        cr_assert_eq(n, 0, "read %s: %s", path, archive_error_string(a));
        rl_sha256_final(h, out);
        rl_sha256_free(h);
        archive_read_free(a);
}

Test(diff, compressions_share_the_diff_id)
{
        static const rl_compression cs[] = { RL_COMPRESSION_NONE, RL_COMPRESSION_GZIP,
                                             RL_COMPRESSION_ZSTD };
        trees t;
        rl_layer_stats st[3];
        rl_error err = {};
        char out[3][PATH_MAX], digest[RL_DIGEST_MAX];
        uint64_t size;

        make_trees(&t, RLT_XFS);
        edit(t.upper);
        for (int i = 0; i < 3; i++) {
                rl_export_options o = { .compression = cs[i], .level = i == 2 ? 3 : 0 };
                snprintf(out[i], PATH_MAX, "%s/layer.%s", rlt_scratch(),
                         rl_compression_to_string(cs[i]));
                int r = export_paths(t.lower, t.upper, out[i], &o, &st[i], &err);
                cr_assert_eq(r, 0, "export %s: %s", rl_compression_to_string(cs[i]), err.msg);
                file_digest(out[i], digest, &size);
                cr_expect_str_eq(st[i].digest, digest, "%s: digest", out[i]);
                cr_expect_eq(st[i].size, size, "%s: size %lu vs %lu", out[i], st[i].size, size);
                cr_expect(rl_digest_valid(st[i].diff_id), "%s", st[i].diff_id);
                if (i > 0) {
                        inner_digest(out[i], digest);
                        cr_expect_str_eq(st[i].diff_id, digest, "%s: diff_id", out[i]);
                        tar tr;
                        read_tar(out[i], &tr);
                        cr_expect_eq(tr.n, ELEMENTS(expected_entries));
                        free(tr.e);
                }
        }
        cr_expect_str_eq(st[0].digest, st[0].diff_id, "uncompressed: digest is the diff_id");
        cr_expect_str_eq(st[1].diff_id, st[0].diff_id);
        cr_expect_str_eq(st[2].diff_id, st[0].diff_id);
        cr_expect_str_neq(st[1].digest, st[0].digest);
        cr_expect_str_neq(st[2].digest, st[0].digest);
        cr_expect_str_neq(st[1].digest, st[2].digest);
        cr_expect_lt(st[1].size, st[0].size);

        /* No time in the gzip header: the same changes give the same blob. */
        unsigned char head[10];
        int fd = open(out[1], O_RDONLY | O_CLOEXEC);
        cr_assert(fd >= 0 && read(fd, head, sizeof(head)) == (ssize_t)sizeof(head));
        close(fd);
        cr_expect(head[0] == 0x1f && head[1] == 0x8b, "not gzip");
        cr_expect(!head[4] && !head[5] && !head[6] && !head[7], "gzip header has a timestamp");
}

Test(diff, export_of_an_empty_lower)
{
        trees t;
        tar tr;
        rl_layer_stats st;
        rl_error err = {};
        char out[PATH_MAX];

        make_trees(&t, RLT_XFS);
        snprintf(out, sizeof(out), "%s/base.tar", rlt_scratch());
        int r = export_paths(NULL, t.lower, out, NULL, &st, &err);
        cr_assert_eq(r, 0, "rl_layer_export: %s", err.msg);
        read_tar(out, &tr);
        /* Every entry but the socket, which tar cannot carry. */
        cr_expect_eq(tr.n, 37, "%zu entries", tr.n);
        cr_expect_eq(st.whiteouts + st.opaques, 0);
        cr_expect_str_eq(tr.e[0].name, "./");
        for (size_t i = 0; i < tr.n; i++)
                cr_expect_str_neq(tr.e[i].name, "dev/sock");
        /* Three names of one inode: the first in path order carries the data. */
        cr_expect_str_eq(find(&tr, "bin/big-link")->link, "");
        cr_expect_eq(find(&tr, "bin/big-link")->size, 3 << 20);
        cr_expect_str_eq(find(&tr, "data/big")->link, "bin/big-link");
        cr_expect_str_eq(find(&tr, "home/user/big-link2")->link, "bin/big-link");
        cr_expect(S_ISCHR(find(&tr, "dev/null")->mode));
        cr_expect(S_ISFIFO(find(&tr, "dev/fifo")->mode));
        free(tr.e);
}

/* Export reports progress (entries and bytes only grow), and a cancel set from the callback
 * (the daemon's, when its client hung up) stops it. */
static uint64_t export_entries, export_bytes;
static unsigned export_calls, export_cancel_at;
static atomic_bool export_cancel;

static void on_export_progress(const rl_tree_progress *p, void *userdata)
{
        cr_assert_eq(userdata, &export_calls);
        cr_assert(p->entries >= export_entries && p->bytes >= export_bytes);
        export_entries = p->entries;
        export_bytes = p->bytes;
        if (++export_calls == export_cancel_at)
                atomic_store(&export_cancel, true);
}

Test(diff, export_reports_progress_and_a_cancel_from_it_stops_it)
{
        trees t;
        rl_layer_stats st;
        rl_error err = {};
        char out[PATH_MAX];

        make_trees(&t, RLT_XFS);
        snprintf(out, sizeof(out), "%s/base.tar", rlt_scratch());
        rl_export_options o = { .progress = on_export_progress, .progress_userdata = &export_calls,
                                .progress_interval_ns = 1, .cancel = &export_cancel };
        cr_assert_eq(export_paths(NULL, t.lower, out, &o, &st, &err), 0, "%s", err.msg);
        cr_expect_geq(export_calls, 10, "progress called %u times", export_calls);
        cr_expect(export_entries <= st.entries && export_bytes <= st.bytes);
        cr_expect_geq(export_bytes, 3 << 20, "the big file's data was not counted");

        export_calls = 0;
        export_entries = export_bytes = 0;
        export_cancel_at = 5;
        cr_expect_eq(export_paths(NULL, t.lower, out, &o, &st, &err), -ECANCELED, "%s", err.msg);
        cr_expect_eq(export_calls, 5);
}

Test(diff, export_refuses_what_a_layer_cannot_say)
{
        trees t;
        rl_error err = {};
        char out[PATH_MAX];
        rl_compression c;

        make_trees(&t, RLT_XFS);
        snprintf(out, sizeof(out), "%s/bad.tar", rlt_scratch());

        rlt_write_file(at(t.upper, "etc/.wh.evil"), 10, 6);
        int r = export_paths(t.lower, t.upper, out, NULL, NULL, &err);
        cr_expect_eq(r, -EINVAL, "a .wh. name: %d (%s)", r, err.msg);
        cr_expect(strstr(err.msg, "etc/.wh.evil"), "%s", err.msg);
        cr_assert(unlink(at(t.upper, "etc/.wh.evil")) == 0);

        rl_export_options o = { .compression = RL_COMPRESSION_GZIP, .level = 12 };
        r = export_paths(t.lower, t.upper, out, &o, NULL, &err);
        cr_expect_eq(r, -EINVAL, "gzip level 12: %d (%s)", r, err.msg);
        o = (rl_export_options){ .compression = RL_COMPRESSION_NONE, .level = 3 };
        r = export_paths(t.lower, t.upper, out, &o, NULL, &err);
        cr_expect_eq(r, -EINVAL, "a level without compression: %d (%s)", r, err.msg);

        atomic_bool cancel = true;
        edit(t.upper);
        o = (rl_export_options){ .cancel = &cancel };
        r = export_paths(t.lower, t.upper, out, &o, NULL, &err);
        cr_expect_eq(r, -ECANCELED, "cancelled: %d (%s)", r, err.msg);

        cr_expect_eq(rl_compression_from_string("zstd", &c), 0);
        cr_expect_eq(c, RL_COMPRESSION_ZSTD);
        cr_expect_eq(rl_compression_from_string("xz", &c), -EINVAL);
        cr_expect_str_eq(rl_compression_to_string(RL_COMPRESSION_GZIP), "gzip");
        cr_expect_str_eq(rl_compression_to_string(RL_COMPRESSION_NONE), "none");
}

/* --- round trip: Apply(Export(x)) == x ------------------------------------------------------ */

/* Export upper against lower (NULL: empty), apply the layer onto onto (which must hold
 * lower's content), and compare onto with upper attribute by attribute. */
static void round_trip(const char *lower, const char *upper, const char *onto,
                       rl_compression c)
{
        rl_layer_stats out, in;
        rl_error err = {};
        char tar_path[PATH_MAX], why[4096];

        snprintf(tar_path, sizeof(tar_path), "%s/round-trip.%s", rlt_scratch(),
                 rl_compression_to_string(c));
        rl_export_options o = { .compression = c };
        int r = export_paths(lower, upper, tar_path, &o, &out, &err);
        cr_assert_eq(r, 0, "rl_layer_export: %s", err.msg);

        rl_apply_options ao = { .expect_digest = out.digest, .expect_diff_id = out.diff_id };
        int dfd = open_dir(onto), tfd = open(tar_path, O_RDONLY | O_CLOEXEC);
        cr_assert(tfd >= 0, "open %s: %s", tar_path, strerror(errno));
        r = rl_layer_apply(dfd, tfd, &ao, &in, &err);
        close(dfd);
        close(tfd);
        cr_assert_eq(r, 0, "rl_layer_apply (%s): %s", rl_compression_to_string(c), err.msg);
        cr_expect_eq(in.entries, out.entries, "applied %lu entries of %lu", in.entries,
                     out.entries);
        cr_expect_eq(in.whiteouts, out.whiteouts);
        cr_expect_eq(in.opaques, out.opaques);
        cr_expect_str_eq(in.diff_id, out.diff_id);
        cr_assert(rlt_tree_equal(upper, onto, NULL, NULL, why, sizeof(why)),
                  "%s: apply of the export differs from upper: %s",
                  rl_compression_to_string(c), why);
}

Test(diff, apply_of_the_export_gives_upper_back)
{
        trees t;

        make_trees(&t, RLT_XFS);
        edit(t.upper);
        clone_tree(t.lower, t.mnt, "onto-none", 0);
        round_trip(t.lower, t.upper, at(t.mnt, "onto-none"), RL_COMPRESSION_NONE);
        clone_tree(t.lower, t.mnt, "onto-zstd", 0);
        round_trip(t.lower, t.upper, at(t.mnt, "onto-zstd"), RL_COMPRESSION_ZSTD);
}

Test(diff, apply_of_a_base_layer_gives_the_tree_back)
{
        trees t;

        make_trees(&t, RLT_XFS);
        /* tar has no sockets: the base layer of a tree without one. */
        cr_assert(unlink(at(t.upper, "dev/sock")) == 0);
        cr_assert(mkdir(at(t.mnt, "onto"), 0700) == 0);
        round_trip(NULL, t.upper, at(t.mnt, "onto"), RL_COMPRESSION_GZIP);
}
