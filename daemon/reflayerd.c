/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reflayerd: serves one store over two unix sockets: JSON-RPC 2.0, one request per line
 * (rpc.c), and containerd's snapshots.v1 gRPC service (snapshots.c over grpc.c), for
 * containerd's proxy snapshotter.
 *
 * Threads: the main thread accepts and reads signals (signalfd); every connection gets a
 * thread of its own (bounded by --max-connections, both sockets together). A JSON-RPC one
 * reads a line, calls the store and writes the answer; a gRPC one runs each call on a thread
 * of its own. So a slow Prepare never delays another client; the store's own lock is never
 * held across tree work.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <reflayer/store.h>

#include "grpc.h"
#include "image.h"
#include "log.h"
#include "rpc.h"
#include "sandbox.h"
#include "snapshots.h"
#include "util.h"

static const char *arg_root = "/var/lib/reflayer";
static const char *arg_socket = "/run/reflayer/reflayer.sock";
static const char *arg_containerd_socket; /* NULL: containerd.sock beside --socket; "": none */
static const char *arg_group = "reflayer";
static unsigned arg_jobs;
static unsigned arg_pool_size = 2, arg_pool_after = 4;
static bool arg_sandbox = true;
static bool arg_ephemeral;
static unsigned arg_max_connections = 256;
static size_t arg_max_request = 1 << 20;
static const char *arg_image;
static uint64_t arg_image_size; /* 0: not given */

typedef struct conn {
        rpc_server *srv;
        const grpc_service *grpc; /* a containerd (gRPC) connection; NULL: JSON-RPC */
        int refusal;              /* gRPC: the status every call gets, when not GRPC_OK */
        const char *refusal_message;
        int fd;
        int stop_fd; /* gRPC: an eventfd written when reflayerd stops (-1 for JSON-RPC) */
        rpc_peer peer;
        struct conn *prev, *next;
} conn;

/* The live connections, so that shutdown can stop their reading. */
static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t conns_empty = PTHREAD_COND_INITIALIZER;
static conn *conns;
static unsigned n_conns;
static gid_t socket_gid = (gid_t)-1; /* members may connect; -1: root only */
static bool activated;                 /* the sockets came from systemd: not ours to unlink */

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: reflayerd [OPTIONS]\n"
                "Serve the reflayer store over a unix socket (JSON-RPC 2.0, api/PROTOCOL.md).\n\n"
                "  --root DIR            the store (default %s)\n"
                "  --image FILE          keep the store on an XFS (reflink=1) in FILE, mounted\n"
                "                        at --root through a loop device while reflayerd runs:\n"
                "                        for hosts whose filesystem cannot reflink\n"
                "  --image-size SIZE     create FILE (sparse) this large when it is missing;\n"
                "                        K, M, G, T suffixes, at least 300M (e.g. 16G)\n"
                "  --socket PATH         the socket (default %s); a socket passed by systemd\n"
                "                        (LISTEN_FDS) is used instead when there is one\n"
                "  --containerd-socket PATH\n"
                "                        serve containerd's snapshots.v1 gRPC API there, for\n"
                "                        a proxy snapshotter (default: containerd.sock beside\n"
                "                        --socket; \"\": not at all); from systemd, the socket\n"
                "                        named \"containerd\" (FileDescriptorName=)\n"
                "  --group NAME          members may connect (default %s, if it exists; else\n"
                "                        root only)\n"
                "  --jobs N              tree workers per call (default: online CPUs)\n"
                "  --pool-size N         ready clones kept of each pooled layer, built in the\n"
                "                        background so Prepare is a rename (default 2; 0: no\n"
                "                        pool)\n"
                "  --pool-after K        pool a layer once it was prepared K times (default 4;\n"
                "                        0: only layers labelled reflayer.io/pool=N)\n"
                "  --ephemeral           active snapshots and views are ephemeral unless a\n"
                "                        request says otherwise (containerd's always are):\n"
                "                        never flushed, quicker, gone after a reboot\n"
                "  --max-connections N   at once (default 256)\n"
                "  --max-request BYTES   one request line or gRPC message at most (default\n"
                "                        1048576)\n"
                "  --log-level LEVEL     error, warning, info, debug (default info)\n"
                "  --no-sandbox          keep every capability and allow every system call\n"
                "                        (for debugging: the default is least privilege)\n",
                arg_root, arg_socket, arg_group);
}

