/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * rpc.c owns the wire format of reflayerd: JSON-RPC 2.0 request validation, the params and
 * results of every method (api/PROTOCOL.md), and errors with a stable data.code.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/image.h>
#include <reflayer/tree.h>

#include "codec.h"
#include "creds.h"
#include "log.h"
#include "rpc.h"
#include "util.h"

typedef struct call {
        rpc_server *srv;
        const rpc_peer *peer;
        rpc_fds *fds;   /* what came with the request */
        json_t *id;     /* the request's id: progress notifications name it */
        json_t *params; /* an object, never NULL */
        bool progress;  /* the client asked for Progress notifications */
        atomic_bool hung_up; /* the client went away: abandon the work */
        uint64_t next_progress_ns; /* on_progress is never called by two threads at once */
        rl_error err;
        int code; /* JSON-RPC code, when the failure is not an rl_* errno */
} call;

typedef int (*method_fn)(call *c, json_t **ret);

/* The JSON-RPC code that goes with an errno's data.code (rl_store_error_code). */
static int rpc_code_of(int r)
{
        static const struct {
                const char *code;
                int rpc;
        } map[] = {
                { "not_found", -32001 },         { "already_exists", -32002 },
                { "failed_precondition", -32003 }, { "permission_denied", -32004 },
                { "unavailable", -32005 },       { "invalid_argument", RPC_INVALID_PARAMS },
        };
        const char *code = rl_store_error_code(r);
        for (size_t i = 0; i < ELEMENTSOF(map); i++)
                if (strcmp(map[i].code, code) == 0)
                        return map[i].rpc;
        return RPC_INTERNAL;
}

static char *dump_line(json_t *o)
{
        char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
        json_decref(o);
        if (!s)
                return NULL;
        size_t n = strlen(s);
        char *line = realloc(s, n + 2);
        if (!line) {
                free(s);
                return NULL;
        }
        line[n] = '\n';
        line[n + 1] = '\0';
        return line;
}

static char *error_response(json_t *id, int code, const char *data_code, const char *message)
{
        json_t *o = json_pack("{s:s, s:O, s:{s:i, s:o, s:{s:s}}}", "jsonrpc", "2.0", "id",
                              id ? id : json_null(), "error", "code", code, "message",
                              rl_json_string_lossy(message), "data", "code", data_code);
        return o ? dump_line(o) : NULL;
}

char *rpc_error_line(int code, const char *data_code, const char *message)
{
        return error_response(NULL, code, data_code, message);
}

/* --- params ----------------------------------------------------------------------------- */

static int bad_params(call *c, const json_error_t *jerr)
{
        return rl_error_set(&c->err, -EINVAL, "params: %s", jerr->text);
}

static int labels_of(call *c, json_t *o, rl_label **ret, size_t *ret_n)
{
        if (!o || json_is_null(o)) {
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }
        if (!json_is_object(o))
                return rl_error_set(&c->err, -EINVAL, "params: labels must be an object");
        size_t n = json_object_size(o), i = 0;
        rl_label *l = calloc(n ? n : 1, sizeof(*l));
        const char *k;
        json_t *v;
        if (!l)
                return rl_error_set(&c->err, -ENOMEM, "labels");
        json_object_foreach(o, k, v)
        {
                if (!json_is_string(v)) {
                        free(l);
                        return rl_error_set(&c->err, -EINVAL,
                                            "params: label '%.64s' must be a string", k);
                }
                l[i].key = (char *)k;
                l[i].value = (char *)json_string_value(v);
                i++;
        }
        *ret = l;
        *ret_n = n;
        return 0;
}

