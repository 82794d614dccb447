/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * layer.c: rl_layer_apply on loop XFS against its contract (include/reflayer/layer.h): every
 * entry kind with its metadata, whiteouts and opaque directories, replacements, compressed
 * layers and their digests, id shifting, and a corpus of malicious and malformed layers that
 * must be refused without anything outside the tree changing.
 */
#include <archive.h>
#include <archive_entry.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <linux/capability.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/idmap.h>
#include <reflayer/layer.h>

#include "rltest-tar.h"
#include "rltest.h"

static char mnt[PATH_MAX];

static void setup(void)
{
        rlt_init();
        snprintf(mnt, sizeof(mnt), "%s", rlt_mkfs(RLT_XFS, 0, "xfs"));
}

TestSuite(layer, .init = setup, .fini = rlt_fini, .timeout = 120);

/* --- helpers ---------------------------------------------------------------------------- */

/* mnt/rel (rel may hold printf formats). */
static const char *in_mnt(char *buf, size_t n, const char *rel)
{
        snprintf(buf, n, "%s/%s", mnt, rel);
        return buf;
}

static void mkdir_p(const char *path, mode_t mode)
{
        cr_assert(mkdir(path, mode) == 0 || errno == EEXIST, "mkdir %s: %s", path, strerror(errno));
}

static void put_file(const char *path, const char *content)
{
        int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
        cr_assert(fd >= 0, "create %s: %s", path, strerror(errno));
        size_t n = strlen(content);
        cr_assert(write(fd, content, n) == (ssize_t)n, "write %s: %s", path, strerror(errno));
        close(fd);
}

