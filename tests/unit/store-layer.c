/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Layers through the store: Apply onto an active snapshot (into a clone, swapped in whole,
 * so a failure changes nothing) and CommitLayer (a committed snapshot made from its parent
 * plus a layer in one step, nothing left by a failure). The layer semantics themselves are
 * tests/unit/layer.c's.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/image.h>
#include <reflayer/layer.h>
#include <reflayer/store.h>
#include <reflayer/tree.h>

#include "rltest.h"

static rl_store *S;
static char mnt[PATH_MAX];

static void setup(void)
{
        rlt_init();
        snprintf(mnt, sizeof(mnt), "%s", rlt_mkfs(RLT_XFS, 0, "xfs"));
        char root[PATH_MAX];
        snprintf(root, sizeof(root), "%s/store", mnt);
        rl_error err = {};
        cr_assert_eq(rl_store_open(root, NULL, &S, &err), 0, "%s", err.msg);
}

static void teardown(void)
{
        S = rl_store_free(S);
        rlt_fini();
}

TestSuite(store_layer, .init = setup, .fini = teardown, .timeout = 120);

/* tar (GNU) of DIR's content as FILE: our layer files. */
static void tar_of(const char *dir, const char *file, const char *compress)
{
        char out[4096];
        char *argv[] = { "tar", "--format=pax", "--xattrs", "--xattrs-include=*", "-C",
                         (char *)dir, "-cf", (char *)file, (char *)compress, ".", NULL };
        if (!compress) {
                argv[8] = ".";
                argv[9] = NULL;
        }
        cr_assert_eq(rlt_run(argv, out, sizeof(out)), 0, "tar: %s", out);
}

static int open_ro(const char *path)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
        return fd;
}

static void put(const char *path, const char *content)
{
        FILE *f = fopen(path, "w");
        cr_assert(f, "%s: %s", path, strerror(errno));
        fputs(content, f);
        cr_assert(fclose(f) == 0);
}

static const char *get(const char *path)
{
        static char buf[256];
        FILE *f = fopen(path, "r");
        if (!f)
                return "<missing>";
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        return buf;
}

