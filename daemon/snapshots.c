/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * containerd's snapshots.v1 service over the store: the containerd door's codec. Each method
 * decodes its protobuf request (protobuf-c, from api/containerd/snapshots.proto), makes the
 * same store call the JSON-RPC method makes, and encodes the answer; store errors become the
 * gRPC codes containerd's errdefs map back (not_found -> NOT_FOUND, ...). Keys are opaque:
 * containerd's "NS/TXID/NAME" goes into the store as it comes.
 */
#include <errno.h>
#include <protobuf-c/protobuf-c.h>
#include <stdlib.h>
#include <string.h>

#include <reflayer/store.h>

#include "grpc.h"
#include "meta.h"
#include "snapshots.h"
#include "snapshots.pb-c.h"
#include "util.h"

/* protobuf-c's names, shortened. */
#define PB(name) Containerd__Services__Snapshots__V1__##name
#define PB_DESC(name) containerd__services__snapshots__v1__##name##__descriptor
#define PB_INIT(NAME) CONTAINERD__SERVICES__SNAPSHOTS__V1__##NAME##__INIT

/* Every map<string,string> entry of the service has this layout. */
typedef PB(Info__LabelsEntry) pb_label;

/* Streamed List replies: this many snapshots, or this many bytes, per message (the client's
 * default receive limit is 4 MiB). */
#define LIST_BATCH 100
#define LIST_BATCH_BYTES (1 << 20)

static int status_of(int r)
{
        const char *code = rl_store_error_code(r);
        if (r == -ECANCELED)
                return GRPC_CANCELLED;
        if (strcmp(code, "not_found") == 0)
                return GRPC_NOT_FOUND;
        if (strcmp(code, "already_exists") == 0)
                return GRPC_ALREADY_EXISTS;
        if (strcmp(code, "invalid_argument") == 0)
                return GRPC_INVALID_ARGUMENT;
        if (strcmp(code, "failed_precondition") == 0)
                return GRPC_FAILED_PRECONDITION;
        if (strcmp(code, "unavailable") == 0)
                return GRPC_UNAVAILABLE;
        if (strcmp(code, "permission_denied") == 0)
                return GRPC_PERMISSION_DENIED;
        return GRPC_INTERNAL;
}

static void fail_store(grpc_call *c, int r, const rl_error *err)
{
        grpc_call_fail(c, status_of(r), "%s", err->code ? err->msg : rl_strerror(-r));
}

static void fail_oom(grpc_call *c)
{
        grpc_call_fail(c, GRPC_RESOURCE_EXHAUSTED, "out of memory");
}

/* --- decoding -------------------------------------------------------------------------------- */

static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *ret)
{
        uint64_t v = 0;
        for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
                uint8_t b = *(*p)++;
                v |= (uint64_t)(b & 0x7f) << shift;
                if (!(b & 0x80)) {
                        *ret = v;
                        return true;
                }
        }
        return false;
}

/*
 * proto3 strings are UTF-8, and ours become C strings: protobuf-c checks neither, and a NUL
 * inside would silently cut a key short. So before unpacking, every string field of the
 * message (and of its messages, map entries included) is checked on the wire. Returns false
 * for a bad string; what is otherwise malformed is left to protobuf-c.
 */
static bool strings_valid(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len,
                          unsigned depth)
{
        const uint8_t *end = p + len;
        uint64_t key, n;
        if (depth > 8)
                return false;
        while (p < end) {
                if (!read_varint(&p, end, &key))
                        return true;
                switch (key & 7) {
                case 0:
                        if (!read_varint(&p, end, &n))
                                return true;
                        break;
                case 1:
                        p += 8;
                        break;
                case 5:
                        p += 4;
                        break;
                case 2: {
                        if (!read_varint(&p, end, &n) || n > (uint64_t)(end - p))
                                return true;
                        const ProtobufCFieldDescriptor *f =
                                protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3));
                        if (f && f->type == PROTOBUF_C_TYPE_STRING &&
                            !rl_utf8_valid((const char *)p, n))
                                return false;
                        if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
                            !strings_valid(f->descriptor, p, n, depth + 1))
                                return false;
                        p += n;
                        break;
                }
                default:
                        return true;
                }
        }
        return true;
}

