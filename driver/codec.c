/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * codec.c owns the JSON form of reflayer's results: one encoder and one decoder for each,
 * shared by the daemon, the client library and the CLI, so the three cannot drift apart.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "treestats.h"
#include "util.h"

json_t *rl_json_string_lossy(const char *s)
{
        json_t *j = json_string(s);
        if (j)
                return j;
        size_t n = strlen(s);
        _cleanup_free_ char *out = malloc(n * 3 + 1);
        if (!out)
                return NULL;
        size_t o = 0;
        for (size_t i = 0; i < n;) {
                unsigned char ch = (unsigned char)s[i];
                size_t len = ch < 0x80 ? 1 : (ch >> 5) == 6 ? 2 : (ch >> 4) == 14 ? 3
                                                             : (ch >> 3) == 30 ? 4 : 0;
                json_t *probe = len && i + len <= n ? json_stringn(s + i, len) : NULL;
                if (probe) {
                        memcpy(out + o, s + i, len);
                        o += len;
                        i += len;
                        json_decref(probe);
                } else {
                        memcpy(out + o, "\xef\xbf\xbd", 3);
                        o += 3;
                        i++;
                }
        }
        return json_stringn(out, o);
}

json_t *rl_json_time(int64_t ns)
{
        char buf[64];
        struct tm tm;
        time_t t = (time_t)(ns / 1000000000);
        gmtime_r(&t, &tm);
        size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(buf + n, sizeof(buf) - n, ".%09" PRId64 "Z", ns % 1000000000);
        return json_string(buf);
}

int64_t rl_json_time_parse(const char *s)
{
        struct tm tm = {};
        long ns = 0;
        const char *p = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
        if (!p)
                return 0;
        if (*p == '.') {
                long scale = 100000000;
                for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
                        ns += (*p - '0') * scale;
        }
        return (int64_t)timegm(&tm) * 1000000000 + ns;
}

json_t *rl_info_to_json(const rl_info *i)
{
        json_t *labels = json_object();
        for (size_t k = 0; labels && k < i->n_labels; k++)
                json_object_set_new(labels, i->labels[k].key,
                                    rl_json_string_lossy(i->labels[k].value));
        json_t *o = json_pack("{s:o, s:s, s:o, s:o, s:o, s:I}", "name",
                              rl_json_string_lossy(i->name), "kind", rl_kind_to_string(i->kind),
                              "labels", labels, "created", rl_json_time(i->created_ns), "updated",
                              rl_json_time(i->updated_ns), "id", (json_int_t)i->id);
        if (o && i->parent)
                json_object_set_new(o, "parent", rl_json_string_lossy(i->parent));
        if (o && i->ephemeral)
                json_object_set_new(o, "ephemeral", json_true());
        return o;
}

int rl_info_from_json(json_t *o, rl_info *ret)
{
        rl_info i = {};
        const char *kind = json_string_value(json_object_get(o, "kind"));
        for (rl_kind k = RL_KIND_ACTIVE; kind && k <= RL_KIND_COMMITTED; k++)
                if (strcmp(kind, rl_kind_to_string(k)) == 0)
                        i.kind = k;
        const char *name = json_string_value(json_object_get(o, "name"));
        const char *parent = json_string_value(json_object_get(o, "parent"));
        json_t *labels = json_object_get(o, "labels");
        if (!name || !i.kind || !json_is_object(labels))
                return -EIO;
        i.name = strdup(name);
        i.parent = parent ? strdup(parent) : NULL;
        i.id = (uint64_t)json_integer_value(json_object_get(o, "id"));
        i.created_ns = rl_json_time_parse(json_string_value(json_object_get(o, "created")));
        i.updated_ns = rl_json_time_parse(json_string_value(json_object_get(o, "updated")));
        i.ephemeral = json_is_true(json_object_get(o, "ephemeral"));
        i.n_labels = json_object_size(labels);
        i.labels = calloc(i.n_labels ? i.n_labels : 1, sizeof(*i.labels));
        size_t k = 0;
        const char *lk;
        json_t *lv;
        json_object_foreach(labels, lk, lv)
        {
                if (!i.labels)
                        break;
                i.labels[k].key = strdup(lk);
                i.labels[k].value = strdup(json_string_value(lv) ? json_string_value(lv) : "");
                k++;
        }
        bool oom = !i.name || (parent && !i.parent) || !i.labels;
        for (size_t j = 0; !oom && j < k; j++)
                oom = !i.labels[j].key || !i.labels[j].value;
        if (oom) {
                i.n_labels = k;
                rl_info_clear(&i);
                return -ENOMEM;
        }
        *ret = i;
        return 0;
}

