/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Crash safety of reflayerd: a client thread drives Prepare, Apply, Commit, Remove and Import
 * over the socket without pause while the test SIGKILLs the daemon, half the time at a
 * random instant, half the time aimed just after a request of a chosen kind went out. The
 * daemon is restarted on the same root after every kill, and before the next round:
 *   - it gets ready (the store opens);
 *   - every key is whole or absent: each listed snapshot has its tree, and the tree is one of
 *     the few it may be (a content hash: the base, the base with the layer applied, an
 *     imported layer), its marker and labels say what its commit said;
 *   - committed trees are unchanged: the base and every committed layer hash as they should;
 *   - snapshots/ holds nothing the index does not know, tmp/ and pool/ are emptied at start
 *     (what a killed daemon left there is of no one), trash/ drains (Cleanup);
 *   - no mount is left under the store but its own filesystem (and, with --image, one
 *     mount of the image and one loop device for it, however many daemons were killed).
 * The client's errors are checked too: any error before the kill fails the test.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <reflayer/client.h>

#include "rltest-daemon.h"
#include "rltest-tar.h"
#include "rltest.h"

enum { D_CONNECT, D_PREPARE, D_APPLY, D_COMMIT, D_REMOVE, D_IMPORT, D_IDLE, D_MAX };
static const char *const op_names[] = { "connect", "prepare", "apply",  "commit",
                                        "remove",  "import",  "between calls" };

#define KEEP_SNAPSHOTS 24
#define IMPORT_MAX 4

typedef struct world {
        rlt_daemon d;
        const char *const *extra; /* daemon arguments */
        const char *image;        /* --image FILE, or NULL */
        char tar[PATH_MAX], layout[PATH_MAX];
        uint64_t h_base, h_applied;
        struct {
                char name[RL_DIGEST_MAX];
                uint64_t hash;
        } imp[IMPORT_MAX]; /* the image's layers, bottom first */
        size_t n_imp;

        /* shared with the client thread */
        atomic_int op;
        atomic_bool killed;
        atomic_uint seq; /* keys made, across rounds */
        uint64_t seed;
        int bad_r; /* the first error the client got before the kill */
        int bad_op;
        char bad_msg[RL_ERROR_MSG_MAX];
} world;

static world *current; /* for fini */
static uint64_t rnd_state;
static uint64_t rnd(uint64_t *s)
{
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        return *s;
}

/* The client's failures: after the kill, expected (the connection breaks); before, a bug. */
static bool failed(world *w, int r, const rl_error *err)
{
        if (r >= 0)
                return false;
        if (!atomic_load(&w->killed) && !w->bad_r) {
                w->bad_r = r;
                w->bad_op = atomic_load(&w->op);
                snprintf(w->bad_msg, sizeof(w->bad_msg), "%s", err->msg);
        }
        return true;
}

/* Removes may find the key gone (never made, or removed before a kill): that is no error. */
static bool remove_failed(world *w, rl_client *c, const char *key)
{
        rl_error err = {};
        atomic_store(&w->op, D_REMOVE);
        int r = rl_client_remove(c, key, &err);
        return r != -ENOENT && failed(w, r, &err);
}

static bool write_marker(const char *dir, const char *name)
{
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/marker", dir);
        FILE *f = fopen(p, "we");
        if (!f)
                return false;
        fputs(name, f);
        return fclose(f) == 0;
}

