/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * End to end through containerd: reflayerd's second socket (containerd's snapshots.v1 gRPC
 * service) as a proxy snapshotter of Debian's containerd, driven only by `ctr`.
 *
 * In a private mount namespace, a loop XFS (reflink=1) holds containerd's root and state and
 * reflayerd's store; a tmpfs over /run takes what containerd and its shims put there (runc
 * state, shim sockets, fifos), so nothing reaches the host's /run. containerd is started by
 * hand with its own sockets and a config declaring reflayerd as the proxy plugin `reflayer`.
 * A Debian minbase OCI image, built here by umoci (tests/lib/oci-fixture, no registry), is
 * imported with `ctr images import --snapshotter reflayer`; `ctr run` runs a shell in it that
 * writes and deletes, and the writes must land in that container's snapshot only; `ctr
 * snapshots` prepare/commit/view/ls/info/usage/mounts/rm behave; and once the image is
 * removed and containerd's garbage collector ran, reflayer's store is empty.
 *
 * RL_CTR_SNAPSHOTTER=native (or overlayfs) runs the same test against one of containerd's
 * built-in snapshotters without reflayerd: the proof that the test itself is right.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
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

#define NS "rltest"
#define IMAGE "reflayer.test/debian:minbase"

static rlt_daemon D = { .pid = -1 };
static char mnt[PATH_MAX];      /* the loop XFS: containerd's root and state, reflayer's store */
static char csock[PATH_MAX];    /* containerd's gRPC socket */
static char ctrd_log[PATH_MAX]; /* containerd's log */
static char ref[PATH_MAX];      /* umoci's unpack of the image: what a container must see */
static pid_t cpid = -1;
static bool run_mounted;
static char out[1 << 16];

/* Containers created; teardown kills and deletes what a failed test left. */
static char started[4][64];
static int n_started;

/* The snapshotter under test: reflayer, unless RL_CTR_SNAPSHOTTER names a built-in one. */
static const char *sn(void)
{
        const char *s = getenv("RL_CTR_SNAPSHOTTER");
        return s && *s ? s : "reflayer";
}

static bool is_reflayer(void)
{
        return strcmp(sn(), "reflayer") == 0;
}

/* The last lines of containerd's log, for messages. */
static const char *ctrd_log_tail(void)
{
        static char buf[4096];
        buf[0] = '\0';
        FILE *f = fopen(ctrd_log, "r");
        if (!f)
                return "(no containerd log)";
        if (fseek(f, -(long)(sizeof(buf) - 1), SEEK_END) < 0)
                rewind(f);
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        return buf;
}

/* ctr against our containerd, in namespace NS, stdin /dev/null (ctr run copies its stdin
 * into the container, which must not read the test runner's): exit status, output in out. */
#define CTR(...)                                                                                   \
        ({                                                                                         \
                char *argv_[] = { "sh",  "-c",          "exec \"$@\" </dev/null", "sh",            \
                                  "ctr", "--address",   csock,                    "--namespace",   \
                                  NS,    __VA_ARGS__,   NULL };                                    \
                rlt_run(argv_, out, sizeof(out));                                                  \
        })
/* ctr snapshots --snapshotter <the one under test> ... */
#define SNAP(...) CTR("snapshots", "--snapshotter", (char *)sn(), __VA_ARGS__)

/* reflayer --socket S ARGS...: its exit status, its output in out. */
#define CLI(...)                                                                                   \
        ({                                                                                         \
                const char *cli_ = getenv("RL_CLI");                                               \
                cr_assert(cli_, "RL_CLI must name the built reflayer (tests/run-unit sets it)");   \
                char *argv_[] = { (char *)cli_, "--socket", D.sock, __VA_ARGS__, NULL };           \
                rlt_run(argv_, out, sizeof(out));                                                  \
        })

/* Start containerd with config; return once `ctr version` answers (20 s at most). */
static void containerd_start(const char *config)
{
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 1, ctrd_log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        char *argv[] = { "containerd", "--config", (char *)config, NULL };
        int r = posix_spawnp(&cpid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        cr_assert_eq(r, 0, "spawn containerd: %s", strerror(r));
        for (int waited = 0;; waited += 100) {
                int status;
                if (waitpid(cpid, &status, WNOHANG) == cpid) {
                        cpid = -1;
                        cr_assert_fail("containerd exited (status 0x%x) before it answered: %s",
                                       status, ctrd_log_tail());
                }
                char *v[] = { "ctr", "--address", csock, "version", NULL };
                if (rlt_run(v, out, sizeof(out)) == 0)
                        return;
                cr_assert(waited < 20000, "containerd did not answer on %s in 20 s: %s", csock,
                          ctrd_log_tail());
                poll(NULL, 0, 100);
        }
}

/* The pids of processes whose command line names our containerd's socket: its shims. */
static int strays(pid_t *pids, int max)
{
        DIR *d = opendir("/proc");
        struct dirent *e;
        int n = 0;
        cr_assert(d, "opendir /proc: %s", strerror(errno));
        while ((e = readdir(d)) && n < max) {
                char p[64], cmd[4096];
                pid_t pid = (pid_t)atoi(e->d_name);
                if (pid <= 0 || pid == cpid)
                        continue;
                snprintf(p, sizeof(p), "/proc/%d/cmdline", (int)pid);
                int fd = open(p, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        continue;
                ssize_t got = read(fd, cmd, sizeof(cmd) - 1);
                close(fd);
                if (got <= 0)
                        continue; /* a kernel thread or a zombie */
                for (ssize_t i = 0; i < got; i++)
                        cmd[i] = cmd[i] ? cmd[i] : ' ';
                cmd[got] = '\0';
                if (strstr(cmd, csock))
                        pids[n++] = pid;
        }
        closedir(d);
        return n;
}

static void setup(void)
{
        char config[PATH_MAX], rlsock[PATH_MAX];
        rlt_init();
        rlt_need_tool("containerd", "containerd");
        rlt_need_tool("ctr", "containerd");
        rlt_need_tool("containerd-shim-runc-v2", "containerd");
        rlt_need_tool("runc", "runc");
        rlt_need_tool("umoci", "umoci");
        snprintf(mnt, sizeof(mnt), "%s", rlt_mkfs(RLT_XFS, 4096, "xfs"));
        snprintf(csock, sizeof(csock), "%s/containerd.sock", rlt_scratch());
        snprintf(ctrd_log, sizeof(ctrd_log), "%s/containerd.log", rlt_scratch());
        snprintf(rlsock, sizeof(rlsock), "%s/reflayer-containerd.sock", rlt_scratch());
        /* containerd, its shims and runc keep state under /run/containerd whatever the config
         * says (runc's root, shim sockets, fifos): a tmpfs of this namespace takes it. */
        cr_assert(mount("rltest-run", "/run", "tmpfs", 0, "mode=0755,size=64m") == 0,
                  "mount a tmpfs on /run: %s", strerror(errno));
        run_mounted = true;

        if (is_reflayer()) {
                snprintf(D.root, sizeof(D.root), "%s/store", mnt);
                snprintf(D.sock, sizeof(D.sock), "%s/reflayer.sock", rlt_scratch());
                const char *extra[] = { "--containerd-socket", rlsock, NULL };
                rlt_daemon_start(&D, -1, extra);
        }
        snprintf(config, sizeof(config), "%s/containerd.toml", rlt_scratch());
        FILE *f = fopen(config, "w");
        cr_assert(f, "create %s: %s", config, strerror(errno));
        /* No CRI (it wants CNI and a sandbox image); no snapshotter this kernel or
         * filesystem cannot have, so that the log shows only what matters. */
        fprintf(f,
                "version = 2\n"
                "root = \"%s/containerd/root\"\n"
                "state = \"%s/containerd/state\"\n"
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\",\n"
                "  \"io.containerd.snapshotter.v1.aufs\",\n"
                "  \"io.containerd.snapshotter.v1.btrfs\",\n"
                "  \"io.containerd.snapshotter.v1.zfs\",\n"
                "  \"io.containerd.snapshotter.v1.devmapper\"]\n"
                "[grpc]\n  address = \"%s\"\n"
                "[ttrpc]\n  address = \"%s.ttrpc\"\n"
                "[debug]\n  level = \"debug\"\n"
                "[proxy_plugins.reflayer]\n  type = \"snapshot\"\n  address = \"%s\"\n",
                mnt, mnt, csock, csock, rlsock);
        cr_assert(fclose(f) == 0, "write %s: %s", config, strerror(errno));
        containerd_start(config);
}

static void teardown(void)
{
        /* Containers a failed test left: kill their tasks (ending the shims), delete them. */
        for (int i = 0; i < n_started && cpid > 0; i++) {
                CTR("tasks", "rm", "-f", started[i]);
                CTR("containers", "rm", started[i]);
        }
        n_started = 0;
        if (cpid > 0) {
                int status;
                kill(cpid, SIGTERM);
                waitpid(cpid, &status, 0);
                cpid = -1;
        }
        /* A shim outlives containerd by design, and would keep this mount namespace (and its
         * loop XFS) alive: a task's shim exits just after its task is deleted, so wait a
         * little for that, then kill what is left and fail. */
        pid_t pids[16];
        int n = 0;
        for (int waited = 0; (n = strays(pids, 16)) > 0 && waited < 5000; waited += 100)
                poll(NULL, 0, 100);
        for (int i = 0; i < n; i++)
                kill(pids[i], SIGKILL);
        cr_expect_eq(n, 0, "%d containerd shim(s) still ran after containerd stopped", n);
        rlt_daemon_stop(&D);
        if (run_mounted)
                umount2("/run", MNT_DETACH);
        run_mounted = false;
        rlt_fini();
}

/* Debootstrap on a fresh machine takes minutes; the cached rootfs makes it seconds. */
TestSuite(containerd, .init = setup, .fini = teardown, .timeout = 900);

/*
 * The image: tests/lib/oci-fixture's Debian layout (a minbase rootfs as one layer, a small
 * second layer; umoci's unpack of it at ref), named IMAGE by the io.containerd.image.name
 * annotation on its manifest in index.json (ctr would otherwise invent a name from the
 * ref.name "debian"), tarred up as `ctr images import` wants it. Returns the tar's path.
 */
static const char *make_image(void)
{
        static char tar[PATH_MAX];
        char dir[PATH_MAX], layout[PATH_MAX], index[PATH_MAX];
        cr_assert(access("tests/lib/oci-fixture", X_OK) == 0,
                  "tests/lib/oci-fixture not found: run the tests from the repository");
        snprintf(dir, sizeof(dir), "%s/oci", rlt_scratch());
        char *fx[] = { "tests/lib/oci-fixture", "debian", dir, NULL };
        int r = rlt_run(fx, out, sizeof(out));
        cr_assert_eq(r, 0, "tests/lib/oci-fixture debian %s failed (%d): %s", dir, r, out);
        snprintf(layout, sizeof(layout), "%s/layout", dir);
        snprintf(ref, sizeof(ref), "%s/ref/rootfs", dir);

        snprintf(index, sizeof(index), "%s/index.json", layout);
        json_error_t jerr;
        json_t *idx = json_load_file(index, 0, &jerr);
        cr_assert(idx, "%s: %s", index, jerr.text);
        json_t *m = json_array_get(json_object_get(idx, "manifests"), 0);
        cr_assert(m, "%s lists no manifest", index);
        json_t *ann = json_object_get(m, "annotations");
        cr_assert(json_is_object(ann), "%s: the manifest has no annotations", index);
        json_object_set_new(ann, "io.containerd.image.name", json_string(IMAGE));
        cr_assert_eq(json_dump_file(idx, index, JSON_COMPACT), 0, "write %s", index);
        json_decref(idx);

        snprintf(tar, sizeof(tar), "%s/debian-oci.tar", rlt_scratch());
        char *t[] = { "tar", "-C", layout, "-cf", tar, ".", NULL };
        cr_assert_eq(rlt_run(t, out, sizeof(out)), 0, "tar of %s: %s", layout, out);
        return tar;
}

/* One row of `ctr snapshots ls`. */
typedef struct snap {
        char key[160], parent[160], kind[16];
} snap;
static snap snaps[16];
static int n_snaps;

/* Read `ctr snapshots ls` into snaps. */
static void snap_ls(void)
{
        int r = SNAP("ls");
        cr_assert_eq(r, 0, "ctr snapshots ls: %s", out);
        n_snaps = 0;
        char *save = NULL, *line = strtok_r(out, "\n", &save);
        cr_assert(line && strncmp(line, "KEY", 3) == 0, "ctr snapshots ls: no header: %s", out);
        while ((line = strtok_r(NULL, "\n", &save))) {
                char a[160], b[160], c[16];
                cr_assert(n_snaps < 16, "more snapshots than the test made");
                snap *s = &snaps[n_snaps++];
                int k = sscanf(line, "%159s %159s %15s", a, b, c);
                cr_assert(k == 2 || k == 3, "ctr snapshots ls: odd row '%s'", line);
                /* A root has no parent: two columns. */
                snprintf(s->key, sizeof(s->key), "%s", a);
                snprintf(s->parent, sizeof(s->parent), "%s", k == 3 ? b : "");
                snprintf(s->kind, sizeof(s->kind), "%s", k == 3 ? c : b);
        }
}

static const snap *snap_find(const char *key)
{
        for (int i = 0; i < n_snaps; i++)
                if (strcmp(snaps[i].key, key) == 0)
                        return &snaps[i];
        return NULL;
}

/*
 * Import the image with the snapshotter under test; its two layers are committed snapshots
 * named by chain ID: base (no parent) and top (base's child). Returns top (static).
 */
static const char *import_image(const char *tar)
{
        static char top[160];
        int r = CTR("images", "import", "--snapshotter", (char *)sn(), (char *)tar);
        cr_assert_eq(r, 0, "ctr images import --snapshotter %s: %s\ncontainerd: %s", sn(), out,
                     ctrd_log_tail());
        cr_expect(strstr(out, "unpacking " IMAGE), "ctr images import printed: %s", out);
        cr_assert_eq(CTR("images", "ls", "-q"), 0, "ctr images ls: %s", out);
        cr_assert_str_eq(out, IMAGE "\n", "ctr images ls");

        snap_ls();
        cr_assert_eq(n_snaps, 2, "after the import, %d snapshots, not the image's 2 layers",
                     n_snaps);
        const snap *base = NULL, *t = NULL;
        for (int i = 0; i < 2; i++) {
                cr_expect_str_eq(snaps[i].kind, "Committed", "%s", snaps[i].key);
                cr_expect(strncmp(snaps[i].key, "sha256:", 7) == 0,
                          "%s: not a chain ID", snaps[i].key);
                if (!snaps[i].parent[0])
                        base = &snaps[i];
                else
                        t = &snaps[i];
        }
        cr_assert(base && t && strcmp(t->parent, base->key) == 0,
                  "the layers are not a chain of two: %s <- %s, %s <- %s", snaps[0].parent,
                  snaps[0].key, snaps[1].parent, snaps[1].key);
        snprintf(top, sizeof(top), "%s", t->key);
        return top;
}

/* Mount snapshot key at dir/name by running what `ctr snapshots mounts` prints (one mount(8)
 * command a line, with the target given). Returns the target (static). */
static const char *mount_snapshot(const char *key, const char *name)
{
        static char target[PATH_MAX];
        snprintf(target, sizeof(target), "%s/%s", rlt_scratch(), name);
        cr_assert(mkdir(target, 0755) == 0, "mkdir %s: %s", target, strerror(errno));
        int r = SNAP("mounts", target, (char *)key);
        cr_assert_eq(r, 0, "ctr snapshots mounts %s: %s", key, out);
        cr_assert(strncmp(out, "mount -t ", 9) == 0 && strstr(out, target),
                  "ctr snapshots mounts %s printed no mount command for %s: %s", key, target,
                  out);
        char cmd[sizeof(out)];
        snprintf(cmd, sizeof(cmd), "%s", out);
        char *sh[] = { "sh", "-ec", cmd, NULL };
        r = rlt_run(sh, out, sizeof(out));
        cr_assert_eq(r, 0, "%s: %s", cmd, out);
        return target;
}

static void umount_snapshot(const char *target)
{
        cr_assert(umount2(target, 0) == 0, "umount %s: %s", target, strerror(errno));
}

/* The content of dir/rel (at most 4 KiB), or NULL with errno set. */
/* reflayer's snapshots, from `reflayer --json ls` (the caller frees). */
static json_t *store_ls(void)
{
        int r = CLI("--json", "ls");
        cr_assert_eq(r, 0, "reflayer ls: %s", out);
        json_error_t jerr;
        json_t *a = json_loads(out, 0, &jerr);
        cr_assert(json_is_array(a), "reflayer --json ls printed no JSON array (%s): %s", jerr.text,
                  out);
        return a;
}

/*
 * The name reflayer's store gives containerd's snapshot key: containerd hands its backend
 * `NS/<id>/<key>`, so the one name ending in "/<key>". Returns it (static).
 */
static const char *store_name(const char *key)
{
        static char name[256];
        json_t *a = store_ls(), *e;
        size_t i, found = 0, kl = strlen(key);
        json_array_foreach(a, i, e)
        {
                const char *n = json_string_value(json_object_get(e, "name"));
                size_t nl = n ? strlen(n) : 0;
                if (nl > kl && n[nl - kl - 1] == '/' && strcmp(n + nl - kl, key) == 0) {
                        snprintf(name, sizeof(name), "%s", n);
                        found++;
                }
        }
        char *dump = json_dumps(a, JSON_COMPACT);
        cr_assert_eq(found, 1, "reflayer's store has %zu snapshots for containerd's %s: %s",
                     found, key, dump);
        free(dump);
        json_decref(a);
        return name;
}

/* The directory holding the store's snapshot name, from `reflayer --json mounts`. */
static void store_tree(const char *name, char *ret, size_t size)
{
        int r = CLI("--json", "mounts", (char *)name);
        cr_assert_eq(r, 0, "reflayer mounts %s: %s", name, out);
        json_error_t jerr;
        json_t *m = json_loads(out, 0, &jerr);
        cr_assert(m, "reflayer --json mounts %s printed no JSON (%s): %s", name, jerr.text, out);
        const char *src = json_string_value(json_object_get(m, "source"));
        cr_assert(src && src[0] == '/', "reflayer --json mounts %s: no source: %s", name, out);
        snprintf(ret, size, "%s", src);
        json_decref(m);
}

/*
 * Remove the image with a synchronous garbage collection, then wait (30 s at most) until no
 * snapshot is left: in containerd's list and, for reflayer, in its store. A removal the
 * collector started earlier, asynchronously, may still be running when --sync returns.
 */
static void remove_image_and_collect(void)
{
        int r = CTR("images", "rm", "--sync", IMAGE);
        cr_assert_eq(r, 0, "ctr images rm --sync %s: %s", IMAGE, out);
        char left[4096] = "";
        for (int waited = 0;; waited += 200) {
                snap_ls();
                size_t in_store = 0;
                if (is_reflayer()) {
                        json_t *a = store_ls();
                        in_store = json_array_size(a);
                        char *dump = json_dumps(a, JSON_COMPACT);
                        snprintf(left, sizeof(left), "%s", dump);
                        free(dump);
                        json_decref(a);
                }
                if (n_snaps == 0 && in_store == 0)
                        break;
                cr_assert(waited < 30000,
                          "30 s after ctr images rm --sync: %d snapshots in containerd (first "
                          "%s), %zu in reflayer's store: %s\ncontainerd: %s",
                          n_snaps, n_snaps ? snaps[0].key : "-", in_store, left, ctrd_log_tail());
                poll(NULL, 0, 200);
        }
        if (is_reflayer()) {
                cr_assert_eq(CLI("cleanup"), 0, "reflayer cleanup: %s", out);
                cr_expect_str_eq(left, "[]", "reflayer's store after the image went");
        }
}

/* Is the tree b still a, attribute by attribute (tests/lib)? */
static void assert_same_tree(const char *a, const char *b, unsigned flags, const char *what)
{
        char why[1024];
        cr_assert(rlt_tree_equal_flags(a, b, NULL, NULL, flags, why, sizeof(why)), "%s: %s", what,
                  why);
}

Test(containerd, run_writes_land_in_its_snapshot_only)
{
        const char *top = import_image(make_image());
        char want[64], layer[PATH_MAX], before[PATH_MAX], ctree[PATH_MAX], id[64], id2[64];
        snprintf(want, sizeof(want), "%s", rlt_read_at(ref, "etc/debian_version"));
        cr_assert(want[0], "%s/etc/debian_version is empty", ref);

        /* Through reflayer, the image's top layer is a tree in its store: keep a reflink
         * clone of it as it is now, to compare after the container ran. */
        if (is_reflayer()) {
                store_tree(store_name(top), layer, sizeof(layer));
                /* The first clone of a fresh layer refreshes the atimes of its symlinks
                 * (readlink has no O_NOATIME, and relatime updates an atime older than the
                 * ctime): the kernel's doing, which the container's Prepare would do too.
                 * A first clone settles them, the second is the reference. */
                snprintf(before, sizeof(before), "%s/layer-settle", mnt);
                cr_assert_eq(CLI("clone", "--no-progress", layer, before), 0,
                             "reflayer clone %s %s: %s", layer, before, out);
                snprintf(before, sizeof(before), "%s/layer-before", mnt);
                cr_assert_eq(CLI("clone", "--no-progress", layer, before), 0,
                             "reflayer clone %s %s: %s", layer, before, out);
        }

        snprintf(id, sizeof(id), "rl-ctr-%d", (int)getpid());
        snprintf(started[n_started++], sizeof(started[0]), "%s", id);
        /* --cgroup "": runc's own cgroup per container, which it removes with it, rather than
         * ctr's /NS/ID whose NS level would stay behind in every hierarchy. */
        int r = CTR("run", "--cgroup", "", "--snapshotter", (char *)sn(), IMAGE, id, "sh", "-c",
                    "echo hi > /written; rm /etc/issue; cat /etc/debian_version");
        cr_assert_eq(r, 0, "ctr run --snapshotter %s: exit %d: %s\ncontainerd: %s", sn(), r, out,
                     ctrd_log_tail());
        cr_expect_str_eq(out, want, "the container printed");

        /* containerd's view: the container's active snapshot is the top layer's child. */
        snap_ls();
        const snap *s = snap_find(id);
        cr_assert(s, "ctr snapshots ls has no snapshot %s after ctr run", id);
        cr_expect_str_eq(s->kind, "Active");
        cr_expect_str_eq(s->parent, top);

        /* Through its mounts, the container's snapshot holds the write and lacks the file. */
        const char *t = mount_snapshot(id, "ctr-rootfs");
        char *c = rlt_read_at(t, "written");
        cr_assert(c, "%s/written: %s", t, strerror(errno));
        cr_expect_str_eq(c, "hi\n");
        cr_expect(!rlt_exists_at(t, "etc/issue"), "rm /etc/issue in the container did not land");
        cr_expect(rlt_exists_at(t, "etc/debian_version"), "the container's rootfs lost more");
        umount_snapshot(t);

        /* A view of the top layer: what the image holds, none of the container's doing. */
        cr_assert_eq(SNAP("view", "check-view", (char *)top), 0, "ctr snapshots view: %s", out);
        t = mount_snapshot("check-view", "view");
        cr_expect(!rlt_exists_at(t, "written"), "the container's write reached the image's layer");
        cr_expect(rlt_exists_at(t, "etc/issue"), "the container's rm reached the image's layer");
        /* And all the image holds, as umoci's own unpack has it: names, modes, data and link
         * targets (times are the applier's business, not the snapshotter's). */
        cr_expect_eq(rlt_tree_hash(t, NULL), rlt_tree_hash(ref, NULL),
                     "the image's top layer does not hold the image (umoci unpack %s)", ref);
        umount_snapshot(t);
        cr_assert_eq(SNAP("rm", "check-view"), 0, "ctr snapshots rm check-view: %s", out);

        /* And in reflayer's store itself: the container's tree has the writes, the layer's
         * tree is as it was, attribute by attribute. */
        if (is_reflayer()) {
                store_tree(store_name(id), ctree, sizeof(ctree));
                cr_assert_str_neq(ctree, layer);
                c = rlt_read_at(ctree, "written");
                cr_expect(c && strcmp(c, "hi\n") == 0, "%s/written: %s", ctree,
                          c ? c : strerror(errno));
                cr_expect(!rlt_exists_at(ctree, "etc/issue"), "%s/etc/issue is still there", ctree);
                cr_expect(!rlt_exists_at(layer, "written"), "the write reached the layer's tree");
                assert_same_tree(before, layer, 0, "the committed layer changed under ctr run");
        }

        /* Deleting the container deletes its snapshot. */
        cr_assert_eq(CTR("containers", "rm", id), 0, "ctr containers rm %s: %s", id, out);
        n_started--;
        snap_ls();
        cr_expect(!snap_find(id), "ctr containers rm %s left its snapshot", id);

        /* A second container, --rm: a fresh snapshot (no trace of the first) that goes with
         * it. */
        snprintf(id2, sizeof(id2), "rl-ctr-%d-rm", (int)getpid());
        snprintf(started[n_started++], sizeof(started[0]), "%s", id2);
        r = CTR("run", "--rm", "--cgroup", "", "--snapshotter", (char *)sn(), IMAGE, id2, "sh",
                "-c", "cat /written 2>/dev/null || echo fresh; test -f /etc/issue && echo issue");
        cr_assert_eq(r, 0, "ctr run --rm: exit %d: %s", r, out);
        cr_expect_str_eq(out, "fresh\nissue\n", "the second container printed");
        n_started--;
        snap_ls();
        cr_expect(!snap_find(id2), "ctr run --rm left the snapshot %s", id2);

        remove_image_and_collect();
}

/* `ctr snapshots SUBCOMMAND` on the image's layers and snapshots of them. */
Test(containerd, snapshot_commands)
{
        const char *top = import_image(make_image());
        char topk[160];
        snprintf(topk, sizeof(topk), "%s", top);

        /* prepare, ls, info. */
        int r = SNAP("prepare", "work", topk);
        cr_assert_eq(r, 0, "ctr snapshots prepare work: %s", out);
        snap_ls();
        const snap *s = snap_find("work");
        cr_assert(s, "ctr snapshots ls has no 'work' after prepare");
        cr_expect_str_eq(s->kind, "Active");
        cr_expect_str_eq(s->parent, topk);
        cr_expect_eq(n_snaps, 3);

        r = SNAP("info", "work");
        cr_assert_eq(r, 0, "ctr snapshots info work: %s", out);
        json_error_t jerr;
        json_t *info = json_loads(out, 0, &jerr);
        cr_assert(info, "ctr snapshots info printed no JSON (%s): %s", jerr.text, out);
        cr_expect_str_eq(json_string_value(json_object_get(info, "Kind")) ?: "", "Active");
        cr_expect_str_eq(json_string_value(json_object_get(info, "Name")) ?: "", "work");
        cr_expect_str_eq(json_string_value(json_object_get(info, "Parent")) ?: "", topk);
        /* ctr labels what it prepares as a GC root; the label must make the round trip. */
        cr_expect(json_object_get(json_object_get(info, "Labels"), "containerd.io/gc.root"),
                  "ctr snapshots info work: no containerd.io/gc.root label: %s", out);
        json_decref(info);

        /* mounts: write through them, and usage counts what was written. */
        const char *t = mount_snapshot("work", "work");
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/added", t);
        rlt_write_file(p, 1 << 20, 7);
        cr_expect(rlt_exists_at(t, "etc/issue"),
                  "the prepared snapshot lacks the layer's etc/issue");
        umount_snapshot(t);
        r = SNAP("usage", "work");
        cr_assert_eq(r, 0, "ctr snapshots usage work: %s", out);
        double size;
        char unit[8];
        const char *row = strstr(out, "\nwork ");
        cr_assert(row && sscanf(row, " work %lf %7s", &size, unit) == 2,
                  "ctr snapshots usage work: no row for work: %s", out);
        double bytes = size * (!strcmp(unit, "KiB")   ? 1024.0
                               : !strcmp(unit, "MiB") ? 1048576.0
                               : !strcmp(unit, "GiB") ? 1073741824.0
                                                      : 1.0);
        cr_expect(bytes >= (1 << 20), "usage of 'work' after writing 1 MiB into it: %s", out);

        /* commit, then a view of the committed snapshot shows the file, read-only. */
        r = SNAP("commit", "done", "work");
        cr_assert_eq(r, 0, "ctr snapshots commit done work: %s", out);
        snap_ls();
        cr_expect(!snap_find("work"), "'work' is still listed after its commit");
        s = snap_find("done");
        cr_assert(s, "ctr snapshots ls has no 'done' after the commit");
        cr_expect_str_eq(s->kind, "Committed");
        cr_expect_str_eq(s->parent, topk);
        r = SNAP("view", "look", "done");
        cr_assert_eq(r, 0, "ctr snapshots view look done: %s", out);
        t = mount_snapshot("look", "look");
        struct stat st;
        snprintf(p, sizeof(p), "%s/added", t);
        cr_expect(stat(p, &st) == 0 && st.st_size == (1 << 20), "%s: %s", p, strerror(errno));
        snprintf(p, sizeof(p), "%s/new-file", t);
        int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        cr_expect(fd < 0 && errno == EROFS, "create %s in a view: %s", p,
                  fd < 0 ? strerror(errno) : "it worked");
        if (fd >= 0)
                close(fd);
        umount_snapshot(t);

        /* rm: refused for a parent and for what does not exist, done for the rest. */
        r = SNAP("rm", topk);
        cr_expect_neq(r, 0, "ctr snapshots rm of a parent worked: %s", out);
        cr_expect(strstr(out, "failed precondition"), "ctr snapshots rm %s: %s", topk, out);
        r = SNAP("rm", "no-such-snapshot");
        cr_expect_neq(r, 0, "ctr snapshots rm no-such-snapshot worked: %s", out);
        cr_expect(strstr(out, "not found"), "ctr snapshots rm no-such-snapshot: %s", out);
        cr_assert_eq(SNAP("rm", "look"), 0, "ctr snapshots rm look: %s", out);
        cr_assert_eq(SNAP("rm", "done"), 0, "ctr snapshots rm done: %s", out);
        snap_ls();
        cr_expect_eq(n_snaps, 2, "after rm, %d snapshots, not the image's 2", n_snaps);
        cr_expect(snap_find(topk), "the image's top layer went with rm of its child");
        r = SNAP("mounts", "/nowhere", "done");
        cr_expect_neq(r, 0, "ctr snapshots mounts of a removed snapshot worked: %s", out);

        remove_image_and_collect();
}
