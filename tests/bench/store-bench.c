/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Store benchmark (run by tests/bench/store.sh on a fresh loop XFS):
 *   1. import ROOTFS as a committed layer, prepare N snapshots of it (prepare latency);
 *   2. usage of each: exclusive vs shared bytes, against du and the filesystem's own count;
 *   3. a store of 1,000 snapshots: how long open (the index rebuild) takes, median of 5.
 * Usage: store-bench ROOT ROOTFS N
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/store.h>

#include "bench.h"

extern char **environ;

static int run(char *const argv[], char *out, size_t size)
{
        int p[2];
        pid_t pid;
        posix_spawn_file_actions_t fa;
        if (pipe(p) < 0)
                return -1;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, p[1], 1);
        posix_spawn_file_actions_addclose(&fa, p[0]);
        if (posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ) != 0)
                return -1;
        close(p[1]);
        size_t n = 0;
        ssize_t k;
        while (out && n + 1 < size && (k = read(p[0], out + n, size - 1 - n)) > 0)
                n += (size_t)k;
        if (out)
                out[n] = '\0';
        close(p[0]);
        int status;
        waitpid(pid, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static uint64_t fs_used(const char *path)
{
        struct statvfs v;
        sync();
        if (statvfs(path, &v) < 0)
                die("statvfs", NULL);
        return (uint64_t)(v.f_blocks - v.f_bfree) * v.f_frsize;
}

static double mib(uint64_t b)
{
        return (double)b / (1 << 20);
}

int main(int argc, char **argv)
{
        if (argc != 4) {
                fprintf(stderr, "usage: store-bench ROOT ROOTFS N\n");
                return 2;
        }
        const char *root = argv[1], *rootfs = argv[2];
        int n = atoi(argv[3]);
        rl_store *s = NULL;
        rl_error err = {};
        rl_mount m;
        char key[64], src[4096], out[4096];

        if (rl_store_open(root, NULL, &s, &err) < 0)
                die("open", &err);
        if (rl_store_prepare(s, "import", NULL, NULL, 0, NULL, &err) < 0 ||
            rl_store_mounts(s, "import", &m, &err) < 0)
                die("prepare import", &err);
        snprintf(src, sizeof(src), "%s/.", rootfs);
        char *cp[] = { "cp", "-a", src, m.source, NULL };
        if (run(cp, NULL, 0) != 0)
                die("cp -a the rootfs into the layer", NULL);
        rl_mount_clear(&m);
        if (rl_store_commit(s, "base", "import", NULL, 0, &err) < 0)
                die("commit", &err);

        uint64_t before = fs_used(root);
        double *lat = calloc(n, sizeof(*lat));
        for (int i = 0; i < n; i++) {
                snprintf(key, sizeof(key), "container-%d", i);
                double t = now();
                if (rl_store_prepare(s, key, "base", NULL, 0, NULL, &err) < 0)
                        die("prepare", &err);
                lat[i] = now() - t;
        }
        uint64_t after = fs_used(root);
        rl_usage base, u, sum = {};
        if (rl_store_usage(s, "base", &base, &err) < 0)
                die("usage base", &err);
        for (int i = 0; i < n; i++) {
                snprintf(key, sizeof(key), "container-%d", i);
                if (rl_store_usage(s, key, &u, &err) < 0)
                        die("usage", &err);
                sum.bytes += u.bytes;
                sum.bytes_exclusive += u.bytes_exclusive;
                sum.bytes_shared += u.bytes_shared;
                sum.inodes += u.inodes;
        }
        char snaps[4096];
        snprintf(snaps, sizeof(snaps), "%s/snapshots", root);
        char *du[] = { "du", "-s", "-B1", snaps, NULL };
        if (run(du, out, sizeof(out)) != 0)
                die("du", NULL);
        uint64_t du_bytes = strtoull(out, NULL, 10);
        qsort(lat, n, sizeof(*lat), cmp_double);

        printf("%d snapshots of one Debian rootfs (%" PRIu64 " inodes, %.1f MiB in the layer)\n",
               n, base.inodes, mib(base.bytes));
        printf("  prepare latency: median %.1f ms, min %.1f, max %.1f\n", lat[n / 2] * 1e3,
               lat[0] * 1e3, lat[n - 1] * 1e3);
        printf("  reflayer usage, per snapshot:  exclusive %.2f MiB, shared %.1f MiB\n",
               mib(sum.bytes_exclusive / n), mib(sum.bytes_shared / n));
        printf("  reflayer usage, all %d:        exclusive %.2f MiB, shared %.1f MiB\n", n,
               mib(sum.bytes_exclusive), mib(sum.bytes_shared));
        printf("  du -s snapshots/ (layer + %d): %.1f MiB\n", n, mib(du_bytes));
        printf("  filesystem blocks used by the %d prepares (df): %.2f MiB, %.2f%% of the "
               "layer's data\n",
               n, mib(after - before), 100.0 * (double)(after - before) / (double)base.bytes);
        free(lat);

        /* 1,000 snapshots, then time the index rebuild at open. */
        int total = 1000;
        for (int i = n + 1; i < total; i++) {
                snprintf(key, sizeof(key), "empty-%d", i);
                if (rl_store_view(s, key, NULL, NULL, 0, NULL, &err) < 0)
                        die("view", &err);
        }
        s = rl_store_free(s);
        double t_open[5];
        for (int i = 0; i < 5; i++) {
                double t = now();
                if (rl_store_open(root, NULL, &s, &err) < 0)
                        die("reopen", &err);
                t_open[i] = now() - t;
                s = rl_store_free(s);
        }
        qsort(t_open, 5, sizeof(double), cmp_double);
        printf("open of a store of %d snapshots (index rebuild): median %.1f ms (min %.1f, "
               "max %.1f)\n",
               total, t_open[2] * 1e3, t_open[0] * 1e3, t_open[4] * 1e3);
        return 0;
}
