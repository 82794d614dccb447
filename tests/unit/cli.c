/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The reflayer CLI as a user runs it: summaries, JSON, exit codes, messages naming the path.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rltest.h"

TestSuite(cli, .init = rlt_init, .fini = rlt_fini, .timeout = 60);

static char *cli(void)
{
        char *p = getenv("RL_CLI");
        cr_assert(p && access(p, X_OK) == 0, "RL_CLI must name the built reflayer binary "
                                             "(tests/run-unit sets it)");
        return p;
}

static char out[65536];

Test(cli, clone_prints_summary)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], dst[PATH_MAX];
        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst/", mnt); /* a trailing slash is fine */
        char *argv[] = { cli(), "clone", "--jobs", "2", src, dst, NULL };
        int r = rlt_run(argv, out, sizeof(out));
        cr_assert_eq(r, 0, "exit %d: %s", r, out);
        cr_expect(strncmp(out, "cloned ", 7) == 0, "%s", out);
        cr_expect(strstr(out, "on xfs") && strstr(out, "38 entries") &&
                          strstr(out, "reflink 16"),
                  "%s", out);
        char why[4096];
        dst[strlen(dst) - 1] = '\0';
        cr_assert(rlt_tree_equal(src, dst, NULL, NULL, why, sizeof(why)), "%s", why);
}

Test(cli, clone_json_and_shift)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], dst[PATH_MAX];
        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        char *argv[] = { cli(), "clone", "--json", "--uid-map", "0:100000:65536", "--gid-map",
                         "0:100000:65536", src, dst, NULL };
        int r = rlt_run(argv, out, sizeof(out));
        cr_assert_eq(r, 0, "exit %d: %s", r, out);
        json_error_t jerr;
        json_t *o = json_loads(out, 0, &jerr);
        cr_assert(o, "not JSON (%s): %s", jerr.text, out);
        cr_expect_eq(json_integer_value(json_object_get(o, "entries")), 38);
        cr_expect_eq(json_integer_value(json_object_get(o, "bytes_copied")), 0);
        cr_expect_str_eq(json_string_value(json_object_get(o, "reflink")), "yes");
        cr_expect_eq(json_integer_value(json_object_get(json_object_get(o, "methods"), "reflink")),
                     16);
        json_decref(o);
        struct stat st;
        cr_assert(stat(dst, &st) == 0);
        cr_expect_eq(st.st_uid, 100000);
        cr_expect_eq(st.st_gid, 100000);
}

Test(cli, errors_name_the_path)
{
        const char *mnt = rlt_mkfs(RLT_TMPFS, 0, "t");
        char dst[PATH_MAX];
        snprintf(dst, sizeof(dst), "%s/dst", mnt);

        char *missing[] = { cli(), "clone", "/nonexistent/src", dst, NULL };
        cr_expect_eq(rlt_run(missing, out, sizeof(out)), 1);
        cr_expect(strstr(out, "'/nonexistent/src'") && strstr(out, "No such file or directory"),
                  "%s", out);

        char *exists[] = { cli(), "clone", "/usr/share/doc", (char *)mnt, NULL };
        cr_expect_eq(rlt_run(exists, out, sizeof(out)), 1);
        cr_expect(strstr(out, "File exists"), "%s", out);

        char *badmap[] = { cli(), "clone", "--uid-map", "0:1", "/usr", dst, NULL };
        cr_expect_eq(rlt_run(badmap, out, sizeof(out)), 2);
        cr_expect(strstr(out, "CONTAINER:HOST:LENGTH"), "%s", out);

        char *usage[] = { cli(), "clone", "onlyone", NULL };
        cr_expect_eq(rlt_run(usage, out, sizeof(out)), 2);
        char *unknown[] = { cli(), "frobnicate", NULL };
        cr_expect_eq(rlt_run(unknown, out, sizeof(out)), 2);
        cr_expect(strstr(out, "unknown command 'frobnicate'"), "%s", out);
        cr_expect(access(dst, F_OK) != 0, "a failed clone left its destination");
}

