/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * containerd's own snapshotter test suite (containerd 1.6 snapshots/testsuite) against
 * reflayerd's containerd gRPC door. The suite is Go: tests/containerd/suite_test.go, compiled
 * by the Makefile into a test binary ($RL_CTR_SUITE, set by tests/run-unit). Each of its 21
 * cases starts its own reflayerd (with the sandbox) under a directory from os.MkdirTemp, so
 * TMPDIR is a loop XFS with reflink here, and reaches it through containerd's proxy
 * snapshotter, as containerd does a proxy plugin. The cases mount what Mounts returns, which
 * needs root: -test.root.
 *
 * `native` runs the same harness against containerd's native snapshotter served over gRPC in
 * the Go process: it must give the same verdict, so a failure of `reflayer` is reflayerd's.
 * Both must pass every case but Rename, which the suite itself skips on every snapshotter.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rltest.h"

extern char **environ;

/* The suite's cases in 1.6.20 (snapshots/testsuite/testsuite.go, SnapshotterSuite). */
static const char *const cases[] = {
        "Basic",
        "StatActive",
        "StatComitted",
        "TransitivityTest",
        "PreareViewFailingtest",
        "Update",
        "Remove",
        "Walk",
        "LayerFileupdate",
        "RemoveDirectoryInLowerLayer",
        "Chown",
        "DirectoryPermissionOnCommit",
        "RemoveIntermediateSnapshot",
        "DeletedFilesInChildSnapshot",
        "MoveFileFromLowerLayer",
        "Rename",
        "ViewReadonly",
        "StatInWalk",
        "CloseTwice",
        "RootPermission",
        "128LayersMount",
};
#define N_CASES (sizeof(cases) / sizeof(cases[0]))
/* The one case skipped by the suite itself ("rename test still fails on some kernels with
 * overlay", issues.go): whatever the snapshotter, it never runs. */
static const char skipped_case[] = "Rename";

typedef enum verdict { V_NONE, V_PASS, V_FAIL, V_SKIP } verdict;
static const char *const verdict_name[] = { "no result", "PASS", "FAIL", "SKIP" };

static char tmpdir[PATH_MAX];
static char log_path[PATH_MAX];

static void setup(void)
{
        rlt_init();
        /* 21 stores, two at a time (-test.parallel 2), none larger than a few MiB. */
        snprintf(tmpdir, sizeof(tmpdir), "%s/tmp", rlt_mkfs(RLT_XFS, 1024, "xfs"));
        cr_assert(mkdir(tmpdir, 01777) == 0, "mkdir %s: %s", tmpdir, strerror(errno));
        snprintf(log_path, sizeof(log_path), "%s/suite.log", rlt_scratch());
}

static void teardown(void)
{
        rlt_fini();
}

/* The 128-layer case alone takes seconds; the Go binary's own timeout comes first. */
TestSuite(containerd_suite, .init = setup, .fini = teardown, .timeout = 900);

/* The file's contents, NUL-terminated (malloc'd). */
static char *read_all(const char *path)
{
        FILE *f = fopen(path, "re");
        cr_assert(f, "open %s: %s", path, strerror(errno));
        size_t size = 0, cap = 1 << 16;
        char *buf = malloc(cap);
        cr_assert(buf);
        size_t n;
        while ((n = fread(buf + size, 1, cap - size - 1, f)) > 0) {
                size += n;
                if (cap - size < 4096) {
                        cap *= 2;
                        buf = realloc(buf, cap);
                        cr_assert(buf);
                }
        }
        buf[size] = '\0';
        fclose(f);
        return buf;
}

/* Run the Go test function `test` (TestReflayer, TestNative) with TMPDIR on the XFS, its
 * output to log_path; its exit status (128+signal when killed). */
