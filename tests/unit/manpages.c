/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The man pages reflayer(1) and reflayerd(8) stay true: they render without a warning, they
 * document every command `reflayer help` lists and every option `reflayerd --help` lists
 * (with its default), the exit statuses the CLI states, and make install-man installs them.
 * The pages are read from the source tree: tests run from the repository (tests/run-unit).
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rltest.h"
#include "util.h"

#define CLI_PAGE "api/reflayer.1"
#define DAEMON_PAGE "daemon/reflayerd.8"
#define MAX_NAMES 128

TestSuite(manpages, .init = rlt_init, .fini = rlt_fini, .timeout = 60);

typedef struct names {
        char *v[MAX_NAMES];
        size_t n;
} names;

static void names_add(names *s, const char *p, size_t len)
{
        for (size_t i = 0; i < s->n; i++)
                if (strlen(s->v[i]) == len && !strncmp(s->v[i], p, len))
                        return;
        cr_assert_lt(s->n, MAX_NAMES, "more than %d names", MAX_NAMES);
        s->v[s->n] = strndup(p, len);
        cr_assert(s->v[s->n]);
        s->n++;
}

static bool names_has(const names *s, const char *name)
{
        for (size_t i = 0; i < s->n; i++)
                if (!strcmp(s->v[i], name))
                        return true;
        return false;
}

static void names_clear(names *s)
{
        for (size_t i = 0; i < s->n; i++)
                free(s->v[i]);
        s->n = 0;
}

static char *read_page(const char *path)
{
        cr_assert(access("Makefile", F_OK) == 0, "run the tests from the repository");
        FILE *f = fopen(path, "r");
        cr_assert(f, "open %s: %s", path, strerror(errno));
        static char buf[256 * 1024];
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        cr_assert(feof(f), "%s: larger than %zu bytes", path, sizeof(buf) - 1);
        fclose(f);
        buf[n] = '\0';
        char *s = strdup(buf);
        cr_assert(s);
        return s;
}

/* The text of section `.SH name` (up to the next .SH), in a new string. */
static char *section(const char *page, const char *name)
{
        char head[64];
        snprintf(head, sizeof(head), "\n.SH %s\n", name);
        const char *p = strstr(page, head);
        cr_assert(p, "the page has no section '.SH %s'", name);
        p += strlen(head);
        const char *end = strstr(p, "\n.SH ");
        char *s = strndup(p, end ? (size_t)(end - p) : strlen(p));
        cr_assert(s);
        return s;
}

/* Run a binary named by an environment variable (tests/run-unit sets them), with one
 * argument; its output in out. */
static void run_built(const char *env, const char *arg, char *out, size_t size)
{
        const char *bin = getenv(env);
        cr_assert(bin && access(bin, X_OK) == 0,
                  "%s must name the built binary (tests/run-unit sets it)", env);
        char *argv[] = { (char *)bin, (char *)arg, NULL };
        int r = rlt_run(argv, out, size);
        cr_assert_eq(r, 0, "%s %s: exit %d: %s", bin, arg, r, out);
}

/* Every "--name" in text, into s (the escaped roff form "\-\-na\-me" when roff is set). */
static void long_options(const char *text, bool roff, names *s)
{
        const char *dash = roff ? "\\-\\-" : "--";
        for (const char *p = strstr(text, dash); p; p = strstr(p, dash)) {
                p += strlen(dash);
                char name[64];
                size_t len = 0;
                while (len + 1 < sizeof(name)) {
                        if (islower((unsigned char)*p) || isdigit((unsigned char)*p)) {
                                name[len++] = *p++;
                        } else if (len && roff && !strncmp(p, "\\-", 2) &&
                                   islower((unsigned char)p[2])) {
                                name[len++] = '-';
                                p += 2;
                        } else if (len && !roff && *p == '-' && islower((unsigned char)p[1])) {
                                name[len++] = *p++;
                        } else {
                                break;
                        }
                }
                if (len)
                        names_add(s, name, len);
        }
}

/* The page renders through groff's man macros without a single warning, on a UTF-8
 * terminal and on an ASCII one (what man(1) picks in the C locale). */