json_t *rl_mount_to_json(const rl_mount *m)
{
        json_t *opts = json_array();
        for (size_t i = 0; opts && i < m->n_options; i++)
                json_array_append_new(opts, json_string(m->options[i]));
        return json_pack("{s:s, s:o, s:o}", "type", m->type, "source",
                         rl_json_string_lossy(m->source), "options", opts);
}

int rl_mount_from_json(json_t *o, rl_mount *ret)
{
        rl_mount m = {};
        json_t *opts = json_object_get(o, "options");
        const char *type = json_string_value(json_object_get(o, "type"));
        const char *source = json_string_value(json_object_get(o, "source"));
        if (!type || !source || !json_is_array(opts))
                return -EIO;
        m.type = strdup(type);
        m.source = strdup(source);
        m.n_options = json_array_size(opts);
        m.options = calloc(m.n_options ? m.n_options : 1, sizeof(*m.options));
        bool oom = !m.type || !m.source || !m.options;
        for (size_t i = 0; !oom && i < m.n_options; i++)
                oom = !(m.options[i] = strdup(json_string_value(json_array_get(opts, i)) ?: ""));
        if (oom) {
                rl_mount_clear(&m);
                return -ENOMEM;
        }
        *ret = m;
        return 0;
}

json_t *rl_usage_to_json(const rl_usage *u)
{
        return json_pack("{s:I, s:I, s:I, s:I, s:I}", "inodes", (json_int_t)u->inodes, "size",
                         (json_int_t)u->bytes, "exclusive", (json_int_t)u->bytes_exclusive,
                         "shared", (json_int_t)u->bytes_shared, "metadata",
                         (json_int_t)u->bytes_metadata);
}

static uint64_t u64_of(json_t *o, const char *key)
{
        json_int_t v = json_integer_value(json_object_get(o, key));
        return v > 0 ? (uint64_t)v : 0;
}

void rl_usage_from_json(json_t *o, rl_usage *ret)
{
        *ret = (rl_usage){
                .inodes = u64_of(o, "inodes"),
                .bytes = u64_of(o, "size"),
                .bytes_exclusive = u64_of(o, "exclusive"),
                .bytes_shared = u64_of(o, "shared"),
                .bytes_metadata = u64_of(o, "metadata"),
        };
}

/* The counters of rl_tree_stats by their JSON names (treestats.h), for both directions. */
json_t *rl_clone_result_to_json(const char *src, const char *dst, const char *fstype,
                                rl_reflink reflink, const rl_tree_stats *st)
{
        json_t *o = json_pack("{s:o, s:o, s:s, s:s, s:f}", "source", rl_json_string_lossy(src),
                              "destination", rl_json_string_lossy(dst), "filesystem",
                              fstype ? fstype : "unknown", "reflink",
                              rl_reflink_to_string(reflink), "seconds",
                              (double)st->elapsed_ns / 1e9);
        json_t *methods = json_object();
        if (!o || !methods) {
                json_decref(o);
                json_decref(methods);
                return NULL;
        }
#define X(f) json_object_set_new(o, #f, json_integer((json_int_t)st->f));
        RL_TREE_STATS_COUNTERS(X)
#undef X
        for (int m = 0; m < _RL_CLONE_METHOD_MAX; m++)
                json_object_set_new(methods, rl_clone_method_to_string(m),
                                    json_integer((json_int_t)st->methods[m]));
        json_object_set_new(o, "methods", methods);
        return o;
}

void rl_tree_stats_from_json(json_t *o, rl_tree_stats *ret)
{
        rl_tree_stats st = {};
#define X(f) st.f = u64_of(o, #f);
        RL_TREE_STATS_COUNTERS(X)
#undef X
        json_t *methods = json_object_get(o, "methods");
        for (int m = 0; m < _RL_CLONE_METHOD_MAX; m++)
                st.methods[m] = u64_of(methods, rl_clone_method_to_string(m));
        double secs = json_number_value(json_object_get(o, "seconds"));
        st.elapsed_ns = secs > 0 ? (uint64_t)(secs * 1e9) : 0;
        *ret = st;
}

json_t *rl_progress_to_json(const rl_tree_progress *p)
{
        return json_pack("{s:I, s:I, s:f}", "entries", (json_int_t)p->entries, "bytes",
                         (json_int_t)p->bytes, "seconds", (double)p->elapsed_ns / 1e9);
}

void rl_progress_from_json(json_t *o, rl_tree_progress *ret)
{
        double secs = json_number_value(json_object_get(o, "seconds"));
        *ret = (rl_tree_progress){
                .entries = u64_of(o, "entries"),
                .bytes = u64_of(o, "bytes"),
                .elapsed_ns = secs > 0 ? (uint64_t)(secs * 1e9) : 0,
        };
}