static int idmap_of(call *c, json_t *a, const char *what, rl_idmap **ret)
{
        *ret = NULL;
        if (!a || json_is_null(a))
                return 0;
        if (!json_is_array(a) || json_array_size(a) == 0)
                return rl_error_set(&c->err, -EINVAL, "params: %s must be a non-empty array",
                                    what);
        int r = rl_idmap_new(ret, &c->err);
        if (r < 0)
                return r;
        size_t i;
        json_t *e;
        json_array_foreach(a, i, e)
        {
                json_int_t cid, hid, size;
                json_error_t jerr;
                if (json_unpack_ex(e, &jerr, JSON_STRICT, "{s:I, s:I, s:I}", "container_id", &cid,
                                   "host_id", &hid, "size", &size) < 0 ||
                    cid < 0 || hid < 0 || size <= 0 || cid > UINT32_MAX || hid > UINT32_MAX ||
                    size > UINT32_MAX) {
                        *ret = rl_idmap_free(*ret);
                        return rl_error_set(&c->err, -EINVAL,
                                            "params: %s[%zu] must be {container_id, host_id, "
                                            "size} of 32-bit ids",
                                            what, i);
                }
                r = rl_idmap_add(*ret, (uint32_t)cid, (uint32_t)hid, (uint32_t)size, &c->err);
                if (r < 0) {
                        *ret = rl_idmap_free(*ret);
                        return r;
                }
        }
        return 0;
}

/* The fd passed with the request at index (a params member "fd"); taken: the caller closes
 * it. kind: S_IFDIR for a directory; access: O_RDONLY or O_WRONLY. */
static int take_fd(call *c, json_int_t index, mode_t kind, int access)
{
        if (index < 0 || index >= (json_int_t)c->fds->n || c->fds->fd[index] < 0)
                return rl_error_set(&c->err, -EINVAL,
                                    "params: fd %lld was not passed with the request "
                                    "(SCM_RIGHTS on its line)",
                                    (long long)index);
        int fd = c->fds->fd[index];
        struct stat st;
        int fl = fcntl(fd, F_GETFL);
        if (fstat(fd, &st) < 0 || fl < 0)
                return rl_error_set(&c->err, -errno, "params: fd %lld", (long long)index);
        if (kind == S_IFDIR && !S_ISDIR(st.st_mode))
                return rl_error_set(&c->err, -EINVAL, "params: fd %lld must be a directory",
                                    (long long)index);
        if (kind != S_IFDIR && S_ISDIR(st.st_mode))
                return rl_error_set(&c->err, -EINVAL, "params: fd %lld is a directory",
                                    (long long)index);
        int mode = fl & O_ACCMODE;
        if ((access == O_RDONLY && mode == O_WRONLY) || (access == O_WRONLY && mode == O_RDONLY))
                return rl_error_set(&c->err, -EINVAL, "params: fd %lld is not open for %s",
                                    (long long)index,
                                    access == O_RDONLY ? "reading" : "writing");
        c->fds->fd[index] = -1;
        return fd;
}

/*
 * May the peer read the file open at fd? The daemon reads what a client passes beneath a
 * directory it passed (an image layout) with its own rights; a client that is not root
 * must not learn, through the store, what it could not read itself. The mode bits decide
 * (an ACL that would grant more is not looked at: refusing is the safe side).
 */
static int peer_may_read(int fd, const char *what, void *userdata, rl_error *err)
{
        const rpc_peer *p = userdata;
        struct stat st;
        if (p->uid == 0)
                return 0;
        if (fstat(fd, &st) < 0)
                return rl_error_set(err, -errno, "%s", what);
        bool member = st.st_gid == p->gid;
        for (int i = 0; !member && i < p->n_groups; i++)
                member = st.st_gid == p->groups[i];
        mode_t bit = st.st_uid == p->uid ? S_IRUSR : member ? S_IRGRP : S_IROTH;
        if (!(st.st_mode & bit))
                return rl_error_set(err, -EACCES, "%s: uid %u may not read it", what,
                                    (unsigned)p->uid);
        return 0;
}

/* --- results ------------------------------------------------------------------------------ */

static int mounts_result(call *c, const char *key, json_t **ret)
{
        rl_mount m;
        int r = rl_store_mounts(c->srv->store, key, &m, &c->err);
        if (r < 0)
                return r;
        *ret = json_pack("{s:o, s:[o]}", "key", rl_json_string_lossy(key), "mounts", rl_mount_to_json(&m));
        rl_mount_clear(&m);
        return *ret ? 0 : -ENOMEM;
}

