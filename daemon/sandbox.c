/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * sandbox.c owns reflayerd's privileges: which capabilities it keeps and why, and the
 * seccomp allow-list of system calls. Both lists are here, next to each other, so a new
 * feature that needs more says so in one place.
 */
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sandbox.h"
#include "util.h"

/* What reflayerd does with each capability. */
static const cap_value_t kept[] = {
        CAP_CHOWN,           /* trees keep their owners, and uid/gid shifting */
        CAP_DAC_OVERRIDE,    /* read and write any tree of the store */
        CAP_DAC_READ_SEARCH, /* walk trees whatever their modes */
        CAP_FOWNER,          /* set modes, times and xattrs of files of any owner; O_NOATIME */
        CAP_FSETID,          /* keep setuid/setgid bits */
        CAP_MKNOD,           /* device nodes in layers and clones */
        CAP_SETFCAP,         /* security.capability xattrs */
        CAP_SYS_ADMIN,       /* trusted.* xattrs; the --image loop device and its mount */
        CAP_SETUID,          /* act as the client (fsuid) for Clone */
        CAP_SETGID,          /* the client's fsgid and groups */
};

int sandbox_drop_capabilities(rl_error *err)
{
        if (geteuid() != 0)
                return 0;
        /* The bounding set first, while CAP_SETPCAP is still there: nothing exec'd later
         * (mkfs.xfs for --image) can get more either. */
        for (cap_value_t c = 0; c <= CAP_LAST_CAP; c++) {
                bool keep = false;
                for (size_t i = 0; i < ELEMENTSOF(kept); i++)
                        keep = keep || kept[i] == c;
                if (!keep && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
                        return rl_error_set(err, -errno, "drop capability %d from the bounding "
                                                         "set",
                                            (int)c);
        }
        cap_t caps = cap_init(); /* all clear */
        if (!caps)
                return rl_error_set(err, -errno, "capabilities");
        int r = 0;
        if (cap_set_flag(caps, CAP_EFFECTIVE, ELEMENTSOF(kept), kept, CAP_SET) < 0 ||
            cap_set_flag(caps, CAP_PERMITTED, ELEMENTSOF(kept), kept, CAP_SET) < 0 ||
            cap_set_proc(caps) < 0)
                r = rl_error_set(err, -errno, "set capabilities");
        cap_free(caps);
        if (r == 0 && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 &&
            errno != EINVAL)
                r = rl_error_set(err, -errno, "clear ambient capabilities");
        return r;
}

const char *sandbox_capabilities(void)
{
        static char buf[512];
        if (buf[0])
                return buf;
        size_t o = 0;
        for (size_t i = 0; i < ELEMENTSOF(kept); i++) {
                char *name = cap_to_name(kept[i]);
                o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s%s", i ? "," : "",
                                      name ? name : "?");
                cap_free(name);
        }
        return buf;
}

/*
 * Every system call reflayerd and the libraries it uses make once serving: the daemon
 * (sockets, signals, threads), the store and engine (trees, xattrs, FICLONE, FIEMAP,
 * copy_file_range, syncfs), jansson, libarchive, libcrypto, libmount (reads mountinfo) and
 * glibc. execve and the like are not among them: nothing is started once serving.
 */
static const char *const allowed[] = {
        /* memory, threads, time */
        "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "clone", "clone3",
        "set_robust_list", "rseq", "futex", "futex_waitv", "gettid", "getpid", "getppid",
        "exit", "exit_group", "sched_yield", "sched_getaffinity", "nanosleep",
        "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time", "getrandom",
        "setpriority", "getpriority", "ioprio_set", "prlimit64", "getrlimit", "setrlimit",
        "sysinfo", "uname", "membarrier", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
        "sigaltstack", "tgkill", "getuid", "geteuid", "getgid", "getegid", "getgroups",
        "getresuid", "getresgid", "prctl",
        /* acting as a client (Clone) */
        "setfsuid", "setfsgid", "setgroups", "capget", "capset",
        /* files and trees */
        "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev",
        "lseek", "open", "openat", "openat2", "close", "close_range", "dup", "dup2", "dup3",
        "fcntl", "flock", "ioctl", "fstat", "newfstatat", "lstat", "stat", "statx", "statfs",
        "fstatfs", "access", "faccessat", "faccessat2", "getdents64", "getcwd", "readlink",
        "readlinkat", "mkdir", "mkdirat", "mknodat", "unlink", "unlinkat", "rmdir", "rename",
        "renameat", "renameat2", "linkat", "symlinkat", "fchown", "fchownat", "lchown", "fchmod",
        "fchmodat", "utimensat", "fsync", "fdatasync", "syncfs", "sync_file_range", "ftruncate",
        "fallocate", "copy_file_range", "fadvise64", "umask", "getxattr", "lgetxattr",
        "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr", "llistxattr",
        "flistxattr", "removexattr", "lremovexattr", "fremovexattr", "pipe2", "eventfd2",
        "umount2", "memfd_create", "chmod", "fchmodat2", "chown", "link", "symlink", "mknod",
        "creat", "utime", "utimes", "futimesat", "truncate",
        /* the socket, clients, readiness */
        "accept4", "recvmsg", "sendmsg", "recvfrom", "sendto", "shutdown", "getsockopt",
        "setsockopt", "getsockname", "getpeername", "connect", "poll", "ppoll", "select",
        "pselect6", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "signalfd4",
        "socket",
#ifdef __SANITIZE_ADDRESS__
        /* LeakSanitizer's check at exit stops the world: it lists the threads with the old
         * getdents and attaches to them with ptrace from a helper it clones. */
        "getdents", "ptrace", "wait4", "waitid", "kill", "tkill", "sched_setaffinity",
        "process_vm_readv",
#endif
};

int sandbox_seccomp(rl_error *err)
{
        scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(ENOSYS));
        if (!ctx)
                return rl_error_set(err, -ENOMEM, "seccomp");
        int r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
        /* A refused call leaves an audit record (the kernel log: "audit: type=1326 ...
         * syscall=N"), so an operator sees which call a new code path needs. */
        if (r == 0)
                r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_LOG, 1);
        int n = 0;
        for (size_t i = 0; r == 0 && i < ELEMENTSOF(allowed); i++) {
                int nr = seccomp_syscall_resolve_name(allowed[i]);
                if (nr == __NR_SCMP_ERROR)
                        continue; /* not on this architecture (open, stat ... on arm64) */
                if (!strcmp(allowed[i], "socket"))
                        /* sd_notify's datagram socket: unix sockets only. */
                        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                             SCMP_A0(SCMP_CMP_EQ, AF_UNIX));
                else
                        r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
                n += r == 0;
        }
        if (r == 0)
                r = seccomp_load(ctx);
        seccomp_release(ctx);
        if (r < 0)
                return rl_error_set(err, r, "seccomp filter");
        /* Prove it: a network socket must now be refused. */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 || errno != ENOSYS) {
                if (fd >= 0)
                        close(fd);
                return rl_error_set(err, -EPERM, "seccomp filter: socket(AF_INET) was not "
                                                 "refused");
        }
        return n;
}