/* Apply the layer file at tar onto the directory tree. */
static int apply(const char *tree, const char *tar, const rl_apply_options *o, rl_layer_stats *st,
                 rl_error *err)
{
        int dfd = open(tree, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(dfd >= 0, "open %s: %s", tree, strerror(errno));
        int tfd = open(tar, O_RDONLY | O_CLOEXEC);
        cr_assert(tfd >= 0, "open %s: %s", tar, strerror(errno));
        int r = rl_layer_apply(dfd, tfd, o, st, err);
        close(tfd);
        close(dfd);
        return r;
}

/* Apply and require success. */
static void apply_ok(const char *tree, const char *tar, const rl_apply_options *o,
                     rl_layer_stats *st)
{
        rl_error err = {};
        rl_layer_stats local = {};
        int r = apply(tree, tar, o, st ? st : &local, &err);
        cr_assert_eq(r, 0, "rl_layer_apply %s onto %s: %d %s", tar, tree, r, err.msg);
}

static struct stat lstat_of(const char *path)
{
        struct stat st;
        cr_assert(lstat(path, &st) == 0, "lstat %s: %s", path, strerror(errno));
        return st;
}

static bool exists(const char *path)
{
        struct stat st;
        return lstat(path, &st) == 0;
}

/* Names in dir (not . and ..), sorted and joined with ','. */
static const char *listing(const char *dir)
{
        static char out[4096];
        struct dirent **names;
        int n = scandir(dir, &names, NULL, alphasort);
        cr_assert(n >= 0, "scandir %s: %s", dir, strerror(errno));
        out[0] = '\0';
        for (int i = 0; i < n; i++) {
                if (strcmp(names[i]->d_name, ".") && strcmp(names[i]->d_name, "..")) {
                        if (out[0])
                                strncat(out, ",", sizeof(out) - strlen(out) - 1);
                        strncat(out, names[i]->d_name, sizeof(out) - strlen(out) - 1);
                }
                free(names[i]);
        }
        free(names);
        return out;
}

static void expect_meta(const char *path, mode_t type, mode_t perm, uid_t uid, gid_t gid,
                        time_t sec, long nsec)
{
        struct stat st = lstat_of(path);
        cr_expect_eq(st.st_mode & S_IFMT, type, "%s: type %o, expected %o", path,
                     st.st_mode & S_IFMT, type);
        cr_expect_eq(st.st_mode & 07777, perm, "%s: mode %04o, expected %04o", path,
                     st.st_mode & 07777, perm);
        cr_expect(st.st_uid == uid && st.st_gid == gid, "%s: owner %u:%u, expected %u:%u", path,
                  st.st_uid, st.st_gid, uid, gid);
        cr_expect(st.st_mtim.tv_sec == sec && st.st_mtim.tv_nsec == nsec,
                  "%s: mtime %ld.%09ld, expected %ld.%09ld", path, (long)st.st_mtim.tv_sec,
                  st.st_mtim.tv_nsec, (long)sec, nsec);
}

static void expect_xattr(const char *path, const char *name, const void *value, size_t size)
{
        char buf[256];
        ssize_t n = lgetxattr(path, name, buf, sizeof(buf));
        cr_expect(n >= 0, "%s: getxattr %s: %s", path, name, strerror(errno));
        if (n >= 0)
                cr_expect(n == (ssize_t)size && memcmp(buf, value, size) == 0,
                          "%s: xattr %s: %zd bytes, not the %zu written", path, name, n, size);
}

/* A POSIX ACL xattr value (the kernel's little-endian form) with one named user and group,
 * permissions matching mode 0660 so neither a chmod nor the ACL rewrites the other. */
#define ACL_USER_OBJ 0x01
#define ACL_USER 0x02
#define ACL_GROUP_OBJ 0x04
#define ACL_GROUP 0x08
#define ACL_MASK 0x10
#define ACL_OTHER 0x20
typedef struct __attribute__((packed)) acl_value {
        uint32_t version;
        struct __attribute__((packed)) {
                uint16_t tag, perm;
                uint32_t id;
        } e[6];
} acl_value;

static acl_value make_acl(uint32_t user, uint32_t group)
{
        return (acl_value){
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
}

/* security.capability v2: cap_net_raw permitted and effective. */
static struct vfs_cap_data make_cap_v2(void)
{
        return (struct vfs_cap_data){
                .magic_etc = htole32(VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE),
                .data = { { htole32(1u << CAP_NET_RAW), 0 }, { 0, 0 } },
        };
}

/* --- every entry kind ------------------------------------------------------------------- */

/*
 * One layer with every kind of entry and every attribute a layer carries; the tree must have
 * exactly that. The directory comes first in the tar, so its mtime holds only if it is set
 * after its entries were made; the setuid file has a capability and an owner, so it holds
 * only if chown comes before chmod and the xattrs (chown clears both).
 */
Test(layer, every_entry_kind_and_attribute)
{
        char tar[PATH_MAX], tree[PATH_MAX], p[PATH_MAX];
        in_mnt(tar, sizeof(tar), "all.tar");
        in_mnt(tree, sizeof(tree), "tree");
        mkdir_p(tree, 0755);
        acl_value acl = make_acl(1001, 1002);
        struct vfs_cap_data cap = make_cap_v2();
        static const char data[] = "hello, layer\n", suid[] = "#!/bin/true\n";

        rlt_tar *t = rlt_tar_open(tar, RL_COMPRESSION_NONE);
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_DIR, .name = "d", .mode = 0750,
                                         .uid = 1234, .gid = 5678, .mtime_sec = 1600000000,
                                         .mtime_nsec = 111111111,
                                         .xattrs = { { "user.dir", "dv", 2 } } });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "d/file", .mode = 0640,
                                         .uid = 1234, .gid = 5678, .mtime_sec = 1600000001,
                                         .mtime_nsec = 123456789, .data = data,
                                         .xattrs = { { "user.comment", "a comment", 9 },
                                                     { "trusted.t", "tv", 2 } } });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "d/suid", .mode = 04755,
                                         .uid = 1234, .gid = 5678, .mtime_sec = 1600000002,
                                         .mtime_nsec = 2, .data = suid,
                                         .xattrs = { { "security.capability", &cap,
                                                       XATTR_CAPS_SZ_2 } } });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "d/acl", .mode = 0660,
                                         .mtime_sec = 1600000003, .mtime_nsec = 3, .data = "acl",
                                         .xattrs = { { "system.posix_acl_access", &acl,
                                                       sizeof(acl) } } });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_SYMLINK, .name = "d/link",
                                         .target = "file", .uid = 1234, .gid = 5678,
                                         .mtime_sec = 1600000004, .mtime_nsec = 444444444 });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_SYMLINK, .name = "d/abs",
                                         .target = "/etc/passwd", .mtime_sec = 1600000005 });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_HARDLINK, .name = "d/hard",
                                         .target = "d/file", .mode = 0640, .uid = 1234,
                                         .gid = 5678, .mtime_sec = 1600000001,
                                         .mtime_nsec = 123456789 });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_FIFO, .name = "d/fifo", .mode = 0620,
                                         .uid = 1234, .gid = 5678, .mtime_sec = 1600000006,
                                         .mtime_nsec = 666666666 });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_CHR, .name = "d/null", .mode = 0666,
                                         .rdev_major = 1, .rdev_minor = 3,
                                         .mtime_sec = 1600000007, .mtime_nsec = 7 });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_DIR, .name = "empty/", .mode = 0700,
                                         .uid = 1234, .gid = 5678, .mtime_sec = 1600000008,
                                         .mtime_nsec = 888888888 });
        rlt_tar_close(t);

        rl_layer_stats st = {};
        apply_ok(tree, tar, NULL, &st);

        cr_assert_str_eq(listing(tree), "d,empty");
        snprintf(p, sizeof(p), "%s/d", tree);
        cr_assert_str_eq(listing(p), "abs,acl,fifo,file,hard,link,null,suid");
        expect_meta(p, S_IFDIR, 0750, 1234, 5678, 1600000000, 111111111);
        expect_xattr(p, "user.dir", "dv", 2);

        snprintf(p, sizeof(p), "%s/d/file", tree);
        expect_meta(p, S_IFREG, 0640, 1234, 5678, 1600000001, 123456789);
        cr_expect_str_eq(rlt_read_file(p) ?: "(unreadable)", data);
        expect_xattr(p, "user.comment", "a comment", 9);
        expect_xattr(p, "trusted.t", "tv", 2);
        struct stat file = lstat_of(p);
        cr_expect_eq(file.st_nlink, 2, "d/file: nlink %lu, expected 2", file.st_nlink);

        snprintf(p, sizeof(p), "%s/d/hard", tree);
        struct stat hard = lstat_of(p);
        cr_expect_eq(hard.st_ino, file.st_ino, "d/hard is not the inode of d/file");

        snprintf(p, sizeof(p), "%s/d/suid", tree);
        expect_meta(p, S_IFREG, 04755, 1234, 5678, 1600000002, 2);
        expect_xattr(p, "security.capability", &cap, XATTR_CAPS_SZ_2);
        cr_expect_str_eq(rlt_read_file(p) ?: "(unreadable)", suid);

        snprintf(p, sizeof(p), "%s/d/acl", tree);
        expect_meta(p, S_IFREG, 0660, 0, 0, 1600000003, 3);
        expect_xattr(p, "system.posix_acl_access", &acl, sizeof(acl));

        char target[PATH_MAX];
        snprintf(p, sizeof(p), "%s/d/link", tree);
        expect_meta(p, S_IFLNK, 0777, 1234, 5678, 1600000004, 444444444);
        ssize_t n = readlink(p, target, sizeof(target));
        cr_expect(n == 4 && memcmp(target, "file", 4) == 0, "d/link: wrong target");
        snprintf(p, sizeof(p), "%s/d/abs", tree);
        n = readlink(p, target, sizeof(target));
        cr_expect(n == 11 && memcmp(target, "/etc/passwd", 11) == 0, "d/abs: wrong target");

        snprintf(p, sizeof(p), "%s/d/fifo", tree);
        expect_meta(p, S_IFIFO, 0620, 1234, 5678, 1600000006, 666666666);
        snprintf(p, sizeof(p), "%s/d/null", tree);
        expect_meta(p, S_IFCHR, 0666, 0, 0, 1600000007, 7);
        struct stat dev = lstat_of(p);
        cr_expect(major(dev.st_rdev) == 1 && minor(dev.st_rdev) == 3, "d/null: device %u:%u",
                  major(dev.st_rdev), minor(dev.st_rdev));
        snprintf(p, sizeof(p), "%s/empty", tree);
        expect_meta(p, S_IFDIR, 0700, 1234, 5678, 1600000008, 888888888);

        struct stat tst = lstat_of(tar);
        cr_expect_eq(st.entries, 10, "stats: %lu entries, expected 10", st.entries);
        cr_expect_eq(st.whiteouts, 0);
        cr_expect_eq(st.opaques, 0);
        cr_expect_eq(st.bytes, strlen(data) + strlen(suid) + 3, "stats: %lu bytes", st.bytes);
        cr_expect_eq(st.size, (uint64_t)tst.st_size, "stats: size %lu, the tar is %ld", st.size,
                     (long)tst.st_size);
}

/* --- whiteouts and opaque directories ---------------------------------------------------- */