#define HANGUP_CHECK_NS (50 * 1000000ULL) /* how often a long call looks for a hang-up */
#define PROGRESS_EVERY_NS (200 * 1000000ULL) /* how often it tells the client */

/*
 * Called during a long call: by a tree worker every 50 ms (Clone, Export) or 100 ms
 * (Prepare, View, Apply, Import; an Apply also while its pipe brings nothing). A client that has closed its end
 * (POLLHUP: both directions gone, unlike a half-close after sending) will never read the
 * answer, so the work is abandoned. Otherwise, if asked, a Progress notification is sent;
 * the connection's thread is blocked in the call, so this is the only writer.
 */
static void on_progress(const rl_tree_progress *p, void *userdata)
{
        call *c = userdata;
        int fd = c->peer->fd;
        if (fd < 0)
                return;
        struct pollfd pfd = { .fd = fd };
        if (poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR))) {
                if (!atomic_exchange(&c->hung_up, true))
                        log_info("pid %d hung up: abandoning its call", (int)c->peer->pid);
                return;
        }
        if (!c->progress || p->elapsed_ns < c->next_progress_ns)
                return;
        c->next_progress_ns = p->elapsed_ns + PROGRESS_EVERY_NS;
        json_t *params = rl_progress_to_json(p);
        if (params)
                json_object_set(params, "id", c->id);
        json_t *n = params ? json_pack("{s:s, s:s, s:o}", "jsonrpc", "2.0", "method", "Progress",
                                       "params", params)
                           : NULL;
        char *line = n ? dump_line(n) : NULL;
        if (line && rl_send_all(fd, line, strlen(line)) < 0)
                atomic_store(&c->hung_up, true);
        free(line);
}

/* --- methods ----------------------------------------------------------------------------- */

static int create(call *c, bool view, json_t **ret)
{
        _cleanup_(rl_idmap_freep) rl_idmap *uids = NULL;
        _cleanup_(rl_idmap_freep) rl_idmap *gids = NULL;
        _cleanup_free_ rl_label *labels = NULL;
        const char *key, *parent = NULL;
        json_t *lj = NULL, *um = NULL, *gm = NULL;
        int keep = 0, progress = 0, ephemeral = c->srv->ephemeral;
        size_t n;
        json_error_t jerr;
        int r;

        if (json_unpack_ex(c->params, &jerr, JSON_STRICT,
                           "{s:s, s?s, s?o, s?o, s?o, s?b, s?b, s?b}", "key", &key, "parent",
                           &parent, "labels", &lj, "uid_map", &um, "gid_map", &gm,
                           "keep_unmapped", &keep, "progress", &progress, "ephemeral",
                           &ephemeral) < 0)
                return bad_params(c, &jerr);
        if ((r = labels_of(c, lj, &labels, &n)) < 0 || (r = idmap_of(c, um, "uid_map", &uids)) < 0 ||
            (r = idmap_of(c, gm, "gid_map", &gids)) < 0)
                return r;
        c->progress = progress;
        rl_prepare_options o = { .uid_map = uids,
                                 .gid_map = gids,
                                 .keep_unmapped = keep,
                                 .progress = on_progress,
                                 .progress_userdata = c,
                                 .cancel = &c->hung_up,
                                 .ephemeral = ephemeral };
        r = view ? rl_store_view(c->srv->store, key, parent, labels, n, &o, &c->err)
                 : rl_store_prepare(c->srv->store, key, parent, labels, n, &o, &c->err);
        if (r < 0)
                return r;
        return mounts_result(c, key, ret);
}

static int m_prepare(call *c, json_t **ret)
{
        return create(c, false, ret);
}

static int m_view(call *c, json_t **ret)
{
        return create(c, true, ret);
}

