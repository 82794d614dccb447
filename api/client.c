/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * client.c owns libreflayer-client: one connection to reflayerd, requests encoded and
 * responses decoded into the store's own types, error codes turned back into errnos.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/client.h>

#include "codec.h"
#include "util.h"

struct rl_client {
        int fd;
        bool broken; /* a call was abandoned midway: its answer may still come */
        int next_id;
        char *buf; /* bytes read past the last response line */
        size_t len, cap;
};

RL_EXPORT int rl_client_connect(const char *socket_path, rl_client **ret, rl_error *err)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        const char *path = socket_path ? socket_path : getenv("REFLAYER_SOCKET");
        if (!path || !*path)
                path = RL_DEFAULT_SOCKET;
        if (strlen(path) >= sizeof(sa.sun_path))
                return rl_error_set(err, -ENAMETOOLONG, "connect '%s'", path);
        strcpy(sa.sun_path, path);
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return rl_error_set(err, -errno, "connect '%s'", path);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
                return rl_error_set(err, -errno, "connect to reflayerd at '%s' (is it running?)",
                                    path);
        rl_client *c = calloc(1, sizeof(*c));
        if (!c)
                return rl_error_set(err, -ENOMEM, "connect");
        c->fd = TAKE_FD(fd);
        *ret = c;
        return 0;
}

RL_EXPORT rl_client *rl_client_free(rl_client *c)
{
        if (!c)
                return NULL;
        closep(&c->fd);
        free(c->buf);
        free(c);
        return NULL;
}

RL_EXPORT void rl_client_freep(rl_client **c)
{
        rl_client_free(*c);
}

/* How a caller follows a long call. */
typedef struct follow {
        rl_tree_progress_fn progress;
        void *userdata;
        const atomic_bool *cancel;
        const int *fds; /* sent with the request line (SCM_RIGHTS) */
        unsigned n_fds;
} follow;

/* The request line, with fds attached to its first byte: they belong to this request. */
static int send_line(int fd, const char *line, size_t len, const int *fds, unsigned n_fds)
{
        if (!n_fds)
                return rl_send_all(fd, line, len);
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int) * 8)];
        } control = {};
        if (n_fds > 8)
                return -EINVAL;
        struct iovec iov = { (void *)line, len };
        struct msghdr msg = { .msg_iov = &iov,
                              .msg_iovlen = 1,
                              .msg_control = control.buf,
                              .msg_controllen = CMSG_SPACE(sizeof(int) * n_fds) };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * n_fds);
        ssize_t n;
        do
                n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return -errno;
        return rl_send_all(fd, line + n, len - (size_t)n);
}

/* The next line from the daemon, parsed. With f->cancel, the wait looks at the flag every
 * 100 ms; once it is set, the connection is shut down (the daemon sees the hang-up and
 * abandons the call) and -ECANCELED returned. */
static int read_line(rl_client *c, const follow *f, json_t **ret, rl_error *err)
{
        for (;;) {
                char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
                if (nl) {
                        json_error_t jerr;
                        size_t n = (size_t)(nl - c->buf);
                        json_t *o = json_loadb(c->buf, n, 0, &jerr);
                        memmove(c->buf, nl + 1, c->len - n - 1);
                        c->len -= n + 1;
                        if (!o)
                                return rl_error_set(err, -EIO, "reflayerd sent bad JSON: %s",
                                                    jerr.text);
                        *ret = o;
                        return 0;
                }
                if (c->len == c->cap) {
                        size_t cap = c->cap ? c->cap * 2 : 64 * 1024;
                        char *b = realloc(c->buf, cap);
                        if (!b)
                                return rl_error_set(err, -ENOMEM, "read a response");
                        c->buf = b;
                        c->cap = cap;
                }
                if (f && f->cancel) {
                        struct pollfd p = { .fd = c->fd, .events = POLLIN };
                        if (atomic_load(f->cancel)) {
                                shutdown(c->fd, SHUT_RDWR);
                                c->broken = true;
                                return rl_error_set(err, -ECANCELED, "cancelled");
                        }
                        int n = poll(&p, 1, 100);
                        if (n < 0 && errno != EINTR)
                                return rl_error_set(err, -errno, "wait for reflayerd");
                        if (n <= 0)
                                continue;
                }
                ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return rl_error_set(err, -errno, "read from reflayerd");
                if (k == 0)
                        return rl_error_set(err, -EIO, "reflayerd closed the connection");
                c->len += (size_t)k;
        }
}