static int parse_args(int argc, char **argv)
{
        enum { O_ROOT = 256, O_SOCKET, O_CONTAINERD_SOCKET, O_GROUP, O_JOBS, O_MAXC, O_MAXR, O_LOG, O_IMAGE,
               O_IMAGE_SIZE, O_POOL_SIZE, O_POOL_AFTER, O_NO_SANDBOX, O_EPHEMERAL };
        static const struct option options[] = {
                { "root", required_argument, NULL, O_ROOT },
                { "socket", required_argument, NULL, O_SOCKET },
                { "containerd-socket", required_argument, NULL, O_CONTAINERD_SOCKET },
                { "group", required_argument, NULL, O_GROUP },
                { "jobs", required_argument, NULL, O_JOBS },
                { "max-connections", required_argument, NULL, O_MAXC },
                { "max-request", required_argument, NULL, O_MAXR },
                { "log-level", required_argument, NULL, O_LOG },
                { "image", required_argument, NULL, O_IMAGE },
                { "image-size", required_argument, NULL, O_IMAGE_SIZE },
                { "pool-size", required_argument, NULL, O_POOL_SIZE },
                { "pool-after", required_argument, NULL, O_POOL_AFTER },
                { "no-sandbox", no_argument, NULL, O_NO_SANDBOX },
                { "ephemeral", no_argument, NULL, O_EPHEMERAL },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
                char *end = NULL;
                unsigned long long v = 0;
                if (c == O_JOBS || c == O_MAXC || c == O_MAXR) {
                        errno = 0;
                        v = strtoull(optarg, &end, 10);
                        if (errno || *end || v == 0 || v > (1ULL << 30)) {
                                fprintf(stderr, "reflayerd: bad number '%s'\n", optarg);
                                return -EINVAL;
                        }
                }
                if (c == O_POOL_SIZE || c == O_POOL_AFTER) {
                        errno = 0;
                        v = strtoull(optarg, &end, 10);
                        if (errno || *end || v > 64) {
                                fprintf(stderr, "reflayerd: --%s '%s': expected 0..64\n",
                                        c == O_POOL_SIZE ? "pool-size" : "pool-after", optarg);
                                return -EINVAL;
                        }
                }
                switch (c) {
                case O_NO_SANDBOX:
                        arg_sandbox = false;
                        break;
                case O_EPHEMERAL:
                        arg_ephemeral = true;
                        break;
                case O_POOL_SIZE:
                        arg_pool_size = (unsigned)v;
                        break;
                case O_POOL_AFTER:
                        arg_pool_after = (unsigned)v;
                        break;
                case O_ROOT:
                        arg_root = optarg;
                        break;
                case O_SOCKET:
                        arg_socket = optarg;
                        break;
                case O_CONTAINERD_SOCKET:
                        arg_containerd_socket = optarg;
                        break;
                case O_GROUP:
                        arg_group = optarg;
                        break;
                case O_JOBS:
                        arg_jobs = (unsigned)v;
                        break;
                case O_MAXC:
                        arg_max_connections = (unsigned)v;
                        break;
                case O_MAXR:
                        arg_max_request = (size_t)v;
                        break;
                case O_LOG: {
                        log_level l;
                        if (log_parse_level(optarg, &l) < 0) {
                                fprintf(stderr, "reflayerd: bad log level '%s'\n", optarg);
                                return -EINVAL;
                        }
                        log_set_level(l);
                        break;
                }
                case O_IMAGE:
                        arg_image = optarg;
                        break;
                case O_IMAGE_SIZE: {
                        rl_error err = {};
                        if (image_parse_size(optarg, &arg_image_size, &err) < 0) {
                                fprintf(stderr, "reflayerd: %s\n", err.msg);
                                return -EINVAL;
                        }
                        break;
                }
                case 'h':
                        usage(stdout);
                        exit(0);
                default:
                        usage(stderr);
                        return -EINVAL;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "reflayerd: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        if (arg_image_size && !arg_image) {
                fprintf(stderr, "reflayerd: --image-size needs --image FILE\n");
                return -EINVAL;
        }
        return 0;
}

/* Root, or a member of the socket's group (primary or supplementary). */
static bool authorised(const struct ucred *cred)
{
        if (cred->uid == 0)
                return true;
        if (socket_gid == (gid_t)-1)
                return false;
        if (cred->gid == socket_gid)
                return true;
        struct passwd pw, *res = NULL;
        char buf[4096];
        if (getpwuid_r(cred->uid, &pw, buf, sizeof(buf), &res) != 0 || !res)
                return false;
        gid_t groups[256];
        int n = 256;
        if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &n) < 0)
                return false;
        for (int i = 0; i < n; i++)
                if (groups[i] == socket_gid)
                        return true;
        return false;
}

