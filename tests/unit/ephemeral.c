/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Ephemeral snapshots: published without a flush into ephemeral/BOOT/, kept across a reopen
 * in the same boot, thrown away whole by the first open after a reboot (simulated by giving
 * their directory another boot id), made durable by a commit; the warm pool serves them;
 * an unreadable one (the filesystem went down without a reboot) is dropped, not fatal; a
 * layer applied onto one stays in ephemeral/ until a commit.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <reflayer/store.h>

#include "rltest-tar.h"
#include "rltest.h"

static rl_store *S;
static char root[PATH_MAX];

static void open_store(unsigned pool_size)
{
        /* Flushing on: the ephemeral path must skip the flushes itself. */
        rl_store_options o = { .pool_size = pool_size, .pool_after = 0 };
        rl_error err = {};
        cr_assert_eq(rl_store_open(root, &o, &S, &err), 0, "%s", err.msg);
}

static void reopen(void)
{
        S = rl_store_free(S);
        open_store(0);
}

static void setup(void)
{
        rlt_init();
        snprintf(root, sizeof(root), "%s/store", rlt_mkfs(RLT_XFS, 0, "xfs"));
}

static void teardown(void)
{
        S = rl_store_free(S);
        rlt_fini();
}

TestSuite(ephemeral, .init = setup, .fini = teardown, .timeout = 120);

static void create(const char *key, bool view, bool ephemeral)
{
        rl_prepare_options o = { .ephemeral = ephemeral };
        rl_error err = {};
        int r = view ? rl_store_view(S, key, "base", NULL, 0, &o, &err)
                     : rl_store_prepare(S, key, "base", NULL, 0, &o, &err);
        cr_assert_eq(r, 0, "%s", err.msg);
}

static bool is_ephemeral(const char *key)
{
        rl_info i;
        rl_error err = {};
        cr_assert_eq(rl_store_stat(S, key, &i, &err), 0, "%s", err.msg);
        bool e = i.ephemeral;
        rl_info_clear(&i);
        return e;
}

static bool exists(const char *key)
{
        rl_info i;
        rl_error err = {};
        int r = rl_store_stat(S, key, &i, &err);
        cr_assert(r == 0 || r == -ENOENT, "stat '%s': %s", key, err.msg);
        if (r == 0)
                rl_info_clear(&i);
        return r == 0;
}

static void write_in(const char *key, const char *name)
{
        char p[PATH_MAX + 64];
        snprintf(p, sizeof(p), "%s/%s", rlt_store_tree(S, key), name);
        rlt_write_file(p, 5000, 7);
}

static bool has(const char *key, const char *name)
{
        char p[PATH_MAX + 64];
        snprintf(p, sizeof(p), "%s/%s", rlt_store_tree(S, key), name);
        return access(p, F_OK) == 0;
}

Test(ephemeral, kept_across_a_reopen_gone_after_a_reboot)
{
        rl_error err = {};
        open_store(0);
        rlt_store_base(S, NULL, 0);
        create("e", false, true);
        create("v", true, true);
        create("d", false, false);
        write_in("e", "written");
        cr_expect(is_ephemeral("e") && is_ephemeral("v") && !is_ephemeral("d"));
        cr_expect(strstr(rlt_store_tree(S, "e"), "/ephemeral/") != NULL, "%s",
                  rlt_store_tree(S, "e"));
        cr_expect(strstr(rlt_store_tree(S, "d"), "/snapshots/") != NULL, "%s",
                  rlt_store_tree(S, "d"));
        char why[1024] = "";
        cr_expect(rlt_tree_equal(rlt_store_tree(S, "base"), rlt_store_tree(S, "v"), NULL, NULL, why,
                                 sizeof(why)),
                  "an ephemeral view differs from its parent: %s", why);
        /* The parent counts them as children like any other. */
        cr_expect_eq(rl_store_remove(S, "base", &err), -EBUSY);

        reopen();
        cr_assert(exists("e") && exists("v") && exists("d"), "lost at a reopen");
        cr_expect(is_ephemeral("e") && !is_ephemeral("d"));
        cr_expect(has("e", "written"));

        S = rl_store_free(S);
        rlt_fake_reboot(root);
        open_store(0);
        cr_expect(!exists("e") && !exists("v"), "an ephemeral snapshot outlived a reboot");
        cr_expect(exists("d") && exists("base"));
        /* base's children are d alone now: gone d, base can go. */
        cr_assert_eq(rl_store_remove(S, "d", &err), 0, "%s", err.msg);
        cr_assert_eq(rl_store_remove(S, "base", &err), 0, "%s", err.msg);
        cr_assert_eq(rl_store_cleanup(S, &err), 0, "%s", err.msg);
        char p[PATH_MAX + 16];
        snprintf(p, sizeof(p), "%s/trash", root);
        cr_expect(rlt_dir_is_empty(p), "the old boot's snapshots were not deleted");
        snprintf(p, sizeof(p), "%s/ephemeral", root);
        cr_expect_eq(rlt_dir_count(p), 1, "old boot directories left in ephemeral/");
        /* The key is free again. */
        cr_assert_eq(rl_store_prepare(S, "e", NULL, NULL, 0, NULL, &err), 0, "%s", err.msg);
}

