/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Snapshot metadata records (private): info.json of one snapshot, read and written atomically
 * (temporary file, fsync, rename, fsync of the directory), or, for a snapshot not yet
 * published, written in place into a placeholder reserved ahead of time (one fdatasync).
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <reflayer/error.h>
#include <reflayer/store.h>

#define RL_META_FILE "info.json"
/* The size of a placeholder record (rl_meta_reserve): one filesystem block. Records of
 * typical keys and labels fit; a longer one is written the usual way. */
#define RL_META_RESERVED 4096

typedef struct rl_meta {
        uint64_t id;
        rl_kind kind;
        char *name;
        uint64_t parent_id; /* 0: no parent */
        json_t *labels;     /* object of strings, never NULL once read or built */
        int64_t created_ns, updated_ns;
        bool ephemeral; /* where it was found (ROOT/ephemeral/); not part of the record */
} rl_meta;

void rl_meta_clear(rl_meta *m);

/* Read dir_fd/info.json. -EUCLEAN (with a message) when it is not a valid record. */
int rl_meta_read(int dir_fd, rl_meta *ret, rl_error *err);

/* Replace dir_fd/info.json atomically, and durably unless m is ephemeral (no fsync). */
int rl_meta_write(int dir_fd, const rl_meta *m, rl_error *err);

/*
 * Create dir_fd/info.json as a placeholder of RL_META_RESERVED blanks, which is not a
 * record (rl_meta_read: -EUCLEAN), for rl_meta_fill to write the record into later. Not
 * synced: the caller makes it durable with the rest of the directory (a syncfs), ahead of
 * time, which is the point: the later fill then needs no journal commit.
 */
int rl_meta_reserve(int dir_fd, rl_error *err);

/*
 * Write the record of a snapshot whose directory (dir_fd) is not published yet, before it
 * is: into the placeholder in place, padded with blanks, and with flush (unless m is
 * ephemeral) durably (fdatasync only); when there is no placeholder or the record does not
 * fit, as rl_meta_write does with flush, and -E2BIG (no message, nothing written) without.
 * Nobody may read dir_fd/info.json until this returns: an in-place write is not atomic.
 */
int rl_meta_fill(int dir_fd, const rl_meta *m, bool flush, rl_error *err);

/* The record as a JSON object (NULL: out of memory), and back, validated as rl_meta_read
 * validates (-EUCLEAN, the message naming `what`). */
json_t *rl_meta_to_json(const rl_meta *m);
int rl_meta_from_json(json_t *root, const char *what, rl_meta *ret, rl_error *err);

/* Strict UTF-8 without NUL: keys and labels must be. */
bool rl_utf8_valid(const char *s, size_t len);

/* Labels as the public array (copies) and back. Validation: keys non-empty UTF-8, key plus
 * value at most RL_LABEL_MAX bytes. */
int rl_meta_labels_from(const rl_label *labels, size_t n, json_t **ret, rl_error *err);
/* The labels of one snapshot together: at most RL_LABELS_TOTAL_MAX bytes. */
int rl_meta_labels_check(const json_t *labels, rl_error *err);
int rl_meta_labels_to(const json_t *labels, rl_label **ret, size_t *ret_n);