static void *unpack(grpc_call *c, const ProtobufCMessageDescriptor *d)
{
        if (!strings_valid(d, c->request, c->request_len, 0)) {
                grpc_call_fail(c, GRPC_INVALID_ARGUMENT,
                               "%s: a string is not valid UTF-8 or holds a NUL byte", d->name);
                return NULL;
        }
        ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, c->request_len, c->request);
        if (!m)
                grpc_call_fail(c, GRPC_INVALID_ARGUMENT, "malformed %s message (%zu bytes)",
                               d->name, c->request_len);
        return m;
}

static void unpacked_freep(void *p)
{
        ProtobufCMessage **m = p;
        if (*m)
                protobuf_c_message_free_unpacked(*m, NULL);
}
#define _cleanup_msg_ _cleanup_(unpacked_freep)

static void reply(grpc_call *c, const ProtobufCMessage *m)
{
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *p = grpc_call_reserve(c, n);
        if (!p)
                return fail_oom(c);
        protobuf_c_message_pack(m, p);
}

static void reply_empty(grpc_call *c)
{
        PB(Empty) e = PB_INIT(EMPTY);
        reply(c, &e.base);
}

typedef struct label_at {
        const pb_label *e;
        size_t i; /* its place in the message */
} label_at;

/* By key, and for one key in the order they came (qsort is not stable). */
static int by_key_then_place(const void *a, const void *b)
{
        const label_at *x = a, *y = b;
        int c = strcmp(x->e->key, y->e->key);
        return c ? c : (x->i > y->i) - (x->i < y->i);
}

/*
 * A map<string,string> as store labels, pointing into the message. Protobuf's rule for a
 * key given twice, the last wins, is kept: earlier duplicates are dropped. Sorted, so that
 * a message of half a million labels costs a sort, not a comparison of every pair.
 */
static int labels_of(pb_label *const *entries, size_t n, rl_label **ret, size_t *ret_n)
{
        _cleanup_free_ label_at *at = calloc(n ? n : 1, sizeof(*at));
        rl_label *l = calloc(n ? n : 1, sizeof(*l));
        if (!at || !l) {
                free(l);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++)
                at[i] = (label_at){ entries[i], i };
        qsort(at, n, sizeof(*at), by_key_then_place);
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
                if (i + 1 == n || strcmp(at[i].e->key, at[i + 1].e->key) != 0)
                        l[k++] = (rl_label){ at[i].e->key, at[i].e->value };
        *ret = l;
        *ret_n = k;
        return 0;
}
#define LABELS_OF(req, ret, ret_n) \
        labels_of((pb_label *const *)(void *)(req)->labels, (req)->n_labels, ret, ret_n)

/* --- encoding -------------------------------------------------------------------------------- */

/* An rl_info as a protobuf Info; the strings stay the rl_info's. */
typedef struct pb_info {
        PB(Info) info;
        PB(Timestamp) created, updated;
        pb_label *entries;
        pb_label **labels;
} pb_info;

