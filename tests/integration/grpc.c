/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The containerd door on the wire: reflayerd's snapshots.v1 gRPC service, spoken to by a
 * small HTTP/2 client of the test's own (libnghttp2, messages by protobuf-c) so that every
 * rule can be broken on purpose: the calls and their error codes, List in batches, unknown
 * methods, messages over the limit or truncated, not HTTP/2 at all, a stream reset in the
 * middle of a Prepare, deadlines, many streams at once, and a slow Prepare beside a Stat on
 * the same connection. containerd's own suite (tests/containerd) checks the semantics.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "rltest-daemon.h"
#include "rltest.h"
#include "snapshots.pb-c.h"

#define PB(name) Containerd__Services__Snapshots__V1__##name
#define PB_INIT(NAME) CONTAINERD__SERVICES__SNAPSHOTS__V1__##NAME##__INIT
#define PB_DESC(name) containerd__services__snapshots__v1__##name##__descriptor

static char mnt[PATH_MAX], gsock[PATH_MAX];
static rlt_daemon D = { .pid = -1 };

static void setup(void)
{
        rlt_init();
        snprintf(mnt, sizeof(mnt), "%s", rlt_mkfs(RLT_XFS, 0, "xfs"));
        snprintf(D.root, sizeof(D.root), "%s/store", mnt);
        snprintf(D.sock, sizeof(D.sock), "%s/reflayer.sock", rlt_scratch());
        /* The containerd socket's default: beside --socket. */
        snprintf(gsock, sizeof(gsock), "%s/containerd.sock", rlt_scratch());
        rlt_daemon_start(&D, -1, NULL);
}

static void teardown(void)
{
        cr_expect_eq(rlt_daemon_stop(&D), 0, "reflayerd did not stop cleanly");
        rlt_fini();
}

TestSuite(grpc, .init = setup, .fini = teardown, .timeout = 180);

/* --- a small gRPC client --------------------------------------------------------------------- */

typedef struct gcall {
        int32_t id;
        int http_status;
        int status; /* grpc-status; -1 until it came */
        char message[1024];
        uint8_t *data; /* the reply messages, with their prefixes */
        size_t len;
        bool closed;
        uint32_t error_code; /* of the stream's close (RST_STREAM) */
        /* the request */
        uint8_t *req;
        size_t req_len, req_off;
} gcall;

typedef struct gclient {
        int fd;
        nghttp2_session *s;
        bool eof;
} gclient;

static ssize_t c_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *u)
{
        (void)s, (void)flags;
        gclient *c = u;
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        return n < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : n;
}

static int c_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                    const uint8_t *value, size_t vl, uint8_t flags, void *u)
{
        (void)flags, (void)u;
        gcall *call = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (!call)
                return 0;
        if (nl == 7 && memcmp(name, ":status", 7) == 0)
                call->http_status = atoi((const char *)value);
        else if (nl == 11 && memcmp(name, "grpc-status", 11) == 0)
                call->status = atoi((const char *)value);
        else if (nl == 12 && memcmp(name, "grpc-message", 12) == 0)
                snprintf(call->message, sizeof(call->message), "%.*s", (int)vl, value);
        return 0;
}

static int c_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                  void *u)
{
        (void)flags, (void)u;
        gcall *call = nghttp2_session_get_stream_user_data(s, id);
        if (!call)
                return 0;
        call->data = realloc(call->data, call->len + len);
        cr_assert(call->data);
        memcpy(call->data + call->len, data, len);
        call->len += len;
        return 0;
}

static int c_close(nghttp2_session *s, int32_t id, uint32_t code, void *u)
{
        (void)u;
        gcall *call = nghttp2_session_get_stream_user_data(s, id);
        if (call) {
                call->closed = true;
                call->error_code = code;
        }
        return 0;
}

static int connect_to(const char *path)
{
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        cr_assert(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0,
                  "connect %s: %s", path, strerror(errno));
        return fd;
}

/* A client on the connection fd (-1: a new one to the containerd socket). */
static void gc_open_fd(gclient *c, int fd)
{
        nghttp2_session_callbacks *cbs;
        *c = (gclient){ .fd = fd >= 0 ? fd : connect_to(gsock) };
        cr_assert(nghttp2_session_callbacks_new(&cbs) == 0);
        nghttp2_session_callbacks_set_send_callback(cbs, c_send);
        nghttp2_session_callbacks_set_on_header_callback(cbs, c_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, c_data);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, c_close);
        cr_assert(nghttp2_session_client_new(&c->s, cbs, c) == 0);
        nghttp2_session_callbacks_del(cbs);
        cr_assert(nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, NULL, 0) == 0);
}