/*
 * Clone any directory to a new path. The paths are the client's, so the clone runs with the
 * client's identity (creds.h): a member of the socket's group can clone what it could copy
 * itself, no more. They are resolved in the daemon's mount namespace, hence absolute only.
 */
static int m_clone(call *c, json_t **ret)
{
        _cleanup_(rl_idmap_freep) rl_idmap *uids = NULL;
        _cleanup_(rl_idmap_freep) rl_idmap *gids = NULL;
        _cleanup_(rl_fsinfo_freep) rl_fsinfo *fs = NULL;
        _cleanup_close_ int src_fd = -EBADF, dst_dir_fd = -EBADF;
        _cleanup_free_ char *dst_name = NULL;
        const char *src, *dst;
        json_t *um = NULL, *gm = NULL;
        int keep = 0, sync = 0, progress = 0, subvolume = 0;
        json_error_t jerr;
        rl_tree_stats st;
        creds_saved saved;
        int r;

        if (json_unpack_ex(c->params, &jerr, JSON_STRICT,
                           "{s:s, s:s, s?o, s?o, s?b, s?b, s?b, s?b}", "source", &src,
                           "destination", &dst, "uid_map", &um, "gid_map", &gm, "keep_unmapped",
                           &keep, "sync", &sync, "progress", &progress, "subvolume",
                           &subvolume) < 0)
                return bad_params(c, &jerr);
        if (src[0] != '/' || dst[0] != '/')
                return rl_error_set(&c->err, -EINVAL,
                                    "clone '%s' to '%s': paths must be absolute (reflayerd "
                                    "resolves them in its own mount namespace)",
                                    src, dst);
        if ((r = idmap_of(c, um, "uid_map", &uids)) < 0 ||
            (r = idmap_of(c, gm, "gid_map", &gids)) < 0)
                return r;
        c->progress = progress;
        rl_tree_options o = {
                .jobs = c->srv->jobs,
                .flags = (keep ? RL_TREE_KEEP_UNMAPPED : 0) | (sync ? RL_TREE_SYNC : 0) |
                         (subvolume ? RL_TREE_SUBVOLUME : 0),
                .uid_map = uids,
                .gid_map = gids,
                .progress = on_progress,
                .progress_userdata = c,
                .progress_interval_ns = HANGUP_CHECK_NS,
                .cancel = &c->hung_up,
        };

        r = creds_assume(c->peer, &saved);
        if (r < 0)
                return rl_error_set(&c->err, r, "clone: cannot act as uid %u",
                                    (unsigned)c->peer->uid);
        src_fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (src_fd < 0)
                r = rl_error_set(&c->err, -errno, "clone: source '%s'", src);
        else if ((r = rl_tree_open_destination(dst, &dst_dir_fd, &dst_name, &c->err)) < 0)
                rl_error_prefix(&c->err, r, "clone");
        else if ((r = rl_fsinfo_open(dst_dir_fd, &fs, &c->err)) >= 0)
                r = rl_tree_clone(src_fd, dst_dir_fd, dst_name, &o, &st, &c->err);
        creds_restore(&saved);
        if (r < 0)
                return r;
        *ret = rl_clone_result_to_json(src, dst, rl_fsinfo_type(fs), rl_fsinfo_reflink(fs), &st);
        return *ret ? 0 : -ENOMEM;
}

