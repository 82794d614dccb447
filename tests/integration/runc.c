/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * End to end with a real OCI runtime: a reflayer snapshot is a working container rootfs.
 * reflayerd runs on a loop XFS store; through the CLI a Debian minbase rootfs becomes the
 * committed layer `debian`, a snapshot of it is bind-mounted as a bundle's rootfs, and runc
 * runs a shell there that writes a file and deletes one. The writes must land in that
 * snapshot's tree and nowhere else: the layer stays as it was, attribute by attribute. A
 * second test runs two containers of one layer at once, each seeing only its own writes.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rltest-daemon.h"
#include "rltest.h"

extern char **environ;

static rlt_daemon D = { .pid = -1 };
static char mnt[PATH_MAX];    /* the loop XFS holding the store */
static char debian[PATH_MAX]; /* the cached rootfs, bind-mounted read-only */
static char state[PATH_MAX];  /* runc --root */
static char out[1 << 16];

/* Containers started. `runc run` deletes its container when the process ends; teardown's
 * `runc delete -f` is for a test that failed before that (it is a no-op otherwise). */
static char started[4][64];
static int n_started;

/* Fail, naming the package, when tool is not installed. */
static void need_tool(const char *tool, const char *package)
{
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "command -v %s", tool);
        char *argv[] = { "sh", "-c", cmd, NULL };
        cr_assert_eq(rlt_run(argv, out, sizeof(out)), 0,
                     "%s not found: apt-get install %s (make deps does it)", tool, package);
}

static void setup(void)
{
        rlt_init();
        need_tool("runc", "runc");
        snprintf(mnt, sizeof(mnt), "%s", rlt_mkfs(RLT_XFS, 1024, "xfs"));
        snprintf(D.root, sizeof(D.root), "%s/store", mnt);
        snprintf(D.sock, sizeof(D.sock), "%s/reflayer.sock", rlt_scratch());
        snprintf(state, sizeof(state), "%s/runc-state", rlt_scratch());
        rlt_daemon_start(&D, -1, NULL);
}

static void teardown(void)
{
        for (int i = 0; i < n_started; i++) {
                char *argv[] = { "runc", "--root", state, "delete", "-f", started[i], NULL };
                rlt_run(argv, out, sizeof(out));
        }
        n_started = 0;
        rlt_daemon_stop(&D);
        rlt_fini();
}

/* Debootstrap on a fresh machine takes minutes; the cached rootfs makes it seconds. */
TestSuite(runc, .init = setup, .fini = teardown, .timeout = 900);

/* Spawn argv with stdin /dev/null and stdout+stderr to the file log; returns the pid. runc
 * hands its stdin to the container, which must not read the test runner's. */
static pid_t spawn_logged(char *const argv[], const char *log)
{
        posix_spawn_file_actions_t fa;
        pid_t pid;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        cr_assert_eq(r, 0, "spawn %s: %s", argv[0], strerror(r));
        return pid;
}

/* Wait for pid; its exit status (128+signal when killed). Its log goes to out. */
static int wait_logged(pid_t pid, const char *log)
{
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid, "waitpid: %s", strerror(errno));
        FILE *f = fopen(log, "r");
        cr_assert(f, "open %s: %s", log, strerror(errno));
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        fclose(f);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* reflayer --socket S ARGS...: its exit status, its output in out. */
#define CLI(...)                                                                                   \
        ({                                                                                         \
                const char *cli_ = getenv("RL_CLI");                                               \
                cr_assert(cli_, "RL_CLI must name the built reflayer (tests/run-unit sets it)");   \
                char *argv_[] = { (char *)cli_, "--socket", D.sock, __VA_ARGS__, NULL };           \
                rlt_run(argv_, out, sizeof(out));                                                  \
        })

/* The directory holding snapshot key's tree, from `reflayer --json mounts KEY`. */
static void tree_of(const char *key, char *ret, size_t size)
{
        int r = CLI("--json", "mounts", (char *)key);
        cr_assert_eq(r, 0, "reflayer mounts %s: %s", key, out);
        json_error_t jerr;
        json_t *m = json_loads(out, 0, &jerr);
        cr_assert(m, "reflayer --json mounts %s printed no JSON (%s): %s", key, jerr.text, out);
        const char *src = json_string_value(json_object_get(m, "source"));
        cr_assert(src && src[0] == '/', "reflayer --json mounts %s: no source: %s", key, out);
        snprintf(ret, size, "%s", src);
        json_decref(m);
}

