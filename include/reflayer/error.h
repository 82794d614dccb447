/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * rl_error: the message a user sees when a reflayer call fails.
 *
 * Every driver call that can fail returns a negative errno and, when given a non-NULL
 * rl_error, also fills it with the errno (positive) and a message that names the path that
 * failed and why: "clone 'usr/bin/ls': FICLONE: No space left on device". The buffer is
 * caller-owned and fixed-size: there is nothing to free, and a swallowed error leaks nothing.
 */
#pragma once

#include <stdarg.h>

#define RL_ERROR_MSG_MAX 2048

typedef struct rl_error {
        int code;                    /* positive errno, 0 when no error is recorded */
        char msg[RL_ERROR_MSG_MAX];  /* NUL-terminated, ends with the errno's text */
} rl_error;

/*
 * Record an error: the formatted context, then ": " and the text of errno -r.
 * The reason is never truncated away: a context too long for the buffer is cut instead.
 * Returns r (negative), so that `return rl_error_set(err, r, ...)` reads naturally.
 * err may be NULL; r must be negative.
 */
int rl_error_set(rl_error *err, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * Prepend context to a recorded error ("prepare 'k': " + old message). Returns r (negative,
 * the error being passed on), so callers can `return rl_error_prefix(err, r, ...)`; the
 * errno is never lost, even with err NULL.
 */
int rl_error_prefix(rl_error *err, int r, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* Forget a recorded error. */
void rl_error_clear(rl_error *err);
