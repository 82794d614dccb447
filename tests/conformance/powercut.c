/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Crash safety at a power cut, not just a process kill (crash.c): the filesystem is shut
 * down without flushing its journal (XFS_IOC_GOINGDOWN and EXT4_IOC_SHUTDOWN, both
 * _IOR('X', 125) with NOLOGFLUSH), so whatever was not made durable yet is lost, as at a
 * power cut: dirty pages and journal records not written are dropped, what reached the
 * (loop) device stays. Then it is unmounted, mounted again (journal recovery) and the store
 * opened. A SIGKILL cannot test this: the kernel finishes every write a killed process made.
 *
 * Prepares from the warm pool run without pause in a thread (and a cold one whenever the
 * pool is empty); the filesystem goes down at a random instant. After each cut:
 *   - the store opens: no published directory lacks its record (a pooled snapshot's record
 *     is written into a placeholder in place, and neither it nor the renames are flushed
 *     before the Prepare returns, only the store's journal entry: the open's replay must
 *     make each whole);
 *   - every Prepare that returned before the cut is there, active, with base as parent and
 *     base's tree; those that returned after it, and the one it interrupted, are whole or
 *     absent. (After the cut is not after a power cut: XFS's fsync of a directory answers 0
 *     once the shutdown has unpinned the directory's log items, whose changes never reached
 *     the disk. A real power cut leaves no code running to believe it.)
 *   - snapshots/ holds nothing the index does not know (or the open would have failed).
 * The first round cuts right after a Prepare returned, so that case is always checked.
 *
 * With ephemeral snapshots mixed in (every odd Prepare), the store must open after the cut
 * all the same (they were never flushed: what of them reached the disk is anything), and
 * after the reboot that follows a real power cut (simulated) none of them is left, while
 * every durable one is whole.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/store.h>

#include "rltest.h"

/* <xfs/xfs_fs.h> and ext4's private header are not installed; the values are ABI. */
#define SHUTDOWN_IOC _IOR('X', 125, uint32_t)
#define SHUTDOWN_NOLOGFLUSH 0x2u

#define MAX_KEYS 256

typedef struct world {
        rlt_fs fs;
        char mnt[PATH_MAX], root[PATH_MAX], dev[PATH_MAX];
        rl_store *s;
        bool mix; /* odd Prepares are ephemeral */
} world;

typedef struct runner {
        world *w;
        unsigned round;
        atomic_uint done;    /* Prepares that returned 0, in key order */
        bool hit[MAX_KEYS]; /* served by the pool (as far as the stats tell) */
        int last_r;
        rl_error last_err;
} runner;

static void open_store(world *w)
{
        rl_store_options o = { .pool_size = 2, .pool_after = 0 };
        rl_error err = {};
        int r = rl_store_open(w->root, &o, &w->s, &err);
        cr_assert_eq(r, 0, "open after a power cut: %s", err.msg);
}

static void key_of(char *buf, unsigned round, unsigned i)
{
        snprintf(buf, 64, "cut%u-%u", round, i);
}

static void *prepare_loop(void *arg)
{
        runner *ru = arg;
        char key[64];
        for (unsigned i = 0; i < MAX_KEYS; i++) {
                rl_pool_stats before, after;
                rl_error err = {};
                key_of(key, ru->round, i);
                rl_store_pool_stats(ru->w->s, &before);
                rl_prepare_options o = { .ephemeral = ru->w->mix && (i & 1) };
                int r = rl_store_prepare(ru->w->s, key, "base", NULL, 0, &o, &err);
                if (r < 0) {
                        ru->last_r = r;
                        ru->last_err = err;
                        break;
                }
                rl_store_pool_stats(ru->w->s, &after);
                ru->hit[i] = after.hits > before.hits;
                atomic_fetch_add(&ru->done, 1);
        }
        return NULL;
}

