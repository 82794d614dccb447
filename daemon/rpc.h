/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The JSON-RPC 2.0 layer of reflayerd (api/PROTOCOL.md): decode one request line, call the
 * store, encode the response line. No sockets here: the server hands lines in and out.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <reflayer/fsinfo.h>
#include <reflayer/store.h>

#define RL_VERSION "0.1.0"

/* JSON-RPC error codes. The stable, specific reason is data.code (rl_store_error_code). */
#define RPC_PARSE_ERROR -32700
#define RPC_INVALID_REQUEST -32600
#define RPC_METHOD_NOT_FOUND -32601
#define RPC_INVALID_PARAMS -32602
#define RPC_INTERNAL -32603

typedef struct rpc_server {
        rl_store *store;
        rl_fsinfo *fs;    /* the store's filesystem */
        const char *image; /* the image file it is on (--image), or NULL */
        unsigned jobs;    /* tree workers per call */
        bool ephemeral;   /* Prepare and View make ephemeral snapshots unless told (--ephemeral) */
        atomic_uint_fast64_t requests, errors;
        atomic_uint connections;
} rpc_server;

#define RPC_MAX_GROUPS 256

/* Who is calling, as the kernel saw it at connect (SO_PEERCRED, SO_PEERGROUPS), and on
 * which connection: progress notifications go there, and a long call stops early when the
 * client hangs up. */
typedef struct rpc_peer {
        pid_t pid;
        uid_t uid;
        gid_t gid;
        int n_groups; /* supplementary groups */
        gid_t groups[RPC_MAX_GROUPS];
        int fd; /* the connection (-1: none) */
} rpc_peer;

/* File descriptors that came with a request (SCM_RIGHTS), referred to by index in its
 * params. A method takes what it uses (the slot becomes -1); the rest are closed after. */
#define RPC_MAX_FDS 8
typedef struct rpc_fds {
        int fd[RPC_MAX_FDS];
        unsigned n;
} rpc_fds;

/*
 * Handle one request (a line without its newline). Returns the response line, newline
 * included, to free; or NULL for a notification (a request without an id), which gets none.
 */
char *rpc_handle(rpc_server *srv, const rpc_peer *peer, rpc_fds *fds, const char *line,
                 size_t len);

/* A ready-made error line (for a request too large to parse, a refused peer). */
char *rpc_error_line(int code, const char *data_code, const char *message);