/* Is the tree b still a, attribute by attribute (tests/lib)? */
static void assert_same_tree(const char *a, const char *b, const char *what)
{
        char why[1024];
        cr_assert(rlt_tree_equal(a, b, NULL, NULL, why, sizeof(why)), "%s: %s", what, why);
}

/*
 * The layer as it is now, kept as a reflink clone beside the store, for comparing after the
 * containers ran. Not the cached rootfs: cloning the layer for a prepare refreshes the atimes
 * of its symlinks (readlink has no O_NOATIME, and after cp -a set old times, ctime > atime
 * makes relatime update), which is the kernel's doing, not a container's.
 */
static void keep_layer(const char *layer, char *ret, size_t size)
{
        snprintf(ret, size, "%s/layer-before", mnt);
        cr_assert_eq(CLI("clone", "--no-progress", (char *)layer, ret), 0,
                     "reflayer clone %s %s: %s", layer, ret, out);
}

/*
 * The Debian rootfs from tests/lib/debian-rootfs (built and cached on first use), bind-mounted
 * read-only in this test's mount namespace: a read-only mount refreshes no atimes, so copying
 * it leaves the cache exactly as it was, and it is the reference the layer is compared to.
 */
static void mount_debian(void)
{
        cr_assert(access("tests/lib/debian-rootfs", X_OK) == 0,
                  "tests/lib/debian-rootfs not found: run the tests from the repository");
        char *argv[] = { "tests/lib/debian-rootfs", NULL };
        int r = rlt_run(argv, out, sizeof(out));
        cr_assert_eq(r, 0, "cannot get a Debian rootfs (tests/lib/debian-rootfs exited %d): %s", r,
                     out);
        /* The path is the last line; progress messages on stderr come before it. */
        size_t n = strlen(out);
        while (n > 0 && out[n - 1] == '\n')
                out[--n] = '\0';
        const char *path = strrchr(out, '\n') ? strrchr(out, '\n') + 1 : out;
        snprintf(debian, sizeof(debian), "%s/debian", rlt_scratch());
        cr_assert(mkdir(debian, 0755) == 0, "mkdir %s: %s", debian, strerror(errno));
        cr_assert(mount(path, debian, NULL, MS_BIND, NULL) == 0, "bind-mount %s: %s", path,
                  strerror(errno));
        cr_assert(mount(NULL, debian, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) == 0,
                  "remount %s read-only: %s", debian, strerror(errno));
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/etc/issue", debian);
        cr_assert(access(p, F_OK) == 0, "%s is not a Debian rootfs: no etc/issue", path);
}

/* The committed layer `debian`: prepare base, fill its tree with the rootfs, commit. */
static void make_debian_layer(void)
{
        mount_debian();
        cr_assert_eq(CLI("prepare", "base"), 0, "reflayer prepare base: %s", out);
        char tree[PATH_MAX], cmd[3 * PATH_MAX];
        tree_of("base", tree, sizeof(tree));
        snprintf(cmd, sizeof(cmd), "cp -a '%s'/. '%s'/", debian, tree);
        char *sh[] = { "sh", "-c", cmd, NULL };
        cr_assert_eq(rlt_run(sh, out, sizeof(out)), 0, "%s: %s", cmd, out);
        cr_assert_eq(CLI("commit", "debian", "base"), 0, "reflayer commit debian base: %s", out);
        tree_of("debian", tree, sizeof(tree));
        assert_same_tree(debian, tree, "the committed layer is not the rootfs it was made from");
}

/*
 * A runc bundle at dir with rootfs the snapshot key mounted there by `reflayer mount`, and a
 * config.json from `runc spec` running args. sync, if not NULL, is bind-mounted at /mnt.
 */
