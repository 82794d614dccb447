/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reflayerd when the store's filesystem fails under it:
 *   - ENOSPC: a 300 MB loop XFS filled by a ballast file to a few hundred KiB free. Prepare,
 *     Apply, Import and Clone that need more each fail with an error that says "No space
 *     left on device", publish nothing (no key, no layer, no destination, tmp/ empty, the
 *     active snapshot's tree as it was), the daemon goes on answering; once the ballast is
 *     gone, the same calls succeed.
 *   - EIO: this VM's kernel has no device-mapper (no dm-error, no dm-flakey: /dev/mapper/
 *     control is missing and modules cannot be loaded), so the fault is made with the loop
 *     device itself: LOOP_SET_STATUS64 shrinks it to 1 MiB under the mounted XFS, and every
 *     I/O past that fails in the block layer ("attempt to access beyond end of device"),
 *     which XFS sees as EIO; setting the size back is the device recovering. XFS shuts down
 *     on the first failed log write, as it must: from then on every call fails with EIO
 *     until the filesystem is mounted again (log recovery). The daemon answers Version and
 *     Stat throughout, stops on SIGTERM, and on the remounted store every invariant holds
 *     and the same calls succeed.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/loop.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <reflayer/client.h>

#include "rltest-daemon.h"
#include "rltest-tar.h"
#include "rltest.h"

static const char *const daemon_args[] = { "--log-level", "warning", NULL };

typedef struct store {
        rlt_daemon d;
        char mnt[PATH_MAX];
        char tar[PATH_MAX];    /* a layer of 8 MiB */
        char layout[PATH_MAX]; /* an image whose first layer holds 8 MiB */
        char base_tree[PATH_MAX];
        uint64_t h_base, h_active;
} store;

static store S = { .d = { .pid = -1 } };

/* A failed assertion leaves the daemon running: end it (SIGKILL: a daemon on a shut-down
 * filesystem need not stop quickly), then the filesystems go. */
static void fini(void)
{
        if (S.d.pid > 0) {
                kill(S.d.pid, SIGKILL);
                waitpid(S.d.pid, NULL, 0);
                S.d.pid = -1;
        }
        rlt_fini();
}

static rl_client *connect_to(const store *s)
{
        rl_client *c = NULL;
        rl_error err = {};
        cr_assert_eq(rl_client_connect(s->d.sock, &c, &err), 0, "%s", err.msg);
        return c;
}

static char *tree_of(rl_client *c, const char *key, char *buf, size_t size)
{
        rl_mount m = {};
        rl_error err = {};
        cr_assert_eq(rl_client_mounts(c, key, &m, &err), 0, "%s", err.msg);
        snprintf(buf, size, "%s", m.source);
        rl_mount_clear(&m);
        return buf;
}

/* A store with "base" (2,000 files: a Prepare needs a few MiB of inodes) and the active "a";
 * the layer tar and the image to apply and import. */
static void setup_store(store *s, uint64_t size_mb)
{
        rl_error err = {};
        rl_mount m = {};
        char p[PATH_MAX];

        snprintf(s->mnt, sizeof(s->mnt), "%s", rlt_mkfs(RLT_XFS, size_mb, "xfs"));
        snprintf(s->d.root, sizeof(s->d.root), "%s/store", s->mnt);
        snprintf(s->d.sock, sizeof(s->d.sock), "%s/reflayer.sock", rlt_scratch());
        rlt_daemon_start(&s->d, -1, daemon_args);
        rl_client *c = connect_to(s);
        cr_assert_eq(rl_client_prepare(c, "b", NULL, NULL, 0, NULL, &m, &err), 0, "%s", err.msg);
        for (int i = 0; i < 2000; i++) {
                snprintf(p, sizeof(p), "%s/d%d", m.source, i % 40);
                mkdir(p, 0755);
                snprintf(p, sizeof(p), "%s/d%d/f%d", m.source, i % 40, i);
                rlt_write_file(p, 200, (unsigned)i);
        }
        s->h_base = rlt_tree_hash(m.source, NULL);
        rl_mount_clear(&m);
        cr_assert_eq(rl_client_commit(c, "base", "b", NULL, 0, &err), 0, "%s", err.msg);
        tree_of(c, "base", s->base_tree, sizeof(s->base_tree));
        cr_assert_eq(rl_client_prepare(c, "a", "base", NULL, 0, NULL, &m, &err), 0, "%s",
                     err.msg);
        rl_mount_clear(&m);
        s->h_active = s->h_base;

        snprintf(s->tar, sizeof(s->tar), "%s/layer.tar", rlt_scratch());
        rlt_tar *t = rlt_tar_open(s->tar, RL_COMPRESSION_NONE);
        static char big[8 << 20];
        for (size_t i = 0; i < sizeof(big); i++)
                big[i] = (char)(i * 131 + i / 777);
        rlt_tar_dir(t, "data", 0755);
        rlt_tar_add(t, &(rlt_tar_entry){ .type = RLT_TAR_REG, .name = "data/big", .data = big,
                                         .size = sizeof(big) });
        rlt_tar_close(t);
        snprintf(s->layout, sizeof(s->layout), "%s/img", rlt_scratch());
        rlt_oci_two_layers(rlt_scratch(), 8192);
        rl_client_free(c);
}