/* A layer tar (passed as an fd) onto an active snapshot. */
static int m_apply(call *c, json_t **ret)
{
        _cleanup_(rl_idmap_freep) rl_idmap *uids = NULL;
        _cleanup_(rl_idmap_freep) rl_idmap *gids = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *key, *digest = NULL, *diff_id = NULL;
        json_t *um = NULL, *gm = NULL;
        json_int_t index;
        int keep = 0, progress = 0;
        json_error_t jerr;
        rl_layer_stats st;
        int r;

        if (json_unpack_ex(c->params, &jerr, JSON_STRICT,
                           "{s:s, s:I, s?o, s?o, s?b, s?s, s?s, s?b}", "key", &key, "fd", &index,
                           "uid_map", &um, "gid_map", &gm, "keep_unmapped", &keep, "digest",
                           &digest, "diff_id", &diff_id, "progress", &progress) < 0)
                return bad_params(c, &jerr);
        if ((r = idmap_of(c, um, "uid_map", &uids)) < 0 ||
            (r = idmap_of(c, gm, "gid_map", &gids)) < 0)
                return r;
        fd = take_fd(c, index, S_IFREG, O_RDONLY);
        if (fd < 0)
                return fd;
        c->progress = progress;
        rl_apply_options o = { .uid_map = uids,
                               .gid_map = gids,
                               .keep_unmapped = keep,
                               .expect_digest = digest,
                               .expect_diff_id = diff_id,
                               .cancel = &c->hung_up,
                               .progress = on_progress,
                               .progress_userdata = c };
        r = rl_store_apply(c->srv->store, key, fd, &o, &st, &c->err);
        if (r < 0)
                return r;
        *ret = rl_layer_stats_to_json(&st);
        return *ret ? 0 : -ENOMEM;
}

/* An OCI image layout (a directory passed as an fd) into the store. */
static int m_import(call *c, json_t **ret)
{
        _cleanup_close_ int fd = -EBADF;
        const char *ref = NULL;
        json_int_t index;
        int progress = 0;
        json_error_t jerr;
        rl_import_result res;
        int r;

        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{s:I, s?s, s?b}", "fd", &index, "ref",
                           &ref, "progress", &progress) < 0)
                return bad_params(c, &jerr);
        fd = take_fd(c, index, S_IFDIR, O_RDONLY);
        if (fd < 0)
                return fd;
        c->progress = progress;
        rl_import_options o = { .ref = ref,
                                .may_read = peer_may_read,
                                .may_read_userdata = (void *)c->peer,
                                .progress = on_progress,
                                .progress_userdata = c,
                                .cancel = &c->hung_up };
        r = rl_store_import(c->srv->store, fd, &o, &res, &c->err);
        if (r < 0)
                return r;
        *ret = rl_import_result_to_json(&res);
        return *ret ? 0 : -ENOMEM;
}

static int add_change(const rl_change *ch, void *userdata)
{
        return json_array_append_new(userdata, rl_change_to_json(ch)) < 0 ? -ENOMEM : 0;
}

/* The changes of a snapshot against its parent, all in the answer. */
static int m_diff(call *c, json_t **ret)
{
        const char *key;
        json_error_t jerr;
        rl_diff_stats st;
        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{s:s}", "key", &key) < 0)
                return bad_params(c, &jerr);
        json_t *changes = json_array();
        if (!changes)
                return -ENOMEM;
        int r = rl_store_diff(c->srv->store, key, add_change, changes, &st, &c->err);
        if (r < 0) {
                json_decref(changes);
                return r;
        }
        *ret = rl_diff_stats_to_json(&st);
        if (*ret)
                json_object_set_new(*ret, "changes", changes);
        else
                json_decref(changes);
        return *ret ? 0 : -ENOMEM;
}

/* The changes written as an OCI layer to the fd passed with the request. */
static int m_export(call *c, json_t **ret)
{
        _cleanup_close_ int fd = -EBADF;
        const char *key, *compression = "none";
        json_int_t index;
        int level = 0;
        json_error_t jerr;
        rl_layer_stats st;
        /* No Progress notifications for Export (c->progress stays off): the callback is
         * where a client's hang-up is noticed, and the cancel set. */
        rl_export_options o = { .cancel = &c->hung_up,
                                .progress = on_progress,
                                .progress_userdata = c,
                                .progress_interval_ns = HANGUP_CHECK_NS };
        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{s:s, s:I, s?s, s?i}", "key", &key,
                           "fd", &index, "compression", &compression, "level", &level) < 0)
                return bad_params(c, &jerr);
        if (rl_compression_from_string(compression, &o.compression) < 0)
                return rl_error_set(&c->err, -EINVAL,
                                    "params: compression '%.32s': none, gzip or zstd",
                                    compression);
        o.level = level;
        fd = take_fd(c, index, S_IFREG, O_WRONLY);
        if (fd < 0)
                return fd;
        int r = rl_store_export(c->srv->store, key, fd, &o, &st, &c->err);
        if (r < 0)
                return r;
        *ret = rl_layer_stats_to_json(&st);
        return *ret ? 0 : -ENOMEM;
}

