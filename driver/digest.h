/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * SHA-256 digests in the OCI form "sha256:HEX", by OpenSSL's libcrypto (which uses the
 * CPU's SHA extensions where it has them: layer blobs are hashed twice, compressed and not,
 * and at several hundred MB per image that speed matters).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <reflayer/layer.h>

typedef struct rl_sha256 rl_sha256;

int rl_sha256_new(rl_sha256 **ret);
void rl_sha256_update(rl_sha256 *h, const void *data, size_t size);
/* Finish into out ("sha256:" + 64 lowercase hex digits); h can be reused after. */
void rl_sha256_final(rl_sha256 *h, char out[RL_DIGEST_MAX]);
rl_sha256 *rl_sha256_free(rl_sha256 *h);
void rl_sha256_freep(rl_sha256 **h);

/* The digest of one buffer. */
void rl_sha256_of(const void *data, size_t size, char out[RL_DIGEST_MAX]);

/* Is s of the form "sha256:" + 64 lowercase hex digits? (Digests name blob files: nothing
 * else may get near a path.) */
bool rl_digest_valid(const char *s);
