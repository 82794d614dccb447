/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * pool.c owns the warm pool: which parents are pooled, the ready clones in ROOT/pool, and
 * the builder thread that keeps them topped up. A ready clone is a snapshot directory but
 * for its record: pool/cN/fs, the tree, and pool/cN/info.json, a placeholder the record is
 * later written into in place (meta.h); all of it synced when built, so that taking one is a
 * rename and publishing it costs one flush, the store's journal entry (store.c). Names in
 * pool/ never repeat within a process; what a previous process left is thrown away at start
 * (it may be of parents since removed), after the store's journal replayed what it needs.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/tree.h>

#include "meta.h"
#include "pool.h"
#include "util.h"

typedef struct pooled {
        uint64_t parent;
        char *key; /* the id maps, as text: "" for none */
        rl_idmap *uids, *gids;
        bool keep_unmapped;
        unsigned prepares; /* counted toward `after` */
        unsigned want;     /* ready clones to keep */
        bool building, forgotten, failed;
        uint64_t *ready; /* names in pool/: "c<N>" */
        size_t n_ready, cap_ready;
        struct pooled *next;
} pooled;

struct rl_pool {
        int root_fd, snaps_fd, trash_fd, pool_fd;
        rl_pool_config cfg;
        void (*kick_trash)(void *);
        void *kick_userdata;

        pthread_mutex_t lock;
        pthread_cond_t wake;
        pooled *list;
        uint64_t seq; /* names of clones */
        rl_pool_stats stats;
        atomic_bool stop;
        pthread_t thread;
        bool started;
};