/* prepare from base; maybe apply the layer; write a marker; commit (mostly) */
static bool prepare_commit(world *w, rl_client *c, unsigned k, uint64_t *rs)
{
        char key[64], name[64];
        rl_error err = {};
        rl_mount m = {};
        snprintf(key, sizeof(key), "active-%u", k);
        snprintf(name, sizeof(name), "layer-%u", k);
        atomic_store(&w->op, D_PREPARE);
        if (failed(w, rl_client_prepare(c, key, "base", NULL, 0, NULL, &m, &err), &err))
                return false;
        bool apply = rnd(rs) % 2;
        if (apply) {
                int fd = open(w->tar, O_RDONLY | O_CLOEXEC);
                atomic_store(&w->op, D_APPLY);
                int r = fd < 0 ? -errno : rl_client_apply(c, key, fd, NULL, NULL, &err);
                if (fd >= 0)
                        close(fd);
                if (failed(w, r, &err)) {
                        rl_mount_clear(&m);
                        return false;
                }
        }
        atomic_store(&w->op, D_IDLE);
        bool ok = write_marker(m.source, name);
        rl_mount_clear(&m);
        if (failed(w, ok ? 0 : -errno, &(rl_error){ errno, "write the marker" }))
                return false;
        if (rnd(rs) % 5 == 0)
                return true; /* left active */
        rl_label l[] = { { "applied", apply ? "yes" : "no" }, { "marker", name } };
        atomic_store(&w->op, D_COMMIT);
        return !failed(w, rl_client_commit(c, name, key, l, 2, &err), &err);
}

/* Import the image, then remove its layers (top first), so the next import has work. */
static bool import_image(world *w, rl_client *c)
{
        rl_error err = {};
        rl_import_result res = {};
        int fd = open(w->layout, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        atomic_store(&w->op, D_IMPORT);
        int r = fd < 0 ? -errno : rl_client_import(c, fd, &(rl_import_options){ .ref = "t1" },
                                                   &res, &err);
        if (fd >= 0)
                close(fd);
        if (failed(w, r, &err))
                return false;
        for (size_t i = w->n_imp; i-- > 0;)
                if (remove_failed(w, c, w->imp[i].name))
                        return false;
        return true;
}

static void *driver_main(void *arg)
{
        world *w = arg;
        rl_client *c = NULL;
        rl_error err = {};
        uint64_t rs = w->seed;

        atomic_store(&w->op, D_CONNECT);
        if (failed(w, rl_client_connect(w->d.sock, &c, &err), &err))
                return NULL;
        for (;;) {
                unsigned k = atomic_fetch_add(&w->seq, 1) + 1;
                bool ok = true;
                char key[64];
                switch (rnd(&rs) % 8) {
                case 0:
                case 1:
                case 2:
                case 3:
                        ok = prepare_commit(w, c, k, &rs);
                        break;
                case 4:
                case 5: {
                        /* one of the recent keys, committed or left active */
                        unsigned j = k - 1 - (unsigned)(rnd(&rs) % (k < 30 ? k : 30));
                        snprintf(key, sizeof(key), "layer-%u", j);
                        ok = !remove_failed(w, c, key);
                        snprintf(key, sizeof(key), "active-%u", j);
                        ok = ok && !remove_failed(w, c, key);
                        break;
                }
                default:
                        ok = import_image(w, c);
                        break;
                }
                if (!ok)
                        break;
                atomic_store(&w->op, D_IDLE);
        }
        rl_client_free(c);
        return NULL;
}

/* How many mounts have their mount point at path or below it. */
static unsigned mounts_under(const char *path)
{
        FILE *f = fopen("/proc/self/mountinfo", "re");
        char line[4096], mp[PATH_MAX];
        size_t len = strlen(path);
        unsigned n = 0;
        cr_assert(f, "/proc/self/mountinfo: %s", strerror(errno));
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && !strncmp(mp, path, len) &&
                    (mp[len] == '\0' || mp[len] == '/'))
                        n++;
        fclose(f);
        return n;
}

/* How many loop devices are attached to the file at path. */
static unsigned loops_of(const char *path)
{
        DIR *d = opendir("/sys/block");
        struct dirent *e;
        unsigned n = 0;
        cr_assert(d, "/sys/block: %s", strerror(errno));
        while ((e = readdir(d))) {
                char p[PATH_MAX], back[PATH_MAX] = "";
                if (strncmp(e->d_name, "loop", 4))
                        continue;
                snprintf(p, sizeof(p), "/sys/block/%s/loop/backing_file", e->d_name);
                FILE *f = fopen(p, "re");
                if (!f)
                        continue; /* not attached */
                if (fgets(back, sizeof(back), f))
                        back[strcspn(back, "\n")] = '\0';
                fclose(f);
                n += strcmp(back, path) == 0;
        }
        closedir(d);
        return n;
}

