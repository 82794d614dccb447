/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * store.c owns the snapshot store: layout, lock, index, the snapshot lifecycle with
 * containerd's rules, crash-safe publishing, id allocation and the background trash.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/layer.h>
#include <reflayer/store.h>
#include <reflayer/tree.h>

#include "filter.h"
#include "journal.h"
#include "meta.h"
#include "pool.h"
#include "subvol.h"
#include "util.h"

#define NEXT_ID_FILE "next-id"
#define JOURNAL_FILE "journal"
/* Journalled publishes settled at a time (journal_settle): each costs the settle one
 * fdatasync, and the journal holds about five hundred. */
#define SETTLE_BATCH 64
/* Removals remembered until snapshots/ is next flushed (see removed_keys). */
#define REMOVED_MAX 4096
#define ID_BLOCK 1024 /* ids reserved on disk at a time, so none is ever handed out twice */

typedef struct snap snap;
struct snap {
        uint64_t id;
        rl_kind kind;
        char *name;
        snap *parent;
        json_t *labels;
        int64_t created_ns, updated_ns;
        unsigned children; /* published snapshots whose parent this is */
        unsigned pins;     /* prepares, views and usage reading this tree right now */
        bool pending;      /* being built: holds its key, invisible otherwise */
        bool busy;         /* a commit, update or remove is writing it: others wait */
        bool ephemeral;    /* lives in ephemeral/BOOT/, not snapshots/; changes only when busy */
        snap *hnext;
};

struct rl_store {
        char *root;
        int root_fd, snaps_fd, tmp_fd, trash_fd, lock_fd;
        int eph_fd;        /* ephemeral/BOOT/: this boot's ephemeral snapshots */
        char eph_dir[64];  /* "ephemeral/BOOT", for messages and mount sources */
        rl_store_options opts;

        /* Lock order: lock, then trash_lock. */
        pthread_mutex_t lock; /* the index, ids, closed */
        pthread_cond_t idle;  /* a snapshot stopped being busy or pending */
        snap **buckets;
        size_t n_buckets, count;
        uint64_t next_id, id_limit;
        unsigned calls; /* public calls in flight: close waits for none to be left */
        bool closed;

        pthread_mutex_t trash_lock;
        pthread_cond_t trash_wake, trash_done_cond;
        uint64_t trash_requested, trash_done;
        bool trash_stop, trash_thread_started;
        atomic_bool trash_cancel;
        int trash_r;
        rl_error trash_err;
        pthread_t trash_thread;

        rl_pool *pool; /* NULL: no warm pool */

        /* Lock order: lock, then publish_lock. Held from a journalled publish's entry to
         * its rename, so that a journal mark covers whole publishes only. */
        pthread_mutex_t publish_lock;
        rl_journal *journal;  /* NULL: every publish flushes its own way */
        uint64_t *unsettled;  /* ids published through the journal, not settled yet */
        size_t n_unsettled, cap_unsettled;
        /* Hashes of the keys of snapshots (durable or ephemeral) removed since snapshots/
         * was last flushed: a journalled publish of one of these keys would not flush that removal,
         * and a crash could then leave two snapshots of one key. Under removed_lock (lock
         * order: lock, then removed_lock), apart from publish_lock, which a flush holds. */
        pthread_mutex_t removed_lock;
        size_t *removed_keys;
        size_t n_removed, cap_removed;
        uint64_t removals;     /* counted, to tell whether any came during a settle */
        bool removed_overflow; /* more than REMOVED_MAX, or no memory: every key counts */
        bool settle_failed; /* the entries wait for the next open's replay */
        bool journal_full;  /* a publish found no room: settle whatever the batch */
};

static int64_t now_realtime(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* --- the index ------------------------------------------------------------------------- */

static size_t hash_name(const char *s)
{
        size_t h = 14695981039346656037ULL;
        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 1099511628211ULL;
        return h;
}

static snap *find(const rl_store *s, const char *name)
{
        if (!s->n_buckets)
                return NULL;
        for (snap *p = s->buckets[hash_name(name) & (s->n_buckets - 1)]; p; p = p->hnext)
                if (strcmp(p->name, name) == 0)
                        return p;
        return NULL;
}

static int insert(rl_store *s, snap *n)
{
        if (s->count >= s->n_buckets) {
                size_t nb = s->n_buckets ? s->n_buckets * 2 : 256;
                snap **b = calloc(nb, sizeof(*b));
                if (!b)
                        return -ENOMEM;
                for (size_t i = 0; i < s->n_buckets; i++)
                        for (snap *p = s->buckets[i], *next; p; p = next) {
                                next = p->hnext;
                                size_t h = hash_name(p->name) & (nb - 1);
                                p->hnext = b[h];
                                b[h] = p;
                        }
                free(s->buckets);
                s->buckets = b;
                s->n_buckets = nb;
        }
        size_t h = hash_name(n->name) & (s->n_buckets - 1);
        n->hnext = s->buckets[h];
        s->buckets[h] = n;
        s->count++;
        return 0;
}

static void unlink_snap(rl_store *s, snap *n)
{
        for (snap **pp = &s->buckets[hash_name(n->name) & (s->n_buckets - 1)]; *pp;
             pp = &(*pp)->hnext)
                if (*pp == n) {
                        *pp = n->hnext;
                        s->count--;
                        return;
                }
}

static void snap_free(snap *n)
{
        if (!n)
                return;
        free(n->name);
        json_decref(n->labels);
        free(n);
}

/* Under s->lock: the visible snapshot called key, waiting while a change to it is written. */
static snap *find_idle(rl_store *s, const char *key)
{
        for (;;) {
                snap *n = find(s, key);
                if (!n || n->pending || !n->busy)
                        return n && !n->pending ? n : NULL;
                pthread_cond_wait(&s->idle, &s->lock);
        }
}

static bool key_valid(const char *key)
{
        if (!key)
                return false;
        size_t len = strnlen(key, RL_KEY_MAX + 1);
        return len > 0 && len <= RL_KEY_MAX && rl_utf8_valid(key, len);
}

static int check_key(const char *what, const char *key, rl_error *err)
{
        if (key_valid(key))
                return 0;
        return rl_error_set(err, -EINVAL,
                            "%s '%.64s%s': must be non-empty UTF-8 of at most %d bytes", what,
                            key ? key : "(null)", key && strlen(key) > 64 ? "..." : "",
                            RL_KEY_MAX);
}

static int fill_info(const snap *n, rl_info *ret)
{
        rl_info info = {
                .id = n->id,
                .kind = n->kind,
                .name = strdup(n->name),
                .parent = n->parent ? strdup(n->parent->name) : NULL,
                .created_ns = n->created_ns,
                .updated_ns = n->updated_ns,
                .ephemeral = n->ephemeral,
        };
        if (!info.name || (n->parent && !info.parent) ||
            rl_meta_labels_to(n->labels, &info.labels, &info.n_labels) < 0) {
                rl_info_clear(&info);
                return -ENOMEM;
        }
        *ret = info;
        return 0;
}

static void meta_of(const snap *n, rl_meta *m)
{
        *m = (rl_meta){
                .id = n->id,
                .kind = n->kind,
                .name = n->name,
                .parent_id = n->parent ? n->parent->id : 0,
                .labels = n->labels,
                .created_ns = n->created_ns,
                .updated_ns = n->updated_ns,
                .ephemeral = n->ephemeral,
        };
}

/* The directory that holds n's: snapshots/, or ephemeral/BOOT/. Under s->lock, or with n
 * busy (only a commit, while busy, moves one from the second to the first). */
static int home_fd(const rl_store *s, const snap *n)
{
        return n->ephemeral ? s->eph_fd : s->snaps_fd;
}

static const char *home_name(const rl_store *s, const snap *n)
{
        return n->ephemeral ? s->eph_dir : "snapshots";
}

/* Open n's tree (busy, pinned, or under s->lock). */
static int open_tree(const rl_store *s, const snap *n, rl_error *err)
{
        char fs[48];
        snprintf(fs, sizeof(fs), "%" PRIu64 "/fs", n->id);
        int fd = rl_openat_beneath(home_fd(s, n), fs, O_RDONLY | O_DIRECTORY, 0);
        if (fd < 0)
                return rl_error_set(err, fd, "open %s/%s", home_name(s, n), fs);
        return fd;
}

/* --- ids --------------------------------------------------------------------------------- */

static int write_next_id(rl_store *s, uint64_t limit, rl_error *err)
{
        char buf[32], tmp[] = NEXT_ID_FILE ".tmp";
        int n = snprintf(buf, sizeof(buf), "%" PRIu64 "\n", limit);
        _cleanup_close_ int fd = openat(s->root_fd, tmp,
                                        O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, buf, n) != n || fsync(fd) < 0 ||
            renameat(s->root_fd, tmp, s->root_fd, NEXT_ID_FILE) < 0 || fsync(s->root_fd) < 0)
                return rl_error_set(err, -errno ?: -EIO, "store: write %s", NEXT_ID_FILE);
        return 0;
}

/* Under s->lock. Ids below id_limit are promised on disk never to be handed out again. */
static int alloc_id(rl_store *s, uint64_t *ret, rl_error *err)
{
        if (s->next_id >= s->id_limit) {
                int r = write_next_id(s, s->next_id + ID_BLOCK, err);
                if (r < 0)
                        return r;
                s->id_limit = s->next_id + ID_BLOCK;
        }
        *ret = s->next_id++;
        return 0;
}

static uint64_t parse_id(const char *name)
{
        char *end;
        if (name[0] < '1' || name[0] > '9')
                return 0;
        errno = 0;
        unsigned long long v = strtoull(name, &end, 10);
        return errno || *end ? 0 : (uint64_t)v;
}

/* List a directory we hold an fd of. A fresh open file description, not a dup: a dup would
 * share the read position, and the second listing would start where the first ended. */
static DIR *opendir_fd(int dir_fd)
{
        int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return NULL;
        DIR *d = fdopendir(fd);
        if (!d) {
                int e = errno;
                close(fd);
                errno = e;
        }
        return d;
}

/* --- the journal: durable publishes with one flush --------------------------------------- */

/* Drop the first n of an array of `size`-byte items. */
static void drop_front(void *array, size_t *count, size_t n, size_t size)
{
        if (n == 0)
                return;
        memmove(array, (char *)array + n * size, (*count - n) * size);
        *count -= n;
}

/*
 * Make every publish journalled so far durable without the journal (its record's
 * fdatasync, then one fsync of snapshots/ for all the renames, the removals before them
 * included), then checkpoint the journal: its entries are not needed any more. In the
 * background (the trash thread) once a batch is there, the journal is full or the removed
 * keys are too many to remember; and at close (all). Not sooner: on btrfs an fsync of
 * snapshots/ holds the directory for milliseconds, which a Remove's rename would wait for.
 * Should a flush fail, nothing more is settled in this process (a retried fdatasync may
 * answer 0 for a page the failed one dropped): the entries stay for the next open's
 * replay, which rewrites what does not read.
 */
