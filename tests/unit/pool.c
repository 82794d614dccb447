/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The warm pool: ready clones of a pooled parent (by label, or once it was prepared K
 * times), kept per id maps; a Prepare takes one (the same tree a clone makes); a removed
 * parent's clones go; a filesystem short of space gets none.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <reflayer/store.h>
#include <reflayer/tree.h>

#include "rltest.h"

static rl_store *S;
static char mnt[PATH_MAX], root[PATH_MAX];

static void open_with(unsigned size, unsigned after)
{
        rl_store_options o = { .pool_size = size, .pool_after = after, .no_sync = true };
        rl_error err = {};
        cr_assert_eq(rl_store_open(root, &o, &S, &err), 0, "%s", err.msg);
}

static void setup(void)
{
        rlt_init();
        snprintf(mnt, sizeof(mnt), "%s", rlt_mkfs(RLT_XFS, 0, "xfs"));
        snprintf(root, sizeof(root), "%s/store", mnt);
}

static void teardown(void)
{
        S = rl_store_free(S);
        rlt_fini();
}

TestSuite(pool, .init = setup, .fini = teardown, .timeout = 120);

Test(pool, labelled_parent_is_served_from_the_pool)
{
        open_with(2, 0);
        rl_label l = { RL_POOL_LABEL, "2" };
        rlt_store_base(S, &l, 1);
        /* Labelled at commit: warmed by the first Prepare (or at open). */
        rl_error err = {};
        cr_assert_eq(rl_store_prepare(S, "first", "base", NULL, 0, NULL, &err), 0, "%s",
                     err.msg);
        rl_pool_stats ps = rlt_store_pool_wait(S, 2, 30);
        cr_expect_eq(ps.pooled, 1);
        /* The commit warmed it already: "first" may have been served too (a race). */
        uint64_t hits = ps.hits;
        cr_assert_eq(rl_store_prepare(S, "k", "base", NULL, 0, NULL, &err), 0, "%s", err.msg);
        rl_store_pool_stats(S, &ps);
        cr_expect_eq(ps.hits, hits + 1, "the Prepare did not come from the pool");
        char why[1024] = "";
        cr_expect(rlt_tree_equal(rlt_store_tree(S, "base"), rlt_store_tree(S, "k"), NULL, NULL, why,
                                 sizeof(why)),
                  "a pool clone differs from its parent: %s", why);
        /* It is the snapshot's own tree: writes stay in it. */
        char p[PATH_MAX + 8];
        snprintf(p, sizeof(p), "%s/new", rlt_store_tree(S, "k"));
        rlt_write_file(p, 10, 1);
        snprintf(p, sizeof(p), "%s/new", rlt_store_tree(S, "base"));
        cr_expect(access(p, F_OK) < 0);
        /* Topped up again in the background. */
        rlt_store_pool_wait(S, 2, 30);

        /* Reopened: the old clones are thrown away, the labelled parent warmed again. */
        S = rl_store_free(S);
        open_with(2, 0);
        rlt_store_pool_wait(S, 2, 30);

        /* Reopened with the pool off: the clones go all the same (they would keep the
         * parent's blocks for as long as the pool stays off), and their trees are deleted. */
        S = rl_store_free(S);
        snprintf(p, sizeof(p), "%s/pool", root);
        cr_assert(!rlt_dir_is_empty(p), "no clone was left in pool/ to test with");
        open_with(0, 0);
        cr_expect(rlt_dir_is_empty(p), "a store opened without a pool kept the old clones");
        cr_assert_eq(rl_store_cleanup(S, &err), 0, "%s", err.msg);
        snprintf(p, sizeof(p), "%s/trash", root);
        cr_expect(rlt_dir_is_empty(p), "the old clones were not deleted");
}

