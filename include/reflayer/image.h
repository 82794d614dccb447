/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * OCI image layouts into the store: index.json → manifest → config and layer blobs, every
 * blob checked against its sha256 digest, each layer a committed snapshot named by its chain
 * ID (as containerd and Docker compute it), so a layer two images share is stored once.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <reflayer/error.h>
#include <reflayer/layer.h>
#include <reflayer/store.h>
#include <reflayer/tree.h>

/* The label the top snapshot of an imported image gets, one per reference:
 * "reflayer.io/image/REF" = the manifest's digest. Each layer's snapshot also gets
 * "reflayer.io/diff-id" = its diff_id. */
#define RL_IMAGE_LABEL_PREFIX "reflayer.io/image/"
#define RL_DIFF_ID_LABEL "reflayer.io/diff-id"

typedef struct rl_import_options {
        /* The image in index.json whose org.opencontainers.image.ref.name is ref; NULL: the
         * layout's only image. A multi-platform index gives the host's platform. */
        const char *ref;
        /* Called with each blob fd before it is read: a daemon acting for a client refuses
         * what the client could not read itself (negative errno). NULL: no check. */
        int (*may_read)(int fd, const char *what, void *userdata, rl_error *err);
        void *may_read_userdata;
        rl_tree_progress_fn progress; /* entries and bytes of the layers applied so far */
        void *progress_userdata;
        const atomic_bool *cancel;
} rl_import_options;

typedef struct rl_import_result {
        char manifest[RL_DIGEST_MAX]; /* the manifest's digest */
        char top[RL_DIGEST_MAX];      /* the chain ID of the top layer: its snapshot's name
                                       * ("" for an image without layers) */
        unsigned layers;              /* in the image */
        unsigned layers_new;          /* applied now; the others were there already */
        uint64_t bytes;               /* blob bytes read for the new layers */
        uint64_t elapsed_ns;
} rl_import_result;

/*
 * Import the OCI image layout directory layout_fd (borrowed). Nothing is followed out of it
 * (no symlinks, no "..": blobs are blobs/sha256/HEX). A second import of the same image
 * applies nothing. A failure leaves the layers imported so far (each one whole) and no
 * partial one. Errors: -EINVAL not a layout, no such ref, unsupported media type or
 * digest; -EBADMSG a blob whose digest or size does not match; the store's errors.
 */
int rl_store_import(rl_store *s, int layout_fd, const rl_import_options *opts,
                    rl_import_result *ret, rl_error *err);

/* The chain ID of a layer: its diff_id alone for the first, else
 * sha256(parent_chain + " " + diff_id). */
void rl_chain_id(const char *parent_chain, const char *diff_id, char out[RL_DIGEST_MAX]);