static int run_suite(const char *test)
{
        const char *bin = getenv("RL_CTR_SUITE");
        if (!bin || !*bin)
                cr_assert_fail("RL_CTR_SUITE must name the containerd suite binary built from "
                               "tests/containerd (tests/run-unit sets it; make tests builds it)");
        if (access(bin, X_OK) != 0)
                cr_assert_fail("the containerd suite binary %s: %s (make tests builds it; it "
                               "needs golang-go and golang-github-containerd-containerd-dev, "
                               "which make deps installs)",
                               bin, strerror(errno));

        char run[64], env_tmp[PATH_MAX + 8];
        snprintf(run, sizeof(run), "^%s$", test);
        snprintf(env_tmp, sizeof(env_tmp), "TMPDIR=%s", tmpdir);
        char *argv[] = { (char *)bin, "-test.v", "-test.root", "-test.run", run,
                         "-test.parallel", "2", "-test.timeout", "10m", NULL };

        /* The environment (RL_DAEMON for TestReflayer among it), TMPDIR replaced. */
        size_t n_env = 0;
        while (environ[n_env])
                n_env++;
        char **envp = calloc(n_env + 2, sizeof(*envp));
        cr_assert(envp);
        size_t e = 0;
        for (size_t i = 0; i < n_env; i++)
                if (strncmp(environ[i], "TMPDIR=", 7) != 0)
                        envp[e++] = environ[i];
        envp[e++] = env_tmp;
        envp[e] = NULL;

        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 1, log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        pid_t pid;
        int r = posix_spawn(&pid, bin, &fa, NULL, argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        free(envp);
        cr_assert_eq(r, 0, "spawn %s: %s", bin, strerror(r));
        int status;
        cr_assert_eq(waitpid(pid, &status, 0), pid, "waitpid: %s", strerror(errno));
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The index in cases[] of "TEST/CASE" at s (ended by a space or the line's end); -1 when s
 * names no case of test, -2 when it names one not in cases[]. */
static int case_at(const char *s, const char *test)
{
        size_t tl = strlen(test);
        if (strncmp(s, test, tl) != 0 || s[tl] != '/')
                return -1;
        s += tl + 1;
        size_t len = strcspn(s, " \n");
        for (size_t i = 0; i < N_CASES; i++)
                if (strlen(cases[i]) == len && strncmp(s, cases[i], len) == 0)
                        return (int)i;
        return -2;
}

/* Go's -test.v lines: "=== RUN   T/C", "=== PAUSE T/C", "=== CONT  T/C" say whose output the
 * following lines are; "--- PASS: T/C (0.01s)" (indented for subtests) gives a verdict. */
static const char *header_name(const char *line)
{
        static const char *const heads[] = { "=== RUN   ", "=== PAUSE ", "=== CONT  ",
                                             "=== NAME  " };
        for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++)
                if (strncmp(line, heads[i], strlen(heads[i])) == 0)
                        return line + strlen(heads[i]);
        return NULL;
}

static verdict verdict_line(const char *line, const char **ret_name)
{
        static const char *const words[] = { [V_PASS] = "--- PASS: ", [V_FAIL] = "--- FAIL: ",
                                             [V_SKIP] = "--- SKIP: " };
        line += strspn(line, " ");
        for (int v = V_PASS; v <= V_SKIP; v++)
                if (strncmp(line, words[v], strlen(words[v])) == 0) {
                        *ret_name = line + strlen(words[v]);
                        return (verdict)v;
                }
        return V_NONE;
}

/* Append at most max_lines of case c's output (the lines after a header naming it, and its
 * verdict line) to the growing string *out. */
static void case_output(const char *log, const char *test, int c, unsigned max_lines, char **out,
                        size_t *len)
{
        int current = -1;
        unsigned n = 0;
        for (const char *line = log; *line && n < max_lines;) {
                const char *end = strchrnul(line, '\n');
                const char *name = header_name(line);
                const char *vname;
                bool show;
                if (name) {
                        current = case_at(name, test);
                        show = false;
                } else if (verdict_line(line, &vname) != V_NONE) {
                        show = case_at(vname, test) == c;
                } else {
                        show = current == c;
                }
                if (show) {
                        size_t l = (size_t)(end - line) + 1;
                        *out = realloc(*out, *len + l + 1);
                        cr_assert(*out);
                        memcpy(*out + *len, line, l);
                        *len += l;
                        (*out)[*len - 1] = '\n';
                        (*out)[*len] = '\0';
                        n++;
                }
                line = *end ? end + 1 : end;
        }
}

/*
 * Run test and assert the suite's verdicts: every case but Rename PASSes, Rename is SKIPped,
 * nothing FAILs, the binary exits 0. Otherwise each case that did not pass is named with its
 * output (the first lines in the assertion, all of it on stderr).
 */
static void assert_suite(const char *test)
{
        int status = run_suite(test);
        char *log = read_all(log_path);

        verdict got[N_CASES] = {};
        char unknown[1024] = "";
        for (const char *line = log; *line;) {
                const char *end = strchrnul(line, '\n');
                const char *name;
                verdict v = verdict_line(line, &name);
                if (v != V_NONE) {
                        int c = case_at(name, test);
                        if (c >= 0)
                                got[c] = v;
                        else if (c == -2)
                                snprintf(unknown + strlen(unknown),
                                         sizeof(unknown) - strlen(unknown), " %.*s",
                                         (int)strcspn(name, " \n"), name);
                }
                line = *end ? end + 1 : end;
        }

        unsigned n_pass = 0, n_bad = 0, n_none = 0;
        char *detail = NULL, *summary = NULL;
        size_t detail_len = 0, summary_len = 0;
        for (size_t i = 0; i < N_CASES; i++) {
                verdict want = strcmp(cases[i], skipped_case) == 0 ? V_SKIP : V_PASS;
                if (got[i] == V_PASS)
                        n_pass++;
                if (got[i] == want)
                        continue;
                n_bad++;
                n_none += got[i] == V_NONE;
                char head[256];
                int hl = snprintf(head, sizeof(head), "\n== %s/%s: %s, expected %s\n", test,
                                  cases[i], verdict_name[got[i]], verdict_name[want]);
                summary = realloc(summary, summary_len + (size_t)hl + 1);
                detail = realloc(detail, detail_len + (size_t)hl + 1);
                cr_assert(summary && detail);
                memcpy(summary + summary_len, head, (size_t)hl + 1);
                memcpy(detail + detail_len, head, (size_t)hl + 1);
                summary_len += (size_t)hl;
                detail_len += (size_t)hl;
                /* The failing assertion comes first; what follows is mostly the suite's dump
                 * of the case's directories. */
                case_output(log, test, (int)i, 8, &summary, &summary_len);
                case_output(log, test, (int)i, 400, &detail, &detail_len);
        }
        if (n_bad)
                fprintf(stderr, "containerd_suite: %s: output of the cases that did not pass:%s\n",
                        test, detail);
        /* Cases without a verdict, or a failure without a failing case: a panic or the
         * binary's timeout, which the end of its output tells. */
        if (status != 0 && (n_none || !n_bad)) {
                size_t len = strlen(log);
                fprintf(stderr, "containerd_suite: %s exited %d; the end of its output:\n%s\n",
                        test, status, log + (len > 16384 ? len - 16384 : 0));
        }

        cr_expect_str_empty(unknown, "%s: cases this test does not know (a newer containerd?):%s",
                            test, unknown);
        cr_expect_eq(n_pass, N_CASES - 1, "%s: %u of %zu cases passed, %u not as expected:%s",
                     test, n_pass, N_CASES - 1, n_bad, summary ? summary : "");
        cr_expect_eq(status, 0, "%s: the suite binary exited %d (output above)", test, status);
        free(summary);
        free(detail);
        free(log);
}

/* The harness itself, proven on containerd's own native snapshotter. */
Test(containerd_suite, native)
{
        assert_suite("TestNative");
}

Test(containerd_suite, reflayer)
{
        assert_suite("TestReflayer");
}

Test(containerd_suite, reflayer_ephemeral)
{
        assert_suite("TestReflayerEphemeral");
}
