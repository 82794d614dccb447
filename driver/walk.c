/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * walk.c owns traversal: the work stack, the worker threads, directory listing with large
 * getdents64 batches, post-order completion, cancellation and the first error.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util.h"
#include "walk.h"

#define GETDENTS_BUFFER (64u * 1024)
#define BATCH_ENTRIES 256u           /* non-directory entries per task */
#define BATCH_BYTES (16u * 1024)    /* or this many bytes of names, whichever comes first */

typedef struct walk walk;
typedef struct node node;

struct node {
        rl_walk_dir pub;
        walk *w;
        atomic_uint pending; /* listing + queued children + batches not yet done */
        bool entered;
        char *path_buf;
};

/* A batch of non-directory entries: names NUL-separated, each preceded by its d_type. */
typedef struct batch {
        size_t count, used;
        char data[];
} batch;

typedef struct task {
        node *n;
        batch *b; /* NULL: open and list n; else: visit b's entries of n */
} task;

struct walk {
        const rl_walk_ops *ops;
        void *ctx;
        const atomic_bool *cancel; /* the caller's: stop when it reads true */

        pthread_mutex_t lock; /* guards the stack, done, and err */
        pthread_cond_t cond;
        task *stack;
        size_t len, cap;
        bool done;

        atomic_bool cancelled;
        int r;
        rl_error err;
};

typedef struct worker {
        walk *w;
        void *scratch;
        char *dents;
        rl_error err;
} worker;

struct linux_dirent64 {
        uint64_t d_ino;
        int64_t d_off;
        unsigned short d_reclen;
        unsigned char d_type;
        char d_name[];
};

/*
 * Open a directory to list it. O_NOATIME: listing must not change the tree it reads (under
 * relatime, getdents updates a directory's atime once a day); only the owner or CAP_FOWNER
 * may ask for it, so anyone else lists the ordinary way.
 */
static int open_dir(int dir_fd, const char *name)
{
        int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
        int fd = openat(dir_fd, name, flags | O_NOATIME);
        if (fd < 0 && errno == EPERM)
                fd = openat(dir_fd, name, flags);
        return fd;
}

/* Has the caller asked the walk to stop? Then say where it stopped. */
static int caller_cancelled(worker *wk, const node *n, const char *name)
{
        const atomic_bool *c = wk->w->cancel;
        if (!c || !atomic_load_explicit(c, memory_order_relaxed))
                return 0;
        if (name)
                return rl_error_set(&wk->err, -ECANCELED, "interrupted at '%s%s%s'",
                                    n->pub.depth ? n->pub.path : "", n->pub.depth ? "/" : "",
                                    name);
        return rl_error_set(&wk->err, -ECANCELED, "interrupted at '%s'", n->pub.path);
}

/* Record the first error and cancel everything else. */
static void fail(walk *w, int r, const rl_error *err)
{
        pthread_mutex_lock(&w->lock);
        if (w->r == 0) {
                w->r = r;
                if (err && err->code)
                        w->err = *err;
                else
                        rl_error_set(&w->err, r, "walk");
        }
        atomic_store(&w->cancelled, true);
        pthread_mutex_unlock(&w->lock);
}

static int push(walk *w, node *n, batch *b)
{
        pthread_mutex_lock(&w->lock);
        if (w->len == w->cap) {
                size_t cap = w->cap ? w->cap * 2 : 256;
                task *s = realloc(w->stack, cap * sizeof(*s));
                if (!s) {
                        pthread_mutex_unlock(&w->lock);
                        return -ENOMEM;
                }
                w->stack = s;
                w->cap = cap;
        }
        w->stack[w->len++] = (task){ n, b };
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
        return 0;
}

