/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The two doors of the store conformance suite: the driver in this process (rl_store_*), or
 * reflayerd over its socket through libreflayer-client (rl_client_*). Test bodies call st_*,
 * which take the store's arguments and give its results and negative errnos, so that one body
 * checks both doors; a case where they disagree is a bug in the daemon or the client.
 *
 * Over the wire every thread gets a connection of its own on its first call (an rl_client is
 * one thread's), closed when the thread ends.
 */
#pragma once

#include <stddef.h>

#include <reflayer/store.h>

typedef enum st_backend {
        ST_DRIVER,
        ST_WIRE,
} st_backend;

/* Start serving the store at root (driver: open it; wire: start reflayerd on it, logging to
 * rlt_scratch(), and connect). Fails the test if that does not work. */
void st_start(st_backend b, const char *root);

/* Serve the same root again after st_stop: 0, or the negative errno of the refusal with its
 * message in err. A reflayerd that refuses exits non-zero with a message; the errno is the
 * one that message ends with (the store's own reason, passed on). */
int st_try_restart(rl_error *err);
/* The same, failing the test on a refusal. */
void st_restart(void);

/* Refuse new calls and let those in flight return (driver: rl_store_close; wire: SIGTERM,
 * and reflayerd must exit 0). 0, or -EIO when the daemon did not exit cleanly. */
int st_close(void);
/* Close if needed and release everything (store, connections). Safe when stopped. */
void st_stop(void);
/* st_stop then st_restart: what a reboot or a daemon restart does. */
void st_reopen(void);

/* A second opener of the running store's root (driver: rl_store_open; wire: a second
 * reflayerd on the same root and socket path). 0 if it got in, else its negative errno. */
int st_open_second(rl_error *err);

/* Drop this thread's connection: the next call makes a new one, as a new client would.
 * Nothing to do for the driver. */
void st_reconnect(void);

st_backend st_current(void);

int st_prepare(const char *key, const char *parent, const rl_label *labels, size_t n_labels,
               const rl_prepare_options *opts, rl_error *err);
int st_view(const char *key, const char *parent, const rl_label *labels, size_t n_labels,
            const rl_prepare_options *opts, rl_error *err);
int st_commit(const char *name, const char *key, const rl_label *labels, size_t n_labels,
              rl_error *err);
int st_remove(const char *key, rl_error *err);
int st_stat(const char *key, rl_info *ret, rl_error *err);
int st_update(const rl_info *info, const char *const *fieldpaths, size_t n_fieldpaths,
              rl_info *ret, rl_error *err);
/* Over the wire: List, then fn on each info in turn (a negative return stops with it). */
int st_walk(const char *const *filters, size_t n_filters, rl_store_walk_fn fn, void *userdata,
            rl_error *err);
int st_usage(const char *key, rl_usage *ret, rl_error *err);
int st_mounts(const char *key, rl_mount *ret, rl_error *err);
int st_cleanup(rl_error *err);

/* The driver's handle, for the cases that are about it alone (ST_DRIVER only). */
rl_store *st_driver_store(void);