static void conn_unregister(conn *c)
{
        pthread_mutex_lock(&conns_lock);
        if (c->prev)
                c->prev->next = c->next;
        else
                conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        if (--n_conns == 0)
                pthread_cond_broadcast(&conns_empty);
        pthread_mutex_unlock(&conns_lock);
}

/* recv, keeping the file descriptors that come along (SCM_RIGHTS) in fds. More than
 * RPC_MAX_FDS for one request, or a truncated set, ends the connection (-1, EBADMSG):
 * nothing after it can be trusted to belong where it seems to. */
static ssize_t recv_with_fds(int fd, char *buf, size_t size, rpc_fds *fds)
{
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int) * RPC_MAX_FDS)];
        } control;
        struct iovec iov = { buf, size };
        struct msghdr msg = { .msg_iov = &iov,
                              .msg_iovlen = 1,
                              .msg_control = control.buf,
                              .msg_controllen = sizeof(control.buf) };
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0)
                return n;
        bool bad = msg.msg_flags & MSG_CTRUNC;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                int *in = (int *)CMSG_DATA(cm);
                for (size_t i = 0; i < k; i++) {
                        if (fds->n < RPC_MAX_FDS)
                                fds->fd[fds->n++] = in[i];
                        else {
                                close(in[i]);
                                bad = true;
                        }
                }
        }
        if (bad) {
                errno = EBADMSG;
                return -1;
        }
        return n;
}

/*
 * The start of the line that descriptors received with buf[from, len) belong to: the last
 * line that begins there (a recvmsg ends with the segment that carried descriptors, and a
 * client sends a request line with its descriptors in one sendmsg, so a request answered
 * before it may have come along in front), or the line in progress if none begins there.
 */
static size_t fds_owner(const char *buf, size_t from, size_t len)
{
        for (size_t p = len; p-- > from;)
                if (p == 0 || buf[p - 1] == '\n')
                        return p;
        const char *nl = from ? memrchr(buf, '\n', from) : NULL;
        return nl ? (size_t)(nl - buf) + 1 : 0;
}

/* One connection: read lines, answer each. A line past the limit gets an error, and the
 * connection is closed (what follows cannot be trusted to be a line boundary). Lines are
 * taken from buf[off, len); the rest is moved to the front only before the next recv, so a
 * recv of many short lines costs one move, not one per line. */