Test(cli, usage_splits_shared_and_exclusive)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char src[PATH_MAX], dst[PATH_MAX];
        rlt_make_rich_tree(mnt, "src");
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        char *clone[] = { cli(), "clone", src, dst, NULL };
        cr_assert_eq(rlt_run(clone, out, sizeof(out)), 0, "%s", out);
        char *use[] = { cli(), "du", "--json", dst, NULL };
        cr_assert_eq(rlt_run(use, out, sizeof(out)), 0, "%s", out);
        json_error_t jerr;
        json_t *o = json_loads(out, 0, &jerr);
        cr_assert(o, "not JSON (%s): %s", jerr.text, out);
        /* 3 MiB of data/big and the other files are shared with src; only directories and
         * symlinks are the clone's own. */
        json_int_t shared = json_integer_value(json_object_get(o, "bytes_shared"));
        json_int_t excl = json_integer_value(json_object_get(o, "bytes_exclusive"));
        cr_expect_geq(shared, 3 << 20, "shared %lld", (long long)shared);
        cr_expect_lt(excl, 1 << 20, "exclusive %lld", (long long)excl);
        cr_expect_eq(json_integer_value(json_object_get(o, "inodes")), 36,
                     "inodes (38 entries, 2 of them hardlinks)");
        json_decref(o);
        char *missing[] = { cli(), "du", "/nonexistent", NULL };
        cr_expect_eq(rlt_run(missing, out, sizeof(out)), 1);
        cr_expect(strstr(out, "'/nonexistent'") && strstr(out, "No such file"), "%s", out);
}

/* clone --subvolume on btrfs: a directory becomes a subvolume by the walk, a subvolume is
 * snapshotted whole with the subvolumes nested in it; without the flag, the walk as always. */
Test(cli, clone_subvolume_snapshots_on_btrfs)
{
        const char *mnt = rlt_mkfs(RLT_BTRFS, 0, "btrfs");
        char rich[PATH_MAX], src[PATH_MAX], dst[PATH_MAX], plain[PATH_MAX], p[PATH_MAX + 16];
        rlt_make_rich_tree(mnt, "rich");
        snprintf(rich, sizeof(rich), "%s/rich", mnt);
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        snprintf(plain, sizeof(plain), "%s/plain", mnt);
        json_error_t jerr;
        struct stat st;

        char *walk[] = { cli(), "clone", "--json", "--subvolume", rich, src, NULL };
        cr_assert_eq(rlt_run(walk, out, sizeof(out)), 0, "%s", out);
        json_t *o = json_loads(out, 0, &jerr);
        cr_assert(o, "not JSON (%s): %s", jerr.text, out);
        cr_expect_eq(json_integer_value(json_object_get(o, "entries")), 38, "%s", out);
        cr_expect_eq(json_integer_value(json_object_get(o, "snapshots")), 0, "%s", out);
        json_decref(o);
        cr_assert(stat(src, &st) == 0);
        cr_expect_eq(st.st_ino, 256, "the walk's tree is no subvolume");

        snprintf(p, sizeof(p), "%s/nest", src);
        char *create[] = { "btrfs", "subvolume", "create", p, NULL };
        cr_assert_eq(rlt_run(create, out, sizeof(out)), 0, "%s", out);
        snprintf(p, sizeof(p), "%s/nest/f", src);
        rlt_write_file(p, 12345, 4);

        char *snap[] = { cli(), "clone", "--json", "--subvolume", src, dst, NULL };
        cr_assert_eq(rlt_run(snap, out, sizeof(out)), 0, "%s", out);
        o = json_loads(out, 0, &jerr);
        cr_assert(o, "not JSON (%s): %s", jerr.text, out);
        cr_expect_eq(json_integer_value(json_object_get(o, "snapshots")), 2, "%s", out);
        cr_expect_eq(json_integer_value(json_object_get(o, "entries")), 0, "%s", out);
        json_decref(o);
        char why[4096];
        cr_expect(rlt_tree_equal(src, dst, NULL, NULL, why, sizeof(why)), "%s", why);
        snprintf(p, sizeof(p), "%s/nest", dst);
        cr_assert(stat(p, &st) == 0);
        cr_expect_eq(st.st_ino, 256, "the nested subvolume is no subvolume in the snapshot");
        char *summary[] = { cli(), "clone", "--subvolume", src, plain, NULL };
        cr_assert_eq(rlt_run(summary, out, sizeof(out)), 0, "%s", out);
        cr_expect(strstr(out, "a snapshot (2 btrfs subvolumes"), "%s", out);

        /* Without the flag: a directory, file by file, the nested subvolume's files too. */
        snprintf(p, sizeof(p), "%s/files", mnt);
        char *byfile[] = { cli(), "clone", "--json", dst, p, NULL };
        cr_assert_eq(rlt_run(byfile, out, sizeof(out)), 0, "%s", out);
        cr_expect(strstr(out, "\"snapshots\":0") && strstr(out, "\"entries\":40"), "%s", out);
        cr_assert(stat(p, &st) == 0);
        cr_expect_neq(st.st_ino, 256);
}

