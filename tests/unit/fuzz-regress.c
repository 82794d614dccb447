/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fuzz-regress.c: every input kept in tests/fuzz/regress/TARGET/ (the crashes the fuzz
 * targets found, and their seeds) replayed through the same harness bodies the libFuzzer
 * targets run (tests/fuzz/harness*.c), compiled by the ordinary build: a fixed bug stays
 * fixed, with or without clang. Each test reads its inputs first, then enters the harness's
 * sandbox (a chroot) and runs them one by one; a broken invariant names the input.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "util.h"

#define MAX_INPUTS 256

typedef struct input {
        char name[256];
        uint8_t *data;
        size_t size;
} input;

static int by_name(const void *a, const void *b)
{
        return strcmp(((const input *)a)->name, ((const input *)b)->name);
}

/* Every file of tests/fuzz/regress/target, sorted by name; fails the test if there are none. */
static size_t read_inputs(const char *target, input *in)
{
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "tests/fuzz/regress/%s", target);
        DIR *d = opendir(dir);
        cr_assert(d, "%s: %s (run the tests from the repository)", dir, strerror(errno));
        size_t n = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                cr_assert_lt(n, MAX_INPUTS, "%s: more than %d inputs", dir, MAX_INPUTS);
                input *i = &in[n++];
                snprintf(i->name, sizeof(i->name), "%s", de->d_name);
                _cleanup_close_ int fd = openat(dirfd(d), de->d_name, O_RDONLY | O_CLOEXEC);
                struct stat st;
                cr_assert(fd >= 0 && fstat(fd, &st) == 0, "%s/%s: %s", dir, de->d_name,
                          strerror(errno));
                i->size = (size_t)st.st_size;
                i->data = malloc(i->size ? i->size : 1);
                cr_assert(i->data);
                cr_assert_eq(read(fd, i->data, i->size), (ssize_t)i->size, "read %s/%s", dir,
                             de->d_name);
        }
        closedir(d);
        cr_assert_gt(n, 0, "%s holds no input: keep at least the seeds there", dir);
        qsort(in, n, sizeof(*in), by_name);
        return n;
}

static void replay(const char *target, int (*init)(char *, size_t),
                   const char *(*one)(const uint8_t *, size_t))
{
        static input in[MAX_INPUTS];
        char msg[512];
        size_t n = read_inputs(target, in);
        int r = init(msg, sizeof(msg));
        cr_assert_eq(r, 0, "fuzz %s harness: %s", target, msg);
        for (size_t i = 0; i < n; i++) {
                const char *bad = one(in[i].data, in[i].size);
                cr_assert_null(bad, "tests/fuzz/regress/%s/%s: %s", target, in[i].name, bad);
                free(in[i].data);
        }
        cr_log_info("fuzz %s: %zu inputs replayed", target, n);
}

TestSuite(fuzz_regress, .timeout = 300);

Test(fuzz_regress, rpc)
{
        replay("rpc", fuzz_rpc_init, fuzz_rpc_one);
}

Test(fuzz_regress, layer)
{
        replay("layer", fuzz_layer_init, fuzz_layer_one);
}

Test(fuzz_regress, image)
{
        replay("image", fuzz_image_init, fuzz_image_one);
}