static void gc_open(gclient *c)
{
        gc_open_fd(c, -1);
}

static void gc_close(gclient *c)
{
        nghttp2_session_del(c->s);
        close(c->fd);
}

/* Send what is queued, then read what comes within timeout_ms. */
static void gc_pump(gclient *c, int timeout_ms)
{
        cr_assert(nghttp2_session_send(c->s) == 0, "send to reflayerd failed");
        struct pollfd p = { c->fd, POLLIN, 0 };
        if (c->eof || poll(&p, 1, timeout_ms) <= 0)
                return;
        uint8_t buf[65536];
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n <= 0) {
                c->eof = true;
                return;
        }
        cr_assert(nghttp2_session_mem_recv(c->s, buf, (size_t)n) == n,
                  "reflayerd sent something that is not HTTP/2");
}

static ssize_t c_read_req(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                          uint32_t *flags, nghttp2_data_source *src, void *u)
{
        (void)s, (void)id, (void)u;
        gcall *call = src->ptr;
        size_t n = call->req_len - call->req_off;
        if (n > length)
                n = length;
        memcpy(buf, call->req + call->req_off, n);
        call->req_off += n;
        if (call->req_off == call->req_len)
                *flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
}

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE }

/* Start a call with raw body bytes (prefixes included) and headers of the caller's choice. */
static void gc_start_raw(gclient *c, gcall *call, const char *path, const char *content_type,
                         const char *timeout, const uint8_t *body, size_t len)
{
        *call = (gcall){ .status = -1 };
        call->req = malloc(len + 1);
        cr_assert(call->req);
        memcpy(call->req, body, len);
        call->req_len = len;
        nghttp2_nv nva[7] = { NV(":method", "POST"), NV(":scheme", "http"), NV(":path", path),
                              NV(":authority", "reflayer"), NV("content-type", content_type),
                              NV("te", "trailers") };
        size_t n = 6;
        if (timeout)
                nva[n++] = (nghttp2_nv)NV("grpc-timeout", timeout);
        nghttp2_data_provider prd = { .source.ptr = call, .read_callback = c_read_req };
        call->id = nghttp2_submit_request(c->s, NULL, nva, n, &prd, call);
        cr_assert(call->id > 0, "submit: %s", nghttp2_strerror(call->id));
}

static uint8_t *framed(const ProtobufCMessage *m, size_t *len)
{
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *b = malloc(n + 5);
        cr_assert(b);
        b[0] = 0;
        b[1] = (uint8_t)(n >> 24), b[2] = (uint8_t)(n >> 16), b[3] = (uint8_t)(n >> 8);
        b[4] = (uint8_t)n;
        protobuf_c_message_pack(m, b + 5);
        *len = n + 5;
        return b;
}

#define METHOD(name) "/containerd.services.snapshots.v1.Snapshots/" name

static void gc_start(gclient *c, gcall *call, const char *method, const ProtobufCMessage *m,
                     const char *timeout)
{
        size_t len;
        uint8_t *b = framed(m, &len);
        gc_start_raw(c, call, method, "application/grpc", timeout, b, len);
        free(b);
}

static void gc_wait(gclient *c, gcall *call)
{
        for (int i = 0; i < 6000 && !call->closed && !c->eof; i++)
                gc_pump(c, 10);
        cr_assert(call->closed, "stream %d: no answer within 60 s", call->id);
}

static void gc_free(gcall *call)
{
        free(call->data);
        free(call->req);
}

/* A unary call on a connection of its own; returns the grpc-status; the reply in *call. */
static int unary(gcall *call, const char *method, const ProtobufCMessage *m)
{
        gclient c;
        gc_open(&c);
        gc_start(&c, call, method, m, NULL);
        gc_wait(&c, call);
        gc_close(&c);
        return call->status;
}

/* The i-th reply message of a call, unpacked. */
static void *reply_msg(gcall *call, size_t i, const ProtobufCMessageDescriptor *d)
{
        size_t off = 0;
        for (;;) {
                cr_assert(off + 5 <= call->len, "reply %zu missing (%zu bytes)", i, call->len);
                uint32_t n = (uint32_t)call->data[off + 1] << 24 | (uint32_t)call->data[off + 2] << 16 |
                             (uint32_t)call->data[off + 3] << 8 | call->data[off + 4];
                cr_assert(off + 5 + n <= call->len, "reply message truncated");
                if (i-- == 0) {
                        void *m = protobuf_c_message_unpack(d, NULL, n, call->data + off + 5);
                        cr_assert(m, "reply is not a %s", d->name);
                        return m;
                }
                off += 5 + n;
        }
}