/* du of a btrfs snapshot: what it has not changed is its source's too, metadata and inline
 * data included, for as long as the source exists; once the source is deleted, no longer. */
Test(cli, du_of_a_btrfs_snapshot_counts_its_source)
{
        const char *mnt = rlt_mkfs(RLT_BTRFS, 0, "btrfs");
        char rich[PATH_MAX], x[PATH_MAX], y[PATH_MAX];
        rlt_make_rich_tree(mnt, "rich");
        snprintf(rich, sizeof(rich), "%s/rich", mnt);
        snprintf(x, sizeof(x), "%s/x", mnt);
        snprintf(y, sizeof(y), "%s/y", mnt);
        char *to_subvol[] = { cli(), "clone", "--subvolume", rich, x, NULL };
        cr_assert_eq(rlt_run(to_subvol, out, sizeof(out)), 0, "%s", out);
        char *snap[] = { cli(), "clone", "--subvolume", x, y, NULL };
        cr_assert_eq(rlt_run(snap, out, sizeof(out)), 0, "%s", out);
        cr_assert(strstr(out, "a snapshot"), "%s", out);

        char *du[] = { cli(), "du", "--json", y, NULL };
        json_error_t jerr;
        cr_assert_eq(rlt_run(du, out, sizeof(out)), 0, "%s", out);
        json_t *o = json_loads(out, 0, &jerr);
        cr_assert(o, "not JSON (%s): %s", jerr.text, out);
        cr_expect_eq(json_integer_value(json_object_get(o, "bytes_exclusive")), 0,
                     "an unchanged snapshot owns nothing: %s", out);
        cr_expect_gt(json_integer_value(json_object_get(o, "bytes_shared")), 0, "%s", out);
        json_decref(o);

        char *del[] = { "btrfs", "subvolume", "delete", x, NULL };
        cr_assert_eq(rlt_run(del, out, sizeof(out)), 0, "%s", out);
        cr_assert_eq(rlt_run(du, out, sizeof(out)), 0, "%s", out);
        o = json_loads(out, 0, &jerr);
        cr_assert(o, "not JSON (%s): %s", jerr.text, out);
        /* Its symlinks' blocks and its inline data at once; the extents once btrfs's
         * cleaner has dropped the deleted source's references (FIEMAP's business). */
        cr_expect_gt(json_integer_value(json_object_get(o, "bytes_metadata")), 0,
                     "its source gone, the snapshot's metadata is its own: %s", out);
        cr_expect_gt(json_integer_value(json_object_get(o, "bytes_exclusive")),
                     json_integer_value(json_object_get(o, "bytes_metadata")),
                     "and so is its inline data: %s", out);
        json_decref(o);
}