static int journal_settle(rl_store *s, bool all, rl_error *err)
{
        if (!s->journal)
                return 0;
        pthread_mutex_lock(&s->removed_lock);
        size_t n_removed = s->n_removed;
        uint64_t removals = s->removals;
        bool overflow = s->removed_overflow;
        pthread_mutex_unlock(&s->removed_lock);
        pthread_mutex_lock(&s->publish_lock);
        uint64_t mark = rl_journal_mark(s->journal);
        size_t n = s->n_unsettled;
        bool due = n >= SETTLE_BATCH || s->journal_full || overflow ||
                   (all && (n > 0 || n_removed > 0));
        _cleanup_free_ uint64_t *ids = due && n ? malloc(n * sizeof(*ids)) : NULL;
        if (ids)
                memcpy(ids, s->unsettled, n * sizeof(*ids));
        bool skip = s->settle_failed || !due || (n && !ids);
        if (!skip)
                s->journal_full = false;
        pthread_mutex_unlock(&s->publish_lock);
        if (skip)
                return 0;

        int r = 0;
        for (size_t i = 0; i < n && r == 0; i++) {
                char rec[48];
                snprintf(rec, sizeof(rec), "%" PRIu64 "/" RL_META_FILE, ids[i]);
                _cleanup_close_ int fd = rl_openat_beneath(s->snaps_fd, rec, O_RDONLY, 0);
                /* Gone: removed, which needs nothing durable (a replay finds it in trash/ or
                 * nowhere). Otherwise its record may have been replaced since (an update, a
                 * commit), durably: flushing the one there now does no harm. */
                if (fd == -ENOENT)
                        continue;
                if (fd < 0 || fdatasync(fd) < 0)
                        r = rl_error_set(err, fd < 0 ? fd : -errno, "settle snapshots/%s", rec);
        }
        if (r == 0 && fsync(s->snaps_fd) < 0)
                r = rl_error_set(err, -errno, "settle: fsync snapshots/");
        if (r == 0)
                r = rl_journal_checkpoint(s->journal, mark, err);

        pthread_mutex_lock(&s->publish_lock);
        if (r < 0)
                s->settle_failed = true;
        else /* those published meanwhile stay, after these */
                drop_front(s->unsettled, &s->n_unsettled, n, sizeof(*s->unsettled));
        pthread_mutex_unlock(&s->publish_lock);
        if (r == 0) {
                pthread_mutex_lock(&s->removed_lock);
                drop_front(s->removed_keys, &s->n_removed, n_removed, sizeof(*s->removed_keys));
                if (s->removals == removals)
                        s->removed_overflow = false;
                pthread_mutex_unlock(&s->removed_lock);
        }
        return r;
}

/* A snapshot named key was removed (under s->lock): remembered until snapshots/ is flushed,
 * so that a journalled publish of the same key flushes it first. */
static void note_removal(rl_store *s, const char *key)
{
        if (!s->journal)
                return;
        pthread_mutex_lock(&s->removed_lock);
        s->removals++;
        if (s->n_removed < REMOVED_MAX &&
            RL_GROW(s->removed_keys, s->cap_removed, s->n_removed + 1))
                s->removed_keys[s->n_removed++] = hash_name(key);
        else
                s->removed_overflow = true; /* the Remove's kick of the trash settles */
        pthread_mutex_unlock(&s->removed_lock);
}

/* Was key (perhaps) removed since snapshots/ was last flushed? */
static bool removed_unflushed(rl_store *s, const char *key)
{
        size_t h = hash_name(key);
        pthread_mutex_lock(&s->removed_lock);
        bool found = s->removed_overflow;
        for (size_t i = 0; i < s->n_removed && !found; i++)
                found = s->removed_keys[i] == h;
        pthread_mutex_unlock(&s->removed_lock);
        return found;
}

/* A ready clone's name in pool/, as pool.c gives them: "c" and a number. */
static bool pool_name_valid(const char *name)
{
        size_t n = strlen(name);
        return n >= 2 && n < RL_POOL_NAME_MAX && name[0] == 'c' &&
               strspn(name + 1, "0123456789") == n - 1;
}

/*
 * One journal entry, at open, before tmp/ is swept and the pool throws its clones away:
 * make its change whole. {"publish": ID, "pool": NAME, "record": {...}}: snapshot ID was
 * published from pool/NAME by way of tmp/ID; whichever of its renames reached the disk,
 * the tree is in one of those three places, unless it was removed since (trash/ID, or
 * nowhere once deleted). Its record is the one in the entry unless the one on disk reads
 * (it may be newer: an update, a commit). A publish that failed after its entry was
 * written moved its tree to trash/ (publish_journalled).
 */
typedef struct replay_ctx {
        rl_store *s;
        unsigned entries;
} replay_ctx;