static int info_to_pb(const rl_info *in, pb_info *out)
{
        *out = (pb_info){ .info = PB_INIT(INFO), .created = PB_INIT(TIMESTAMP),
                          .updated = PB_INIT(TIMESTAMP) };
        out->entries = calloc(in->n_labels ? in->n_labels : 1, sizeof(*out->entries));
        out->labels = calloc(in->n_labels ? in->n_labels : 1, sizeof(*out->labels));
        if (!out->entries || !out->labels)
                return -ENOMEM;
        for (size_t i = 0; i < in->n_labels; i++) {
                out->entries[i] = (pb_label)PB_INIT(INFO__LABELS_ENTRY);
                out->entries[i].key = in->labels[i].key;
                out->entries[i].value = in->labels[i].value;
                out->labels[i] = &out->entries[i];
        }
        out->info.name = in->name;
        out->info.parent = in->parent ? in->parent : (char *)"";
        switch (in->kind) {
        case RL_KIND_ACTIVE:
                out->info.kind = CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__ACTIVE;
                break;
        case RL_KIND_VIEW:
                out->info.kind = CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__VIEW;
                break;
        case RL_KIND_COMMITTED:
                out->info.kind = CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__COMMITTED;
                break;
        }
        out->created.seconds = in->created_ns / 1000000000;
        out->created.nanos = (int32_t)(in->created_ns % 1000000000);
        out->updated.seconds = in->updated_ns / 1000000000;
        out->updated.nanos = (int32_t)(in->updated_ns % 1000000000);
        out->info.created_at = &out->created;
        out->info.updated_at = &out->updated;
        out->info.n_labels = in->n_labels;
        out->info.labels = (PB(Info__LabelsEntry) **)out->labels;
        return 0;
}

static void pb_info_clear(pb_info *p)
{
        free(p->entries);
        free(p->labels);
        p->entries = NULL;
        p->labels = NULL;
}

/* The store's mounts, as a message whose field 1 is `repeated Mount mounts` (Prepare, View
 * and Mounts answer with three such types). */
static void reply_mounts(rpc_server *srv, grpc_call *c, const char *key, ProtobufCMessage *resp,
                         size_t *n_mounts, PB(Mount) ***mounts)
{
        rl_error err = {};
        rl_mount m;
        int r = rl_store_mounts(srv->store, key, &m, &err);
        if (r < 0)
                return fail_store(c, r, &err);
        PB(Mount) pm = PB_INIT(MOUNT);
        PB(Mount) *list[] = { &pm };
        pm.type = m.type;
        pm.source = m.source;
        pm.n_options = m.n_options;
        pm.options = m.options;
        *n_mounts = 1;
        *mounts = list;
        reply(c, resp);
        *n_mounts = 0;
        *mounts = NULL;
        rl_mount_clear(&m);
}

/* --- methods --------------------------------------------------------------------------------- */

/* Prepare and View: their requests and answers differ in type only. */
static void create(rpc_server *srv, grpc_call *c, bool view, const char *key, const char *parent,
                   pb_label *const *entries, size_t n_entries, ProtobufCMessage *resp,
                   size_t *n_mounts, PB(Mount) ***mounts)
{
        _cleanup_free_ rl_label *labels = NULL;
        rl_error err = {};
        size_t n;
        if (labels_of(entries, n_entries, &labels, &n) < 0)
                return fail_oom(c);
        rl_prepare_options o = { .cancel = c->cancel, .ephemeral = srv->ephemeral };
        int r = view ? rl_store_view(srv->store, key, parent, labels, n, &o, &err)
                     : rl_store_prepare(srv->store, key, parent, labels, n, &o, &err);
        if (r < 0)
                return fail_store(c, r, &err);
        reply_mounts(srv, c, key, resp, n_mounts, mounts);
}

static void m_prepare(void *userdata, grpc_call *c)
{
        _cleanup_msg_ PB(PrepareSnapshotRequest) *req = unpack(c, &PB_DESC(prepare_snapshot_request));
        PB(PrepareSnapshotResponse) resp = PB_INIT(PREPARE_SNAPSHOT_RESPONSE);
        if (req)
                create(userdata, c, false, req->key, req->parent,
                       (pb_label *const *)(void *)req->labels, req->n_labels, &resp.base,
                       &resp.n_mounts, &resp.mounts);
}

static void m_view(void *userdata, grpc_call *c)
{
        _cleanup_msg_ PB(ViewSnapshotRequest) *req = unpack(c, &PB_DESC(view_snapshot_request));
        PB(ViewSnapshotResponse) resp = PB_INIT(VIEW_SNAPSHOT_RESPONSE);
        if (req)
                create(userdata, c, true, req->key, req->parent,
                       (pb_label *const *)(void *)req->labels, req->n_labels, &resp.base,
                       &resp.n_mounts, &resp.mounts);
}