static int m_commit(call *c, json_t **ret)
{
        _cleanup_free_ rl_label *labels = NULL;
        const char *name, *key;
        json_t *lj = NULL;
        size_t n;
        json_error_t jerr;
        int r;

        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{s:s, s:s, s?o}", "name", &name, "key",
                           &key, "labels", &lj) < 0)
                return bad_params(c, &jerr);
        if ((r = labels_of(c, lj, &labels, &n)) < 0)
                return r;
        r = rl_store_commit(c->srv->store, name, key, labels, n, &c->err);
        if (r < 0)
                return r;
        *ret = json_object();
        return 0;
}

static int m_remove(call *c, json_t **ret)
{
        const char *key;
        json_error_t jerr;
        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{s:s}", "key", &key) < 0)
                return bad_params(c, &jerr);
        int r = rl_store_remove(c->srv->store, key, &c->err);
        if (r < 0)
                return r;
        *ret = json_object();
        return 0;
}

static int m_stat(call *c, json_t **ret)
{
        const char *key;
        json_error_t jerr;
        rl_info i;
        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{s:s}", "key", &key) < 0)
                return bad_params(c, &jerr);
        int r = rl_store_stat(c->srv->store, key, &i, &c->err);
        if (r < 0)
                return r;
        *ret = json_pack("{s:o}", "info", rl_info_to_json(&i));
        rl_info_clear(&i);
        return *ret ? 0 : -ENOMEM;
}

static int m_update(call *c, json_t **ret)
{
        _cleanup_free_ rl_label *labels = NULL;
        _cleanup_free_ const char **paths = NULL;
        json_t *fp = NULL, *lj = NULL;
        const char *name;
        size_t n, n_paths = 0;
        json_error_t jerr;
        rl_info out;
        int r;

        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{s:{s:s, s?o}, s?o}", "info", "name",
                           &name, "labels", &lj, "fieldpaths", &fp) < 0)
                return bad_params(c, &jerr);
        if ((r = labels_of(c, lj, &labels, &n)) < 0)
                return r;
        if (fp && !json_is_null(fp)) {
                if (!json_is_array(fp))
                        return rl_error_set(&c->err, -EINVAL, "params: fieldpaths must be an array");
                n_paths = json_array_size(fp);
                paths = calloc(n_paths ? n_paths : 1, sizeof(*paths));
                if (!paths)
                        return -ENOMEM;
                for (size_t i = 0; i < n_paths; i++) {
                        paths[i] = json_string_value(json_array_get(fp, i));
                        if (!paths[i])
                                return rl_error_set(&c->err, -EINVAL,
                                                    "params: fieldpaths[%zu] must be a string", i);
                }
        }
        rl_info in = { .name = (char *)name, .labels = labels, .n_labels = n };
        r = rl_store_update(c->srv->store, &in, paths, n_paths, &out, &c->err);
        if (r < 0)
                return r;
        *ret = json_pack("{s:o}", "info", rl_info_to_json(&out));
        rl_info_clear(&out);
        return *ret ? 0 : -ENOMEM;
}

static int list_one(const rl_info *info, void *userdata)
{
        return json_array_append_new(userdata, rl_info_to_json(info)) < 0 ? -ENOMEM : 0;
}

