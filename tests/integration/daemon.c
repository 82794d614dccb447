/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reflayerd over its socket: the methods, bad input of every kind, many clients at once, a
 * Stat answered while a long Prepare runs, authorisation, socket activation, SIGTERM in the
 * middle of a Prepare. The daemon runs as its own process (posix_spawn) on a loop XFS store;
 * readiness is its sd_notify READY=1 on a notify socket of the test's own.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <sys/wait.h>
#include <unistd.h>

#include <reflayer/client.h>
#include <reflayer/store.h>

#include "rltest-daemon.h"
#include "rltest.h"

static char mnt[PATH_MAX];
static rlt_daemon D = { .pid = -1 };
static char *const root = D.root, *const sock = D.sock;

static void start_daemon(int listen_fd)
{
        rlt_daemon_start(&D, listen_fd, NULL);
}

static int stop_daemon(void)
{
        return rlt_daemon_stop(&D);
}

static void setup(void)
{
        rlt_init();
        snprintf(mnt, sizeof(mnt), "%s", rlt_mkfs(RLT_XFS, 0, "xfs"));
        snprintf(D.root, sizeof(D.root), "%s/store", mnt);
        snprintf(D.sock, sizeof(D.sock), "%s/reflayer.sock", rlt_scratch());
        start_daemon(-1);
}

static void teardown(void)
{
        stop_daemon();
        rlt_fini();
}

TestSuite(daemon, .init = setup, .fini = teardown, .timeout = 120);

static int connect_daemon(void)
{
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
        cr_assert(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0,
                  "connect %s: %s", sock, strerror(errno));
        return fd;
}

static void send_raw(int fd, const void *buf, size_t len)
{
        cr_assert(send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len, "send: %s", strerror(errno));
}

/* line, with the descriptor pass_fd (SCM_RIGHTS) in the same sendmsg. */
static void send_with_fd(int fd, const char *line, int pass_fd)
{
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        struct iovec iov = { (void *)line, strlen(line) };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                              .msg_controllen = sizeof(control.buf) };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
        cr_assert(sendmsg(fd, &msg, MSG_NOSIGNAL) == (ssize_t)strlen(line), "sendmsg: %s",
                  strerror(errno));
}

/* One response line (parsed), or NULL when the daemon closed the connection. */
static json_t *read_response(int fd)
{
        size_t cap = 1 << 20, len = 0;
        char *buf = malloc(cap); /* per call: client threads read at once */
        cr_assert(buf);
        for (;;) {
                ssize_t n = recv(fd, buf + len, 1, 0);
                if (n <= 0) {
                        free(buf);
                        return NULL;
                }
                if (buf[len] == '\n')
                        break;
                len++;
                cr_assert(len < cap - 1);
        }
        json_error_t jerr;
        json_t *o = json_loadb(buf, len, 0, &jerr);
        cr_assert(o, "the daemon sent something not JSON (%s): %.*s", jerr.text, (int)len, buf);
        free(buf);
        return o;
}

static json_t *call_on(int fd, const char *method, json_t *params)
{
        static __thread int id; /* per client thread */
        json_t *req = json_pack("{s:s, s:i, s:s}", "jsonrpc", "2.0", "id", ++id, "method", method);
        if (params)
                json_object_set_new(req, "params", params);
        char *s = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        send_raw(fd, s, strlen(s));
        send_raw(fd, "\n", 1);
        free(s);
        json_t *resp = read_response(fd);
        cr_assert(resp, "%s: the daemon closed the connection", method);
        cr_assert_eq(json_integer_value(json_object_get(resp, "id")), id, "response id");
        return resp;
}

/* Call and expect success: returns the result (owned by the caller). */
static json_t *ok(int fd, const char *method, json_t *params)
{
        json_t *resp = call_on(fd, method, params);
        json_t *err = json_object_get(resp, "error");
        cr_assert(!err, "%s failed: %s", method,
                  json_string_value(json_object_get(err, "message")));
        json_t *result = json_incref(json_object_get(resp, "result"));
        json_decref(resp);
        return result;
}

/* Call and expect an error with this data.code; returns the message. */
static void fails(int fd, const char *method, json_t *params, const char *code)
{
        json_t *resp = call_on(fd, method, params);
        json_t *err = json_object_get(resp, "error");
        cr_assert(err, "%s succeeded, expected %s", method, code);
        const char *got = json_string_value(json_object_get(json_object_get(err, "data"), "code"));
        cr_expect_str_eq(got, code, "%s: %s", method,
                         json_string_value(json_object_get(err, "message")));
        cr_expect(json_string_value(json_object_get(err, "message"))[0], "no message");
        json_decref(resp);
}

/* Answered on a fresh connection: the daemon still serves everyone. */
static void still_serving(void)
{
        int fd = connect_daemon();
        json_t *r = ok(fd, "Version", NULL);
        cr_expect_str_eq(json_string_value(json_object_get(r, "version")), "0.1.0");
        json_decref(r);
        close(fd);
}

static void fill_layer(int fd, const char *key, int files)
{
        json_t *r = ok(fd, "Prepare", json_pack("{s:s}", "key", key));
        const char *src = json_string_value(
                json_object_get(json_array_get(json_object_get(r, "mounts"), 0), "source"));
        char p[PATH_MAX];
        for (int i = 0; i < files; i++) {
                snprintf(p, sizeof(p), "%s/d%d", src, i % 50);
                mkdir(p, 0755);
                snprintf(p, sizeof(p), "%s/d%d/f%d", src, i % 50, i);
                rlt_write_file(p, 100, (unsigned)i);
        }
        json_decref(r);
}

/* A tree of n files of 100 bytes in 100 directories below dir. */
static void make_tree(const char *dir, int n)
{
        char p[PATH_MAX];
        cr_assert(mkdir(dir, 0755) == 0, "mkdir %s: %s", dir, strerror(errno));
        for (int i = 0; i < n; i++) {
                snprintf(p, sizeof(p), "%s/d%d", dir, i % 100);
                mkdir(p, 0755);
                snprintf(p, sizeof(p), "%s/d%d/f%d", dir, i % 100, i);
                rlt_write_file(p, 100, (unsigned)i);
        }
}

