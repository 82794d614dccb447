/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Walk filters in containerd's syntax (private). A list of filters matches when any filter
 * does; a filter is a comma-separated conjunction of terms
 *   FIELD            the field is present (a label is set, a snapshot has a parent)
 *   FIELD==VALUE     FIELD!=VALUE     FIELD~=REGEX (POSIX extended, unanchored)
 * FIELD is a dot path (kind, name, parent, labels.KEY); a component or a value may be
 * "quoted" with backslash escapes, a regular expression also /quoted/ or |quoted|. An
 * unquoted value ends at a comma or white space. Regular expressions are POSIX extended
 * (regcomp), not Go's RE2 as in containerd: \d and friends are not there.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <reflayer/error.h>

typedef struct rl_filter rl_filter;

/* The value of a field of the object being matched, NULL when absent. path[0] is the
 * field, path[1] (for labels) the key; n is 1 or 2. */
typedef const char *(*rl_filter_get_fn)(void *obj, const char *const *path, size_t n);

int rl_filter_parse(const char *const *filters, size_t n, rl_filter **ret, rl_error *err);
bool rl_filter_match(const rl_filter *f, rl_filter_get_fn get, void *obj);
rl_filter *rl_filter_free(rl_filter *f);
void rl_filter_freep(rl_filter **f);
