/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * gRPC's wire rules on HTTP/2 (grpc/doc/PROTOCOL-HTTP2.md), server side, for unary and
 * server-streaming calls: a POST to /Service/Method with content-type application/grpc, the
 * request as one length-prefixed message, the reply as zero or more such messages, then
 * trailers with grpc-status and (percent-encoded) grpc-message; or, for a call that fails
 * before any reply, one HEADERS frame holding everything ("Trailers-Only"). grpc-timeout
 * sets a deadline; a message past the limit gets RESOURCE_EXHAUSTED as soon as its prefix
 * says so, without reading the rest.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "grpc.h"
#include "log.h"
#include "util.h"

#define PREFIX 5 /* compressed flag, 4-byte big-endian length */

typedef struct gconn gconn;
typedef struct gstream gstream;

/* A request handed to a thread. Its fields other than call are the connection thread's. */
typedef struct job {
        grpc_call call;
        atomic_bool cancel;
        grpc_method_fn fn;
        gconn *conn;
        gstream *st;  /* the stream it answers; NULL once that is gone (orphan) */
        uint8_t *req; /* owned copy of the request message */
        struct job *next;
} job;

struct gstream {
        int32_t id;
        char path[256];
        bool path_too_long, post, grpc_type;
        char content_type[64];
        int64_t deadline_ns; /* CLOCK_MONOTONIC; 0: none */
        uint8_t *in;
        size_t in_len, in_cap;
        bool remote_closed; /* the client sent END_STREAM */
        bool answered;      /* a response is submitted: what arrives later is dropped */
        job *job;           /* running */
        /* The reply being written by the data provider. */
        uint8_t *out;
        size_t out_len, out_off;
        int status;
        char *message;
        gstream *prev, *next; /* every live stream of the connection */
};

struct gconn {
        const grpc_service *svc;
        const rpc_peer *peer;
        int refusal;
        const char *refusal_message;
        int fd, efd, stop_fd;
        nghttp2_session *session;
        bool eof, dead, stopping;
        gstream *streams;
        unsigned in_flight; /* jobs started and not yet collected */
        pthread_mutex_t lock;
        job *done; /* finished jobs, under lock */
};

static int64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* --- replies, as methods build them --------------------------------------------------------- */

uint8_t *grpc_call_reserve(grpc_call *c, size_t len)
{
        if (len > UINT32_MAX)
                return NULL;
        if (c->out_len + PREFIX + len > c->out_cap) {
                size_t cap = c->out_cap ? c->out_cap : 256;
                while (cap < c->out_len + PREFIX + len)
                        cap *= 2;
                uint8_t *n = realloc(c->out, cap);
                if (!n)
                        return NULL;
                c->out = n;
                c->out_cap = cap;
        }
        uint8_t *p = c->out + c->out_len;
        p[0] = 0; /* not compressed */
        p[1] = (uint8_t)(len >> 24);
        p[2] = (uint8_t)(len >> 16);
        p[3] = (uint8_t)(len >> 8);
        p[4] = (uint8_t)len;
        c->out_len += PREFIX + len;
        return p + PREFIX;
}

void grpc_call_fail(grpc_call *c, int status, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        free(c->message);
        if (vasprintf(&c->message, fmt, ap) < 0)
                c->message = NULL;
        va_end(ap);
        c->status = status;
        c->out_len = 0;
}

/* --- responses ------------------------------------------------------------------------------ */

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE }

/* grpc-message: percent-encoded outside printable ASCII, and '%' itself. */
static char *percent_encode(const char *s)
{
        size_t n = strlen(s);
        char *out = malloc(n * 3 + 1), *p = out;
        if (!out)
                return NULL;
        for (; *s; s++) {
                unsigned char ch = (unsigned char)*s;
                if (ch < 0x20 || ch > 0x7e || ch == '%')
                        p += sprintf(p, "%%%02X", ch);
                else
                        *p++ = (char)ch;
        }
        *p = '\0';
        return out;
}

