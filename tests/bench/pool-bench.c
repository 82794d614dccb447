/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Warm-pool Prepare against the store API, no daemon (run by tests/bench/pool.sh on a fresh
 * loop filesystem): the one call a pooled Prepare is, timed alone, so that changes to the
 * publish path can be measured in seconds instead of a whole `make bench`.
 *
 *   pool-bench ROOT ROOTFS RUNS
 *
 * Copies ROOTFS into a layer labelled reflayer.io/pool=1 (store opened with pool_size 1),
 * then RUNS times: waits for the pool to hold a ready clone and build nothing, syncs the
 * filesystem (no Prepare pays for earlier writeback), times rl_store_prepare, removes the
 * snapshot and waits for the trash. Prints each time and "median MS min MS max MS".
 * A Prepare the pool did not serve (a miss) is an error: it would be a cold one.
 *
 * Under strace, the Prepare is bracketed by faccessat() of "pool-bench:begin" and
 * "pool-bench:end" (both fail with ENOENT), so its system calls are easy to cut out.
 */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/store.h>

#include "bench.h"

extern char **environ;

static void run_or_die(char *const argv[])
{
        pid_t pid;
        int status;
        if (posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ) != 0 ||
            waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                die(argv[0], NULL);
}

/* Poll (1 ms) until the pool has a ready clone and builds nothing: at most 120 s. */
static void pool_wait(rl_store *s)
{
        for (int i = 0; i < 120000; i++) {
                rl_pool_stats st;
                rl_store_pool_stats(s, &st);
                if (st.ready >= 1 && st.building == 0)
                        return;
                nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
        }
        errno = ETIMEDOUT;
        die("the pool did not fill within 120 s", NULL);
}

int main(int argc, char **argv)
{
        if (argc != 4) {
                fprintf(stderr, "usage: pool-bench ROOT ROOTFS RUNS\n");
                return 2;
        }
        const char *root = argv[1], *rootfs = argv[2];
        int runs = atoi(argv[3]);
        rl_store_options o = { .pool_size = 1, .pool_after = 0 };
        rl_label label = { .key = RL_POOL_LABEL, .value = "1" };
        rl_store *s = NULL;
        rl_error err = {};
        rl_mount m;
        char src[4096], key[64];

        if (runs < 1)
                return 2;
        if (rl_store_open(root, &o, &s, &err) < 0)
                die("open", &err);
        if (rl_store_prepare(s, "import", NULL, NULL, 0, NULL, &err) < 0 ||
            rl_store_mounts(s, "import", &m, &err) < 0)
                die("prepare import", &err);
        snprintf(src, sizeof(src), "%s/.", rootfs);
        run_or_die((char *[]){ "cp", "-a", src, m.source, NULL });
        rl_mount_clear(&m);
        if (rl_store_commit(s, "base", "import", &label, 1, &err) < 0)
                die("commit", &err);

        int root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (root_fd < 0)
                die(root, NULL);
        double *t = calloc(runs, sizeof(*t));
        for (int i = 0; i < runs; i++) {
                rl_pool_stats before, after;
                snprintf(key, sizeof(key), "warm-%d", i);
                pool_wait(s);
                if (syncfs(root_fd) < 0)
                        die("syncfs", NULL);
                rl_store_pool_stats(s, &before);
                (void)faccessat(AT_FDCWD, "pool-bench:begin", F_OK, 0);
                double t0 = now();
                int r = rl_store_prepare(s, key, "base", NULL, 0, NULL, &err);
                t[i] = now() - t0;
                (void)faccessat(AT_FDCWD, "pool-bench:end", F_OK, 0);
                if (r < 0)
                        die("prepare", &err);
                rl_store_pool_stats(s, &after);
                if (after.hits != before.hits + 1) {
                        errno = EAGAIN;
                        die("a Prepare missed the pool", NULL);
                }
                printf("%s %.3f ms\n", key, t[i] * 1e3);
                fflush(stdout);
                if (rl_store_remove(s, key, &err) < 0 || rl_store_cleanup(s, &err) < 0)
                        die("remove", &err);
        }
        close(root_fd);
        qsort(t, runs, sizeof(*t), cmp_double);
        printf("median %.3f ms min %.3f ms max %.3f ms (%d runs)\n",
               runs % 2 ? t[runs / 2] * 1e3 : (t[runs / 2 - 1] + t[runs / 2]) * 1e3 / 2,
               t[0] * 1e3, t[runs - 1] * 1e3, runs);
        free(t);
        rl_store_free(s);
        return 0;
}
