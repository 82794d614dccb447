/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Least privilege for reflayerd: the capabilities it needs and nothing else (libcap), then,
 * once started, a seccomp allow-list of the system calls it makes (libseccomp).
 */
#pragma once

#include <reflayer/error.h>

/*
 * Keep only the capabilities reflayerd uses, in the effective, permitted and bounding sets,
 * and no ambient or inheritable ones. Call before any thread is made: capabilities are
 * per thread, and threads inherit them. No-op (0) when not running as root: then there is
 * nothing to drop.
 */
int sandbox_drop_capabilities(rl_error *err);

/* The capabilities kept, for logs and tests: "cap_chown,cap_dac_override,...". */
const char *sandbox_capabilities(void);

/*
 * Allow only the system calls reflayerd makes from here on; any other fails with ENOSYS
 * (so a library falls back, as for clone3 or openat2, and nothing is killed) and leaves an
 * audit record in the kernel log. Applies to every thread (TSYNC). Checks that it works (a
 * network socket is refused). Returns the number of system calls allowed, or a negative
 * errno.
 */
int sandbox_seccomp(rl_error *err);