static void stream_free(gconn *c, gstream *st)
{
        if (st->prev)
                st->prev->next = st->next;
        else
                c->streams = st->next;
        if (st->next)
                st->next->prev = st->prev;
        if (st->job) {
                /* Nobody will read the answer: the job stops early, and is dropped when it
                 * comes back. */
                atomic_store(&st->job->cancel, true);
                st->job->st = NULL;
        }
        free(st->in);
        free(st->out);
        free(st->message);
        free(st);
}

/* An answer without reply messages, in one HEADERS frame ending the stream. */
static int answer_status(gconn *c, gstream *st, int http_status, int status, const char *message)
{
        char code[16], hs[8];
        _cleanup_free_ char *enc = percent_encode(message ? message : "");
        snprintf(code, sizeof(code), "%d", status);
        snprintf(hs, sizeof(hs), "%d", http_status);
        nghttp2_nv nva[] = { NV(":status", hs), NV("content-type", "application/grpc"),
                             NV("grpc-status", code), NV("grpc-message", enc ? enc : "") };
        st->answered = true;
        if (st->job) {
                atomic_store(&st->job->cancel, true);
                st->job->st = NULL;
                st->job = NULL;
        }
        free(st->in);
        st->in = NULL;
        st->in_len = st->in_cap = 0;
        if (status != GRPC_OK)
                log_debug("pid %d stream %d %s: status %d: %s", (int)c->peer->pid, st->id,
                          st->path, status, message ? message : "");
        return nghttp2_submit_response(c->session, st->id, nva,
                                       message && *message ? 4 : 3, NULL);
}

