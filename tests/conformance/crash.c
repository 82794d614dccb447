/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Crash safety: a child process runs store operations without pause (prepare, write, commit,
 * view, remove) and is SIGKILLed at a random instant, again and again. After every kill the
 * store must open, and every invariant must hold:
 *   - every snapshot listed is whole: its record reads and its tree is there;
 *   - every parent is there and committed;
 *   - committed trees are unchanged: the base layer's content hash, and each committed
 *     layer's marker file and copy of the base;
 *   - tmp/ is emptied at open and trash/ drains (cleanup);
 *   - snapshots/ holds nothing that is not in the index.
 * The operation each kill interrupted is counted (the child writes it to a shared page).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/store.h>

#include "rltest.h"

#include "crash.h"

extern char **environ;
static const char *op_names[] = { "open", "prepare", "write", "commit", "view", "remove", "idle" };

static uint64_t rnd_state;
static uint64_t rnd(void)
{
        rnd_state ^= rnd_state << 13;
        rnd_state ^= rnd_state >> 7;
        rnd_state ^= rnd_state << 17;
        return rnd_state;
}

typedef struct check {
        const char *root;
        uint64_t base_hash;
        unsigned snapshots, committed;
} check;

static int check_one(const rl_info *info, void *userdata)
{
        check *c = userdata;
        char p[PATH_MAX];
        struct stat st;

        c->snapshots++;
        snprintf(p, sizeof(p), "%s/snapshots/%lu/fs", c->root, (unsigned long)info->id);
        cr_assert(stat(p, &st) == 0 && S_ISDIR(st.st_mode), "%s: tree missing", info->name);
        if (strcmp(info->name, "base") == 0) {
                cr_assert_eq(info->kind, RL_KIND_COMMITTED);
                cr_assert_eq(rlt_tree_hash(p, "marker"), c->base_hash,
                             "the base layer changed");
                return 0;
        }
        cr_assert_str_eq(info->parent, "base", "%s: parent", info->name);
        if (info->kind == RL_KIND_COMMITTED) {
                c->committed++;
                /* A committed layer: its marker names it, and the base files are intact. */
                char m[PATH_MAX], buf[64] = {};
                snprintf(m, sizeof(m), "%s/marker", p);
                FILE *f = fopen(m, "r");
                cr_assert(f, "%s: marker missing", info->name);
                cr_assert(fread(buf, 1, sizeof(buf) - 1, f) > 0);
                fclose(f);
                cr_assert_str_eq(buf, info->name, "%s: marker says %s", info->name, buf);
                cr_assert(info->n_labels == 1 && !strcmp(info->labels[0].value, info->name),
                          "%s: labels lost", info->name);
                cr_assert_eq(rlt_tree_hash(p, "marker"), c->base_hash,
                             "%s: its copy of the base differs", info->name);
        }
        return 0;
}