Test(daemon, methods)
{
        int fd = connect_daemon();
        fill_layer(fd, "a", 10);
        json_decref(ok(fd, "Commit", json_pack("{s:s, s:s, s:{s:s}}", "name", "base", "key", "a",
                                               "labels", "containerd.io/gc.root", "x")));
        json_t *r = ok(fd, "Prepare",
                       json_pack("{s:s, s:s, s:[{s:i, s:i, s:i}]}", "key", "c", "parent", "base",
                                 "uid_map", "container_id", 0, "host_id", 100000, "size", 65536));
        json_t *m = json_array_get(json_object_get(r, "mounts"), 0);
        cr_expect_str_eq(json_string_value(json_object_get(m, "type")), "bind");
        cr_expect_str_eq(json_string_value(json_array_get(json_object_get(m, "options"), 1)), "rw");
        struct stat st;
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/d0/f0", json_string_value(json_object_get(m, "source")));
        cr_assert(stat(p, &st) == 0);
        cr_expect_eq(st.st_uid, 100000, "uid_map over the wire");
        json_decref(r);
        json_decref(ok(fd, "View", json_pack("{s:s, s:s}", "key", "v", "parent", "base")));

        r = ok(fd, "Stat", json_pack("{s:s}", "key", "c"));
        json_t *info = json_object_get(r, "info");
        cr_expect_str_eq(json_string_value(json_object_get(info, "kind")), "active");
        cr_expect_str_eq(json_string_value(json_object_get(info, "parent")), "base");
        cr_expect(strstr(json_string_value(json_object_get(info, "created")), "Z"));
        json_decref(r);

        r = ok(fd, "Update", json_pack("{s:{s:s, s:{s:s}}, s:[s]}", "info", "name", "base",
                                       "labels", "team", "red", "fieldpaths", "labels.team"));
        json_t *labels = json_object_get(json_object_get(r, "info"), "labels");
        cr_expect_eq(json_object_size(labels), 2);
        json_decref(r);

        r = ok(fd, "List", json_pack("{s:[s]}", "filters", "kind==committed"));
        cr_expect_eq(json_array_size(json_object_get(r, "snapshots")), 1);
        json_decref(r);
        r = ok(fd, "Usage", json_pack("{s:s}", "key", "c"));
        cr_expect_geq(json_integer_value(json_object_get(r, "shared")), 1000);
        json_decref(r);
        r = ok(fd, "Mounts", json_pack("{s:s}", "key", "v"));
        m = json_array_get(json_object_get(r, "mounts"), 0);
        cr_expect_str_eq(json_string_value(json_array_get(json_object_get(m, "options"), 1)), "ro");
        json_decref(r);
        r = ok(fd, "Status", NULL);
        cr_expect_str_eq(json_string_value(json_object_get(r, "reflink")), "yes");
        cr_expect_str_eq(json_string_value(json_object_get(json_object_get(r, "filesystem"),
                                                           "type")),
                         "xfs");
        cr_expect_eq(json_integer_value(json_object_get(json_object_get(r, "snapshots"),
                                                        "committed")),
                     1);
        json_decref(r);

        fails(fd, "Remove", json_pack("{s:s}", "key", "base"), "failed_precondition");
        fails(fd, "Stat", json_pack("{s:s}", "key", "nope"), "not_found");
        fails(fd, "Prepare", json_pack("{s:s}", "key", "c"), "already_exists");
        fails(fd, "Prepare", json_pack("{s:s, s:s}", "key", "x", "parent", "c"),
              "failed_precondition");
        fails(fd, "Update", json_pack("{s:{s:s}, s:[s]}", "info", "name", "c", "fieldpaths", "kind"),
              "invalid_argument");
        json_decref(ok(fd, "Remove", json_pack("{s:s}", "key", "c")));
        json_decref(ok(fd, "Remove", json_pack("{s:s}", "key", "v")));
        json_decref(ok(fd, "Remove", json_pack("{s:s}", "key", "base")));
        json_decref(ok(fd, "Cleanup", NULL));
        close(fd);
}

Test(daemon, bad_input_gets_an_error_and_everyone_else_is_served)
{
        struct {
                const char *what;
                const char *bytes;
                size_t len; /* 0: strlen */
                int code;   /* expected JSON-RPC code; 0: no response expected */
        } cases[] = {
                { "truncated JSON", "{\"jsonrpc\":\"2.0\",\"id\":1,\"meth", 0, -32700 },
                { "binary garbage", "\xff\xfe\x00\x01garbage", 8, -32700 },
                { "not an object", "[1,2,3]", 0, -32600 },
                { "wrong version", "{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"Version\"}", 0,
                  -32600 },
                { "method not a string", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5}", 0,
                  -32600 },
                { "id an object", "{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"Version\"}", 0,
                  -32600 },
                { "params an array",
                  "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Stat\",\"params\":[\"k\"]}", 0,
                  -32600 },
                { "unknown method", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Frob\"}", 0,
                  -32601 },
                { "wrong type", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Stat\",\"params\":{\"key\":5}}",
                  0, -32602 },
                { "missing param", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Stat\",\"params\":{}}",
                  0, -32602 },
                { "unknown param",
                  "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Stat\",\"params\":{\"key\":\"k\",\"x\":1}}",
                  0, -32602 },
                { "duplicate key", "{\"jsonrpc\":\"2.0\",\"id\":1,\"id\":2,\"method\":\"Version\"}",
                  0, -32700 },
                { "invalid UTF-8 key",
                  "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Stat\",\"params\":{\"key\":\"\xc0\xaf\"}}",
                  0, -32700 },
        };
        int fd = connect_daemon();
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                size_t len = cases[i].len ? cases[i].len : strlen(cases[i].bytes);
                send_raw(fd, cases[i].bytes, len);
                send_raw(fd, "\n", 1);
                json_t *resp = read_response(fd);
                cr_assert(resp, "%s: the connection was closed", cases[i].what);
                json_t *err = json_object_get(resp, "error");
                cr_expect_eq(json_integer_value(json_object_get(err, "code")), cases[i].code,
                             "%s: code %lld", cases[i].what,
                             (long long)json_integer_value(json_object_get(err, "code")));
                cr_expect(json_string_value(json_object_get(json_object_get(err, "data"), "code")),
                          "%s: no data.code", cases[i].what);
                json_decref(resp);
        }
        /* A notification (no id) gets no answer: the next answer is the next request's. */
        const char *note = "{\"jsonrpc\":\"2.0\",\"method\":\"Version\"}\n";
        send_raw(fd, note, strlen(note));
        json_decref(ok(fd, "Version", NULL));
        close(fd);

        /* A 2 MiB line: an error, then the connection is closed. */
        fd = connect_daemon();
        size_t big = 2 << 20;
        char *junk = malloc(big);
        memset(junk, 'x', big);
        send(fd, junk, big, MSG_NOSIGNAL); /* the daemon may close before all of it is read */
        free(junk);
        json_t *resp = read_response(fd);
        cr_assert(resp, "no error for a 2 MiB line");
        cr_expect(strstr(json_string_value(json_object_get(json_object_get(resp, "error"),
                                                           "message")),
                         "larger than"));
        json_decref(resp);
        cr_expect_null(read_response(fd), "the connection stayed open after an oversized line");
        close(fd);

        /* A client that vanishes in the middle of a call. */
        fd = connect_daemon();
        fill_layer(fd, "big", 2000);
        json_decref(ok(fd, "Commit", json_pack("{s:s, s:s}", "name", "big-c", "key", "big")));
        const char *prep = "{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"Prepare\",\"params\":"
                           "{\"key\":\"orphan\",\"parent\":\"big-c\"}}\n";
        send_raw(fd, prep, strlen(prep));
        close(fd);
        still_serving();
        /* Its Prepare finished (or not) whole; the key is there exactly when it is listed. */
        fd = connect_daemon();
        json_decref(ok(fd, "Cleanup", NULL));
        close(fd);
        still_serving();
}

typedef struct client {
        int id;
        int errors;
} client;

static void *client_main(void *arg)
{
        client *c = arg;
        int fd = connect_daemon();
        char key[32], name[32];
        for (int i = 0; i < 8; i++) {
                snprintf(key, sizeof(key), "c%d-%d", c->id, i);
                snprintf(name, sizeof(name), "c%d-%d-layer", c->id, i);
                json_t *r = call_on(fd, "Prepare", json_pack("{s:s, s:s}", "key", key, "parent",
                                                             "base"));
                c->errors += json_object_get(r, "error") != NULL;
                json_decref(r);
                r = call_on(fd, "Stat", json_pack("{s:s}", "key", key));
                json_t *info = json_object_get(json_object_get(r, "result"), "info");
                c->errors += !info || strcmp(json_string_value(json_object_get(info, "name")), key);
                json_decref(r);
                r = call_on(fd, "Commit", json_pack("{s:s, s:s}", "name", name, "key", key));
                c->errors += json_object_get(r, "error") != NULL;
                json_decref(r);
                r = call_on(fd, i % 2 ? "Remove" : "Stat", json_pack("{s:s}", "key", name));
                c->errors += json_object_get(r, "error") != NULL;
                json_decref(r);
                r = call_on(fd, "List", json_pack("{s:[s]}", "filters", "name==base"));
                c->errors += json_array_size(json_object_get(json_object_get(r, "result"),
                                                             "snapshots")) != 1;
                json_decref(r);
        }
        close(fd);
        return NULL;
}

