/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * log.c owns reflayerd's log lines: "<N>message" on stderr, where <N> is the syslog priority
 * prefix that journald reads (sd-daemon(3)); one write(2) per line, so lines from several
 * threads never interleave.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static atomic_int max_level = LOG_LEVEL_INFO;

static const struct {
        const char *name;
        int syslog;
} levels[] = {
        [LOG_LEVEL_ERROR] = { "error", 3 },
        [LOG_LEVEL_WARNING] = { "warning", 4 },
        [LOG_LEVEL_INFO] = { "info", 6 },
        [LOG_LEVEL_DEBUG] = { "debug", 7 },
};

int log_parse_level(const char *s, log_level *ret)
{
        for (int i = LOG_LEVEL_ERROR; i <= LOG_LEVEL_DEBUG; i++)
                if (strcmp(s, levels[i].name) == 0) {
                        *ret = (log_level)i;
                        return 0;
                }
        return -1;
}

void log_set_level(log_level level)
{
        atomic_store(&max_level, level);
}

void log_msg(log_level level, const char *fmt, ...)
{
        char line[4096];
        va_list ap;

        if ((int)level > atomic_load(&max_level))
                return;
        int n = snprintf(line, sizeof(line), "<%d>", levels[level].syslog);
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
        va_end(ap);
        if (m < 0)
                m = 0;
        n += m;
        if ((size_t)n > sizeof(line) - 2)
                n = sizeof(line) - 2;
        /* A message is one line: newlines inside it (a key can hold one) become spaces. */
        for (int i = 0; i < n; i++)
                if (line[i] == '\n')
                        line[i] = ' ';
        line[n++] = '\n';
        (void)!write(STDERR_FILENO, line, (size_t)n);
}