static node *node_new(walk *w, node *parent, const char *name, size_t name_len)
{
        node *n = calloc(1, sizeof(*n));
        if (!n)
                return NULL;
        if (parent) {
                size_t plen = parent->pub.depth == 0 ? 0 : strlen(parent->pub.path);
                n->path_buf = malloc(plen + 1 + name_len + 1);
                if (!n->path_buf) {
                        free(n);
                        return NULL;
                }
                if (plen) {
                        memcpy(n->path_buf, parent->pub.path, plen);
                        n->path_buf[plen++] = '/';
                }
                memcpy(n->path_buf + plen, name, name_len);
                n->path_buf[plen + name_len] = '\0';
                n->pub.name = n->path_buf + plen;
                n->pub.depth = parent->pub.depth + 1;
        } else {
                n->path_buf = strdup(".");
                if (!n->path_buf) {
                        free(n);
                        return NULL;
                }
                n->pub.name = n->path_buf;
        }
        n->pub.path = n->path_buf;
        n->pub.parent = parent ? &parent->pub : NULL;
        n->pub.fd = -EBADF;
        n->w = w;
        atomic_init(&n->pending, 1);
        return n;
}

/*
 * One unit of n's work is done. The last one completes n: leave, close, free, and pass the
 * completion on to the parent, iteratively (a deep tree must not recurse).
 */
static void complete(worker *wk, node *n)
{
        walk *w = wk->w;

        while (n && atomic_fetch_sub(&n->pending, 1) == 1) {
                node *parent = n->pub.parent ? (node *)n->pub.parent : NULL;

                if (n->entered) {
                        bool cancelled = atomic_load(&w->cancelled);
                        rl_error_clear(&wk->err);
                        int r = w->ops->leave(w->ctx, wk->scratch, &n->pub, cancelled, &wk->err);
                        if (r < 0 && !cancelled)
                                fail(w, r, &wk->err);
                }
                closep(&n->pub.fd);
                free(n->path_buf);
                free(n);
                if (!parent) {
                        pthread_mutex_lock(&w->lock);
                        w->done = true;
                        pthread_cond_broadcast(&w->cond);
                        pthread_mutex_unlock(&w->lock);
                }
                n = parent;
        }
}

static int flush_batch(worker *wk, node *n, batch **b)
{
        if (!*b || (*b)->count == 0)
                return 0;
        atomic_fetch_add(&n->pending, 1);
        int r = push(wk->w, n, *b);
        if (r < 0) {
                atomic_fetch_sub(&n->pending, 1);
                return r;
        }
        *b = NULL;
        return 0;
}

static int add_to_batch(worker *wk, node *n, batch **b, const char *name, size_t len,
                        unsigned char type)
{
        if (*b && ((*b)->count >= BATCH_ENTRIES || (*b)->used + len + 2 > BATCH_BYTES)) {
                int r = flush_batch(wk, n, b);
                if (r < 0)
                        return r;
        }
        if (!*b) {
                size_t size = BATCH_BYTES > len + 2 ? BATCH_BYTES : len + 2;
                *b = malloc(sizeof(batch) + size);
                if (!*b)
                        return -ENOMEM;
                (*b)->count = (*b)->used = 0;
        }
        char *p = (*b)->data + (*b)->used;
        p[0] = (char)type;
        memcpy(p + 1, name, len + 1);
        (*b)->used += len + 2;
        (*b)->count++;
        return 0;
}

