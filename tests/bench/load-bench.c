/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Load run against a running reflayerd (run by tests/bench/load.sh):
 *   load-bench SOCKET DAEMON-PID SECONDS LAYER-TAR
 * Makes a committed layer "base" of 300 files, then 64 client threads (one rl_client each)
 * issue mixed calls for SECONDS: Stat, List, Prepare from base, Commit, Remove, Usage,
 * Mounts, Diff and now and then Apply of LAYER-TAR. Each thread owns its keys and calls only
 * what must succeed, so every error is unexpected: each is counted and the first few
 * printed. Meanwhile the daemon's RSS (VmRSS) and open fds are sampled every 2 s.
 * Prints calls/s, Stat and Prepare latency percentiles, RSS and fds at start, end and max.
 * Exit status 1 on any failed call, or when fds grew (more open once every client has gone
 * than before any came) or RSS kept growing (the last quarter's samples above the second
 * quarter's maximum by more than 20%).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/client.h>

#include "bench.h"

#define CLIENTS 64
#define BASE_FILES 300
#define SAMPLE_EVERY_S 2

enum { OP_STAT, OP_LIST, OP_PREPARE, OP_COMMIT, OP_REMOVE, OP_USAGE, OP_MOUNTS, OP_DIFF,
       OP_APPLY, OP_MAX };
static const char *const op_names[] = { "Stat",  "List",   "Prepare", "Commit", "Remove",
                                        "Usage", "Mounts", "Diff",    "Apply" };

static const char *sock, *tar_path;
static double deadline;
static atomic_uint_fast64_t errors;

typedef struct lat {
        double *v; /* seconds */
        size_t n, cap;
} lat;

typedef struct client {
        int id;
        rl_client *c;
        uint64_t rnd;
        uint64_t calls[OP_MAX];
        lat stat, prepare;
        char active[64], committed[64]; /* keys it holds ("" none) */
        unsigned seq;
} client;

static void lat_add(lat *l, double s)
{
        if (l->n == l->cap) {
                l->cap = l->cap ? l->cap * 2 : 4096;
                l->v = realloc(l->v, l->cap * sizeof(*l->v));
                if (!l->v)
                        die("realloc", NULL);
        }
        l->v[l->n++] = s;
}

static uint64_t rnd(client *c)
{
        c->rnd ^= c->rnd << 13;
        c->rnd ^= c->rnd >> 7;
        c->rnd ^= c->rnd << 17;
        return c->rnd;
}

/* An error: counted; the first ten are printed with the call and key. */
static void fail(client *c, int op, const char *key, int r, const rl_error *err)
{
        if (atomic_fetch_add(&errors, 1) < 10)
                fprintf(stderr, "load-bench: client %d: %s '%s': %s (%s)\n", c->id, op_names[op],
                        key, err->msg, strerror(-r));
}

static int count_change(const rl_change *ch, void *userdata)
{
        (void)ch;
        (*(uint64_t *)userdata)++;
        return 0;
}

/* One call, chosen by what the client holds, so that each must succeed. */
static void step(client *c)
{
        rl_error err = {};
        int r = 0, op;
        unsigned dice = (unsigned)(rnd(c) % 100);
        const char *key = "base";

        if (!c->active[0] && (!c->committed[0] || dice < 50)) {
                rl_mount m = {};
                op = OP_PREPARE;
                snprintf(c->active, sizeof(c->active), "a%d-%u", c->id, ++c->seq);
                key = c->active;
                double t = now();
                r = rl_client_prepare(c->c, key, "base", NULL, 0, NULL, &m, &err);
                if (r >= 0)
                        lat_add(&c->prepare, now() - t);
                else
                        c->active[0] = '\0';
                rl_mount_clear(&m);
        } else if (dice < 40) {
                rl_info info = {};
                op = OP_STAT;
                key = dice < 30 || !c->active[0] ? "base" : c->active;
                double t = now();
                r = rl_client_stat(c->c, key, &info, &err);
                if (r >= 0) {
                        lat_add(&c->stat, now() - t);
                        if (!info.name || strcmp(info.name, key))
                                r = rl_error_set(&err, -EIO, "Stat answered for '%s'",
                                                 info.name ? info.name : "(null)");
                }
                rl_info_clear(&info);
        } else if (dice < 50) {
                rl_info *all = NULL;
                size_t n = 0;
                const char *f[] = { "kind==committed" };
                op = OP_LIST;
                key = "kind==committed";
                r = rl_client_list(c->c, f, 1, &all, &n, &err);
                if (r >= 0 && n < 1)
                        r = rl_error_set(&err, -EIO, "List found no committed snapshot");
                if (r >= 0)
                        rl_info_array_free(all, n);
        } else if (dice < 58) {
                rl_usage u = {};
                op = OP_USAGE;
                key = c->active[0] && dice < 54 ? c->active : "base";
                r = rl_client_usage(c->c, key, &u, &err);
        } else if (dice < 68) {
                rl_mount m = {};
                op = OP_MOUNTS;
                key = c->active[0] ? c->active : "base";
                r = rl_client_mounts(c->c, key, &m, &err);
                rl_mount_clear(&m);
        } else if (dice < 74) {
                uint64_t n = 0;
                op = OP_DIFF;
                key = c->active[0] ? c->active : c->committed;
                r = rl_client_diff(c->c, key, count_change, &n, NULL, &err);
        } else if (dice < 76 && c->active[0]) {
                op = OP_APPLY;
                key = c->active;
                int fd = open(tar_path, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        die(tar_path, NULL);
                r = rl_client_apply(c->c, key, fd, NULL, NULL, &err);
                close(fd);
        } else if (dice < 88 && c->active[0] && !c->committed[0]) {
                op = OP_COMMIT;
                snprintf(c->committed, sizeof(c->committed), "c%d-%u", c->id, c->seq);
                key = c->committed;
                r = rl_client_commit(c->c, key, c->active, NULL, 0, &err);
                if (r >= 0)
                        c->active[0] = '\0';
                else
                        c->committed[0] = '\0';
        } else {
                /* Remove what is held: the committed one first, else the active one. */
                op = OP_REMOVE;
                char *held = c->committed[0] ? c->committed : c->active;
                if (!held[0])
                        return;
                key = held;
                r = rl_client_remove(c->c, key, &err);
                if (r >= 0)
                        held[0] = '\0';
        }
        c->calls[op]++;
        if (r < 0)
                fail(c, op, key, r, &err);
}

static void *client_main(void *arg)
{
        client *c = arg;
        rl_error err = {};
        if (rl_client_connect(sock, &c->c, &err) < 0)
                die("connect", &err);
        while (now() < deadline)
                step(c);
        rl_client_free(c->c);
        c->c = NULL;
        return NULL;
}

typedef struct sample {
        double t;
        uint64_t rss_kb;
        unsigned fds;
} sample;

static sample take_sample(pid_t pid)
{
        char p[64], line[256];
        sample s = { .t = now() };
        snprintf(p, sizeof(p), "/proc/%d/status", (int)pid);
        FILE *f = fopen(p, "re");
        if (!f)
                die(p, NULL);
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %" SCNu64, &s.rss_kb) == 1)
                        break;
        fclose(f);
        snprintf(p, sizeof(p), "/proc/%d/fd", (int)pid);
        DIR *d = opendir(p);
        if (!d)
                die(p, NULL);
        for (struct dirent *e; (e = readdir(d));)
                s.fds += e->d_name[0] != '.';
        closedir(d);
        return s;
}

/* The daemon's open fds as "N -> target" lines, to name what leaked. */
static char *fd_list(pid_t pid)
{
        char p[64], link[512], target[512];
        size_t cap = 65536, len = 0;
        char *out = calloc(1, cap);
        if (!out)
                die("calloc", NULL);
        snprintf(p, sizeof(p), "/proc/%d/fd", (int)pid);
        DIR *d = opendir(p);
        if (!d)
                die(p, NULL);
        for (struct dirent *e; (e = readdir(d));) {
                if (e->d_name[0] == '.')
                        continue;
                snprintf(link, sizeof(link), "%s/%s", p, e->d_name);
                ssize_t n = readlink(link, target, sizeof(target) - 1);
                target[n < 0 ? 0 : n] = '\0';
                if (len + strlen(target) + 32 < cap)
                        len += (size_t)snprintf(out + len, cap - len, "  %s -> %s\n", e->d_name,
                                                target);
        }
        closedir(d);
        return out;
}

static int cmp_d(const void *a, const void *b)
{
        return cmp_double(a, b);
}

/* All clients' latencies of one kind, sorted; prints n, p50, p99, max in ms. */
static void report_latency(const char *name, client *cl, size_t off)
{
        size_t n = 0;
        for (int i = 0; i < CLIENTS; i++)
                n += ((lat *)((char *)&cl[i] + off))->n;
        double *all = malloc((n ? n : 1) * sizeof(*all));
        if (!all)
                die("malloc", NULL);
        n = 0;
        for (int i = 0; i < CLIENTS; i++) {
                lat *l = (lat *)((char *)&cl[i] + off);
                memcpy(all + n, l->v, l->n * sizeof(*all));
                n += l->n;
        }
        qsort(all, n, sizeof(*all), cmp_d);
        if (n)
                printf("%-8s %9zu calls   p50 %8.3f ms   p99 %8.3f ms   max %8.3f ms\n", name, n,
                       all[n / 2] * 1e3, all[(size_t)((double)n * 0.99)] * 1e3,
                       all[n - 1] * 1e3);
        else
                printf("%-8s no calls\n", name);
        free(all);
}

/* The committed layer every client prepares from: BASE_FILES files in 10 directories. */
static void make_base(void)
{
        rl_client *c = NULL;
        rl_error err = {};
        rl_mount m = {};
        char p[4096];
        if (rl_client_connect(sock, &c, &err) < 0)
                die("connect", &err);
        if (rl_client_prepare(c, "base-build", NULL, NULL, 0, NULL, &m, &err) < 0)
                die("prepare base", &err);
        for (int i = 0; i < BASE_FILES; i++) {
                snprintf(p, sizeof(p), "%s/d%d", m.source, i % 10);
                if (mkdir(p, 0755) < 0 && errno != EEXIST)
                        die(p, NULL);
                snprintf(p, sizeof(p), "%s/d%d/f%d", m.source, i % 10, i);
                FILE *f = fopen(p, "we");
                if (!f)
                        die(p, NULL);
                for (int j = 0; j < 64 * (i % 16 + 1); j++)
                        fprintf(f, "file %d line %d\n", i, j);
                if (fclose(f) != 0)
                        die(p, NULL);
        }
        rl_mount_clear(&m);
        if (rl_client_commit(c, "base", "base-build", NULL, 0, &err) < 0)
                die("commit base", &err);
        rl_client_free(c);
}

int main(int argc, char **argv)
{
        if (argc != 5) {
                fprintf(stderr, "usage: load-bench SOCKET DAEMON-PID SECONDS LAYER-TAR\n");
                return 2;
        }
        sock = argv[1];
        pid_t pid = (pid_t)atoi(argv[2]);
        double secs = atof(argv[3]);
        tar_path = argv[4];

        make_base();
        static client cl[CLIENTS];
        static sample samples[100000];
        size_t n_samples = 0;
        samples[n_samples++] = take_sample(pid);
        char *fds_before = fd_list(pid);
        double t0 = now();
        deadline = t0 + secs;
        pthread_t th[CLIENTS];
        for (int i = 0; i < CLIENTS; i++) {
                cl[i].id = i;
                cl[i].rnd = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1);
                if (pthread_create(&th[i], NULL, client_main, &cl[i]) != 0)
                        die("pthread_create", NULL);
        }
        while (now() < deadline) {
                double left = deadline - now();
                double nap = left < SAMPLE_EVERY_S ? left : SAMPLE_EVERY_S;
                if (nap > 0)
                        nanosleep(&(struct timespec){ (time_t)nap,
                                                      (long)((nap - (time_t)nap) * 1e9) },
                                  NULL);
                if (n_samples < sizeof(samples) / sizeof(samples[0]))
                        samples[n_samples++] = take_sample(pid);
        }
        for (int i = 0; i < CLIENTS; i++)
                pthread_join(th[i], NULL);
        double elapsed = now() - t0;

        /* Once every client has gone, the daemon closes their connections, and its
         * background work (deleting removed trees, filling the warm pool, at idle priority)
         * settles: Cleanup waits for the deletions, then wait (bounded) for the rest. */
        rl_client *c = NULL;
        rl_error err = {};
        if (rl_client_connect(sock, &c, &err) < 0 || rl_client_cleanup(c, &err) < 0)
                die("cleanup", &err);
        rl_client_free(c);
        double settle = now();
        sample end = take_sample(pid);
        while (now() - settle < 60 && end.fds > samples[0].fds) {
                nanosleep(&(struct timespec){ 0, 100000000 }, NULL);
                end = take_sample(pid);
        }
        settle = now() - settle;

        uint64_t total = 0, by_op[OP_MAX] = {};
        for (int i = 0; i < CLIENTS; i++)
                for (int op = 0; op < OP_MAX; op++) {
                        by_op[op] += cl[i].calls[op];
                        total += cl[i].calls[op];
                }
        printf("%d clients for %.0f s: %" PRIu64 " calls, %.0f calls/s, %" PRIu64
               " unexpected errors\n",
               CLIENTS, elapsed, total, (double)total / elapsed, (uint64_t)atomic_load(&errors));
        for (int op = 0; op < OP_MAX; op++)
                printf("%s%s %" PRIu64, op ? ", " : "  ", op_names[op], by_op[op]);
        printf("\n");
        report_latency("Stat", cl, offsetof(client, stat));
        report_latency("Prepare", cl, offsetof(client, prepare));

        sample max = samples[0];
        for (size_t i = 0; i < n_samples; i++) {
                if (samples[i].rss_kb > max.rss_kb)
                        max.rss_kb = samples[i].rss_kb;
                if (samples[i].fds > max.fds)
                        max.fds = samples[i].fds;
        }
        printf("reflayerd RSS: start %.1f MiB, end %.1f MiB, max %.1f MiB (%zu samples)\n",
               samples[0].rss_kb / 1024.0, end.rss_kb / 1024.0, max.rss_kb / 1024.0, n_samples);
        printf("reflayerd fds: start %u, end %u (clients gone, settled in %.1f s), max %u\n",
               samples[0].fds, end.fds, settle, max.fds);

        /* Growth: the last quarter against the second (the first is warm-up: thread arenas,
         * the pool, caches). */
        uint64_t q2 = 0, q4 = 0;
        for (size_t i = n_samples / 4; i < n_samples / 2; i++)
                q2 = samples[i].rss_kb > q2 ? samples[i].rss_kb : q2;
        for (size_t i = 3 * n_samples / 4; i < n_samples; i++)
                q4 = samples[i].rss_kb > q4 ? samples[i].rss_kb : q4;
        bool rss_grew = n_samples >= 8 && q4 > q2 + q2 / 5;
        bool fds_grew = end.fds > samples[0].fds;
        if (rss_grew)
                printf("RSS GREW: second quarter max %.1f MiB, last quarter max %.1f MiB\n",
                       q2 / 1024.0, q4 / 1024.0);
        if (fds_grew) {
                char *after = fd_list(pid);
                printf("FDS GREW: %u open before the clients, %u after\nbefore:\n%safter:\n%s",
                       samples[0].fds, end.fds, fds_before, after);
                free(after);
        }
        free(fds_before);
        for (int i = 0; i < CLIENTS; i++) {
                free(cl[i].stat.v);
                free(cl[i].prepare.v);
        }
        return atomic_load(&errors) || rss_grew || fds_grew ? 1 : 0;
}