Test(store_layer, apply_changes_an_active_snapshot_whole_or_not_at_all)
{
        char src[PATH_MAX], tar[PATH_MAX], bad[PATH_MAX], p[PATH_MAX], copy[PATH_MAX];
        rl_error err = {};
        rl_layer_stats st;
        cr_assert_eq(rl_store_prepare(S, "k", NULL, NULL, 0, NULL, &err), 0, "%s", err.msg);
        snprintf(p, sizeof(p), "%s/old", rlt_store_tree(S, "k"));
        put(p, "old\n");

        snprintf(src, sizeof(src), "%s/layer", rlt_scratch());
        cr_assert(mkdir(src, 0755) == 0);
        snprintf(p, sizeof(p), "%s/new", src);
        put(p, "new\n");
        snprintf(p, sizeof(p), "%s/.wh.old", src);
        put(p, "");
        snprintf(tar, sizeof(tar), "%s/layer.tar.gz", rlt_scratch());
        tar_of(src, tar, "-z");

        int fd = open_ro(tar);
        cr_assert_eq(rl_store_apply(S, "k", fd, NULL, &st, &err), 0, "%s", err.msg);
        close(fd);
        cr_expect_eq(st.whiteouts, 1);
        cr_expect_neq(strcmp(st.digest, st.diff_id), 0, "gzip: digest and diff_id differ");
        snprintf(p, sizeof(p), "%s/new", rlt_store_tree(S, "k"));
        cr_expect_str_eq(get(p), "new\n");
        snprintf(p, sizeof(p), "%s/old", rlt_store_tree(S, "k"));
        cr_expect_str_eq(get(p), "<missing>");

        /* A layer that fails halfway (a good entry, then one leading out): nothing of it. */
        snprintf(copy, sizeof(copy), "%s/copy", rlt_scratch());
        {
                /* The clone engine reads without touching atimes (cp -a does not). */
                int sfd = open(rlt_store_tree(S, "k"), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                int dfd = open(rlt_scratch(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                cr_assert_eq(rl_tree_clone(sfd, dfd, "copy", NULL, NULL, &err), 0, "%s", err.msg);
                close(sfd);
                close(dfd);
        }
        char out[4096];
        snprintf(bad, sizeof(bad), "%s/bad.tar", rlt_scratch());
        char script[3 * PATH_MAX];
        snprintf(script, sizeof(script),
                 "cd %s && echo x > first && tar -cf %s first --transform 's,first,../escape,' "
                 "first",
                 rlt_scratch(), bad);
        char *sh[] = { "sh", "-c", script, NULL };
        cr_assert_eq(rlt_run(sh, out, sizeof(out)), 0, "%s", out);
        fd = open_ro(bad);
        cr_expect_eq(rl_store_apply(S, "k", fd, NULL, NULL, &err), -EINVAL);
        close(fd);
        cr_expect(strstr(err.msg, "../escape"), "%s", err.msg);
        cr_expect(strstr(err.msg, "'k'"), "%s", err.msg);
        char why[1024] = "";
        cr_expect(rlt_tree_equal(copy, rlt_store_tree(S, "k"), NULL, NULL, why, sizeof(why)),
                  "a failed apply changed the snapshot: %s", why);
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof(tmp), "%s/store/tmp", mnt);
        cr_expect(rlt_dir_is_empty(tmp), "a failed apply left tmp/ behind");

        /* Only an active snapshot takes a layer. */
        cr_assert_eq(rl_store_commit(S, "c", "k", NULL, 0, &err), 0, "%s", err.msg);
        fd = open_ro(tar);
        cr_expect_eq(rl_store_apply(S, "c", fd, NULL, NULL, &err), -EBUSY);
        cr_expect_eq(rl_store_apply(S, "nope", fd, NULL, NULL, &err), -ENOENT);
        close(fd);
}

Test(store_layer, commit_layer_makes_a_chain_and_leaves_nothing_on_failure)
{
        char src[PATH_MAX], tar[PATH_MAX], p[PATH_MAX];
        rl_error err = {};
        snprintf(src, sizeof(src), "%s/l1", rlt_scratch());
        cr_assert(mkdir(src, 0755) == 0);
        snprintf(p, sizeof(p), "%s/a", src);
        put(p, "one\n");
        snprintf(tar, sizeof(tar), "%s/l1.tar", rlt_scratch());
        tar_of(src, tar, NULL);
        int fd = open_ro(tar);
        rl_label l = { "image", "demo:1" };
        rl_layer_stats st;
        cr_assert_eq(rl_store_commit_layer(S, "sha256:one", NULL, &l, 1, fd, NULL, &st, &err), 0,
                     "%s", err.msg);
        close(fd);
        rl_info i;
        cr_assert_eq(rl_store_stat(S, "sha256:one", &i, &err), 0, "%s", err.msg);
        cr_expect_eq(i.kind, RL_KIND_COMMITTED);
        cr_expect_eq(i.n_labels, 1);
        rl_info_clear(&i);
        cr_expect_str_eq(st.digest, st.diff_id, "an uncompressed layer is its own diff");

        /* On top of it: a child layer whose digest is wrong: no snapshot, nothing left. */
        fd = open_ro(tar);
        rl_apply_options o = { .expect_diff_id = "sha256:0000000000000000000000000000000000000000"
                                                 "000000000000000000000000" };
        cr_expect_eq(rl_store_commit_layer(S, "sha256:two", "sha256:one", NULL, 0, fd, &o, NULL,
                                           &err),
                     -EBADMSG);
        close(fd);
        cr_expect(strstr(err.msg, "diff_id"), "%s", err.msg);
        cr_expect_eq(rl_store_stat(S, "sha256:two", &i, &err), -ENOENT);
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof(tmp), "%s/store/tmp", mnt);
        cr_expect(rlt_dir_is_empty(tmp));

        /* The right one: the child has both layers' files. */
        snprintf(p, sizeof(p), "%s/a", src);
        put(p, "two\n");
        tar_of(src, tar, NULL);
        fd = open_ro(tar);
        cr_assert_eq(rl_store_commit_layer(S, "sha256:two", "sha256:one", NULL, 0, fd, NULL, NULL,
                                           &err),
                     0, "%s", err.msg);
        close(fd);
        snprintf(p, sizeof(p), "%s/a", rlt_store_tree(S, "sha256:two"));
        cr_expect_str_eq(get(p), "two\n");
        snprintf(p, sizeof(p), "%s/a", rlt_store_tree(S, "sha256:one"));
        cr_expect_str_eq(get(p), "one\n");
        /* The parent can no longer be removed. */
        cr_expect_eq(rl_store_remove(S, "sha256:one", &err), -EBUSY);
}

/*
 * Import never blocks on a file of the layout: a FIFO as oci-layout, as index.json or as a
 * blob is refused as not a regular file, at once (an open without O_NONBLOCK would wait
 * for a writer forever, and with it the daemon's call and its shutdown).
 */
Test(store_layer, import_refuses_fifos_in_the_layout, .timeout = 60)
{
        static const char manifest[] = "0123456789abcdef0123456789abcdef"
                                       "0123456789abcdef0123456789abcdef";
        char dir[PATH_MAX], p[PATH_MAX + 128];
        rl_import_result res;
        rl_error err = {};
        snprintf(dir, sizeof(dir), "%s/layout", mnt);
        cr_assert(mkdir(dir, 0755) == 0);
        snprintf(p, sizeof(p), "%s/blobs", dir);
        cr_assert(mkdir(p, 0755) == 0);
        snprintf(p, sizeof(p), "%s/blobs/sha256", dir);
        cr_assert(mkdir(p, 0755) == 0);
        int lfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(lfd >= 0);

        const char *fifo[] = { "oci-layout", "index.json", "blobs/sha256/0123456789abcdef" };
        for (int i = 0; i < 3; i++) {
                snprintf(p, sizeof(p), "%s/%s%s", dir, fifo[i], i == 2 ? manifest + 16 : "");
                cr_assert(mkfifo(p, 0644) == 0, "mkfifo %s: %s", p, strerror(errno));
                cr_expect_eq(rl_store_import(S, lfd, NULL, &res, &err), -EINVAL, "%s", err.msg);
                cr_expect(strstr(err.msg, "not a regular file"), "%s", err.msg);
                cr_assert(unlink(p) == 0);
                /* The next step: this one a regular file. */
                if (i == 0)
                        put(p, "{\"imageLayoutVersion\":\"1.0.0\"}");
                if (i == 1) {
                        char index[512];
                        snprintf(index, sizeof(index),
                                 "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":"
                                 "\"application/vnd.oci.image.manifest.v1+json\","
                                 "\"digest\":\"sha256:%s\",\"size\":10}]}",
                                 manifest);
                        put(p, index);
                }
        }
        close(lfd);
}