static ssize_t read_reply(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                          size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                          void *user_data)
{
        (void)user_data;
        gstream *st = source->ptr;
        size_t n = st->out_len - st->out_off;
        if (n > length)
                n = length;
        memcpy(buf, st->out + st->out_off, n);
        st->out_off += n;
        if (st->out_off == st->out_len) {
                *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
                nghttp2_nv tr[] = { NV("grpc-status", "0") };
                if (nghttp2_submit_trailer(session, stream_id, tr, 1) != 0)
                        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return (ssize_t)n;
}

/* A finished call: its messages and status (trailers), or its failure alone. */
static int answer_call(gconn *c, gstream *st, grpc_call *call)
{
        if (call->status != GRPC_OK || call->out_len == 0)
                return answer_status(c, st, 200, call->status, call->message);
        st->answered = true;
        st->out = call->out;
        st->out_len = call->out_len;
        st->out_off = 0;
        call->out = NULL;
        call->out_len = call->out_cap = 0;
        nghttp2_nv nva[] = { NV(":status", "200"), NV("content-type", "application/grpc") };
        nghttp2_data_provider prd = { .source.ptr = st, .read_callback = read_reply };
        return nghttp2_submit_response(c->session, st->id, nva, 2, &prd);
}

/* --- calls ---------------------------------------------------------------------------------- */

static void job_free(job *j)
{
        free(j->call.out);
        free(j->call.message);
        free(j->req);
        free(j);
}

static void *job_main(void *arg)
{
        job *j = arg;
        gconn *c = j->conn;
        j->fn(c->svc->userdata, &j->call);
        /* Hand it back; the eventfd is written under the lock so the connection, which
         * closes it only after collecting every job, cannot have closed it yet. */
        pthread_mutex_lock(&c->lock);
        j->next = c->done;
        c->done = j;
        uint64_t one = 1;
        (void)!write(c->efd, &one, sizeof(one));
        pthread_mutex_unlock(&c->lock);
        return NULL;
}

static const grpc_method *find_method(const grpc_service *svc, const char *path)
{
        for (size_t i = 0; i < svc->n_methods; i++)
                if (strcmp(svc->methods[i].path, path) == 0)
                        return &svc->methods[i];
        return NULL;
}

static bool content_type_ok(const char *ct)
{
        /* application/grpc, application/grpc+proto, application/grpc;charset=... */
        size_t n = strlen("application/grpc");
        return strncmp(ct, "application/grpc", n) == 0 &&
               (ct[n] == '\0' || ct[n] == '+' || ct[n] == ';');
}

static uint32_t be32(const uint8_t *p)
{
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The request is whole (END_STREAM): check it, and start its method on a thread. */
static int start_call(gconn *c, gstream *st)
{
        const grpc_method *m;
        if (!st->post)
                return answer_status(c, st, 405, GRPC_UNIMPLEMENTED, "gRPC calls are POSTs");
        if (!st->grpc_type)
                return answer_status(c, st, 415, GRPC_INVALID_ARGUMENT,
                                     "content-type is not application/grpc");
        if (c->refusal != GRPC_OK)
                return answer_status(c, st, 200, c->refusal, c->refusal_message);
        if (st->path_too_long || !(m = find_method(c->svc, st->path))) {
                char msg[320];
                snprintf(msg, sizeof(msg), "unknown method %s%s", st->path,
                         st->path_too_long ? "..." : "");
                return answer_status(c, st, 200, GRPC_UNIMPLEMENTED, msg);
        }
        if (st->in_len < PREFIX)
                return answer_status(c, st, 200, GRPC_INTERNAL,
                                     st->in_len ? "truncated message prefix"
                                                : "the call has no request message");
        if (st->in[0] != 0)
                return answer_status(c, st, 200, GRPC_UNIMPLEMENTED,
                                     "compressed messages are not supported (send "
                                     "grpc-encoding identity)");
        uint32_t len = be32(st->in + 1);
        if (st->in_len - PREFIX < len) {
                char msg[128];
                snprintf(msg, sizeof(msg), "truncated message: %zu of %" PRIu32 " bytes",
                         st->in_len - PREFIX, len);
                return answer_status(c, st, 200, GRPC_INTERNAL, msg);
        }
        if (st->in_len - PREFIX > len)
                return answer_status(c, st, 200, GRPC_UNIMPLEMENTED,
                                     "more than one request message: the method is unary "
                                     "or server-streaming");

        /* A call whose deadline passed or whose stream was reset is answered at once but
         * runs on until it notices (cancel): its stream no longer counts towards the
         * streams allowed at once, so the calls running are bounded here. */
        if (c->in_flight >= c->svc->max_streams)
                return answer_status(c, st, 200, GRPC_RESOURCE_EXHAUSTED,
                                     "too many calls running on this connection (abandoned ones "
                                     "included): try again later");
        job *j = calloc(1, sizeof(*j));
        if (!j)
                return answer_status(c, st, 200, GRPC_RESOURCE_EXHAUSTED, "out of memory");
        /* The request moves to the job: the stream buffer has the prefix in front. */
        memmove(st->in, st->in + PREFIX, len);
        *j = (job){ .fn = m->fn, .conn = c, .st = st, .req = st->in };
        st->in = NULL;
        st->in_len = st->in_cap = 0;
        j->call = (grpc_call){ .request = j->req, .request_len = len, .peer = c->peer,
                               .cancel = &j->cancel, .status = GRPC_OK };
        atomic_init(&j->cancel, false);

        pthread_attr_t attr;
        pthread_t t;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int r = pthread_create(&t, &attr, job_main, j);
        pthread_attr_destroy(&attr);
        if (r != 0) {
                job_free(j);
                return answer_status(c, st, 200, GRPC_RESOURCE_EXHAUSTED,
                                     "cannot start a thread for the call: try again later");
        }
        st->job = j;
        c->in_flight++;
        return 0;
}

/* Finished jobs: answer their streams, or drop them when the stream went meanwhile. */
static void collect(gconn *c)
{
        uint64_t v;
        (void)!read(c->efd, &v, sizeof(v));
        pthread_mutex_lock(&c->lock);
        job *list = c->done;
        c->done = NULL;
        pthread_mutex_unlock(&c->lock);
        while (list) {
                job *j = list;
                list = j->next;
                c->in_flight--;
                if (j->st) {
                        gstream *st = j->st;
                        st->job = NULL;
                        if (answer_call(c, st, &j->call) != 0)
                                nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, st->id,
                                                          NGHTTP2_INTERNAL_ERROR);
                }
                job_free(j);
        }
}

/* --- HTTP/2 callbacks ------------------------------------------------------------------------ */

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                       void *user_data)
{
        (void)session, (void)flags;
        gconn *c = user_data;
        ssize_t n = send(c->fd, data, length, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0)
                return n;
        if (errno == EAGAIN || errno == EINTR)
                return NGHTTP2_ERR_WOULDBLOCK;
        c->dead = true;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame,
                            void *user_data)
{
        gconn *c = user_data;
        if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
                return 0;
        gstream *st = calloc(1, sizeof(*st));
        if (!st)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
        st->id = frame->hd.stream_id;
        st->next = c->streams;
        if (c->streams)
                c->streams->prev = st;
        c->streams = st;
        nghttp2_session_set_stream_user_data(session, st->id, st);
        return 0;
}