/* A whiteout deletes a file and a whole directory of the lower tree, and nothing else. */
Test(layer, whiteout_deletes_file_and_directory)
{
        char tree[PATH_MAX], tar[PATH_MAX], p[PATH_MAX];
        in_mnt(tree, sizeof(tree), "tree");
        in_mnt(tar, sizeof(tar), "wh.tar");
        mkdir_p(tree, 0755);
        snprintf(p, sizeof(p), "%s/keep", tree);
        put_file(p, "keep");
        snprintf(p, sizeof(p), "%s/gone-file", tree);
        put_file(p, "gone");
        snprintf(p, sizeof(p), "%s/gone-dir", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/gone-dir/sub", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/gone-dir/sub/deep", tree);
        put_file(p, "deep");
        snprintf(p, sizeof(p), "%s/dir", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/dir/x", tree);
        put_file(p, "x");
        snprintf(p, sizeof(p), "%s/dir/y", tree);
        put_file(p, "y");

        rlt_tar *t = rlt_tar_open(tar, RL_COMPRESSION_NONE);
        rlt_tar_whiteout(t, "gone-file");
        rlt_tar_whiteout(t, "gone-dir");
        rlt_tar_whiteout(t, "dir/x");
        rlt_tar_close(t);
        rl_layer_stats st = {};
        apply_ok(tree, tar, NULL, &st);

        cr_expect_str_eq(listing(tree), "dir,keep");
        snprintf(p, sizeof(p), "%s/dir", tree);
        cr_expect_str_eq(listing(p), "y");
        snprintf(p, sizeof(p), "%s/keep", tree);
        cr_expect_str_eq(rlt_read_file(p) ?: "", "keep");
        cr_expect_eq(st.whiteouts, 3, "stats: %lu whiteouts", st.whiteouts);
}

/*
 * `.wh..wh..opq` in o/ removes what the lower tree had in o/ but keeps what the same layer
 * put there, whether the marker comes before or after those entries in the tar, including a
 * name the lower tree had (old1) put back with new content.
 */
static void opaque(bool marker_first)
{
        char tree[PATH_MAX], tar[PATH_MAX], p[PATH_MAX];
        in_mnt(tree, sizeof(tree), "tree");
        in_mnt(tar, sizeof(tar), "opq.tar");
        mkdir_p(tree, 0755);
        snprintf(p, sizeof(p), "%s/o", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/o/old1", tree);
        put_file(p, "old1");
        snprintf(p, sizeof(p), "%s/o/old2", tree);
        put_file(p, "old2");
        snprintf(p, sizeof(p), "%s/o/sub", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/o/sub/deep", tree);
        put_file(p, "deep");
        snprintf(p, sizeof(p), "%s/other", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/other/keep", tree);
        put_file(p, "keep");

        rlt_tar *t = rlt_tar_open(tar, RL_COMPRESSION_NONE);
        rlt_tar_dir(t, "o/", 0751);
        if (marker_first)
                rlt_tar_opaque(t, "o");
        rlt_tar_file(t, "o/new", 0644, "new");
        rlt_tar_file(t, "o/old1", 0600, "old1, again");
        rlt_tar_dir(t, "o/newsub", 0755);
        rlt_tar_file(t, "o/newsub/x", 0644, "x");
        if (!marker_first)
                rlt_tar_opaque(t, "o");
        rlt_tar_close(t);
        rl_layer_stats st = {};
        apply_ok(tree, tar, NULL, &st);

        snprintf(p, sizeof(p), "%s/o", tree);
        cr_expect_str_eq(listing(p), "new,newsub,old1", "marker %s", marker_first ? "first" : "last");
        struct stat o = lstat_of(p);
        cr_expect_eq(o.st_mode & 07777, 0751, "o: mode %04o", o.st_mode & 07777);
        snprintf(p, sizeof(p), "%s/o/old1", tree);
        cr_expect_str_eq(rlt_read_file(p) ?: "", "old1, again");
        snprintf(p, sizeof(p), "%s/o/newsub", tree);
        cr_expect_str_eq(listing(p), "x");
        snprintf(p, sizeof(p), "%s/other", tree);
        cr_expect_str_eq(listing(p), "keep");
        cr_expect_str_eq(listing(tree), "o,other");
        cr_expect_eq(st.opaques, 1, "stats: %lu opaques", st.opaques);
}

Test(layer, opaque_marker_before_new_entries)
{
        opaque(true);
}

Test(layer, opaque_marker_after_new_entries)
{
        opaque(false);
}

/* --- replacements ------------------------------------------------------------------------ */

/*
 * A file replaces a lower directory (and all in it), a directory replaces a lower file, a
 * file replaces a lower symlink (to a file in the tree, and to one outside it) without
 * writing through it, a directory replaces a lower symlink to a directory, and a directory
 * over a lower directory keeps its entries and takes the new mode.
 */
Test(layer, replacements)
{
        char base[PATH_MAX], tree[PATH_MAX], tar[PATH_MAX], p[PATH_MAX], q[PATH_MAX];
        in_mnt(base, sizeof(base), "rep");
        mkdir_p(base, 0755);
        snprintf(tree, sizeof(tree), "%s/tree", base);
        in_mnt(tar, sizeof(tar), "rep.tar");
        mkdir_p(tree, 0755);
        snprintf(p, sizeof(p), "%s/sentinel", base);
        put_file(p, "sentinel");
        snprintf(p, sizeof(p), "%s/d1", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/d1/a", tree);
        put_file(p, "a");
        snprintf(p, sizeof(p), "%s/f1", tree);
        put_file(p, "f1");
        snprintf(p, sizeof(p), "%s/victim", tree);
        put_file(p, "victim");
        snprintf(p, sizeof(p), "%s/s1", tree);
        cr_assert(symlink("victim", p) == 0);
        snprintf(p, sizeof(p), "%s/s2", tree);
        snprintf(q, sizeof(q), "%s/sentinel", base);
        cr_assert(symlink(q, p) == 0);
        snprintf(p, sizeof(p), "%s/vdir", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/s3", tree);
        cr_assert(symlink("vdir", p) == 0);
        snprintf(p, sizeof(p), "%s/keep", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/keep/a", tree);
        put_file(p, "a");

        rlt_tar *t = rlt_tar_open(tar, RL_COMPRESSION_NONE);
        rlt_tar_file(t, "d1", 0644, "now a file");
        rlt_tar_dir(t, "f1/", 0755);
        rlt_tar_file(t, "f1/x", 0644, "x");
        rlt_tar_file(t, "s1", 0644, "replaced link");
        rlt_tar_file(t, "s2", 0644, "replaced abs link");
        rlt_tar_dir(t, "s3/", 0755);
        rlt_tar_file(t, "s3/y", 0644, "y");
        rlt_tar_dir(t, "keep/", 0700);
        rlt_tar_file(t, "keep/b", 0644, "b");
        rlt_tar_close(t);
        apply_ok(tree, tar, NULL, NULL);

        snprintf(p, sizeof(p), "%s/d1", tree);
        cr_expect(S_ISREG(lstat_of(p).st_mode), "d1 is not a file");
        cr_expect_str_eq(rlt_read_file(p) ?: "", "now a file");
        snprintf(p, sizeof(p), "%s/f1", tree);
        cr_expect(S_ISDIR(lstat_of(p).st_mode), "f1 is not a directory");
        cr_expect_str_eq(listing(p), "x");
        snprintf(p, sizeof(p), "%s/s1", tree);
        cr_expect(S_ISREG(lstat_of(p).st_mode), "s1 is still a symlink");
        cr_expect_str_eq(rlt_read_file(p) ?: "", "replaced link");
        snprintf(p, sizeof(p), "%s/victim", tree);
        cr_expect_str_eq(rlt_read_file(p) ?: "", "victim", "the write went through s1");
        snprintf(p, sizeof(p), "%s/s2", tree);
        cr_expect(S_ISREG(lstat_of(p).st_mode), "s2 is still a symlink");
        cr_expect_str_eq(rlt_read_file(p) ?: "", "replaced abs link");
        snprintf(p, sizeof(p), "%s/sentinel", base);
        cr_expect_str_eq(rlt_read_file(p) ?: "", "sentinel", "the write went through s2");
        snprintf(p, sizeof(p), "%s/s3", tree);
        cr_expect(S_ISDIR(lstat_of(p).st_mode), "s3 is not a directory");
        cr_expect_str_eq(listing(p), "y");
        snprintf(p, sizeof(p), "%s/vdir", tree);
        cr_expect_str_eq(listing(p), "", "s3/y went through the symlink into vdir");
        snprintf(p, sizeof(p), "%s/keep", tree);
        cr_expect_str_eq(listing(p), "a,b");
        cr_expect_eq(lstat_of(p).st_mode & 07777, 0700);
        cr_expect_str_eq(listing(base), "sentinel,tree");
}

/*
 * umoci 0.4.7 writes, for a directory replaced by a file, the file and then whiteouts of the
 * directory's old entries below it ("srv/gone" then "srv/gone/.wh.g"). Nothing is left to
 * hide there: the whiteout deletes nothing and the apply goes on (umoci's unpack does so).
 */
Test(layer, whiteout_below_a_replaced_directory_is_a_noop)
{
        char tree[PATH_MAX], tar[PATH_MAX], p[PATH_MAX];
        in_mnt(tree, sizeof(tree), "tree");
        in_mnt(tar, sizeof(tar), "gone.tar");
        mkdir_p(tree, 0755);
        snprintf(p, sizeof(p), "%s/gone", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/gone/g", tree);
        put_file(p, "g");

        rlt_tar *t = rlt_tar_open(tar, RL_COMPRESSION_NONE);
        rlt_tar_file(t, "gone", 0644, "now a file");
        rlt_tar_whiteout(t, "gone/g");
        rlt_tar_file(t, "after", 0644, "after");
        rlt_tar_close(t);
        apply_ok(tree, tar, NULL, NULL);
        snprintf(p, sizeof(p), "%s/gone", tree);
        cr_expect_str_eq(rlt_read_file(p) ?: "", "now a file");
        cr_expect_str_eq(listing(tree), "after,gone");
}

/*
 * A layer that replaces d/f (a chown, say) but has no entry for d says nothing about d: d
 * keeps the times of the lower tree, as umoci's unpack keeps them. Otherwise the tree takes
 * the time of the apply, and a diff against the lower tree finds d changed when the layer
 * did not change it (rl_layer_export's layer would not reproduce its upper tree).
 */
Test(layer, parent_directory_not_in_layer_keeps_its_times)
{
        char tree[PATH_MAX], tar[PATH_MAX], p[PATH_MAX];
        in_mnt(tree, sizeof(tree), "tree");
        in_mnt(tar, sizeof(tar), "chown.tar");
        mkdir_p(tree, 0755);
        snprintf(p, sizeof(p), "%s/d", tree);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/d/f", tree);
        put_file(p, "f");
        snprintf(p, sizeof(p), "%s/d", tree);
        struct timespec ts[2] = { { 1500000000, 5 }, { 1500000000, 5 } };
        cr_assert(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW) == 0);

        rlt_tar *t = rlt_tar_open(tar, RL_COMPRESSION_NONE);
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "d/f", .uid = 1234,
                                         .gid = 5678, .data = "f" });
        rlt_tar_close(t);
        apply_ok(tree, tar, NULL, NULL);
        struct stat st = lstat_of(p);
        cr_expect(st.st_mtim.tv_sec == 1500000000 && st.st_mtim.tv_nsec == 5,
                  "d: mtime %ld.%09ld, the lower tree's was 1500000000.000000005",
                  (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
}

/* --- compression and digests ------------------------------------------------------------- */

static void write_sample(const char *path, rl_compression c)
{
        rlt_tar *t = rlt_tar_open(path, c);
        rlt_tar_dir(t, "./", 0755); /* the root's own times, as image tools write them */
        rlt_tar_dir(t, "etc", 0755);
        rlt_tar_file(t, "etc/hostname", 0644, "sample\n");
        rlt_tar_symlink(t, "etc/link", "hostname");
        rlt_tar_hardlink(t, "etc/hard", "etc/hostname");
        char big[100000];
        for (size_t i = 0; i < sizeof(big); i++)
                big[i] = (char)('a' + i * 7 % 26);
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "big", .data = big,
                                         .size = sizeof(big), .mtime_nsec = 5 });
        rlt_tar_close(t);
}

/*
 * The same entries uncompressed, gzip and zstd give the same tree; the stats give the sha256
 * of the blob and of the uncompressed tar (computed here by sha256sum, zcat and zstd -dc),
 * and an apply told the right digests succeeds.
 */
Test(layer, compressed_layers_and_digests)
{
        static const struct {
                rl_compression c;
                const char *file, *decompress;
        } kinds[] = {
                { RL_COMPRESSION_NONE, "l.tar", "cat" },
                { RL_COMPRESSION_GZIP, "l.tar.gz", "zcat" },
                { RL_COMPRESSION_ZSTD, "l.tar.zst", "zstd -q -dc" },
        };
        char first[PATH_MAX] = "";
        for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
                char tar[PATH_MAX], tree[PATH_MAX], cmd[PATH_MAX + 64];
                char digest[RL_DIGEST_MAX], diff_id[RL_DIGEST_MAX];
                in_mnt(tar, sizeof(tar), kinds[i].file);
                snprintf(tree, sizeof(tree), "%s/tree-%zu", mnt, i);
                mkdir_p(tree, 0755);
                write_sample(tar, kinds[i].c);
                rlt_sha256_file(tar, digest);
                snprintf(cmd, sizeof(cmd), "%s '%s'", kinds[i].decompress, tar);
                rlt_sha256_of_command(cmd, diff_id);

                rl_layer_stats st = {};
                apply_ok(tree, tar, NULL, &st);
                cr_expect_str_eq(st.digest, digest, "%s: digest", kinds[i].file);
                cr_expect_str_eq(st.diff_id, diff_id, "%s: diff_id", kinds[i].file);
                cr_expect_eq(st.size, lstat_of(tar).st_size, "%s: size", kinds[i].file);
                cr_expect_eq(st.bytes, 100000 + 7, "%s: %lu bytes", kinds[i].file, st.bytes);
                if (kinds[i].c == RL_COMPRESSION_NONE)
                        cr_expect_str_eq(st.digest, st.diff_id, "a plain tar is its own diff");
                else
                        cr_expect_str_neq(st.digest, st.diff_id);

                /* Told the right digests, the apply succeeds (onto a second tree). */
                char again[PATH_MAX];
                snprintf(again, sizeof(again), "%s/again-%zu", mnt, i);
                mkdir_p(again, 0755);
                rl_apply_options o = { .expect_digest = digest, .expect_diff_id = diff_id };
                apply_ok(again, tar, &o, NULL);

                if (!first[0]) {
                        snprintf(first, sizeof(first), "%s", tree);
                        continue;
                }
                char why[4096];
                cr_expect(rlt_tree_equal_flags(first, tree, NULL, NULL, RLT_CMP_NO_ATIME, why,
                                               sizeof(why)),
                          "%s vs the plain tar: %s", kinds[i].file, why);
        }
}

/* A wrong expected digest or diff_id fails with -EBADMSG and a message naming a digest. */
Test(layer, digest_mismatch_is_ebadmsg)
{
        static const char wrong[] =
                "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        char tar[PATH_MAX], tree[PATH_MAX], digest[RL_DIGEST_MAX], diff_id[RL_DIGEST_MAX];
        in_mnt(tar, sizeof(tar), "l.tar.gz");
        write_sample(tar, RL_COMPRESSION_GZIP);
        rlt_sha256_file(tar, digest);
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof(cmd), "zcat '%s'", tar);
        rlt_sha256_of_command(cmd, diff_id);

        const rl_apply_options opts[] = {
                { .expect_digest = wrong },
                { .expect_diff_id = wrong },
                { .expect_digest = digest, .expect_diff_id = wrong },
                { .expect_digest = wrong, .expect_diff_id = diff_id },
                { .expect_digest = diff_id }, /* the two swapped */
        };
        for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
                snprintf(tree, sizeof(tree), "%s/tree-%zu", mnt, i);
                mkdir_p(tree, 0755);
                rl_error err = {};
                rl_layer_stats st = {};
                int r = apply(tree, tar, &opts[i], &st, &err);
                cr_expect_eq(r, -EBADMSG, "case %zu: %d (%s), expected -EBADMSG", i, r, err.msg);
                cr_expect_eq(err.code, EBADMSG, "case %zu: err.code %d", i, err.code);
                const char *named = opts[i].expect_digest == digest ? diff_id : digest;
                cr_expect(strstr(err.msg, "sha256:") &&
                                  (strstr(err.msg, wrong) || strstr(err.msg, named) ||
                                   strstr(err.msg, opts[i].expect_digest ?: wrong)),
                          "case %zu: the message names no digest: %s", i, err.msg);
        }
}

/* --- id shifting ------------------------------------------------------------------------- */

/*
 * With uid and gid maps 0:100000:65536, owners move up by 100000, and so do the ids inside
 * an ACL; a v2 capability becomes v3 with root id 100000 (what the kernel itself writes for
 * a capability set by the root of a user namespace mapped that way).
 */
Test(layer, shifts_owners_acls_and_capabilities)
{
        char tar[PATH_MAX], tree[PATH_MAX], p[PATH_MAX];
        in_mnt(tar, sizeof(tar), "shift.tar");
        in_mnt(tree, sizeof(tree), "tree");
        mkdir_p(tree, 0755);
        acl_value acl = make_acl(1001, 1002);
        struct vfs_cap_data cap = make_cap_v2();

        rlt_tar *t = rlt_tar_open(tar, RL_COMPRESSION_NONE);
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_DIR, .name = "d" });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "d/root", .data = "r" });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "d/owned", .uid = 1234,
                                         .gid = 5678, .data = "o" });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_SYMLINK, .name = "d/link",
                                         .target = "owned", .uid = 1234, .gid = 5678 });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "d/acl", .mode = 0660,
                                         .data = "a",
                                         .xattrs = { { "system.posix_acl_access", &acl,
                                                       sizeof(acl) } } });
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "d/cap", .mode = 0755,
                                         .data = "c",
                                         .xattrs = { { "security.capability", &cap,
                                                       XATTR_CAPS_SZ_2 } } });
        rlt_tar_close(t);

        rl_error err = {};
        rl_idmap *uids = NULL, *gids = NULL;
        cr_assert_eq(rl_idmap_new(&uids, &err), 0, "%s", err.msg);
        cr_assert_eq(rl_idmap_new(&gids, &err), 0, "%s", err.msg);
        cr_assert_eq(rl_idmap_parse(uids, "0:100000:65536", &err), 0, "%s", err.msg);
        cr_assert_eq(rl_idmap_parse(gids, "0:100000:65536", &err), 0, "%s", err.msg);
        rl_apply_options o = { .uid_map = uids, .gid_map = gids };
        apply_ok(tree, tar, &o, NULL);

        struct stat st;
        snprintf(p, sizeof(p), "%s/d", tree);
        st = lstat_of(p);
        cr_expect(st.st_uid == 100000 && st.st_gid == 100000, "d: owner %u:%u", st.st_uid,
                  st.st_gid);
        snprintf(p, sizeof(p), "%s/d/root", tree);
        st = lstat_of(p);
        cr_expect(st.st_uid == 100000 && st.st_gid == 100000, "d/root: owner %u:%u", st.st_uid,
                  st.st_gid);
        snprintf(p, sizeof(p), "%s/d/owned", tree);
        st = lstat_of(p);
        cr_expect(st.st_uid == 101234 && st.st_gid == 105678, "d/owned: owner %u:%u",
                  st.st_uid, st.st_gid);
        snprintf(p, sizeof(p), "%s/d/link", tree);
        st = lstat_of(p);
        cr_expect(st.st_uid == 101234 && st.st_gid == 105678, "d/link: owner %u:%u", st.st_uid,
                  st.st_gid);

        acl_value shifted = make_acl(101001, 101002);
        snprintf(p, sizeof(p), "%s/d/acl", tree);
        expect_xattr(p, "system.posix_acl_access", &shifted, sizeof(shifted));

        struct vfs_ns_cap_data v3 = {
                .magic_etc = htole32(VFS_CAP_REVISION_3 | VFS_CAP_FLAGS_EFFECTIVE),
                .data = { { htole32(1u << CAP_NET_RAW), 0 }, { 0, 0 } },
                .rootid = htole32(100000),
        };
        snprintf(p, sizeof(p), "%s/d/cap", tree);
        expect_xattr(p, "security.capability", &v3, XATTR_CAPS_SZ_3);
        st = lstat_of(p);
        cr_expect(st.st_uid == 100000 && (st.st_mode & 07777) == 0755, "d/cap: %u %04o",
                  st.st_uid, st.st_mode & 07777);
        rl_idmap_free(uids);
        rl_idmap_free(gids);
}

