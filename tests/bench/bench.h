/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the C benchmarks share: a monotonic clock in seconds, sorting timings for a median,
 * and giving up with the error's message (prefixed with the program's name).
 */
#pragma once

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <reflayer/error.h>

static inline double now(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

/* err NULL: the reason is errno. */
static inline void die(const char *what, const rl_error *err)
{
        fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what,
                err ? err->msg : strerror(errno));
        exit(1);
}