static const char *label(const rl_info *info, const char *key)
{
        for (size_t i = 0; i < info->n_labels; i++)
                if (!strcmp(info->labels[i].key, key))
                        return info->labels[i].value;
        return NULL;
}

/* One listed snapshot: whole, and what it may be. */
static void check_snapshot(const world *w, const rl_info *info, const rl_info *all, size_t n)
{
        char p[PATH_MAX], buf[64] = "";
        struct stat st;

        snprintf(p, sizeof(p), "%s/snapshots/%lu/fs", w->d.root, (unsigned long)info->id);
        cr_assert(stat(p, &st) == 0 && S_ISDIR(st.st_mode), "%s: its tree %s is missing",
                  info->name, p);
        if (info->parent) {
                size_t i = 0;
                while (i < n && strcmp(all[i].name, info->parent))
                        i++;
                cr_assert(i < n, "%s: its parent %s is gone", info->name, info->parent);
                cr_assert_eq(all[i].kind, RL_KIND_COMMITTED, "%s: parent %s not committed",
                             info->name, info->parent);
        }
        uint64_t h = rlt_tree_hash(p, "marker");
        if (!strcmp(info->name, "base")) {
                cr_assert_eq(info->kind, RL_KIND_COMMITTED, "base is no longer committed");
                cr_assert_eq(h, w->h_base, "the base layer's tree changed");
                return;
        }
        if (!strncmp(info->name, "sha256:", 7)) {
                size_t i = 0;
                while (i < w->n_imp && strcmp(w->imp[i].name, info->name))
                        i++;
                cr_assert(i < w->n_imp, "%s: a snapshot no import makes", info->name);
                cr_assert_eq(info->kind, RL_KIND_COMMITTED, "%s: imported, not committed",
                             info->name);
                cr_assert(label(info, "reflayer.io/diff-id"), "%s: no diff-id label", info->name);
                cr_assert_eq(h, w->imp[i].hash, "imported layer %s: its tree differs",
                             info->name);
                return;
        }
        cr_assert_str_eq(info->parent ? info->parent : "", "base", "%s: parent", info->name);
        if (!strncmp(info->name, "active-", 7)) {
                cr_assert_eq(info->kind, RL_KIND_ACTIVE, "%s: kind %d", info->name, info->kind);
                /* Killed in Apply or not: the base, or the base with the whole layer. */
                cr_assert(h == w->h_base || h == w->h_applied,
                          "%s: the tree is neither the base nor the base with the layer",
                          info->name);
                return;
        }
        cr_assert(!strncmp(info->name, "layer-", 6), "%s: a key no one made", info->name);
        cr_assert_eq(info->kind, RL_KIND_COMMITTED, "%s: kind %d", info->name, info->kind);
        const char *applied = label(info, "applied"), *marker = label(info, "marker");
        cr_assert(applied && marker && !strcmp(marker, info->name), "%s: labels lost",
                  info->name);
        snprintf(p + strlen(p), sizeof(p) - strlen(p), "/marker");
        FILE *f = fopen(p, "re");
        cr_assert(f, "%s: its marker is missing", info->name);
        cr_assert(fread(buf, 1, sizeof(buf) - 1, f) > 0, "%s: empty marker", info->name);
        fclose(f);
        cr_assert_str_eq(buf, info->name, "%s: its marker says %s", info->name, buf);
        cr_assert_eq(h, !strcmp(applied, "yes") ? w->h_applied : w->h_base,
                     "%s (applied: %s): its tree differs", info->name, applied);
}