static int replay_entry(const char *payload, size_t len, void *userdata, rl_error *err)
{
        replay_ctx *ctx = userdata;
        rl_store *s = ctx->s;
        json_error_t jerr;
        _cleanup_(json_decrefp) json_t *e = json_loadb(payload, len, JSON_REJECT_DUPLICATES,
                                                       &jerr);
        _cleanup_(rl_meta_clear) rl_meta m = {};
        json_int_t id = 0;
        const char *pool = NULL;
        json_t *rec = NULL;
        char idname[24];
        int r;

        ctx->entries++;
        if (!e)
                return rl_error_set(err, -EUCLEAN, "journal: %s", jerr.text);
        if (json_unpack_ex(e, &jerr, JSON_STRICT, "{s:I, s:s, s:o}", "publish", &id, "pool",
                           &pool, "record", &rec) < 0)
                return rl_error_set(err, -EUCLEAN, "journal: %s", jerr.text);
        r = rl_meta_from_json(rec, "journal", &m, err);
        if (r < 0)
                return r;
        if (id <= 0 || m.id != (uint64_t)id || !pool_name_valid(pool))
                return rl_error_set(err, -EUCLEAN, "journal: publish %" PRIu64 " from '%s'",
                                    (uint64_t)id, pool);
        snprintf(idname, sizeof(idname), "%" PRIu64, m.id);
        if (faccessat(s->trash_fd, idname, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
                return 0;
        if (faccessat(s->snaps_fd, idname, F_OK, AT_SYMLINK_NOFOLLOW) < 0) {
                if (errno != ENOENT)
                        return rl_error_set(err, -errno, "journal: snapshots/%s", idname);
                if (renameat(s->tmp_fd, idname, s->snaps_fd, idname) < 0) {
                        if (errno != ENOENT)
                                return rl_error_set(err, -errno, "journal: publish tmp/%s",
                                                    idname);
                        _cleanup_close_ int pool_fd = openat(
                                s->root_fd, RL_POOL_DIR,
                                O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                        if (pool_fd < 0 || renameat(pool_fd, pool, s->snaps_fd, idname) < 0) {
                                if (errno != ENOENT)
                                        return rl_error_set(err, -errno,
                                                            "journal: publish pool/%s", pool);
                                return 0; /* removed, and deleted from trash/ */
                        }
                }
        }
        _cleanup_close_ int dir = openat(s->snaps_fd, idname,
                                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dir < 0)
                return rl_error_set(err, -errno, "journal: open snapshots/%s", idname);
        rl_meta cur = {};
        rl_error ignored = {};
        r = rl_meta_read(dir, &cur, &ignored);
        rl_meta_clear(&cur);
        if (r == 0)
                return 0;
        if (r != -EUCLEAN && r != -ENOENT)
                return rl_error_set(err, r, "journal: read snapshots/%s/%s", idname,
                                    RL_META_FILE);
        /* The placeholder, or a fill a crash cut short. */
        return rl_meta_write(dir, &m, err);
}

/*
 * Open ROOT/journal and replay what it holds: before anything else looks at snapshots/,
 * tmp/ or pool/. Whatever the replay changed is made durable by one syncfs (a rare path,
 * after a crash), and the journal checkpointed. Without flushes (no_sync), no journal.
 */
static int open_journal(rl_store *s, rl_error *err)
{
        rl_journal *j = NULL;
        if (s->opts.no_sync && faccessat(s->root_fd, JOURNAL_FILE, F_OK, AT_SYMLINK_NOFOLLOW) < 0)
                return 0; /* none to replay, and none to make */
        int r = rl_journal_open(s->root_fd, JOURNAL_FILE, &j, err);
        if (r < 0)
                return r;
        replay_ctx ctx = { .s = s };
        r = rl_journal_replay(j, replay_entry, &ctx, err);
        if (r == 0 && ctx.entries > 0 && syncfs(s->root_fd) < 0)
                r = rl_error_set(err, -errno, "journal: syncfs");
        if (r == 0)
                r = rl_journal_checkpoint(j, rl_journal_mark(j), err);
        if (r < 0 || s->opts.no_sync) {
                rl_journal_free(j);
                return r < 0 ? rl_error_prefix(err, r, "replay the journal") : 0;
        }
        s->journal = j;
        return 0;
}

/* --- trash: removed trees, deleted in the background ------------------------------------ */

static void *trash_main(void *arg)
{
        rl_store *s = arg;
        /* Deleting old trees must not slow anything a user waits for: lowest CPU priority and
         * the idle I/O class for this thread only. */
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
        (void)syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0,
                      3 << 13 /* IOPRIO_CLASS_IDLE */);

        pthread_mutex_lock(&s->trash_lock);
        for (;;) {
                while (!s->trash_stop && s->trash_done == s->trash_requested)
                        pthread_cond_wait(&s->trash_wake, &s->trash_lock);
                if (s->trash_stop) {
                        s->trash_done = s->trash_requested;
                        pthread_cond_broadcast(&s->trash_done_cond);
                        break;
                }
                uint64_t gen = s->trash_requested;
                pthread_mutex_unlock(&s->trash_lock);

                /* Settling the journal is as much background work as deleting trees is, and
                 * quick: first. Should it fail, its entries stay, for the next round or a
                 * replay. */
                (void)journal_settle(s, false, NULL);

                int r = 0;
                rl_error err = {};
                DIR *d = opendir_fd(s->trash_fd);
                if (!d) {
                        r = rl_error_set(&err, -errno, "trash: list");
                } else {
                        struct dirent *e;
                        while ((e = readdir(d)) && !atomic_load(&s->trash_cancel)) {
                                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                                        continue;
                                rl_error e2 = {};
                                /* A big tree takes long: a settle due meanwhile (the
                                 * journal filling) does not wait for it. */
                                (void)journal_settle(s, false, NULL);
                                /* As many workers as a clone: they inherit this thread's
                                 * low CPU and I/O priority. */
                                int q = rl_tree_remove(s->trash_fd, e->d_name, s->opts.jobs,
                                                       &s->trash_cancel, &e2);
                                if (q < 0 && q != -ECANCELED && r == 0) {
                                        r = q;
                                        err = e2;
                                }
                        }
                        closedir(d);
                }
                pthread_mutex_lock(&s->trash_lock);
                s->trash_done = gen;
                s->trash_r = r;
                if (r < 0)
                        s->trash_err = err;
                pthread_cond_broadcast(&s->trash_done_cond);
        }
        pthread_mutex_unlock(&s->trash_lock);
        return NULL;
}

static void trash_kick(rl_store *s)
{
        pthread_mutex_lock(&s->trash_lock);
        s->trash_requested++;
        pthread_cond_signal(&s->trash_wake);
        pthread_mutex_unlock(&s->trash_lock);
}

/* --- open and close ------------------------------------------------------------------- */

static void trash_kick_cb(void *userdata)
{
        trash_kick(userdata);
}

/* The parent's RL_POOL_LABEL, as a number of clones (0: none or not a number). */
static unsigned pool_label(const snap *n)
{
        const char *v = json_string_value(json_object_get(n->labels, RL_POOL_LABEL));
        char *end;
        unsigned long k = v ? strtoul(v, &end, 10) : 0;
        return v && *v && !*end && k <= 64 ? (unsigned)k : 0;
}

static int open_subdir(int root_fd, const char *name, int *ret, rl_error *err)
{
        if (mkdirat(root_fd, name, 0700) < 0 && errno != EEXIST)
                return rl_error_set(err, -errno, "store: create %s/", name);
        int fd = openat(root_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return rl_error_set(err, -errno, "store: open %s/", name);
        *ret = fd;
        return 0;
}

static int cmp_meta_id(const void *a, const void *b)
{
        const rl_meta *x = a, *y = b;
        return x->id < y->id ? -1 : x->id > y->id;
}

/* Move every entry of dir_fd (where: its name, for messages) into trash/ as PREFIX-NAME;
 * the largest id among the names into *max_id (NULL: not wanted). */
static int sweep_to_trash(rl_store *s, int dir_fd, const char *where, const char *prefix,
                          uint64_t *max_id, rl_error *err)
{
        DIR *d = opendir_fd(dir_fd);
        struct dirent *e;
        int r = 0;

        if (!d)
                return rl_error_set(err, -errno, "store: list %s/", where);
        while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                        continue;
                uint64_t id = parse_id(e->d_name);
                if (max_id && id > *max_id)
                        *max_id = id;
                char name[NAME_MAX + 48];
                snprintf(name, sizeof(name), "%s-%s", prefix, e->d_name);
                if (renameat(dir_fd, e->d_name, s->trash_fd, name) < 0) {
                        r = rl_error_set(err, -errno, "store: move %s/%s to trash/", where,
                                         e->d_name);
                        break;
                }
        }
        closedir(d);
        return r;
}

/*
 * What a previous process left: tmp/ (ids taken, so max_id counts them) and pool/ (the
 * clones the journal's replay did not take back: of parents that may be gone, with maps
 * nobody may ask for again; swept with the pool off too, or they would keep their parents'
 * blocks for as long as it stays off). pool/ names repeat from one run to the next, so
 * theirs in the trash carry the time.
 */
static int sweep_leftovers(rl_store *s, uint64_t *max_id, rl_error *err)
{
        int r = sweep_to_trash(s, s->tmp_fd, "tmp", "tmp", max_id, err);
        if (r < 0)
                return r;
        _cleanup_close_ int pool_fd = openat(s->root_fd, RL_POOL_DIR,
                                             O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (pool_fd < 0)
                return errno == ENOENT ? 0 : rl_error_set(err, -errno, "store: open pool/");
        char prefix[40];
        snprintf(prefix, sizeof(prefix), "pool-old-%" PRIu64, rl_now_ns());
        return sweep_to_trash(s, pool_fd, RL_POOL_DIR, prefix, NULL, err);
}

/*
 * Append the record of every ID/ in dir_fd (where: its name for messages) to metas. In
 * ephemeral/BOOT/ (trash_fd >= 0), one whose record does not read is thrown away: it was
 * never flushed, and the filesystem went down and came back since (an I/O error, a forced
 * shutdown) without a reboot.
 */
static int read_records(int dir_fd, const char *where, int trash_fd, rl_meta **metas,
                        size_t *n, size_t *cap, uint64_t *max_id, rl_error *err)
{
        bool ephemeral = trash_fd >= 0;
        DIR *d = opendir_fd(dir_fd);
        struct dirent *e;
        int r = 0;

        if (!d)
                return rl_error_set(err, -errno, "store: list %s/", where);
        while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                        continue;
                uint64_t id = parse_id(e->d_name);
                if (!id) {
                        r = rl_error_set(err, -EUCLEAN, "store: %s/%s is not ours", where,
                                         e->d_name);
                        break;
                }
                if (*n == *cap) {
                        size_t c = *cap ? *cap * 2 : 256;
                        rl_meta *m = realloc(*metas, c * sizeof(*m));
                        if (!m) {
                                r = rl_error_set(err, -ENOMEM, "store: index");
                                break;
                        }
                        *metas = m;
                        *cap = c;
                }
                _cleanup_close_ int sfd =
                        openat(dir_fd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sfd < 0) {
                        r = rl_error_set(err, -errno, "store: open %s/%s", where, e->d_name);
                        break;
                }
                (void)unlinkat(sfd, RL_META_FILE ".tmp", 0); /* a write cut short */
                rl_meta *m = &(*metas)[*n];
                r = rl_meta_read(sfd, m, err);
                if (r < 0 && r != -ENOMEM && ephemeral) {
                        char name[NAME_MAX + 16];
                        snprintf(name, sizeof(name), "ephemeral-%s", e->d_name);
                        r = RL_NERRNO(renameat(dir_fd, e->d_name, trash_fd, name));
                        if (r == 0)
                                continue;
                }
                if (r < 0) {
                        rl_error_prefix(err, r, "store: %s/%s", where, e->d_name);
                        break;
                }
                m->ephemeral = ephemeral;
                (*n)++;
                if (m->id != id || (ephemeral && m->kind == RL_KIND_COMMITTED)) {
                        r = rl_error_set(err, -EUCLEAN, "store: %s/%s holds %s %" PRIu64, where,
                                         e->d_name, m->id != id ? "id" : "committed snapshot",
                                         m->id);
                        break;
                }
                if (id > *max_id)
                        *max_id = id;
        }
        closedir(d);
        return r;
}

/*
 * The kernel's boot id, as "8-4-4-4-12" hex. Where it cannot be read (no /proc: the fuzz
 * harnesses run the store in an empty root), a random one: ephemeral snapshots then last
 * only as long as the store stays open, which keeps their promise (gone after a reboot,
 * whole) at the cost of dropping them at every open.
 */
static int boot_id(char buf[static 37], rl_error *err)
{
        _cleanup_close_ int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
        ssize_t len = fd < 0 ? -1 : read(fd, buf, 36);
        if (len == 36) {
                buf[36] = '\0';
                if (strspn(buf, "0123456789abcdef-") != 36)
                        return rl_error_set(err, -EIO, "store: boot id '%s' is not a UUID", buf);
                return 0;
        }
        uint8_t b[16];
        if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
                return rl_error_set(err, -errno ?: -EIO, "store: a random boot id");
        snprintf(buf, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
                 b[13], b[14], b[15]);
        return 0;
}

/*
 * Open ephemeral/BOOT/ for this boot (boot_id), after moving every other boot's directory
 * into trash/: the ephemeral snapshots of an earlier boot were never flushed, so whatever of
 * them reached the disk is thrown away whole, readable or not.
 */
static int open_ephemeral(rl_store *s, rl_error *err)
{
        _cleanup_close_ int eph = -EBADF;
        char boot[37];
        int r;

        if ((r = boot_id(boot, err)) < 0)
                return r;
        snprintf(s->eph_dir, sizeof(s->eph_dir), "ephemeral/%s", boot);

        if ((r = open_subdir(s->root_fd, "ephemeral", &eph, err)) < 0)
                return r;
        DIR *d = opendir_fd(eph);
        if (!d)
                return rl_error_set(err, -errno, "store: list ephemeral/");
        struct dirent *e;
        while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
                    !strcmp(e->d_name, boot))
                        continue;
                char name[NAME_MAX + 16];
                snprintf(name, sizeof(name), "ephemeral-%s", e->d_name);
                if (renameat(eph, e->d_name, s->trash_fd, name) < 0) {
                        r = rl_error_set(err, -errno, "store: move ephemeral/%s to trash/",
                                         e->d_name);
                        break;
                }
        }
        closedir(d);
        return r < 0 ? r : open_subdir(eph, boot, &s->eph_fd, err);
}

/* Read every snapshots/ID/info.json and ephemeral/BOOT/ID/info.json; rebuild the index. */
static int load_index(rl_store *s, uint64_t *max_id, rl_error *err)
{
        rl_meta *metas = NULL;
        snap **byid = NULL;
        size_t n = 0, cap = 0;
        int r;

        r = read_records(s->snaps_fd, "snapshots", -1, &metas, &n, &cap, max_id, err);
        if (r == 0)
                r = read_records(s->eph_fd, s->eph_dir, s->trash_fd, &metas, &n, &cap, max_id,
                                 err);
        if (r < 0)
                goto out;
        if (n)
                qsort(metas, n, sizeof(*metas), cmp_meta_id);
        for (size_t i = 1; i < n; i++)
                if (metas[i].id == metas[i - 1].id) {
                        r = rl_error_set(err, -EUCLEAN, "store: snapshot %" PRIu64 " is both in "
                                         "snapshots/ and in %s/", metas[i].id, s->eph_dir);
                        goto out;
                }
        byid = calloc(n ? n : 1, sizeof(*byid));
        if (!byid) {
                r = rl_error_set(err, -ENOMEM, "store: index");
                goto out;
        }
        for (size_t i = 0; i < n; i++) {
                snap *p = calloc(1, sizeof(*p));
                if (!p) {
                        r = rl_error_set(err, -ENOMEM, "store: index");
                        goto out;
                }
                /* The snapshot takes over the record's strings. */
                *p = (snap){ .id = metas[i].id, .kind = metas[i].kind, .name = metas[i].name,
                             .labels = metas[i].labels, .created_ns = metas[i].created_ns,
                             .updated_ns = metas[i].updated_ns,
                             .ephemeral = metas[i].ephemeral };
                metas[i].name = NULL;
                metas[i].labels = NULL;
                if (find(s, p->name)) {
                        r = rl_error_set(err, -EUCLEAN,
                                         "store: snapshots %" PRIu64 " and %" PRIu64
                                         " are both called '%.64s'",
                                         find(s, p->name)->id, p->id, p->name);
                        snap_free(p);
                        goto out;
                }
                if (insert(s, p) < 0) {
                        snap_free(p);
                        r = rl_error_set(err, -ENOMEM, "store: index");
                        goto out;
                }
                byid[i] = p;
        }
        for (size_t i = 0; i < n; i++) {
                if (!metas[i].parent_id)
                        continue;
                rl_meta key = { .id = metas[i].parent_id };
                rl_meta *pm = bsearch(&key, metas, n, sizeof(*metas), cmp_meta_id);
                if (!pm || byid[pm - metas]->kind != RL_KIND_COMMITTED) {
                        r = rl_error_set(err, -EUCLEAN,
                                         "store: snapshot %" PRIu64 " has parent %" PRIu64
                                         ", which is missing or not committed",
                                         metas[i].id, metas[i].parent_id);
                        goto out;
                }
                byid[i]->parent = byid[pm - metas];
                byid[i]->parent->children++;
        }
out:
        for (size_t i = 0; i < n; i++)
                rl_meta_clear(&metas[i]);
        free(metas);
        free(byid);
        return r;
}

