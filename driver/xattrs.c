/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * xattrs.c owns reading all xattrs of one entry into a sorted list (driver/xattrs.h).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "entry.h"
#include "util.h"
#include "xattrs.h"

#define XATTR_SIZE_BUF (64u * 1024) /* XATTR_SIZE_MAX */

static int by_name(const void *a, const void *b)
{
        return strcmp(((const rl_xattr *)a)->name, ((const rl_xattr *)b)->name);
}

int rl_xattrs_load(rl_xattrs *x, const rl_ref *r)
{
        size_t used = 0;

        x->n = 0;
        if (!x->names) {
                /* XATTR_LIST_MAX: one call, never a size probe that can race a setxattr. */
                x->names = malloc(RL_XATTR_LIST_BUF);
                if (!x->names)
                        return -ENOMEM;
        }
        ssize_t len = rl_ref_listxattr(r, x->names, RL_XATTR_LIST_BUF);
        if (len < 0)
                return errno == EOPNOTSUPP ? 0 : -errno;

        for (const char *name = x->names; name < x->names + len; name += strlen(name) + 1) {
                if (rl_xattr_is_alias(name))
                        continue;
                /* Room for one more value of the largest size. */
                if (!RL_GROW(x->values, x->values_cap, used + XATTR_SIZE_BUF))
                        return -ENOMEM;
                ssize_t size = rl_ref_getxattr(r, name, x->values + used, XATTR_SIZE_BUF);
                if (size < 0) {
                        if (errno == ENODATA)
                                continue; /* removed since it was listed */
                        return -errno;
                }
                if (!RL_GROW(x->v, x->cap, x->n + 1))
                        return -ENOMEM;
                /* An offset for now: x->values may still move. */
                x->v[x->n++] = (rl_xattr){ name, (const void *)(uintptr_t)used, (size_t)size };
                used += (size_t)size;
        }
        for (size_t i = 0; i < x->n; i++)
                x->v[i].value = x->values + (uintptr_t)x->v[i].value;
        if (x->n > 1)
                qsort(x->v, x->n, sizeof(*x->v), by_name);
        return 0;
}

bool rl_xattrs_equal(const rl_xattrs *a, const rl_xattrs *b)
{
        if (a->n != b->n)
                return false;
        for (size_t i = 0; i < a->n; i++)
                if (strcmp(a->v[i].name, b->v[i].name) != 0 || a->v[i].size != b->v[i].size ||
                    memcmp(a->v[i].value, b->v[i].value, a->v[i].size) != 0)
                        return false;
        return true;
}

void rl_xattrs_done(rl_xattrs *x)
{
        free(x->v);
        free(x->names);
        free(x->values);
        *x = (rl_xattrs){};
}
