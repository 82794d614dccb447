/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * types.c owns the helpers of the types the store and the client library share (store.h):
 * kind, clone method and reflink names, error codes, and freeing what rl_info and rl_mount
 * hold.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <reflayer/clone.h>
#include <reflayer/fsinfo.h>
#include <reflayer/layer.h>
#include <reflayer/store.h>

#include "util.h"

RL_EXPORT const char *rl_kind_to_string(rl_kind kind)
{
        switch (kind) {
        case RL_KIND_ACTIVE:
                return "active";
        case RL_KIND_VIEW:
                return "view";
        case RL_KIND_COMMITTED:
                return "committed";
        }
        return "unknown";
}

RL_EXPORT const char *rl_store_error_code(int r)
{
        switch (-r) {
        case 0:
                return "ok";
        case ENOENT:
                return "not_found";
        case EEXIST:
                return "already_exists";
        case EINVAL:
        case ENOTDIR:      /* a path that should be a directory is not */
        case ERANGE:       /* an id outside the maps */
        case ENAMETOOLONG:
        case EBADMSG: /* a digest or size that does not match */
                return "invalid_argument";
        case EBUSY:
                return "failed_precondition";
        case ESHUTDOWN:
                return "unavailable";
        case EACCES:
        case EPERM:
                return "permission_denied";
        default:
                return "internal";
        }
}

RL_EXPORT void rl_info_clear(rl_info *info)
{
        if (!info)
                return;
        free(info->name);
        free(info->parent);
        for (size_t i = 0; i < info->n_labels; i++) {
                free(info->labels[i].key);
                free(info->labels[i].value);
        }
        free(info->labels);
        *info = (rl_info){};
}

RL_EXPORT void rl_mount_clear(rl_mount *m)
{
        if (!m)
                return;
        free(m->type);
        free(m->source);
        for (size_t i = 0; i < m->n_options; i++)
                free(m->options[i]);
        free(m->options);
        *m = (rl_mount){};
}

RL_EXPORT const char *rl_clone_method_to_string(rl_clone_method m)
{
        switch (m) {
        case RL_CLONE_EMPTY:
                return "empty";
        case RL_CLONE_REFLINK:
                return "reflink";
        case RL_CLONE_COPY_RANGE:
                return "copy_range";
        case RL_CLONE_READ_WRITE:
                return "read_write";
        case _RL_CLONE_METHOD_MAX:
                break;
        }
        return "unknown";
}

RL_EXPORT const char *rl_reflink_to_string(rl_reflink r)
{
        switch (r) {
        case RL_REFLINK_YES:
                return "yes";
        case RL_REFLINK_NO:
                return "no";
        case RL_REFLINK_UNKNOWN:
                break;
        }
        return "unknown";
}

static const char *const compression_names[] = {
        [RL_COMPRESSION_NONE] = "none",
        [RL_COMPRESSION_GZIP] = "gzip",
        [RL_COMPRESSION_ZSTD] = "zstd",
};

RL_EXPORT const char *rl_compression_to_string(rl_compression c)
{
        return (unsigned)c < ELEMENTSOF(compression_names) ? compression_names[c] : NULL;
}

RL_EXPORT int rl_compression_from_string(const char *s, rl_compression *ret)
{
        for (size_t i = 0; s && i < ELEMENTSOF(compression_names); i++)
                if (strcmp(s, compression_names[i]) == 0) {
                        *ret = (rl_compression)i;
                        return 0;
                }
        return -EINVAL;
}
