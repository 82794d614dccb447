/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reflayerd --image: a store on an XFS image file, for hosts that cannot reflink. The store's
 * root lies on the scratch tmpfs (which cannot reflink); the daemon makes the image, mounts
 * it there through a loop device, serves snapshots that share extents, unmounts it when it
 * stops and finds everything again on the next start. Bad sizes and roots it must not mount
 * over are refused with a message. The daemon's log goes to a file, so tests read what it
 * said.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <reflayer/client.h>

#include "rltest-daemon.h"
#include "rltest.h"

static rlt_daemon D = { .pid = -1 };
static char img[PATH_MAX], logpath[PATH_MAX];
static int saved_stderr = -1;

static void setup(void)
{
        rlt_init();
        snprintf(D.root, sizeof(D.root), "%s/store", rlt_scratch());
        snprintf(D.sock, sizeof(D.sock), "%s/reflayer.sock", rlt_scratch());
        snprintf(img, sizeof(img), "%s/store.img", rlt_scratch());
        snprintf(logpath, sizeof(logpath), "%s/reflayerd.log", rlt_scratch());
        /* The daemon inherits fd 2: send it to a file for the whole test (criterion reports
         * through its own pipe, not stderr). */
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        cr_assert(fd >= 0, "create %s: %s", logpath, strerror(errno));
        fflush(stderr);
        saved_stderr = fcntl(2, F_DUPFD_CLOEXEC, 3);
        cr_assert(saved_stderr >= 0 && dup2(fd, 2) == 2, "redirect stderr: %s", strerror(errno));
        close(fd);
}

static void teardown(void)
{
        rlt_daemon_stop(&D);
        umount2(D.root, MNT_DETACH); /* if a failed test left it mounted */
        if (saved_stderr >= 0) {
                dup2(saved_stderr, 2);
                close(saved_stderr);
                saved_stderr = -1;
        }
        rlt_fini();
}

TestSuite(image, .init = setup, .fini = teardown, .timeout = 120);

/* What the daemon logged since the last call (the log is emptied after reading). */
static char *take_log(void)
{
        static char buf[16384];
        int fd = open(logpath, O_RDONLY | O_CLOEXEC);
        cr_assert(fd >= 0, "open %s: %s", logpath, strerror(errno));
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        buf[n > 0 ? n : 0] = '\0';
        cr_assert(truncate(logpath, 0) == 0);
        return buf;
}

static void start(const char *const *extra)
{
        int status = rlt_daemon_try_start(&D, -1, extra);
        /* Not take_log() in the assertion's message: criterion --full-stats formats messages
         * of passing assertions too, and take_log empties the log. */
        if (status != 0x10000)
                cr_assert_fail("reflayerd exited before it was ready (status 0x%x): %s", status,
                               take_log());
}

static void stop(void)
{
        int status = rlt_daemon_stop(&D);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                cr_assert_fail("reflayerd did not exit 0 on SIGTERM (status 0x%x): %s", status,
                               take_log());
}

/* Is the root a mount point (another device than the scratch tmpfs it lies in)? */
static bool root_mounted(void)
{
        struct stat a, b;
        cr_assert(stat(D.root, &a) == 0, "stat %s: %s", D.root, strerror(errno));
        cr_assert(stat(rlt_scratch(), &b) == 0);
        return a.st_dev != b.st_dev;
}

static rl_client *connect_daemon(void)
{
        rl_client *c = NULL;
        rl_error err = {};
        int r = rl_client_connect(D.sock, &c, &err);
        cr_assert_eq(r, 0, "connect %s: %s", D.sock, err.msg);
        return c;
}

/* Status, parsed. */
static json_t *status(rl_client *c)
{
        char *out = NULL;
        rl_error err = {};
        int r = rl_client_call(c, "Status", NULL, &out, &err);
        cr_assert_eq(r, 0, "Status: %s", err.msg);
        json_t *o = json_loads(out, 0, NULL);
        cr_assert(o, "Status is not JSON: %s", out);
        free(out);
        return o;
}

static void write_text(const char *dir, const char *rel, const char *text)
{
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/%s", dir, rel);
        FILE *f = fopen(p, "we");
        cr_assert(f, "create %s: %s", p, strerror(errno));
        fputs(text, f);
        cr_assert(fclose(f) == 0, "write %s: %s", p, strerror(errno));
}

static void read_text(const char *dir, const char *rel, char *buf, size_t size)
{
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/%s", dir, rel);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        cr_assert(fd >= 0, "open %s: %s", p, strerror(errno));
        ssize_t n = read(fd, buf, size - 1);
        close(fd);
        cr_assert(n >= 0, "read %s: %s", p, strerror(errno));
        buf[n] = '\0';
}