/* The calls that need space (or a working disk), each expected to fail with a message that
 * holds `reason`; nothing of them may be left. Returns how many failed. */
static void calls_fail(store *s, const char *reason, const char *tag)
{
        rl_client *c = connect_to(s);
        rl_error err = {};
        rl_mount m = {};
        char key[64], dst[PATH_MAX];
        rl_info info = {};
        int r;

        snprintf(key, sizeof(key), "p-%s", tag);
        r = rl_client_prepare(c, key, "base", NULL, 0, NULL, &m, &err);
        cr_assert(r < 0, "%s: Prepare succeeded", tag);
        cr_expect(strstr(err.msg, reason) && strstr(err.msg, key),
                  "%s: Prepare's error does not name the key and the reason (%s): %s", tag,
                  reason, err.msg);
        fprintf(stderr, "daemon_faults %s: Prepare: %s\n", tag, err.msg);
        cr_assert_eq(rl_client_stat(c, key, &info, &err), -ENOENT,
                     "%s: the failed Prepare left key %s", tag, key);

        int fd = open(s->tar, O_RDONLY | O_CLOEXEC);
        cr_assert(fd >= 0);
        r = rl_client_apply(c, "a", fd, NULL, NULL, &err);
        close(fd);
        cr_assert(r < 0, "%s: Apply succeeded", tag);
        cr_expect(strstr(err.msg, reason), "%s: Apply's error does not say %s: %s", tag, reason,
                  err.msg);
        fprintf(stderr, "daemon_faults %s: Apply: %s\n", tag, err.msg);

        fd = open(s->layout, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(fd >= 0);
        rl_import_result res = {};
        r = rl_client_import(c, fd, &(rl_import_options){ .ref = "t1" }, &res, &err);
        close(fd);
        cr_assert(r < 0, "%s: Import succeeded", tag);
        cr_expect(strstr(err.msg, reason), "%s: Import's error does not say %s: %s", tag,
                  reason, err.msg);
        fprintf(stderr, "daemon_faults %s: Import: %s\n", tag, err.msg);

        snprintf(dst, sizeof(dst), "%s/clone-%s", s->mnt, tag);
        r = rl_client_clone(c, s->base_tree, dst, NULL, NULL, &err);
        cr_assert(r < 0, "%s: Clone succeeded", tag);
        cr_expect(strstr(err.msg, reason), "%s: Clone's error does not say %s: %s", tag, reason,
                  err.msg);
        fprintf(stderr, "daemon_faults %s: Clone: %s\n", tag, err.msg);
        /* That it left no destination is checked by check_store: a shut-down XFS cannot
         * say now (every lookup is EIO). */

        /* The daemon goes on answering. */
        rl_client_free(c);
        c = connect_to(s);
        char *version = NULL;
        cr_assert_eq(rl_client_call(c, "Version", NULL, &version, &err), 0, "%s: Version: %s",
                     tag, err.msg);
        cr_assert(strstr(version, "\"protocol\""), "%s: Version said %s", tag, version);
        free(version);
        cr_assert_eq(rl_client_stat(c, "base", &info, &err), 0, "%s: Stat: %s", tag, err.msg);
        rl_info_clear(&info);
        rl_client_free(c);
}

/* Whole or absent: every listed key's tree is there, base and "a" as they were, snapshots/
 * holds just the listed ones, no imported layer (each import failed), tmp/ empty, trash/
 * drained, and no Clone destination or temporary beside the store. */
static void check_store(store *s)
{
        rl_client *c = connect_to(s);
        rl_error err = {};
        rl_info *all = NULL;
        size_t n = 0;
        char p[PATH_MAX];

        cr_assert_eq(rl_client_list(c, NULL, 0, &all, &n, &err), 0, "%s", err.msg);
        for (size_t i = 0; i < n; i++) {
                struct stat st;
                snprintf(p, sizeof(p), "%s/snapshots/%lu/fs", s->d.root, (unsigned long)all[i].id);
                cr_assert(stat(p, &st) == 0 && S_ISDIR(st.st_mode), "%s: tree %s missing",
                          all[i].name, p);
                if (!strcmp(all[i].name, "base"))
                        cr_assert_eq(rlt_tree_hash(p, NULL), s->h_base, "base changed");
                else if (!strcmp(all[i].name, "a"))
                        cr_assert_eq(rlt_tree_hash(p, NULL), s->h_active,
                                     "a failed Apply changed the active snapshot");
                else
                        cr_assert_fail("%s: left by a failed call", all[i].name);
        }
        snprintf(p, sizeof(p), "%s/snapshots", s->d.root);
        cr_assert_eq(rlt_dir_count(p), n, "snapshots/ holds %u entries, the index %zu",
                     rlt_dir_count(p), n);
        rl_info_array_free(all, n);
        cr_assert(!rlt_dir_has_prefix(s->mnt, "clone-"), "a failed Clone left its destination");
        cr_assert(!rlt_dir_has_prefix(s->mnt, ".rl-clone-"),
                  "a failed Clone left its temporary tree");
        snprintf(p, sizeof(p), "%s/tmp", s->d.root);
        cr_assert_eq(rlt_dir_count(p), 0, "tmp/ holds what failed calls left");
        cr_assert_eq(rl_client_cleanup(c, &err), 0, "%s", err.msg);
        snprintf(p, sizeof(p), "%s/trash", s->d.root);
        cr_assert_eq(rlt_dir_count(p), 0, "trash/ not drained");
        rl_client_free(c);
}

/* The same calls, on a store that works again: each succeeds. */
static void calls_work(store *s, const char *tag)
{
        rl_client *c = connect_to(s);
        rl_error err = {};
        rl_mount m = {};
        char key[64], dst[PATH_MAX];

        snprintf(key, sizeof(key), "p-%s", tag);
        cr_assert_eq(rl_client_prepare(c, key, "base", NULL, 0, NULL, &m, &err), 0,
                     "%s: Prepare: %s", tag, err.msg);
        cr_assert_eq(rlt_tree_hash(m.source, NULL), s->h_base, "%s: the prepared tree", tag);
        rl_mount_clear(&m);
        int fd = open(s->tar, O_RDONLY | O_CLOEXEC);
        cr_assert_eq(rl_client_apply(c, key, fd, NULL, NULL, &err), 0, "%s: Apply: %s", tag,
                     err.msg);
        close(fd);
        fd = open(s->layout, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        rl_import_result res = {};
        cr_assert_eq(rl_client_import(c, fd, &(rl_import_options){ .ref = "t1" }, &res, &err), 0,
                     "%s: Import: %s", tag, err.msg);
        close(fd);
        cr_assert_eq(res.layers_new, 2, "%s: Import applied %u layers", tag, res.layers_new);
        snprintf(dst, sizeof(dst), "%s/clone-%s", s->mnt, tag);
        cr_assert_eq(rl_client_clone(c, s->base_tree, dst, NULL, NULL, &err), 0,
                     "%s: Clone: %s", tag, err.msg);
        cr_assert_eq(rlt_tree_hash(dst, NULL), s->h_base, "%s: the cloned tree", tag);
        rl_client_free(c);
}

/* Fill the filesystem at mnt to leave about `leave` bytes for others. */
static void fill(const char *mnt, uint64_t leave)
{
        char p[PATH_MAX];
        struct statvfs v;
        snprintf(p, sizeof(p), "%s/ballast", mnt);
        int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        cr_assert(fd >= 0, "%s: %s", p, strerror(errno));
        cr_assert(fstatvfs(fd, &v) == 0);
        uint64_t avail = (uint64_t)v.f_bavail * v.f_frsize;
        cr_assert_gt(avail, leave + (16 << 20), "only %lu bytes free before the ballast",
                     (unsigned long)avail);
        /* XFS counts a little for the file's own extent tree: shrink by 64 KiB until it
         * fits. */
        uint64_t want = avail - leave;
        while (fallocate(fd, 0, 0, (off_t)want) < 0) {
                cr_assert(errno == ENOSPC && want > (64 << 10), "fallocate %s: %s", p,
                          strerror(errno));
                want -= 64 << 10;
        }
        cr_assert(fsync(fd) == 0 && fstatvfs(fd, &v) == 0);
        close(fd);
        fprintf(stderr, "daemon_faults: %s filled, %lu KiB left\n", mnt,
                (unsigned long)((uint64_t)v.f_bavail * v.f_frsize >> 10));
}

Test(daemon_faults, enospc, .init = rlt_init, .fini = fini, .timeout = 300)
{
        store *s = &S;
        char p[PATH_MAX];
        setup_store(s, 300);
        fill(s->mnt, 256 << 10);
        calls_fail(s, "No space left on device", "full");
        check_store(s);
        snprintf(p, sizeof(p), "%s/ballast", s->mnt);
        cr_assert(unlink(p) == 0, "%s: %s", p, strerror(errno));
        calls_work(s, "full");
        cr_assert_eq(rlt_daemon_stop(&s->d), 0, "reflayerd did not stop cleanly");
}

/* The loop device under mnt, from /proc/self/mountinfo ("... - xfs /dev/loopN rw,..."). */
static void device_of(const char *mnt, char *ret, size_t size)
{
        FILE *f = fopen("/proc/self/mountinfo", "re");
        char line[4096], mp[PATH_MAX], src[PATH_MAX];
        bool found = false;
        cr_assert(f);
        while (fgets(line, sizeof(line), f)) {
                const char *dash = strstr(line, " - ");
                if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && !strcmp(mp, mnt) && dash &&
                    sscanf(dash, " - %*s %4095s", src) == 1) {
                        snprintf(ret, size, "%s", src);
                        found = true;
                }
        }
        fclose(f);
        cr_assert(found && !strncmp(ret, "/dev/loop", 9), "%s is not on a loop device", mnt);
}

static void set_size_limit(int loop_fd, uint64_t bytes)
{
        struct loop_info64 info;
        cr_assert(ioctl(loop_fd, LOOP_GET_STATUS64, &info) == 0, "LOOP_GET_STATUS64: %s",
                  strerror(errno));
        info.lo_sizelimit = bytes;
        cr_assert(ioctl(loop_fd, LOOP_SET_STATUS64, &info) == 0, "LOOP_SET_STATUS64: %s",
                  strerror(errno));
}

Test(daemon_faults, eio, .init = rlt_init, .fini = fini, .timeout = 300)
{
        store *s = &S;
        char dev[PATH_MAX];
        setup_store(s, 0);
        device_of(s->mnt, dev, sizeof(dev));
        /* Held open, the loop device outlives the unmount below (it detaches at its last
         * close), so that the same filesystem can be mounted again. */
        int loop_fd = open(dev, O_RDWR | O_CLOEXEC);
        cr_assert(loop_fd >= 0, "%s: %s", dev, strerror(errno));
        sync();

        set_size_limit(loop_fd, 1 << 20);
        calls_fail(s, "Input/output error", "eio");
        set_size_limit(loop_fd, 0);

        /* The device is back, the filesystem is shut down: still EIO, still answering. */
        rl_client *c = connect_to(s);
        rl_error err = {};
        rl_mount m = {};
        cr_assert(rl_client_prepare(c, "p-after", "base", NULL, 0, NULL, &m, &err) < 0,
                  "a Prepare worked on a shut-down XFS");
        fprintf(stderr, "daemon_faults eio: Prepare once the device is back: %s\n", err.msg);
        char *version = NULL;
        cr_assert_eq(rl_client_call(c, "Version", NULL, &version, &err), 0, "%s", err.msg);
        free(version);
        rl_client_free(c);

        /* Mount it again (XFS replays its log), restart: whole or absent, and working. */
        int status = rlt_daemon_stop(&s->d);
        cr_assert(WIFEXITED(status), "reflayerd did not stop on SIGTERM (status 0x%x)", status);
        cr_assert(umount(s->mnt) == 0, "umount %s: %s", s->mnt, strerror(errno));
        cr_assert(mount(dev, s->mnt, "xfs", 0, NULL) == 0, "mount %s: %s", dev, strerror(errno));
        close(loop_fd);
        rlt_daemon_start(&s->d, -1, daemon_args);
        check_store(s);
        calls_work(s, "eio");
        cr_assert_eq(rlt_daemon_stop(&s->d), 0, "reflayerd did not stop cleanly");
}