static void free_index(rl_store *s)
{
        for (size_t i = 0; i < s->n_buckets; i++)
                for (snap *p = s->buckets[i], *next; p; p = next) {
                        next = p->hnext;
                        snap_free(p);
                }
        free(s->buckets);
        s->buckets = NULL;
        s->n_buckets = s->count = 0;
}

static uint64_t read_next_id(int root_fd)
{
        _cleanup_close_ int fd = openat(root_fd, NEXT_ID_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        char buf[32];
        ssize_t n;
        if (fd < 0 || (n = read(fd, buf, sizeof(buf) - 1)) <= 0)
                return 1;
        buf[n] = '\0';
        return strtoull(buf, NULL, 10) ?: 1;
}

RL_EXPORT int rl_store_open(const char *root, const rl_store_options *opts, rl_store **ret,
                            rl_error *err)
{
        _cleanup_(rl_store_freep) rl_store *s = calloc(1, sizeof(*s));
        uint64_t max_id = 0;
        int r;

        if (!s)
                return rl_error_set(err, -ENOMEM, "store");
        s->root_fd = s->snaps_fd = s->tmp_fd = s->trash_fd = s->lock_fd = s->eph_fd = -EBADF;
        s->closed = true; /* until it is whole: rl_store_free must not wait for anything */
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->idle, NULL);
        pthread_mutex_init(&s->trash_lock, NULL);
        pthread_mutex_init(&s->publish_lock, NULL);
        pthread_mutex_init(&s->removed_lock, NULL);
        pthread_cond_init(&s->trash_wake, NULL);
        pthread_cond_init(&s->trash_done_cond, NULL);
        if (opts)
                s->opts = *opts;

        if (mkdir(root, 0711) < 0 && errno != EEXIST)
                return rl_error_set(err, -errno, "store '%s': create", root);
        s->root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (s->root_fd < 0)
                return rl_error_set(err, -errno, "store '%s': open", root);
        s->root = realpath(root, NULL);
        if (!s->root)
                return rl_error_set(err, -errno, "store '%s': resolve", root);
        s->lock_fd = openat(s->root_fd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (s->lock_fd < 0)
                return rl_error_set(err, -errno, "store '%s': open lock", s->root);
        if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0)
                return rl_error_set(err, errno == EWOULDBLOCK ? -EBUSY : -errno,
                                    "store '%s': in use by another process (lock)", s->root);
        if ((r = open_subdir(s->root_fd, "snapshots", &s->snaps_fd, err)) < 0 ||
            (r = open_subdir(s->root_fd, "tmp", &s->tmp_fd, err)) < 0 ||
            (r = open_subdir(s->root_fd, "trash", &s->trash_fd, err)) < 0 ||
            (r = open_ephemeral(s, err)) < 0 || (r = open_journal(s, err)) < 0)
                return rl_error_prefix(err, r, "store '%s'", s->root);
        r = sweep_leftovers(s, &max_id, err);
        if (r < 0)
                return r;
        r = load_index(s, &max_id, err);
        if (r < 0)
                return rl_error_prefix(err, r, "store '%s'", s->root);
        /* Ids of trees in the trash are taken too, until they are gone. */
        uint64_t on_disk = read_next_id(s->root_fd);
        s->next_id = max_id + 1 > on_disk ? max_id + 1 : on_disk;
        s->id_limit = s->next_id; /* the first allocation reserves a new block */

        if (pthread_create(&s->trash_thread, NULL, trash_main, s) != 0)
                return rl_error_set(err, -EAGAIN, "store '%s': start the trash thread", s->root);
        s->trash_thread_started = true;
        if (s->opts.pool_size) {
                rl_pool_config pc = { .size = s->opts.pool_size,
                                      .after = s->opts.pool_after,
                                      .min_free_percent = s->opts.pool_min_free_percent,
                                      .no_sync = s->opts.no_sync };
                r = rl_pool_start(s->root_fd, s->snaps_fd, s->trash_fd, &pc, trash_kick_cb, s,
                                  &s->pool, err);
                if (r < 0)
                        return rl_error_prefix(err, r, "store '%s'", s->root);
        }
        s->closed = false;
        trash_kick(s); /* whatever a previous process left there */
        /* Parents labelled for the pool are warmed at once. */
        for (size_t i = 0; s->pool && i < s->n_buckets; i++)
                for (snap *n = s->buckets[i]; n; n = n->hnext)
                        if (n->kind == RL_KIND_COMMITTED && pool_label(n))
                                rl_pool_note(s->pool, n->id, NULL, pool_label(n));
        *ret = TAKE_PTR(s);
        return 0;
}

RL_EXPORT int rl_store_close(rl_store *s)
{
        if (!s)
                return 0;
        pthread_mutex_lock(&s->lock);
        /* Refuse new calls, then wait for those in flight (including any waiting for a busy
         * snapshot): only then is nothing holding a pointer into the index. A call must not
         * close its own store (from a walk callback, say): that would wait for itself. */
        bool was_closed = s->closed;
        s->closed = true;
        while (s->calls > 0)
                pthread_cond_wait(&s->idle, &s->lock);
        pthread_mutex_unlock(&s->lock);
        if (was_closed && !s->trash_thread_started)
                goto out_fds;

        /* A pool clone half built is abandoned; ready ones go at the next open. */
        rl_pool_stop(s->pool);
        s->pool = NULL;
        if (s->trash_thread_started) {
                /* A tree half deleted stays in trash/ for the next open. */
                atomic_store(&s->trash_cancel, true);
                pthread_mutex_lock(&s->trash_lock);
                s->trash_stop = true;
                pthread_cond_broadcast(&s->trash_wake);
                pthread_mutex_unlock(&s->trash_lock);
                pthread_join(s->trash_thread, NULL);
                s->trash_thread_started = false;
        }
        /* Nothing is publishing now: what the journal holds is settled, so that the next
         * open has nothing to replay (should this fail, it replays). */
        (void)journal_settle(s, true, NULL);
out_fds:
        rl_journal_free(s->journal);
        s->journal = NULL;
        free(s->unsettled);
        s->unsettled = NULL;
        s->n_unsettled = s->cap_unsettled = 0;
        free(s->removed_keys);
        s->removed_keys = NULL;
        s->n_removed = s->cap_removed = 0;
        free_index(s);
        closep(&s->snaps_fd);
        closep(&s->eph_fd);
        closep(&s->tmp_fd);
        closep(&s->trash_fd);
        closep(&s->root_fd);
        closep(&s->lock_fd); /* releases the flock */
        s->snaps_fd = s->tmp_fd = s->trash_fd = s->root_fd = s->lock_fd = s->eph_fd = -EBADF;
        return 0;
}

RL_EXPORT rl_store *rl_store_free(rl_store *s)
{
        if (!s)
                return NULL;
        rl_store_close(s);
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->idle);
        pthread_mutex_destroy(&s->trash_lock);
        pthread_mutex_destroy(&s->publish_lock);
        pthread_mutex_destroy(&s->removed_lock);
        pthread_cond_destroy(&s->trash_wake);
        pthread_cond_destroy(&s->trash_done_cond);
        free(s->root);
        free(s);
        return NULL;
}

RL_EXPORT void rl_store_freep(rl_store **s)
{
        rl_store_free(*s);
}

RL_EXPORT const char *rl_store_root(const rl_store *s)
{
        return s->root;
}

static int closed_error(const rl_store *s, rl_error *err)
{
        return rl_error_set(err, -ESHUTDOWN, "store '%s' is closed", s->root ? s->root : "");
}

/* --- prepare and view ------------------------------------------------------------------- */

/* A layer to apply onto a new snapshot's tree before it is published. */
typedef struct layer_fill {
        int tar_fd;
        const rl_apply_options *opts;
        rl_layer_stats *stats;
} layer_fill;

/*
 * Build tmp/ID (fs/ and info.json), with fill's layer applied if there is one, then publish
 * it as snapshots/ID.
 *
 * Crash safety: after a crash a key is whole or absent, and snapshots/ holds exactly what
 * the index will hold (load_index refuses a directory whose record does not read). So
 * snapshots/ID may reach the disk only after everything in it has: the tree (a syncfs, now
 * or when the pool built it) and the record (an fsync or fdatasync of it) are durable before
 * the rename into snapshots/, and the fsync of snapshots/ after it is what makes the
 * Prepare done. What a crash leaves in tmp/ or pool/ is thrown away at the next open.
 * An ephemeral snapshot is published into ephemeral/BOOT/ with none of these flushes: what
 * of it reaches the disk before a power cut is thrown away whole after the reboot, and a
 * crash of this process alone loses nothing the page cache holds.
 *
 * From the warm pool that would be two flushes: the record, written in place into the
 * placeholder the pool reserved (fdatasync: data only, no journal commit), and the fsync of
 * snapshots/. Neither can go: without the first, the rename could reach the disk before
 * the record (a published directory whose record is a placeholder: the store would not
 * open); without the second, a Prepare could return and then be lost. fsync covers one
 * inode, so no single call does both, but syncfs, which would also flush every other
 * writer on the filesystem (the containers' own writes included). So the store's journal
 * (publish_journalled) makes it one: a Prepare that takes a ready clone writes an entry
 * saying what the publish will have done and flushes that alone, and then publishes
 * without a flush; the trash thread settles those publishes later, and a replay at the
 * next open makes whole whatever a crash cut short.
 */
static int publish_journalled(rl_store *s, const rl_meta *m, int dir, const char *idname,
                              const char *pool_name, bool *keep_tmp, rl_error *err);