/* --- the malicious corpus ---------------------------------------------------------------- */

/*
 * Each case is applied onto a fresh tree, mnt/evil-N/tree, beside a sentinel file and a
 * sentinel directory in mnt/evil-N ("outside"). Whatever the layer tries, the apply must fail
 * as the table says with a message naming the entry, and nothing outside the tree may change:
 * the whole filesystem but the tree is listed with every attribute before and after, and
 * /rlt-layer-evil (where an absolute name would land) must not appear.
 */
#define ROOT_EVIL "/rlt-layer-evil"
#define WRONG_DIGEST "sha256:0000000000000000000000000000000000000000000000000000000000000000"

typedef void (*lower_fn)(const char *tree, const char *outside);
typedef void (*build_fn)(const char *tar, const char *outside);

typedef struct evil_case {
        const char *name;
        lower_fn lower;     /* NULL: an empty tree */
        build_fn build;
        int expect;         /* rl_layer_apply's result */
        int also;           /* another result the contract allows (0: none) */
        const char *needle; /* in err.msg; NULL: an entry cannot be named, the message is
                             * only required to be there */
        bool wrong_digest;  /* apply with expect_digest WRONG_DIGEST */
        lower_fn check;     /* for a layer that must succeed: what the tree must hold */
} evil_case;