Test(ephemeral, a_commit_makes_it_durable)
{
        rl_error err = {};
        open_store(0);
        rlt_store_base(S, NULL, 0);
        create("e", false, true);
        write_in("e", "written");
        rl_label l = {"k", "v"};
        rl_info upd = { .name = "e", .labels = &l, .n_labels = 1 };
        cr_assert_eq(rl_store_update(S, &upd, NULL, 0, NULL, &err), 0, "%s", err.msg);
        cr_assert_eq(rl_store_commit(S, "layer2", "e", NULL, 0, &err), 0, "%s", err.msg);
        cr_expect(!is_ephemeral("layer2"));
        cr_expect(strstr(rlt_store_tree(S, "layer2"), "/snapshots/") != NULL, "%s",
                  rlt_store_tree(S, "layer2"));

        S = rl_store_free(S);
        rlt_fake_reboot(root);
        open_store(0);
        cr_assert(exists("layer2"), "a committed snapshot did not survive a reboot");
        cr_expect(has("layer2", "written"));
        rl_info i;
        cr_assert_eq(rl_store_stat(S, "layer2", &i, &err), 0, "%s", err.msg);
        cr_expect_str_eq(i.parent, "base");
        rl_info_clear(&i);
        /* A child of it is durable too. */
        cr_assert_eq(rl_store_prepare(S, "c", "layer2", NULL, 0, NULL, &err), 0, "%s", err.msg);
        cr_expect(has("c", "written"));
        /* Asked for both: refused, and nothing made. */
        rl_prepare_options both = { .ephemeral = true, .durable = true };
        cr_expect_eq(rl_store_prepare(S, "d", "layer2", NULL, 0, &both, &err), -EINVAL);
        cr_expect(strstr(err.msg, "ephemeral and durable at once"), "%s", err.msg);
        cr_expect(!exists("d"));
}

Test(ephemeral, an_unreadable_record_is_dropped)
{
        char p[PATH_MAX + 64];
        rl_info i;
        rl_error err = {};
        open_store(0);
        rlt_store_base(S, NULL, 0);
        create("e", false, true);
        create("d", false, false);
        cr_assert_eq(rl_store_stat(S, "e", &i, &err), 0, "%s", err.msg);
        uint64_t eid = i.id;
        rl_info_clear(&i);
        cr_assert_eq(rl_store_stat(S, "d", &i, &err), 0, "%s", err.msg);
        uint64_t did = i.id;
        rl_info_clear(&i);
        S = rl_store_free(S);

        /* What an ephemeral record can look like after the filesystem went down and came
         * back without a reboot: empty. */
        char boot[64];
        rlt_boot_id(boot);
        snprintf(p, sizeof(p), "%s/ephemeral/%s/%" PRIu64 "/info.json", root, boot, eid);
        cr_assert(truncate(p, 0) == 0, "truncate %s: %s", p, strerror(errno));
        open_store(0);
        cr_expect(!exists("e"), "an ephemeral snapshot without a record was kept");
        cr_expect(exists("d") && exists("base"));
        S = rl_store_free(S);

        /* A durable one is never dropped like that: the store refuses to open. */
        snprintf(p, sizeof(p), "%s/snapshots/%" PRIu64 "/info.json", root, did);
        cr_assert(truncate(p, 0) == 0, "truncate %s: %s", p, strerror(errno));
        rl_store_options o = {};
        cr_expect_eq(rl_store_open(root, &o, &S, &err), -EUCLEAN, "%s", err.msg);
}

Test(ephemeral, served_by_the_warm_pool)
{
        rl_error err = {};
        open_store(1);
        rl_label l = {RL_POOL_LABEL, "1"};
        rlt_store_base(S, &l, 1);
        rl_pool_stats ps = rlt_store_pool_wait(S, 1, 30);
        create("e", false, true);
        rl_store_pool_stats(S, &ps);
        cr_expect_eq(ps.hits, 1, "the ephemeral Prepare did not come from the pool");
        cr_expect(is_ephemeral("e"));
        char why[1024] = "";
        cr_expect(rlt_tree_equal(rlt_store_tree(S, "base"), rlt_store_tree(S, "e"), NULL, NULL, why,
                                 sizeof(why)),
                  "%s", why);
        S = rl_store_free(S);
        rlt_fake_reboot(root);
        open_store(1);
        cr_expect(!exists("e"));
        cr_assert_eq(rl_store_remove(S, "base", &err), 0, "%s", err.msg);
}

/* A layer applied onto an ephemeral snapshot: the tree swapped in ephemeral/, not flushed,
 * there after a reopen; the layer's deletion and addition both; committed, durable. */
Test(ephemeral, apply_onto_one)
{
        rl_error err = {};
        open_store(0);
        rlt_store_base(S, NULL, 0);
        create("e", false, true);
        char tar[PATH_MAX + 16];
        snprintf(tar, sizeof(tar), "%s/layer.tar", rlt_scratch());
        rlt_tar *t = rlt_tar_open(tar, RL_COMPRESSION_NONE);
        rlt_tar_file(t, "added", 0644, "from the layer");
        rlt_tar_whiteout(t, "t");
        rlt_tar_close(t);
        int fd = open(tar, O_RDONLY | O_CLOEXEC);
        cr_assert(fd >= 0);
        cr_assert_eq(rl_store_apply(S, "e", fd, NULL, NULL, &err), 0, "%s", err.msg);
        close(fd);
        cr_expect(is_ephemeral("e"));
        cr_expect(strstr(rlt_store_tree(S, "e"), "/ephemeral/") != NULL);
        S = rl_store_free(S);
        open_store(0);
        cr_expect_str_eq(rlt_read_at(rlt_store_tree(S, "e"), "added"), "from the layer");
        cr_expect(!rlt_exists_at(rlt_store_tree(S, "e"), "t"));
        cr_assert_eq(rl_store_commit(S, "l2", "e", NULL, 0, &err), 0, "%s", err.msg);
        S = rl_store_free(S);
        rlt_fake_reboot(root);
        open_store(0);
        cr_expect_str_eq(rlt_read_at(rlt_store_tree(S, "l2"), "added"), "from the layer");
        cr_expect(rlt_exists_at(rlt_store_tree(S, "base"), "t"), "the layer reached base");
}