static size_t reply_count(gcall *call)
{
        size_t k = 0;
        for (size_t off = 0; off + 5 <= call->len; k++)
                off += 5 + ((uint32_t)call->data[off + 1] << 24 | (uint32_t)call->data[off + 2] << 16 |
                            (uint32_t)call->data[off + 3] << 8 | call->data[off + 4]);
        return k;
}

static int stat_key(const char *key)
{
        PB(StatSnapshotRequest) r = PB_INIT(STAT_SNAPSHOT_REQUEST);
        r.key = (char *)key;
        gcall call;
        int st = unary(&call, METHOD("Stat"), &r.base);
        gc_free(&call);
        return st;
}

/* Prepare key on parent; returns the mount source (to free), asserting status OK. */
static char *prepare(const char *key, const char *parent)
{
        PB(PrepareSnapshotRequest) r = PB_INIT(PREPARE_SNAPSHOT_REQUEST);
        r.key = (char *)key;
        r.parent = (char *)parent;
        gcall call;
        cr_assert_eq(unary(&call, METHOD("Prepare"), &r.base), 0, "prepare %s: %d %s", key,
                     call.status, call.message);
        PB(PrepareSnapshotResponse) *resp = reply_msg(&call, 0, &PB_DESC(prepare_snapshot_response));
        cr_assert_eq(resp->n_mounts, 1);
        char *src = strdup(resp->mounts[0]->source);
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        gc_free(&call);
        return src;
}

static void commit(const char *name, const char *key, PB(CommitSnapshotRequest__LabelsEntry) **labels,
                   size_t n)
{
        PB(CommitSnapshotRequest) r = PB_INIT(COMMIT_SNAPSHOT_REQUEST);
        r.name = (char *)name;
        r.key = (char *)key;
        r.labels = labels;
        r.n_labels = n;
        gcall call;
        cr_assert_eq(unary(&call, METHOD("Commit"), &r.base), 0, "commit: %s", call.message);
        gc_free(&call);
}

/* --- tests ----------------------------------------------------------------------------------- */

