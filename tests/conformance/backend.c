/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * backend.c owns the conformance suite's door to the store: each st_* call goes to the driver
 * in this process or, through libreflayer-client, to a reflayerd this file starts and stops.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <reflayer/client.h>
#include <reflayer/store.h>

#include "backend.h"
#include "rltest-daemon.h"
#include "rltest.h"

/* One test process serves one store at a time (Criterion forks per test). */
static struct {
        st_backend kind;
        char root[PATH_MAX];
        rl_store *store;  /* ST_DRIVER, while open */
        rlt_daemon daemon; /* ST_WIRE; pid -1 while stopped */
        unsigned starts;  /* numbers the daemons' log files */
} B = { .daemon.pid = -1 };

static pthread_key_t client_key;
static pthread_once_t client_once = PTHREAD_ONCE_INIT;

static void client_free(void *c)
{
        rl_client_free(c);
}

static void make_client_key(void)
{
        cr_assert_eq(pthread_key_create(&client_key, client_free), 0);
}

/* This thread's connection, made on first use. Returns an error rather than failing the test:
 * Criterion's asserts may only fail a test from its own thread. */
static int client(rl_client **ret, rl_error *err)
{
        pthread_once(&client_once, make_client_key);
        rl_client *c = pthread_getspecific(client_key);
        if (!c) {
                int r = rl_client_connect(B.daemon.sock, &c, err);
                if (r < 0)
                        return r;
                pthread_setspecific(client_key, c);
        }
        *ret = c;
        return 0;
}

void st_reconnect(void)
{
        if (B.kind != ST_WIRE)
                return;
        pthread_once(&client_once, make_client_key);
        rl_client_free(pthread_getspecific(client_key));
        pthread_setspecific(client_key, NULL);
}

/* Spawn d with its stderr (the log) going to a file of its own in the scratch directory;
 * returns what rlt_daemon_try_start returns, the log's path in log. */
static int spawn_logged(rlt_daemon *d, char *log, size_t log_size)
{
        snprintf(log, log_size, "%s/reflayerd.%u.log", rlt_scratch(), B.starts++);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
        cr_assert(fd >= 0, "create %s: %s", log, strerror(errno));
        /* posix_spawn hands the child our fd 2: point it at the log for the spawn only. */
        int saved = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
        cr_assert(saved >= 0 && dup2(fd, STDERR_FILENO) == STDERR_FILENO, "redirect stderr: %s",
                  strerror(errno));
        close(fd);
        int status = rlt_daemon_try_start(d, -1, NULL);
        dup2(saved, STDERR_FILENO);
        close(saved);
        return status;
}

/* A reflayerd that exited before it was ready: it must have exited with a failure and said
 * why in an error line ("<3>..."). That line goes to err; the errno is the one whose text
 * ends it (the daemon logs the store's rl_error, which ends with the reason). */
static int refusal(int status, const char *log, rl_error *err)
{
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) != 0,
                  "reflayerd ended with wait status 0x%x before it was ready, see %s", status,
                  log);
        char buf[16384] = "", *last = NULL;
        FILE *f = fopen(log, "r");
        cr_assert(f, "read %s: %s", log, strerror(errno));
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
                if (strncmp(line, "<3>", 3) == 0)
                        last = line + 3;
        cr_assert(last, "reflayerd exited %d without an error line: %s", WEXITSTATUS(status),
                  buf);
        int r = -EIO;
        for (int e = 1; e < 256; e++) { /* past the last errno Linux has */
                const char *why = strerrordesc_np(e);
                size_t lw = why ? strlen(why) : 0, ll = strlen(last);
                if (lw && ll > lw + 2 && strcmp(last + ll - lw, why) == 0 &&
                    strncmp(last + ll - lw - 2, ": ", 2) == 0) {
                        r = -e;
                        break;
                }
        }
        if (err) {
                err->code = -r;
                snprintf(err->msg, sizeof(err->msg), "%s", last);
        }
        return r;
}

static int wire_start(rl_error *err)
{
        char log[PATH_MAX];
        snprintf(B.daemon.root, sizeof(B.daemon.root), "%s", B.root);
        snprintf(B.daemon.sock, sizeof(B.daemon.sock), "%s/reflayer.sock", rlt_scratch());
        int status = spawn_logged(&B.daemon, log, sizeof(log));
        return status == 0x10000 ? 0 : refusal(status, log, err);
}

int st_try_restart(rl_error *err)
{
        cr_assert(!B.store && B.daemon.pid < 0, "st_try_restart while the store is served");
        if (B.kind == ST_DRIVER)
                return rl_store_open(B.root, NULL, &B.store, err);
        return wire_start(err);
}

void st_restart(void)
{
        rl_error err = {};
        int r = st_try_restart(&err);
        cr_assert_eq(r, 0, "open %s (%s): %s", B.root,
                     B.kind == ST_DRIVER ? "driver" : "reflayerd", err.msg);
}

void st_start(st_backend b, const char *root)
{
        B.kind = b;
        snprintf(B.root, sizeof(B.root), "%s", root);
        st_restart();
}

int st_close(void)
{
        if (B.kind == ST_DRIVER)
                return B.store ? rl_store_close(B.store) : 0;
        if (B.daemon.pid < 0)
                return 0;
        int status = rlt_daemon_stop(&B.daemon);
        cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "reflayerd did not exit cleanly on SIGTERM: wait status 0x%x", status);
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