static rlt_tar *open_plain(const char *tar)
{
        return rlt_tar_open(tar, RL_COMPRESSION_NONE);
}

static void one_file(const char *tar, const char *name)
{
        rlt_tar *t = open_plain(tar);
        rlt_tar_file(t, name, 0644, "evil\n");
        rlt_tar_close(t);
}

static void b_dotdot(const char *tar, const char *outside)
{
        (void)outside;
        one_file(tar, "../evil");
}

static void b_a_dotdot(const char *tar, const char *outside)
{
        (void)outside;
        rlt_tar *t = open_plain(tar);
        rlt_tar_dir(t, "a/", 0755);
        rlt_tar_file(t, "a/../../evil", 0644, "evil\n");
        rlt_tar_close(t);
}

static void b_dot_dotdot(const char *tar, const char *outside)
{
        (void)outside;
        one_file(tar, "./../evil");
}

static void b_abs_root(const char *tar, const char *outside)
{
        (void)outside;
        one_file(tar, ROOT_EVIL);
}

static void b_abs_outside(const char *tar, const char *outside)
{
        char name[PATH_MAX];
        snprintf(name, sizeof(name), "%s/evil-abs", outside);
        one_file(tar, name);
}

/* ustar headers of libarchive's own would do, but a raw one proves the name is checked
 * where the reader takes it from the header itself, with no PAX record in front. */