Test(grpc, snapshots_and_error_codes)
{
        char *src = prepare("default/1/layer", "");
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/hello", src);
        rlt_write_file(path, 100000, 1);
        PB(CommitSnapshotRequest__LabelsEntry) ref = PB_INIT(COMMIT_SNAPSHOT_REQUEST__LABELS_ENTRY);
        ref.key = "containerd.io/snapshot.ref";
        ref.value = "sha256:abc";
        /* A key given twice: protobuf's map rule, the last wins. */
        PB(CommitSnapshotRequest__LabelsEntry) old = ref;
        old.value = "sha256:old";
        PB(CommitSnapshotRequest__LabelsEntry) *labels[] = { &old, &ref };
        commit("default/2/base", "default/1/layer", labels, 2);
        free(src);

        /* Stat: committed, labels kept, times set. With a grpc-timeout whose nanoseconds
         * overflow 64 bits: no deadline, not one in the past. */
        PB(StatSnapshotRequest) sr = PB_INIT(STAT_SNAPSHOT_REQUEST);
        sr.key = "default/2/base";
        gcall call;
        gclient conn;
        gc_open(&conn);
        gc_start(&conn, &call, METHOD("Stat"), &sr.base, "99999999H");
        gc_wait(&conn, &call);
        gc_close(&conn);
        cr_assert_eq(call.status, 0, "%s", call.message);
        PB(StatSnapshotResponse) *st = reply_msg(&call, 0, &PB_DESC(stat_snapshot_response));
        cr_assert(st->info);
        cr_assert_str_eq(st->info->name, "default/2/base");
        cr_assert_eq(st->info->kind, CONTAINERD__SERVICES__SNAPSHOTS__V1__KIND__COMMITTED);
        cr_assert_eq(st->info->n_labels, 1);
        cr_assert_str_eq(st->info->labels[0]->key, "containerd.io/snapshot.ref");
        cr_assert_str_eq(st->info->labels[0]->value, "sha256:abc");
        cr_assert(st->info->created_at && st->info->created_at->seconds > 1700000000);
        protobuf_c_message_free_unpacked(&st->base, NULL);
        gc_free(&call);

        /* A child is a clone: the file is there; Mounts says rbind, rw. */
        src = prepare("default/3/ctr", "default/2/base");
        snprintf(path, sizeof(path), "%s/hello", src);
        struct stat stt;
        cr_assert(stat(path, &stt) == 0 && stt.st_size == 100000);
        snprintf(path, sizeof(path), "%s/written", src);
        rlt_write_file(path, 200000, 2);
        free(src);
        PB(MountsRequest) mr = PB_INIT(MOUNTS_REQUEST);
        mr.key = "default/3/ctr";
        cr_assert_eq(unary(&call, METHOD("Mounts"), &mr.base), 0);
        PB(MountsResponse) *mounts = reply_msg(&call, 0, &PB_DESC(mounts_response));
        cr_assert_eq(mounts->n_mounts, 1);
        cr_assert_str_eq(mounts->mounts[0]->type, "bind");
        cr_assert_eq(mounts->mounts[0]->n_options, 2);
        cr_assert_str_eq(mounts->mounts[0]->options[0], "rbind");
        cr_assert_str_eq(mounts->mounts[0]->options[1], "rw");
        protobuf_c_message_free_unpacked(&mounts->base, NULL);
        gc_free(&call);

        /* A view is ro. */
        PB(ViewSnapshotRequest) vr = PB_INIT(VIEW_SNAPSHOT_REQUEST);
        vr.key = "default/4/view";
        vr.parent = "default/2/base";
        cr_assert_eq(unary(&call, METHOD("View"), &vr.base), 0, "%s", call.message);
        PB(ViewSnapshotResponse) *view = reply_msg(&call, 0, &PB_DESC(view_snapshot_response));
        cr_assert_str_eq(view->mounts[0]->options[1], "ro");
        protobuf_c_message_free_unpacked(&view->base, NULL);
        gc_free(&call);

        /* Update labels.KEY. */
        PB(Info__LabelsEntry) gc = PB_INIT(INFO__LABELS_ENTRY);
        gc.key = "containerd.io/gc.root";
        gc.value = "1";
        PB(Info__LabelsEntry) *il[] = { &gc };
        PB(Info) info = PB_INIT(INFO);
        info.name = "default/2/base";
        info.labels = il;
        info.n_labels = 1;
        char *paths[] = { "labels.containerd.io/gc.root" };
        PB(FieldMask) mask = PB_INIT(FIELD_MASK);
        mask.paths = paths;
        mask.n_paths = 1;
        PB(UpdateSnapshotRequest) ur = PB_INIT(UPDATE_SNAPSHOT_REQUEST);
        ur.info = &info;
        ur.update_mask = &mask;
        cr_assert_eq(unary(&call, METHOD("Update"), &ur.base), 0, "%s", call.message);
        PB(UpdateSnapshotResponse) *up = reply_msg(&call, 0, &PB_DESC(update_snapshot_response));
        cr_assert_eq(up->info->n_labels, 2, "both labels after the update");
        protobuf_c_message_free_unpacked(&up->base, NULL);
        gc_free(&call);

        /* Usage: a snapshot's own bytes, what removing it would free: the container's
         * written file, not the one it still shares with its parent; all its inodes. */
        PB(UsageRequest) usr = PB_INIT(USAGE_REQUEST);
        usr.key = "default/3/ctr";
        cr_assert_eq(unary(&call, METHOD("Usage"), &usr.base), 0);
        PB(UsageResponse) *u = reply_msg(&call, 0, &PB_DESC(usage_response));
        cr_assert_eq(u->inodes, 3, "root and two files: %ld", (long)u->inodes);
        cr_assert(u->size >= 200000 && u->size < 300000, "size %ld", (long)u->size);
        protobuf_c_message_free_unpacked(&u->base, NULL);
        gc_free(&call);

        /* The error model: each store error is the gRPC code containerd's errdefs know. */
        cr_assert_eq(stat_key("default/9/missing"), 5, "NOT_FOUND");
        PB(PrepareSnapshotRequest) pr = PB_INIT(PREPARE_SNAPSHOT_REQUEST);
        pr.key = "default/3/ctr";
        cr_assert_eq(unary(&call, METHOD("Prepare"), &pr.base), 6, "ALREADY_EXISTS");
        cr_assert(strstr(call.message, "default/3/ctr"), "the message names the key: %s",
                  call.message);
        gc_free(&call);
        PB(RemoveSnapshotRequest) rr = PB_INIT(REMOVE_SNAPSHOT_REQUEST);
        rr.key = "default/2/base";
        cr_assert_eq(unary(&call, METHOD("Remove"), &rr.base), 9, "FAILED_PRECONDITION");
        gc_free(&call);
        char *bad_paths[] = { "name" };
        mask.paths = bad_paths;
        cr_assert_eq(unary(&call, METHOD("Update"), &ur.base), 3, "INVALID_ARGUMENT");
        gc_free(&call);
        pr.key = "bad\xff";
        cr_assert_eq(unary(&call, METHOD("Prepare"), &pr.base), 3, "not UTF-8: INVALID_ARGUMENT");
        gc_free(&call);
        /* A NUL would cut the key short in C: refused, not truncated. */
        pr.key = "";
        uint8_t raw[] = { 0, 0, 0, 0, 5, 0x12, 3, 'a', 0, 'b' };
        gclient c;
        gc_open(&c);
        gc_start_raw(&c, &call, METHOD("Stat"), "application/grpc", NULL, raw, sizeof(raw));
        gc_wait(&c, &call);
        cr_assert_eq(call.status, 3, "a key with a NUL: %d %s", call.status, call.message);
        gc_free(&call);
        gc_close(&c);

        /* Remove the child, then the base: both go. */
        rr.key = "default/3/ctr";
        cr_assert_eq(unary(&call, METHOD("Remove"), &rr.base), 0);
        gc_free(&call);
        rr.key = "default/4/view";
        cr_assert_eq(unary(&call, METHOD("Remove"), &rr.base), 0);
        gc_free(&call);
        rr.key = "default/2/base";
        cr_assert_eq(unary(&call, METHOD("Remove"), &rr.base), 0, "%s", call.message);
        gc_free(&call);
        PB(CleanupRequest) cl = PB_INIT(CLEANUP_REQUEST);
        cr_assert_eq(unary(&call, METHOD("Cleanup"), &cl.base), 0);
        gc_free(&call);
        cr_assert_eq(stat_key("default/2/base"), 5);
}

