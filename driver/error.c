/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * error.c owns rl_error: formatting the message a user sees, and prefixing context to it.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <reflayer/error.h>

#include "util.h"

/* Room kept at the end of the message for ": <errno text>", so the reason always survives. */
#define REASON_MAX 96

RL_EXPORT int rl_error_set(rl_error *err, int r, const char *fmt, ...)
{
        if (!err)
                return r;

        const char *reason = rl_strerror(-r);
        size_t room = sizeof(err->msg) - REASON_MAX;
        va_list ap;

        va_start(ap, fmt);
        int n = vsnprintf(err->msg, room, fmt, ap);
        va_end(ap);
        if (n < 0)
                n = 0;
        if ((size_t)n >= room) {
                /* Cut the context, not the reason, and say that it was cut. */
                n = (int)room - 1;
                memcpy(err->msg + n - 3, "...", 3);
        }
        snprintf(err->msg + n, sizeof(err->msg) - n, ": %s", reason);
        err->code = -r;
        return r;
}

RL_EXPORT int rl_error_prefix(rl_error *err, int r, const char *fmt, ...)
{
        if (!err || err->code == 0)
                return r;

        char prefix[RL_ERROR_MSG_MAX / 2];
        va_list ap;

        va_start(ap, fmt);
        int n = vsnprintf(prefix, sizeof(prefix), fmt, ap);
        va_end(ap);
        if (n < 0)
                n = 0;
        if ((size_t)n >= sizeof(prefix))
                n = sizeof(prefix) - 1;

        size_t old = strnlen(err->msg, sizeof(err->msg) - 1);
        size_t total = (size_t)n + 2 + old;
        if (total >= sizeof(err->msg)) {
                /* Drop the head of the old message's context rather than its end. */
                size_t cut = total - (sizeof(err->msg) - 1);
                memmove(err->msg, err->msg + cut, old - cut + 1);
                old -= cut;
        }
        memmove(err->msg + n + 2, err->msg, old + 1);
        memcpy(err->msg, prefix, n);
        memcpy(err->msg + n, ": ", 2);
        return r;
}

RL_EXPORT void rl_error_clear(rl_error *err)
{
        if (!err)
                return;
        err->code = 0;
        err->msg[0] = '\0';
}
