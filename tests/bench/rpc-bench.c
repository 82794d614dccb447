/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * RPC benchmark against a running reflayerd (run by tests/bench/rpc.sh):
 *   rpc-bench SOCKET KEY SECONDS
 *       Stat KEY for SECONDS over 1 connection (sequential), then over 16 connections (one
 *       thread and rl_client each): requests/s and p50/p99 latency of each.
 *   rpc-bench SOCKET --during-prepare PARENT KEY
 *       Prepare KEY from PARENT on one connection while another Stats PARENT until the
 *       Prepare returns: how many Stats were answered meanwhile, their latency, the Prepare's.
 * Output: one "name key=value ..." line per measurement. Every call is checked; any failed
 * call is counted, reported on stderr, and makes the exit status 1.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <reflayer/client.h>

#define NCONN 16

static const char *sock;

static int64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct run {
        rl_client *c;
        const char *key;
        int64_t dur_ns;       /* how long to go on (Stat runs) */
        atomic_bool *stop;    /* or until this is set (during a Prepare) */
        int64_t *lat;         /* latencies of the calls that succeeded, ns */
        size_t n, cap;
        uint64_t fails;
        int64_t elapsed_ns;
        rl_error err;         /* the first failure */
} run;

static void record(run *r, int64_t ns)
{
        if (r->n == r->cap) {
                r->cap = r->cap ? r->cap * 2 : 65536;
                r->lat = realloc(r->lat, r->cap * sizeof *r->lat);
                if (!r->lat) {
                        perror("rpc-bench: realloc");
                        exit(1);
                }
        }
        r->lat[r->n++] = ns;
}

static void *stat_loop(void *arg)
{
        run *r = arg;
        int64_t t0 = now_ns(), t;
        do {
                rl_info info = {0};
                rl_error err = {0};
                int64_t a = now_ns();
                int k = rl_client_stat(r->c, r->key, &info, &err);
                t = now_ns();
                if (k < 0 || !info.name || strcmp(info.name, r->key) != 0) {
                        if (r->fails++ == 0)
                                r->err = k < 0 ? err : (rl_error){EIO, "Stat answered another key"};
                } else
                        record(r, t - a);
                rl_info_clear(&info);
        } while (r->stop ? !atomic_load(r->stop) : t - t0 < r->dur_ns);
        r->elapsed_ns = t - t0;
        return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
        return x < y ? -1 : x > y;
}

/* Nearest rank, in microseconds; 0 for no samples. */
static double pct(const int64_t *v, size_t n, double p)
{
        if (n == 0)
                return 0;
        size_t i = (size_t)(p / 100 * n + 0.999999);
        return v[(i ? i : 1) - 1] / 1e3;
}

static void connect_or_die(rl_client **c)
{
        rl_error err = {0};
        if (rl_client_connect(sock, c, &err) < 0) {
                fprintf(stderr, "rpc-bench: connect %s: %s\n", sock, err.msg);
                exit(1);
        }
}

static void report_fail(const char *what, const run *r)
{
        if (r->fails)
                fprintf(stderr, "rpc-bench: %s: %llu failed calls, first: %s\n", what,
                        (unsigned long long)r->fails, r->err.msg);
}

/* Stat over nconn connections at once; merges into one line. Returns the failures. */
static uint64_t stat_bench(const char *name, const char *key, double secs, int nconn)
{
        run rs[NCONN] = {0};
        pthread_t th[NCONN];
        run all = {0};
        for (int i = 0; i < nconn; i++) {
                connect_or_die(&rs[i].c);
                rs[i].key = key;
                rs[i].dur_ns = (int64_t)(secs * 1e9);
        }
        int64_t t0 = now_ns();
        for (int i = 0; i < nconn; i++)
                if (pthread_create(&th[i], NULL, stat_loop, &rs[i]) != 0) {
                        perror("rpc-bench: pthread_create");
                        exit(1);
                }
        for (int i = 0; i < nconn; i++) {
                pthread_join(th[i], NULL);
                for (size_t j = 0; j < rs[i].n; j++)
                        record(&all, rs[i].lat[j]);
                all.fails += rs[i].fails;
                if (rs[i].fails && !all.err.code)
                        all.err = rs[i].err;
                free(rs[i].lat);
                rl_client_free(rs[i].c);
        }
        double wall = (now_ns() - t0) / 1e9;
        qsort(all.lat, all.n, sizeof *all.lat, cmp_i64);
        printf("%s conns=%d ok=%zu fail=%llu secs=%.2f rps=%.0f p50_us=%.1f p99_us=%.1f\n", name,
               nconn, all.n, (unsigned long long)all.fails, wall, all.n / wall,
               pct(all.lat, all.n, 50), pct(all.lat, all.n, 99));
        report_fail(name, &all);
        free(all.lat);
        return all.fails;
}

typedef struct prep {
        rl_client *c;
        const char *parent, *key;
        atomic_bool done;
        int r;
        int64_t ns;
        rl_error err;
} prep;

static void *prepare_thread(void *arg)
{
        prep *p = arg;
        rl_mount m = {0};
        int64_t a = now_ns();
        p->r = rl_client_prepare(p->c, p->key, p->parent, NULL, 0, NULL, &m, &p->err);
        p->ns = now_ns() - a;
        if (p->r >= 0 && (!m.source || m.source[0] != '/')) {
                p->r = -EIO;
                snprintf(p->err.msg, sizeof p->err.msg, "Prepare returned no mount source");
        }
        rl_mount_clear(&m);
        atomic_store(&p->done, true);
        return NULL;
}

static int during_prepare(const char *parent, const char *key)
{
        prep p = {.parent = parent, .key = key};
        run r = {.key = parent, .stop = &p.done};
        pthread_t th;
        connect_or_die(&p.c);
        connect_or_die(&r.c);
        if (pthread_create(&th, NULL, prepare_thread, &p) != 0) {
                perror("rpc-bench: pthread_create");
                return 1;
        }
        stat_loop(&r);
        pthread_join(th, NULL);
        qsort(r.lat, r.n, sizeof *r.lat, cmp_i64);
        printf("during-prepare ok=%zu fail=%llu prepare_s=%.3f p50_us=%.1f p99_us=%.1f "
               "max_us=%.1f\n", r.n, (unsigned long long)r.fails, p.ns / 1e9,
               pct(r.lat, r.n, 50), pct(r.lat, r.n, 99), pct(r.lat, r.n, 100));
        report_fail("during-prepare: Stat", &r);
        if (p.r < 0)
                fprintf(stderr, "rpc-bench: Prepare %s from %s: %s\n", key, parent, p.err.msg);
        free(r.lat);
        rl_client_free(r.c);
        rl_client_free(p.c);
        return p.r < 0 || r.fails ? 1 : 0;
}

int main(int argc, char **argv)
{
        if (argc == 5 && strcmp(argv[2], "--during-prepare") == 0) {
                sock = argv[1];
                return during_prepare(argv[3], argv[4]);
        }
        double secs = argc == 4 ? strtod(argv[3], NULL) : 0;
        if (argc != 4 || !(secs > 0)) {
                fprintf(stderr, "Usage: rpc-bench SOCKET KEY SECONDS\n"
                                "       rpc-bench SOCKET --during-prepare PARENT KEY\n");
                return 2;
        }
        sock = argv[1];
        uint64_t fails = stat_bench("stat-1", argv[2], secs, 1);
        fails += stat_bench("stat-16", argv[2], secs, NCONN);
        return fails ? 1 : 0;
}