/* Open n (unless it is the root), enter it, and list it into subdirectory and batch tasks. */
static int open_and_list(worker *wk, node *n)
{
        walk *w = wk->w;
        batch *b = NULL;
        int r;

        if (n->pub.parent) {
                if (n->pub.depth > RL_WALK_DEPTH_MAX)
                        return rl_error_set(&wk->err, -ELOOP, "'%s': deeper than %d levels",
                                            n->pub.path, RL_WALK_DEPTH_MAX);
                n->pub.fd = open_dir(n->pub.parent->fd, n->pub.name);
                if (n->pub.fd < 0)
                        return rl_error_set(&wk->err, -errno, "open directory '%s'",
                                            n->pub.path);
        }
        r = caller_cancelled(wk, n, NULL);
        if (r < 0)
                return r;
        n->entered = true;
        r = w->ops->enter(w->ctx, wk->scratch, &n->pub, &wk->err);
        if (r < 0 || r == RL_WALK_SKIP)
                return r < 0 ? r : 0;

        for (;;) {
                long got = syscall(SYS_getdents64, n->pub.fd, wk->dents, GETDENTS_BUFFER);
                if (got < 0) {
                        r = rl_error_set(&wk->err, -errno, "read directory '%s'", n->pub.path);
                        goto out_free_batch;
                }
                if (got == 0)
                        break;
                for (long off = 0; off < got;) {
                        struct linux_dirent64 *d = (void *)(wk->dents + off);
                        const char *name = d->d_name;
                        unsigned char type = d->d_type;
                        size_t len = strlen(name);

                        off += d->d_reclen;
                        if (name[0] == '.' && (len == 1 || (len == 2 && name[1] == '.')))
                                continue;
                        if (atomic_load_explicit(&w->cancelled, memory_order_relaxed)) {
                                r = -ECANCELED;
                                goto out_free_batch;
                        }
                        if (type == DT_UNKNOWN) {
                                /* Some filesystems do not say; ask, without following. */
                                struct stat st;
                                if (fstatat(n->pub.fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                                        r = rl_error_set(&wk->err, -errno, "stat '%s/%s'",
                                                         n->pub.path, name);
                                        goto out_free_batch;
                                }
                                type = IFTODT(st.st_mode);
                        }
                        if (type != DT_DIR) {
                                r = add_to_batch(wk, n, &b, name, len, type);
                                if (r < 0) {
                                        r = rl_error_set(&wk->err, r, "list '%s'", n->pub.path);
                                        goto out_free_batch;
                                }
                                continue;
                        }
                        node *c = node_new(w, n, name, len);
                        if (!c) {
                                r = rl_error_set(&wk->err, -ENOMEM, "list '%s'", n->pub.path);
                                goto out_free_batch;
                        }
                        atomic_fetch_add(&n->pending, 1);
                        r = push(w, c, NULL);
                        if (r < 0) {
                                atomic_fetch_sub(&n->pending, 1);
                                free(c->path_buf);
                                free(c);
                                r = rl_error_set(&wk->err, r, "list '%s'", n->pub.path);
                                goto out_free_batch;
                        }
                }
        }
        r = flush_batch(wk, n, &b);
        if (r < 0)
                r = rl_error_set(&wk->err, r, "list '%s'", n->pub.path);
out_free_batch:
        free(b);
        return r;
}

static int visit_batch(worker *wk, node *n, const batch *b)
{
        walk *w = wk->w;
        const char *p = b->data;

        for (size_t i = 0; i < b->count; i++) {
                unsigned char type = (unsigned char)p[0];
                const char *name = p + 1;
                size_t len = strlen(name);

                if (atomic_load_explicit(&w->cancelled, memory_order_relaxed))
                        return -ECANCELED;
                int r = caller_cancelled(wk, n, name);
                if (r < 0)
                        return r;
                r = w->ops->entry(w->ctx, wk->scratch, &n->pub, name, type, &wk->err);
                if (r < 0)
                        return r;
                p += len + 2;
        }
        return 0;
}

static void run_task(worker *wk, task t)
{
        walk *w = wk->w;
        int r = 0;

        rl_error_clear(&wk->err);
        if (!t.b) {
                if (!atomic_load(&w->cancelled))
                        r = open_and_list(wk, t.n);
        } else {
                if (!atomic_load(&w->cancelled))
                        r = visit_batch(wk, t.n, t.b);
                free(t.b);
        }
        /* -ECANCELED without a message means "stopped because of an error recorded
         * elsewhere" (a waiter whose hardlink source failed, work dropped after a failure);
         * with a message it is an error of its own (the caller cancelled). */
        if (r < 0 && !(r == -ECANCELED && wk->err.code == 0))
                fail(w, r, &wk->err);
        complete(wk, t.n);
}

static void *worker_loop(void *arg)
{
        worker *wk = arg;
        walk *w = wk->w;

        for (;;) {
                pthread_mutex_lock(&w->lock);
                while (w->len == 0 && !w->done)
                        pthread_cond_wait(&w->cond, &w->lock);
                if (w->len == 0) {
                        pthread_mutex_unlock(&w->lock);
                        return NULL;
                }
                task t = w->stack[--w->len];
                pthread_mutex_unlock(&w->lock);
                run_task(wk, t);
        }
}

static void worker_release(walk *w, worker *wk)
{
        if (wk->scratch && w->ops->worker_done)
                w->ops->worker_done(w->ctx, wk->scratch);
        free(wk->scratch);
        free(wk->dents);
}

static int worker_init(walk *w, worker *wk)
{
        *wk = (worker){ .w = w };
        wk->dents = malloc(GETDENTS_BUFFER);
        wk->scratch = calloc(1, w->ops->worker_size ? w->ops->worker_size : 1);
        if (!wk->dents || !wk->scratch) {
                worker_release(w, wk);
                return -ENOMEM;
        }
        return 0;
}

int rl_walk_run(int root_fd, const rl_walk_ops *ops, void *ctx, unsigned jobs,
                const atomic_bool *cancel, rl_error *err)
{
        _cleanup_free_ worker *workers = NULL;
        _cleanup_free_ pthread_t *threads = NULL;
        walk w = {
                .ops = ops,
                .ctx = ctx,
                .cancel = cancel,
                .lock = PTHREAD_MUTEX_INITIALIZER,
                .cond = PTHREAD_COND_INITIALIZER,
        };
        unsigned started = 0;
        int r;

        if (jobs == 0)
                jobs = rl_online_cpus();
        workers = calloc(jobs, sizeof(*workers));
        threads = calloc(jobs, sizeof(*threads));
        if (!workers || !threads)
                return rl_error_set(err, -ENOMEM, "walk");

        node *root = node_new(&w, NULL, NULL, 0);
        if (!root)
                return rl_error_set(err, -ENOMEM, "walk");
        /* A new open file description of our own, with O_NOATIME, rather than a dup. */
        root->pub.fd = open_dir(root_fd, ".");
        if (root->pub.fd < 0) {
                r = -errno;
                free(root->path_buf);
                free(root);
                return rl_error_set(err, r, "open the root directory");
        }
        r = push(&w, root, NULL);
        if (r < 0) {
                close(root->pub.fd);
                free(root->path_buf);
                free(root);
                return rl_error_set(err, r, "walk");
        }

        for (unsigned i = 0; i < jobs; i++) {
                r = worker_init(&w, &workers[i]);
                if (r < 0) {
                        fail(&w, r, NULL);
                        break;
                }
                started++;
        }
        /* Worker 0 is this thread; the others get threads of their own. A thread that
         * cannot start is not an error: fewer workers give the same tree. */
        unsigned threaded = 1;
        for (; started > 0 && threaded < started; threaded++)
                if (pthread_create(&threads[threaded], NULL, worker_loop, &workers[threaded]))
                        break;
        if (started > 0) {
                worker_loop(&workers[0]);
        } else {
                /* Not even one worker: drain the stack so nothing leaks. */
                worker tmp = { .w = &w };
                worker_loop(&tmp);
        }
        for (unsigned i = 1; i < threaded; i++)
                pthread_join(threads[i], NULL);
        for (unsigned i = 0; i < started; i++)
                worker_release(&w, &workers[i]);
        free(w.stack);
        pthread_mutex_destroy(&w.lock);
        pthread_cond_destroy(&w.cond);

        if (w.r < 0) {
                if (err)
                        *err = w.err;
                return w.r;
        }
        return 0;
}

void rl_walk_entry_path(char *buf, size_t size, const rl_walk_dir *d, const char *name)
{
        if (d->depth == 0)
                snprintf(buf, size, "%s", name);
        else
                snprintf(buf, size, "%s/%s", d->path, name);
}