static void renders_clean(const char *page)
{
        static const char *devices[] = { "-Tutf8", "-Tascii" };
        char out[16384];
        for (size_t i = 0; i < sizeof(devices) / sizeof(devices[0]); i++) {
                char *argv[] = { "groff", "-man", "-ww", "-z", (char *)devices[i], (char *)page,
                                 NULL };
                int r = rlt_run(argv, out, sizeof(out));
                cr_assert_neq(r, -ENOENT, "groff not found: apt-get install groff-base "
                                          "(make deps does it)");
                cr_expect_eq(r, 0, "groff %s %s: exit %d: %s", devices[i], page, r, out);
                cr_expect_eq(out[0], '\0', "groff %s %s warns:\n%s", devices[i], page, out);
        }
}

Test(manpages, render_without_warnings)
{
        cr_assert(access("Makefile", F_OK) == 0, "run the tests from the repository");
        renders_clean(CLI_PAGE);
        renders_clean(DAEMON_PAGE);
}

/* Every command `reflayer help` lists has its own .SS under COMMANDS, and every .SS there is
 * a command the CLI has; every long option the help names appears in the page. */
Test(manpages, cli_commands_documented)
{
        static char help[65536];
        run_built("RL_CLI", "help", help, sizeof(help));
        _cleanup_free_ char *page = read_page(CLI_PAGE);
        _cleanup_free_ char *cmds = section(page, "COMMANDS");
        names listed = {}, documented = {}, opts = {}, page_opts = {};

        /* A command line of the help: two spaces, then the command's name. */
        for (const char *l = help; l; l = strchr(l, '\n')) {
                l += *l == '\n';
                if (l[0] == ' ' && l[1] == ' ' && islower((unsigned char)l[2])) {
                        size_t len = strspn(l + 2, "abcdefghijklmnopqrstuvwxyz-");
                        names_add(&listed, l + 2, len);
                }
        }
        cr_assert_geq(listed.n, 15, "found only %zu commands in `reflayer help`:\n%s", listed.n,
                      help);

        for (const char *l = cmds; l; l = strchr(l, '\n')) {
                l += *l == '\n';
                if (strncmp(l, ".SS ", 4))
                        continue;
                const char *p = l + 4 + (l[4] == '"');
                names_add(&documented, p, strspn(p, "abcdefghijklmnopqrstuvwxyz-"));
        }
        for (size_t i = 0; i < listed.n; i++)
                cr_expect(names_has(&documented, listed.v[i]),
                          "`reflayer help` lists '%s', but " CLI_PAGE
                          " has no '.SS %s' under COMMANDS",
                          listed.v[i], listed.v[i]);
        for (size_t i = 0; i < documented.n; i++)
                cr_expect(names_has(&listed, documented.v[i]),
                          CLI_PAGE " documents the command '%s', which `reflayer help` does "
                                   "not list",
                          documented.v[i]);

        long_options(help, false, &opts);
        long_options(page, true, &page_opts);
        cr_assert_geq(opts.n, 10, "found only %zu options in `reflayer help`", opts.n);
        for (size_t i = 0; i < opts.n; i++)
                cr_expect(names_has(&page_opts, opts.v[i]),
                          "`reflayer help` names --%s, but " CLI_PAGE " never mentions it",
                          opts.v[i]);
        names_clear(&listed);
        names_clear(&documented);
        names_clear(&opts);
        names_clear(&page_opts);
}

/* The exit statuses the help states are the ones EXIT STATUS lists, no more, no fewer. */
Test(manpages, cli_exit_statuses_documented)
{
        static char help[65536];
        run_built("RL_CLI", "help", help, sizeof(help));
        _cleanup_free_ char *page = read_page(CLI_PAGE);
        _cleanup_free_ char *exits = section(page, "EXIT STATUS");
        bool stated[10] = {}, listed[10] = {};
        int n = 0;

        const char *p = strstr(help, "Exit status:");
        cr_assert(p, "`reflayer help` no longer states the exit statuses:\n%s", help);
        /* "0 done; 1 failed (...); 2 bad usage; ...": a lone digit is a status. */
        for (p += strlen("Exit status:"); *p; p++)
                if (isdigit((unsigned char)*p) && !isalnum((unsigned char)p[-1]) &&
                    !isalnum((unsigned char)p[1])) {
                        stated[*p - '0'] = true;
                        n++;
                }
        cr_assert_geq(n, 7, "found only %d exit statuses in `reflayer help`", n);
        for (const char *l = strstr(exits, ".TP\n.B "); l; l = strstr(l + 1, ".TP\n.B ")) {
                const char *d = l + strlen(".TP\n.B ");
                if (isdigit((unsigned char)d[0]) && d[1] == '\n')
                        listed[d[0] - '0'] = true;
        }
        for (int i = 0; i < 10; i++)
                cr_expect_eq(stated[i], listed[i],
                             "exit status %d: `reflayer help` %s it, " CLI_PAGE
                             " EXIT STATUS %s it",
                             i, stated[i] ? "states" : "does not state",
                             listed[i] ? "lists" : "does not list");
}