static void make_bundle(const char *dir, const char *key, const char *const *args,
                        const char *sync)
{
        char rootfs[PATH_MAX], config[PATH_MAX];
        cr_assert(mkdir(dir, 0755) == 0, "mkdir %s: %s", dir, strerror(errno));
        snprintf(rootfs, sizeof(rootfs), "%s/rootfs", dir);
        cr_assert(mkdir(rootfs, 0755) == 0, "mkdir %s: %s", rootfs, strerror(errno));
        cr_assert_eq(CLI("mount", (char *)key, rootfs), 0, "reflayer mount %s %s: %s", key, rootfs,
                     out);

        char *spec[] = { "runc", "spec", "--bundle", (char *)dir, NULL };
        cr_assert_eq(rlt_run(spec, out, sizeof(out)), 0, "runc spec: %s", out);
        snprintf(config, sizeof(config), "%s/config.json", dir);
        json_error_t jerr;
        json_t *c = json_load_file(config, 0, &jerr);
        cr_assert(c, "%s: %s", config, jerr.text);
        json_t *process = json_object_get(c, "process");
        cr_assert(process, "%s has no process", config);
        /* No terminal: the test has none to give, and the output goes to a log file. */
        json_object_set_new(process, "terminal", json_false());
        json_t *argv = json_array();
        for (size_t i = 0; args[i]; i++)
                json_array_append_new(argv, json_string(args[i]));
        json_object_set_new(process, "args", argv);
        /* The default is a read-only rootfs relative to the bundle; the test is that writes
         * work, so writable, and absolute so nothing depends on runc's cwd. */
        json_object_set_new(c, "root", json_pack("{s:s, s:b}", "path", rootfs, "readonly", 0));
        if (sync)
                json_array_append_new(json_object_get(c, "mounts"),
                                      json_pack("{s:s, s:s, s:s, s:[s, s]}", "destination",
                                                "/mnt", "type", "bind", "source", sync,
                                                "options", "rbind", "rw"));
        cr_assert_eq(json_dump_file(c, config, JSON_INDENT(2)), 0, "write %s", config);
        json_decref(c);
}

/* Start `runc run` of the bundle as container id (logged to dir/runc.log); returns its pid. */
static pid_t runc_start(const char *dir, const char *id)
{
        cr_assert(n_started < (int)(sizeof(started) / sizeof(started[0])));
        snprintf(started[n_started++], sizeof(started[0]), "%s", id);
        char log[PATH_MAX];
        snprintf(log, sizeof(log), "%s/runc.log", dir);
        char *argv[] = { "runc", "--root", state, "run", "--bundle", (char *)dir, (char *)id,
                         NULL };
        return spawn_logged(argv, log);
}

static int runc_wait(pid_t pid, const char *dir)
{
        char log[PATH_MAX];
        snprintf(log, sizeof(log), "%s/runc.log", dir);
        return wait_logged(pid, log);
}

/* The content of dir/rel (at most 4 KiB), or NULL with errno set. */
static ino_t ino_at(const char *dir, const char *rel)
{
        char p[PATH_MAX];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", dir, rel);
        cr_assert(lstat(p, &st) == 0, "stat %s: %s", p, strerror(errno));
        return st.st_ino;
}

/* Umount the bundle's rootfs, remove the snapshot, and wait until its tree is gone. */
static void remove_container_snapshot(const char *dir, const char *key, const char *tree)
{
        char rootfs[PATH_MAX];
        snprintf(rootfs, sizeof(rootfs), "%s/rootfs", dir);
        cr_assert_eq(CLI("umount", rootfs), 0, "reflayer umount %s: %s", rootfs, out);
        cr_assert_eq(CLI("rm", (char *)key), 0, "reflayer rm %s: %s", key, out);
        cr_assert_eq(CLI("cleanup"), 0, "reflayer cleanup: %s", out);
        cr_expect(!rlt_exists_at(tree, "."), "%s: the tree of removed %s is still there", tree,
                  key);
}