static int build_and_publish(rl_store *s, const snap *n, const snap *parent,
                             const rl_prepare_options *popts, const layer_fill *fill,
                             rl_error *err)
{
        char idname[24], pool_name[RL_POOL_NAME_MAX];
        _cleanup_close_ int dir = -EBADF;
        bool pooled = false;
        rl_meta m;
        int r;

        snprintf(idname, sizeof(idname), "%" PRIu64, n->id);
        /* A ready clone is a whole directory (fs/ and a placeholder record), durable since it
         * was built: it becomes tmp/ID in one rename; nothing to clone or flush. */
        if (parent && !fill && s->pool &&
            rl_pool_take(s->pool, parent->id, popts, s->tmp_fd, idname, pool_name) == 0)
                pooled = true;
        else if (mkdirat(s->tmp_fd, idname, 0700) < 0)
                return rl_error_set(err, -errno, "create tmp/%s", idname);
        dir = openat(s->tmp_fd, idname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dir < 0) {
                r = rl_error_set(err, -errno, "open tmp/%s", idname);
                goto out_remove_tmp;
        }
        if (pooled) {
                /* fs/ is there already. */
        } else if (parent) {
                _cleanup_close_ int src_fd = open_tree(s, parent, err);
                if (src_fd < 0) {
                        r = rl_error_prefix(err, src_fd, "the parent's tree");
                        goto out_remove_tmp;
                }
                rl_tree_options t = {
                        .jobs = s->opts.jobs,
                        /* With a layer to come, one syncfs after it does for both. */
                        .flags = (s->opts.no_sync || fill || n->ephemeral ? 0 : RL_TREE_SYNC) |
                                 RL_TREE_SUBVOLUME |
                                 (popts && popts->keep_unmapped ? RL_TREE_KEEP_UNMAPPED : 0),
                        .uid_map = popts ? popts->uid_map : NULL,
                        .gid_map = popts ? popts->gid_map : NULL,
                        .progress = popts ? popts->progress : NULL,
                        .progress_userdata = popts ? popts->progress_userdata : NULL,
                        .cancel = popts ? popts->cancel : NULL,
                };
                r = rl_tree_clone(src_fd, dir, "fs", &t, NULL, err);
                if (r < 0)
                        goto out_remove_tmp;
        } else {
                /* An empty tree: mode 0755 whatever the umask, owned by the map's root. On
                 * btrfs a subvolume, so that its children are snapshots (subvol.h). */
                uint32_t uid = 0, gid = 0;
                r = rl_subvol_mkdir(dir, "fs", 0755);
                if (r < 0 || fchmodat(dir, "fs", 0755, 0) < 0) {
                        r = rl_error_set(err, r < 0 ? r : -errno, "create the tree");
                        goto out_remove_tmp;
                }
                if (popts && (popts->uid_map || popts->gid_map)) {
                        if (rl_idmap_map(popts->uid_map, 0, &uid) < 0 ||
                            rl_idmap_map(popts->gid_map, 0, &gid) < 0) {
                                r = rl_error_set(err, -ERANGE, "root is outside the id maps");
                                goto out_remove_tmp;
                        }
                        if (fchownat(dir, "fs", uid, gid, AT_SYMLINK_NOFOLLOW) < 0) {
                                r = rl_error_set(err, -errno, "chown the tree");
                                goto out_remove_tmp;
                        }
                }
        }
        if (fill) {
                _cleanup_close_ int fs = openat(dir, "fs", O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
                                                                   O_CLOEXEC);
                r = fs < 0 ? rl_error_set(err, -errno, "open the tree")
                           : rl_layer_apply(fs, fill->tar_fd, fill->opts, fill->stats, err);
                if (r == 0 && !s->opts.no_sync && syncfs(fs) < 0)
                        r = rl_error_set(err, -errno, "syncfs");
                if (r < 0)
                        goto out_remove_tmp;
        }
        meta_of(n, &m);
        if (pooled && s->journal && !n->ephemeral) {
                bool keep_tmp = false;
                r = publish_journalled(s, &m, dir, idname, pool_name, &keep_tmp, err);
                if (r == 0 || keep_tmp)
                        return r;
                if (r != -EAGAIN)
                        goto out_remove_tmp;
        }
        /* tmp/ID is ours alone: no reader needs the record replaced atomically, only durable
         * before the rename below. */
        r = pooled ? rl_meta_fill(dir, &m, true, err) : rl_meta_write(dir, &m, err);
        if (r < 0)
                goto out_remove_tmp;
        /* The whole snapshot appears at once: tree and record in one rename. */
        int home = home_fd(s, n);
        if (renameat(s->tmp_fd, idname, home, idname) < 0) {
                r = rl_error_set(err, -errno, "publish %s/%s", home_name(s, n), idname);
                goto out_remove_tmp;
        }
        if (!n->ephemeral && fsync(home) < 0) {
                /* Not durable, so not done: take it back, so disk and index agree. */
                r = rl_error_set(err, -errno, "fsync snapshots/");
                if (renameat(home, idname, s->tmp_fd, idname) < 0)
                        return r; /* still published; the next open will find it */
                goto out_remove_tmp;
        }
        return 0;

out_remove_tmp:
        rl_tree_remove(s->tmp_fd, idname, s->opts.jobs, NULL, NULL);
        return r;
}

/*
 * Publish tmp/ID, a ready clone taken from pool/pool_name, with one flush: the record goes
 * into its placeholder unflushed, the journal entry (what a replay needs to redo all of it)
 * is appended and flushed, and the rename into snapshots/ follows, unflushed. The pool's
 * clone and its name were durable before it was handed out (pool.c), so after a crash the
 * tree is found in pool/, tmp/ or snapshots/ whichever renames reached the disk.
 * -EAGAIN (no message): not this way (the record does not fit the placeholder, the journal
 * is full, or a snapshot of this key was removed and that is not flushed yet); nothing is
 * published and the record is still to be written. *keep_tmp: failed, and tmp/ID must stay
 * whole (a replay may publish it).
 */
static int publish_journalled(rl_store *s, const rl_meta *m, int dir, const char *idname,
                              const char *pool_name, bool *keep_tmp, rl_error *err)
{
        _cleanup_(json_decrefp) json_t *rec = NULL, *entry = NULL;
        _cleanup_free_ char *text = NULL;
        bool kick = false;
        int r;

        /* The key cannot be removed meanwhile: this Prepare holds it. */
        if (removed_unflushed(s, m->name))
                return -EAGAIN; /* the slow way's fsync of snapshots/ flushes that removal */
        r = rl_meta_fill(dir, m, false, err);
        if (r == -E2BIG)
                return -EAGAIN;
        if (r < 0)
                return r;
        rec = rl_meta_to_json(m);
        entry = rec ? json_pack("{s:I, s:s, s:O}", "publish", (json_int_t)m->id, "pool",
                                pool_name, "record", rec)
                    : NULL;
        text = entry ? json_dumps(entry, JSON_COMPACT) : NULL;
        if (!text)
                return rl_error_set(err, -ENOMEM, "publish snapshots/%s", idname);

        pthread_mutex_lock(&s->publish_lock);
        if (!RL_GROW(s->unsettled, s->cap_unsettled, s->n_unsettled + 1)) {
                r = rl_error_set(err, -ENOMEM, "publish snapshots/%s", idname);
                goto out;
        }
        r = rl_journal_append(s->journal, text, strlen(text), err);
        if (r == -ENOSPC) {
                /* Full: this one the slow way, and the settle that empties it, now. */
                s->journal_full = kick = true;
                r = -EAGAIN;
                goto out;
        }
        if (r == 0 && renameat(s->tmp_fd, idname, s->snaps_fd, idname) < 0)
                r = rl_error_set(err, -errno, "rename tmp/%s into snapshots/", idname);
        if (r < 0) {
                /* The entry may have reached the disk (a failed fdatasync may have written
                 * it): a replay would publish what failed, unless the tree is in trash/,
                 * which the replay takes for removed. */
                rl_error_prefix(err, r, "publish snapshots/%s", idname);
                if (renameat(s->tmp_fd, idname, s->trash_fd, idname) < 0) {
                        /* Left whole in tmp/: deleting it could leave half a tree for a
                         * replay to publish. The next open sweeps it, or publishes it. */
                        rl_error_set(err, r,
                                     "publish snapshots/%s failed, and moving it to trash/ "
                                     "failed too (%m): the next open may publish it",
                                     idname);
                        *keep_tmp = true;
                } else if (fsync(s->trash_fd) < 0) {
                        rl_error_set(err, r,
                                     "publish snapshots/%s failed, and flushing its move to "
                                     "trash/ failed too (%m): the next open may publish it",
                                     idname);
                }
                kick = true;
                goto out;
        }
        s->unsettled[s->n_unsettled++] = m->id;
        kick = s->n_unsettled >= SETTLE_BATCH;
out:
        pthread_mutex_unlock(&s->publish_lock);
        if (kick)
                trash_kick(s);
        return r;
}

static int create_snapshot(rl_store *s, rl_kind kind, const char *key, const char *parent_key,
                           const rl_label *labels, size_t n_labels,
                           const rl_prepare_options *popts, const layer_fill *fill,
                           rl_error *err)
{
        const char *verb = kind == RL_KIND_VIEW        ? "view"
                           : kind == RL_KIND_COMMITTED ? "commit layer"
                                                       : "prepare";
        json_t *lj = NULL;
        snap *n = NULL, *parent = NULL;
        int r;

        r = check_key("key", key, err);
        if (r < 0)
                return rl_error_prefix(err, r, "%s", verb);
        if (parent_key && !parent_key[0])
                parent_key = NULL;
        if (parent_key && (r = check_key("parent", parent_key, err)) < 0)
                return rl_error_prefix(err, r, "%s '%s'", verb, key);
        if (popts && popts->ephemeral && popts->durable)
                return rl_error_set(err, -EINVAL, "%s '%s': ephemeral and durable at once",
                                    verb, key);
        r = rl_meta_labels_from(labels, n_labels, &lj, err);
        if (r < 0)
                return rl_error_prefix(err, r, "%s '%s'", verb, key);

        pthread_mutex_lock(&s->lock);
        if (s->closed) {
                r = closed_error(s, err);
                goto out_unlock;
        }
        /* Every wait first (find_idle may let go of the lock), then the checks that must
         * hold until the insert below, with the lock kept throughout. */
        if (parent_key) {
                parent = find_idle(s, parent_key);
                if (!parent) {
                        r = rl_error_set(err, -ENOENT, "%s '%s': parent '%s' not found", verb,
                                         key, parent_key);
                        goto out_unlock;
                }
                if (parent->kind != RL_KIND_COMMITTED) {
                        r = rl_error_set(err, -EBUSY,
                                         "%s '%s': parent '%s' is %s; only a committed snapshot "
                                         "can be a parent",
                                         verb, key, parent_key, rl_kind_to_string(parent->kind));
                        goto out_unlock;
                }
        }
        if (find(s, key)) {
                r = rl_error_set(err, -EEXIST, "%s '%s': the key exists", verb, key);
                goto out_unlock;
        }
        n = calloc(1, sizeof(*n));
        if (!n || !(n->name = strdup(key))) {
                r = rl_error_set(err, -ENOMEM, "%s '%s'", verb, key);
                goto out_unlock;
        }
        r = alloc_id(s, &n->id, err);
        if (r < 0) {
                rl_error_prefix(err, r, "%s '%s'", verb, key);
                goto out_unlock;
        }
        n->kind = kind;
        n->parent = parent;
        n->ephemeral = popts && popts->ephemeral && kind != RL_KIND_COMMITTED;
        n->labels = TAKE_PTR(lj);
        n->created_ns = n->updated_ns = now_realtime();
        n->pending = true;
        r = insert(s, n);
        if (r < 0) {
                rl_error_set(err, r, "%s '%s'", verb, key);
                goto out_unlock;
        }
        if (parent)
                parent->pins++;
        unsigned pool_want = parent ? pool_label(parent) : 0;
        pthread_mutex_unlock(&s->lock);

        /* The long part, outside the lock: other keys go on meanwhile. */
        r = build_and_publish(s, n, parent, popts, fill, err);
        if (parent && !fill && s->pool)
                rl_pool_note(s->pool, parent->id, popts, pool_want);

        pthread_mutex_lock(&s->lock);
        if (parent)
                parent->pins--;
        if (r < 0) {
                unlink_snap(s, n);
                snap_free(n);
                rl_error_prefix(err, r, "%s '%s'", verb, key);
        } else {
                n->pending = false;
                if (parent)
                        parent->children++;
        }
        pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->lock);
        return r;