static void raw_one(const char *tar, const char *prefix, const char *name)
{
        int fd = open(tar, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
        cr_assert(fd >= 0, "create %s: %s", tar, strerror(errno));
        rlt_tar_raw_entry(fd, prefix, name, '0', NULL, "evil\n", 5);
        rlt_tar_raw_end(fd);
        close(fd);
}

static void b_raw_dotdot(const char *tar, const char *outside)
{
        (void)outside;
        raw_one(tar, NULL, "../raw-evil");
}

static void b_raw_prefix(const char *tar, const char *outside)
{
        (void)outside;
        raw_one(tar, "..", "raw-evil"); /* ustar joins prefix "/" name: "../raw-evil" */
}

static void b_link_root(const char *tar, const char *outside)
{
        char name[PATH_MAX];
        snprintf(name, sizeof(name), "link%s/evil-root", outside);
        rlt_tar *t = open_plain(tar);
        rlt_tar_symlink(t, "link", "/");
        rlt_tar_file(t, name, 0644, "evil\n");
        rlt_tar_close(t);
}

static void b_link_dotdot(const char *tar, const char *outside)
{
        (void)outside;
        rlt_tar *t = open_plain(tar);
        rlt_tar_symlink(t, "link", "../..");
        rlt_tar_file(t, "link/evil", 0644, "evil\n");
        rlt_tar_close(t);
}

static void b_link_overwrite(const char *tar, const char *outside)
{
        (void)outside;
        rlt_tar *t = open_plain(tar);
        rlt_tar_symlink(t, "link", "..");
        rlt_tar_file(t, "link/sentinel", 0644, "overwritten\n");
        rlt_tar_close(t);
}

static void l_out_rel(const char *tree, const char *outside)
{
        (void)outside;
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/out", tree);
        cr_assert(symlink("..", p) == 0, "symlink %s: %s", p, strerror(errno));
}

static void l_out_abs(const char *tree, const char *outside)
{
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/out", tree);
        cr_assert(symlink(outside, p) == 0, "symlink %s: %s", p, strerror(errno));
}

static void b_write_out(const char *tar, const char *outside)
{
        (void)outside;
        one_file(tar, "out/evil");
}

static void b_hl_passwd(const char *tar, const char *outside)
{
        (void)outside;
        rlt_tar *t = open_plain(tar);
        rlt_tar_hardlink(t, "hl-passwd", "/etc/passwd");
        rlt_tar_close(t);
}

static void b_hl_outside(const char *tar, const char *outside)
{
        (void)outside;
        rlt_tar *t = open_plain(tar);
        rlt_tar_hardlink(t, "hl-out", "../sentinel");
        rlt_tar_close(t);
}

static void b_hl_via(const char *tar, const char *outside)
{
        (void)outside;
        rlt_tar *t = open_plain(tar);
        rlt_tar_hardlink(t, "hl-via", "out/sentinel");
        rlt_tar_close(t);
}

static void b_wh_dotdot(const char *tar, const char *outside)
{
        (void)outside;
        one_file(tar, ".wh...");
}

static void b_a_wh_dotdot(const char *tar, const char *outside)
{
        (void)outside;
        rlt_tar *t = open_plain(tar);
        rlt_tar_dir(t, "a/", 0755);
        rlt_tar_file(t, "a/.wh...", 0644, "");
        rlt_tar_close(t);
}

static void b_wh_dot(const char *tar, const char *outside)
{
        (void)outside;
        one_file(tar, ".wh..");
}

/* ".wh." + "../sentinel": a reader that strips the prefix from the whole name rather than
 * from the last component deletes mnt/evil-N/sentinel. */
static void b_wh_dotdot_x(const char *tar, const char *outside)
{
        (void)outside;
        one_file(tar, ".wh.../sentinel");
}

static void c_wh_dir(const char *tree, const char *outside)
{
        (void)outside;
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/.wh.../sentinel", tree);
        cr_expect(exists(p) && S_ISREG(lstat_of(p).st_mode), "%s is not a file", p);
}

static void b_dotdot_wh(const char *tar, const char *outside)
{
        (void)outside;
        one_file(tar, "../.wh.sentinel");
}

/* A name of 5,000 bytes in components of 10 (only a PAX path record can carry it). */
static void b_long_path(const char *tar, const char *outside)
{
        (void)outside;
        char name[5100] = "long-path/";
        while (strlen(name) < 5000)
                strcat(name, "dddddddddd/");
        strcat(name, "f");
        one_file(tar, name);
}

static void b_long_comp(const char *tar, const char *outside)
{
        (void)outside;
        char name[400] = "long-comp/";
        memset(name + strlen(name), 'c', 300);
        one_file(tar, name);
}

/* A file of 10,000 bytes cut after 5,000 of them. */
static void b_trunc_data(const char *tar, const char *outside)
{
        (void)outside;
        static char data[10000];
        memset(data, 'T', sizeof(data));
        int fd = open(tar, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
        cr_assert(fd >= 0, "create %s: %s", tar, strerror(errno));
        rlt_tar_raw_entry(fd, NULL, "trunc-file", '0', NULL, data, sizeof(data));
        rlt_tar_raw_end(fd);
        close(fd);
        rlt_truncate(tar, 512 + 5000);
}

/* A whole first entry, then the second one's header cut at byte 100 of 512. */
static void b_trunc_header(const char *tar, const char *outside)
{
        (void)outside;
        int fd = open(tar, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
        cr_assert(fd >= 0, "create %s: %s", tar, strerror(errno));
        rlt_tar_raw_entry(fd, NULL, "first", '0', NULL, "first\n", 6);
        rlt_tar_raw_entry(fd, NULL, "second-file", '0', NULL, "second\n", 7);
        rlt_tar_raw_end(fd);
        close(fd);
        rlt_truncate(tar, 1024 + 100);
}

/* A gzip layer cut in half: the compressed stream ends early. */
static void b_trunc_gzip(const char *tar, const char *outside)
{
        (void)outside;
        static char data[200000];
        uint32_t x = 12345;
        for (size_t i = 0; i < sizeof(data); i++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                data[i] = (char)x;
        }
        rlt_tar *t = rlt_tar_open(tar, RL_COMPRESSION_GZIP);
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "gz-file", .data = data,
                                         .size = sizeof(data) });
        rlt_tar_close(t);
        rlt_truncate(tar, lstat_of(tar).st_size / 2);
}

static void b_random(const char *tar, const char *outside)
{
        (void)outside;
        rlt_write_file(tar, 4096, 7);
}

/* A zip: an archive, but not a tar; a reader that takes any format libarchive knows would
 * extract it. */
static void b_zip(const char *tar, const char *outside)
{
        (void)outside;
        struct archive *a = archive_write_new();
        cr_assert(a);
        cr_assert_eq(archive_write_set_format_zip(a), ARCHIVE_OK);
        cr_assert_eq(archive_write_open_filename(a, tar), ARCHIVE_OK, "%s",
                     archive_error_string(a));
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, "zip-evil");
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_entry_set_size(e, 5);
        cr_assert_eq(archive_write_header(a, e), ARCHIVE_OK, "%s", archive_error_string(a));
        cr_assert_eq(archive_write_data(a, "evil\n", 5), 5);
        archive_entry_free(e);
        cr_assert_eq(archive_write_close(a), ARCHIVE_OK);
        archive_write_free(a);
}