static void serve_lines(conn *c)
{
        size_t cap = 64 * 1024, len = 0, off = 0, owner = 0;
        char *buf = malloc(cap);

        rpc_fds fds = {};
        while (buf) {
                char *nl = memchr(buf + off, '\n', len - off);
                if (nl) {
                        size_t line = (size_t)(nl - buf) - off;
                        rpc_fds none = {};
                        bool mine = fds.n > 0 && owner == off;
                        char *out = line ? rpc_handle(c->srv, &c->peer, mine ? &fds : &none,
                                                      buf + off, line)
                                         : NULL;
                        /* What the request did not use goes: fds belong to one request. */
                        if (mine) {
                                for (unsigned i = 0; i < fds.n; i++)
                                        closep(&fds.fd[i]);
                                fds.n = 0;
                        }
                        off += line + 1;
                        if (out) {
                                int r = rl_send_all(c->fd, out, strlen(out));
                                free(out);
                                if (r < 0)
                                        break; /* the client went away */
                        }
                        continue;
                }
                if (off > 0) {
                        memmove(buf, buf + off, len - off);
                        len -= off;
                        owner -= owner >= off ? off : owner;
                        off = 0;
                }
                if (len > arg_max_request) {
                        char msg[128];
                        snprintf(msg, sizeof(msg), "request larger than %zu bytes",
                                 arg_max_request);
                        char *out = rpc_error_line(RPC_INVALID_REQUEST, "invalid_argument", msg);
                        if (out)
                                (void)rl_send_all(c->fd, out, strlen(out));
                        free(out);
                        log_warning("pid %d: %s: connection closed", (int)c->peer.pid, msg);
                        break;
                }
                if (len == cap) {
                        size_t ncap = cap * 2 > arg_max_request + 2 ? arg_max_request + 2 : cap * 2;
                        char *nb = realloc(buf, ncap);
                        if (!nb)
                                break;
                        buf = nb;
                        cap = ncap;
                }
                unsigned had = fds.n;
                ssize_t n = recv_with_fds(c->fd, buf + len, cap - len, &fds);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break; /* closed, shut down for exit, or too many fds */
                if (fds.n > had) {
                        size_t o = fds_owner(buf, len, len + (size_t)n);
                        if (had > 0 && o != owner) {
                                /* Descriptors of two requests at once: which are whose
                                 * cannot be told. */
                                log_warning("pid %d: descriptors with two requests at once: "
                                            "connection closed",
                                            (int)c->peer.pid);
                                break;
                        }
                        owner = o;
                }
                len += (size_t)n;
        }
        for (unsigned i = 0; i < fds.n; i++)
                closep(&fds.fd[i]);
        free(buf);
}

static void *conn_main(void *arg)
{
        conn *c = arg;
        if (c->grpc)
                grpc_serve(c->grpc, c->fd, c->stop_fd, &c->peer, c->refusal, c->refusal_message);
        else
                serve_lines(c);
        atomic_fetch_sub(&c->srv->connections, 1);
        /* Unregistered before its fds close: the stop loop uses them under the lock. */
        conn_unregister(c);
        close(c->fd);
        if (c->stop_fd >= 0)
                close(c->stop_fd);
        free(c);
        return NULL;
}

/* Connections past --max-connections on the containerd socket that are served a status
 * saying so, at most. */
#define REFUSED_GRPC_MAX 16