/* A deadline this far away is none: no product of a grpc-timeout overflows past it, and
 * neither does now plus it. */
#define TIMEOUT_MAX_NS (100LL * 365 * 24 * 3600 * 1000000000LL)

/* grpc-timeout: at most 8 digits and a unit (H M S m u n); in ns, at most TIMEOUT_MAX_NS. */
static int64_t parse_timeout(const uint8_t *v, size_t len)
{
        if (len < 2 || len > 9)
                return -1;
        int64_t n = 0, unit;
        for (size_t i = 0; i < len - 1; i++) {
                if (v[i] < '0' || v[i] > '9')
                        return -1;
                n = n * 10 + (v[i] - '0');
        }
        switch (v[len - 1]) {
        case 'H': unit = 3600 * 1000000000LL; break;
        case 'M': unit = 60 * 1000000000LL; break;
        case 'S': unit = 1000000000LL; break;
        case 'm': unit = 1000000LL; break;
        case 'u': unit = 1000LL; break;
        case 'n': unit = 1; break;
        default: return -1;
        }
        return n > TIMEOUT_MAX_NS / unit ? TIMEOUT_MAX_NS : n * unit;
}

static bool is(const uint8_t *name, size_t len, const char *s)
{
        return len == strlen(s) && memcmp(name, s, len) == 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
        (void)flags, (void)user_data;
        if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
                return 0; /* trailers of a request carry nothing for us */
        gstream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
        if (!st)
                return 0;
        if (is(name, namelen, ":path")) {
                size_t n = valuelen < sizeof(st->path) ? valuelen : sizeof(st->path) - 1;
                memcpy(st->path, value, n);
                st->path[n] = '\0';
                st->path_too_long = valuelen >= sizeof(st->path);
        } else if (is(name, namelen, ":method"))
                st->post = is(value, valuelen, "POST");
        else if (is(name, namelen, "content-type")) {
                size_t n = valuelen < sizeof(st->content_type) ? valuelen
                                                               : sizeof(st->content_type) - 1;
                memcpy(st->content_type, value, n);
                st->content_type[n] = '\0';
                st->grpc_type = content_type_ok(st->content_type);
        } else if (is(name, namelen, "grpc-timeout")) {
                int64_t t = parse_timeout(value, valuelen);
                if (t >= 0)
                        st->deadline_ns = now_ns() + t;
        }
        return 0;
}