Test(daemon, thirty_two_clients)
{
        int fd = connect_daemon();
        fill_layer(fd, "a", 100);
        json_decref(ok(fd, "Commit", json_pack("{s:s, s:s}", "name", "base", "key", "a")));
        pthread_t t[32];
        client cl[32];
        for (int i = 0; i < 32; i++) {
                cl[i] = (client){ .id = i };
                cr_assert(pthread_create(&t[i], NULL, client_main, &cl[i]) == 0);
        }
        for (int i = 0; i < 32; i++) {
                pthread_join(t[i], NULL);
                cr_expect_eq(cl[i].errors, 0, "client %d: %d wrong results", i, cl[i].errors);
        }
        json_t *r = ok(fd, "List", json_pack("{s:[s]}", "filters", "kind==committed"));
        cr_expect_eq(json_array_size(json_object_get(r, "snapshots")), 1 + 32 * 4,
                     "committed layers left");
        json_decref(r);
        close(fd);
}

Test(daemon, stat_answered_during_a_long_prepare)
{
        int fd = connect_daemon();
        fill_layer(fd, "a", 12000);
        json_decref(ok(fd, "Commit", json_pack("{s:s, s:s}", "name", "base", "key", "a")));
        int slow = connect_daemon();
        const char *prep = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Prepare\",\"params\":"
                           "{\"key\":\"long\",\"parent\":\"base\"}}\n";
        send_raw(slow, prep, strlen(prep));
        /* Once its tree is being built (it appears in tmp/), Stat and List on another
         * connection are answered while it still runs. */
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof(tmp), "%s/tmp", root);
        for (int i = 0; rlt_dir_is_empty(tmp) && i < 20000; i++)
                usleep(500);
        cr_assert(!rlt_dir_is_empty(tmp), "the Prepare did not start");
        json_decref(ok(fd, "Stat", json_pack("{s:s}", "key", "base")));
        json_decref(ok(fd, "List", NULL));
        struct pollfd p = { slow, POLLIN, 0 };
        cr_expect_eq(poll(&p, 1, 0), 0,
                     "the Prepare of 12,000 files finished before a Stat beside it was answered");
        json_t *r = read_response(slow);
        cr_assert(r && !json_object_get(r, "error"), "the long Prepare failed");
        json_decref(r);
        close(slow);
        close(fd);
}

Test(daemon, unprivileged_client_is_refused)
{
        chmod(rlt_scratch(), 0755);
        chmod(sock, 0666); /* let it reach the socket: the daemon itself must refuse */
        int fd = rlt_connect_as(sock, 65534, 65534);
        cr_assert_geq(fd, 0, "connect as nobody: %s", strerror(-fd));
        json_t *resp = read_response(fd);
        cr_assert(resp, "refused without a word");
        const char *code = json_string_value(
                json_object_get(json_object_get(json_object_get(resp, "error"), "data"), "code"));
        cr_expect_str_eq(code, "permission_denied");
        json_decref(resp);
        cr_expect_null(read_response(fd), "the connection stayed open");
        close(fd);
        still_serving();
}

Test(daemon, socket_activation)
{
        stop_daemon();
        unlink(sock);
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
        cr_assert(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(lfd, 16) == 0);
        char other[PATH_MAX];
        /* The daemon is told another path: it must serve the passed socket, not make one. */
        snprintf(other, sizeof(other), "%s", sock);
        snprintf(sock, sizeof(D.sock), "%s/not-used.sock", rlt_scratch());
        start_daemon(lfd);
        snprintf(sock, sizeof(D.sock), "%s", other);
        close(lfd);
        still_serving();
        char unused[PATH_MAX];
        snprintf(unused, sizeof(unused), "%s/not-used.sock", rlt_scratch());
        cr_expect(access(unused, F_OK) < 0, "made its own socket despite LISTEN_FDS");
        int status = stop_daemon();
        cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
        cr_expect(access(sock, F_OK) == 0, "removed the socket it was passed");
        start_daemon(-1); /* for teardown */
}

Test(daemon, sigterm_during_prepare_publishes_nothing_half)
{
        int fd = connect_daemon();
        fill_layer(fd, "a", 4000);
        json_decref(ok(fd, "Commit", json_pack("{s:s, s:s}", "name", "base", "key", "a")));
        const char *prep = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Prepare\",\"params\":"
                           "{\"key\":\"inflight\",\"parent\":\"base\"}}\n";
        send_raw(fd, prep, strlen(prep));
        /* Wait until the build is under way (its tree appears in tmp/), then stop. */
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof(tmp), "%s/tmp", root);
        for (long spin = 0; rlt_dir_is_empty(tmp) && spin < 10000000; spin++)
                ;
        int status = stop_daemon();
        cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
        json_t *r = read_response(fd); /* the call in flight was finished before the exit */
        cr_expect(r && !json_object_get(r, "error"), "the Prepare in flight was not answered");
        json_decref(r);
        close(fd);

        rl_store *s = NULL;
        rl_error err = {};
        cr_assert_eq(rl_store_open(root, NULL, &s, &err), 0, "%s", err.msg);
        rl_info info;
        int q = rl_store_stat(s, "inflight", &info, &err);
        if (q == 0) {
                char p[PATH_MAX];
                snprintf(p, sizeof(p), "%s/snapshots/%lu/fs/d49/f3999", root,
                         (unsigned long)info.id);
                cr_expect(access(p, F_OK) == 0, "a published snapshot is missing files");
                rl_info_clear(&info);
        }
        cr_assert_eq(rl_store_cleanup(s, &err), 0);
        cr_expect(rlt_dir_is_empty(tmp), "tmp/ holds a half-built tree after restart");
        rl_store_free(s);
        start_daemon(-1); /* for teardown */
}

static const char *cli_path(void)
{
        const char *cli = getenv("RL_CLI");
        cr_assert(cli, "RL_CLI must name the built reflayer");
        return cli;
}

/* Run the CLI against the test's daemon; its output (stdout and stderr) in `out`. */
#define RUN(...)                                                                                   \
        ({                                                                                         \
                char *argv_[] = { (char *)cli, "--socket", sock, __VA_ARGS__, NULL };              \
                rlt_run(argv_, out, sizeof(out));                                                  \
        })

