/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the three harnesses share (tests/fuzz/harness.c): the sandbox, fixed layer blobs,
 * emptying a store and checking that the sandbox's root holds nothing unexpected.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <reflayer/layer.h>
#include <reflayer/store.h>

/* The private mount namespace, the tmpfs and the chroot (harness.h), with a read-only
 * /proc/self in it (the driver reaches symlinks' xattrs through /proc/self/fd). */
int fuzz_sandbox(char *msg, size_t msg_size);

/* A small layer blob, built once with libarchive: which 0 is a plain tar (a directory, a
 * file with an xattr, a symlink), 1 a gzip tar on top of it (a whiteout, an opaque
 * directory, a hardlink). */
typedef struct fuzz_blob {
        void *data;
        size_t size;
        char digest[RL_DIGEST_MAX];  /* of data */
        char diff_id[RL_DIGEST_MAX]; /* of the uncompressed tar */
} fuzz_blob;
int fuzz_layer_blob(unsigned which, const fuzz_blob **ret, char *msg, size_t msg_size);

/* A memfd holding data, offset 0; or a negative errno. */
int fuzz_memfd(const void *data, size_t size);

/* Remove every snapshot of the store (children first) and wait for their trees to go.
 * Returns NULL or what could not be removed. */
const char *fuzz_store_empty(rl_store *s);

/* Remove what the input made at the sandbox's root beside the names in keep (NULL-ended)
 * and the program's top directory (bound there by fuzz_sandbox),
 * and say so when expect_clean (something outside the place it was meant for). Returns
 * NULL or the complaint. */
const char *fuzz_root_check(const char *const *keep, bool expect_clean);

/* printf into the complaint buffer; returns it. */
const char *fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