static int on_data(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                   const uint8_t *data, size_t len, void *user_data)
{
        (void)flags;
        gconn *c = user_data;
        gstream *st = nghttp2_session_get_stream_user_data(session, stream_id);
        if (!st || st->answered)
                return 0; /* dropped: the call was already answered */
        if (c->refusal != GRPC_OK)
                return 0; /* dropped: the call is answered with the refusal, unread */
        size_t max = c->svc->max_message;
        if (st->in_len + len > st->in_cap) {
                size_t cap = st->in_cap ? st->in_cap : 1024;
                while (cap < st->in_len + len)
                        cap *= 2;
                if (cap > max + PREFIX + 1)
                        cap = max + PREFIX + 1;
                if (st->in_len + len > cap) {
                        /* Past one message of the largest size: either the message is too
                         * large (its prefix says so, answered below) or a second follows. */
                        if (st->in_len >= PREFIX && be32(st->in + 1) <= max)
                                return answer_status(c, st, 200, GRPC_UNIMPLEMENTED,
                                                     "more than one request message: the "
                                                     "method is unary or server-streaming");
                        goto too_large;
                }
                uint8_t *n = realloc(st->in, cap);
                if (!n)
                        return answer_status(c, st, 200, GRPC_RESOURCE_EXHAUSTED,
                                             "out of memory");
                st->in = n;
                st->in_cap = cap;
        }
        memcpy(st->in + st->in_len, data, len);
        st->in_len += len;
        if (st->in_len >= PREFIX && be32(st->in + 1) > max)
                goto too_large;
        return 0;

too_large:;
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "request message larger than the limit of %zu bytes (%" PRIu32 " bytes)", max,
                 st->in_len >= PREFIX ? be32(st->in + 1) : 0);
        return answer_status(c, st, 200, GRPC_RESOURCE_EXHAUSTED, msg);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
        gconn *c = user_data;
        if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
            !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
                return 0;
        gstream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
        if (!st)
                return 0;
        st->remote_closed = true;
        if (st->answered)
                return 0;
        int r = start_call(c, st);
        return r == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

/* An answer sent before the client finished its request: reset the stream (NO_ERROR, as
 * HTTP/2 8.1 says) so that the client stops sending what nobody reads. */
static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
        (void)user_data;
        if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
            !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
                return 0;
        gstream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
        if (st && !st->remote_closed)
                nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
        return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
        gconn *c = user_data;
        gstream *st = nghttp2_session_get_stream_user_data(session, stream_id);
        if (!st)
                return 0;
        if (st->job && error_code != NGHTTP2_NO_ERROR)
                log_info("pid %d reset stream %d (%s) mid-call: abandoning it", (int)c->peer->pid,
                         stream_id, st->path);
        nghttp2_session_set_stream_user_data(session, stream_id, NULL);
        stream_free(c, st);
        return 0;
}

/* --- the connection ---------------------------------------------------------------------------- */

/* Calls past their deadline get DEADLINE_EXCEEDED now, and their work is abandoned. Returns
 * the poll timeout (ms) until the next deadline, -1 for none. */
static int deadlines(gconn *c)
{
        int64_t now = now_ns(), next = INT64_MAX;
        for (gstream *st = c->streams; st; st = st->next) {
                if (!st->deadline_ns || st->answered)
                        continue;
                if (st->deadline_ns <= now) {
                        if (answer_status(c, st, 200, GRPC_DEADLINE_EXCEEDED,
                                          "deadline exceeded (grpc-timeout)") != 0)
                                nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, st->id,
                                                          NGHTTP2_INTERNAL_ERROR);
                } else if (st->deadline_ns < next)
                        next = st->deadline_ns;
        }
        if (next == INT64_MAX)
                return -1;
        int64_t ms = (next - now) / 1000000 + 1;
        return ms > INT_MAX ? INT_MAX : (int)ms; /* a deadline of years: poll's int */
}

static void cancel_all(gconn *c)
{
        for (gstream *st = c->streams; st; st = st->next)
                if (st->job)
                        atomic_store(&st->job->cancel, true);
}

