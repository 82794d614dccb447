/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The in-process timings of tests/bench/bench.sh: each call is timed around the one request
 * or system call it measures, so that neither side pays for starting a process (about 1 ms
 * for a small C program, as much as the warm-pool Prepare being measured).
 *
 *   prepare-bench prepare SOCKET PARENT KEY... [--ephemeral] [--uid-map SPEC --gid-map SPEC]
 *           Prepare each KEY from PARENT through reflayerd, one after another on one
 *           connection (ephemeral snapshots with --ephemeral); prints "KEY SECONDS SOURCE"
 *           for each.
 *   prepare-bench remove SOCKET KEY...
 *           Remove each KEY; prints "KEY SECONDS" for each (the tree is deleted in the
 *           background: the caller waits for that with `reflayer cleanup`, untimed).
 *   prepare-bench overlay LOWER UPPER WORK TARGET
 *           mount(2) of an overlayfs (lowerdir=LOWER, upperdir=UPPER, workdir=WORK) on
 *           TARGET, as `mount -t overlay` makes it; prints "SECONDS". TARGET stays mounted.
 *   prepare-bench flush FILE
 *           Overwrite the first 4 KiB of FILE in place and fdatasync it: the one flush a
 *           durable warm-pool Prepare cannot do without (its journal entry), alone; prints
 *           "SECONDS". A FILE that is missing or shorter is written and fsynced first,
 *           untimed, so that the timed write overwrites a written block (as a Prepare's
 *           journal entry does).
 *
 * Any failure ends the program with status 1 and the daemon's or the kernel's reason.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/client.h>
#include <reflayer/idmap.h>

#include "bench.h"

static rl_client *connect_or_die(const char *sock)
{
        rl_client *c = NULL;
        rl_error err = {0};
        if (rl_client_connect(sock, &c, &err) < 0)
                die(sock, &err);
        return c;
}

static rl_idmap *idmap_or_die(const char *spec)
{
        rl_idmap *m = NULL;
        rl_error err = {0};
        if (rl_idmap_new(&m, &err) < 0 || rl_idmap_parse(m, spec, &err) < 0)
                die(spec, &err);
        return m;
}

static int cmd_prepare(int argc, char **argv)
{
        rl_prepare_options opts = {0};
        rl_idmap *uid = NULL, *gid = NULL;
        if (argc >= 4 && strcmp(argv[argc - 4], "--uid-map") == 0 &&
            strcmp(argv[argc - 2], "--gid-map") == 0) {
                opts.uid_map = uid = idmap_or_die(argv[argc - 3]);
                opts.gid_map = gid = idmap_or_die(argv[argc - 1]);
                argc -= 4;
        }
        if (argc >= 1 && strcmp(argv[argc - 1], "--ephemeral") == 0) {
                opts.ephemeral = true;
                argc--;
        }
        if (argc < 3) {
                fprintf(stderr, "prepare-bench: prepare SOCKET PARENT KEY... [--ephemeral] "
                                "[--uid-map SPEC --gid-map SPEC]\n");
                return 2;
        }
        rl_client *c = connect_or_die(argv[0]);
        for (int i = 2; i < argc; i++) {
                rl_mount m = {0};
                rl_error err = {0};
                double t0 = now();
                int r = rl_client_prepare(c, argv[i], argv[1], NULL, 0, &opts, &m, &err);
                double t = now() - t0;
                if (r < 0)
                        die("Prepare", &err);
                printf("%s %.9f %s\n", argv[i], t, m.source);
                rl_mount_clear(&m);
        }
        rl_client_free(c);
        rl_idmap_free(uid);
        rl_idmap_free(gid);
        return 0;
}

static int cmd_remove(int argc, char **argv)
{
        if (argc < 2) {
                fprintf(stderr, "prepare-bench: remove SOCKET KEY...\n");
                return 2;
        }
        rl_client *c = connect_or_die(argv[0]);
        for (int i = 1; i < argc; i++) {
                rl_error err = {0};
                double t0 = now();
                int r = rl_client_remove(c, argv[i], &err);
                double t = now() - t0;
                if (r < 0)
                        die("Remove", &err);
                printf("%s %.9f\n", argv[i], t);
        }
        rl_client_free(c);
        return 0;
}

static int cmd_overlay(int argc, char **argv)
{
        if (argc != 4) {
                fprintf(stderr, "prepare-bench: overlay LOWER UPPER WORK TARGET\n");
                return 2;
        }
        char data[3 * 4096 + 64];
        int n = snprintf(data, sizeof data, "lowerdir=%s,upperdir=%s,workdir=%s", argv[0],
                         argv[1], argv[2]);
        if (n < 0 || (size_t)n >= sizeof data) {
                fprintf(stderr, "prepare-bench: overlay: paths too long\n");
                return 2;
        }
        double t0 = now();
        int r = mount("overlay", argv[3], "overlay", 0, data);
        double t = now() - t0;
        if (r < 0) {
                fprintf(stderr, "prepare-bench: mount -t overlay -o %s %s: %s\n", data, argv[3],
                        strerror(errno));
                return 1;
        }
        printf("%.9f\n", t);
        return 0;
}

static int cmd_flush(int argc, char **argv)
{
        if (argc != 1) {
                fprintf(stderr, "prepare-bench: flush FILE\n");
                return 2;
        }
        char block[4096];
        struct stat st;
        memset(block, 'x', sizeof(block));
        int fd = open(argv[0], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0 || fstat(fd, &st) < 0)
                die(argv[0], NULL);
        if (st.st_size < (off_t)sizeof(block) &&
            (pwrite(fd, block, sizeof(block), 0) != (ssize_t)sizeof(block) || fsync(fd) < 0))
                die(argv[0], NULL);
        double t0 = now();
        if (pwrite(fd, block, sizeof(block), 0) != (ssize_t)sizeof(block) || fdatasync(fd) < 0)
                die(argv[0], NULL);
        double t = now() - t0;
        close(fd);
        printf("%.9f\n", t);
        return 0;
}

int main(int argc, char **argv)
{
        if (argc >= 2 && strcmp(argv[1], "prepare") == 0)
                return cmd_prepare(argc - 2, argv + 2);
        if (argc >= 2 && strcmp(argv[1], "remove") == 0)
                return cmd_remove(argc - 2, argv + 2);
        if (argc >= 2 && strcmp(argv[1], "overlay") == 0)
                return cmd_overlay(argc - 2, argv + 2);
        if (argc >= 2 && strcmp(argv[1], "flush") == 0)
                return cmd_flush(argc - 2, argv + 2);
        fprintf(stderr, "Usage: prepare-bench prepare SOCKET PARENT KEY... "
                        "[--uid-map SPEC --gid-map SPEC]\n"
                        "       prepare-bench remove SOCKET KEY...\n"
                        "       prepare-bench overlay LOWER UPPER WORK TARGET\n"
                        "       prepare-bench flush FILE\n");
        return 2;
}