/* The tree has link -> OUTSIDE/sentinel-dir; the layer has a directory link/ and link/x.
 * The directory replaces the symlink (it is not followed): a valid layer, applied, with x
 * inside the tree and nothing in sentinel-dir. */
static void l_link_abs_dir(const char *tree, const char *outside)
{
        char p[PATH_MAX], q[PATH_MAX];
        snprintf(p, sizeof(p), "%s/link", tree);
        snprintf(q, sizeof(q), "%s/sentinel-dir", outside);
        cr_assert(symlink(q, p) == 0, "symlink %s: %s", p, strerror(errno));
}

static void b_dir_link(const char *tar, const char *outside)
{
        (void)outside;
        rlt_tar *t = open_plain(tar);
        rlt_tar_dir(t, "link/", 0755);
        rlt_tar_file(t, "link/x", 0644, "x\n");
        rlt_tar_close(t);
}

static void c_dir_link(const char *tree, const char *outside)
{
        (void)outside;
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/link", tree);
        cr_expect(S_ISDIR(lstat_of(p).st_mode), "%s is not a directory", p);
        snprintf(p, sizeof(p), "%s/link/x", tree);
        cr_expect(exists(p) && S_ISREG(lstat_of(p).st_mode), "%s is not a file", p);
}

static void b_plain(const char *tar, const char *outside)
{
        (void)outside;
        one_file(tar, "plain");
}

static const evil_case evil_cases[] = {
        { "dotdot", NULL, b_dotdot, -EINVAL, 0, "../evil" },
        { "dir_dotdot_dotdot", NULL, b_a_dotdot, -EINVAL, 0, "a/../../evil" },
        { "dot_dotdot", NULL, b_dot_dotdot, -EINVAL, 0, "../evil" },
        { "absolute_root", NULL, b_abs_root, -EINVAL, 0, ROOT_EVIL },
        { "absolute_outside", NULL, b_abs_outside, -EINVAL, 0, "/evil-abs" },
        { "raw_ustar_dotdot", NULL, b_raw_dotdot, -EINVAL, 0, "../raw-evil" },
        { "raw_ustar_prefix_dotdot", NULL, b_raw_prefix, -EINVAL, 0, "raw-evil" },
        { "symlink_to_root_then_write", NULL, b_link_root, -EINVAL, 0, "/evil-root" },
        { "symlink_dotdot2_then_write", NULL, b_link_dotdot, -EINVAL, 0, "link/evil" },
        { "symlink_dotdot_then_overwrite", NULL, b_link_overwrite, -EINVAL, 0, "link/sentinel" },
        { "lower_symlink_out_then_write", l_out_rel, b_write_out, -EINVAL, 0, "out/evil" },
        { "lower_abs_symlink_out_then_write", l_out_abs, b_write_out, -EINVAL, 0, "out/evil" },
        { "hardlink_to_etc_passwd", NULL, b_hl_passwd, -EINVAL, 0, "hl-passwd" },
        { "hardlink_to_outside", NULL, b_hl_outside, -EINVAL, 0, "hl-out" },
        { "hardlink_via_lower_symlink", l_out_rel, b_hl_via, -EINVAL, 0, "hl-via" },
        { "whiteout_dotdot", NULL, b_wh_dotdot, -EINVAL, 0, ".wh..." },
        { "whiteout_dotdot_in_dir", NULL, b_a_wh_dotdot, -EINVAL, 0, "a/.wh..." },
        { "whiteout_dot", NULL, b_wh_dot, -EINVAL, 0, ".wh.." },
        /* ".wh..." is a whiteout only as the last component; as a directory name it may be
         * refused or taken literally, beneath the tree (c_wh_dir checks). */
        { "whiteout_prefix_on_dotdot_path", NULL, b_wh_dotdot_x, -EINVAL, 0, ".wh.../sentinel",
          false, c_wh_dir },
        { "whiteout_under_dotdot", NULL, b_dotdot_wh, -EINVAL, 0, "../.wh.sentinel" },
        { "name_past_path_max", NULL, b_long_path, -EINVAL, 0, "long-path/dddddddddd/" },
        /* The contract names PATH_MAX; a component past NAME_MAX may also say so. */
        { "component_past_name_max", NULL, b_long_comp, -EINVAL, -ENAMETOOLONG,
          "long-comp/cccccccccc" },
        { "truncated_in_file_data", NULL, b_trunc_data, -EINVAL, 0, "trunc-file" },
        { "truncated_in_header", NULL, b_trunc_header, -EINVAL, 0, NULL },
        { "truncated_gzip", NULL, b_trunc_gzip, -EINVAL, 0, NULL },
        { "random_bytes", NULL, b_random, -EINVAL, 0, NULL },
        { "zip_archive", NULL, b_zip, -EINVAL, 0, NULL },
        { "dir_entry_over_lower_symlink_out", l_link_abs_dir, b_dir_link, 0, 0, NULL, false,
          c_dir_link },
        { "digest_mismatch", NULL, b_plain, -EBADMSG, 0, WRONG_DIGEST, true },
};

/* Every entry of mnt but skip (the tree under test), with what could change, one a line. */
static FILE *snap_out;
static const char *snap_skip;