Test(runc, container_writes_land_in_its_snapshot_only)
{
        make_debian_layer();
        cr_assert_eq(CLI("prepare", "ctr", "debian"), 0, "reflayer prepare ctr debian: %s", out);
        char layer[PATH_MAX], before[PATH_MAX], ctr[PATH_MAX], bundle[PATH_MAX], id[64];
        tree_of("debian", layer, sizeof(layer));
        tree_of("ctr", ctr, sizeof(ctr));
        cr_assert_str_neq(layer, ctr);
        keep_layer(layer, before, sizeof(before));
        ino_t issue_ino = ino_at(layer, "etc/issue"), dash_ino = ino_at(layer, "usr/bin/dash");

        snprintf(bundle, sizeof(bundle), "%s/bundle", rlt_scratch());
        const char *args[] = { "/bin/sh", "-c",
                               "echo hello > /written-by-runc && id -u > /uid && rm /etc/issue "
                               "&& echo done-in-container",
                               NULL };
        make_bundle(bundle, "ctr", args, NULL);
        snprintf(id, sizeof(id), "rl-test-%d", (int)getpid());
        int r = runc_wait(runc_start(bundle, id), bundle);
        cr_assert_eq(r, 0, "runc run exited %d: %s", r, out);
        cr_expect(strstr(out, "done-in-container"), "the container's output: %s", out);

        /* In the snapshot's own tree, not only through the mount. */
        char *s = rlt_read_at(ctr, "written-by-runc");
        cr_assert(s, "%s/written-by-runc: %s", ctr, strerror(errno));
        cr_expect_str_eq(s, "hello\n");
        s = rlt_read_at(ctr, "uid");
        cr_assert(s, "%s/uid: %s", ctr, strerror(errno));
        cr_expect_str_eq(s, "0\n", "the container ran as uid %s", s);
        cr_expect(!rlt_exists_at(ctr, "etc/issue"),
                  "%s/etc/issue: rm in the container did not land", ctr);
        s = rlt_read_at(bundle, "rootfs/written-by-runc");
        cr_expect(s && strcmp(s, "hello\n") == 0, "the bundle's mount does not show the write");

        /* The layer: none of it, the same inodes, every attribute as before the run. */
        cr_expect(!rlt_exists_at(layer, "written-by-runc"),
                  "the container's write reached the layer");
        cr_expect(!rlt_exists_at(layer, "uid"), "the container's write reached the layer");
        cr_assert(rlt_exists_at(layer, "etc/issue"), "the container's rm reached the layer");
        cr_expect_eq(ino_at(layer, "etc/issue"), issue_ino);
        cr_expect_eq(ino_at(layer, "usr/bin/dash"), dash_ino);
        assert_same_tree(before, layer, "the committed layer changed under a container");

        remove_container_snapshot(bundle, "ctr", ctr);
        cr_expect(rlt_exists_at(layer, "etc/issue"), "removing ctr touched the layer");
}

/*
 * Wait until the container says it is ready on fifo fd: a line within 60 s, or the runc
 * process ended (its log in out).
 */
static void wait_ready(int fd, pid_t pid, const char *dir, const char *name)
{
        struct pollfd p = { fd, POLLIN, 0 };
        for (int waited = 0; waited < 60000; waited += 200) {
                if (poll(&p, 1, 200) == 1) {
                        char buf[64];
                        ssize_t n = read(fd, buf, sizeof(buf) - 1);
                        cr_assert(n > 0, "read the ready fifo of %s: %s", name, strerror(errno));
                        return;
                }
                int status;
                if (waitpid(pid, &status, WNOHANG) == pid) {
                        char log[PATH_MAX];
                        snprintf(log, sizeof(log), "%s/runc.log", dir);
                        FILE *f = fopen(log, "r");
                        size_t n = f ? fread(out, 1, sizeof(out) - 1, f) : 0;
                        out[n] = '\0';
                        if (f)
                                fclose(f);
                        cr_assert_fail("container %s ended (status 0x%x) before it was ready: %s",
                                       name, status, out);
                }
        }
        cr_assert_fail("container %s not ready within 60 s", name);
}

/* A fifo opened read-write: neither side's open blocks, and the test never sees a hangup
 * while a container has not opened it yet. */
