/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * image.c owns reading OCI image layouts (image-spec: oci-layout, index.json, manifests,
 * configs and blobs by digest) and importing one image as a chain of committed snapshots.
 * Layers go in through the store's CommitLayer, so each appears whole or not at all.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <reflayer/image.h>

#include "digest.h"
#include "util.h"

#define JSON_MAX (4u << 20) /* index, manifest or config: far larger than any real one */
#define INDEX_DEPTH 4       /* nested indexes followed at most */
#define REF_ANNOTATION "org.opencontainers.image.ref.name"

static const char *const layer_types[] = {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
};

static bool is_index(const char *media_type)
{
        return media_type && (!strcmp(media_type, "application/vnd.oci.image.index.v1+json") ||
                              !strcmp(media_type,
                                      "application/vnd.docker.distribution.manifest.list.v2+json"));
}

void rl_chain_id(const char *parent_chain, const char *diff_id, char out[RL_DIGEST_MAX])
{
        if (!parent_chain || !parent_chain[0]) {
                snprintf(out, RL_DIGEST_MAX, "%s", diff_id);
                return;
        }
        char buf[2 * RL_DIGEST_MAX + 2];
        int n = snprintf(buf, sizeof(buf), "%s %s", parent_chain, diff_id);
        rl_sha256_of(buf, (size_t)n, out);
}

typedef struct importer {
        rl_store *s;
        int layout_fd;
        const rl_import_options *opts;
        rl_import_result *res;
        uint64_t done_entries, done_bytes; /* of the layers before the current one */
} importer;

/*
 * Open path, a file of the layout: a regular file beneath it, readable by whoever we act
 * for; its size in *size. Never blocks: the open is O_NONBLOCK (a FIFO planted in the layout
 * would otherwise hold the call until someone opened it for writing), and anything but a
 * regular file is refused before a byte is read. Missing: -EINVAL.
 */
static int open_file(importer *im, const char *path, const char *what, off_t *size,
                     rl_error *err)
{
        _cleanup_close_ int fd = rl_openat_beneath(im->layout_fd, path,
                                                   O_RDONLY | O_NONBLOCK | O_NOCTTY, 0);
        if (fd == -ENOENT)
                return rl_error_set(err, -EINVAL, "%s: no %s", what, path);
        if (fd < 0)
                return rl_error_set(err, fd, "%s: open %s", what, path);
        struct stat st;
        if (fstat(fd, &st) < 0)
                return rl_error_set(err, -errno, "%s: %s", what, path);
        if (!S_ISREG(st.st_mode))
                return rl_error_set(err, -EINVAL, "%s: %s is not a regular file", what, path);
        if (im->opts->may_read) {
                int r = im->opts->may_read(fd, path, im->opts->may_read_userdata, err);
                if (r < 0)
                        return r;
        }
        *size = st.st_size;
        return TAKE_FD(fd);
}

/*
 * Open the blob named by digest (a descriptor's), checked (open_file), of the descriptor's
 * size (size < 0: any).
 */
static int open_blob(importer *im, const char *digest, json_int_t size, const char *what,
                     rl_error *err)
{
        if (!rl_digest_valid(digest))
                return rl_error_set(err, -EINVAL, "%s: digest '%.100s' is not sha256:HEX", what,
                                    digest ? digest : "(none)");
        char path[96];
        off_t have;
        snprintf(path, sizeof(path), "blobs/sha256/%s", digest + 7);
        _cleanup_close_ int fd = open_file(im, path, what, &have, err);
        if (fd < 0)
                return fd;
        if (size >= 0 && have != size)
                return rl_error_set(err, -EBADMSG,
                                    "%s: blob %s has %jd bytes, its descriptor says %jd", what,
                                    path, (intmax_t)have, (intmax_t)size);
        return TAKE_FD(fd);
}