/* The CLI through the daemon: output a person reads, JSON a script reads, exit codes. */
Test(daemon, cli_verbs)
{
        static char out[65536];
        const char *cli = cli_path();
        int r = RUN("prepare", "k1", "--label", "team=red");
        cr_assert_eq(r, 0, "prepare: %s", out);
        cr_expect(strstr(out, "mount -t bind") && strstr(out, "rbind,rw"), "%s", out);
        char src[PATH_MAX];
        sscanf(out, "mount -t bind %s", src);
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/hello", src);
        rlt_write_file(p, 1000, 1);
        cr_assert_eq(RUN("commit", "layer1", "k1"), 0, "%s", out);
        cr_assert_eq(RUN("prepare", "k2", "layer1", "--uid-map", "0:100000:65536"), 0, "%s", out);
        cr_assert_eq(RUN("view", "v1", "layer1"), 0, "%s", out);
        cr_expect(strstr(out, "rbind,ro"), "%s", out);

        cr_assert_eq(RUN("stat", "k2"), 0, "%s", out);
        cr_expect(strstr(out, "kind:    active") && strstr(out, "parent:  layer1"), "%s", out);
        cr_assert_eq(RUN("--json", "ls", "--filter", "kind==active"), 0, "%s", out);
        json_t *arr = json_loads(out, 0, NULL);
        cr_assert(json_is_array(arr), "%s", out);
        cr_expect_eq(json_array_size(arr), 1);
        json_decref(arr);
        cr_assert_eq(RUN("ls"), 0, "%s", out);
        cr_expect(strstr(out, "KEY") && strstr(out, "layer1") && strstr(out, "v1"), "%s", out);
        cr_assert_eq(RUN("tree"), 0, "%s", out);
        cr_expect(strstr(out, "layer1 (committed)") && strstr(out, "└─ k2 (active)"), "%s", out);
        cr_assert_eq(RUN("usage", "k2"), 0, "%s", out);
        cr_expect(strstr(out, "shared"), "%s", out);
        cr_assert_eq(RUN("update", "layer1", "--label", "team=blue"), 0, "%s", out);
        cr_assert_eq(RUN("--json", "stat", "layer1"), 0, "%s", out);
        cr_expect(strstr(out, "\"team\":\"blue\""), "%s", out);
        cr_assert_eq(RUN("status"), 0, "%s", out);
        cr_expect(strstr(out, "reflink:    yes") && strstr(out, "1 committed"), "%s", out);
        cr_assert_eq(RUN("version"), 0, "%s", out);
        cr_expect(strstr(out, "reflayerd 0.1.0"), "%s", out);

        /* Exit codes a script can test; errors on stderr name the key. */
        cr_expect_eq(RUN("stat", "nope"), 3, "%s", out);
        cr_expect(strstr(out, "'nope'"), "%s", out);
        cr_expect_eq(RUN("prepare", "k2"), 4, "%s", out);
        cr_expect_eq(RUN("rm", "layer1"), 5, "%s", out);
        cr_expect_eq(RUN("stat"), 2, "%s", out);
        cr_assert_eq(RUN("rm", "k2", "v1", "layer1"), 0, "%s", out);
        cr_assert_eq(RUN("cleanup"), 0, "%s", out);
        /* clone --daemon: reflayerd clones, the CLI prints the same summary. */
        char csrc[PATH_MAX], cdst[PATH_MAX];
        snprintf(csrc, sizeof(csrc), "%s/csrc", mnt);
        snprintf(cdst, sizeof(cdst), "%s/cdst", mnt);
        make_tree(csrc, 10);
        cr_assert_eq(RUN("clone", "--daemon", "--json", csrc, cdst), 0, "%s", out);
        cr_expect(strstr(out, "\"reflink\":\"yes\"") && strstr(out, "\"entries\":21"), "%s",
                  out);
        cr_expect_eq(RUN("clone", "--daemon", csrc, cdst), 4, "%s", out);
        cr_expect(strstr(out, "cdst"), "%s", out);
        /* --subvolume reaches the daemon; on XFS it changes nothing (cli/ tests btrfs). */
        snprintf(cdst, sizeof(cdst), "%s/cdst-subvolume", mnt);
        cr_assert_eq(RUN("clone", "--daemon", "--subvolume", "--json", csrc, cdst), 0, "%s", out);
        cr_expect(strstr(out, "\"snapshots\":0") && strstr(out, "\"entries\":21"), "%s", out);
        char *nodaemon[] = { (char *)cli, "--socket", "/nonexistent.sock", "ls", NULL };
        cr_expect_eq(rlt_run(nodaemon, out, sizeof(out)), 6, "%s", out);
        cr_expect(strstr(out, "is it running"), "%s", out);
}

/* reflayer mount/umount: a view is mounted read-only, an active snapshot read-write, and
 * what is written through the mount lands in that snapshot only. */
Test(daemon, cli_mount_and_umount)
{
        static char out[65536];
        const char *cli = cli_path();
        cr_assert_eq(RUN("prepare", "a"), 0, "%s", out);
        cr_assert_eq(RUN("commit", "base", "a"), 0, "%s", out);
        cr_assert_eq(RUN("prepare", "rw", "base"), 0, "%s", out);
        cr_assert_eq(RUN("view", "ro", "base"), 0, "%s", out);
        char t1[PATH_MAX], t2[PATH_MAX], p[PATH_MAX];
        snprintf(t1, sizeof(t1), "%s/mnt-rw", rlt_scratch());
        snprintf(t2, sizeof(t2), "%s/mnt-ro", rlt_scratch());
        cr_assert(mkdir(t1, 0755) == 0 && mkdir(t2, 0755) == 0);
        cr_assert_eq(RUN("mount", "rw", t1), 0, "%s", out);
        cr_assert_eq(RUN("mount", "ro", t2), 0, "%s", out);

        snprintf(p, sizeof(p), "%s/written", t1);
        rlt_write_file(p, 10, 1);
        snprintf(p, sizeof(p), "%s/nope", t2);
        int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        cr_expect(fd < 0 && errno == EROFS, "a write through the view's mount worked");
        if (fd >= 0)
                close(fd);

        cr_assert_eq(RUN("umount", t1), 0, "%s", out);
        cr_assert_eq(RUN("umount", t2), 0, "%s", out);
        cr_expect_neq(RUN("umount", t2), 0, "a second umount succeeded");
        cr_expect(strstr(out, t2), "the message names the target: %s", out);
        /* The write is in the snapshot, and not in its parent. */
        cr_assert_eq(RUN("mounts", "rw"), 0, "%s", out);
        char src[PATH_MAX];
        sscanf(out, "mount -t bind %s", src);
        snprintf(p, sizeof(p), "%s/written", src);
        cr_expect(access(p, F_OK) == 0, "the write did not land in the snapshot");
        cr_assert_eq(RUN("mounts", "base"), 0, "%s", out);
        sscanf(out, "mount -t bind %s", src);
        snprintf(p, sizeof(p), "%s/written", src);
        cr_expect(access(p, F_OK) != 0, "the write reached the parent");
        cr_expect_eq(RUN("mount", "nope", t1), 3, "%s", out);
}

/* --- Clone, progress, hang-ups --------------------------------------------------------------- */

static void chown_tree(const char *dir, uid_t uid, gid_t gid)
{
        char *argv[] = { "chown", "-R", NULL, (char *)dir, NULL };
        char ids[32], out[4096];
        snprintf(ids, sizeof(ids), "%u:%u", (unsigned)uid, (unsigned)gid);
        argv[2] = ids;
        cr_assert_eq(rlt_run(argv, out, sizeof(out)), 0, "chown: %s", out);
}

/* --ephemeral on the CLI; reflayerd --ephemeral makes it the default, which a request's
 * "ephemeral": false overrides; stat and the mounts say where a snapshot lives. */
Test(daemon, ephemeral_snapshots)
{
        static char out[65536];
        const char *cli = cli_path();
        cr_assert_eq(RUN("prepare", "b"), 0, "%s", out);
        cr_assert_eq(RUN("commit", "base", "b"), 0, "%s", out);
        cr_assert_eq(RUN("prepare", "e1", "base", "--ephemeral"), 0, "%s", out);
        cr_expect(strstr(out, "/ephemeral/") && strstr(out, "rbind,rw"), "%s", out);
        cr_assert_eq(RUN("stat", "e1"), 0, "%s", out);
        cr_expect(strstr(out, "kind:    active, ephemeral"), "%s", out);
        cr_assert_eq(RUN("ls"), 0, "%s", out);
        cr_expect(strstr(out, "active, ephemeral"), "%s", out);
        cr_assert_eq(RUN("--json", "stat", "e1"), 0, "%s", out);
        cr_expect(strstr(out, "\"ephemeral\":true"), "%s", out);
        cr_assert_eq(RUN("prepare", "d1", "base"), 0, "%s", out);
        cr_expect(strstr(out, "/snapshots/"), "%s", out);
        cr_assert_eq(RUN("--json", "stat", "d1"), 0, "%s", out);
        cr_expect(!strstr(out, "ephemeral"), "%s", out);

        stop_daemon();
        const char *extra[] = { "--ephemeral", NULL };
        rlt_daemon_start(&D, -1, extra);
        cr_assert_eq(RUN("stat", "e1"), 0, "a restart lost an ephemeral snapshot: %s", out);
        cr_assert_eq(RUN("view", "e2", "base"), 0, "%s", out);
        cr_expect(strstr(out, "/ephemeral/") && strstr(out, "rbind,ro"), "%s", out);
        rl_client *c;
        rl_error err = {};
        cr_assert_eq(rl_client_connect(sock, &c, &err), 0, "%s", err.msg);
        char *res = NULL;
        cr_assert_eq(rl_client_call(c, "Prepare",
                                    "{\"key\":\"d2\",\"parent\":\"base\",\"ephemeral\":false}",
                                    &res, &err),
                     0, "%s", err.msg);
        cr_expect(strstr(res, "/snapshots/"), "%s", res);
        free(res);
        rl_client_free(c);
        cr_assert_eq(RUN("prepare", "d3", "base", "--durable"), 0, "%s", out);
        cr_expect(strstr(out, "/snapshots/"), "--durable under reflayerd --ephemeral: %s", out);
        cr_assert_neq(RUN("prepare", "d4", "base", "--durable", "--ephemeral"), 0, "%s", out);
        cr_expect(strstr(out, "ephemeral and durable at once"), "%s", out);
        cr_assert_neq(RUN("stat", "d4"), 0, "a refused Prepare made d4: %s", out);
        /* A commit moves it out of ephemeral/. */
        cr_assert_eq(RUN("commit", "layer", "e1"), 0, "%s", out);
        cr_assert_eq(RUN("mounts", "layer"), 0, "%s", out);
        cr_expect(strstr(out, "/snapshots/") && strstr(out, "rbind,ro"), "%s", out);
}