static int make_fifo(const char *dir, const char *name)
{
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/%s", dir, name);
        cr_assert(mkfifo(p, 0600) == 0, "mkfifo %s: %s", p, strerror(errno));
        int fd = open(p, O_RDWR | O_CLOEXEC | O_NONBLOCK);
        cr_assert(fd >= 0, "open %s: %s", p, strerror(errno));
        return fd;
}

Test(runc, two_containers_of_one_layer_at_once)
{
        make_debian_layer();
        const char *names[2] = { "a", "b" };
        char trees[2][PATH_MAX], bundles[2][PATH_MAX], ids[2][64], sync[PATH_MAX];
        int ready[2], go[2];
        pid_t pids[2];
        char layer[PATH_MAX], before[PATH_MAX];
        tree_of("debian", layer, sizeof(layer));

        /* Each container writes its name to /who and to etc/hostname, says ready, waits for
         * go, then prints what it sees: both are running, each with its write done, before
         * either reads back. */
        snprintf(sync, sizeof(sync), "%s/sync", rlt_scratch());
        cr_assert(mkdir(sync, 0755) == 0, "mkdir %s: %s", sync, strerror(errno));
        for (int i = 0; i < 2; i++) {
                cr_assert_eq(CLI("prepare", (char *)names[i], "debian"), 0,
                             "reflayer prepare %s debian: %s", names[i], out);
                tree_of(names[i], trees[i], sizeof(trees[i]));
        }
        keep_layer(layer, before, sizeof(before));
        for (int i = 0; i < 2; i++) {
                char f[32], cmd[512];
                snprintf(f, sizeof(f), "ready-%s", names[i]);
                ready[i] = make_fifo(sync, f);
                snprintf(f, sizeof(f), "go-%s", names[i]);
                go[i] = make_fifo(sync, f);
                snprintf(cmd, sizeof(cmd),
                         "echo %s > /who && echo %s > /etc/hostname && echo ready > /mnt/ready-%s "
                         "&& read x < /mnt/go-%s && echo \"sees $(cat /who) $(cat /etc/hostname)\"",
                         names[i], names[i], names[i], names[i]);
                const char *args[] = { "/bin/sh", "-c", cmd, NULL };
                snprintf(bundles[i], sizeof(bundles[i]), "%s/bundle-%s", rlt_scratch(), names[i]);
                make_bundle(bundles[i], names[i], args, sync);
                snprintf(ids[i], sizeof(ids[i]), "rl-test-%d-%s", (int)getpid(), names[i]);
                pids[i] = runc_start(bundles[i], ids[i]);
        }
        for (int i = 0; i < 2; i++)
                wait_ready(ready[i], pids[i], bundles[i], names[i]);

        /* Both run now, each past its write: each tree holds its own write only. */
        for (int i = 0; i < 2; i++) {
                char want[8];
                snprintf(want, sizeof(want), "%s\n", names[i]);
                char *s = rlt_read_at(trees[i], "who");
                cr_assert(s, "%s/who: %s", trees[i], strerror(errno));
                cr_expect_str_eq(s, want, "%s/who", trees[i]);
                s = rlt_read_at(trees[i], "etc/hostname");
                cr_expect(s && strcmp(s, want) == 0, "%s/etc/hostname: %s", trees[i], s);
        }
        cr_expect(!rlt_exists_at(layer, "who"), "a container's write reached the layer");

        for (int i = 0; i < 2; i++) {
                cr_assert_eq(write(go[i], "go\n", 3), 3, "write go-%s: %s", names[i],
                             strerror(errno));
                int r = runc_wait(pids[i], bundles[i]);
                cr_assert_eq(r, 0, "runc run of %s exited %d: %s", names[i], r, out);
                char want[32];
                snprintf(want, sizeof(want), "sees %s %s", names[i], names[i]);
                cr_expect(strstr(out, want), "container %s printed: %s", names[i], out);
        }
        for (int i = 0; i < 2; i++) {
                close(ready[i]);
                close(go[i]);
        }
        assert_same_tree(before, layer, "the committed layer changed under a container");
        for (int i = 0; i < 2; i++)
                remove_container_snapshot(bundles[i], names[i], trees[i]);
}