static int snap_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        (void)flag;
        (void)ftw;
        if (strcmp(path, snap_skip) == 0)
                return FTW_SKIP_SUBTREE;
        fprintf(snap_out, "%s %o %u:%u %ld n%lu i%lu m%ld.%09ld c%ld.%09ld", path, st->st_mode,
                st->st_uid, st->st_gid, (long)st->st_size, (unsigned long)st->st_nlink,
                (unsigned long)st->st_ino, (long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
                (long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
        if (S_ISREG(st->st_mode) && st->st_size < 1024)
                fprintf(snap_out, " '%s'", rlt_read_file(path) ?: "(unreadable)");
        if (S_ISLNK(st->st_mode)) {
                char t[PATH_MAX];
                ssize_t n = readlink(path, t, sizeof(t) - 1);
                fprintf(snap_out, " -> %.*s", (int)(n < 0 ? 0 : n), t);
        }
        fputc('\n', snap_out);
        return FTW_CONTINUE;
}

static char *snapshot(const char *skip)
{
        char *buf = NULL;
        size_t size = 0;
        snap_out = open_memstream(&buf, &size);
        cr_assert(snap_out);
        snap_skip = skip;
        int r = nftw(mnt, snap_one, 16, FTW_PHYS | FTW_ACTIONRETVAL);
        fclose(snap_out);
        cr_assert_eq(r, 0, "nftw %s: %s", mnt, strerror(errno));
        return buf;
}

/* The first line where a and b differ, for the failure message. */
static const char *first_difference(const char *a, const char *b)
{
        static char out[1024];
        size_t line = 0;
        while (*a && *a == *b) {
                if (*a == '\n')
                        line = 0;
                else
                        line++;
                a++;
                b++;
        }
        const char *end = strchr(b - line, '\n');
        snprintf(out, sizeof(out), "now: %.*s", end ? (int)(end - (b - line)) : 400, b - line);
        return out;
}

static bool run_evil_case(size_t i, const evil_case *c)
{
        char outside[PATH_MAX], tree[PATH_MAX], tar[PATH_MAX], p[PATH_MAX];
        snprintf(outside, sizeof(outside), "%s/evil-%zu", mnt, i);
        snprintf(tree, sizeof(tree), "%s/tree", outside);
        snprintf(tar, sizeof(tar), "%s/evil-%zu.layer", mnt, i);
        mkdir_p(outside, 0755);
        mkdir_p(tree, 0755);
        snprintf(p, sizeof(p), "%s/sentinel", outside);
        put_file(p, "sentinel\n");
        snprintf(p, sizeof(p), "%s/sentinel-dir", outside);
        mkdir_p(p, 0755);
        snprintf(p, sizeof(p), "%s/sentinel-dir/inner", outside);
        put_file(p, "inner\n");
        if (c->lower)
                c->lower(tree, outside);
        c->build(tar, outside);

        char digest[RL_DIGEST_MAX] = "";
        if (c->wrong_digest)
                rlt_sha256_file(tar, digest);
        char *before = snapshot(tree);
        rl_apply_options o = { .expect_digest = c->wrong_digest ? WRONG_DIGEST : NULL };
        rl_error err = {};
        rl_layer_stats st = {};
        int r = apply(tree, tar, &o, &st, &err);
        char *after = snapshot(tree);
        bool ok = true;
        cr_log_info("%s: %d %s", c->name, r, err.msg);

        if (exists(ROOT_EVIL)) {
                unlink(ROOT_EVIL);
                cr_expect_fail("%s: the layer wrote %s", c->name, ROOT_EVIL);
                ok = false;
        }
        if (strcmp(before, after) != 0) {
                cr_expect_fail("%s: something outside the tree changed: %s", c->name,
                               first_difference(before, after));
                ok = false;
        }
        /* A case with a check may also succeed. */
        if (r != c->expect && (!c->also || r != c->also) && !(r == 0 && c->check)) {
                cr_expect_fail("%s: rl_layer_apply gave %d (%s), expected %d: %s", c->name, r,
                               strerror(r < 0 ? -r : 0), c->expect, err.msg);
                ok = false;
        } else if (r < 0) {
                if (err.code != -r || !err.msg[0]) {
                        cr_expect_fail("%s: err.code %d, message '%s'", c->name, err.code,
                                       err.msg);
                        ok = false;
                }
                bool named = !c->needle || strstr(err.msg, c->needle) ||
                             (c->wrong_digest && strstr(err.msg, digest));
                if (!named) {
                        cr_expect_fail("%s: the message does not name '%s': %s", c->name,
                                       c->needle, err.msg);
                        ok = false;
                }
        }
        if (r == 0 && c->check)
                c->check(tree, outside);
        free(before);
        free(after);
        return ok;
}

Test(layer, malicious_corpus, .timeout = 300)
{
        cr_assert(!exists(ROOT_EVIL), "%s exists before the test: remove it", ROOT_EVIL);
        size_t failed = 0;
        char names[4096] = "";
        for (size_t i = 0; i < sizeof(evil_cases) / sizeof(evil_cases[0]); i++) {
                if (!run_evil_case(i, &evil_cases[i])) {
                        failed++;
                        strncat(names, " ", sizeof(names) - strlen(names) - 1);
                        strncat(names, evil_cases[i].name, sizeof(names) - strlen(names) - 1);
                }
        }
        cr_assert_eq(failed, 0, "%zu of %zu cases failed:%s", failed,
                     sizeof(evil_cases) / sizeof(evil_cases[0]), names);
}

/*
 * A layer read from a pipe whose writer sends nothing and never closes it: the apply waits
 * in steps, calling the progress callback between them (where the daemon notices a client
 * that hung up), and a cancel ends it with -ECANCELED, instead of a read nothing ends.
 */
static atomic_bool idle_cancel;
static unsigned idle_calls;

static void cancel_when_idle(const rl_tree_progress *p, void *userdata)
{
        cr_assert_eq(userdata, &idle_calls);
        cr_assert_eq(p->entries, 0);
        if (++idle_calls == 3)
                atomic_store(&idle_cancel, true);
}

/* A byte every 30 ms into the pipe *arg until trickle_stop (or 20 s). */
static atomic_bool trickle_stop;

static void *trickle(void *arg)
{
        int fd = *(int *)arg;
        for (int i = 0; i < 666 && !atomic_load(&trickle_stop) && write(fd, "x", 1) == 1; i++)
                usleep(30000);
        return NULL;
}

Test(layer, a_silent_pipe_is_waited_for_in_steps_and_a_cancel_ends_it, .timeout = 30)
{
        char tree[PATH_MAX];
        int pfd[2];
        in_mnt(tree, sizeof(tree), "tree");
        mkdir_p(tree, 0755);
        cr_assert(pipe2(pfd, O_CLOEXEC) == 0);
        rl_apply_options o = { .progress = cancel_when_idle, .progress_userdata = &idle_calls,
                               .cancel = &idle_cancel };
        int dfd = open(tree, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(dfd >= 0);
        rl_error err = {};
        time_t t0 = time(NULL);
        int r = rl_layer_apply(dfd, pfd[0], &o, NULL, &err);
        time_t t = time(NULL) - t0;
        cr_expect_eq(r, -ECANCELED, "%s", err.msg);
        cr_expect(strstr(err.msg, "cancelled"), "%s", err.msg);
        cr_expect_eq(idle_calls, 3, "the progress callback while waiting: %u calls", idle_calls);
        cr_expect_lt(t, 5, "cancelled after %ld s", (long)t);
        close(pfd[0]);
        close(pfd[1]); /* the writer, silent to the end */

        /* A pipe that trickles (a byte every 30 ms) never lets the wait time out: the
         * callback comes after reads too. */
        cr_assert(pipe2(pfd, O_CLOEXEC) == 0);
        idle_calls = 0;
        atomic_store(&idle_cancel, false);
        pthread_t w;
        cr_assert(pthread_create(&w, NULL, trickle, &pfd[1]) == 0);
        t0 = time(NULL);
        r = rl_layer_apply(dfd, pfd[0], &o, NULL, &err);
        t = time(NULL) - t0;
        cr_expect_eq(r, -ECANCELED, "trickling: %s", err.msg);
        cr_expect_lt(t, 5, "trickling: cancelled after %ld s", (long)t);
        atomic_store(&trickle_stop, true);
        pthread_join(w, NULL);
        close(pfd[0]);
        close(pfd[1]);
        close(dfd);
}