Test(pool, automatic_after_k_prepares_and_keyed_by_maps)
{
        open_with(1, 2);
        rlt_store_base(S, NULL, 0);
        rl_error err = {};
        rl_idmap *u = NULL, *g = NULL;
        cr_assert_eq(rl_idmap_new(&u, &err), 0);
        cr_assert_eq(rl_idmap_parse(u, "0:100000:65536", &err), 0, "%s", err.msg);
        cr_assert_eq(rl_idmap_new(&g, &err), 0);
        cr_assert_eq(rl_idmap_parse(g, "0:100000:65536", &err), 0, "%s", err.msg);
        rl_prepare_options shifted = { .uid_map = u, .gid_map = g, .keep_unmapped = true };

        cr_assert_eq(rl_store_prepare(S, "a1", "base", NULL, 0, NULL, &err), 0, "%s", err.msg);
        rl_pool_stats ps;
        rl_store_pool_stats(S, &ps);
        cr_expect_eq(ps.pooled, 0, "pooled after one prepare, not two");
        cr_assert_eq(rl_store_prepare(S, "a2", "base", NULL, 0, NULL, &err), 0, "%s", err.msg);
        rlt_store_pool_wait(S, 1, 30);
        /* Shifted prepares are another pool: no hit from the unshifted clone. */
        cr_assert_eq(rl_store_prepare(S, "s1", "base", NULL, 0, &shifted, &err), 0, "%s",
                     err.msg);
        cr_assert_eq(rl_store_prepare(S, "s2", "base", NULL, 0, &shifted, &err), 0, "%s",
                     err.msg);
        rl_store_pool_stats(S, &ps);
        cr_expect_eq(ps.hits, 0);
        ps = rlt_store_pool_wait(S, 2, 30);
        cr_expect_eq(ps.pooled, 2);
        cr_assert_eq(rl_store_prepare(S, "s3", "base", NULL, 0, &shifted, &err), 0, "%s",
                     err.msg);
        rl_store_pool_stats(S, &ps);
        cr_expect_eq(ps.hits, 1);
        char why[1024] = "";
        cr_expect(rlt_tree_equal(rlt_store_tree(S, "base"), rlt_store_tree(S, "s3"), u, g, why,
                                 sizeof(why)),
                  "a shifted pool clone is not the parent shifted: %s", why);

        /* The parent goes: so do its clones. */
        const char *keys[] = { "a1", "a2", "s1", "s2", "s3", "base" };
        for (size_t i = 0; i < 6; i++)
                cr_assert_eq(rl_store_remove(S, keys[i], &err), 0, "%s", err.msg);
        for (int i = 0; i < 200; i++) {
                rl_store_pool_stats(S, &ps);
                if (!ps.ready && !ps.building)
                        break;
                usleep(50000);
        }
        cr_expect_eq(ps.ready, 0, "clones of a removed parent are kept");
        cr_expect_geq(ps.dropped, 1);
        cr_assert_eq(rl_store_cleanup(S, &err), 0, "%s", err.msg);
        char pool[PATH_MAX + 8];
        snprintf(pool, sizeof(pool), "%s/pool", root);
        cr_expect(rlt_dir_is_empty(pool), "pool/ still holds clones of a removed parent");
        rl_idmap_free(u);
        rl_idmap_free(g);
}