/* The invariants, on a daemon just restarted after a kill. Also keeps the store small. */
static void check_store(world *w, unsigned round, const char *in_op)
{
        rl_client *c = NULL;
        rl_error err = {};
        rl_info *all = NULL;
        size_t n = 0;
        char p[PATH_MAX];

        cr_assert_eq(rl_client_connect(w->d.sock, &c, &err), 0, "%s", err.msg);
        /* Nothing ran in this daemon yet: what is in tmp/ or pool/ was left by the dead one
         * and must be gone at open. */
        snprintf(p, sizeof(p), "%s/tmp", w->d.root);
        cr_assert_eq(rlt_dir_count(p), 0, "kill %u (in %s): tmp/ not emptied at start", round,
                     in_op);
        snprintf(p, sizeof(p), "%s/pool", w->d.root);
        cr_assert_eq(rlt_dir_count(p), 0, "kill %u (in %s): pool/ not emptied at start", round,
                     in_op);
        cr_assert_eq(rl_client_list(c, NULL, 0, &all, &n, &err), 0, "%s", err.msg);
        for (size_t i = 0; i < n; i++)
                check_snapshot(w, &all[i], all, n);
        snprintf(p, sizeof(p), "%s/snapshots", w->d.root);
        cr_assert_eq(rlt_dir_count(p), n, "kill %u (in %s): snapshots/ holds %u entries, the "
                     "index %zu", round, in_op, rlt_dir_count(p), n);
        /* The daemon's own mount (--image) is there once, however many daemons died. */
        cr_assert_eq(mounts_under(w->d.root), w->image ? 1 : 0, "kill %u (in %s): %u mounts "
                     "at or under %s", round, in_op, mounts_under(w->d.root), w->d.root);
        if (w->image)
                cr_assert_eq(loops_of(w->image), 1, "kill %u (in %s): %u loop devices on %s",
                             round, in_op, loops_of(w->image), w->image);
        /* Keep the store small: some of ours go (none is a parent). */
        for (size_t i = 0, left = n; left > KEEP_SNAPSHOTS && i < n; i++)
                if (!strncmp(all[i].name, "layer-", 6) || !strncmp(all[i].name, "active-", 7)) {
                        cr_assert_eq(rl_client_remove(c, all[i].name, &err), 0, "%s", err.msg);
                        left--;
                }
        rl_info_array_free(all, n);
        cr_assert_eq(rl_client_cleanup(c, &err), 0, "%s", err.msg);
        snprintf(p, sizeof(p), "%s/trash", w->d.root);
        cr_assert_eq(rlt_dir_count(p), 0, "kill %u (in %s): trash/ not drained", round, in_op);
        rl_client_free(c);
}