void st_stop(void)
{
        if (B.kind == ST_DRIVER) {
                B.store = rl_store_free(B.store);
                return;
        }
        st_reconnect();
        st_close();
}

void st_reopen(void)
{
        st_stop();
        st_restart();
}

int st_open_second(rl_error *err)
{
        if (B.kind == ST_DRIVER) {
                rl_store *other = NULL;
                int r = rl_store_open(B.root, NULL, &other, err);
                cr_expect(r == 0 || !other, "a refused open handed out a store");
                rl_store_free(other);
                return r;
        }
        /* The same socket path too: a refused daemon must not take the socket away. */
        rlt_daemon second = { .pid = -1 };
        snprintf(second.root, sizeof(second.root), "%s", B.daemon.root);
        snprintf(second.sock, sizeof(second.sock), "%s", B.daemon.sock);
        char log[PATH_MAX];
        int status = spawn_logged(&second, log, sizeof(log));
        if (status == 0x10000) {
                rlt_daemon_stop(&second);
                return 0;
        }
        return refusal(status, log, err);
}

st_backend st_current(void)
{
        return B.kind;
}

rl_store *st_driver_store(void)
{
        cr_assert_eq(B.kind, ST_DRIVER, "a driver-only case ran over the wire");
        return B.store;
}

/* --- the calls ---------------------------------------------------------------------------- */

/* Declares c, this thread's connection, when the backend is the wire; returns on failure. */
#define WIRE_CLIENT(c, err)                                                                        \
        rl_client *c = NULL;                                                                       \
        do {                                                                                       \
                int _r = client(&c, err);                                                          \
                if (_r < 0)                                                                        \
                        return _r;                                                                 \
        } while (0)

int st_prepare(const char *key, const char *parent, const rl_label *labels, size_t n_labels,
               const rl_prepare_options *opts, rl_error *err)
{
        if (B.kind == ST_DRIVER)
                return rl_store_prepare(B.store, key, parent, labels, n_labels, opts, err);
        WIRE_CLIENT(c, err);
        return rl_client_prepare(c, key, parent, labels, n_labels, opts, NULL, err);
}

int st_view(const char *key, const char *parent, const rl_label *labels, size_t n_labels,
            const rl_prepare_options *opts, rl_error *err)
{
        if (B.kind == ST_DRIVER)
                return rl_store_view(B.store, key, parent, labels, n_labels, opts, err);
        WIRE_CLIENT(c, err);
        return rl_client_view(c, key, parent, labels, n_labels, opts, NULL, err);
}

int st_commit(const char *name, const char *key, const rl_label *labels, size_t n_labels,
              rl_error *err)
{
        if (B.kind == ST_DRIVER)
                return rl_store_commit(B.store, name, key, labels, n_labels, err);
        WIRE_CLIENT(c, err);
        return rl_client_commit(c, name, key, labels, n_labels, err);
}

int st_remove(const char *key, rl_error *err)
{
        if (B.kind == ST_DRIVER)
                return rl_store_remove(B.store, key, err);
        WIRE_CLIENT(c, err);
        return rl_client_remove(c, key, err);
}

int st_stat(const char *key, rl_info *ret, rl_error *err)
{
        if (B.kind == ST_DRIVER)
                return rl_store_stat(B.store, key, ret, err);
        WIRE_CLIENT(c, err);
        return rl_client_stat(c, key, ret, err);
}

int st_update(const rl_info *info, const char *const *fieldpaths, size_t n_fieldpaths,
              rl_info *ret, rl_error *err)
{
        if (B.kind == ST_DRIVER)
                return rl_store_update(B.store, info, fieldpaths, n_fieldpaths, ret, err);
        WIRE_CLIENT(c, err);
        return rl_client_update(c, info, fieldpaths, n_fieldpaths, ret, err);
}

int st_walk(const char *const *filters, size_t n_filters, rl_store_walk_fn fn, void *userdata,
            rl_error *err)
{
        if (B.kind == ST_DRIVER)
                return rl_store_walk(B.store, filters, n_filters, fn, userdata, err);
        WIRE_CLIENT(c, err);
        rl_info *infos = NULL;
        size_t n = 0;
        int r = rl_client_list(c, filters, n_filters, &infos, &n, err);
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = fn(&infos[i], userdata);
        rl_info_array_free(infos, n);
        return r < 0 ? r : 0;
}

int st_usage(const char *key, rl_usage *ret, rl_error *err)
{
        if (B.kind == ST_DRIVER)
                return rl_store_usage(B.store, key, ret, err);
        WIRE_CLIENT(c, err);
        return rl_client_usage(c, key, ret, err);
}

int st_mounts(const char *key, rl_mount *ret, rl_error *err)
{
        if (B.kind == ST_DRIVER)
                return rl_store_mounts(B.store, key, ret, err);
        WIRE_CLIENT(c, err);
        return rl_client_mounts(c, key, ret, err);
}

int st_cleanup(rl_error *err)
{
        if (B.kind == ST_DRIVER)
                return rl_store_cleanup(B.store, err);
        WIRE_CLIENT(c, err);
        return rl_client_cleanup(c, err);
}
