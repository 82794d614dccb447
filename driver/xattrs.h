/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Every xattr of one entry read at once (private): what the differ compares and the layer
 * exporter writes. Names come sorted (the kernel lists them in no promised order, and two
 * entries with the same xattrs must compare equal); XFS's second view of its ACLs
 * (rl_xattr_is_alias) is left out.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "entry.h"

typedef struct rl_xattr {
        const char *name;
        const void *value;
        size_t size;
} rl_xattr;

/* Zero-initialise; the buffers are kept from one load to the next. */
typedef struct rl_xattrs {
        rl_xattr *v;
        size_t n, cap;
        char *names;   /* the name list, XATTR_LIST_MAX */
        char *values;  /* the values, one after another */
        size_t values_cap;
} rl_xattrs;

/* Read every xattr of the entry r into x. A filesystem without xattrs gives none.
 * Returns 0 or a negative errno (errno-style: the caller names the path). */
int rl_xattrs_load(rl_xattrs *x, const rl_ref *r);

/* Same names with the same values? */
bool rl_xattrs_equal(const rl_xattrs *a, const rl_xattrs *b);

void rl_xattrs_done(rl_xattrs *x);