static int errno_of(const char *code)
{
        static const struct {
                const char *code;
                int r;
        } map[] = {
                { "not_found", -ENOENT },         { "already_exists", -EEXIST },
                { "failed_precondition", -EBUSY }, { "invalid_argument", -EINVAL },
                { "permission_denied", -EACCES },  { "unavailable", -ESHUTDOWN },
        };
        for (size_t i = 0; code && i < ELEMENTSOF(map); i++)
                if (strcmp(map[i].code, code) == 0)
                        return map[i].r;
        return -EIO;
}

/* Call method with params (stolen); *ret: the result (owned by the caller). f may be NULL;
 * with f->progress, the daemon is asked for Progress notifications, handed to it. */
static int call_follow(rl_client *c, const char *method, json_t *params, const follow *f,
                       json_t **ret, rl_error *err)
{
        if (c->broken) {
                json_decref(params);
                return rl_error_set(err, -EIO, "%s: the connection was abandoned by an earlier "
                                    "cancelled call: connect again", method);
        }
        int id = ++c->next_id;
        if (params && f && f->progress)
                json_object_set_new(params, "progress", json_true());
        json_t *req = json_pack("{s:s, s:i, s:s}", "jsonrpc", "2.0", "id", id, "method", method);
        if (!req) {
                json_decref(params);
                return rl_error_set(err, -ENOMEM, "%s", method);
        }
        if (params)
                json_object_set_new(req, "params", params);
        char *line = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        if (!line)
                return rl_error_set(err, -ENOMEM, "%s", method);
        size_t n = strlen(line);
        line[n] = '\n'; /* json_dumps's NUL: one write for the whole line */
        int r = send_line(c->fd, line, n + 1, f ? f->fds : NULL, f ? f->n_fds : 0);
        free(line);
        if (r < 0)
                return rl_error_set(err, r, "%s: send to reflayerd", method);

        json_t *resp = NULL;
        for (;;) {
                r = read_line(c, f, &resp, err);
                if (r < 0)
                        return rl_error_prefix(err, r, "%s", method);
                /* A notification: no id, a method. Progress of this call goes to the caller;
                 * anything else is not for us (yet) and is dropped. */
                const char *nm = json_string_value(json_object_get(resp, "method"));
                if (!nm || json_object_get(resp, "id"))
                        break;
                json_t *np = json_object_get(resp, "params");
                if (f && f->progress && strcmp(nm, "Progress") == 0 &&
                    json_integer_value(json_object_get(np, "id")) == id) {
                        rl_tree_progress p;
                        rl_progress_from_json(np, &p);
                        f->progress(&p, f->userdata);
                }
                json_decref(resp);
        }
        json_t *e = json_object_get(resp, "error");
        if (e) {
                const char *msg = json_string_value(json_object_get(e, "message"));
                const char *code = json_string_value(
                        json_object_get(json_object_get(e, "data"), "code"));
                r = errno_of(code);
                if (err) {
                        /* The daemon's message already says why; keep it as it is. */
                        err->code = -r;
                        snprintf(err->msg, sizeof(err->msg), "%s", msg ? msg : method);
                }
                json_decref(resp);
                return r;
        }
        if (json_integer_value(json_object_get(resp, "id")) != id) {
                json_decref(resp);
                return rl_error_set(err, -EIO, "%s: reflayerd answered another request", method);
        }
        *ret = json_incref(json_object_get(resp, "result"));
        json_decref(resp);
        if (!*ret)
                return rl_error_set(err, -EIO, "%s: reflayerd sent no result", method);
        return 0;
}

