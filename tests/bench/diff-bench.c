/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Diff benchmark (run by tests/bench/diff.sh on a fresh loop XFS): ROOTFS copied in as lower,
 * a reflink clone of it as upper, then, alternating, median of RUNS:
 *   rl_tree_diff        the unchanged clone against lower (extent maps, nothing read);
 *   read-compare        the baseline: read every regular file of both trees and compare;
 *   diff -rq            GNU diff over both trees, the tool a person would reach for;
 *   rl_layer_export     the unchanged clone as a layer (empty: only the walk and the tar end).
 * Warm: with the page cache as the previous run left it. Cold: the filesystem unmounted and
 * mounted again before each run (its loop device does direct I/O, so the image's pages are
 * not cached either): the caches of nobody else on the machine are dropped.
 * Usage: diff-bench MNT ROOTFS RUNS LOOPDEV
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/layer.h>
#include <reflayer/tree.h>

#include "bench.h"

extern char **environ;

static int open_dir(const char *path)
{
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                die(path, NULL);
        return fd;
}

static int count_change(const rl_change *c, void *userdata)
{
        (void)c;
        (*(unsigned long *)userdata)++;
        return 0;
}

/* --- the baseline: read both trees --------------------------------------------------------- */

static const char *base_lower, *base_upper;
static unsigned long base_files, base_differ;
static unsigned long long base_bytes;

