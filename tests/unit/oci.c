/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * oci.c: OCI image layouts made by an independent tool (umoci, tests/lib/oci-fixture). The
 * fixture is checked for soundness (index, manifest and config parse; every blob hashes to
 * its name and size), then its layers are applied in order with rl_layer_apply and the tree
 * compared with umoci's own unpack of the same image. The store's import will reuse the
 * fixture.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/layer.h>

#include "rltest-tar.h"
#include "rltest.h"

TestSuite(oci, .init = rlt_init, .fini = rlt_fini, .timeout = 300);

/* Build the fixture `kind` under the scratch directory; returns its directory (static). */
static const char *build_fixture(const char *kind)
{
        static char dir[PATH_MAX];
        static char out[65536];
        snprintf(dir, sizeof(dir), "%s/fixture-%s", rlt_scratch(), kind);
        cr_assert(access("tests/lib/oci-fixture", X_OK) == 0,
                  "tests/lib/oci-fixture not found: run the tests from the repository");
        char *argv[] = { "tests/lib/oci-fixture", (char *)kind, dir, NULL };
        int r = rlt_run(argv, out, sizeof(out));
        cr_assert_eq(r, 0, "tests/lib/oci-fixture %s %s failed (%d): %s", kind, dir, r, out);
        char layout[PATH_MAX + 16];
        snprintf(layout, sizeof(layout), "%s/layout\n", dir);
        cr_assert(strstr(out, layout), "oci-fixture printed '%s', not the layout %s", out, layout);
        return dir;
}

static json_t *load_json(const char *path)
{
        json_error_t je;
        json_t *j = json_load_file(path, 0, &je);
        cr_assert(j, "%s: not JSON: %s (line %d)", path, je.text, je.line);
        return j;
}

static const char *str_of(json_t *obj, const char *key, const char *where)
{
        const char *s = json_string_value(json_object_get(obj, key));
        cr_assert(s, "%s: no string \"%s\"", where, key);
        return s;
}

/* The blob of a descriptor: its digest is well-formed, its file exists with that size. */
static void blob_path(const char *layout, json_t *desc, const char *where, char *ret, size_t n)
{
        const char *digest = str_of(desc, "digest", where);
        cr_assert(strncmp(digest, "sha256:", 7) == 0 && strlen(digest) == 71,
                  "%s: digest '%s' is not sha256:HEX", where, digest);
        snprintf(ret, n, "%s/blobs/sha256/%s", layout, digest + 7);
        struct stat st;
        cr_assert(stat(ret, &st) == 0, "%s: blob %s: %s", where, ret, strerror(errno));
        json_int_t size = json_integer_value(json_object_get(desc, "size"));
        cr_assert_eq((json_int_t)st.st_size, size, "%s: blob %s is %ld bytes, descriptor says %lld",
                     where, ret, (long)st.st_size, (long long)size);
}

/* Every file in blobs/sha256 is named by the sha256 of its content. */
static unsigned check_blob_names(const char *layout)
{
        char dir[PATH_MAX];
        unsigned n = 0;
        snprintf(dir, sizeof(dir), "%s/blobs/sha256", layout);
        DIR *d = opendir(dir);
        cr_assert(d, "opendir %s: %s", dir, strerror(errno));
        struct dirent *e;
        while ((e = readdir(d))) {
                if (e->d_name[0] == '.')
                        continue;
                char path[PATH_MAX * 2], want[RL_DIGEST_MAX], got[RL_DIGEST_MAX];
                snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                snprintf(want, sizeof(want), "sha256:%s", e->d_name);
                rlt_sha256_file(path, got);
                cr_assert_str_eq(got, want, "blob %s hashes to %s", path, got);
                n++;
        }
        closedir(d);
        return n;
}

/*
 * Apply every layer of the image at dir/layout onto an empty tree on XFS and compare it with
 * umoci's unpack at dir/ref/rootfs. Each apply is given the manifest's digest and the
 * config's diff_id to check, and its stats must report them.
 */
