/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libreflayer-client: talk to reflayerd (api/PROTOCOL.md) from C. Results come in the same
 * types the store uses (store.h); errors as the same negative errnos (-ENOENT not_found,
 * -EEXIST already_exists, -EBUSY failed_precondition, -EINVAL invalid_argument, -EACCES
 * permission_denied, -ESHUTDOWN unavailable, -EIO internal or a broken connection), with the
 * daemon's message in rl_error.
 *
 * A rl_client is one connection; use it from one thread at a time.
 */
#pragma once

#include <stddef.h>

#include <reflayer/error.h>
#include <reflayer/fsinfo.h>
#include <reflayer/image.h>
#include <reflayer/layer.h>
#include <reflayer/store.h>
#include <reflayer/tree.h>

#define RL_DEFAULT_SOCKET "/run/reflayer/reflayer.sock"

typedef struct rl_client rl_client;

/* socket_path NULL: $REFLAYER_SOCKET, else RL_DEFAULT_SOCKET. */
int rl_client_connect(const char *socket_path, rl_client **ret, rl_error *err);
rl_client *rl_client_free(rl_client *c);
void rl_client_freep(rl_client **c);

/* Any method: params and result as JSON text (params NULL: none). *ret_result to free. */
int rl_client_call(rl_client *c, const char *method, const char *params_json, char **ret_result,
                   rl_error *err);

int rl_client_prepare(rl_client *c, const char *key, const char *parent, const rl_label *labels,
                      size_t n_labels, const rl_prepare_options *opts, rl_mount *ret_mount,
                      rl_error *err);
int rl_client_view(rl_client *c, const char *key, const char *parent, const rl_label *labels,
                   size_t n_labels, const rl_prepare_options *opts, rl_mount *ret_mount,
                   rl_error *err);
int rl_client_commit(rl_client *c, const char *name, const char *key, const rl_label *labels,
                     size_t n_labels, rl_error *err);
int rl_client_remove(rl_client *c, const char *key, rl_error *err);
int rl_client_stat(rl_client *c, const char *key, rl_info *ret, rl_error *err);
int rl_client_update(rl_client *c, const rl_info *info, const char *const *fieldpaths,
                     size_t n_fieldpaths, rl_info *ret, rl_error *err);
/* *ret: an array of *ret_n infos, freed with rl_info_array_free. */
int rl_client_list(rl_client *c, const char *const *filters, size_t n_filters, rl_info **ret,
                   size_t *ret_n, rl_error *err);
void rl_info_array_free(rl_info *infos, size_t n);
int rl_client_usage(rl_client *c, const char *key, rl_usage *ret, rl_error *err);
int rl_client_mounts(rl_client *c, const char *key, rl_mount *ret, rl_error *err);
int rl_client_cleanup(rl_client *c, rl_error *err);

/*
 * Prepare and View above honour opts->progress (the daemon sends Progress notifications,
 * handed to it on this thread) and opts->cancel (checked every 100 ms while waiting; when
 * set, the connection is shut down, the daemon abandons the call and publishes nothing,
 * and the call returns -ECANCELED; the rl_client is then unusable: connect again).
 */

typedef struct rl_client_clone_result {
        rl_tree_stats stats;
        char filesystem[64]; /* the destination's filesystem type */
        rl_reflink reflink;  /* whether that filesystem reflinks */
} rl_client_clone_result;

/*
 * Clone the directory src to the new path dst through reflayerd, with the caller's own
 * permissions (the daemon acts with the connecting process's uid, gid and groups). Both
 * paths absolute: the daemon resolves them in its mount namespace. opts (may be NULL):
 * uid_map, gid_map, RL_TREE_KEEP_UNMAPPED and RL_TREE_SYNC in flags, progress and cancel as
 * above; jobs is the daemon's. ret may be NULL.
 */
int rl_client_clone(rl_client *c, const char *src, const char *dst, const rl_tree_options *opts,
                    rl_client_clone_result *ret, rl_error *err);

/*
 * Apply the layer read from tar_fd (a file or a pipe, passed to the daemon over the socket)
 * onto the active snapshot key (store.h, rl_store_apply). opts: maps, expected digests,
 * progress and cancel as above. ret may be NULL.
 */
int rl_client_apply(rl_client *c, const char *key, int tar_fd, const rl_apply_options *opts,
                    rl_layer_stats *ret, rl_error *err);

/*
 * Import the OCI image layout directory layout_fd (passed to the daemon over the socket;
 * image.h, rl_store_import). opts: ref, progress and cancel (may_read is the daemon's).
 * A caller that is not root can only import blobs it could read itself.
 */
int rl_client_import(rl_client *c, int layout_fd, const rl_import_options *opts,
                     rl_import_result *ret, rl_error *err);

/* The changes of snapshot key against its parent (store.h, rl_store_diff): fn is called for
 * each, in order, once the daemon has answered. */
int rl_client_diff(rl_client *c, const char *key, rl_change_fn fn, void *userdata,
                   rl_diff_stats *ret, rl_error *err);

/* Those changes as an OCI layer, written by the daemon to out_fd (a file or a pipe, passed
 * over the socket). opts (may be NULL): compression, level, cancel. */
int rl_client_export(rl_client *c, const char *key, int out_fd, const rl_export_options *opts,
                     rl_layer_stats *ret, rl_error *err);