static void m_mounts(void *userdata, grpc_call *c)
{
        rpc_server *srv = userdata;
        _cleanup_msg_ PB(MountsRequest) *req = unpack(c, &PB_DESC(mounts_request));
        if (!req)
                return;
        PB(MountsResponse) resp = PB_INIT(MOUNTS_RESPONSE);
        reply_mounts(srv, c, req->key, &resp.base, &resp.n_mounts, &resp.mounts);
}

static void m_commit(void *userdata, grpc_call *c)
{
        rpc_server *srv = userdata;
        _cleanup_msg_ PB(CommitSnapshotRequest) *req = unpack(c, &PB_DESC(commit_snapshot_request));
        _cleanup_free_ rl_label *labels = NULL;
        rl_error err = {};
        size_t n;
        if (!req)
                return;
        if (LABELS_OF(req, &labels, &n) < 0)
                return fail_oom(c);
        int r = rl_store_commit(srv->store, req->name, req->key, labels, n, &err);
        if (r < 0)
                return fail_store(c, r, &err);
        reply_empty(c);
}

static void m_remove(void *userdata, grpc_call *c)
{
        rpc_server *srv = userdata;
        _cleanup_msg_ PB(RemoveSnapshotRequest) *req = unpack(c, &PB_DESC(remove_snapshot_request));
        rl_error err = {};
        if (!req)
                return;
        int r = rl_store_remove(srv->store, req->key, &err);
        if (r < 0)
                return fail_store(c, r, &err);
        reply_empty(c);
}

/* Stat and Update answer with a message whose field 1 is one Info. */
static void reply_info(grpc_call *c, const rl_info *i, ProtobufCMessage *resp, PB(Info) **field)
{
        pb_info p;
        if (info_to_pb(i, &p) < 0)
                fail_oom(c);
        else {
                *field = &p.info;
                reply(c, resp);
                *field = NULL;
        }
        pb_info_clear(&p);
}

static void m_stat(void *userdata, grpc_call *c)
{
        rpc_server *srv = userdata;
        _cleanup_msg_ PB(StatSnapshotRequest) *req = unpack(c, &PB_DESC(stat_snapshot_request));
        rl_error err = {};
        rl_info i;
        if (!req)
                return;
        int r = rl_store_stat(srv->store, req->key, &i, &err);
        if (r < 0)
                return fail_store(c, r, &err);
        PB(StatSnapshotResponse) resp = PB_INIT(STAT_SNAPSHOT_RESPONSE);
        reply_info(c, &i, &resp.base, &resp.info);
        rl_info_clear(&i);
}

static void m_update(void *userdata, grpc_call *c)
{
        rpc_server *srv = userdata;
        _cleanup_msg_ PB(UpdateSnapshotRequest) *req = unpack(c, &PB_DESC(update_snapshot_request));
        _cleanup_free_ rl_label *labels = NULL;
        rl_error err = {};
        rl_info out;
        size_t n;
        if (!req)
                return;
        if (!req->info)
                return grpc_call_fail(c, GRPC_INVALID_ARGUMENT, "update: info is required");
        if (LABELS_OF(req->info, &labels, &n) < 0)
                return fail_oom(c);
        rl_info in = { .name = req->info->name, .labels = labels, .n_labels = n };
        size_t n_paths = req->update_mask ? req->update_mask->n_paths : 0;
        const char *const *paths = req->update_mask ? (const char *const *)req->update_mask->paths
                                                    : NULL;
        int r = rl_store_update(srv->store, &in, paths, n_paths, &out, &err);
        if (r < 0)
                return fail_store(c, r, &err);
        PB(UpdateSnapshotResponse) resp = PB_INIT(UPDATE_SNAPSHOT_RESPONSE);
        reply_info(c, &out, &resp.base, &resp.info);
        rl_info_clear(&out);
}

/* List's replies are batches; a batch is built by appending one-Info encodings of
 * ListSnapshotsResponse, which protobuf merges into one message (a repeated field's
 * elements concatenate). */