/* Read a whole small file from fd; *ret to free. */
static int read_small(int fd, const char *what, char **ret, size_t *ret_len, rl_error *err)
{
        struct stat st;
        if (fstat(fd, &st) < 0)
                return rl_error_set(err, -errno, "%s", what);
        if (st.st_size > (off_t)JSON_MAX)
                return rl_error_set(err, -EINVAL, "%s: %jd bytes, more than %u", what,
                                    (intmax_t)st.st_size, JSON_MAX);
        _cleanup_free_ char *buf = malloc((size_t)st.st_size + 1);
        if (!buf)
                return rl_error_set(err, -ENOMEM, "%s", what);
        size_t len = 0;
        while (len < (size_t)st.st_size) {
                ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return rl_error_set(err, -errno, "%s: read", what);
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        *ret = TAKE_PTR(buf);
        *ret_len = len;
        return 0;
}

static int parse(const char *buf, size_t len, const char *what, json_t **ret, rl_error *err)
{
        json_error_t jerr;
        json_t *o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!o || !json_is_object(o)) {
                json_decref(o);
                return rl_error_set(err, -EINVAL, "%s: not a JSON object (%s, line %d)", what,
                                    o ? "another value" : jerr.text, jerr.line);
        }
        *ret = o;
        return 0;
}

/* The JSON blob a descriptor names, digest and size verified. */
static int read_json_blob(importer *im, json_t *desc, const char *what, json_t **ret,
                          char digest_out[RL_DIGEST_MAX], rl_error *err)
{
        const char *digest = json_string_value(json_object_get(desc, "digest"));
        json_t *size = json_object_get(desc, "size");
        _cleanup_close_ int fd = open_blob(im, digest, json_is_integer(size) ?
                                                               json_integer_value(size) : -1,
                                           what, err);
        if (fd < 0)
                return fd;
        _cleanup_free_ char *buf = NULL;
        size_t len;
        int r = read_small(fd, what, &buf, &len, err);
        if (r < 0)
                return r;
        char got[RL_DIGEST_MAX];
        rl_sha256_of(buf, len, got);
        if (strcmp(got, digest) != 0)
                return rl_error_set(err, -EBADMSG, "%s: blob %s hashes to %s", what, digest, got);
        if (digest_out)
                snprintf(digest_out, RL_DIGEST_MAX, "%s", digest);
        return parse(buf, len, what, ret, err);
}

static const char *host_arch(void)
{
        static const struct {
                const char *machine, *arch;
        } map[] = {
                { "x86_64", "amd64" }, { "aarch64", "arm64" }, { "armv7l", "arm" },
                { "i686", "386" },     { "ppc64le", "ppc64le" }, { "s390x", "s390x" },
                { "riscv64", "riscv64" },
        };
        struct utsname u;
        if (uname(&u) == 0)
                for (size_t i = 0; i < ELEMENTSOF(map); i++)
                        if (!strcmp(u.machine, map[i].machine))
                                return map[i].arch;
        return "amd64";
}

/* In an index's manifests: the one for ref (by annotation; NULL: the only one), or in a
 * platform index, the host's. Borrowed from the index. */
static int pick(json_t *manifests, const char *ref, bool by_platform, const char *what,
                json_t **ret, rl_error *err)
{
        size_t i, n = json_array_size(manifests);
        json_t *d, *found = NULL;
        if (!json_is_array(manifests) || n == 0)
                return rl_error_set(err, -EINVAL, "%s: no manifests", what);
        if (by_platform) {
                const char *arch = host_arch();
                json_array_foreach(manifests, i, d)
                {
                        json_t *p = json_object_get(d, "platform");
                        const char *os = json_string_value(json_object_get(p, "os"));
                        const char *a = json_string_value(json_object_get(p, "architecture"));
                        if (os && a && !strcmp(os, "linux") && !strcmp(a, arch)) {
                                found = d;
                                break;
                        }
                }
                if (!found)
                        return rl_error_set(err, -EINVAL, "%s: no image for linux/%s", what,
                                            arch);
        } else if (ref) {
                json_array_foreach(manifests, i, d)
                {
                        const char *name = json_string_value(
                                json_object_get(json_object_get(d, "annotations"), REF_ANNOTATION));
                        if (name && !strcmp(name, ref)) {
                                found = d;
                                break;
                        }
                }
                if (!found)
                        return rl_error_set(err, -EINVAL, "%s: no image named '%s'", what, ref);
        } else {
                if (n != 1)
                        return rl_error_set(err, -EINVAL,
                                            "%s: %zu images; name the one to import (--ref)", what,
                                            n);
                found = json_array_get(manifests, 0);
        }
        *ret = found;
        return 0;
}

/* The caller's progress gets the totals over all layers. */

static void relay_progress(const rl_tree_progress *p, void *userdata)
{
        importer *im = userdata;
        rl_tree_progress all = { im->done_entries + p->entries, im->done_bytes + p->bytes,
                                 p->elapsed_ns };
        im->opts->progress(&all, im->opts->progress_userdata);
}