/* Clone acts with the caller's identity: a member of the socket's group clones what it owns
 * into a directory it may write, and nothing more; in particular no capability of the daemon
 * (CAP_DAC_OVERRIDE, CAP_SETFCAP) works for it. */
Test(daemon, clone_acts_as_the_caller)
{
        stop_daemon();
        const char *extra[] = { "--group", "nogroup", NULL };
        rlt_daemon_start(&D, -1, extra);
        chmod(rlt_scratch(), 0755);
        chmod(mnt, 0755);

        char src[PATH_MAX], mine[PATH_MAX], dst[PATH_MAX], secret[PATH_MAX], p[PATH_MAX];
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(mine, sizeof(mine), "%s/mine", mnt);
        snprintf(secret, sizeof(secret), "%s/secret", mnt);
        make_tree(src, 200);
        chown_tree(src, 65534, 65534);
        cr_assert(mkdir(mine, 0755) == 0 && chown(mine, 65534, 65534) == 0);
        cr_assert(mkdir(secret, 0700) == 0);

        int fd = rlt_connect_as(sock, 65534, 65534);
        cr_assert_geq(fd, 0, "connect as nobody: %s", strerror(-fd));

        /* Its own tree into its own directory: done, owned by it, data shared. */
        snprintf(dst, sizeof(dst), "%s/copy", mine);
        json_t *r = ok(fd, "Clone", json_pack("{s:s, s:s}", "source", src, "destination", dst));
        cr_expect_eq(json_integer_value(json_object_get(r, "entries")), 301);
        cr_expect_str_eq(json_string_value(json_object_get(r, "reflink")), "yes");
        json_decref(r);
        struct stat st;
        snprintf(p, sizeof(p), "%s/d7/f7", dst);
        cr_assert(lstat(p, &st) == 0 && st.st_uid == 65534 && st.st_gid == 65534);
        cr_expect(rlt_extents_shared(p), "%s shares no extent with its source", p);

        /* Where it may not write, and what it may not read. */
        snprintf(dst, sizeof(dst), "%s/copy", mnt);
        fails(fd, "Clone", json_pack("{s:s, s:s}", "source", src, "destination", dst),
              "permission_denied");
        cr_expect(access(dst, F_OK) < 0);
        snprintf(dst, sizeof(dst), "%s/copy2", mine);
        fails(fd, "Clone", json_pack("{s:s, s:s}", "source", secret, "destination", dst),
              "permission_denied");
        /* A file capability may only be set with CAP_SETFCAP: the daemon has it, nobody not. */
        snprintf(p, sizeof(p), "%s/d0/f0", src);
        const uint32_t cap[5] = { 0x02000001, 1u << 13, 0, 0, 0 }; /* v2, cap_net_raw+ep */
        cr_assert(setxattr(p, "security.capability", cap, sizeof(cap), 0) == 0, "%s",
                  strerror(errno));
        fails(fd, "Clone", json_pack("{s:s, s:s}", "source", src, "destination", dst),
              "permission_denied");
        cr_expect(access(dst, F_OK) < 0, "a failed clone left its destination");
        cr_expect(rlt_dir_has_prefix(mine, ".rl-clone-") == false, "a temporary was left");
        close(fd);

        /* The daemon's own identity is back for everyone else. */
        fd = connect_daemon();
        snprintf(dst, sizeof(dst), "%s/rootcopy", mnt);
        json_decref(ok(fd, "Clone", json_pack("{s:s, s:s}", "source", src, "destination", dst)));
        cr_expect(getxattr(p, "security.capability", NULL, 0) > 0);
        snprintf(p, sizeof(p), "%s/d0/f0", dst);
        cr_expect(getxattr(p, "security.capability", NULL, 0) > 0,
                  "root's clone lost the capability");
        /* Relative paths mean nothing to the daemon. */
        fails(fd, "Clone", json_pack("{s:s, s:s}", "source", "src", "destination", "/x"),
              "invalid_argument");
        close(fd);
}

/* With "progress": true, Progress notifications naming the call come before its answer. */
Test(daemon, clone_sends_progress)
{
        char src[PATH_MAX], dst[PATH_MAX];
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        make_tree(src, 6000);
        int fd = connect_daemon();
        char req[3 * PATH_MAX];
        snprintf(req, sizeof(req),
                 "{\"jsonrpc\":\"2.0\",\"id\":\"c1\",\"method\":\"Clone\",\"params\":"
                 "{\"source\":\"%s\",\"destination\":\"%s\",\"progress\":true,"
                 "\"sync\":true}}\n",
                 src, dst);
        send_raw(fd, req, strlen(req));
        int notes = 0;
        json_int_t last = -1;
        for (;;) {
                json_t *m = read_response(fd);
                cr_assert(m, "the connection closed before the answer");
                if (json_object_get(m, "id")) {
                        cr_assert_str_eq(json_string_value(json_object_get(m, "id")), "c1");
                        cr_assert(json_object_get(m, "result"), "Clone failed");
                        cr_expect_eq(json_integer_value(
                                             json_object_get(json_object_get(m, "result"),
                                                             "entries")),
                                     6101);
                        json_decref(m);
                        break;
                }
                json_t *params = json_object_get(m, "params");
                cr_expect_str_eq(json_string_value(json_object_get(m, "method")), "Progress");
                cr_expect_str_eq(json_string_value(json_object_get(params, "id")), "c1");
                json_int_t e = json_integer_value(json_object_get(params, "entries"));
                cr_expect_geq(e, last, "progress went backwards");
                last = e;
                notes++;
                json_decref(m);
        }
        cr_expect_gt(notes, 0, "a clone of 6,100 entries sent no progress");
        close(fd);
}

static bool has_temporary(const char *dir)
{
        return rlt_dir_has_prefix(dir, ".rl-clone-");
}

/* A client that hangs up during a long call: the daemon abandons the work, leaves nothing
 * behind, and keeps serving. Both for Clone and for Prepare (nothing published). */
Test(daemon, hang_up_abandons_the_call)
{
        char src[PATH_MAX], dst[PATH_MAX], tmp[PATH_MAX], req[3 * PATH_MAX];
        snprintf(src, sizeof(src), "%s/src", mnt);
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        make_tree(src, 12000);

        int fd = connect_daemon();
        snprintf(req, sizeof(req),
                 "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Clone\",\"params\":"
                 "{\"source\":\"%s\",\"destination\":\"%s\"}}\n",
                 src, dst);
        send_raw(fd, req, strlen(req));
        for (int i = 0; !has_temporary(mnt) && i < 20000; i++)
                usleep(500);
        cr_assert(has_temporary(mnt), "the clone did not start");
        close(fd);
        for (int i = 0; has_temporary(mnt) && i < 200; i++)
                usleep(50000);
        cr_expect(!has_temporary(mnt), "the abandoned clone left its temporary");
        cr_expect(access(dst, F_OK) < 0, "the clone finished although its client had gone");

        /* Prepare: the same through the store; nothing is published. */
        fd = connect_daemon();
        fill_layer(fd, "a", 12000);
        json_decref(ok(fd, "Commit", json_pack("{s:s, s:s}", "name", "base", "key", "a")));
        close(fd);
        fd = connect_daemon();
        const char *prep = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Prepare\",\"params\":"
                           "{\"key\":\"gone\",\"parent\":\"base\"}}\n";
        send_raw(fd, prep, strlen(prep));
        snprintf(tmp, sizeof(tmp), "%s/tmp", root);
        for (int i = 0; rlt_dir_is_empty(tmp) && i < 20000; i++)
                usleep(500);
        cr_assert(!rlt_dir_is_empty(tmp), "the Prepare did not start");
        close(fd);
        for (int i = 0; !rlt_dir_is_empty(tmp) && i < 200; i++)
                usleep(50000);
        cr_expect(rlt_dir_is_empty(tmp), "the abandoned Prepare left tmp/ behind");
        fd = connect_daemon();
        fails(fd, "Stat", json_pack("{s:s}", "key", "gone"), "not_found");
        close(fd);
        still_serving();
}

