/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * harness-image.c owns the OCI image target: each input is index.json, a manifest and a
 * config, separated by lines "---". They are written as an OCI image layout beside two
 * fixed layer blobs (harness-priv.h) and imported with rl_store_import. So that parsing
 * gets past the digest checks, these placeholders are replaced first, config, then
 * manifest, then index:
 *   $CD $CS   the config's digest and size       $MD $MS   the manifest's
 *   $AD $AS   layer A (tar): digest and size     $AI       its diff_id
 *   $BD $BS   layer B (gzip tar)                 $BI       its diff_id
 * Invariants: nothing appears outside the store and the layout, and every snapshot made
 * can be removed afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/image.h>
#include <reflayer/store.h>
#include <reflayer/tree.h>

#include "digest.h"
#include "harness-priv.h"
#include "harness.h"
#include "util.h"

#define SEPARATOR "\n---\n"

static rl_store *store;
static const fuzz_blob *blob_a, *blob_b;

int fuzz_image_init(char *msg, size_t msg_size)
{
        rl_error err = {};
        int r = fuzz_sandbox(msg, msg_size);
        if (r < 0)
                return r;
        if ((r = fuzz_layer_blob(0, &blob_a, msg, msg_size)) < 0 ||
            (r = fuzz_layer_blob(1, &blob_b, msg, msg_size)) < 0)
                return r;
        rl_store_options o = {.jobs = 1, .no_sync = true};
        if ((r = rl_store_open("/store", &o, &store, &err)) < 0) {
                snprintf(msg, msg_size, "open the store: %s", err.msg);
                return r;
        }
        return 0;
}

typedef struct subst {
        const char *token;
        char value[RL_DIGEST_MAX];
} subst;

/* part with every token replaced; NULL on ENOMEM. */
static char *expand(const char *part, size_t size, const subst *s, size_t n_s, size_t *ret_size)
{
        size_t cap = size + 1, len = 0;
        char *out = malloc(cap);
        if (!out)
                return NULL;
        for (size_t i = 0; i < size;) {
                const subst *hit = NULL;
                if (part[i] == '$')
                        for (size_t k = 0; k < n_s && !hit; k++)
                                if (size - i >= 3 && memcmp(part + i, s[k].token, 3) == 0)
                                        hit = &s[k];
                const char *add = hit ? hit->value : part + i;
                size_t n = hit ? strlen(hit->value) : 1;
                if (len + n + 1 > cap) {
                        cap = (len + n + 1) * 2;
                        char *p = realloc(out, cap);
                        if (!p) {
                                free(out);
                                return NULL;
                        }
                        out = p;
                }
                memcpy(out + len, add, n);
                len += n;
                i += hit ? 3 : 1;
        }
        out[len] = '\0';
        *ret_size = len;
        return out;
}

static int write_file(int dir_fd, const char *name, const void *data, size_t size)
{
        _cleanup_close_ int fd =
                openat(dir_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
        return fd < 0 ? -errno : rl_write_all(fd, data, size);
}

static int write_blob(int blobs_fd, const void *data, size_t size, char digest[RL_DIGEST_MAX])
{
        rl_sha256_of(data, size, digest);
        return write_file(blobs_fd, digest + strlen("sha256:"), data, size);
}

static void set(subst *s, const char *token, const char *value)
{
        s->token = token;
        snprintf(s->value, sizeof(s->value), "%s", value);
}

static void set_size(subst *s, const char *token, size_t size)
{
        s->token = token;
        snprintf(s->value, sizeof(s->value), "%zu", size);
}

/* The layout at /layout, from the three parts. */
static int write_layout(const char *parts[3], const size_t sizes[3])
{
        subst s[10];
        size_t n = 0, size;
        int r;

        mkdir("/layout", 0755);
        _cleanup_close_ int fd = open("/layout", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || (mkdirat(fd, "blobs", 0755) < 0 && errno != EEXIST) ||
            (mkdirat(fd, "blobs/sha256", 0755) < 0 && errno != EEXIST))
                return -errno;
        _cleanup_close_ int blobs_fd =
                openat(fd, "blobs/sha256", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (blobs_fd < 0)
                return -errno;
        static const char layout[] = "{\"imageLayoutVersion\":\"1.0.0\"}";
        if ((r = write_file(fd, "oci-layout", layout, strlen(layout))) < 0)
                return r;

        char digest[RL_DIGEST_MAX];
        if ((r = write_blob(blobs_fd, blob_a->data, blob_a->size, digest)) < 0 ||
            (r = write_blob(blobs_fd, blob_b->data, blob_b->size, digest)) < 0)
                return r;
        set(&s[n++], "$AD", blob_a->digest);
        set_size(&s[n++], "$AS", blob_a->size);
        set(&s[n++], "$AI", blob_a->diff_id);
        set(&s[n++], "$BD", blob_b->digest);
        set_size(&s[n++], "$BS", blob_b->size);
        set(&s[n++], "$BI", blob_b->diff_id);

        /* config → manifest → index: each may name the digests of the ones before. */
        static const char *const names[] = {"$CD", "$CS", "$MD", "$MS"};
        for (int i = 2; i >= 0; i--) {
                _cleanup_free_ char *text = expand(parts[i], sizes[i], s, n, &size);
                if (!text)
                        return -ENOMEM;
                if (i == 0)
                        return write_file(fd, "index.json", text, size);
                if ((r = write_blob(blobs_fd, text, size, digest)) < 0)
                        return r;
                set(&s[n++], names[(2 - i) * 2], digest);
                set_size(&s[n++], names[(2 - i) * 2 + 1], size);
        }
        return 0;
}

const char *fuzz_image_one(const uint8_t *data, size_t size)
{
        static const char *const keep[] = {"proc", "store", "layout", NULL};
        const char *parts[3] = {"", "", ""};
        size_t sizes[3] = {};
        const char *p = (const char *)data, *end = p + size;
        rl_error err = {};
        rl_import_result res;

        for (int i = 0; i < 3; i++) {
                const char *sep =
                        i < 2 ? memmem(p, (size_t)(end - p), SEPARATOR, strlen(SEPARATOR)) : NULL;
                parts[i] = p;
                sizes[i] = (size_t)((sep ? sep : end) - p);
                if (!sep) {
                        p = end;
                        continue;
                }
                p = sep + strlen(SEPARATOR);
        }
        int r = write_layout(parts, sizes);
        if (r < 0)
                return fuzz_fail("write the layout: %s", strerror(-r));
        _cleanup_close_ int fd = open("/layout", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return fuzz_fail("open /layout: %s", strerror(errno));
        (void)rl_store_import(store, fd, NULL, &res, &err);

        const char *bad = fuzz_root_check(keep, true);
        if (!bad)
                bad = fuzz_store_empty(store);
        if (bad)
                return bad;
        _cleanup_close_ int root_fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (root_fd < 0 || rl_tree_remove(root_fd, "layout", 1, NULL, &err) < 0)
                return fuzz_fail("remove /layout: %s", root_fd < 0 ? strerror(errno) : err.msg);
        return NULL;
}