Test(grpc, list_streams_batches_and_filters)
{
        char key[64];
        for (int i = 0; i < 250; i++) {
                snprintf(key, sizeof(key), "ns/%d/k", i);
                free(prepare(key, ""));
        }
        PB(ListSnapshotsRequest) lr = PB_INIT(LIST_SNAPSHOTS_REQUEST);
        gcall call;
        cr_assert_eq(unary(&call, METHOD("List"), &lr.base), 0, "%s", call.message);
        size_t n = reply_count(&call), total = 0;
        cr_assert_eq(n, 3, "250 snapshots in batches of 100: %zu messages", n);
        for (size_t i = 0; i < n; i++) {
                PB(ListSnapshotsResponse) *m = reply_msg(&call, i, &PB_DESC(list_snapshots_response));
                total += m->n_info;
                protobuf_c_message_free_unpacked(&m->base, NULL);
        }
        cr_assert_eq(total, 250);
        gc_free(&call);

        char *filters[] = { "name==ns/7/k", "name~=^ns/24[0-9]/" };
        lr.filters = filters;
        lr.n_filters = 2;
        cr_assert_eq(unary(&call, METHOD("List"), &lr.base), 0, "%s", call.message);
        PB(ListSnapshotsResponse) *m = reply_msg(&call, 0, &PB_DESC(list_snapshots_response));
        cr_assert_eq(m->n_info, 11, "one or the other filter: %zu", m->n_info);
        protobuf_c_message_free_unpacked(&m->base, NULL);
        gc_free(&call);

        /* Nothing matches: OK with no message at all. */
        char *none[] = { "kind==committed" };
        lr.filters = none;
        lr.n_filters = 1;
        cr_assert_eq(unary(&call, METHOD("List"), &lr.base), 0);
        cr_assert_eq(reply_count(&call), 0);
        gc_free(&call);
        char *broken[] = { "labels.\"unterminated" };
        lr.filters = broken;
        cr_assert_eq(unary(&call, METHOD("List"), &lr.base), 3, "a bad filter: %s", call.message);
        gc_free(&call);
}