static void copy_string(json_t *o, const char *key, char *out, size_t size)
{
        snprintf(out, size, "%s", json_string_value(json_object_get(o, key)) ?: "");
}

json_t *rl_layer_stats_to_json(const rl_layer_stats *st)
{
        return json_pack("{s:I, s:I, s:I, s:I, s:I, s:s, s:s, s:f}", "entries",
                         (json_int_t)st->entries, "whiteouts", (json_int_t)st->whiteouts,
                         "opaques", (json_int_t)st->opaques, "bytes", (json_int_t)st->bytes,
                         "size", (json_int_t)st->size, "digest", st->digest, "diff_id",
                         st->diff_id, "seconds", (double)st->elapsed_ns / 1e9);
}

void rl_layer_stats_from_json(json_t *o, rl_layer_stats *ret)
{
        double secs = json_number_value(json_object_get(o, "seconds"));
        *ret = (rl_layer_stats){
                .entries = u64_of(o, "entries"),
                .whiteouts = u64_of(o, "whiteouts"),
                .opaques = u64_of(o, "opaques"),
                .bytes = u64_of(o, "bytes"),
                .size = u64_of(o, "size"),
                .elapsed_ns = secs > 0 ? (uint64_t)(secs * 1e9) : 0,
        };
        copy_string(o, "digest", ret->digest, sizeof(ret->digest));
        copy_string(o, "diff_id", ret->diff_id, sizeof(ret->diff_id));
}

json_t *rl_import_result_to_json(const rl_import_result *r)
{
        return json_pack("{s:s, s:s, s:i, s:i, s:I, s:f}", "manifest", r->manifest, "top",
                         r->top, "layers", (int)r->layers, "layers_new", (int)r->layers_new,
                         "bytes", (json_int_t)r->bytes, "seconds", (double)r->elapsed_ns / 1e9);
}

void rl_import_result_from_json(json_t *o, rl_import_result *ret)
{
        double secs = json_number_value(json_object_get(o, "seconds"));
        *ret = (rl_import_result){
                .layers = (unsigned)u64_of(o, "layers"),
                .layers_new = (unsigned)u64_of(o, "layers_new"),
                .bytes = u64_of(o, "bytes"),
                .elapsed_ns = secs > 0 ? (uint64_t)(secs * 1e9) : 0,
        };
        copy_string(o, "manifest", ret->manifest, sizeof(ret->manifest));
        copy_string(o, "top", ret->top, sizeof(ret->top));
}

void rl_change_path(const rl_change *c, char *out, size_t size)
{
        snprintf(out, size, "/%s", strcmp(c->path, ".") ? c->path : "");
}

json_t *rl_change_to_json(const rl_change *c)
{
        char kind[2] = { (char)c->kind, '\0' }, path[PATH_MAX + 2];
        rl_change_path(c, path, sizeof(path));
        return json_pack("{s:s, s:o, s:b}", "kind", kind, "path", rl_json_string_lossy(path),
                         "metadata_only", c->metadata_only);
}

int rl_change_from_json(json_t *o, rl_change *ret)
{
        const char *kind = json_string_value(json_object_get(o, "kind"));
        const char *path = json_string_value(json_object_get(o, "path"));
        if (!kind || strlen(kind) != 1 || !strchr("ACD", kind[0]) || !path || path[0] != '/')
                return -EIO;
        *ret = (rl_change){
                .kind = (rl_change_kind)kind[0],
                .metadata_only = json_is_true(json_object_get(o, "metadata_only")),
                .path = path[1] ? path + 1 : ".",
        };
        return 0;
}

json_t *rl_diff_stats_to_json(const rl_diff_stats *st)
{
        return json_pack("{s:I, s:I, s:I, s:I, s:f}", "entries", (json_int_t)st->entries,
                         "by_extents", (json_int_t)st->by_extents, "files_read",
                         (json_int_t)st->files_read, "bytes_read", (json_int_t)st->bytes_read,
                         "seconds", (double)st->elapsed_ns / 1e9);
}

void rl_diff_stats_from_json(json_t *o, rl_diff_stats *ret)
{
        double secs = json_number_value(json_object_get(o, "seconds"));
        *ret = (rl_diff_stats){
                .entries = u64_of(o, "entries"),
                .by_extents = u64_of(o, "by_extents"),
                .files_read = u64_of(o, "files_read"),
                .bytes_read = u64_of(o, "bytes_read"),
                .elapsed_ns = secs > 0 ? (uint64_t)(secs * 1e9) : 0,
        };
}