static int import_layer(importer *im, json_t *desc, const char *diff_id, const char *parent,
                        const char *chain, unsigned index, rl_error *err)
{
        char what[64];
        snprintf(what, sizeof(what), "layer %u", index);
        const char *type = json_string_value(json_object_get(desc, "mediaType"));
        bool known = false;
        for (size_t i = 0; type && i < ELEMENTSOF(layer_types); i++)
                known = known || !strcmp(type, layer_types[i]);
        if (!known)
                return rl_error_set(err, -EINVAL, "%s: media type '%.200s' is not an OCI layer",
                                    what, type ? type : "(none)");
        if (!rl_digest_valid(diff_id))
                return rl_error_set(err, -EINVAL, "%s: diff_id '%.100s' is not sha256:HEX", what,
                                    diff_id ? diff_id : "(none)");
        rl_info info;
        int r = rl_store_stat(im->s, chain, &info, NULL);
        if (r == 0) {
                bool committed = info.kind == RL_KIND_COMMITTED;
                rl_info_clear(&info);
                if (!committed)
                        return rl_error_set(err, -EEXIST,
                                            "%s: the key %s exists and is not a committed layer",
                                            what, chain);
                return 0; /* there already: shared with an image imported before */
        }
        json_t *size = json_object_get(desc, "size");
        const char *digest = json_string_value(json_object_get(desc, "digest"));
        _cleanup_close_ int fd = open_blob(im, digest,
                                           json_is_integer(size) ? json_integer_value(size) : -1,
                                           what, err);
        if (fd < 0)
                return fd;
        rl_apply_options ao = {
                .expect_digest = digest,
                .expect_diff_id = diff_id,
                .cancel = im->opts->cancel,
                .progress = im->opts->progress ? relay_progress : NULL,
                .progress_userdata = im,
        };
        rl_label label = { RL_DIFF_ID_LABEL, (char *)diff_id };
        rl_layer_stats st;
        r = rl_store_commit_layer(im->s, chain, parent, &label, 1, fd, &ao, &st, err);
        if (r == -EEXIST)
                return 0; /* made meanwhile by another import of the same layer */
        if (r < 0)
                return rl_error_prefix(err, r, "%s (%s)", what, digest);
        im->res->layers_new++;
        im->res->bytes += st.size;
        im->done_entries += st.entries;
        im->done_bytes += st.bytes;
        return 0;
}

/* The top snapshot remembers which reference it was imported as. */
static int label_top(importer *im, const char *ref, rl_error *err)
{
        char key[RL_LABEL_MAX];
        snprintf(key, sizeof(key), RL_IMAGE_LABEL_PREFIX "%s", ref);
        char path[RL_LABEL_MAX + 16];
        snprintf(path, sizeof(path), "labels.%s", key);
        rl_info cur;
        int r = rl_store_stat(im->s, im->res->top, &cur, err);
        if (r < 0)
                return r;
        bool same = false;
        for (size_t i = 0; i < cur.n_labels; i++)
                same = same || (!strcmp(cur.labels[i].key, key) &&
                                !strcmp(cur.labels[i].value, im->res->manifest));
        rl_info_clear(&cur);
        if (same)
                return 0;
        rl_label l = { key, im->res->manifest };
        rl_info want = { .name = im->res->top, .labels = &l, .n_labels = 1 };
        const char *paths[] = { path };
        return rl_store_update(im->s, &want, paths, 1, NULL, err);
}