Test(pool, nothing_is_kept_on_a_full_filesystem)
{
        open_with(2, 0);
        rl_label l = { RL_POOL_LABEL, "2" };
        rlt_store_base(S, &l, 1);
        rl_error err = {};
        rl_pool_stats before = rlt_store_pool_wait(S, 2, 30);
        /* Leave less than 10% of the filesystem free. */
        char big[PATH_MAX + 8];
        snprintf(big, sizeof(big), "%s/ballast", mnt);
        struct statvfs v;
        cr_assert(statvfs(mnt, &v) == 0);
        off_t fill = (off_t)(v.f_bavail - v.f_blocks / 20) * (off_t)v.f_frsize;
        int fd = open(big, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        cr_assert(fd >= 0 && fallocate(fd, 0, 0, fill) == 0, "fallocate: %s", strerror(errno));
        close(fd);
        /* The Prepare takes one; topping up finds the filesystem short and drops the rest. */
        cr_assert_eq(rl_store_prepare(S, "k", "base", NULL, 0, NULL, &err), 0, "%s", err.msg);
        rl_pool_stats ps;
        for (int i = 0; i < 200; i++) {
                rl_store_pool_stats(S, &ps);
                if (!ps.ready)
                        break;
                usleep(50000);
        }
        cr_expect_eq(ps.hits, 1);
        cr_expect_eq(ps.ready, 0, "clones kept with under 10%% free");
        cr_expect_eq(ps.built, before.built, "clones built with under 10%% free");
        cr_expect_geq(ps.dropped, 1);
}

static rl_info stat_of(const char *key)
{
        rl_info i;
        rl_error err = {};
        cr_assert_eq(rl_store_stat(S, key, &i, &err), 0, "stat '%s': %s", key, err.msg);
        return i;
}

/* Whatever the record's length: written into the pool's placeholder in place when it fits,
 * the usual way when not; both read back, labels and all, after a reopen. */
Test(pool, records_short_and_too_long_for_the_placeholder)
{
        open_with(2, 0);
        rl_label l = { RL_POOL_LABEL, "2" };
        rlt_store_base(S, &l, 1);
        rl_pool_stats ps = rlt_store_pool_wait(S, 2, 30);
        static char big[3000];
        memset(big, 'v', sizeof(big) - 1);
        rl_label longl[2] = { { "a", big }, { "b", big } }; /* 6 KB: past 4 KiB */
        rl_label shortl = { "short", "yes" };
        rl_error err = {};
        cr_assert_eq(rl_store_prepare(S, "short", "base", &shortl, 1, NULL, &err), 0, "%s",
                     err.msg);
        cr_assert_eq(rl_store_prepare(S, "long", "base", longl, 2, NULL, &err), 0, "%s",
                     err.msg);
        rl_pool_stats after;
        rl_store_pool_stats(S, &after);
        cr_assert_eq(after.hits, ps.hits + 2, "both Prepares should come from the pool");

        /* The short one is padded to the placeholder's size; the long one is not. */
        char p[PATH_MAX + 64];
        struct stat st;
        rl_info si = stat_of("short"), li = stat_of("long");
        snprintf(p, sizeof(p), "%s/snapshots/%" PRIu64 "/info.json", root, si.id);
        cr_assert(stat(p, &st) == 0, "%s: %s", p, strerror(errno));
        cr_expect_eq(st.st_size, 4096, "the short record was not written into the placeholder");
        snprintf(p, sizeof(p), "%s/snapshots/%" PRIu64 "/info.json", root, li.id);
        cr_assert(stat(p, &st) == 0, "%s: %s", p, strerror(errno));
        cr_expect_gt(st.st_size, 6000, "the long record is cut");
        rl_info_clear(&si);
        rl_info_clear(&li);

        S = rl_store_free(S);
        open_with(2, 0);
        si = stat_of("short");
        li = stat_of("long");
        cr_expect_eq(si.kind, RL_KIND_ACTIVE);
        cr_expect_str_eq(si.parent, "base");
        cr_assert_eq(si.n_labels, 1);
        cr_expect_str_eq(si.labels[0].value, "yes");
        cr_assert_eq(li.n_labels, 2);
        cr_expect_str_eq(li.labels[0].value, big);
        cr_expect_str_eq(li.labels[1].value, big);
        rl_info_clear(&si);
        rl_info_clear(&li);
        char why[1024] = "";
        cr_expect(rlt_tree_equal(rlt_store_tree(S, "base"), rlt_store_tree(S, "short"), NULL, NULL,
                                 why, sizeof(why)),
                  "%s", why);
        cr_expect(rlt_tree_equal(rlt_store_tree(S, "base"), rlt_store_tree(S, "long"), NULL, NULL,
                                 why, sizeof(why)),
                  "%s", why);
}

/* A ready clone's placeholder is not a record: a clone that turned up in snapshots/ (which
 * the publish order forbids) would make the open fail loudly, never pass as a snapshot. */
Test(pool, a_placeholder_is_never_read_as_a_record)
{
        open_with(1, 0);
        rl_label l = { RL_POOL_LABEL, "1" };
        rlt_store_base(S, &l, 1);
        rlt_store_pool_wait(S, 1, 30);
        char pool[PATH_MAX + 8], src[PATH_MAX + 64], dst[PATH_MAX + 64];
        snprintf(pool, sizeof(pool), "%s/pool", root);
        cr_assert(rlt_dir_has_prefix(pool, "c"), "no ready clone in %s", pool);
        /* The one ready clone: c0 (names count from 0 in each process). */
        snprintf(src, sizeof(src), "%s/c0", pool);
        snprintf(dst, sizeof(dst), "%s/snapshots/999", root);
        S = rl_store_free(S);
        char *cp[] = { "cp", "-a", src, dst, NULL };
        cr_assert_eq(rlt_run(cp, NULL, 0), 0, "cp -a %s %s", src, dst);
        rl_store_options o = { .no_sync = true };
        rl_error err = {};
        int r = rl_store_open(root, &o, &S, &err);
        cr_expect_eq(r, -EUCLEAN, "open with a placeholder in snapshots/: %d %s", r, err.msg);
        cr_expect(strstr(err.msg, "snapshots/999"), "the message names it: %s", err.msg);
}