static int m_list(call *c, json_t **ret)
{
        _cleanup_free_ const char **filters = NULL;
        json_t *fj = NULL, *arr;
        size_t n = 0;
        json_error_t jerr;

        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{s?o}", "filters", &fj) < 0)
                return bad_params(c, &jerr);
        if (fj && !json_is_null(fj)) {
                if (!json_is_array(fj))
                        return rl_error_set(&c->err, -EINVAL, "params: filters must be an array");
                n = json_array_size(fj);
                filters = calloc(n ? n : 1, sizeof(*filters));
                if (!filters)
                        return -ENOMEM;
                for (size_t i = 0; i < n; i++) {
                        filters[i] = json_string_value(json_array_get(fj, i));
                        if (!filters[i])
                                return rl_error_set(&c->err, -EINVAL,
                                                    "params: filters[%zu] must be a string", i);
                }
        }
        arr = json_array();
        if (!arr)
                return -ENOMEM;
        int r = rl_store_walk(c->srv->store, filters, n, list_one, arr, &c->err);
        if (r < 0) {
                json_decref(arr);
                return r;
        }
        *ret = json_pack("{s:o}", "snapshots", arr);
        return *ret ? 0 : -ENOMEM;
}

static int m_usage(call *c, json_t **ret)
{
        const char *key;
        json_error_t jerr;
        rl_usage u;
        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{s:s}", "key", &key) < 0)
                return bad_params(c, &jerr);
        int r = rl_store_usage(c->srv->store, key, &u, &c->err);
        if (r < 0)
                return r;
        *ret = rl_usage_to_json(&u);
        return *ret ? 0 : -ENOMEM;
}

static int m_mounts(call *c, json_t **ret)
{
        const char *key;
        json_error_t jerr;
        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{s:s}", "key", &key) < 0)
                return bad_params(c, &jerr);
        return mounts_result(c, key, ret);
}

static int m_cleanup(call *c, json_t **ret)
{
        json_error_t jerr;
        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{}") < 0)
                return bad_params(c, &jerr);
        int r = rl_store_cleanup(c->srv->store, &c->err);
        if (r < 0)
                return r;
        *ret = json_object();
        return 0;
}

static int count_kind(const rl_info *info, void *userdata)
{
        uint64_t *n = userdata;
        n[info->kind]++;
        return 0;
}

static int m_status(call *c, json_t **ret)
{
        uint64_t n[4] = {};
        json_error_t jerr;
        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{}") < 0)
                return bad_params(c, &jerr);
        int r = rl_store_walk(c->srv->store, NULL, 0, count_kind, n, &c->err);
        if (r < 0)
                return r;
        rl_fsinfo *fs = c->srv->fs;
        *ret = json_pack("{s:s, s:s, s:{s:s, s:s, s:s, s:b}, s:s, s:s?, s:{s:I, s:I, s:I}, "
                         "s:{s:I, s:I, s:i}}",
                         "version", RL_VERSION, "root", rl_store_root(c->srv->store),
                         "filesystem", "type", rl_fsinfo_type(fs), "source",
                         rl_fsinfo_source(fs), "mountpoint", rl_fsinfo_target(fs),
                         "inlines_small_files", rl_fsinfo_inlines_small_files(fs), "reflink",
                         rl_reflink_to_string(rl_fsinfo_reflink(fs)), "image", c->srv->image,
                         "snapshots", "active",
                         (json_int_t)n[RL_KIND_ACTIVE], "view", (json_int_t)n[RL_KIND_VIEW],
                         "committed", (json_int_t)n[RL_KIND_COMMITTED], "counters", "requests",
                         (json_int_t)atomic_load(&c->srv->requests), "errors",
                         (json_int_t)atomic_load(&c->srv->errors), "connections",
                         (int)atomic_load(&c->srv->connections));
        rl_pool_stats ps;
        rl_store_pool_stats(c->srv->store, &ps);
        if (*ret)
                json_object_set_new(*ret, "pool",
                                    json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "ready",
                                              (json_int_t)ps.ready, "building",
                                              (json_int_t)ps.building, "pooled",
                                              (json_int_t)ps.pooled, "hits", (json_int_t)ps.hits,
                                              "misses", (json_int_t)ps.misses, "built",
                                              (json_int_t)ps.built, "dropped",
                                              (json_int_t)ps.dropped));
        return *ret ? 0 : -ENOMEM;
}