static void crash_loop(rlt_fs fs, unsigned kills, uint64_t seed)
{
        const char *mnt = rlt_mkfs(fs, 0, rlt_fs_name(fs));
        char root[PATH_MAX], p[PATH_MAX];
        unsigned by_op[OP_MAX] = {};
        rl_store *s = NULL;
        rl_error err = {};
        check c = { .root = root };

        snprintf(root, sizeof(root), "%s/store", mnt);
        cr_assert_eq(rl_store_open(root, NULL, &s, &err), 0, "%s", err.msg);
        cr_assert_eq(rl_store_prepare(s, "b", NULL, NULL, 0, NULL, &err), 0);
        rl_mount m;
        cr_assert_eq(rl_store_mounts(s, "b", &m, &err), 0);
        for (int i = 0; i < 60; i++) {
                snprintf(p, sizeof(p), "%s/d%d", m.source, i % 6);
                mkdir(p, 0755);
                snprintf(p, sizeof(p), "%s/d%d/f%d", m.source, i % 6, i);
                rlt_write_file(p, (uint64_t)(i * 997) % 20000, (unsigned)i);
        }
        c.base_hash = rlt_tree_hash(m.source, "marker");
        rl_mount_clear(&m);
        cr_assert_eq(rl_store_commit(s, "base", "b", NULL, 0, &err), 0);
        s = rl_store_free(s);

        /* The child is a program of its own (tests/conformance/crash-child.c), started with
         * posix_spawn: a fork of this criterion worker would carry the worker's IPC with the
         * runner along, and confuse it. It reports its current operation in a shared page. */
        const char *prog = getenv("RL_CRASH_CHILD");
        cr_assert(prog && access(prog, X_OK) == 0,
                  "RL_CRASH_CHILD must name the built crash-child (tests/run-unit sets it)");
        char shpath[PATH_MAX], seedarg[32];
        snprintf(shpath, sizeof(shpath), "%s/crash-shared", rlt_scratch());
        int shfd = open(shpath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        cr_assert(shfd >= 0 && ftruncate(shfd, sizeof(shared)) == 0);
        shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED, shfd, 0);
        cr_assert(sh != MAP_FAILED);
        close(shfd);
        rnd_state = seed;
        for (unsigned i = 0; i < kills; i++) {
                snprintf(seedarg, sizeof(seedarg), "%lu", (unsigned long)(seed + i + 1));
                char *argv[] = { (char *)prog, root, shpath, seedarg, NULL };
                pid_t pid;
                sh->op = OP_OPEN;
                cr_assert(posix_spawn(&pid, prog, NULL, NULL, argv, environ) == 0);
                /* One kill in three at a random instant 0-40 ms into the child's life; the
                 * others aimed: wait until the child is in a commit (or a remove), short
                 * operations a random instant would seldom hit, then 0-300 us more. */
                int target = i % 3 == 1 ? OP_COMMIT : i % 3 == 2 ? OP_REMOVE : -1;
                struct timespec step = { 0, 20000 };
                for (int w = 0; target >= 0 && sh->op != target && w < 100000; w++)
                        nanosleep(&step, NULL);
                struct timespec t = { 0, target >= 0 ? (long)(rnd() % 300000)
                                                     : (long)(rnd() % 40000000) };
                nanosleep(&t, NULL);
                int op = sh->op;
                kill(pid, SIGKILL);
                int status;
                cr_assert(waitpid(pid, &status, 0) == pid);
                cr_assert(WIFSIGNALED(status), "the child stopped by itself (exit %d) in %s",
                          WEXITSTATUS(status), op_names[sh->op]);
                cr_assert_eq(WTERMSIG(status), SIGKILL, "the child died of signal %d in %s",
                             WTERMSIG(status), op_names[sh->op]);
                by_op[op]++;

                /* Reopen: the index must rebuild, tmp/ be emptied. */
                int r = rl_store_open(root, NULL, &s, &err);
                cr_assert_eq(r, 0, "open after kill %u (in %s): %s", i, op_names[op], err.msg);
                snprintf(p, sizeof(p), "%s/tmp", root);
                cr_assert_eq(rlt_dir_count(p), 0, "tmp/ not emptied at open");
                c.snapshots = c.committed = 0;
                cr_assert_eq(rl_store_walk(s, NULL, 0, check_one, &c, &err), 0, "%s", err.msg);
                snprintf(p, sizeof(p), "%s/snapshots", root);
                cr_assert_eq(rlt_dir_count(p), c.snapshots,
                             "snapshots/ holds entries the index does not know");
                /* Keep the store small, so every round checks a similar amount. */
                for (unsigned j = 1; c.snapshots > 24 && j <= sh->seq; j++) {
                        char k[64];
                        snprintf(k, sizeof(k), j % 2 ? "layer-%u" : "view-%u", j);
                        if (rl_store_remove(s, k, &err) == 0)
                                c.snapshots--;
                        snprintf(k, sizeof(k), "active-%u", j);
                        if (rl_store_remove(s, k, &err) == 0)
                                c.snapshots--;
                }
                cr_assert_eq(rl_store_cleanup(s, &err), 0, "%s", err.msg);
                snprintf(p, sizeof(p), "%s/trash", root);
                cr_assert_eq(rlt_dir_count(p), 0, "trash/ not drained");
                s = rl_store_free(s);
        }
        munmap(sh, sizeof(*sh));
        fprintf(stderr,
                "crash(%s): %u kills: open %u, prepare %u, write %u, commit %u, view %u, "
                "remove %u, between operations %u\n",
                rlt_fs_name(fs), kills, by_op[OP_OPEN], by_op[OP_PREPARE], by_op[OP_WRITE],
                by_op[OP_COMMIT], by_op[OP_VIEW], by_op[OP_REMOVE], by_op[OP_IDLE]);
        cr_expect_gt(by_op[OP_PREPARE], 0, "no kill landed in a prepare");
        cr_expect_gt(by_op[OP_COMMIT] + by_op[OP_REMOVE], 0, "no kill in a commit or remove");
}

Test(crash, sigkill_xfs, .init = rlt_init, .fini = rlt_fini, .timeout = 600)
{
        crash_loop(RLT_XFS, 150, 0x5eed1);
}

/* btrfs: every tree a subvolume, every Prepare and View a snapshot; what a kill leaves in
 * tmp/ (a snapshot made, not yet published) is deleted as a subvolume. */
Test(crash, sigkill_btrfs, .init = rlt_init, .fini = rlt_fini, .timeout = 600)
{
        crash_loop(RLT_BTRFS, 60, 0x5eed3);
}

Test(crash, sigkill_ext4, .init = rlt_init, .fini = rlt_fini, .timeout = 600)
{
        crash_loop(RLT_EXT4, 60, 0x5eed2);
}