out_unlock:
        pthread_mutex_unlock(&s->lock);
        if (n) {
                n->labels = n->labels ? n->labels : TAKE_PTR(lj);
                snap_free(n);
        }
        json_decref(lj);
        return r;
}

static int do_prepare(rl_store *s, const char *key, const char *parent,
                               const rl_label *labels, size_t n_labels,
                               const rl_prepare_options *opts, rl_error *err)
{
        return create_snapshot(s, RL_KIND_ACTIVE, key, parent, labels, n_labels, opts, NULL, err);
}

static int do_view(rl_store *s, const char *key, const char *parent,
                            const rl_label *labels, size_t n_labels,
                            const rl_prepare_options *opts, rl_error *err)
{
        return create_snapshot(s, RL_KIND_VIEW, key, parent, labels, n_labels, opts, NULL, err);
}

static int do_commit_layer(rl_store *s, const char *name, const char *parent,
                           const rl_label *labels, size_t n_labels, int tar_fd,
                           const rl_apply_options *opts, rl_layer_stats *ret, rl_error *err)
{
        rl_layer_stats st;
        layer_fill fill = { tar_fd, opts, ret ? ret : &st };
        return create_snapshot(s, RL_KIND_COMMITTED, name, parent, labels, n_labels, NULL, &fill,
                               err);
}

/* --- commit, update, remove ------------------------------------------------------------- */

