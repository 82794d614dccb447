/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * meta.c owns snapshot metadata records: info.json in jansson, validated on read, replaced
 * atomically and durably on write, or written in place into a placeholder reserved ahead of
 * time (the warm pool's fast path); and label validation.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "meta.h"
#include "util.h"

#define META_VERSION 1
#define META_TMP RL_META_FILE ".tmp"
/* A record past this is not ours. Labels are capped (RL_LABELS_TOTAL_MAX) well below it,
 * even at JSON's worst escaping (6 bytes a byte), so no write can make a record unreadable. */
#define META_MAX (8u << 20)

void rl_meta_clear(rl_meta *m)
{
        free(m->name);
        json_decref(m->labels);
        *m = (rl_meta){};
}

static int kind_from_string(const char *s, rl_kind *ret)
{
        for (rl_kind k = RL_KIND_ACTIVE; k <= RL_KIND_COMMITTED; k++)
                if (strcmp(s, rl_kind_to_string(k)) == 0) {
                        *ret = k;
                        return 0;
                }
        return -EINVAL;
}

int rl_meta_read(int dir_fd, rl_meta *ret, rl_error *err)
{
        _cleanup_(json_decrefp) json_t *root = NULL;
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        json_error_t jerr;
        size_t len = 0;

        fd = openat(dir_fd, RL_META_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return rl_error_set(err, -errno, "read %s", RL_META_FILE);
        buf = malloc(META_MAX + 1);
        if (!buf)
                return rl_error_set(err, -ENOMEM, "read %s", RL_META_FILE);
        for (;;) {
                ssize_t n = read(fd, buf + len, META_MAX + 1 - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return rl_error_set(err, -errno, "read %s", RL_META_FILE);
                }
                if (n == 0)
                        break;
                len += (size_t)n;
                if (len > META_MAX)
                        return rl_error_set(err, -EUCLEAN, "%s: larger than %u bytes",
                                            RL_META_FILE, META_MAX);
        }
        root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root)
                return rl_error_set(err, -EUCLEAN, "%s: %s at line %d", RL_META_FILE, jerr.text,
                                    jerr.line);
        return rl_meta_from_json(root, RL_META_FILE, ret, err);
}

int rl_meta_from_json(json_t *root, const char *what, rl_meta *ret, rl_error *err)
{
        json_error_t jerr;
        json_int_t version = 0, id = 0, parent = 0, created = 0, updated = 0;
        const char *kind = NULL, *name = NULL;
        json_t *labels = NULL;
        if (json_unpack_ex(root, &jerr, JSON_STRICT, "{s:I, s:I, s:s, s:s, s:I, s:o, s:I, s:I}",
                           "version", &version, "id", &id, "kind", &kind, "name", &name,
                           "parent", &parent, "labels", &labels, "created_ns", &created,
                           "updated_ns", &updated) < 0)
                return rl_error_set(err, -EUCLEAN, "%s: %s", what, jerr.text);
        rl_meta m = { .id = (uint64_t)id, .parent_id = (uint64_t)parent, .created_ns = created,
                      .updated_ns = updated };
        if (version != META_VERSION || id <= 0 || parent < 0 || !json_is_object(labels) ||
            kind_from_string(kind, &m.kind) < 0)
                return rl_error_set(err, -EUCLEAN, "%s: not a version %d record", what,
                                    META_VERSION);
        const char *k;
        json_t *v;
        json_object_foreach(labels, k, v) if (!json_is_string(v)) return rl_error_set(
                err, -EUCLEAN, "%s: label '%s' is not a string", what, k);
        m.name = strdup(name);
        if (!m.name)
                return rl_error_set(err, -ENOMEM, "read %s", what);
        m.labels = json_incref(labels);
        *ret = m;
        return 0;
}

json_t *rl_meta_to_json(const rl_meta *m)
{
        return json_pack("{s:i, s:I, s:s, s:s, s:I, s:O, s:I, s:I}", "version", META_VERSION,
                         "id", (json_int_t)m->id, "kind", rl_kind_to_string(m->kind), "name",
                         m->name, "parent", (json_int_t)m->parent_id, "labels", m->labels,
                         "created_ns", (json_int_t)m->created_ns, "updated_ns",
                         (json_int_t)m->updated_ns);
}

/* The record as JSON text (malloc'd). */
static int encode(const rl_meta *m, char **ret, rl_error *err)
{
        _cleanup_(json_decrefp) json_t *root = NULL;

        root = rl_meta_to_json(m);
        char *text = root ? json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
        if (!text)
                return rl_error_set(err, -ENOMEM, "write %s", RL_META_FILE);
        *ret = text;
        return 0;
}

/* Create dir_fd/name (flags adds O_TRUNC or O_EXCL) holding buf: its fd, or -errno (said,
 * as what). */
static int create_with(int dir_fd, const char *name, int flags, const void *buf, size_t len,
                       const char *what, rl_error *err)
{
        _cleanup_close_ int fd = openat(dir_fd, name,
                                        O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | flags, 0644);
        if (fd < 0)
                return rl_error_set(err, -errno, "%s %s", what, name);
        int r = rl_write_all(fd, buf, len);
        if (r < 0)
                return rl_error_set(err, r, "%s %s", what, name);
        return TAKE_FD(fd);
}

int rl_meta_write(int dir_fd, const rl_meta *m, rl_error *err)
{
        _cleanup_free_ char *text = NULL;
        _cleanup_close_ int fd = -EBADF;
        int r;

        r = encode(m, &text, err);
        if (r < 0)
                return r;

        /* Temporary file, fsync, rename over the old record, fsync the directory: a reader
         * (or a restart after a crash) sees the old record or the new one, never a mix. */
        fd = create_with(dir_fd, META_TMP, O_TRUNC, text, strlen(text), "write", err);
        if (fd < 0)
                return fd;
        /* Ephemeral: no fsync at all. Only a crash of the process can come between, which
         * the page cache survives; a power cut takes the whole snapshot anyway. */
        if (!m->ephemeral && fsync(fd) < 0)
                return rl_error_set(err, -errno, "fsync %s", META_TMP);
        if (renameat(dir_fd, META_TMP, dir_fd, RL_META_FILE) < 0)
                return rl_error_set(err, -errno, "rename %s", META_TMP);
        /* The new record is in place: the change is made, whatever fsync says next. Were
         * the directory's fsync to fail, a power cut could bring back the old record, whole;
         * reporting failure now would make the caller's memory disagree with the disk. */
        if (!m->ephemeral)
                (void)fsync(dir_fd);
        return 0;
}

/* RL_META_RESERVED bytes of blanks, the last a newline: valid JSON text holds a value, this
 * holds none, so a placeholder never reads as a record (rl_meta_read: -EUCLEAN). */
static void blank(char *buf)
{
        memset(buf, ' ', RL_META_RESERVED - 1);
        buf[RL_META_RESERVED - 1] = '\n';
}

int rl_meta_reserve(int dir_fd, rl_error *err)
{
        char buf[RL_META_RESERVED];
        blank(buf);
        _cleanup_close_ int fd = create_with(dir_fd, RL_META_FILE, O_EXCL, buf, sizeof(buf),
                                             "reserve", err);
        return fd < 0 ? fd : 0;
}

int rl_meta_fill(int dir_fd, const rl_meta *m, bool flush, rl_error *err)
{
        _cleanup_free_ char *text = NULL;
        _cleanup_close_ int fd = -EBADF;
        char buf[RL_META_RESERVED];
        struct stat st;
        int r;

        r = encode(m, &text, err);
        if (r < 0)
                return r;
        size_t len = strlen(text);
        fd = openat(dir_fd, RL_META_FILE, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno != ENOENT)
                return rl_error_set(err, -errno, "write %s", RL_META_FILE);
        if (fd >= 0 && fstat(fd, &st) < 0)
                return rl_error_set(err, -errno, "write %s", RL_META_FILE);
        /* No placeholder, or a record too long for it: the usual way (new file, rename,
         * two fsyncs), unless the caller flushes it some other way. The newline at the end
         * of the placeholder stays. */
        if (fd < 0 || !S_ISREG(st.st_mode) || st.st_size != RL_META_RESERVED ||
            len > RL_META_RESERVED - 1)
                return flush ? rl_meta_write(dir_fd, m, err) : -E2BIG;

        /* The record, then blanks to the placeholder's length (JSON allows whitespace after
         * the value): the size stays, and the blocks were allocated and written (and synced,
         * by whoever reserved them): an overwrite in place, which fdatasync makes durable
         * with one write and a cache flush, no journal commit. It is not atomic, and needs
         * not be: nobody reads this record until the directory is published, which the
         * caller does only after this returns. */
        blank(buf);
        memcpy(buf, text, len);
        r = rl_write_all(fd, buf, sizeof(buf)); /* from offset 0: the fd is fresh */
        if (r < 0)
                return rl_error_set(err, r, "write %s", RL_META_FILE);
        if (flush && !m->ephemeral && fdatasync(fd) < 0)
                return rl_error_set(err, -errno, "fdatasync %s", RL_META_FILE);
        return 0;
}

/* Strict UTF-8: no overlongs, no surrogates, nothing past U+10FFFF, no NUL (C strings). */
bool rl_utf8_valid(const char *s, size_t len)
{
        const unsigned char *p = (const unsigned char *)s, *end = p + len;

        while (p < end) {
                unsigned c = *p;
                size_t n;
                unsigned cp;
                if (c == 0)
                        return false;
                if (c < 0x80) {
                        p++;
                        continue;
                }
                if (c >= 0xc2 && c <= 0xdf) {
                        n = 1;
                        cp = c & 0x1f;
                } else if (c >= 0xe0 && c <= 0xef) {
                        n = 2;
                        cp = c & 0x0f;
                } else if (c >= 0xf0 && c <= 0xf4) {
                        n = 3;
                        cp = c & 0x07;
                } else {
                        return false;
                }
                if ((size_t)(end - p) <= n)
                        return false;
                for (size_t i = 1; i <= n; i++) {
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                        cp = (cp << 6) | (p[i] & 0x3f);
                }
                if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
                    (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
                        return false;
                p += n + 1;
        }
        return true;
}

int rl_meta_labels_from(const rl_label *labels, size_t n, json_t **ret, rl_error *err)
{
        _cleanup_(json_decrefp) json_t *o = json_object();

        if (!o)
                return rl_error_set(err, -ENOMEM, "labels");
        for (size_t i = 0; i < n; i++) {
                const char *k = labels[i].key, *v = labels[i].value;
                if (!k || !v || !k[0])
                        return rl_error_set(err, -EINVAL, "label %zu: empty key or no value", i);
                size_t kl = strlen(k), vl = strlen(v);
                if (kl + vl > RL_LABEL_MAX)
                        return rl_error_set(err, -EINVAL,
                                            "label '%.64s': key and value exceed %d bytes", k,
                                            RL_LABEL_MAX);
                if (!rl_utf8_valid(k, kl) || !rl_utf8_valid(v, vl))
                        return rl_error_set(err, -EINVAL, "label %zu: not valid UTF-8", i);
                if (json_object_set_new(o, k, json_string(v)) < 0)
                        return rl_error_set(err, -ENOMEM, "labels");
        }
        int r = rl_meta_labels_check(o, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(o);
        return 0;
}

int rl_meta_labels_check(const json_t *labels, rl_error *err)
{
        size_t total = 0;
        const char *k;
        json_t *v;

        json_object_foreach((json_t *)labels, k, v) total += strlen(k) + json_string_length(v);
        if (total > RL_LABELS_TOTAL_MAX)
                return rl_error_set(err, -EINVAL, "labels: %zu bytes in all, more than %d", total,
                                    RL_LABELS_TOTAL_MAX);
        return 0;
}

static int label_cmp(const void *a, const void *b)
{
        return strcmp(((const rl_label *)a)->key, ((const rl_label *)b)->key);
}

int rl_meta_labels_to(const json_t *labels, rl_label **ret, size_t *ret_n)
{
        size_t n = json_object_size(labels), i = 0;
        rl_label *out = n ? calloc(n, sizeof(*out)) : NULL;
        const char *k;
        json_t *v;

        if (n && !out)
                return -ENOMEM;
        json_object_foreach((json_t *)labels, k, v)
        {
                out[i].key = strdup(k);
                out[i].value = strdup(json_string_value(v));
                if (!out[i].key || !out[i].value) {
                        for (size_t j = 0; j <= i; j++) {
                                free(out[j].key);
                                free(out[j].value);
                        }
                        free(out);
                        return -ENOMEM;
                }
                i++;
        }
        if (n)
                qsort(out, n, sizeof(*out), label_cmp);
        *ret = out;
        *ret_n = n;
        return 0;
}