static int m_version(call *c, json_t **ret)
{
        json_error_t jerr;
        if (json_unpack_ex(c->params, &jerr, JSON_STRICT, "{}") < 0)
                return bad_params(c, &jerr);
        *ret = json_pack("{s:s, s:i}", "version", RL_VERSION, "protocol", 1);
        return *ret ? 0 : -ENOMEM;
}

static const struct {
        const char *name;
        method_fn fn;
} methods[] = {
        { "Prepare", m_prepare }, { "View", m_view },       { "Commit", m_commit },
        { "Remove", m_remove },   { "Stat", m_stat },       { "Update", m_update },
        { "List", m_list },       { "Usage", m_usage },     { "Mounts", m_mounts },
        { "Cleanup", m_cleanup }, { "Status", m_status },   { "Version", m_version },
        { "Clone", m_clone },     { "Apply", m_apply },     { "Import", m_import },
        { "Diff", m_diff },       { "Export", m_export },
};

char *rpc_handle(rpc_server *srv, const rpc_peer *peer, rpc_fds *fds, const char *line,
                 size_t len)
{
        json_error_t jerr;
        json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
        char msg[512];

        atomic_fetch_add(&srv->requests, 1);
        if (!req) {
                atomic_fetch_add(&srv->errors, 1);
                snprintf(msg, sizeof(msg), "parse error: %s (column %d)", jerr.text, jerr.column);
                return error_response(NULL, RPC_PARSE_ERROR, "invalid_argument", msg);
        }
        json_t *id = json_object_get(req, "id");
        const char *version = json_string_value(json_object_get(req, "jsonrpc"));
        const char *method = json_string_value(json_object_get(req, "method"));
        json_t *params = json_object_get(req, "params");
        bool notification = json_is_object(req) && !json_object_get(req, "id");
        char *out = NULL;

        if (!json_is_object(req) || !version || strcmp(version, "2.0") != 0 || !method ||
            (id && !json_is_string(id) && !json_is_integer(id) && !json_is_null(id)) ||
            (params && !json_is_object(params))) {
                atomic_fetch_add(&srv->errors, 1);
                out = error_response(id && (json_is_string(id) || json_is_integer(id)) ? id : NULL,
                                     RPC_INVALID_REQUEST, "invalid_argument",
                                     "invalid request: expected {\"jsonrpc\":\"2.0\", \"method\": "
                                     "string, \"params\": object, \"id\": string or number}");
                json_decref(req);
                return out;
        }
        method_fn fn = NULL;
        for (size_t i = 0; i < ELEMENTSOF(methods); i++)
                if (strcmp(methods[i].name, method) == 0)
                        fn = methods[i].fn;
        if (!fn) {
                atomic_fetch_add(&srv->errors, 1);
                snprintf(msg, sizeof(msg), "unknown method '%.64s'", method);
                out = notification ? NULL
                                   : error_response(id, RPC_METHOD_NOT_FOUND, "invalid_argument",
                                                    msg);
                json_decref(req);
                return out;
        }

        json_t *empty = json_object();
        call c = { .srv = srv,
                   .peer = peer,
                   .fds = fds,
                   .id = id,
                   .params = params ? params : empty };
        json_t *result = NULL;
        int r = fn(&c, &result);
        if (r >= 0 && !result)
                r = -ENOMEM;
        if (r < 0) {
                atomic_fetch_add(&srv->errors, 1);
                if (!c.err.code)
                        rl_error_set(&c.err, r, "%s", method);
                log_debug("%s from pid %d uid %u: %s", method, (int)peer->pid,
                          (unsigned)peer->uid, c.err.msg);
                if (!notification)
                        out = error_response(id, rpc_code_of(r), rl_store_error_code(r),
                                             c.err.msg);
        } else if (!notification) {
                json_t *o = json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id", id, "result",
                                      result);
                result = NULL;
                out = o ? dump_line(o) : NULL;
        }
        json_decref(result);
        json_decref(empty);
        json_decref(req);
        return out;
}
