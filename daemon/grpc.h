/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * gRPC over HTTP/2 (libnghttp2) on one connection, for unary and server-streaming methods:
 * the transport of the containerd door (snapshots.c holds the service). No protobuf here:
 * a method gets the request message's bytes and appends encoded reply messages.
 *
 * Threads: the connection's thread owns the HTTP/2 session (nghttp2 is not thread-safe)
 * and does all socket I/O; every complete request runs on a thread of its own, so a slow
 * Prepare never holds up the other streams of the connection. A finished call is handed
 * back through a queue and an eventfd, and only then written.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc.h"

/* gRPC status codes (grpc/doc/statuscodes.md). */
enum {
        GRPC_OK = 0,
        GRPC_CANCELLED = 1,
        GRPC_UNKNOWN = 2,
        GRPC_INVALID_ARGUMENT = 3,
        GRPC_DEADLINE_EXCEEDED = 4,
        GRPC_NOT_FOUND = 5,
        GRPC_ALREADY_EXISTS = 6,
        GRPC_PERMISSION_DENIED = 7,
        GRPC_RESOURCE_EXHAUSTED = 8,
        GRPC_FAILED_PRECONDITION = 9,
        GRPC_ABORTED = 10,
        GRPC_UNIMPLEMENTED = 12,
        GRPC_INTERNAL = 13,
        GRPC_UNAVAILABLE = 14,
};

/* One call, as a method sees it. */
typedef struct grpc_call {
        const uint8_t *request; /* the request message, without its 5-byte prefix */
        size_t request_len;
        const rpc_peer *peer;
        /* Set when the client resets the stream, hangs up, or the deadline passes: a long
         * method stops early (nobody will read its answer). */
        const atomic_bool *cancel;
        /* The reply, filled by grpc_call_reply() and grpc_call_fail(). */
        uint8_t *out; /* length-prefixed messages */
        size_t out_len, out_cap;
        int status;
        char *message; /* with a status other than OK */
} grpc_call;

/* A method: reads c->request, replies with grpc_call_reply() (once for unary, any number of
 * times for server streaming) or fails with grpc_call_fail(). Returns nothing: what it set
 * in c is the answer. */
typedef void (*grpc_method_fn)(void *userdata, grpc_call *c);

typedef struct grpc_method {
        const char *path; /* "/package.Service/Method" */
        grpc_method_fn fn;
} grpc_method;

typedef struct grpc_service {
        const grpc_method *methods;
        size_t n_methods;
        void *userdata;
        size_t max_message;    /* a request larger than this gets RESOURCE_EXHAUSTED */
        unsigned max_streams;  /* concurrent streams per connection (SETTINGS) */
} grpc_service;

/* Room for one reply message of len bytes, after its gRPC prefix (written here): the
 * method encodes the message into it. NULL when out of memory. */
uint8_t *grpc_call_reserve(grpc_call *c, size_t len);
/* Fail the call: status (not OK) and a message a person can act on. Drops any reply. */
void grpc_call_fail(grpc_call *c, int status, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/*
 * Serve one connection until the client goes, or stop_fd becomes readable (reflayerd stops:
 * no new calls; those in flight finish and are answered first). refusal: when not OK, every call
 * on this connection gets that status and refusal_message (a peer that may not use the
 * daemon still learns why, in gRPC's terms). Closes nothing: fd stays the caller's.
 */
void grpc_serve(const grpc_service *svc, int fd, int stop_fd, const rpc_peer *peer, int refusal,
                const char *refusal_message);