static int call(rl_client *c, const char *method, json_t *params, json_t **ret, rl_error *err)
{
        return call_follow(c, method, params, NULL, ret, err);
}

RL_EXPORT int rl_client_call(rl_client *c, const char *method, const char *params_json,
                             char **ret_result, rl_error *err)
{
        json_t *params = NULL, *result = NULL;
        if (params_json) {
                json_error_t jerr;
                params = json_loads(params_json, 0, &jerr);
                if (!params)
                        return rl_error_set(err, -EINVAL, "%s: params: %s", method, jerr.text);
        }
        int r = call(c, method, params, &result, err);
        if (r < 0)
                return r;
        *ret_result = json_dumps(result, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(result);
        return *ret_result ? 0 : rl_error_set(err, -ENOMEM, "%s", method);
}

/* --- encoding ----------------------------------------------------------------------------- */

/* JSON carries only UTF-8: a string that is not cannot be sent. The encoders below then give
 * NULL, and so does a json_pack given that NULL; the call is refused, never sent without the
 * member (a Prepare without its parent, a List without its filter, an Update without its
 * field path: each would do something else). */
static int not_utf8(const char *method, const char *key, rl_error *err)
{
        if (!key)
                return rl_error_set(err, -EINVAL, "%s: filters must be UTF-8", method);
        return rl_error_set(err, -EINVAL,
                            "%s '%.64s': keys, names, labels and field paths must be UTF-8",
                            method, key);
}

static json_t *labels_json(const rl_label *labels, size_t n)
{
        json_t *o = json_object();
        for (size_t i = 0; o && i < n; i++)
                if (json_object_set_new(o, labels[i].key, json_string(labels[i].value)) < 0) {
                        json_decref(o);
                        return NULL;
                }
        return o;
}

static json_t *strings_json(const char *const *v, size_t n)
{
        json_t *a = json_array();
        for (size_t i = 0; a && i < n; i++)
                if (json_array_append_new(a, json_string(v[i])) < 0) {
                        json_decref(a);
                        return NULL;
                }
        return a;
}

static json_t *idmap_json(const rl_idmap *m)
{
        json_t *a = json_array();
        uint32_t c, h, l;
        for (size_t i = 0; a && rl_idmap_range(m, i, &c, &h, &l) == 0; i++)
                json_array_append_new(a, json_pack("{s:I, s:I, s:I}", "container_id",
                                                   (json_int_t)c, "host_id", (json_int_t)h, "size",
                                                   (json_int_t)l));
        return a;
}

/* The id shifting every tree-building call takes (Prepare, View, Clone, Apply). */
static void put_maps(json_t *p, const rl_idmap *uids, const rl_idmap *gids, bool keep_unmapped)
{
        if (uids)
                json_object_set_new(p, "uid_map", idmap_json(uids));
        if (gids)
                json_object_set_new(p, "gid_map", idmap_json(gids));
        if (keep_unmapped)
                json_object_set_new(p, "keep_unmapped", json_true());
}

/* Progress and cancel of a long call, into f (its fds stay). */
static void set_follow(follow *f, rl_tree_progress_fn progress, void *userdata,
                       const atomic_bool *cancel)
{
        f->progress = progress;
        f->userdata = userdata;
        f->cancel = cancel;
}

static int create(rl_client *c, const char *method, const char *key, const char *parent,
                  const rl_label *labels, size_t n, const rl_prepare_options *opts,
                  rl_mount *ret_mount, rl_error *err)
{
        json_t *p = json_pack("{s:s, s:o}", "key", key, "labels", labels_json(labels, n));
        json_t *result = NULL;
        if (!p)
                return not_utf8(method, key, err);
        if (parent && *parent && json_object_set_new(p, "parent", json_string(parent)) < 0) {
                json_decref(p);
                return not_utf8(method, key, err);
        }
        follow f = {};
        if (opts) {
                put_maps(p, opts->uid_map, opts->gid_map, opts->keep_unmapped);
                set_follow(&f, opts->progress, opts->progress_userdata, opts->cancel);
                if (opts->ephemeral && opts->durable) {
                        json_decref(p);
                        return rl_error_set(err, -EINVAL, "%s '%s': ephemeral and durable at once",
                                            method, key);
                }
                if (opts->ephemeral || opts->durable)
                        json_object_set_new(p, "ephemeral", json_boolean(opts->ephemeral));
        }
        int r = call_follow(c, method, p, &f, &result, err);
        if (r < 0)
                return r;
        if (ret_mount) {
                r = rl_mount_from_json(json_array_get(json_object_get(result, "mounts"), 0), ret_mount);
                if (r < 0)
                        rl_error_set(err, r, "%s '%s': the answer has no mount", method, key);
        }
        json_decref(result);
        return r;
}

RL_EXPORT int rl_client_prepare(rl_client *c, const char *key, const char *parent,
                                const rl_label *labels, size_t n_labels,
                                const rl_prepare_options *opts, rl_mount *ret_mount,
                                rl_error *err)
{
        return create(c, "Prepare", key, parent, labels, n_labels, opts, ret_mount, err);
}

RL_EXPORT int rl_client_view(rl_client *c, const char *key, const char *parent,
                             const rl_label *labels, size_t n_labels,
                             const rl_prepare_options *opts, rl_mount *ret_mount, rl_error *err)
{
        return create(c, "View", key, parent, labels, n_labels, opts, ret_mount, err);
}

/* A call whose result carries nothing the caller wants. */
static int call_void(rl_client *c, const char *method, json_t *params, rl_error *err)
{
        json_t *result = NULL;
        int r = call(c, method, params, &result, err);
        json_decref(result);
        return r;
}

RL_EXPORT int rl_client_commit(rl_client *c, const char *name, const char *key,
                               const rl_label *labels, size_t n_labels, rl_error *err)
{
        json_t *p = json_pack("{s:s, s:s, s:o}", "name", name, "key", key, "labels",
                              labels_json(labels, n_labels));
        return p ? call_void(c, "Commit", p, err) : not_utf8("Commit", key, err);
}

RL_EXPORT int rl_client_remove(rl_client *c, const char *key, rl_error *err)
{
        json_t *p = json_pack("{s:s}", "key", key);
        return p ? call_void(c, "Remove", p, err) : not_utf8("Remove", key, err);
}

RL_EXPORT int rl_client_cleanup(rl_client *c, rl_error *err)
{
        return call_void(c, "Cleanup", NULL, err);
}

/* A call whose result holds an "info". */
static int call_info(rl_client *c, const char *method, json_t *params, rl_info *ret,
                     rl_error *err)
{
        json_t *result = NULL;
        int r = call(c, method, params, &result, err);
        if (r < 0)
                return r;
        r = ret ? rl_info_from_json(json_object_get(result, "info"), ret) : 0;
        json_decref(result);
        return r < 0 ? rl_error_set(err, r, "%s: a bad answer", method) : 0;
}

RL_EXPORT int rl_client_stat(rl_client *c, const char *key, rl_info *ret, rl_error *err)
{
        json_t *p = json_pack("{s:s}", "key", key);
        return p ? call_info(c, "Stat", p, ret, err) : not_utf8("Stat", key, err);
}

RL_EXPORT int rl_client_update(rl_client *c, const rl_info *info, const char *const *fieldpaths,
                               size_t n_fieldpaths, rl_info *ret, rl_error *err)
{
        json_t *p = json_pack("{s:{s:s, s:o}, s:o}", "info", "name", info->name, "labels",
                              labels_json(info->labels, info->n_labels), "fieldpaths",
                              strings_json(fieldpaths, n_fieldpaths));
        return p ? call_info(c, "Update", p, ret, err) : not_utf8("Update", info->name, err);
}

RL_EXPORT void rl_info_array_free(rl_info *infos, size_t n)
{
        for (size_t i = 0; infos && i < n; i++)
                rl_info_clear(&infos[i]);
        free(infos);
}

RL_EXPORT int rl_client_list(rl_client *c, const char *const *filters, size_t n_filters,
                             rl_info **ret, size_t *ret_n, rl_error *err)
{
        json_t *p = json_pack("{s:o}", "filters", strings_json(filters, n_filters)), *result = NULL;
        if (!p)
                return not_utf8("List", NULL, err);
        int r = call(c, "List", p, &result, err);
        if (r < 0)
                return r;
        json_t *arr = json_object_get(result, "snapshots");
        size_t n = json_array_size(arr);
        rl_info *out = calloc(n ? n : 1, sizeof(*out));
        for (size_t i = 0; out && i < n && r == 0; i++)
                r = rl_info_from_json(json_array_get(arr, i), &out[i]);
        json_decref(result);
        if (!out || r < 0) {
                rl_info_array_free(out, n);
                return rl_error_set(err, out ? r : -ENOMEM, "List: a bad answer");
        }
        *ret = out;
        *ret_n = n;
        return 0;
}

RL_EXPORT int rl_client_usage(rl_client *c, const char *key, rl_usage *ret, rl_error *err)
{
        json_t *result = NULL;
        json_t *p = json_pack("{s:s}", "key", key);
        if (!p)
                return not_utf8("Usage", key, err);
        int r = call(c, "Usage", p, &result, err);
        if (r < 0)
                return r;
        rl_usage_from_json(result, ret);
        json_decref(result);
        return 0;
}

RL_EXPORT int rl_client_mounts(rl_client *c, const char *key, rl_mount *ret, rl_error *err)
{
        json_t *result = NULL;
        json_t *p = json_pack("{s:s}", "key", key);
        if (!p)
                return not_utf8("Mounts", key, err);
        int r = call(c, "Mounts", p, &result, err);
        if (r < 0)
                return r;
        r = rl_mount_from_json(json_array_get(json_object_get(result, "mounts"), 0), ret);
        json_decref(result);
        return r < 0 ? rl_error_set(err, r, "Mounts '%s': a bad answer", key) : 0;
}

RL_EXPORT int rl_client_clone(rl_client *c, const char *src, const char *dst,
                              const rl_tree_options *opts, rl_client_clone_result *ret,
                              rl_error *err)
{
        json_t *p = json_pack("{s:s, s:s}", "source", src, "destination", dst), *result = NULL;
        if (!p)
                return rl_error_set(err, -EINVAL, "Clone: paths must be UTF-8");
        follow f = {};
        if (opts) {
                put_maps(p, opts->uid_map, opts->gid_map, opts->flags & RL_TREE_KEEP_UNMAPPED);
                if (opts->flags & RL_TREE_SYNC)
                        json_object_set_new(p, "sync", json_true());
                if (opts->flags & RL_TREE_SUBVOLUME)
                        json_object_set_new(p, "subvolume", json_true());
                set_follow(&f, opts->progress, opts->progress_userdata, opts->cancel);
        }
        int r = call_follow(c, "Clone", p, &f, &result, err);
        if (r < 0)
                return r;
        if (ret) {
                *ret = (rl_client_clone_result){};
                rl_tree_stats_from_json(result, &ret->stats);
                snprintf(ret->filesystem, sizeof(ret->filesystem), "%s",
                         json_string_value(json_object_get(result, "filesystem")) ?: "unknown");
                const char *rf = json_string_value(json_object_get(result, "reflink"));
                ret->reflink = rf && strcmp(rf, "yes") == 0  ? RL_REFLINK_YES
                               : rf && strcmp(rf, "no") == 0 ? RL_REFLINK_NO
                                                              : RL_REFLINK_UNKNOWN;
        }
        json_decref(result);
        return 0;
}

RL_EXPORT int rl_client_apply(rl_client *c, const char *key, int tar_fd,
                              const rl_apply_options *opts, rl_layer_stats *ret, rl_error *err)
{
        json_t *p = json_pack("{s:s, s:i}", "key", key, "fd", 0), *result = NULL;
        if (!p)
                return rl_error_set(err, -EINVAL, "Apply: the key must be UTF-8");
        follow f = { .fds = &tar_fd, .n_fds = 1 };
        if (opts) {
                put_maps(p, opts->uid_map, opts->gid_map, opts->keep_unmapped);
                if (opts->expect_digest)
                        json_object_set_new(p, "digest", json_string(opts->expect_digest));
                if (opts->expect_diff_id)
                        json_object_set_new(p, "diff_id", json_string(opts->expect_diff_id));
                set_follow(&f, opts->progress, opts->progress_userdata, opts->cancel);
        }
        int r = call_follow(c, "Apply", p, &f, &result, err);
        if (r < 0)
                return r;
        if (ret)
                rl_layer_stats_from_json(result, ret);
        json_decref(result);
        return 0;
}

RL_EXPORT int rl_client_import(rl_client *c, int layout_fd, const rl_import_options *opts,
                               rl_import_result *ret, rl_error *err)
{
        json_t *p = json_pack("{s:i}", "fd", 0), *result = NULL;
        follow f = { .fds = &layout_fd, .n_fds = 1 };
        if (!p)
                return rl_error_set(err, -ENOMEM, "Import");
        if (opts) {
                if (opts->ref) {
                        json_t *ref = json_string(opts->ref);
                        if (!ref) {
                                json_decref(p);
                                return rl_error_set(err, -EINVAL, "Import: the ref must be UTF-8");
                        }
                        json_object_set_new(p, "ref", ref);
                }
                set_follow(&f, opts->progress, opts->progress_userdata, opts->cancel);
        }
        int r = call_follow(c, "Import", p, &f, &result, err);
        if (r < 0)
                return r;
        if (ret)
                rl_import_result_from_json(result, ret);
        json_decref(result);
        return 0;
}

RL_EXPORT int rl_client_diff(rl_client *c, const char *key, rl_change_fn fn, void *userdata,
                             rl_diff_stats *ret, rl_error *err)
{
        json_t *p = json_pack("{s:s}", "key", key), *result = NULL;
        if (!p)
                return rl_error_set(err, -EINVAL, "Diff: the key must be UTF-8");
        int r = call(c, "Diff", p, &result, err);
        if (r < 0)
                return r;
        size_t i;
        json_t *o;
        json_array_foreach(json_object_get(result, "changes"), i, o)
        {
                rl_change ch;
                if (rl_change_from_json(o, &ch) < 0) {
                        r = rl_error_set(err, -EIO, "Diff: a bad change in the answer");
                        break;
                }
                if ((r = fn(&ch, userdata)) < 0)
                        break;
        }
        if (r >= 0 && ret)
                rl_diff_stats_from_json(result, ret);
        json_decref(result);
        return r < 0 ? r : 0;
}

RL_EXPORT int rl_client_export(rl_client *c, const char *key, int out_fd,
                               const rl_export_options *opts, rl_layer_stats *ret,
                               rl_error *err)
{
        json_t *p = json_pack("{s:s, s:i, s:s, s:i}", "key", key, "fd", 0, "compression",
                              rl_compression_to_string(opts ? opts->compression
                                                            : RL_COMPRESSION_NONE),
                              "level", opts ? opts->level : 0),
               *result = NULL;
        if (!p)
                return rl_error_set(err, -EINVAL, "Export: the key must be UTF-8");
        follow f = { .fds = &out_fd, .n_fds = 1, .cancel = opts ? opts->cancel : NULL };
        int r = call_follow(c, "Export", p, &f, &result, err);
        if (r < 0)
                return r;
        if (ret)
                rl_layer_stats_from_json(result, ret);
        json_decref(result);
        return 0;
}