/* A new connection on the JSON-RPC socket (grpc NULL) or the containerd one. */
static void accept_one(rpc_server *srv, int listen_fd, const grpc_service *grpc)
{
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                        log_warning("accept: %s", rl_strerror(errno));
                return;
        }
        struct ucred cred;
        socklen_t sl = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &sl) < 0) {
                close(fd);
                return;
        }
        const char *refusal = NULL;
        if (!authorised(&cred))
                refusal = "permission denied: only root and members of the socket's group may "
                          "use reflayerd";
        pthread_mutex_lock(&conns_lock);
        bool full = n_conns >= arg_max_connections;
        /* Refused gRPC clients are served a status (below), but only so many at once: past
         * that, each would still cost a thread and its buffers. */
        bool overfull = n_conns >= arg_max_connections + REFUSED_GRPC_MAX;
        pthread_mutex_unlock(&conns_lock);
        if (!refusal && full)
                refusal = "too many connections: try again later";
        if (refusal && grpc && overfull) {
                log_info("refused pid %d uid %u: %s; connection closed", (int)cred.pid,
                         (unsigned)cred.uid, refusal);
                close(fd);
                return;
        }
        if (refusal && !grpc) {
                char *out = rpc_error_line(refusal[0] == 'p' ? -32004 : -32005,
                                           refusal[0] == 'p' ? "permission_denied" : "unavailable",
                                           refusal);
                if (out)
                        (void)rl_send_all(fd, out, strlen(out));
                free(out);
                log_info("refused pid %d uid %u: %s", (int)cred.pid, (unsigned)cred.uid,
                         refusal);
                close(fd);
                return;
        }
        conn *c = calloc(1, sizeof(*c));
        if (!c) {
                close(fd);
                return;
        }
        /* A refused gRPC client is served anyway, so that each call gets a status saying
         * why, which it shows its user; a closed connection would read as "unavailable,
         * retry". */
        *c = (conn){ .srv = srv, .grpc = grpc, .fd = fd, .refusal = GRPC_OK, .stop_fd = -1 };
        if (grpc && (c->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
                log_warning("eventfd: %s", rl_strerror(errno));
                close(fd);
                free(c);
                return;
        }
        if (refusal) {
                c->refusal = refusal[0] == 'p' ? GRPC_PERMISSION_DENIED : GRPC_UNAVAILABLE;
                c->refusal_message = refusal;
                log_info("refused pid %d uid %u: %s", (int)cred.pid, (unsigned)cred.uid,
                         refusal);
        }
        c->peer = (rpc_peer){ .pid = cred.pid, .uid = cred.uid, .gid = cred.gid, .fd = fd };
        /* The groups the client had at connect, for calls that act as the client. */
        sl = sizeof(c->peer.groups);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, c->peer.groups, &sl) == 0)
                c->peer.n_groups = (int)(sl / sizeof(gid_t));
        else
                log_warning("pid %d: SO_PEERGROUPS: %s: acting with no supplementary group",
                            (int)cred.pid, rl_strerror(errno));
        pthread_mutex_lock(&conns_lock);
        c->next = conns;
        if (conns)
                conns->prev = c;
        conns = c;
        n_conns++;
        pthread_mutex_unlock(&conns_lock);
        atomic_fetch_add(&srv->connections, 1);

        pthread_attr_t attr;
        pthread_t t;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, conn_main, c) != 0) {
                atomic_fetch_sub(&srv->connections, 1);
                conn_unregister(c);
                close(fd);
                if (c->stop_fd >= 0)
                        close(c->stop_fd);
                free(c);
        }
        pthread_attr_destroy(&attr);
}

/* Listen on a unix socket at path (its directory created if missing; a stale socket
 * replaced: the store's lock says whether another daemon is alive), for root and the
 * socket's group. */
static int listen_unix(const char *path, int *ret)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(path) >= sizeof(sa.sun_path)) {
                log_error("socket path '%s' is too long", path);
                return -ENAMETOOLONG;
        }
        strcpy(sa.sun_path, path);
        _cleanup_free_ char *dir = strdup(path);
        char *slash = dir ? strrchr(dir, '/') : NULL;
        if (slash && slash != dir) {
                *slash = '\0';
                if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
                        log_error("create %s: %s", dir, rl_strerror(errno));
                        return -errno;
                }
        }
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        (void)unlink(path);
        mode_t old = umask(0177);
        int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
        umask(old);
        if (r < 0 || listen(fd, 128) < 0) {
                r = -errno;
                log_error("listen on %s: %s", path, rl_strerror(-r));
                close(fd);
                return r;
        }
        if (socket_gid != (gid_t)-1 && (chown(path, 0, socket_gid) < 0 || chmod(path, 0660) < 0))
                log_warning("give %s to group %s: %s", path, arg_group, rl_strerror(errno));
        *ret = fd;
        return 0;
}

/* The sockets systemd passed: the one named "containerd" (FileDescriptorName=) is the
 * containerd door, any other the JSON-RPC socket. Returns how many there were. */
static int activated_sockets(int *rpc_fd, int *grpc_fd)
{
        char **names = NULL;
        int n = sd_listen_fds_with_names(true, &names);
        int r = n;
        for (int i = 0; i < n && r >= 0; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                bool grpc = names && names[i] && strcmp(names[i], "containerd") == 0;
                int *slot = grpc ? grpc_fd : rpc_fd;
                if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0 || *slot >= 0) {
                        log_error("systemd passed socket %d (%s): expected one listening unix "
                                  "stream socket for JSON-RPC and at most one named "
                                  "\"containerd\"",
                                  i, names && names[i] ? names[i] : "unnamed");
                        r = -EINVAL;
                        break;
                }
                fcntl(fd, F_SETFD, FD_CLOEXEC);
                *slot = fd;
        }
        if (r > 0 && *rpc_fd < 0) {
                log_error("systemd passed no JSON-RPC socket");
                r = -EINVAL;
        }
        for (int i = 0; names && i < n; i++)
                free(names[i]);
        free(names);
        return r;
}