Test(grpc, bad_requests_get_their_status)
{
        gclient c;
        gcall calls[8];
        PB(StatSnapshotRequest) sr = PB_INIT(STAT_SNAPSHOT_REQUEST);
        sr.key = "nope";
        size_t len;
        uint8_t *good = framed(&sr.base, &len);

        gc_open(&c);
        gc_start_raw(&c, &calls[0], "/containerd.services.snapshots.v1.Snapshots/Rename",
                     "application/grpc", NULL, good, len);
        gc_start_raw(&c, &calls[1], "/other.Service/Stat", "application/grpc", NULL, good, len);
        /* The prefix says 2 GiB: refused at once, before any of it is sent. */
        uint8_t huge[] = { 0, 0x80, 0, 0, 0, 1, 2, 3 };
        gc_start_raw(&c, &calls[2], METHOD("Stat"), "application/grpc", NULL, huge, sizeof(huge));
        /* Says 100 bytes, has 3. */
        uint8_t trunc[] = { 0, 0, 0, 0, 100, 1, 2, 3 };
        gc_start_raw(&c, &calls[3], METHOD("Stat"), "application/grpc", NULL, trunc, sizeof(trunc));
        gc_start_raw(&c, &calls[4], METHOD("Stat"), "application/grpc", NULL, good, 0);
        uint8_t *comp = malloc(len);
        memcpy(comp, good, len);
        comp[0] = 1;
        gc_start_raw(&c, &calls[5], METHOD("Stat"), "application/grpc", NULL, comp, len);
        uint8_t *two = malloc(2 * len);
        memcpy(two, good, len);
        memcpy(two + len, good, len);
        gc_start_raw(&c, &calls[6], METHOD("Stat"), "application/grpc", NULL, two, 2 * len);
        gc_start_raw(&c, &calls[7], METHOD("Stat"), "application/json", NULL, good, len);
        for (int i = 0; i < 8; i++)
                gc_wait(&c, &calls[i]);
        int want[] = { 12, 12, 8, 13, 13, 12, 12, 3 };
        for (int i = 0; i < 8; i++) {
                cr_expect_eq(calls[i].status, want[i], "call %d: status %d (%s), expected %d", i,
                             calls[i].status, calls[i].message, want[i]);
                cr_expect(calls[i].message[0], "call %d: a message says why", i);
        }
        cr_expect_eq(calls[7].http_status, 415, "not application/grpc: HTTP 415");
        cr_expect(strstr(calls[0].message, "Rename"), "names the method: %s", calls[0].message);
        for (int i = 0; i < 8; i++)
                gc_free(&calls[i]);

        /* The connection still serves. */
        gc_start_raw(&c, &calls[0], METHOD("Stat"), "application/grpc", NULL, good, len);
        gc_wait(&c, &calls[0]);
        cr_assert_eq(calls[0].status, 5, "a good call after the bad ones: %s", calls[0].message);
        gc_free(&calls[0]);
        gc_close(&c);
        free(good);
        free(comp);
        free(two);
}

/* Send raw bytes on a new connection; the daemon must close it within 5 s without a crash. */
static void closes_cleanly(const char *bytes, size_t len)
{
        int fd = connect_to(gsock);
        cr_assert(send(fd, bytes, len, MSG_NOSIGNAL) == (ssize_t)len);
        char buf[4096];
        bool closed = false;
        for (int i = 0; i < 50 && !closed; i++) {
                struct pollfd p = { fd, POLLIN, 0 };
                if (poll(&p, 1, 100) == 1) {
                        ssize_t n = recv(fd, buf, sizeof(buf), 0);
                        closed = n <= 0;
                        cr_assert(n <= 0 || memcmp(buf, "HTTP/1.1 200", 12) != 0);
                }
        }
        cr_assert(closed, "reflayerd kept a connection that is not HTTP/2");
        close(fd);
}