/* The tree of snapshot key (Mounts' source). */
static void tree_of(rl_client *c, const char *key, char *ret, size_t size)
{
        rl_mount m = {};
        rl_error err = {};
        int r = rl_client_mounts(c, key, &m, &err);
        cr_assert_eq(r, 0, "Mounts %s: %s", key, err.msg);
        snprintf(ret, size, "%s", m.source);
        rl_mount_clear(&m);
}

Test(image, made_mounted_served_unmounted_and_found_again)
{
        const char *first[] = { "--image", img, "--image-size", "512M", NULL };
        start(first);
        char *log = take_log();
        cr_expect(strstr(log, "mkfs.xfs"), "the log does not say the image was made: %s", log);
        cr_assert(root_mounted(), "%s is not a mount point while reflayerd runs", D.root);

        /* The image is sparse: 512 MiB long, a small part of it allocated. */
        struct stat st;
        cr_assert(stat(img, &st) == 0, "stat %s: %s", img, strerror(errno));
        cr_expect_eq(st.st_size, 512 << 20, "image size %lld", (long long)st.st_size);
        cr_expect_lt((long long)st.st_blocks * 512, 256LL << 20, "image not sparse: %lld bytes",
                     (long long)st.st_blocks * 512);

        rl_client *c = connect_daemon();
        json_t *s = status(c);
        json_t *fs = json_object_get(s, "filesystem");
        cr_expect_str_eq(json_string_value(json_object_get(fs, "type")), "xfs");
        cr_expect_str_eq(json_string_value(json_object_get(fs, "mountpoint")), D.root);
        cr_expect_str_eq(json_string_value(json_object_get(s, "reflink")), "yes");
        cr_expect_str_eq(json_string_value(json_object_get(s, "image")), img);
        json_decref(s);

        /* A small tree in an active snapshot, committed as a layer, a child of it. */
        rl_mount m = {};
        rl_error err = {};
        int r = rl_client_prepare(c, "base", NULL, NULL, 0, NULL, &m, &err);
        cr_assert_eq(r, 0, "Prepare base: %s", err.msg);
        char base[PATH_MAX];
        snprintf(base, sizeof(base), "%s", m.source);
        rl_mount_clear(&m);
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/etc", base);
        cr_assert(mkdir(p, 0755) == 0, "mkdir %s: %s", p, strerror(errno));
        write_text(base, "etc/hostname", "reflayer\n");
        snprintf(p, sizeof(p), "%s/data.bin", base);
        rlt_write_file(p, 1 << 20, 7);
        r = rl_client_commit(c, "layer", "base", NULL, 0, &err);
        cr_assert_eq(r, 0, "Commit layer: %s", err.msg);
        r = rl_client_prepare(c, "child", "layer", NULL, 0, NULL, &m, &err);
        cr_assert_eq(r, 0, "Prepare child: %s", err.msg);
        char child[PATH_MAX];
        snprintf(child, sizeof(child), "%s", m.source);
        rl_mount_clear(&m);
        snprintf(p, sizeof(p), "%s/data.bin", child);
        cr_expect(rlt_extents_shared(p), "%s does not share its extents with the layer", p);
        rl_client_free(c);

        stop();
        log = take_log();
        cr_expect(strstr(log, "unmounted"), "the log does not say it unmounted: %s", log);
        cr_assert(!root_mounted(), "%s is still mounted after a clean stop", D.root);

        /* The same image again, without --image-size: everything is still there. */
        const char *again[] = { "--image", img, NULL };
        start(again);
        cr_assert(root_mounted(), "%s is not mounted on the second start", D.root);
        c = connect_daemon();
        rl_info info = {};
        r = rl_client_stat(c, "layer", &info, &err);
        cr_assert_eq(r, 0, "Stat layer after a restart: %s", err.msg);
        cr_expect_eq(info.kind, RL_KIND_COMMITTED, "layer is no longer committed");
        rl_info_clear(&info);
        r = rl_client_stat(c, "child", &info, &err);
        cr_assert_eq(r, 0, "Stat child after a restart: %s", err.msg);
        cr_expect_str_eq(info.parent, "layer");
        rl_info_clear(&info);

        char layer[PATH_MAX], text[64], why[512];
        tree_of(c, "layer", layer, sizeof(layer));
        tree_of(c, "child", child, sizeof(child));
        /* Compared before anything is read: reading sets atimes, which the comparison sees. */
        cr_expect(rlt_tree_equal(layer, child, NULL, NULL, why, sizeof(why)),
                  "child differs from its layer after a restart: %s", why);
        read_text(layer, "etc/hostname", text, sizeof(text));
        cr_expect_str_eq(text, "reflayer\n", "etc/hostname in the layer");
        snprintf(p, sizeof(p), "%s/data.bin.ref", rlt_scratch());
        rlt_write_file(p, 1 << 20, 7);
        char cmd[3 * PATH_MAX];
        snprintf(cmd, sizeof(cmd), "%s/data.bin", layer);
        char *argv[] = { "cmp", p, cmd, NULL };
        cr_expect_eq(rlt_run(argv, NULL, 0), 0, "%s lost its content across the restart", cmd);
        s = status(c);
        cr_expect_str_eq(json_string_value(json_object_get(s, "image")), img);
        json_decref(s);
        rl_client_free(c);
        stop();
        cr_expect(!root_mounted(), "%s is still mounted after the second stop", D.root);
}