RL_EXPORT int rl_store_import(rl_store *s, int layout_fd, const rl_import_options *opts,
                              rl_import_result *ret, rl_error *err)
{
        static const rl_import_options defaults = {};
        rl_import_result res = {};
        uint64_t start = rl_now_ns();
        importer im = { .s = s, .layout_fd = layout_fd, .opts = opts ? opts : &defaults,
                        .res = &res };
        json_t *index = NULL, *manifest = NULL, *config = NULL, *nested = NULL;
        _cleanup_free_ char *buf = NULL;
        _cleanup_close_ int lfd = -EBADF, ifd = -EBADF;
        json_t *desc, *layout = NULL;
        size_t len;
        int r;

        /* oci-layout says what this is; index.json is the way in. */
        off_t size;
        lfd = open_file(&im, "oci-layout", "import (not an OCI image layout?)", &size, err);
        if (lfd < 0) {
                r = lfd;
                goto out;
        }
        if ((r = read_small(lfd, "import: oci-layout", &buf, &len, err)) < 0 ||
            (r = parse(buf, len, "import: oci-layout", &layout, err)) < 0)
                goto out;
        const char *version = json_string_value(json_object_get(layout, "imageLayoutVersion"));
        r = version && !strncmp(version, "1.", 2)
                    ? 0
                    : rl_error_set(err, -EINVAL, "import: image layout version '%s' is not 1.x",
                                   version ? version : "(none)");
        json_decref(layout);
        if (r < 0)
                goto out;
        free(TAKE_PTR(buf));
        ifd = open_file(&im, "index.json", "import", &size, err);
        if (ifd < 0) {
                r = ifd;
                goto out;
        }
        if ((r = read_small(ifd, "import: index.json", &buf, &len, err)) < 0 ||
            (r = parse(buf, len, "import: index.json", &index, err)) < 0)
                goto out;

        r = pick(json_object_get(index, "manifests"), im.opts->ref, false, "import: index.json",
                 &desc, err);
        if (r < 0)
                goto out;
        const char *ref = im.opts->ref ? im.opts->ref
                                       : json_string_value(json_object_get(
                                                 json_object_get(desc, "annotations"),
                                                 REF_ANNOTATION));
        for (int depth = 0; is_index(json_string_value(json_object_get(desc, "mediaType")));
             depth++) {
                if (depth == INDEX_DEPTH) {
                        r = rl_error_set(err, -EINVAL, "import: indexes nested too deep");
                        goto out;
                }
                json_t *next = NULL;
                r = read_json_blob(&im, desc, "import: index", &next, NULL, err);
                if (r < 0)
                        goto out;
                json_decref(nested);
                nested = next;
                r = pick(json_object_get(nested, "manifests"), NULL, true, "import: index", &desc,
                         err);
                if (r < 0)
                        goto out;
        }
        r = read_json_blob(&im, desc, "import: manifest", &manifest, res.manifest, err);
        if (r < 0)
                goto out;
        r = read_json_blob(&im, json_object_get(manifest, "config"), "import: config", &config,
                           NULL, err);
        if (r < 0)
                goto out;
        json_t *layers = json_object_get(manifest, "layers");
        json_t *rootfs = json_object_get(config, "rootfs");
        json_t *diff_ids = json_object_get(rootfs, "diff_ids");
        const char *rtype = json_string_value(json_object_get(rootfs, "type"));
        if (!json_is_array(layers) || !json_is_array(diff_ids) || !rtype ||
            strcmp(rtype, "layers") != 0 || json_array_size(layers) != json_array_size(diff_ids)) {
                r = rl_error_set(err, -EINVAL,
                                 "import: the manifest's layers (%zu) and the config's "
                                 "rootfs.diff_ids (%zu) do not match",
                                 json_array_size(layers), json_array_size(diff_ids));
                goto out;
        }
        res.layers = (unsigned)json_array_size(layers);
        char parent[RL_DIGEST_MAX] = "", chain[RL_DIGEST_MAX];
        for (unsigned i = 0; i < res.layers; i++) {
                if (im.opts->cancel && atomic_load(im.opts->cancel)) {
                        r = rl_error_set(err, -ECANCELED, "import: cancelled");
                        goto out;
                }
                const char *diff_id = json_string_value(json_array_get(diff_ids, i));
                if (!rl_digest_valid(diff_id)) {
                        r = rl_error_set(err, -EINVAL, "import: diff_id %u is not sha256:HEX", i);
                        goto out;
                }
                rl_chain_id(parent, diff_id, chain);
                r = import_layer(&im, json_array_get(layers, i), diff_id, parent[0] ? parent : NULL,
                                 chain, i, err);
                if (r < 0) {
                        rl_error_prefix(err, r, "import");
                        goto out;
                }
                memcpy(parent, chain, sizeof(parent));
        }
        snprintf(res.top, sizeof(res.top), "%s", parent);
        if (ref && res.top[0] && (r = label_top(&im, ref, err)) < 0)
                rl_error_prefix(err, r, "import: label %s", res.top);
out:
        json_decref(index);
        json_decref(nested);
        json_decref(manifest);
        json_decref(config);
        res.elapsed_ns = rl_now_ns() - start;
        if (ret)
                *ret = res;
        return r < 0 ? r : 0;
}
