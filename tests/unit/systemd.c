/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * systemd/: the units make install writes pass systemd-analyze verify, and say what the
 * daemon needs (Type=notify, the socket, its group and directories).
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rltest.h"

TestSuite(systemd, .init = rlt_init, .fini = rlt_fini, .timeout = 60);

static char out[65536];

Test(systemd, units_verify)
{
        const char *daemon = getenv("RL_DAEMON");
        cr_assert(daemon, "RL_DAEMON must name the built reflayerd (tests/run-unit sets it)");
        char dest[PATH_MAX], cmd[PATH_MAX * 3];
        snprintf(dest, sizeof(dest), "%s/root", rlt_scratch());
        /* make install (from the repository, where the tests run) into a scratch DESTDIR,
         * with the unit naming the daemon's real place */
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", daemon);
        *strrchr(dir, '/') = '\0';
        cr_assert(access("Makefile", F_OK) == 0, "run the tests from the repository");
        snprintf(cmd, sizeof(cmd), "make -s install DESTDIR=%s PREFIX=/usr SBINDIR=%s 2>&1", dest,
                 dir);
        char *sh[] = { "sh", "-c", cmd, NULL };
        cr_assert_eq(rlt_run(sh, out, sizeof(out)), 0, "make install: %s", out);

        char unit[PATH_MAX], sock[PATH_MAX], csock[PATH_MAX];
        snprintf(unit, sizeof(unit), "%s/usr/lib/systemd/system/reflayerd.service", dest);
        snprintf(sock, sizeof(sock), "%s/usr/lib/systemd/system/reflayerd.socket", dest);
        snprintf(csock, sizeof(csock), "%s/usr/lib/systemd/system/reflayerd-containerd.socket",
                 dest);
        char *which[] = { "sh", "-c", "command -v systemd-analyze", NULL };
        cr_assert_eq(rlt_run(which, out, sizeof(out)), 0,
                     "systemd-analyze not found: apt-get install systemd (make deps does it)");
        char *verify[] = { "systemd-analyze", "verify", "--man=no", unit, sock, csock, NULL };
        int r = rlt_run(verify, out, sizeof(out));
        cr_expect_eq(r, 0, "systemd-analyze verify: %s", out);
        cr_expect(!strstr(out, "reflayerd"), "systemd-analyze complained: %s", out);

        FILE *f = fopen(unit, "r");
        cr_assert(f);
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        fclose(f);
        cr_expect(strstr(out, "Type=notify"), "%s", out);
        cr_expect(strstr(out, "Wants=reflayerd-containerd.socket"), "%s", out);
        cr_expect(strstr(out, "ExecStart=/") && !strstr(out, "@SBINDIR@"), "%s", out);
        char p[PATH_MAX];
        /* reflayerd tells the containerd socket by its name. */
        f = fopen(csock, "r");
        cr_assert(f, "reflayerd-containerd.socket is not installed");
        n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        fclose(f);
        cr_expect(strstr(out, "FileDescriptorName=containerd"), "%s", out);
        cr_expect(strstr(out, "Service=reflayerd.service"), "%s", out);
        snprintf(p, sizeof(p), "%s/usr/lib/sysusers.d/reflayer.conf", dest);
        cr_expect(access(p, F_OK) == 0, "the group's sysusers.d entry is not installed");
        snprintf(p, sizeof(p), "%s/usr/lib/tmpfiles.d/reflayer.conf", dest);
        cr_expect(access(p, F_OK) == 0, "the tmpfiles.d entry is not installed");
        snprintf(p, sizeof(p), "%s/usr/lib/pkgconfig/reflayer-client.pc", dest);
        cr_expect(access(p, F_OK) == 0, "reflayer-client.pc is not installed");
}