/* A JSON-RPC Version call on path answers. */
static void json_rpc_serves(const char *path)
{
        int fd = connect_to(path);
        const char v[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Version\"}\n";
        cr_assert(send(fd, v, sizeof(v) - 1, MSG_NOSIGNAL) == sizeof(v) - 1);
        char buf[512] = "";
        cr_assert(recv(fd, buf, sizeof(buf) - 1, 0) > 0 && strstr(buf, "\"result\""),
                  "JSON-RPC on %s: %s", path, buf);
        close(fd);
}

Test(grpc, not_http2_is_closed_and_both_sockets_serve_on)
{
        const char http1[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        closes_cleanly(http1, sizeof(http1) - 1);
        const char preface[] = "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n";
        closes_cleanly(preface, sizeof(preface) - 1);
        closes_cleanly("\x00\x01\x02garbage", 10);

        cr_assert_eq(stat_key("still/serving"), 5);
        json_rpc_serves(D.sock);
}

/* A parent with many files, so that a Prepare of it takes a while. */
static void big_parent(const char *name, int files)
{
        char *src = prepare("big/tmp", "");
        for (int d = 0; d < files / 1000; d++) {
                char path[PATH_MAX];
                snprintf(path, sizeof(path), "%s/d%d", src, d);
                cr_assert(mkdir(path, 0755) == 0);
                for (int i = 0; i < 1000; i++) {
                        snprintf(path, sizeof(path), "%s/d%d/f%d", src, d, i);
                        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
                        cr_assert(fd >= 0 && write(fd, "x", 1) == 1);
                        close(fd);
                }
        }
        free(src);
        commit(name, "big/tmp", NULL, 0);
}

/* Open c and start on it the Prepare of key from a new parent of that many files (named
 * KEY-parent): long enough to act while it runs. timeout: grpc-timeout (NULL: none). */
static void start_slow_prepare(gclient *c, gcall *call, const char *key, int files,
                               const char *timeout)
{
        char parent[128];
        snprintf(parent, sizeof(parent), "%s-parent", key);
        big_parent(parent, files);
        PB(PrepareSnapshotRequest) pr = PB_INIT(PREPARE_SNAPSHOT_REQUEST);
        pr.key = (char *)key;
        pr.parent = parent;
        gc_open(c);
        gc_start(c, call, METHOD("Prepare"), &pr.base, timeout);
}

Test(grpc, slow_prepare_never_blocks_a_stat_and_a_reset_abandons_it)
{
        gclient c;
        gcall prep, st;
        start_slow_prepare(&c, &prep, "big/child", 40000, NULL);
        PB(StatSnapshotRequest) sr = PB_INIT(STAT_SNAPSHOT_REQUEST);
        sr.key = "big/child-parent";
        gc_pump(&c, 50);
        /* A Stat on the same connection while the Prepare clones. */
        gc_start(&c, &st, METHOD("Stat"), &sr.base, NULL);
        gc_wait(&c, &st);
        cr_assert_eq(st.status, 0);
        cr_assert(!prep.closed, "the Prepare of 40,000 files ended before a Stat beside it");
        /* The client gives up on the Prepare. */
        cr_assert(nghttp2_submit_rst_stream(c.s, NGHTTP2_FLAG_NONE, prep.id, NGHTTP2_CANCEL) == 0);
        gc_pump(&c, 10);
        gc_free(&st);
        /* The connection goes on; the abandoned Prepare publishes nothing, now or later. */
        gc_start(&c, &st, METHOD("Stat"), &sr.base, NULL);
        gc_wait(&c, &st);
        cr_assert_eq(st.status, 0);
        for (int i = 0; i < 30; i++) {
                cr_assert_eq(stat_key("big/child"), 5, "a reset Prepare was published");
                gc_pump(&c, 100);
        }
        gc_free(&st);
        gc_free(&prep);
        gc_close(&c);
}

Test(grpc, deadline_exceeded_publishes_nothing)
{
        gclient c;
        gcall call;
        struct timespec t0, t1;
        start_slow_prepare(&c, &call, "big/late", 40000, "30m");
        clock_gettime(CLOCK_MONOTONIC, &t0); /* the request is only submitted so far */
        gc_wait(&c, &call);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        cr_assert_eq(call.status, 4, "DEADLINE_EXCEEDED: %d %s", call.status, call.message);
        cr_assert(s < 0.5, "answered %.3f s after a 30 ms deadline", s);
        gc_free(&call);
        gc_close(&c);
        for (int i = 0; i < 30; i++) {
                cr_assert_eq(stat_key("big/late"), 5, "a Prepare past its deadline was published");
                usleep(100000);
        }
}

Test(grpc, many_streams_on_one_connection)
{
        free(prepare("many/a", ""));
        PB(StatSnapshotRequest) sr = PB_INIT(STAT_SNAPSHOT_REQUEST);
        sr.key = "many/a";
        enum { N = 100 };
        static gcall calls[N];
        gclient c;
        gc_open(&c);
        for (int i = 0; i < N; i++)
                gc_start(&c, &calls[i], METHOD("Stat"), &sr.base, NULL);
        for (int i = 0; i < N; i++) {
                gc_wait(&c, &calls[i]);
                cr_assert_eq(calls[i].status, 0, "stream %d: %d %s", i, calls[i].status,
                             calls[i].message);
                PB(StatSnapshotResponse) *m = reply_msg(&calls[i], 0, &PB_DESC(stat_snapshot_response));
                cr_assert_str_eq(m->info->name, "many/a");
                protobuf_c_message_free_unpacked(&m->base, NULL);
                gc_free(&calls[i]);
        }
        gc_close(&c);
}

static int listen_at(const char *path)
{
        unlink(path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
                          listen(fd, 16) == 0,
                  "listen %s: %s", path, strerror(errno));
        return fd;
}

Test(grpc, socket_activation_tells_the_sockets_by_name)
{
        cr_assert_eq(rlt_daemon_stop(&D), 0);
        /* systemd's two sockets, at paths the daemon is not told: it must serve these. */
        char rpc_path[PATH_MAX];
        snprintf(rpc_path, sizeof(rpc_path), "%s/passed.sock", rlt_scratch());
        snprintf(gsock, sizeof(gsock), "%s/passed-containerd.sock", rlt_scratch());
        int rfd = listen_at(rpc_path), gfd = listen_at(gsock);
        snprintf(D.sock, sizeof(D.sock), "%s/unused.sock", rlt_scratch());
        rlt_daemon_start_activated(&D, rfd, gfd);
        close(rfd);
        close(gfd);
        cr_assert_eq(stat_key("via/systemd"), 5, "the passed containerd socket serves gRPC");
        char unused[PATH_MAX];
        snprintf(unused, sizeof(unused), "%s/containerd.sock", rlt_scratch());
        cr_expect(access(D.sock, F_OK) < 0 && access(unused, F_OK) < 0,
                  "made sockets of its own despite LISTEN_FDS");
        json_rpc_serves(rpc_path); /* the unnamed socket is the JSON-RPC one */
}

Test(grpc, sigterm_answers_the_call_in_flight)
{
        gclient c;
        gcall call;
        start_slow_prepare(&c, &call, "big/inflight", 30000, NULL);
        gc_pump(&c, 100);
        cr_assert(!call.closed, "the Prepare of 30,000 files was over in 100 ms");
        cr_assert_eq(kill(D.pid, SIGTERM), 0);
        gc_wait(&c, &call);
        cr_assert_eq(call.status, 0, "the call in flight when reflayerd stopped: %d %s",
                     call.status, call.message);
        gc_free(&call);
        gc_close(&c);
        int status;
        cr_assert_eq(waitpid(D.pid, &status, 0), D.pid);
        D.pid = -1;
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
        rlt_daemon_start(&D, -1, NULL);
        cr_assert_eq(stat_key("big/inflight"), 0, "answered, then lost");
}

Test(grpc, unauthorised_peer_gets_permission_denied)
{
        chmod(rlt_scratch(), 0755);
        chmod(gsock, 0666); /* let it reach the socket: the daemon itself must refuse */
        int fd = rlt_connect_as(gsock, 65534, 65534);
        cr_assert_geq(fd, 0, "connect as nobody: %s", strerror(-fd));
        PB(StatSnapshotRequest) sr = PB_INIT(STAT_SNAPSHOT_REQUEST);
        sr.key = "x";
        gclient c;
        gcall call;
        gc_open_fd(&c, fd);
        gc_start(&c, &call, METHOD("Stat"), &sr.base, NULL);
        gc_wait(&c, &call);
        cr_assert_eq(call.status, 7, "PERMISSION_DENIED: %d %s", call.status, call.message);
        cr_assert(strstr(call.message, "permission denied"), "says why: %s", call.message);
        gc_free(&call);
        gc_close(&c);
        cr_assert_eq(stat_key("x"), 5, "root is still served");
}

/*
 * Past --max-connections a gRPC client is served UNAVAILABLE, saying why, but only so many
 * at once (each costs a thread): past those, a connection is closed at once.
 */
Test(grpc, connections_past_the_limit_are_refused_then_closed)
{
        cr_assert_eq(rlt_daemon_stop(&D), 0);
        const char *extra[] = { "--max-connections", "1", NULL };
        rlt_daemon_start(&D, -1, extra);
        int hold = connect_to(D.sock); /* the one allowed: answered, so surely counted */
        const char *v = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Version\"}\n";
        cr_assert(write(hold, v, strlen(v)) == (ssize_t)strlen(v));
        char answer[4096];
        cr_assert_gt(read(hold, answer, sizeof(answer)), 0, "no answer to Version");
        PB(StatSnapshotRequest) sr = PB_INIT(STAT_SNAPSHOT_REQUEST);
        sr.key = "x";
        gclient c[17];
        /* Each refused one is registered before the next connects (its call answered). */
        for (int i = 0; i < 16; i++) {
                gcall call;
                gc_open(&c[i]);
                gc_start(&c[i], &call, METHOD("Stat"), &sr.base, NULL);
                gc_wait(&c[i], &call);
                cr_assert_eq(call.status, 14, "connection %d: UNAVAILABLE: %d %s", i,
                             call.status, call.message);
                cr_assert(strstr(call.message, "too many connections"), "says why: %s",
                          call.message);
                gc_free(&call);
        }
        /* Closed unanswered: the read sees the end, or the send the reset. */
        gcall call;
        gc_open(&c[16]);
        gc_start(&c[16], &call, METHOD("Stat"), &sr.base, NULL);
        bool gone = false;
        for (int i = 0; i < 500 && !gone && !call.closed; i++) {
                struct pollfd p = { c[16].fd, POLLIN, 0 };
                uint8_t buf[4096];
                gone = nghttp2_session_send(c[16].s) != 0 ||
                       (poll(&p, 1, 10) == 1 && recv(c[16].fd, buf, sizeof(buf), 0) <= 0);
        }
        cr_expect(gone && !call.closed, "connection 17 past the limit was served");
        gc_free(&call);
        for (int i = 0; i < 17; i++)
                gc_close(&c[i]);
        close(hold);
        /* All gone: served again (NOT_FOUND), once the daemon saw them close (until then,
         * with a limit of one, each try may find the last one's connection still open). */
        int st = -1;
        for (int i = 0; i < 100 && (st = stat_key("x")) != 5; i++)
                usleep(20000);
        cr_expect_eq(st, 5, "not served again once the connections closed");
}