/* The maps as a key: equal maps, equal keys. */
static char *key_of(const rl_prepare_options *o)
{
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);
        if (!f)
                return NULL;
        uint32_t c, h, l;
        for (size_t i = 0; o && rl_idmap_range(o->uid_map, i, &c, &h, &l) == 0; i++)
                fprintf(f, "u%" PRIu32 ":%" PRIu32 ":%" PRIu32 ",", c, h, l);
        for (size_t i = 0; o && rl_idmap_range(o->gid_map, i, &c, &h, &l) == 0; i++)
                fprintf(f, "g%" PRIu32 ":%" PRIu32 ":%" PRIu32 ",", c, h, l);
        if (o && o->keep_unmapped)
                fputs("k", f);
        if (fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

static int copy_map(const rl_idmap *from, rl_idmap **ret)
{
        *ret = NULL;
        if (!from)
                return 0;
        int r = rl_idmap_new(ret, NULL);
        uint32_t c, h, l;
        for (size_t i = 0; r == 0 && rl_idmap_range(from, i, &c, &h, &l) == 0; i++)
                r = rl_idmap_add(*ret, c, h, l, NULL);
        if (r < 0)
                *ret = rl_idmap_free(*ret);
        return r;
}

static pooled *find(rl_pool *p, uint64_t parent, const char *key)
{
        for (pooled *e = p->list; e; e = e->next)
                if (e->parent == parent && !e->forgotten && strcmp(e->key, key) == 0)
                        return e;
        return NULL;
}

static void name_of(char buf[RL_POOL_NAME_MAX], uint64_t n)
{
        snprintf(buf, RL_POOL_NAME_MAX, "c%" PRIu64, n);
}

/* Under the lock: a ready or unwanted clone goes to the trash. */
static void discard(rl_pool *p, uint64_t n)
{
        char name[32], trash[48];
        name_of(name, n);
        /* The clock, not the pid: a daemon that is pid 1 in a container has the same one in
         * every run, and a name a previous run left in the trash (its deletion cut short)
         * would make this rename fail. */
        snprintf(trash, sizeof(trash), "pool-%" PRIu64 "-%s", rl_now_ns(), name);
        if (renameat(p->pool_fd, name, p->trash_fd, trash) == 0)
                p->stats.dropped++;
}

static void entry_free(pooled *e)
{
        free(e->key);
        rl_idmap_free(e->uids);
        rl_idmap_free(e->gids);
        free(e->ready);
        free(e);
}

/* Memory pressure (PSI): tasks stalled on memory more than 10% of the last 10 s. Spare
 * trees cost page cache and inode cache while they are built. No PSI: no pressure. */
static bool memory_pressure(void)
{
        char buf[256];
        _cleanup_close_ int fd = open("/proc/pressure/memory", O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
        if (n <= 0)
                return false;
        buf[n] = '\0';
        const char *avg = strstr(buf, "some avg10=");
        return avg && strtod(avg + strlen("some avg10="), NULL) > 10.0;
}

/* Too little room for spare trees? Free space and free inodes both count, and memory. */
static bool under_pressure(rl_pool *p)
{
        struct statvfs v;
        unsigned min = p->cfg.min_free_percent ? p->cfg.min_free_percent : 10;
        if (fstatvfs(p->pool_fd, &v) < 0)
                return true;
        return (v.f_blocks && v.f_bavail * 100 < v.f_blocks * min) ||
               (v.f_files && v.f_favail * 100 < v.f_files * min) || memory_pressure();
}

/* Under the lock: the next clone to build, or NULL. */
static pooled *next_work(rl_pool *p)
{
        for (pooled *e = p->list; e; e = e->next)
                if (!e->forgotten && !e->failed && !e->building && e->n_ready < e->want)
                        return e;
        return NULL;
}

static void drop_all(rl_pool *p)
{
        for (pooled *e = p->list; e; e = e->next) {
                for (size_t i = 0; i < e->n_ready; i++)
                        discard(p, e->ready[i]);
                e->n_ready = 0;
        }
}

/*
 * Build pool/tmp-cN (the placeholder record, then the tree as fs/) and rename it to pool/cN.
 * Everything a Prepare can do ahead of time is done here, at idle priority, and made durable
 * here: the clone's syncfs also writes the placeholder's block, and the fsyncs of tmp-cN and
 * pool/ make the names durable. What is left for the Prepare is its own record and its own
 * rename (store.c, build_and_publish).
 */
static int build(rl_pool *p, pooled *e, uint64_t n)
{
        char src[48], name[32], tmp[40];
        bool sync = !p->cfg.no_sync;
        int r;

        snprintf(src, sizeof(src), "%" PRIu64 "/fs", e->parent);
        name_of(name, n);
        snprintf(tmp, sizeof(tmp), "tmp-%s", name);
        _cleanup_close_ int fd = rl_openat_beneath(p->snaps_fd, src, O_RDONLY | O_DIRECTORY, 0);
        if (fd < 0)
                return fd; /* removed meanwhile */
        if (mkdirat(p->pool_fd, tmp, 0700) < 0)
                return -errno;
        _cleanup_close_ int dir = openat(p->pool_fd, tmp,
                                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        r = dir < 0 ? -errno : rl_meta_reserve(dir, NULL);
        if (r == 0) {
                rl_tree_options o = {
                        .jobs = 1, /* a background job: one worker, at the lowest priority */
                        /* Its syncfs, and its fsync of tmp-cN, cover the placeholder too. */
                        .flags = (sync ? RL_TREE_SYNC : 0) | RL_TREE_SUBVOLUME |
                                 (e->keep_unmapped ? RL_TREE_KEEP_UNMAPPED : 0),
                        .uid_map = e->uids,
                        .gid_map = e->gids,
                        .cancel = &p->stop,
                };
                r = rl_tree_clone(fd, dir, "fs", &o, NULL, NULL);
        }
        if (r == 0 && renameat(p->pool_fd, tmp, p->pool_fd, name) < 0)
                r = -errno;
        if (r < 0) {
                rl_tree_remove(p->pool_fd, tmp, 1, NULL, NULL);
                return r;
        }
        /* The name must be durable before the clone is handed out: a Prepare that takes it
         * publishes it without flushing that rename, and the store's journal finds the tree
         * here again after a crash (store.c, replay_entry). */
        if (sync && fsync(p->pool_fd) < 0) {
                r = -errno;
                rl_tree_remove(p->pool_fd, name, 1, NULL, NULL);
                return r;
        }
        return 0;
}

static void *builder_main(void *arg)
{
        rl_pool *p = arg;
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
        (void)syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0,
                      3 << 13 /* IOPRIO_CLASS_IDLE */);

        pthread_mutex_lock(&p->lock);
        while (!atomic_load(&p->stop)) {
                pooled *e = next_work(p);
                if (!e) {
                        pthread_cond_wait(&p->wake, &p->lock);
                        continue;
                }
                /* Looked at without the lock: this thread runs at the lowest priority, and
                 * a Prepare or Remove waiting for the lock would wait for it to be scheduled
                 * again. e may be gone meanwhile (forgotten): asked for again after. */
                pthread_mutex_unlock(&p->lock);
                bool pressure = under_pressure(p);
                pthread_mutex_lock(&p->lock);
                if (atomic_load(&p->stop))
                        break; /* its wake-up came while the lock was not held */
                if (!pressure && !(e = next_work(p)))
                        continue;
                if (pressure) {
                        drop_all(p);
                        p->kick_trash(p->kick_userdata);
                        struct timespec until;
                        clock_gettime(CLOCK_REALTIME, &until);
                        until.tv_sec += 5;
                        pthread_cond_timedwait(&p->wake, &p->lock, &until);
                        continue;
                }
                uint64_t n = p->seq++;
                e->building = true;
                p->stats.building = 1;
                pthread_mutex_unlock(&p->lock);

                int r = build(p, e, n);

                pthread_mutex_lock(&p->lock);
                e->building = false;
                p->stats.building = 0;
                if (e->forgotten) {
                        /* Its parent was removed meanwhile: the clone and the entry go. */
                        if (r == 0)
                                discard(p, n);
                        for (pooled **pp = &p->list; *pp; pp = &(*pp)->next)
                                if (*pp == e) {
                                        *pp = e->next;
                                        break;
                                }
                        entry_free(e);
                        p->kick_trash(p->kick_userdata);
                        continue;
                }
                if (r < 0) {
                        /* Parent gone, or it cannot be cloned with these maps: stop trying. */
                        e->failed = true;
                        continue;
                }
                p->stats.built++;
                if (e->n_ready >= e->want) {
                        discard(p, n);
                        p->kick_trash(p->kick_userdata);
                        continue;
                }
                if (e->n_ready == e->cap_ready) {
                        size_t cap = e->cap_ready ? e->cap_ready * 2 : 4;
                        uint64_t *nr = realloc(e->ready, cap * sizeof(*nr));
                        if (!nr) {
                                discard(p, n);
                                continue;
                        }
                        e->ready = nr;
                        e->cap_ready = cap;
                }
                e->ready[e->n_ready++] = n;
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

int rl_pool_start(int root_fd, int snaps_fd, int trash_fd, const rl_pool_config *cfg,
                  void (*kick_trash)(void *userdata), void *userdata, rl_pool **ret,
                  rl_error *err)
{
        rl_pool *p = calloc(1, sizeof(*p));
        if (!p)
                return rl_error_set(err, -ENOMEM, "pool");
        *p = (rl_pool){ .root_fd = root_fd, .snaps_fd = snaps_fd, .trash_fd = trash_fd,
                        .pool_fd = -EBADF, .cfg = *cfg, .kick_trash = kick_trash,
                        .kick_userdata = userdata };
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->wake, NULL);
        int r = 0;
        if (mkdirat(root_fd, RL_POOL_DIR, 0700) < 0 && errno != EEXIST)
                r = rl_error_set(err, -errno, "pool: create pool/");
        else if ((p->pool_fd = openat(root_fd, RL_POOL_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
                                                                O_CLOEXEC)) < 0)
                r = rl_error_set(err, -errno, "pool: open pool/");
        if (r == 0 && pthread_create(&p->thread, NULL, builder_main, p) != 0)
                r = rl_error_set(err, -EAGAIN, "pool: start the builder");
        if (r < 0) {
                closep(&p->pool_fd);
                free(p);
                return r;
        }
        p->started = true;
        *ret = p;
        return 0;
}

void rl_pool_stop(rl_pool *p)
{
        if (!p)
                return;
        pthread_mutex_lock(&p->lock);
        atomic_store(&p->stop, true);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        if (p->started)
                pthread_join(p->thread, NULL);
        for (pooled *e = p->list, *next; e; e = next) {
                next = e->next;
                entry_free(e);
        }
        closep(&p->pool_fd);
        pthread_mutex_destroy(&p->lock);
        pthread_cond_destroy(&p->wake);
        free(p);
}

int rl_pool_take(rl_pool *p, uint64_t parent, const rl_prepare_options *popts, int dir_fd,
                 const char *name, char taken[RL_POOL_NAME_MAX])
{
        _cleanup_free_ char *key = key_of(popts);
        if (!key)
                return -ENOMEM;
        pthread_mutex_lock(&p->lock);
        pooled *e = find(p, parent, key);
        int r = -ENOENT;
        if (e && e->n_ready > 0) {
                uint64_t n = e->ready[--e->n_ready];
                name_of(taken, n);
                /* A rename within one filesystem: the lock is held for microseconds. */
                r = renameat(p->pool_fd, taken, dir_fd, name) < 0 ? -errno : 0;
                if (r < 0)
                        discard(p, n);
        }
        if (e && r == 0)
                p->stats.hits++;
        else if (e)
                p->stats.misses++;
        /* The builder is not woken here, though a clone is missing now: a refill started
         * at once would fill the filesystem's log while this Prepare publishes, and its
         * flush would wait for the refill's metadata too (measured: 5-25 ms instead of 1,
         * when that was an fsync of snapshots/). rl_pool_note,
         * called once the snapshot is published, wakes it. */
        pthread_mutex_unlock(&p->lock);
        return r;
}

void rl_pool_note(rl_pool *p, uint64_t parent, const rl_prepare_options *popts,
                  unsigned labelled)
{
        char *key = key_of(popts);
        if (!key)
                return;
        pthread_mutex_lock(&p->lock);
        pooled *e = find(p, parent, key);
        if (!e && (e = calloc(1, sizeof(*e)))) {
                e->parent = parent;
                e->key = key;
                key = NULL;
                e->keep_unmapped = popts && popts->keep_unmapped;
                if (copy_map(popts ? popts->uid_map : NULL, &e->uids) < 0 ||
                    copy_map(popts ? popts->gid_map : NULL, &e->gids) < 0) {
                        entry_free(e);
                        e = NULL;
                } else {
                        e->next = p->list;
                        p->list = e;
                }
        }
        if (e) {
                e->prepares++;
                unsigned want = labelled ? labelled
                                : p->cfg.after && e->prepares >= p->cfg.after ? p->cfg.size
                                                                               : 0;
                if (want > e->want)
                        e->want = want;
                pthread_cond_broadcast(&p->wake);
        }
        pthread_mutex_unlock(&p->lock);
        free(key);
}

void rl_pool_forget(rl_pool *p, uint64_t parent)
{
        bool kick = false;
        pthread_mutex_lock(&p->lock);
        for (pooled **pp = &p->list; *pp;) {
                pooled *e = *pp;
                if (e->parent != parent) {
                        pp = &e->next;
                        continue;
                }
                for (size_t i = 0; i < e->n_ready; i++)
                        discard(p, e->ready[i]);
                kick = kick || e->n_ready;
                e->n_ready = 0;
                if (e->building) {
                        e->forgotten = true; /* the builder throws its clone away */
                        pp = &e->next;
                } else {
                        *pp = e->next;
                        entry_free(e);
                }
        }
        pthread_mutex_unlock(&p->lock);
        if (kick)
                p->kick_trash(p->kick_userdata);
}

void rl_pool_get_stats(rl_pool *p, rl_pool_stats *ret)
{
        pthread_mutex_lock(&p->lock);
        *ret = p->stats;
        ret->ready = 0;
        ret->pooled = 0;
        for (pooled *e = p->list; e; e = e->next) {
                ret->ready += e->n_ready;
                ret->pooled += e->want > 0 && !e->forgotten;
        }
        pthread_mutex_unlock(&p->lock);
}