/* The base (60 files), the layer tar and the image, and the trees each of them gives. */
static void setup_world(world *w)
{
        rl_client *c = NULL;
        rl_error err = {};
        rl_mount m = {};
        char p[PATH_MAX];

        rlt_daemon_start(&w->d, -1, w->extra);
        cr_assert_eq(rl_client_connect(w->d.sock, &c, &err), 0, "%s", err.msg);
        cr_assert_eq(rl_client_prepare(c, "b", NULL, NULL, 0, NULL, &m, &err), 0, "%s", err.msg);
        for (int i = 0; i < 60; i++) {
                snprintf(p, sizeof(p), "%s/d%d", m.source, i % 6);
                mkdir(p, 0755);
                snprintf(p, sizeof(p), "%s/d%d/f%d", m.source, i % 6, i);
                rlt_write_file(p, (uint64_t)(i * 997) % 20000, (unsigned)i);
        }
        w->h_base = rlt_tree_hash(m.source, "marker");
        rl_mount_clear(&m);
        cr_assert_eq(rl_client_commit(c, "base", "b", NULL, 0, &err), 0, "%s", err.msg);

        /* The layer: new files (some large, so that an Apply lasts), a changed one, a
         * whiteout of a base file. */
        snprintf(w->tar, sizeof(w->tar), "%s/layer.tar", rlt_scratch());
        rlt_tar *t = rlt_tar_open(w->tar, RL_COMPRESSION_NONE);
        static char big[1 << 20];
        for (size_t i = 0; i < sizeof(big); i++)
                big[i] = (char)(i * 7 + i / 4096);
        rlt_tar_dir(t, "app", 0755);
        for (int i = 0; i < 40; i++) {
                char name[32];
                snprintf(name, sizeof(name), "app/f%d", i);
                rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = name,
                                                 .data = big + i, .size = i % 4 ? 4096 : 512000 });
        }
        rlt_tar_file(t, "d1/f1", 0600, "changed by the layer\n");
        rlt_tar_whiteout(t, "d2/f2");
        rlt_tar_close(t);
        int fd = open(w->tar, O_RDONLY | O_CLOEXEC);
        cr_assert(fd >= 0);
        cr_assert_eq(rl_client_prepare(c, "x", "base", NULL, 0, NULL, &m, &err), 0, "%s",
                     err.msg);
        cr_assert_eq(rl_client_apply(c, "x", fd, NULL, NULL, &err), 0, "%s", err.msg);
        close(fd);
        w->h_applied = rlt_tree_hash(m.source, "marker");
        cr_assert_neq(w->h_applied, w->h_base, "the layer changed nothing");
        rl_mount_clear(&m);
        cr_assert_eq(rl_client_remove(c, "x", &err), 0, "%s", err.msg);

        /* The image: two layers by umoci (an independent tool), the first with 4 MiB. */
        snprintf(w->layout, sizeof(w->layout), "%s/img", rlt_scratch());
        rlt_oci_two_layers(rlt_scratch(), 4096);
        fd = open(w->layout, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(fd >= 0, "%s: %s", w->layout, strerror(errno));
        rl_import_result res = {};
        cr_assert_eq(rl_client_import(c, fd, &(rl_import_options){ .ref = "t1" }, &res, &err), 0,
                     "%s", err.msg);
        close(fd);
        cr_assert(res.layers >= 2 && res.layers <= IMPORT_MAX, "%u layers", res.layers);
        /* The chain from the top down, then hashes bottom first. */
        char name[RL_DIGEST_MAX];
        snprintf(name, sizeof(name), "%s", res.top);
        w->n_imp = res.layers;
        for (size_t i = w->n_imp; i-- > 0;) {
                rl_info info = {};
                cr_assert_eq(rl_client_stat(c, name, &info, &err), 0, "%s", err.msg);
                snprintf(w->imp[i].name, sizeof(w->imp[i].name), "%s", name);
                snprintf(p, sizeof(p), "%s/snapshots/%lu/fs", w->d.root, (unsigned long)info.id);
                w->imp[i].hash = rlt_tree_hash(p, "marker");
                cr_assert_eq(!info.parent, i == 0, "%s: parent %s", name, info.parent);
                if (info.parent)
                        snprintf(name, sizeof(name), "%s", info.parent);
                rl_info_clear(&info);
        }
        for (size_t i = w->n_imp; i-- > 0;)
                cr_assert_eq(rl_client_remove(c, w->imp[i].name, &err), 0, "%s", err.msg);
        cr_assert_eq(rl_client_cleanup(c, &err), 0, "%s", err.msg);
        rl_client_free(c);
}