typedef struct list_state {
        grpc_call *c;
        uint8_t *buf;
        size_t len, cap, count;
} list_state;

static int list_flush(list_state *s)
{
        if (s->count == 0)
                return 0;
        uint8_t *p = grpc_call_reserve(s->c, s->len);
        if (!p)
                return -ENOMEM;
        memcpy(p, s->buf, s->len);
        s->len = s->count = 0;
        return 0;
}

static int list_one(const rl_info *info, void *userdata)
{
        list_state *s = userdata;
        pb_info p;
        int r = info_to_pb(info, &p);
        if (r == 0) {
                PB(Info) *one[] = { &p.info };
                PB(ListSnapshotsResponse) m = PB_INIT(LIST_SNAPSHOTS_RESPONSE);
                m.n_info = 1;
                m.info = one;
                size_t n = protobuf_c_message_get_packed_size(&m.base);
                if (s->count && s->len + n > LIST_BATCH_BYTES)
                        r = list_flush(s);
                if (r == 0 && !RL_GROW(s->buf, s->cap, s->len + n))
                        r = -ENOMEM;
                if (r == 0) {
                        protobuf_c_message_pack(&m.base, s->buf + s->len);
                        s->len += n;
                        if (++s->count == LIST_BATCH)
                                r = list_flush(s);
                }
        }
        pb_info_clear(&p);
        return r;
}

static void m_list(void *userdata, grpc_call *c)
{
        rpc_server *srv = userdata;
        _cleanup_msg_ PB(ListSnapshotsRequest) *req = unpack(c, &PB_DESC(list_snapshots_request));
        list_state s = { .c = c };
        rl_error err = {};
        if (!req)
                return;
        int r = rl_store_walk(srv->store, (const char *const *)req->filters, req->n_filters,
                              list_one, &s, &err);
        if (r == 0)
                r = list_flush(&s);
        free(s.buf);
        if (r == -ENOMEM)
                return fail_oom(c);
        if (r < 0)
                return fail_store(c, r, &err);
}

/* A snapshot's own bytes: what its tree allocates that no other file shares (what a
 * reflinked file still shares with its parent is the parent's), and its inodes. */
static void m_usage(void *userdata, grpc_call *c)
{
        rpc_server *srv = userdata;
        _cleanup_msg_ PB(UsageRequest) *req = unpack(c, &PB_DESC(usage_request));
        rl_error err = {};
        rl_usage u;
        if (!req)
                return;
        int r = rl_store_usage(srv->store, req->key, &u, &err);
        if (r < 0)
                return fail_store(c, r, &err);
        PB(UsageResponse) resp = PB_INIT(USAGE_RESPONSE);
        resp.size = (int64_t)u.bytes_exclusive;
        resp.inodes = (int64_t)u.inodes;
        reply(c, &resp.base);
}

static void m_cleanup(void *userdata, grpc_call *c)
{
        rpc_server *srv = userdata;
        _cleanup_msg_ PB(CleanupRequest) *req = unpack(c, &PB_DESC(cleanup_request));
        rl_error err = {};
        if (!req)
                return;
        int r = rl_store_cleanup(srv->store, &err);
        if (r < 0)
                return fail_store(c, r, &err);
        reply_empty(c);
}

#define METHOD(name, fn) { "/containerd.services.snapshots.v1.Snapshots/" name, fn }
static const grpc_method methods[] = {
        METHOD("Prepare", m_prepare), METHOD("View", m_view),       METHOD("Mounts", m_mounts),
        METHOD("Commit", m_commit),   METHOD("Remove", m_remove),   METHOD("Stat", m_stat),
        METHOD("Update", m_update),   METHOD("List", m_list),       METHOD("Usage", m_usage),
        METHOD("Cleanup", m_cleanup),
};

void snapshots_service(rpc_server *srv, size_t max_message, grpc_service *ret)
{
        *ret = (grpc_service){ .methods = methods,
                               .n_methods = sizeof(methods) / sizeof(methods[0]),
                               .userdata = srv,
                               .max_message = max_message,
                               .max_streams = 128 };
}
