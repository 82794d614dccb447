/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rltest-daemon.h"
#include "rltest.h"

extern char **environ;

const char *rlt_daemon_path(void)
{
        const char *p = getenv("RL_DAEMON");
        cr_assert(p && access(p, X_OK) == 0, "RL_DAEMON must name the built reflayerd "
                                             "(tests/run-unit sets it)");
        return p;
}

static int try_start(rlt_daemon *d, int listen_fd, int grpc_fd, const char *const *extra)
{
        static unsigned seq;
        char notify[PATH_MAX], env_notify[PATH_MAX + 16];
        snprintf(notify, sizeof(notify), "%s/notify.%d.%u", rlt_scratch(), (int)getpid(), seq++);
        unlink(notify);
        int nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", notify);
        cr_assert(nfd >= 0 && bind(nfd, (struct sockaddr *)&sa, sizeof(sa)) == 0,
                  "notify socket %s: %s", notify, strerror(errno));
        snprintf(env_notify, sizeof(env_notify), "NOTIFY_SOCKET=%s", notify);

        char *envp[] = { env_notify, grpc_fd >= 0 ? "LISTEN_FDS=2" : "LISTEN_FDS=1",
                         grpc_fd >= 0 ? "LISTEN_FDNAMES=reflayerd.socket:containerd" : NULL,
                         NULL };
        char *argv[64];
        int a = 0;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        if (listen_fd >= 0) {
                /* LISTEN_PID must be the daemon's own pid: let a shell export it, then exec. */
                posix_spawn_file_actions_adddup2(&fa, listen_fd, 3);
                if (grpc_fd >= 0)
                        posix_spawn_file_actions_adddup2(&fa, grpc_fd, 4);
                argv[a++] = "sh";
                argv[a++] = "-c";
                argv[a++] = "export LISTEN_PID=$$; exec \"$@\"";
                argv[a++] = "sh";
        } else {
                envp[1] = NULL;
        }
        argv[a++] = (char *)rlt_daemon_path();
        argv[a++] = "--root";
        argv[a++] = d->root;
        argv[a++] = "--socket";
        argv[a++] = d->sock;
        argv[a++] = "--log-level";
        argv[a++] = "debug";
        for (size_t i = 0; extra && extra[i]; i++) {
                cr_assert(a < 62, "too many daemon arguments");
                argv[a++] = (char *)extra[i];
        }
        argv[a++] = NULL;
        int r = posix_spawnp(&d->pid, argv[0], &fa, NULL, argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        cr_assert_eq(r, 0, "spawn reflayerd: %s", strerror(r));

        char buf[256];
        struct pollfd p = { nfd, POLLIN, 0 };
        for (int waited = 0;; waited += 100) {
                int status;
                if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
                        d->pid = -1;
                        close(nfd);
                        unlink(notify);
                        return status;
                }
                cr_assert(waited < 20000, "reflayerd did not get ready in 20 s");
                if (poll(&p, 1, 100) != 1)
                        continue;
                ssize_t n = recv(nfd, buf, sizeof(buf) - 1, 0);
                cr_assert(n > 0);
                buf[n] = '\0';
                if (strstr(buf, "READY=1"))
                        break;
        }
        close(nfd);
        unlink(notify);
        return 0x10000;
}

int rlt_daemon_try_start(rlt_daemon *d, int listen_fd, const char *const *extra)
{
        return try_start(d, listen_fd, -1, extra);
}

void rlt_daemon_start_activated(rlt_daemon *d, int listen_fd, int grpc_fd)
{
        cr_assert_eq(try_start(d, listen_fd, grpc_fd, NULL), 0x10000,
                     "reflayerd exited at start with two sockets passed");
}

void rlt_daemon_start(rlt_daemon *d, int listen_fd, const char *const *extra)
{
        int status = rlt_daemon_try_start(d, listen_fd, extra);
        cr_assert_eq(status, 0x10000, "reflayerd exited before it was ready (status 0x%x)",
                     status);
}

int rlt_daemon_stop(rlt_daemon *d)
{
        int status = -1;
        if (d->pid > 0) {
                kill(d->pid, SIGTERM);
                waitpid(d->pid, &status, 0);
                d->pid = -1;
        }
        return status;
}

typedef struct connect_as {
        const char *path;
        uid_t uid;
        gid_t gid;
        int ret;
} connect_as;

static void *connect_as_main(void *arg)
{
        connect_as *a = arg;
        /* Raw system calls: glibc's would change every thread's credentials. */
        if (syscall(SYS_setgroups, 0, NULL) < 0 ||
            syscall(SYS_setresgid, a->gid, a->gid, a->gid) < 0 ||
            syscall(SYS_setresuid, a->uid, a->uid, a->uid) < 0) {
                a->ret = -errno;
                return NULL;
        }
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", a->path);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                a->ret = -errno;
                if (fd >= 0)
                        close(fd);
                return NULL;
        }
        a->ret = fd;
        return NULL;
}

int rlt_connect_as(const char *path, uid_t uid, gid_t gid)
{
        connect_as a = { .path = path, .uid = uid, .gid = gid, .ret = -EINVAL };
        pthread_t t;
        cr_assert(pthread_create(&t, NULL, connect_as_main, &a) == 0);
        pthread_join(t, NULL);
        return a.ret;
}