static void kill_loop(world *w, unsigned kills, uint64_t seed)
{
        /* Aimed kills: at each kind of call in turn, 0-300 us after it went out (0-3 ms for
         * Apply and Import, which last longer). */
        static const int aims[] = { D_PREPARE, D_COMMIT, D_REMOVE, D_APPLY, D_IMPORT };
        unsigned by_op[D_MAX] = {}, aimed_hit = 0;

        rnd_state = seed;
        current = w;
        setup_world(w);
        for (unsigned i = 0; i < kills; i++) {
                int aim = i % 2 ? aims[(i / 2) % 5] : -1;
                pthread_t th;
                w->bad_r = 0;
                w->seed = seed + i + 1;
                atomic_store(&w->killed, false);
                atomic_store(&w->op, D_CONNECT);
                cr_assert_eq(pthread_create(&th, NULL, driver_main, w), 0);
                struct timespec step = { 0, 20000 };
                for (int waited = 0; aim >= 0 && atomic_load(&w->op) != aim && waited < 150000;
                     waited++)
                        nanosleep(&step, NULL);
                long after = aim < 0                            ? (long)(rnd(&rnd_state) % 60000000)
                             : aim == D_APPLY || aim == D_IMPORT ? (long)(rnd(&rnd_state) % 3000000)
                                                                 : (long)(rnd(&rnd_state) % 300000);
                nanosleep(&(struct timespec){ after / 1000000000, after % 1000000000 }, NULL);
                int op = atomic_load(&w->op);
                atomic_store(&w->killed, true);
                cr_assert_eq(kill(w->d.pid, SIGKILL), 0, "kill reflayerd: %s", strerror(errno));
                int status;
                cr_assert_eq(waitpid(w->d.pid, &status, 0), w->d.pid);
                w->d.pid = -1;
                cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                          "kill %u: reflayerd ended by itself (status 0x%x) in %s", i, status,
                          op_names[op]);
                pthread_join(th, NULL);
                cr_assert_eq(w->bad_r, 0, "kill %u: before the kill, %s failed: %s", i,
                             op_names[w->bad_op], w->bad_msg);
                by_op[op]++;
                aimed_hit += aim >= 0 && op == aim;

                rlt_daemon_start(&w->d, -1, w->extra);
                check_store(w, i, op_names[op]);
        }
        cr_assert_eq(rlt_daemon_stop(&w->d), 0, "reflayerd did not stop cleanly");
        fprintf(stderr,
                "daemon_crash: %u kills of reflayerd (%u aimed and on target): connect %u, "
                "prepare %u, apply %u, commit %u, remove %u, import %u, between calls %u\n",
                kills, aimed_hit, by_op[D_CONNECT], by_op[D_PREPARE], by_op[D_APPLY],
                by_op[D_COMMIT], by_op[D_REMOVE], by_op[D_IMPORT], by_op[D_IDLE]);
        for (int op = D_PREPARE; op <= D_IMPORT; op++)
                cr_expect_gt(by_op[op], 0, "no kill landed in a %s", op_names[op]);
}

/* A failed assertion leaves the daemon running (and its client thread): end it. */
static void fini(void)
{
        if (current && current->d.pid > 0) {
                kill(current->d.pid, SIGKILL);
                waitpid(current->d.pid, NULL, 0);
                current->d.pid = -1;
        }
        rlt_fini();
}

static const char *const pool_args[] = { "--log-level", "warning", "--pool-after", "1", NULL };

Test(daemon_crash, sigkill_xfs, .init = rlt_init, .fini = fini, .timeout = 600)
{
        static world w = { .d = { .pid = -1 }, .extra = pool_args };
        const char *mnt = rlt_mkfs(RLT_XFS, 0, "xfs");
        snprintf(w.d.root, sizeof(w.d.root), "%s/store", mnt);
        snprintf(w.d.sock, sizeof(w.d.sock), "%s/reflayer.sock", rlt_scratch());
        kill_loop(&w, 200, 0xdead1);
        /* reflayerd mounts nothing of its own here: the store's filesystem alone. */
        cr_assert_eq(mounts_under(mnt), 1, "mounts left under %s", mnt);
}

/* The store on an image the daemon mounts (--image): a killed daemon leaves the mount and its
 * loop device behind (they are not its process's); the next one must use them, not add
 * more, and a clean stop takes both away. */
Test(daemon_crash, sigkill_image, .init = rlt_init, .fini = fini, .timeout = 600)
{
        static char img[PATH_MAX];
        static const char *args[] = { "--log-level", "warning", "--pool-after", "1",
                                      "--image",     img,       "--image-size", "320M",
                                      NULL };
        static world w = { .d = { .pid = -1 }, .extra = args, .image = img };
        const char *mnt = rlt_mkfs(RLT_TMPFS, 1024, "tmpfs");
        snprintf(img, sizeof(img), "%s/store.img", mnt);
        snprintf(w.d.root, sizeof(w.d.root), "%s/store", mnt);
        snprintf(w.d.sock, sizeof(w.d.sock), "%s/reflayer.sock", rlt_scratch());
        kill_loop(&w, 24, 0xdead2);
        cr_assert_eq(mounts_under(w.d.root), 0, "the image is still mounted after a clean stop");
        /* The loop device detaches at its last close, which the kernel may finish a moment
         * after the unmount: wait for it (bounded). */
        for (int i = 0; i < 200 && loops_of(img); i++)
                nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
        cr_assert_eq(loops_of(img), 0, "a loop device is still attached to %s", img);
}