static void shut_down(world *w)
{
        int fd = open(w->mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(fd >= 0, "open %s: %s", w->mnt, strerror(errno));
        uint32_t flags = SHUTDOWN_NOLOGFLUSH;
        int r = ioctl(fd, SHUTDOWN_IOC, &flags);
        int e = errno;
        close(fd);
        cr_assert_eq(r, 0, "shut %s down (%s): %s", w->mnt, rlt_fs_name(w->fs), strerror(e));
}

/* Unmount the dead filesystem and mount it again from the same loop device, which an fd
 * held across the unmount keeps attached (mount -o loop detaches it at the last close). */
static void remount(world *w)
{
        int hold = open(w->dev, O_RDONLY | O_CLOEXEC);
        cr_assert(hold >= 0, "open %s: %s", w->dev, strerror(errno));
        cr_assert(umount2(w->mnt, 0) == 0, "umount %s: %s", w->mnt, strerror(errno));
        int r = mount(w->dev, w->mnt, rlt_fs_name(w->fs), 0, NULL);
        int e = errno;
        close(hold);
        cr_assert_eq(r, 0, "mount %s on %s again: %s", w->dev, w->mnt, strerror(e));
}

static void cut_loop(rlt_fs fs, unsigned rounds, unsigned seed, bool mix)
{
        world w;
        char p[PATH_MAX], key[64];
        rl_error err = {};
        unsigned total_done = 0, total_hits = 0, mid_prepare = 0;

        w = (world){ .fs = fs, .mix = mix };
        snprintf(w.mnt, sizeof(w.mnt), "%s", rlt_mkfs(fs, 0, rlt_fs_name(fs)));
        snprintf(w.root, sizeof(w.root), "%s/store", w.mnt);
        struct stat st;
        cr_assert(stat(w.mnt, &st) == 0);
        snprintf(w.dev, sizeof(w.dev), "%s/%s.dev", rlt_scratch(), rlt_fs_name(fs));
        cr_assert(mknod(w.dev, S_IFBLK | 0600, st.st_dev) == 0, "mknod %s (%u:%u): %s", w.dev,
                  major(st.st_dev), minor(st.st_dev), strerror(errno));

        open_store(&w);
        rl_label l = { RL_POOL_LABEL, "2" };
        rlt_store_base(w.s, &l, 1);
        srandom(seed);

        for (unsigned round = 0; round < rounds; round++) {
                rlt_store_pool_wait(w.s, 2, 60);
                runner ru = { .w = &w, .round = round };
                unsigned before_cut; /* Prepares known to have returned before the cut */
                if (round == 0) {
                        /* The case that must hold every time: a Prepare returned, then the
                         * power went. */
                        key_of(key, 0, 0);
                        rl_pool_stats ps0, ps1;
                        rl_store_pool_stats(w.s, &ps0);
                        cr_assert_eq(rl_store_prepare(w.s, key, "base", NULL, 0, NULL, &err),
                                     0, "%s", err.msg);
                        rl_store_pool_stats(w.s, &ps1);
                        cr_assert_eq(ps1.hits, ps0.hits + 1, "the first Prepare missed the pool");
                        ru.hit[0] = true;
                        atomic_store(&ru.done, 1);
                        before_cut = 1;
                        shut_down(&w);
                } else {
                        pthread_t t;
                        cr_assert_eq(pthread_create(&t, NULL, prepare_loop, &ru), 0);
                        /* 0-20 ms in: a pooled Prepare takes 1-3 ms, so a cut lands in one
                         * or between two, or in a cold one once the pool ran dry. */
                        struct timespec d = { 0, (long)(random() % 20000000) };
                        nanosleep(&d, NULL);
                        /* Read before the cut: each Prepare counted here had returned. */
                        before_cut = atomic_load(&ru.done);
                        shut_down(&w);
                        pthread_join(t, NULL);
                        cr_assert(ru.last_r < 0, "round %u: %u Prepares and no cut", round,
                                  MAX_KEYS);
                        /* Cut mid-Prepare: it failed for the shutdown, not for its own
                         * reason: EIO, or on ext4 EROFS, which a journalled operation
                         * started after the shutdown aborted the journal gets
                         * (ext4_journal_check_start). */
                        bool shut = ru.last_r == -EIO || (fs == RLT_EXT4 && ru.last_r == -EROFS);
                        cr_expect(shut, "round %u: a Prepare failed otherwise: %d %s", round,
                                  ru.last_r, ru.last_err.msg);
                        mid_prepare++;
                }
                unsigned done = atomic_load(&ru.done);
                total_done += before_cut;
                for (unsigned i = 0; i < before_cut; i++)
                        total_hits += ru.hit[i];
                w.s = rl_store_free(w.s);
                remount(&w);
                open_store(&w);
                if (mix) {
                        /* The open above is the one without a reboot; now the reboot. */
                        w.s = rl_store_free(w.s);
                        rlt_fake_reboot(w.root);
                        open_store(&w);
                }

                /* Every Prepare that returned before the cut survived, whole; no ephemeral
                 * one outlived the reboot. */
                for (unsigned i = 0; i < before_cut; i++) {
                        rl_info info;
                        key_of(key, round, i);
                        int r = rl_store_stat(w.s, key, &info, &err);
                        if (mix && (i & 1)) {
                                cr_assert_eq(r, -ENOENT,
                                             "round %u: ephemeral '%s' outlived a "
                                             "reboot",
                                             round, key);
                                continue;
                        }
                        cr_assert_eq(r, 0, "round %u: '%s' returned before the cut, and is gone: %s",
                                     round, key, err.msg);
                        cr_assert_eq(info.kind, RL_KIND_ACTIVE, "%s", key);
                        cr_assert_str_eq(info.parent, "base", "%s", key);
                        rl_info_clear(&info);
                        char why[1024] = "";
                        cr_assert(rlt_tree_equal(rlt_store_tree(w.s, "base"),
                                                 rlt_store_tree(w.s, key), NULL, NULL, why,
                                                 sizeof(why)),
                                  "round %u: '%s' is not whole: %s", round, key, why);
                }
                /* Those that returned after it, and the one it interrupted: whole or
                 * absent. */
                unsigned present = before_cut;
                for (unsigned i = before_cut; i <= done; i++) {
                        rl_info info;
                        key_of(key, round, i);
                        if (rl_store_stat(w.s, key, &info, &err) < 0)
                                continue;
                        cr_assert(!mix || !(i & 1), "round %u: ephemeral '%s' outlived a reboot",
                                  round, key);
                        char why[1024] = "";
                        cr_assert(rlt_tree_equal(rlt_store_tree(w.s, "base"),
                                                 rlt_store_tree(w.s, key), NULL, NULL, why,
                                                 sizeof(why)),
                                  "round %u: '%s', cut mid-Prepare, is half there: %s", round, key,
                                  why);
                        cr_assert_eq(info.kind, RL_KIND_ACTIVE, "%s", key);
                        rl_info_clear(&info);
                        present = i + 1;
                }
                snprintf(p, sizeof(p), "%s/tmp", w.root);
                cr_assert_eq(rlt_dir_count(p), 0, "tmp/ not emptied at open");
                /* Start the next round small. */
                for (unsigned i = 0; i < present; i++) {
                        key_of(key, round, i);
                        int r = rl_store_remove(w.s, key, &err);
                        cr_assert(r == 0 || (r == -ENOENT && (i >= before_cut || (mix && (i & 1)))),
                                  "%s", err.msg);
                }
                cr_assert_eq(rl_store_cleanup(w.s, &err), 0, "%s", err.msg);
        }
        fprintf(stderr,
                "crash_powercut(%s): %u cuts (%u mid-stream); %u Prepares returned before a "
                "cut, %u of them from the pool\n",
                rlt_fs_name(fs), rounds, mid_prepare, total_done, total_hits);
        cr_expect_geq(total_hits, rounds / 3, "the pool served too few of the Prepares cut");
        w.s = rl_store_free(w.s);
}

Test(crash_powercut, pool_xfs, .init = rlt_init, .fini = rlt_fini, .timeout = 600)
{
        cut_loop(RLT_XFS, 12, 0xc07, false);
}

Test(crash_powercut, ephemeral_mixed_xfs, .init = rlt_init, .fini = rlt_fini, .timeout = 600)
{
        cut_loop(RLT_XFS, 8, 0xc09, true);
}

Test(crash_powercut, pool_ext4, .init = rlt_init, .fini = rlt_fini, .timeout = 600)
{
        cut_loop(RLT_EXT4, 8, 0xc08, false);
}