/* Every option `reflayerd --help` names is a .TP entry under OPTIONS and the other way
 * round, and every default the help gives appears there. */
Test(manpages, daemon_options_documented)
{
        static char help[65536];
        run_built("RL_DAEMON", "--help", help, sizeof(help));
        _cleanup_free_ char *page = read_page(DAEMON_PAGE);
        _cleanup_free_ char *opts = section(page, "OPTIONS");
        names listed = {}, documented = {};

        long_options(help, false, &listed);
        cr_assert_geq(listed.n, 7, "found only %zu options in `reflayerd --help`:\n%s",
                      listed.n, help);
        /* The tag of a .TP is the line after it. */
        for (const char *l = strstr(opts, ".TP\n"); l; l = strstr(l + 1, ".TP\n")) {
                const char *tag = l + 4, *eol = strchrnul(tag, '\n');
                _cleanup_free_ char *t = strndup(tag, (size_t)(eol - tag));
                cr_assert(t);
                long_options(t, true, &documented);
        }
        for (size_t i = 0; i < listed.n; i++)
                cr_expect(names_has(&documented, listed.v[i]),
                          "`reflayerd --help` names --%s, but " DAEMON_PAGE
                          " has no .TP for it under OPTIONS",
                          listed.v[i]);
        for (size_t i = 0; i < documented.n; i++)
                /* --help is the one option the help text does not list itself. */
                cr_expect(!strcmp(documented.v[i], "help") || names_has(&listed, documented.v[i]),
                          DAEMON_PAGE " documents --%s, which `reflayerd --help` does not name",
                          documented.v[i]);

        /* "(default X": X, with roff's escapes taken out of the page, is in OPTIONS. */
        _cleanup_free_ char *plain = malloc(strlen(opts) + 1);
        cr_assert(plain);
        size_t k = 0;
        for (const char *p = opts; *p;) {
                if (!strncmp(p, "\\-", 2)) {
                        plain[k++] = '-';
                        p += 2;
                } else if (!strncmp(p, "\\%", 2) || !strncmp(p, "\\&", 2)) {
                        p += 2;
                } else {
                        plain[k++] = *p++;
                }
        }
        plain[k] = '\0';
        int n_defaults = 0;
        for (const char *p = strstr(help, "(default"); p; p = strstr(p + 1, "(default")) {
                p += strlen("(default");
                p += strspn(p, ": ");
                size_t len = strcspn(p, " ,;)\n");
                _cleanup_free_ char *value = strndup(p, len);
                cr_assert(value);
                cr_expect(strstr(plain, value), "`reflayerd --help` gives the default '%s', "
                                                "but " DAEMON_PAGE " OPTIONS does not",
                          value);
                n_defaults++;
        }
        cr_expect_geq(n_defaults, 6, "found only %d defaults in `reflayerd --help`", n_defaults);
        names_clear(&listed);
        names_clear(&documented);
}

/* make install-man (which make install runs) puts both pages where man(1) finds them. */
Test(manpages, installed)
{
        cr_assert(access("Makefile", F_OK) == 0, "run the tests from the repository");
        char cmd[PATH_MAX * 2], out[16384], path[PATH_MAX];
        snprintf(cmd, sizeof(cmd), "make -s install-man DESTDIR=%s/root PREFIX=/usr 2>&1",
                 rlt_scratch());
        char *sh[] = { "sh", "-c", cmd, NULL };
        cr_assert_eq(rlt_run(sh, out, sizeof(out)), 0, "make install-man: %s", out);

        static const char *pages[][2] = { { CLI_PAGE, "man1/reflayer.1" },
                                          { DAEMON_PAGE, "man8/reflayerd.8" } };
        for (size_t i = 0; i < 2; i++) {
                snprintf(path, sizeof(path), "%s/root/usr/share/man/%s", rlt_scratch(),
                         pages[i][1]);
                _cleanup_free_ char *src = read_page(pages[i][0]);
                _cleanup_free_ char *dst = read_page(path);
                cr_expect_str_eq(dst, src, "%s is not %s", path, pages[i][0]);
        }
}