/* The directory of n (busy, or under s->lock). */
static int open_snapdir(rl_store *s, const snap *n, rl_error *err)
{
        char idname[24];
        snprintf(idname, sizeof(idname), "%" PRIu64, n->id);
        int fd = openat(home_fd(s, n), idname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return rl_error_set(err, -errno, "open %s/%s", home_name(s, n), idname);
        return fd;
}

/*
 * Make a's tree and record durable before it becomes a committed snapshot: a layer must
 * survive a power cut whole, the files a container wrote into it included. An ephemeral one
 * moves to snapshots/ first (its record still says active, flushed by the syncfs before the
 * move), so that at every instant it is either in ephemeral/ (thrown away after a reboot:
 * the commit did not return) or in snapshots/, whole. a is busy.
 */
static int commit_flush(rl_store *s, snap *a, rl_error *err)
{
        char idname[24];
        if (!s->opts.no_sync) {
                _cleanup_close_ int tree = open_tree(s, a, err);
                if (tree < 0)
                        return tree;
                if (syncfs(tree) < 0)
                        return rl_error_set(err, -errno, "syncfs");
        }
        if (!a->ephemeral)
                return 0;
        snprintf(idname, sizeof(idname), "%" PRIu64, a->id);
        if (renameat(s->eph_fd, idname, s->snaps_fd, idname) < 0)
                return rl_error_set(err, -errno, "move %s/%s to snapshots/", s->eph_dir, idname);
        pthread_mutex_lock(&s->lock);
        a->ephemeral = false;
        pthread_mutex_unlock(&s->lock);
        /* The rename is durable once snapshots/ is (the record's write syncs only the
         * snapshot's own directory). */
        if (!s->opts.no_sync && fsync(s->snaps_fd) < 0)
                return rl_error_set(err, -errno, "fsync snapshots/");
        return 0;
}

/* Under s->lock, for a busy snapshot: done writing; wake whoever waits for it. */
static void release(rl_store *s, snap *n)
{
        n->busy = false;
        pthread_cond_broadcast(&s->idle);
}

static int do_commit(rl_store *s, const char *name, const char *key,
                              const rl_label *labels, size_t n_labels, rl_error *err)
{
        _cleanup_close_ int dir = -EBADF;
        json_t *lj = NULL;
        snap *a, *c = NULL;
        int r;

        if ((r = check_key("key", key, err)) < 0 || (r = check_key("name", name, err)) < 0)
                return rl_error_prefix(err, r, "commit");
        r = rl_meta_labels_from(labels, n_labels, &lj, err);
        if (r < 0)
                return rl_error_prefix(err, r, "commit '%s'", key);

        pthread_mutex_lock(&s->lock);
        if (s->closed) {
                r = closed_error(s, err);
                goto out_unlock;
        }
        a = find_idle(s, key);
        if (!a) {
                r = rl_error_set(err, -ENOENT, "commit '%s': not found", key);
                goto out_unlock;
        }
        if (a->kind != RL_KIND_ACTIVE) {
                r = rl_error_set(err, -EBUSY,
                                 "commit '%s': it is %s; only an active snapshot can be committed",
                                 key, rl_kind_to_string(a->kind));
                goto out_unlock;
        }
        if (find(s, name)) {
                r = rl_error_set(err, -EEXIST, "commit '%s' as '%s': the name exists", key, name);
                goto out_unlock;
        }
        /* The committed snapshot is the active one, re-keyed: same id, same tree, only the
         * record changes, and pins others hold on it stay valid. Its new name is held by a
         * pending placeholder while the record is written. */
        c = calloc(1, sizeof(*c));
        if (!c || !(c->name = strdup(name))) {
                r = rl_error_set(err, -ENOMEM, "commit '%s'", key);
                goto out_unlock;
        }
        c->id = a->id;
        c->kind = RL_KIND_COMMITTED;
        c->parent = a->parent;
        c->labels = TAKE_PTR(lj);
        c->created_ns = c->updated_ns = now_realtime();
        c->pending = true;
        r = insert(s, c);
        if (r < 0) {
                rl_error_set(err, r, "commit '%s'", key);
                goto out_unlock;
        }
        a->busy = true;
        pthread_mutex_unlock(&s->lock);

        r = commit_flush(s, a, err);
        if (r == 0)
                r = dir = open_snapdir(s, a, err);
        rl_meta m;
        meta_of(c, &m);
        if (r >= 0)
                r = rl_meta_write(dir, &m, err);

        pthread_mutex_lock(&s->lock);
        unlink_snap(s, c);
        if (r < 0) {
                rl_error_prefix(err, r, "commit '%s'", key);
        } else {
                unlink_snap(s, a);
                free(a->name);
                json_decref(a->labels);
                a->name = TAKE_PTR(c->name);
                a->labels = TAKE_PTR(c->labels);
                a->kind = RL_KIND_COMMITTED;
                a->created_ns = c->created_ns;
                a->updated_ns = c->updated_ns;
                /* Two entries just left the table: re-inserting one cannot need to grow it. */
                (void)insert(s, a);
                if (s->pool && pool_label(a))
                        rl_pool_note(s->pool, a->id, NULL, pool_label(a));
        }
        snap_free(c);
        c = NULL;
        release(s, a);
        pthread_mutex_unlock(&s->lock);
        return r;

out_unlock:
        pthread_mutex_unlock(&s->lock);
        if (c) {
                free(c->name);
                json_decref(c->labels);
                free(c);
        }
        json_decref(lj);
        return r;
}

static int do_remove(rl_store *s, const char *key, rl_error *err)
{
        char idname[24];
        snap *n;
        int r;

        if ((r = check_key("key", key, err)) < 0)
                return rl_error_prefix(err, r, "remove");
        pthread_mutex_lock(&s->lock);
        if (s->closed) {
                r = closed_error(s, err);
                goto out_unlock;
        }
        n = find_idle(s, key);
        if (!n) {
                r = rl_error_set(err, -ENOENT, "remove '%s': not found", key);
                goto out_unlock;
        }
        if (n->children) {
                r = rl_error_set(err, -EBUSY,
                                 "remove '%s': %u snapshot%s use%s it as parent; remove them first",
                                 key, n->children, n->children == 1 ? "" : "s",
                                 n->children == 1 ? "s" : "");
                goto out_unlock;
        }
        if (n->pins) {
                r = rl_error_set(err, -EBUSY, "remove '%s': in use (a snapshot is being prepared "
                                              "from it, or its usage measured); try again",
                                 key);
                goto out_unlock;
        }
        n->busy = true;
        pthread_mutex_unlock(&s->lock);

        /* One rename takes the snapshot out of the store; deleting the tree is the trash
         * thread's work, so this returns at once whatever the tree's size. */
        snprintf(idname, sizeof(idname), "%" PRIu64, n->id);
        r = RL_NERRNO(renameat(home_fd(s, n), idname, s->trash_fd, idname));
        /* No fsync: once renamed it is gone for every reader, and a power cut before the
         * journal reaches the disk can only bring it back whole (an fsync here would wait
         * for the journal, which holds the trash thread's deletions: 10-80 ms, measured). */

        uint64_t id = n->id;
        pthread_mutex_lock(&s->lock);
        if (r < 0) {
                release(s, n);
                rl_error_set(err, r, "remove '%s': move %s/%s to trash/", key, home_name(s, n),
                             idname);
        } else {
                if (n->parent)
                        n->parent->children--;
                /* An ephemeral one too: after a shutdown without a reboot its record still
                 * reads, and a journalled Prepare of its key would make two of one key. */
                note_removal(s, n->name);
                unlink_snap(s, n);
                snap_free(n);
                pthread_cond_broadcast(&s->idle);
        }
        pthread_mutex_unlock(&s->lock);
        /* Its clones in the pool go too; outside the store's lock, which no other call
         * should wait for behind the pool's (nothing adds clones of an id no longer in the
         * index: a Prepare from it would have pinned it, and the Remove refused). */
        if (r == 0 && s->pool)
                rl_pool_forget(s->pool, id);
        if (r == 0)
                trash_kick(s);
        return r;

out_unlock:
        pthread_mutex_unlock(&s->lock);
        return r;
}

/*
 * A layer onto an active snapshot: into a clone of its tree, which then takes the tree's
 * place in one rename (RENAME_EXCHANGE), so a failed apply changes nothing. The snapshot is
 * busy meanwhile: a commit or remove of it waits.
 */
static int do_apply(rl_store *s, const char *key, int tar_fd, const rl_apply_options *opts,
                    rl_layer_stats *ret, rl_error *err)
{
        char fs[48], tmpname[48], trashname[64];
        _cleanup_close_ int src = -EBADF, tree = -EBADF, dir = -EBADF;
        rl_layer_stats st;
        snap *n;
        int r;

        if ((r = check_key("key", key, err)) < 0)
                return rl_error_prefix(err, r, "apply");
        pthread_mutex_lock(&s->lock);
        n = s->closed ? NULL : find_idle(s, key);
        if (s->closed || !n || n->kind != RL_KIND_ACTIVE) {
                r = s->closed ? closed_error(s, err)
                    : !n      ? rl_error_set(err, -ENOENT, "apply onto '%s': not found", key)
                              : rl_error_set(err, -EBUSY,
                                             "apply onto '%s': it is %s; a layer goes onto an "
                                             "active snapshot",
                                             key, rl_kind_to_string(n->kind));
                pthread_mutex_unlock(&s->lock);
                return r;
        }
        n->busy = true;
        pthread_mutex_unlock(&s->lock);

        snprintf(fs, sizeof(fs), "%" PRIu64 "/fs", n->id);
        snprintf(tmpname, sizeof(tmpname), "%" PRIu64 "-apply", n->id);
        src = r = open_tree(s, n, err);
        if (src < 0)
                goto out;
        rl_tree_options t = { .jobs = s->opts.jobs,
                              .flags = RL_TREE_SUBVOLUME,
                              .cancel = opts ? opts->cancel : NULL };
        r = rl_tree_clone(src, s->tmp_fd, tmpname, &t, NULL, err);
        if (r < 0)
                goto out;
        tree = openat(s->tmp_fd, tmpname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (tree < 0)
                r = rl_error_set(err, -errno, "open tmp/%s", tmpname);
        else
                r = rl_layer_apply(tree, tar_fd, opts, ret ? ret : &st, err);
        if (r == 0 && !s->opts.no_sync && !n->ephemeral && syncfs(tree) < 0)
                r = rl_error_set(err, -errno, "syncfs");
        if (r == 0 && (dir = open_snapdir(s, n, err)) < 0)
                r = dir;
        /* Moving a directory to another parent rewrites its ".." entry, and XFS counts that
         * as a change of its mtime: the tree's root keeps the times the layer gave it. */
        struct stat root_st;
        if (r == 0 && fstat(tree, &root_st) < 0)
                r = rl_error_set(err, -errno, "stat tmp/%s", tmpname);
        if (r == 0 && renameat2(s->tmp_fd, tmpname, dir, "fs", RENAME_EXCHANGE) < 0)
                r = rl_error_set(err, -errno, "replace %s/%s", home_name(s, n), fs);
        if (r == 0 && futimens(tree, (struct timespec[]){ root_st.st_atim, root_st.st_mtim }) < 0)
                r = rl_error_set(err, -errno, "set the times of %s/%s", home_name(s, n), fs);
        if (r < 0) {
                rl_tree_remove(s->tmp_fd, tmpname, s->opts.jobs, NULL, NULL);
                goto out;
        }
        if (!n->ephemeral)
                (void)fsync(dir);
        /* The old tree is in tmp/ now: the trash thread deletes it. */
        snprintf(trashname, sizeof(trashname), "%" PRIu64 "-replaced-%" PRIu64, n->id,
                 rl_now_ns());
        if (renameat(s->tmp_fd, tmpname, s->trash_fd, trashname) == 0)
                trash_kick(s);
out:
        if (r < 0)
                rl_error_prefix(err, r, "apply onto '%s'", key);
        pthread_mutex_lock(&s->lock);
        release(s, n);
        pthread_mutex_unlock(&s->lock);
        return r;
}

/*
 * The trees of key and of its parent (-1: none), opened, both pinned so that neither is
 * removed while they are read. unpin_pair undoes it.
 */
static int open_pair(rl_store *s, const char *verb, const char *key, snap **ret_n,
                     int *ret_upper, int *ret_lower, rl_error *err)
{
        snap *n;
        int r;

        if ((r = check_key("key", key, err)) < 0)
                return rl_error_prefix(err, r, "%s", verb);
        pthread_mutex_lock(&s->lock);
        n = s->closed ? NULL : find_idle(s, key);
        if (s->closed || !n) {
                r = s->closed ? closed_error(s, err)
                              : rl_error_set(err, -ENOENT, "%s '%s': not found", verb, key);
                pthread_mutex_unlock(&s->lock);
                return r;
        }
        n->pins++;
        if (n->parent)
                n->parent->pins++;
        /* Opened under the lock: a commit may move an ephemeral tree (open_snapdir). */
        *ret_n = n;
        *ret_lower = -EBADF;
        *ret_upper = r = open_tree(s, n, err);
        if (r >= 0 && n->parent)
                *ret_lower = r = open_tree(s, n->parent, err);
        pthread_mutex_unlock(&s->lock);
        return r < 0 ? rl_error_prefix(err, r, "%s '%s'", verb, key) : 0;
}

static void unpin_pair(rl_store *s, snap *n)
{
        pthread_mutex_lock(&s->lock);
        n->pins--;
        if (n->parent)
                n->parent->pins--;
        pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->lock);
}

static int do_diff(rl_store *s, const char *key, rl_change_fn fn, void *userdata,
                   rl_diff_stats *ret, rl_error *err)
{
        _cleanup_close_ int upper = -EBADF, lower = -EBADF;
        snap *n = NULL;
        int r = open_pair(s, "diff", key, &n, &upper, &lower, err);
        if (r == 0 && (r = rl_tree_diff(lower, upper, fn, userdata, ret, err)) < 0)
                rl_error_prefix(err, r, "diff '%s'", key);
        if (n)
                unpin_pair(s, n);
        return r;
}

static int do_export(rl_store *s, const char *key, int out_fd, const rl_export_options *opts,
                     rl_layer_stats *ret, rl_error *err)
{
        _cleanup_close_ int upper = -EBADF, lower = -EBADF;
        snap *n = NULL;
        int r = open_pair(s, "export", key, &n, &upper, &lower, err);
        if (r == 0 && (r = rl_layer_export(lower, upper, out_fd, opts, ret, err)) < 0)
                rl_error_prefix(err, r, "export '%s'", key);
        if (n)
                unpin_pair(s, n);
        return r;
}

static int do_stat(rl_store *s, const char *key, rl_info *ret, rl_error *err)
{
        int r;

        if ((r = check_key("key", key, err)) < 0)
                return rl_error_prefix(err, r, "stat");
        pthread_mutex_lock(&s->lock);
        snap *n = s->closed ? NULL : find_idle(s, key);
        if (s->closed)
                r = closed_error(s, err);
        else if (!n)
                r = rl_error_set(err, -ENOENT, "stat '%s': not found", key);
        else if (fill_info(n, ret) < 0)
                r = rl_error_set(err, -ENOMEM, "stat '%s'", key);
        pthread_mutex_unlock(&s->lock);
        return r;
}

/* New labels from the current ones, info's and the field paths. */
static int updated_labels(const snap *n, const rl_info *info, const char *const *paths,
                          size_t n_paths, json_t **ret, rl_error *err)
{
        json_t *given = NULL, *out = NULL;
        int r = rl_meta_labels_from(info->labels, info->n_labels, &given, err);
        if (r < 0)
                return r;
        if (n_paths == 0) {
                *ret = given;
                return 0;
        }
        out = json_deep_copy(n->labels);
        if (!out) {
                json_decref(given);
                return rl_error_set(err, -ENOMEM, "labels");
        }
        for (size_t i = 0; i < n_paths; i++) {
                const char *p = paths[i];
                if (!p || strcmp(p, "labels") == 0) {
                        json_decref(out);
                        out = json_deep_copy(given);
                        if (!out) {
                                json_decref(given);
                                return rl_error_set(err, -ENOMEM, "labels");
                        }
                } else if (strncmp(p, "labels.", 7) == 0 && p[7]) {
                        json_t *v = json_object_get(given, p + 7);
                        if (v)
                                json_object_set(out, p + 7, v);
                        else
                                json_object_del(out, p + 7);
                } else {
                        json_decref(out);
                        json_decref(given);
                        return rl_error_set(err, -EINVAL,
                                            "cannot update field '%s': only labels and "
                                            "labels.KEY can change",
                                            p);
                }
        }
        json_decref(given);
        *ret = out;
        return 0;
}

static int do_update(rl_store *s, const rl_info *info, const char *const *fieldpaths,
                              size_t n_fieldpaths, rl_info *ret, rl_error *err)
{
        _cleanup_close_ int dir = -EBADF;
        json_t *labels = NULL;
        snap *n;
        int r;

        if ((r = check_key("key", info ? info->name : NULL, err)) < 0)
                return rl_error_prefix(err, r, "update");
        pthread_mutex_lock(&s->lock);
        if (s->closed) {
                r = closed_error(s, err);
                goto out_unlock;
        }
        n = find_idle(s, info->name);
        if (!n) {
                r = rl_error_set(err, -ENOENT, "update '%s': not found", info->name);
                goto out_unlock;
        }
        r = updated_labels(n, info, fieldpaths, n_fieldpaths, &labels, err);
        if (r == 0) {
                r = rl_meta_labels_check(labels, err);
                if (r < 0)
                        json_decref(labels);
        }
        if (r < 0) {
                rl_error_prefix(err, r, "update '%s'", info->name);
                goto out_unlock;
        }
        n->busy = true;
        pthread_mutex_unlock(&s->lock);

        snap next = *n;
        next.labels = labels;
        next.updated_ns = now_realtime();
        rl_meta m;
        meta_of(&next, &m);
        dir = open_snapdir(s, n, err);
        r = dir < 0 ? dir : rl_meta_write(dir, &m, err);

        pthread_mutex_lock(&s->lock);
        if (r < 0) {
                json_decref(labels);
                rl_error_prefix(err, r, "update '%s'", info->name);
        } else {
                json_decref(n->labels);
                n->labels = labels;
                n->updated_ns = next.updated_ns;
                if (ret && fill_info(n, ret) < 0)
                        r = rl_error_set(err, -ENOMEM, "update '%s'", info->name);
                /* Labelled for the pool: warm it now, not at the next Prepare. */
                if (s->pool && n->kind == RL_KIND_COMMITTED && pool_label(n))
                        rl_pool_note(s->pool, n->id, NULL, pool_label(n));
        }
        release(s, n);
out_unlock:
        pthread_mutex_unlock(&s->lock);
        return r;
}

/* --- walk ------------------------------------------------------------------------------- */

static const char *snap_field(void *obj, const char *const *path, size_t n)
{
        const snap *p = obj;
        if (n == 1 && !strcmp(path[0], "kind"))
                return rl_kind_to_string(p->kind);
        if (n == 1 && !strcmp(path[0], "name"))
                return p->name;
        /* As containerd: every snapshot has a parent field, "" for none. */
        if (n == 1 && !strcmp(path[0], "parent"))
                return p->parent ? p->parent->name : "";
        if (n == 2 && !strcmp(path[0], "labels"))
                return json_string_value(json_object_get(p->labels, path[1]));
        return NULL;
}

static int do_walk(rl_store *s, const char *const *filters, size_t n_filters,
                            rl_store_walk_fn fn, void *userdata, rl_error *err)
{
        _cleanup_(rl_filter_freep) rl_filter *f = NULL;
        rl_info *infos = NULL;
        size_t n = 0;
        int r;

        r = rl_filter_parse(filters, n_filters, &f, err);
        if (r < 0)
                return rl_error_prefix(err, r, "walk");
        /* Copy out under the lock, call back outside it: fn may call the store. */
        pthread_mutex_lock(&s->lock);
        if (s->closed) {
                pthread_mutex_unlock(&s->lock);
                return closed_error(s, err);
        }
        infos = calloc(s->count ? s->count : 1, sizeof(*infos));
        if (!infos) {
                pthread_mutex_unlock(&s->lock);
                return rl_error_set(err, -ENOMEM, "walk");
        }
        for (size_t i = 0; i < s->n_buckets && r == 0; i++)
                for (snap *p = s->buckets[i]; p && r == 0; p = p->hnext)
                        if (!p->pending && rl_filter_match(f, snap_field, p))
                                r = fill_info(p, &infos[n++]) < 0 ? -ENOMEM : 0;
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
                rl_error_set(err, r, "walk");
        for (size_t i = 0; i < n; i++) {
                if (r == 0) {
                        r = fn(&infos[i], userdata);
                        if (r < 0)
                                rl_error_set(err, r, "walk: stopped at '%s'", infos[i].name);
                }
                rl_info_clear(&infos[i]);
        }
        free(infos);
        return r;
}

/* --- usage, mounts, cleanup ---------------------------------------------------------------- */

static int do_usage(rl_store *s, const char *key, rl_usage *ret, rl_error *err)
{
        snap *n;
        int r;

        if ((r = check_key("key", key, err)) < 0)
                return rl_error_prefix(err, r, "usage");
        pthread_mutex_lock(&s->lock);
        n = s->closed ? NULL : find_idle(s, key);
        if (s->closed || !n) {
                r = s->closed ? closed_error(s, err)
                              : rl_error_set(err, -ENOENT, "usage '%s': not found", key);
                pthread_mutex_unlock(&s->lock);
                return r;
        }
        n->pins++; /* not removed while measured */
        /* Opened under the lock: a commit may move an ephemeral tree (open_snapdir). */
        int fd = open_tree(s, n, err);
        pthread_mutex_unlock(&s->lock);

        r = fd < 0 ? fd : rl_usage_tree(fd, s->opts.jobs, ret, err);
        if (fd >= 0)
                close(fd);
        if (r < 0)
                rl_error_prefix(err, r, "usage '%s'", key);

        pthread_mutex_lock(&s->lock);
        n->pins--;
        pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->lock);
        return r;
}