typedef struct follow_state {
        int calls;
        uint64_t last_entries;
        atomic_bool cancel;
        bool cancel_at_first;
} follow_state;

static void count_progress(const rl_tree_progress *p, void *userdata)
{
        follow_state *f = userdata;
        f->calls++;
        f->last_entries = p->entries;
        if (f->cancel_at_first)
                atomic_store(&f->cancel, true);
}

/* The client library: Clone with progress, and a cancelled Clone and Prepare. */
Test(daemon, client_clone_progress_and_cancel)
{
        char src[PATH_MAX], dst[PATH_MAX];
        snprintf(src, sizeof(src), "%s/src", mnt);
        make_tree(src, 8000);
        rl_client *c = NULL;
        rl_error err = {};
        cr_assert_eq(rl_client_connect(sock, &c, &err), 0, "%s", err.msg);

        follow_state f = {};
        rl_tree_options o = { .progress = count_progress, .progress_userdata = &f,
                              .cancel = &f.cancel, .flags = RL_TREE_SYNC };
        rl_client_clone_result res;
        snprintf(dst, sizeof(dst), "%s/dst", mnt);
        cr_assert_eq(rl_client_clone(c, src, dst, &o, &res, &err), 0, "%s", err.msg);
        cr_expect_eq(res.stats.entries, 8101);
        cr_expect_eq(res.stats.methods[RL_CLONE_REFLINK], 8000);
        cr_expect_str_eq(res.filesystem, "xfs");
        cr_expect_eq(res.reflink, RL_REFLINK_YES);
        cr_expect_gt(f.calls, 0, "no progress reached the caller");

        /* Cancelled at the first progress: -ECANCELED, nothing left, connection unusable. */
        f = (follow_state){ .cancel_at_first = true };
        o.flags = 0; /* a final syncfs is not cancellable: keep the clone in its walk */
        snprintf(dst, sizeof(dst), "%s/dst2", mnt);
        cr_expect_eq(rl_client_clone(c, src, dst, &o, &res, &err), -ECANCELED, "%s", err.msg);
        cr_expect_eq(rl_client_stat(c, "x", NULL, &err), -EIO);
        rl_client_free(c);
        for (int i = 0; has_temporary(mnt) && i < 200; i++)
                usleep(50000);
        cr_expect(!has_temporary(mnt) && access(dst, F_OK) < 0, "the cancelled clone left %s",
                  dst);

        cr_assert_eq(rl_client_connect(sock, &c, &err), 0, "%s", err.msg);
        int fd = connect_daemon();
        fill_layer(fd, "a", 8000);
        close(fd);
        cr_assert_eq(rl_client_commit(c, "base", "a", NULL, 0, &err), 0, "%s", err.msg);
        f = (follow_state){ .cancel_at_first = true };
        rl_prepare_options po = { .progress = count_progress, .progress_userdata = &f,
                                  .cancel = &f.cancel };
        cr_expect_eq(rl_client_prepare(c, "p", "base", NULL, 0, &po, NULL, &err), -ECANCELED,
                     "%s", err.msg);
        rl_client_free(c);
        cr_assert_eq(rl_client_connect(sock, &c, &err), 0, "%s", err.msg);
        rl_info info;
        int r = 0;
        for (int i = 0; i < 100 && (r = rl_client_stat(c, "p", &info, &err)) != -ENOENT; i++) {
                if (r == 0)
                        break; /* published: wrong */
                usleep(50000);
        }
        cr_expect_eq(r, -ENOENT, "a cancelled Prepare was published");
        rl_client_free(c);
}

/* --- layers over the wire: Apply and Import, fds passed with the request ------------------ */

static void sh(const char *script)
{
        char out[8192];
        char *argv[] = { "sh", "-ec", (char *)script, NULL };
        cr_assert_eq(rlt_run(argv, out, sizeof(out)), 0, "%s: %s", script, out);
}

/* A two-layer OCI layout at DIR/img (tag t1) made by umoci, Debian's independent tool. */
static void make_layout(const char *dir)
{
        char script[4 * PATH_MAX];
        snprintf(script, sizeof(script),
                 "command -v umoci >/dev/null || { echo 'umoci is missing (make deps installs "
                 "it)'; exit 1; }\n"
                 "cd %s && umoci init --layout img && umoci new --image img:t1\n"
                 "umoci unpack --image img:t1 b >/dev/null\n"
                 "mkdir -p b/rootfs/etc b/rootfs/usr/bin && echo hi > b/rootfs/etc/hello\n"
                 "echo bin > b/rootfs/usr/bin/tool && ln -s tool b/rootfs/usr/bin/alias\n"
                 "umoci repack --image img:t1 b && rm -rf b\n"
                 "umoci unpack --image img:t1 b >/dev/null && rm b/rootfs/etc/hello\n"
                 "echo two > b/rootfs/usr/bin/tool && umoci repack --image img:t1 b\n"
                 "umoci unpack --image img:t1 ref >/dev/null\n",
                 dir);
        sh(script);
}

Test(daemon, cli_apply_and_import)
{
        static char out[65536];
        const char *cli = cli_path();
        char dir[PATH_MAX], layout[PATH_MAX + 8], p[PATH_MAX + 64];
        snprintf(dir, sizeof(dir), "%s/oci", mnt);
        cr_assert(mkdir(dir, 0755) == 0);
        make_layout(dir);
        snprintf(layout, sizeof(layout), "%s/img", dir);

        cr_assert_eq(RUN("import", layout, "--ref", "t1"), 0, "%s", out);
        cr_expect(strstr(out, "2 layers, 2 new"), "%s", out);
        char top[128] = "";
        const char *t = strstr(out, "top: ");
        cr_assert(t, "%s", out);
        sscanf(t + 5, "%127s", top);
        /* Again: nothing to do. */
        cr_assert_eq(RUN("import", layout, "--ref", "t1"), 0, "%s", out);
        cr_expect(strstr(out, "0 new"), "%s", out);
        cr_expect_eq(RUN("import", layout, "--ref", "nope"), 1, "%s", out);
        cr_expect(strstr(out, "'nope'"), "%s", out);

        /* The top layer is what umoci itself unpacks. */
        cr_assert_eq(RUN("view", "v", top), 0, "%s", out);
        char src[PATH_MAX], why[1024] = "";
        sscanf(out, "mount -t bind %s", src);
        snprintf(p, sizeof(p), "%s/ref/rootfs", dir);
        cr_expect(rlt_tree_equal_flags(p, src, NULL, NULL, RLT_CMP_NO_ATIME, why, sizeof(why)), "import != umoci: %s", why);
        cr_assert_eq(RUN("--json", "stat", top), 0, "%s", out);
        cr_expect(strstr(out, "reflayer.io/image/t1"), "%s", out);

        /* Apply: from a file, and from a pipe (the fd itself goes to the daemon). */
        cr_assert_eq(RUN("prepare", "k", top), 0, "%s", out);
        char tar[PATH_MAX], script[3 * PATH_MAX];
        snprintf(tar, sizeof(tar), "%s/layer.tar.gz", dir);
        snprintf(script, sizeof(script),
                 "mkdir %s/l && echo new > %s/l/new && touch %s/l/.wh.usr && "
                 "tar -C %s/l -czf %s .",
                 dir, dir, dir, dir, tar);
        sh(script);
        cr_assert_eq(RUN("apply", "k", tar), 0, "%s", out);
        cr_expect(strstr(out, "1 whiteouts"), "%s", out);
        cr_assert_eq(RUN("mounts", "k"), 0, "%s", out);
        sscanf(out, "mount -t bind %s", src);
        snprintf(p, sizeof(p), "%s/usr", src);
        cr_expect(access(p, F_OK) < 0, "the whiteout left usr/");
        snprintf(script, sizeof(script), "%s --socket %s --json apply k < %s", cli, sock, tar);
        sh(script);
        /* Bad input: a committed snapshot, a missing key, a tar leading out. */
        cr_expect_eq(RUN("apply", top, tar), 5, "%s", out);
        cr_expect_eq(RUN("apply", "nope", tar), 3, "%s", out);
        snprintf(script, sizeof(script),
                 "cd %s && ln -s / out && tar -cf evil.tar out && mkdir -p x && echo x > x/f && "
                 "tar -rf evil.tar --transform s,x/f,out/evil, x/f",
                 dir);
        sh(script);
        snprintf(tar, sizeof(tar), "%s/evil.tar", dir);
        cr_expect_eq(RUN("apply", "k", tar), 1, "%s", out);
        cr_expect(strstr(out, "out/evil") && strstr(out, "leads out"), "%s", out);
        cr_expect(access("/evil", F_OK) < 0, "a layer wrote outside the tree");
}

