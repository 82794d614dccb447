/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * digest.c owns content digests: SHA-256 through libcrypto's EVP interface, printed the
 * way OCI writes them.
 */
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"
#include "util.h"

struct rl_sha256 {
        EVP_MD_CTX *ctx;
};

int rl_sha256_new(rl_sha256 **ret)
{
        rl_sha256 *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->ctx = EVP_MD_CTX_new();
        if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
                rl_sha256_free(h);
                return -ENOMEM;
        }
        *ret = h;
        return 0;
}

void rl_sha256_update(rl_sha256 *h, const void *data, size_t size)
{
        EVP_DigestUpdate(h->ctx, data, size);
}

static void hex_digest(const unsigned char *md, unsigned n, char out[RL_DIGEST_MAX])
{
        static const char hex[] = "0123456789abcdef";
        char *p = out + strlen(strcpy(out, "sha256:"));
        for (unsigned i = 0; i < n; i++) {
                *p++ = hex[md[i] >> 4];
                *p++ = hex[md[i] & 15];
        }
        *p = '\0';
}

void rl_sha256_final(rl_sha256 *h, char out[RL_DIGEST_MAX])
{
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned n = 0;
        EVP_DigestFinal_ex(h->ctx, md, &n);
        hex_digest(md, n, out);
        EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL);
}

rl_sha256 *rl_sha256_free(rl_sha256 *h)
{
        if (h) {
                EVP_MD_CTX_free(h->ctx);
                free(h);
        }
        return NULL;
}

void rl_sha256_freep(rl_sha256 **h)
{
        rl_sha256_free(*h);
}

void rl_sha256_of(const void *data, size_t size, char out[RL_DIGEST_MAX])
{
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned n = 0;
        EVP_Digest(data, size, md, &n, EVP_sha256(), NULL);
        hex_digest(md, n, out);
}

bool rl_digest_valid(const char *s)
{
        if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 64)
                return false;
        for (const char *p = s + 7; *p; p++)
                if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
                        return false;
        return true;
}