Test(image, busy_mount_is_left_and_used_again)
{
        const char *args[] = { "--image", img, "--image-size", "512M", NULL };
        start(args);
        /* An open directory inside the mount: umount says EBUSY. */
        int fd = open(D.root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(fd >= 0, "open %s: %s", D.root, strerror(errno));
        stop();
        char *log = take_log();
        cr_expect(strstr(log, "still in use"), "no warning about the busy mount: %s", log);
        cr_assert(root_mounted(), "%s was unmounted although busy", D.root);

        const char *again[] = { "--image", img, NULL };
        start(again);
        log = take_log();
        cr_expect(strstr(log, "already mounted"), "the mount left behind was not reused: %s",
                  log);
        close(fd);
        rl_client *c = connect_daemon();
        json_t *s = status(c);
        cr_expect_str_eq(json_string_value(json_object_get(s, "reflink")), "yes");
        json_decref(s);
        rl_client_free(c);
        stop();
        cr_expect(!root_mounted(), "%s is still mounted after a stop with nothing inside",
                  D.root);
}

/* reflayerd refuses to start: exit status not 0, and the log says why. */
static void refused(const char *const *extra, const char *says, const char *what)
{
        int status = rlt_daemon_try_start(&D, -1, extra);
        char *log = take_log();
        cr_assert(status != 0x10000, "reflayerd started with %s", what);
        cr_expect(WIFEXITED(status) && WEXITSTATUS(status) != 0,
                  "reflayerd did not fail with %s (status 0x%x)", what, status);
        cr_expect(strstr(log, says), "with %s the message does not say '%s': %s", what, says,
                  log);
}

Test(image, bad_size_is_refused)
{
        const char *q[] = { "--image", img, "--image-size", "12Q", NULL };
        refused(q, "--image-size '12Q': not a size", "--image-size 12Q");
        const char *tiny[] = { "--image", img, "--image-size", "1M", NULL };
        refused(tiny, "at least 300M", "--image-size 1M");
        const char *none[] = { "--image", img, NULL };
        refused(none, "give --image-size", "a missing image and no --image-size");
        cr_expect(access(img, F_OK) < 0, "%s was made although reflayerd refused", img);
}

Test(image, root_with_data_or_another_mount_is_refused)
{
        char p[PATH_MAX];
        cr_assert(mkdir(D.root, 0755) == 0, "mkdir %s: %s", D.root, strerror(errno));
        write_text(D.root, "precious", "keep me\n");
        const char *args[] = { "--image", img, "--image-size", "512M", NULL };
        refused(args, "non-empty directory", "a --root holding a file");
        cr_expect(!root_mounted(), "the image was mounted over %s", D.root);
        cr_expect(access(img, F_OK) < 0, "%s was made although the root was refused", img);
        read_text(D.root, "precious", p, sizeof(p));
        cr_expect_str_eq(p, "keep me\n");

        snprintf(p, sizeof(p), "%s/precious", D.root);
        cr_assert(unlink(p) == 0);
        cr_assert(mount("other", D.root, "tmpfs", 0, "size=1m") == 0, "mount tmpfs: %s",
                  strerror(errno));
        refused(args, "already a mount point", "a --root that is another mount");
        char *argv[] = { "findmnt", "-n", "-o", "FSTYPE", "-M", D.root, NULL };
        char out[256];
        cr_expect_eq(rlt_run(argv, out, sizeof(out)), 0);
        cr_expect_str_eq(out, "tmpfs\n", "the image was mounted over another mount");
}

/* mkfs.xfs fails (its image lies on a 1 MiB tmpfs: ENOSPC): its own words reach the log,
 * and the half-made image is gone, so the next try starts clean. */
Test(image, failed_mkfs_removes_the_image)
{
        char tiny[PATH_MAX], tiny_img[PATH_MAX];
        snprintf(tiny, sizeof(tiny), "%s/tiny", rlt_scratch());
        snprintf(tiny_img, sizeof(tiny_img), "%s/store.img", tiny);
        cr_assert(mkdir(tiny, 0755) == 0, "mkdir %s: %s", tiny, strerror(errno));
        cr_assert(mount("tiny", tiny, "tmpfs", 0, "size=1m") == 0, "mount tmpfs: %s",
                  strerror(errno));
        const char *args[] = { "--image", tiny_img, "--image-size", "400M", NULL };
        refused(args, "No space left on device", "an image on a full filesystem");
        cr_expect(access(tiny_img, F_OK) < 0 && errno == ENOENT,
                  "the half-made image %s was left behind", tiny_img);
        cr_expect(!root_mounted(), "%s was mounted although mkfs failed", D.root);
}