void grpc_serve(const grpc_service *svc, int fd, int stop_fd, const rpc_peer *peer, int refusal,
                const char *refusal_message)
{
        gconn c = { .svc = svc,
                    .peer = peer,
                    .refusal = refusal,
                    .refusal_message = refusal_message,
                    .fd = fd,
                    .stop_fd = stop_fd,
                    .efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
        nghttp2_session_callbacks *cbs = NULL;
        if (c.efd < 0 || nghttp2_session_callbacks_new(&cbs) != 0) {
                log_warning("pid %d: cannot serve the connection: %s", (int)peer->pid,
                            rl_strerror(errno));
                if (c.efd >= 0)
                        close(c.efd);
                return;
        }
        pthread_mutex_init(&c.lock, NULL);
        nghttp2_session_callbacks_set_send_callback(cbs, on_send);
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
        /* nghttp2's HTTP checks refuse an :authority with a '/', and gRPC clients that dial
         * a unix socket put its path there: the checks gRPC needs are made here instead
         * (POST, content-type, a known :path). */
        nghttp2_option *opt = NULL;
        int r = nghttp2_option_new(&opt);
        if (r == 0) {
                nghttp2_option_set_no_http_messaging(opt, 1);
                r = nghttp2_session_server_new2(&c.session, cbs, &c, opt);
                nghttp2_option_del(opt);
        }
        nghttp2_session_callbacks_del(cbs);
        if (r != 0) {
                log_warning("pid %d: nghttp2: %s", (int)peer->pid, nghttp2_strerror(r));
                close(c.efd);
                pthread_mutex_destroy(&c.lock);
                return;
        }
        nghttp2_settings_entry iv[] = {
                { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, svc->max_streams },
                { NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 64 * 1024 },
        };
        nghttp2_submit_settings(c.session, NGHTTP2_FLAG_NONE, iv, 2);

        uint8_t buf[16 * 1024];
        for (;;) {
                int timeout = deadlines(&c);
                if (!c.dead && nghttp2_session_send(c.session) != 0)
                        c.dead = true;
                if (c.dead)
                        cancel_all(&c);
                bool want_read = !c.eof && !c.dead && nghttp2_session_want_read(c.session);
                bool want_write = !c.dead && nghttp2_session_want_write(c.session);
                if ((!want_read || c.stopping) && !want_write && c.in_flight == 0)
                        break;
                struct pollfd p[3] = {
                        { c.dead ? -1 : fd,
                          (short)((want_read ? POLLIN : 0) | (want_write ? POLLOUT : 0)), 0 },
                        { c.efd, POLLIN, 0 },
                        { c.stopping ? -1 : c.stop_fd, POLLIN, 0 },
                };
                if (poll(p, 3, timeout) < 0) {
                        if (errno == EINTR)
                                continue;
                        c.dead = true;
                        continue;
                }
                if (p[1].revents & POLLIN)
                        collect(&c);
                if (p[2].revents & POLLIN) {
                        /* reflayerd stops: GOAWAY (no new calls), but go on reading, so
                         * that the client keeps its side of HTTP/2 (acks, window updates)
                         * while the calls in flight finish and are answered. */
                        c.stopping = true;
                        nghttp2_submit_goaway(c.session, NGHTTP2_FLAG_NONE,
                                              nghttp2_session_get_last_proc_stream_id(c.session),
                                              NGHTTP2_NO_ERROR, NULL, 0);
                }
                if (p[0].revents & POLLIN) {
                        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                        if (n > 0) {
                                ssize_t m = nghttp2_session_mem_recv(c.session, buf, (size_t)n);
                                if (m < 0) {
                                        log_info("pid %d: not HTTP/2 gRPC (%s): closing",
                                                 (int)peer->pid, nghttp2_strerror((int)m));
                                        c.dead = true;
                                }
                        } else if (n == 0)
                                c.eof = true; /* a half-close: answer what runs */
                        else if (errno != EAGAIN && errno != EINTR)
                                c.dead = true;
                }
                /* Both directions gone: the client closed; nobody reads what runs. */
                if (p[0].revents & (POLLHUP | POLLERR))
                        c.dead = true;
        }
        if (!c.dead) {
                nghttp2_session_terminate_session(c.session, NGHTTP2_NO_ERROR); /* GOAWAY */
                (void)nghttp2_session_send(c.session);
        }
        while (c.streams) /* with no job left, this only frees */
                stream_free(&c, c.streams);
        nghttp2_session_del(c.session);
        close(c.efd);
        pthread_mutex_destroy(&c.lock);
}
