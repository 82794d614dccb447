/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The store on an image file (reflayerd --image): for hosts whose own filesystem cannot
 * reflink, a sparse file holding an XFS (reflink=1), attached to a loop device and mounted at
 * the store's root for as long as the daemon runs.
 */
#pragma once

#include <stdint.h>

#include <reflayer/error.h>

/* XFS refuses to be made smaller than this (mkfs.xfs: "must be larger than 300MB"). */
#define IMAGE_SIZE_MIN (UINT64_C(300) << 20)

typedef struct image image;

/*
 * Parse an image size: a number of bytes, or with a K, M, G or T suffix (powers of 1024).
 * -EINVAL with a message for anything else, and for sizes below IMAGE_SIZE_MIN.
 */
int image_parse_size(const char *s, uint64_t *ret, rl_error *err);

/*
 * Make the store's filesystem ready at root:
 * - file missing: create it sparse, `size` bytes (size 0, i.e. no --image-size: -ENOENT with
 *   a message saying so), and mkfs.xfs -m reflink=1 it; a failed mkfs removes the file again;
 * - file present: keep its size (a different `size` is only logged) and refuse a file that
 *   holds no XFS (-EINVAL);
 * - root already a mount of exactly this image: use it; root some other mount point, or a
 *   non-empty directory (-EEXIST): refuse, never mount over data;
 * - otherwise attach the image to a loop device (autoclear: it frees itself when unmounted;
 *   a loop device already backed by the image is reused, since XFS must never be mounted
 *   twice through two devices) and mount it at root (created 0711 if missing).
 * *ret is freed with image_close, which unmounts.
 */
int image_open(const char *file, uint64_t size, const char *root, image **ret, rl_error *err);

/* The image file's absolute path. */
const char *image_path(const image *img);

/*
 * Unmount the image from root, once the store on it is closed and no fd of ours points
 * inside. A mount still in use (EBUSY: a process inside it) is logged and left mounted; the
 * next start reuses it. Accepts NULL; returns NULL.
 */
image *image_close(image *img);
void image_closep(image **img);