static int do_mounts(rl_store *s, const char *key, rl_mount *ret, rl_error *err)
{
        rl_mount m = {};
        snap *n;
        int r;

        if ((r = check_key("key", key, err)) < 0)
                return rl_error_prefix(err, r, "mounts");
        pthread_mutex_lock(&s->lock);
        n = s->closed ? NULL : find_idle(s, key);
        if (s->closed || !n) {
                r = s->closed ? closed_error(s, err)
                              : rl_error_set(err, -ENOENT, "mounts '%s': not found", key);
                pthread_mutex_unlock(&s->lock);
                return r;
        }
        bool rw = n->kind == RL_KIND_ACTIVE;
        if (asprintf(&m.source, "%s/%s/%" PRIu64 "/fs", s->root, home_name(s, n), n->id) < 0)
                m.source = NULL;
        pthread_mutex_unlock(&s->lock);

        m.type = strdup("bind");
        m.options = calloc(2, sizeof(*m.options));
        if (m.options) {
                m.options[0] = strdup("rbind");
                m.options[1] = strdup(rw ? "rw" : "ro");
                m.n_options = 2;
        }
        if (!m.source || !m.type || !m.options || !m.options[0] || !m.options[1]) {
                rl_mount_clear(&m);
                return rl_error_set(err, -ENOMEM, "mounts '%s'", key);
        }
        *ret = m;
        return 0;
}

static int do_cleanup(rl_store *s, rl_error *err)
{
        pthread_mutex_lock(&s->lock);
        bool closed = s->closed;
        pthread_mutex_unlock(&s->lock);
        if (closed)
                return closed_error(s, err);

        pthread_mutex_lock(&s->trash_lock);
        s->trash_requested++;
        uint64_t want = s->trash_requested;
        pthread_cond_signal(&s->trash_wake);
        while (s->trash_done < want && !s->trash_stop)
                pthread_cond_wait(&s->trash_done_cond, &s->trash_lock);
        int r = s->trash_stop ? -ESHUTDOWN : s->trash_r;
        if (s->trash_stop)
                rl_error_set(err, r, "cleanup: the store is closing");
        if (r < 0 && r != -ESHUTDOWN && err)
                *err = s->trash_err;
        pthread_mutex_unlock(&s->trash_lock);
        return r < 0 ? rl_error_prefix(err, r, "cleanup") : 0;
}

/* --- the public calls: each one counted in flight, so close can wait for it ------------- */

static int call_enter(rl_store *s, rl_error *err)
{
        pthread_mutex_lock(&s->lock);
        if (s->closed) {
                pthread_mutex_unlock(&s->lock);
                return closed_error(s, err);
        }
        s->calls++;
        pthread_mutex_unlock(&s->lock);
        return 0;
}

static int call_leave(rl_store *s, int r)
{
        pthread_mutex_lock(&s->lock);
        if (--s->calls == 0)
                pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->lock);
        return r;
}

#define CALL(s, err, expr) (call_enter((s), (err)) < 0 ? -ESHUTDOWN : call_leave((s), (expr)))

RL_EXPORT int rl_store_prepare(rl_store *s, const char *key, const char *parent,
                               const rl_label *labels, size_t n_labels,
                               const rl_prepare_options *opts, rl_error *err)
{
        return CALL(s, err, do_prepare(s, key, parent, labels, n_labels, opts, err));
}

RL_EXPORT int rl_store_view(rl_store *s, const char *key, const char *parent,
                            const rl_label *labels, size_t n_labels,
                            const rl_prepare_options *opts, rl_error *err)
{
        return CALL(s, err, do_view(s, key, parent, labels, n_labels, opts, err));
}

RL_EXPORT int rl_store_commit(rl_store *s, const char *name, const char *key,
                              const rl_label *labels, size_t n_labels, rl_error *err)
{
        return CALL(s, err, do_commit(s, name, key, labels, n_labels, err));
}

RL_EXPORT int rl_store_remove(rl_store *s, const char *key, rl_error *err)
{
        return CALL(s, err, do_remove(s, key, err));
}

RL_EXPORT int rl_store_stat(rl_store *s, const char *key, rl_info *ret, rl_error *err)
{
        return CALL(s, err, do_stat(s, key, ret, err));
}

RL_EXPORT int rl_store_update(rl_store *s, const rl_info *info, const char *const *fieldpaths,
                              size_t n_fieldpaths, rl_info *ret, rl_error *err)
{
        return CALL(s, err, do_update(s, info, fieldpaths, n_fieldpaths, ret, err));
}

RL_EXPORT int rl_store_walk(rl_store *s, const char *const *filters, size_t n_filters,
                            rl_store_walk_fn fn, void *userdata, rl_error *err)
{
        return CALL(s, err, do_walk(s, filters, n_filters, fn, userdata, err));
}

RL_EXPORT int rl_store_usage(rl_store *s, const char *key, rl_usage *ret, rl_error *err)
{
        return CALL(s, err, do_usage(s, key, ret, err));
}

RL_EXPORT int rl_store_mounts(rl_store *s, const char *key, rl_mount *ret, rl_error *err)
{
        return CALL(s, err, do_mounts(s, key, ret, err));
}

RL_EXPORT int rl_store_apply(rl_store *s, const char *key, int tar_fd,
                             const rl_apply_options *opts, rl_layer_stats *ret, rl_error *err)
{
        return CALL(s, err, do_apply(s, key, tar_fd, opts, ret, err));
}

RL_EXPORT int rl_store_commit_layer(rl_store *s, const char *name, const char *parent,
                                    const rl_label *labels, size_t n_labels, int tar_fd,
                                    const rl_apply_options *opts, rl_layer_stats *ret,
                                    rl_error *err)
{
        return CALL(s, err,
                    do_commit_layer(s, name, parent, labels, n_labels, tar_fd, opts, ret, err));
}

RL_EXPORT int rl_store_diff(rl_store *s, const char *key, rl_change_fn fn, void *userdata,
                            rl_diff_stats *ret, rl_error *err)
{
        return CALL(s, err, do_diff(s, key, fn, userdata, ret, err));
}

RL_EXPORT int rl_store_export(rl_store *s, const char *key, int out_fd,
                              const rl_export_options *opts, rl_layer_stats *ret, rl_error *err)
{
        return CALL(s, err, do_export(s, key, out_fd, opts, ret, err));
}

static int do_pool_stats(rl_store *s, rl_pool_stats *ret)
{
        if (s->pool)
                rl_pool_get_stats(s->pool, ret);
        return 0;
}

/* A call like the others, so that a close waits for it before the pool is freed. */
RL_EXPORT void rl_store_pool_stats(rl_store *s, rl_pool_stats *ret)
{
        *ret = (rl_pool_stats){};
        (void)CALL(s, NULL, do_pool_stats(s, ret));
}

RL_EXPORT int rl_store_cleanup(rl_store *s, rl_error *err)
{
        return CALL(s, err, do_cleanup(s, err));
}
