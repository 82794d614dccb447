/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * harness-rpc.c owns the JSON-RPC target: each input is up to 16 request lines, handed one
 * by one to rpc_handle (daemon/rpc.c) as reflayerd would, from a root peer, on a store in the
 * sandbox. Descriptors come with every line, as SCM_RIGHTS would bring them: 0 a layer tar,
 * 1 a file to export into, 2 an empty directory (not a layout), so Apply, Export and Import
 * get past their fd checks. Invariants: a request with an id gets exactly one line back,
 * a JSON-RPC 2.0 response carrying a result or an error with a data.code; afterwards every
 * snapshot the input made can be removed.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/fsinfo.h>
#include <reflayer/store.h>

#include "harness-priv.h"
#include "harness.h"
#include "log.h"
#include "rpc.h"
#include "util.h"

#define MAX_LINES 16

static rpc_server srv;
static const fuzz_blob *layer;

int fuzz_rpc_init(char *msg, size_t msg_size)
{
        rl_error err = {};
        int r = fuzz_sandbox(msg, msg_size);
        if (r < 0)
                return r;
        log_set_level(LOG_LEVEL_ERROR);
        if ((r = fuzz_layer_blob(0, &layer, msg, msg_size)) < 0)
                return r;
        if (mkdir("/layout", 0755) < 0) {
                r = -errno;
                snprintf(msg, msg_size, "mkdir /layout: %s", strerror(errno));
                return r;
        }
        /* No pool: its builder thread would make runs depend on timing. */
        rl_store_options o = {.jobs = 1, .no_sync = true};
        if ((r = rl_store_open("/store", &o, &srv.store, &err)) < 0) {
                snprintf(msg, msg_size, "open the store: %s", err.msg);
                return r;
        }
        _cleanup_close_ int fd = open("/store", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || (r = rl_fsinfo_open(fd, &srv.fs, &err)) < 0) {
                snprintf(msg, msg_size, "store filesystem: %s", fd < 0 ? strerror(errno) : err.msg);
                return fd < 0 ? -errno : r;
        }
        srv.jobs = 1;
        return 0;
}

static void fds_close(rpc_fds *fds)
{
        for (unsigned i = 0; i < fds->n; i++)
                if (fds->fd[i] >= 0)
                        close(fds->fd[i]);
        fds->n = 0;
}

static int fds_open(rpc_fds *fds)
{
        fds->n = 0;
        int fd = fuzz_memfd(layer->data, layer->size);
        if (fd < 0)
                return fd;
        fds->fd[fds->n++] = fd;
        if ((fd = fuzz_memfd(NULL, 0)) < 0)
                return fd;
        fds->fd[fds->n++] = fd;
        if ((fd = open("/layout", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
                return -errno;
        fds->fd[fds->n++] = fd;
        return 0;
}

/* Is out what JSON-RPC 2.0 allows as the answer to this request line? */
static const char *check_response(const char *line, size_t len, const char *out)
{
        json_t *req = json_loadb(line, len, 0, NULL);
        bool notification = json_is_object(req) && !json_object_get(req, "id") &&
                            json_is_string(json_object_get(req, "method"));
        json_decref(req);
        if (!out)
                return notification ? NULL : fuzz_fail("no response to a request");

        size_t n = strlen(out);
        if (n == 0 || out[n - 1] != '\n' || memchr(out, '\n', n - 1))
                return fuzz_fail("response is not one line: %.200s", out);
        json_error_t jerr;
        json_t *o = json_loads(out, 0, &jerr);
        const char *bad = NULL;
        json_t *res = json_object_get(o, "result"), *error = json_object_get(o, "error");
        if (!json_is_object(o))
                bad = fuzz_fail("response is not a JSON object (%s): %.200s", jerr.text, out);
        else if (!json_is_string(json_object_get(o, "jsonrpc")) ||
                 strcmp(json_string_value(json_object_get(o, "jsonrpc")), "2.0") != 0)
                bad = fuzz_fail("response without jsonrpc 2.0: %.200s", out);
        else if (!json_object_get(o, "id"))
                bad = fuzz_fail("response without an id: %.200s", out);
        else if (!res == !error)
                bad = fuzz_fail("response needs a result or an error: %.200s", out);
        else if (error &&
                 (!json_is_integer(json_object_get(error, "code")) ||
                  !json_is_string(json_object_get(error, "message")) ||
                  !json_is_string(json_object_get(json_object_get(error, "data"), "code"))))
                bad = fuzz_fail("error without code, message and data.code: %.200s", out);
        json_decref(o);
        return bad;
}

const char *fuzz_rpc_one(const uint8_t *data, size_t size)
{
        static const char *const keep[] = {"proc", "store", "layout", NULL};
        const rpc_peer peer = {.pid = getpid(), .uid = 0, .gid = 0, .fd = -1};
        const char *p = (const char *)data, *end = p + size, *bad = NULL;

        for (int i = 0; i < MAX_LINES && p < end && !bad; i++) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                size_t len = (size_t)((nl ? nl : end) - p);
                rpc_fds fds = {};
                int r = fds_open(&fds);
                if (r < 0) {
                        fds_close(&fds);
                        return fuzz_fail("make the request's fds: %s", strerror(-r));
                }
                char *out = rpc_handle(&srv, &peer, &fds, p, len);
                bad = check_response(p, len, out);
                free(out);
                fds_close(&fds);
                p += len + 1;
        }
        if (!bad)
                bad = fuzz_store_empty(srv.store);
        return bad ? bad : fuzz_root_check(keep, false);
}