/* A client that is not root imports only what it could read itself. */
Test(daemon, import_reads_only_what_the_caller_may)
{
        stop_daemon();
        const char *extra[] = { "--group", "nogroup", NULL };
        rlt_daemon_start(&D, -1, extra);
        chmod(rlt_scratch(), 0755);
        chmod(mnt, 0755);
        char dir[PATH_MAX], layout[PATH_MAX + 8], script[3 * PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/oci", mnt);
        cr_assert(mkdir(dir, 0755) == 0);
        make_layout(dir);
        snprintf(layout, sizeof(layout), "%s/img", dir);
        /* One layer blob only root may read. */
        snprintf(script, sizeof(script),
                 "cd %s/blobs/sha256 && chmod -R a+rX %s && f=$(ls -S | head -1) && chmod 600 $f",
                 layout, layout);
        sh(script);

        int fd = rlt_connect_as(sock, 65534, 65534);
        cr_assert_geq(fd, 0, "connect as nobody: %s", strerror(-fd));
        int lfd = open(layout, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(lfd >= 0);
        char line[256];
        snprintf(line, sizeof(line),
                 "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Import\",\"params\":{\"fd\":0}}\n");
        send_with_fd(fd, line, lfd);
        close(lfd);
        json_t *resp = read_response(fd);
        cr_assert(resp);
        const char *code = json_string_value(
                json_object_get(json_object_get(json_object_get(resp, "error"), "data"), "code"));
        cr_expect_str_eq(code, "permission_denied", "a blob nobody may read was imported");
        json_decref(resp);
        /* A request naming an fd it did not pass. */
        fails(fd, "Import", json_pack("{s:i}", "fd", 0), "invalid_argument");
        close(fd);
}

/*
 * Descriptors belong to the request line they were sent with, even when a request without
 * any was sent just before and both arrive in one read (queued while a slow Clone runs):
 * the Import still has its layout (and says what is wrong with it), instead of "fd 0 was
 * not passed".
 */
Test(daemon, descriptors_go_with_their_own_line_when_requests_are_pipelined)
{
        char dir[PATH_MAX], src[PATH_MAX], p[PATH_MAX + 16], clone[3 * PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/not-a-layout", mnt);
        cr_assert(mkdir(dir, 0755) == 0);
        snprintf(src, sizeof(src), "%s/many", mnt);
        cr_assert(mkdir(src, 0755) == 0);
        for (int i = 0; i < 3000; i++) {
                snprintf(p, sizeof(p), "%s/f%d", src, i);
                rlt_write_file(p, 10, (unsigned)i);
        }
        for (int round = 0; round < 3; round++) {
                int fd = connect_daemon();
                snprintf(clone, sizeof(clone),
                         "{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"Clone\",\"params\":"
                         "{\"source\":\"%s\",\"destination\":\"%s/copy-%d\"}}\n",
                         src, mnt, round);
                send_raw(fd, clone, strlen(clone));
                const char *first = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Version\"}\n";
                char line[] = "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"Import\","
                              "\"params\":{\"fd\":0}}\n";
                int lfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                cr_assert(lfd >= 0);
                /* Both queued while the Clone runs: the next read takes them together. */
                send_raw(fd, first, strlen(first));
                send_with_fd(fd, line, lfd);
                close(lfd);
                json_t *r0 = read_response(fd), *r1 = read_response(fd), *r2 = read_response(fd);
                cr_assert(r0 && r1 && r2, "the daemon closed the connection");
                cr_expect(json_object_get(r0, "result"), "Clone failed");
                json_decref(r0);
                cr_expect(json_object_get(r1, "result"), "Version failed");
                const char *m = json_string_value(
                        json_object_get(json_object_get(r2, "error"), "message"));
                cr_expect(m && strstr(m, "oci-layout"), "round %d: Import: %s", round,
                          m ? m : "(no error)");
                json_decref(r1);
                json_decref(r2);
                close(fd);
        }
}

static int collect_change(const rl_change *ch, void *userdata)
{
        char path[PATH_MAX + 2], *buf = userdata;
        snprintf(path, sizeof(path), "%c %s%s\n", (char)ch->kind, ch->path,
                 ch->metadata_only ? " (meta)" : "");
        strncat(buf, path, 8191 - strlen(buf));
        return 0;
}

/* Diff and Export through the daemon; Apply(Export(k)) onto k's parent gives k again. */
Test(daemon, diff_and_export_round_trip)
{
        static char out[65536];
        const char *cli = cli_path();
        char dir[PATH_MAX], layout[PATH_MAX + 8], p[PATH_MAX + 64], k[PATH_MAX], k2[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/oci", mnt);
        cr_assert(mkdir(dir, 0755) == 0);
        make_layout(dir);
        snprintf(layout, sizeof(layout), "%s/img", dir);
        cr_assert_eq(RUN("import", layout), 0, "%s", out);
        char top[128] = "";
        sscanf(strstr(out, "top: ") + 5, "%127s", top);

        cr_assert_eq(RUN("prepare", "k", top), 0, "%s", out);
        sscanf(out, "mount -t bind %s", k);
        snprintf(p, sizeof(p), "%s/usr/bin/new", k);
        rlt_write_file(p, 70000, 7);
        snprintf(p, sizeof(p), "%s/usr/bin/alias", k);
        cr_assert(unlink(p) == 0);
        snprintf(p, sizeof(p), "%s/usr/bin/tool", k);
        cr_assert(chown(p, 1000, 1000) == 0);

        char changes[8192] = "", changes2[8192] = "";
        rl_client *c = NULL;
        rl_error err = {};
        cr_assert_eq(rl_client_connect(sock, &c, &err), 0, "%s", err.msg);
        rl_diff_stats ds;
        cr_assert_eq(rl_client_diff(c, "k", collect_change, changes, &ds, &err), 0, "%s",
                     err.msg);
        cr_expect_str_eq(changes, "C usr/bin (meta)\nD usr/bin/alias\nA usr/bin/new\n"
                                  "C usr/bin/tool (meta)\n");
        cr_expect_eq(ds.files_read, 0, "an unchanged file was read");

        /* docker diff's form through the CLI. */
        cr_assert_eq(RUN("diff", "k"), 0, "%s", out);
        cr_expect(strstr(out, "A /usr/bin/new\n") && strstr(out, "D /usr/bin/alias\n"), "%s",
                  out);

        char tar[PATH_MAX];
        snprintf(tar, sizeof(tar), "%s/k.tar.zst", dir);
        cr_assert_eq(RUN("export", "k", "-o", tar, "--compression", "zstd"), 0, "%s", out);
        cr_expect(strstr(out, "digest:  sha256:") && strstr(out, "diff_id: sha256:"), "%s",
                  out);
        cr_assert_eq(RUN("prepare", "k2", top), 0, "%s", out);
        sscanf(out, "mount -t bind %s", k2);
        cr_assert_eq(RUN("apply", "k2", tar), 0, "%s", out);
        cr_assert_eq(rl_client_diff(c, "k2", collect_change, changes2, NULL, &err), 0, "%s",
                     err.msg);
        cr_expect_str_eq(changes2, changes);
        char why[1024] = "";
        cr_expect(rlt_tree_equal(k, k2, NULL, NULL, why, sizeof(why)),
                  "Apply(Export(k)) differs from k: %s", why);
        cr_expect_eq(RUN("export", "nope", "-o", tar), 3, "%s", out);
        cr_expect_eq(RUN("export", "k", "-o", tar, "--compression", "lzma"), 1, "%s", out);
        rl_client_free(c);
}

/* Least privilege: the daemon keeps only its capabilities (also in its bounding set) and
 * runs under a seccomp filter, on every thread. */
Test(daemon, runs_sandboxed)
{
        char path[64], line[256];
        unsigned long long eff = 0, bnd = 0;
        int seccomp = -1;
        unsigned threads = 0, filtered = 0;
        snprintf(path, sizeof(path), "/proc/%d/status", (int)D.pid);
        FILE *f = fopen(path, "r");
        cr_assert(f, "%s: %s", path, strerror(errno));
        while (fgets(line, sizeof(line), f)) {
                sscanf(line, "CapEff: %llx", &eff);
                sscanf(line, "CapBnd: %llx", &bnd);
                sscanf(line, "Seccomp: %d", &seccomp);
        }
        fclose(f);
        /* chown dac_override dac_read_search fowner fsetid setgid setuid mknod sys_admin
         * setfcap */
        unsigned long long want = (1ULL << 0) | (1ULL << 1) | (1ULL << 2) | (1ULL << 3) |
                                  (1ULL << 4) | (1ULL << 6) | (1ULL << 7) | (1ULL << 27) |
                                  (1ULL << 21) | (1ULL << 31);
        cr_expect_eq(eff, want, "effective capabilities %llx, expected %llx", eff, want);
        cr_expect_eq(bnd, want, "bounding set %llx, expected %llx", bnd, want);
        cr_expect_eq(seccomp, 2, "the daemon runs without a seccomp filter");
        /* Every thread, the store's own included. */
        char dir[64];
        snprintf(dir, sizeof(dir), "/proc/%d/task", (int)D.pid);
        DIR *d = opendir(dir);
        cr_assert(d);
        struct dirent *e;
        while ((e = readdir(d))) {
                if (e->d_name[0] == '.')
                        continue;
                snprintf(path, sizeof(path), "%s/%s/status", dir, e->d_name);
                f = fopen(path, "r");
                if (!f)
                        continue;
                threads++;
                while (fgets(line, sizeof(line), f))
                        filtered += sscanf(line, "Seccomp: %d", &seccomp) == 1 && seccomp == 2;
                fclose(f);
        }
        closedir(d);
        cr_expect_gt(threads, 1);
        cr_expect_eq(filtered, threads, "%u of %u threads filtered", filtered, threads);
        /* At start it proved the filter: its socket(AF_INET) was refused, and the kernel's
         * audit recorded it (type 1326, a seccomp action; syscall 41 is socket on x86-64).
         * Without auditd the record goes through printk, which keeps 10 lines per 5 s and
         * drops the rest: other tests start daemons by the dozen (containerd's suite), so a
         * record not found is looked for again from a daemon started once the window passed. */
        static char out[1 << 20];
        bool seen = false;
        for (int attempt = 0; attempt < 4 && !seen; attempt++) {
                if (attempt) {
                        sleep(6);
                        stop_daemon();
                        start_daemon(-1);
                }
                char *dm[] = { "dmesg", NULL };
                cr_assert_eq(rlt_run(dm, out, sizeof(out)), 0, "dmesg: %s", out);
                char want_pid[32];
                snprintf(want_pid, sizeof(want_pid), "pid=%d ", (int)D.pid);
                for (char *l = strtok(out, "\n"); l && !seen; l = strtok(NULL, "\n"))
                        seen = strstr(l, "type=1326") && strstr(l, want_pid) &&
                               strstr(l, "comm=\"reflayerd\"");
        }
        cr_expect(seen, "no audit record of the refused system call of pid %d", (int)D.pid);
        /* And it still serves. */
        still_serving();
}

/* --- a tree changed under the daemon while it works ---------------------------------------- */

typedef struct swapper {
        const char *dir;  /* swapped for a symlink and back, over and over */
        const char *away; /* where the real directory waits meanwhile */
        const char *outside;
        atomic_bool stop;
        unsigned swaps;
} swapper;

static void *swap_main(void *arg)
{
        swapper *w = arg;
        while (!atomic_load(&w->stop)) {
                if (rename(w->dir, w->away) == 0) {
                        (void)!symlink(w->outside, w->dir);
                        usleep(200);
                        unlink(w->dir);
                        (void)!rename(w->away, w->dir);
                        w->swaps++;
                }
                usleep(100);
        }
        return NULL;
}

/* Does any file below dir hold the outside secret? */
static bool holds_secret(const char *dir)
{
        char cmd[PATH_MAX + 64], out[4096];
        snprintf(cmd, sizeof(cmd), "grep -rl --no-messages outside-secret %s || true", dir);
        char *argv[] = { "sh", "-c", cmd, NULL };
        cr_assert_eq(rlt_run(argv, out, sizeof(out)), 0);
        return out[0] != '\0';
}

/* A directory of the source swapped for a symlink to a directory outside, again and again,
 * while Clone and Prepare read the tree: nothing outside is read into the copy or written. */
Test(daemon, tree_swapped_for_a_symlink_mid_clone)
{
        char outside[PATH_MAX], secret[PATH_MAX + 16], src[PATH_MAX], sub[PATH_MAX + 16],
                away[PATH_MAX + 16], dst[PATH_MAX + 16];
        snprintf(outside, sizeof(outside), "%s/outside", rlt_scratch());
        cr_assert(mkdir(outside, 0755) == 0);
        snprintf(secret, sizeof(secret), "%s/secret", outside);
        FILE *f = fopen(secret, "w");
        cr_assert(f);
        fputs("outside-secret\n", f);
        fclose(f);
        struct stat before;
        cr_assert(stat(outside, &before) == 0);

        snprintf(src, sizeof(src), "%s/src", mnt);
        make_tree(src, 6000);
        snprintf(sub, sizeof(sub), "%s/d7", src);
        snprintf(away, sizeof(away), "%s/away", mnt);
        swapper w = { .dir = sub, .away = away, .outside = outside };
        pthread_t t;
        cr_assert(pthread_create(&t, NULL, swap_main, &w) == 0);

        int fd = connect_daemon();
        int done = 0, refused = 0;
        for (int i = 0; i < 6; i++) {
                snprintf(dst, sizeof(dst), "%s/copy%d", mnt, i);
                json_t *r = call_on(fd, "Clone", json_pack("{s:s, s:s}", "source", src,
                                                           "destination", dst));
                if (json_object_get(r, "error"))
                        refused++;
                else
                        done++;
                json_decref(r);
                if (access(dst, F_OK) == 0)
                        cr_expect(!holds_secret(dst), "%s holds what lies outside", dst);
        }
        atomic_store(&w.stop, true);
        pthread_join(t, NULL);
        cr_expect_gt(w.swaps, 0, "the directory was never swapped");
        /* Outside: untouched. */
        struct stat after;
        cr_assert(stat(outside, &after) == 0);
        cr_expect(after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
                          after.st_mtim.tv_nsec == before.st_mtim.tv_nsec,
                  "something was written outside");
        struct stat sec;
        cr_expect(stat(secret, &sec) == 0 && sec.st_size == 15, "the outside file changed");
        cr_log_info("swapped %u times; %d clones done, %d refused", w.swaps, done, refused);
        still_serving();
        close(fd);
}