static int make_sockets(int *rpc_fd, int *grpc_fd)
{
        int n = activated_sockets(rpc_fd, grpc_fd);
        if (n < 0)
                return n;
        if (n > 0) {
                activated = true;
                log_info("serving the sockets systemd passed (%s)",
                         *grpc_fd >= 0 ? "JSON-RPC and containerd" : "JSON-RPC only");
                return 0;
        }
        int r = listen_unix(arg_socket, rpc_fd);
        if (r < 0 || !*arg_containerd_socket)
                return r;
        return listen_unix(arg_containerd_socket, grpc_fd);
}

int main(int argc, char **argv)
{
        /* Declared first, so cleaned up last: unmounted after every fd into it is closed. */
        _cleanup_(image_closep) image *img = NULL;
        _cleanup_close_ int listen_fd = -EBADF, grpc_fd = -EBADF, sig_fd = -EBADF;
        char grpc_path[PATH_MAX];
        rl_error err = {};
        int r;

        if (parse_args(argc, argv) < 0)
                return 2;
        if (!arg_containerd_socket) {
                const char *slash = strrchr(arg_socket, '/');
                int dl = slash ? (int)(slash - arg_socket) : 1;
                snprintf(grpc_path, sizeof(grpc_path), "%.*s/containerd.sock", dl,
                         slash ? arg_socket : ".");
                arg_containerd_socket = grpc_path;
        }
        struct group gr, *gres = NULL;
        char gbuf[4096];
        if (getgrnam_r(arg_group, &gr, gbuf, sizeof(gbuf), &gres) == 0 && gres)
                socket_gid = gr.gr_gid;
        else
                log_info("group '%s' does not exist: only root may connect", arg_group);

        /* Signals are read from a signalfd by this thread; every thread made later inherits
         * the blocked mask, so none is interrupted by them. SIGPIPE: writes use MSG_NOSIGNAL,
         * and a vanished client is an error code, not a death. */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        sig_fd = signalfd(-1, &mask, SFD_CLOEXEC);
        if (sig_fd < 0) {
                log_error("signalfd: %s", rl_strerror(errno));
                return 1;
        }
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max; /* deep trees: about two fds a level */
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }

        /* Before any thread: capabilities are per thread, and inherited. */
        if (arg_sandbox && sandbox_drop_capabilities(&err) < 0) {
                log_error("%s", err.msg);
                return 1;
        }
        if (arg_image) {
                r = image_open(arg_image, arg_image_size, arg_root, &img, &err);
                if (r < 0) {
                        log_error("%s", err.msg);
                        return 1;
                }
        }

        rpc_server srv = { .jobs = arg_jobs,
                           .image = img ? image_path(img) : NULL,
                           .ephemeral = arg_ephemeral };
        rl_store_options so = { .jobs = arg_jobs,
                                .pool_size = arg_pool_size,
                                .pool_after = arg_pool_after };
        r = rl_store_open(arg_root, &so, &srv.store, &err);
        if (r < 0) {
                log_error("%s", err.msg);
                return 1;
        }
        _cleanup_close_ int root_fd = open(rl_store_root(srv.store), O_RDONLY | O_DIRECTORY |
                                                                          O_CLOEXEC);
        if (root_fd < 0 || rl_fsinfo_open(root_fd, &srv.fs, &err) < 0) {
                log_error("store filesystem: %s", root_fd < 0 ? rl_strerror(errno) : err.msg);
                rl_store_free(srv.store);
                return 1;
        }
        if (rl_fsinfo_reflink(srv.fs) != RL_REFLINK_YES)
                log_warning("%s (%s) cannot reflink: snapshots will be full copies; "
                            "--image FILE --image-size SIZE keeps the store on an XFS image "
                            "that can",
                            rl_store_root(srv.store), rl_fsinfo_type(srv.fs));
        if (rl_fsinfo_inlines_small_files(srv.fs))
                log_warning("%s keeps small files inline in its metadata, where a reflink "
                            "cannot share them: a btrfs snapshot shares them, but a Prepare "
                            "with uid/gid maps (which changes every inode) and a tree cloned "
                            "file by file (from a parent an older reflayer wrote) copy them "
                            "(about 12 MiB of a Debian rootfs); mount it with -o max_inline=0 "
                            "before the layers are written",
                            rl_fsinfo_target(srv.fs));
        r = make_sockets(&listen_fd, &grpc_fd);
        if (r < 0) {
                rl_fsinfo_free(srv.fs);
                rl_store_free(srv.store);
                return 1;
        }
        grpc_service snapshots;
        snapshots_service(&srv, arg_max_request, &snapshots);
        log_info("reflayerd %s: store %s on %s (reflink %s), socket %s, containerd socket %s",
                 RL_VERSION, rl_store_root(srv.store), rl_fsinfo_type(srv.fs),
                 rl_reflink_to_string(rl_fsinfo_reflink(srv.fs)),
                 activated ? "from systemd" : arg_socket,
                 grpc_fd < 0 ? "none" : activated ? "from systemd" : arg_containerd_socket);
        if (arg_sandbox) {
                r = sandbox_seccomp(&err);
                if (r < 0) {
                        log_error("%s", err.msg);
                        rl_fsinfo_free(srv.fs);
                        rl_store_free(srv.store);
                        return 1;
                }
                log_info("sandbox: capabilities %s; %d system calls allowed, the rest "
                         "refused with ENOSYS and logged by the kernel's audit (checked: "
                         "socket(AF_INET) refused)",
                         sandbox_capabilities(), r);
        }
        sd_notifyf(false, "READY=1\nSTATUS=serving %s", rl_store_root(srv.store));

        for (;;) {
                struct pollfd p[3] = { { listen_fd, POLLIN, 0 }, { sig_fd, POLLIN, 0 },
                                       { grpc_fd, POLLIN, 0 } };
                if (poll(p, 3, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        log_error("poll: %s", rl_strerror(errno));
                        break;
                }
                if (p[1].revents & POLLIN) {
                        struct signalfd_siginfo si;
                        if (read(sig_fd, &si, sizeof(si)) == sizeof(si)) {
                                if (si.ssi_signo == SIGHUP) {
                                        /* Logs go to stderr, which journald owns: nothing
                                         * to reopen; say so, so an operator knows. */
                                        log_info("SIGHUP: logging to stderr, nothing to reopen");
                                        continue;
                                }
                                log_info("%s: stopping", si.ssi_signo == SIGTERM ? "SIGTERM"
                                                                                 : "SIGINT");
                                break;
                        }
                }
                if (p[0].revents & POLLIN)
                        accept_one(&srv, listen_fd, NULL);
                if (p[2].revents & POLLIN)
                        accept_one(&srv, grpc_fd, &snapshots);
        }

        /* Stop: accept nothing more; let every connection finish the request it is in (the
         * store publishes whole snapshots or nothing) by shutting down only its reading. */
        sd_notify(false, "STOPPING=1");
        closep(&listen_fd);
        closep(&grpc_fd);
        listen_fd = grpc_fd = -EBADF;
        pthread_mutex_lock(&conns_lock);
        for (conn *c = conns; c; c = c->next) {
                /* JSON-RPC: a line connection ends after the answer in hand. gRPC: the
                 * client must go on being read while its calls finish (HTTP/2 has acks
                 * and window updates both ways), so it is told to stop instead. */
                uint64_t one = 1;
                if (c->stop_fd >= 0)
                        (void)!write(c->stop_fd, &one, sizeof(one));
                else
                        shutdown(c->fd, SHUT_RD);
        }
        while (n_conns > 0)
                pthread_cond_wait(&conns_empty, &conns_lock);
        pthread_mutex_unlock(&conns_lock);
        if (!activated) {
                (void)unlink(arg_socket);
                if (*arg_containerd_socket)
                        (void)unlink(arg_containerd_socket);
        }
        rl_fsinfo_free(srv.fs);
        rl_store_free(srv.store);
        closep(&root_fd);
        root_fd = -EBADF;
        img = image_close(img); /* the store is closed: nothing of ours holds the mount */
        log_info("stopped");
        return 0;
}