static int read_compare(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        static char a[1 << 18], b[1 << 18];
        char other[PATH_MAX];
        (void)flag;
        (void)ftw;

        if (!S_ISREG(st->st_mode))
                return 0;
        snprintf(other, sizeof(other), "%s%s", base_upper, path + strlen(base_lower));
        int fa = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
        int fb = open(other, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
        if (fa < 0 || fb < 0)
                die(fa < 0 ? path : other, NULL);
        base_files++;
        for (;;) {
                ssize_t na = read(fa, a, sizeof(a)), nb = read(fb, b, sizeof(b));
                if (na < 0 || nb < 0)
                        die(path, NULL);
                base_bytes += (unsigned long long)(na + nb);
                if (na != nb || memcmp(a, b, (size_t)na) != 0) {
                        base_differ++;
                        break;
                }
                if (na == 0)
                        break;
        }
        close(fa);
        close(fb);
        return 0;
}

static int run(char *const argv[])
{
        pid_t pid;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        if (posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ) != 0)
                return -1;
        posix_spawn_file_actions_destroy(&fa);
        int status;
        waitpid(pid, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

typedef struct bench {
        const char *mnt, *dev;
        char lower[PATH_MAX], upper[PATH_MAX], layer[PATH_MAX];
        int lfd, ufd;
        /* what the last run of each did */
        rl_diff_stats ds;
        rl_layer_stats ls;
        unsigned long changes;
        int gnu;
} bench;

enum { M_DIFF, M_READ, M_GNU, M_EXPORT, M_N };

static void open_trees(bench *b)
{
        b->lfd = open_dir(b->lower);
        b->ufd = open_dir(b->upper);
}

/* Drop what the page cache holds of this filesystem, and only of it. */
static void remount(bench *b)
{
        close(b->lfd);
        close(b->ufd);
        if (umount2(b->mnt, 0) < 0 || mount(b->dev, b->mnt, "xfs", 0, NULL) < 0)
                die("remount", NULL);
        open_trees(b);
}

static double run_method(bench *b, int m)
{
        rl_error err = {};
        double t0 = now();

        switch (m) {
        case M_DIFF:
                b->changes = 0;
                if (rl_tree_diff(b->lfd, b->ufd, count_change, &b->changes, &b->ds, &err) < 0)
                        die("rl_tree_diff", &err);
                break;
        case M_READ:
                base_lower = b->lower;
                base_upper = b->upper;
                base_files = base_differ = 0;
                base_bytes = 0;
                if (nftw(b->lower, read_compare, 64, FTW_PHYS) != 0)
                        die("read-compare", NULL);
                break;
        case M_GNU: {
                char *argv[] = { "diff", "-rq", "--no-dereference", b->lower, b->upper, NULL };
                b->gnu = run(argv);
                break;
        }
        default: {
                int out = open(b->layer, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (out < 0 || rl_layer_export(b->lfd, b->ufd, out, NULL, &b->ls, &err) < 0)
                        die("rl_layer_export", out < 0 ? NULL : &err);
                close(out);
                break;
        }
        }
        return now() - t0;
}

int main(int argc, char **argv)
{
        static const char *const names[M_N] = { "rl_tree_diff", "read-compare (C)",
                                                "diff -rq --no-dereference",
                                                "rl_layer_export (empty)" };
        if (argc != 5) {
                fprintf(stderr, "usage: diff-bench MNT ROOTFS RUNS LOOPDEV\n");
                return 2;
        }
        bench b = { .mnt = argv[1], .dev = argv[4] };
        const char *rootfs = argv[2];
        int runs = atoi(argv[3]);
        rl_error err = {};
        rl_tree_stats ts;

        if (runs < 1 || runs > 99)
                runs = 5;
        snprintf(b.lower, sizeof(b.lower), "%s/lower", b.mnt);
        snprintf(b.upper, sizeof(b.upper), "%s/upper", b.mnt);
        snprintf(b.layer, sizeof(b.layer), "%s/../layer.tar", b.mnt);
        int src = open_dir(rootfs), dst = open_dir(b.mnt);
        if (rl_tree_clone(src, dst, "lower", NULL, NULL, &err) < 0)
                die("copy the rootfs in", &err);
        close(src);
        int lfd = open_dir(b.lower);
        if (rl_tree_clone(lfd, dst, "upper", NULL, &ts, &err) < 0)
                die("clone lower", &err);
        close(lfd);
        close(dst);
        open_trees(&b);
        printf("tree: %lu entries, %lu regular files, %.1f MB of file data\n", ts.entries,
               ts.regular + ts.hardlinks, ts.bytes / 1e6);

        double t[2][M_N][99];
        for (int i = 0; i < runs; i++)
                for (int m = 0; m < M_N; m++)
                        t[0][m][i] = run_method(&b, m);
        for (int i = 0; i < runs; i++)
                for (int m = 0; m < M_EXPORT; m++) {
                        remount(&b);
                        t[1][m][i] = run_method(&b, m);
                }
        for (int c = 0; c < 2; c++)
                for (int m = 0; m < M_N; m++)
                        qsort(t[c][m], runs, sizeof(double), cmp_double);

        printf("unchanged reflink clone vs its parent, median of %d alternating runs\n", runs);
        printf("  %-26s %10s %10s  %s\n", "method", "warm ms", "cold ms", "what it did");
        for (int m = 0; m < M_N; m++) {
                char what[256], cold[32] = "-";
                if (m == M_DIFF)
                        snprintf(what, sizeof(what),
                                 "%lu changes, %lu entries, %lu files by extents, %lu read",
                                 b.changes, b.ds.entries, b.ds.by_extents, b.ds.files_read);
                else if (m == M_READ)
                        snprintf(what, sizeof(what), "%lu files, %.1f MB read, %lu differ",
                                 base_files, base_bytes / 1e6, base_differ);
                else if (m == M_GNU)
                        snprintf(what, sizeof(what), "exit %d (0: no difference)", b.gnu);
                else
                        snprintf(what, sizeof(what), "%lu entries, %lu bytes", b.ls.entries,
                                 b.ls.size);
                if (m != M_EXPORT)
                        snprintf(cold, sizeof(cold), "%.1f", t[1][m][runs / 2] * 1e3);
                printf("  %-26s %10.1f %10s  %s\n", names[m], t[0][m][runs / 2] * 1e3, cold,
                       what);
        }
        close(b.lfd);
        close(b.ufd);
        return 0;
}