static void apply_and_compare(const char *dir, const char *mnt, unsigned min_layers)
{
        char layout[PATH_MAX], path[PATH_MAX * 2], tree[PATH_MAX], ref[PATH_MAX];
        snprintf(layout, sizeof(layout), "%s/layout", dir);
        snprintf(ref, sizeof(ref), "%s/ref/rootfs", dir);
        snprintf(tree, sizeof(tree), "%s/tree", mnt);

        snprintf(path, sizeof(path), "%s/oci-layout", layout);
        json_t *marker = load_json(path);
        cr_assert_str_eq(str_of(marker, "imageLayoutVersion", path), "1.0.0");
        json_decref(marker);

        snprintf(path, sizeof(path), "%s/index.json", layout);
        json_t *index = load_json(path);
        cr_assert_eq(json_integer_value(json_object_get(index, "schemaVersion")), 2,
                     "index.json: schemaVersion is not 2");
        json_t *manifests = json_object_get(index, "manifests");
        cr_assert(json_is_array(manifests) && json_array_size(manifests) == 1,
                  "index.json: expected one manifest");
        json_t *mdesc = json_array_get(manifests, 0);
        cr_assert_str_eq(str_of(mdesc, "mediaType", "index.json"),
                         "application/vnd.oci.image.manifest.v1+json");
        blob_path(layout, mdesc, "index.json manifests[0]", path, sizeof(path));
        json_t *manifest = load_json(path);
        json_t *layers = json_object_get(manifest, "layers");
        cr_assert(json_is_array(layers) && json_array_size(layers) >= min_layers,
                  "manifest: expected at least %u layers", min_layers);
        json_t *cdesc = json_object_get(manifest, "config");
        cr_assert_str_eq(str_of(cdesc, "mediaType", "manifest config"),
                         "application/vnd.oci.image.config.v1+json");
        blob_path(layout, cdesc, "manifest config", path, sizeof(path));
        json_t *config = load_json(path);
        json_t *diff_ids = json_object_get(json_object_get(config, "rootfs"), "diff_ids");
        cr_assert(json_is_array(diff_ids) && json_array_size(diff_ids) == json_array_size(layers),
                  "config: %zu diff_ids for %zu layers", json_array_size(diff_ids),
                  json_array_size(layers));
        /* index, manifest, config and the layers: umoci gc left nothing else. */
        unsigned blobs = check_blob_names(layout);
        cr_assert_eq(blobs, 2 + json_array_size(layers), "%u blobs for %zu layers", blobs,
                     json_array_size(layers));

        cr_assert(mkdir(tree, 0755) == 0, "mkdir %s: %s", tree, strerror(errno));
        int tree_fd = open(tree, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(tree_fd >= 0, "open %s: %s", tree, strerror(errno));
        for (size_t i = 0; i < json_array_size(layers); i++) {
                char where[64];
                json_t *ldesc = json_array_get(layers, i);
                snprintf(where, sizeof(where), "layer %zu", i);
                const char *type = str_of(ldesc, "mediaType", where);
                cr_assert(strncmp(type, "application/vnd.oci.image.layer.v1.tar", 38) == 0,
                          "%s: media type %s", where, type);
                blob_path(layout, ldesc, where, path, sizeof(path));
                const char *digest = str_of(ldesc, "digest", where);
                const char *diff_id = json_string_value(json_array_get(diff_ids, i));
                cr_assert(diff_id, "config: diff_ids[%zu] is not a string", i);

                int blob_fd = open(path, O_RDONLY | O_CLOEXEC);
                cr_assert(blob_fd >= 0, "open %s: %s", path, strerror(errno));
                rl_apply_options o = { .expect_digest = digest, .expect_diff_id = diff_id };
                rl_layer_stats st = {};
                rl_error err = {};
                int r = rl_layer_apply(tree_fd, blob_fd, &o, &st, &err);
                close(blob_fd);
                cr_assert_eq(r, 0, "apply %s (%s): %s", where, digest, err.msg);
                cr_expect_str_eq(st.digest, digest, "%s: stats digest", where);
                cr_expect_str_eq(st.diff_id, diff_id, "%s: stats diff_id", where);
                cr_expect_eq((json_int_t)st.size, json_integer_value(json_object_get(ldesc, "size")),
                             "%s: stats size %lu", where, (unsigned long)st.size);
                cr_expect_gt(st.entries, 0, "%s: no entries counted", where);
        }
        close(tree_fd);
        json_decref(config);
        json_decref(manifest);
        json_decref(index);

        char why[4096];
        cr_assert(rlt_tree_equal_flags(ref, tree, NULL, NULL, RLT_CMP_NO_ATIME, why, sizeof(why)),
                  "umoci's unpack %s vs our apply %s: %s", ref, tree, why);
}

/* Four layers: every entry kind, per-entry whiteouts, opaque directories with the marker
 * before and after the new entries, replacements of every kind (tests/lib/oci-fixture). */
Test(oci, small_image_layers_match_umoci_unpack)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        char m[PATH_MAX];
        snprintf(m, sizeof(m), "%s", mnt);
        const char *dir = build_fixture("small");
        apply_and_compare(dir, m, 4);

        /* The fixture's rules reached the tree (rlt_tree_equal alone would pass with a
         * fixture that lost them on the way). */
        char p[PATH_MAX * 2];
        struct stat st;
        snprintf(p, sizeof(p), "%s/tree/srv/b/old2", m);
        cr_assert(stat(p, &st) == 0 && st.st_size == 14, "srv/b/old2 not put back by layer 4");
        snprintf(p, sizeof(p), "%s/tree/srv/b/old1", m);
        cr_assert(lstat(p, &st) < 0 && errno == ENOENT, "srv/b/old1 survived the opaque marker");
        snprintf(p, sizeof(p), "%s/tree/srv/a/old1", m);
        cr_assert(lstat(p, &st) < 0 && errno == ENOENT, "srv/a/old1 survived the opaque marker");
        snprintf(p, sizeof(p), "%s/tree/var/cache", m);
        cr_assert(lstat(p, &st) < 0 && errno == ENOENT, "var/cache survived its whiteout");
        snprintf(p, sizeof(p), "%s/tree/usr/bin/su", m);
        cr_assert(stat(p, &st) == 0 && (st.st_mode & 07777) == 04755, "usr/bin/su not setuid");
        snprintf(p, sizeof(p), "%s/tree/srv/gone", m);
        cr_assert(lstat(p, &st) == 0 && S_ISREG(st.st_mode), "srv/gone is not a file");
}

/* A Debian minbase rootfs as one layer, then a small layer of changes. */
Test(oci, debian_image_layers_match_umoci_unpack, .timeout = 900)
{
        const char *mnt = rlt_mkfs(RLT_XFS, 2048, "xfs");
        char m[PATH_MAX];
        snprintf(m, sizeof(m), "%s", mnt);
        const char *dir = build_fixture("debian");
        apply_and_compare(dir, m, 2);
}
