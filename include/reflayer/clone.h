/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The clone engine for ONE regular file: reflink (FICLONE) where the filesystem can, else
 * copy_file_range, else a read/write loop; both copies keep the source's holes.
 */
#pragma once

#include <stdint.h>

#include <reflayer/error.h>
#include <reflayer/fsinfo.h>

typedef enum rl_clone_method {
        RL_CLONE_EMPTY = 0,  /* nothing to copy: the file has no bytes */
        RL_CLONE_REFLINK,    /* FICLONE: the destination shares the source's extents */
        RL_CLONE_COPY_RANGE, /* copy_file_range over each data segment */
        RL_CLONE_READ_WRITE, /* pread/pwrite over each data segment */
        _RL_CLONE_METHOD_MAX,
} rl_clone_method;

const char *rl_clone_method_to_string(rl_clone_method m);

typedef struct rl_clone_result {
        rl_clone_method method;
        uint64_t bytes_reflinked; /* logical bytes cloned by FICLONE */
        uint64_t bytes_copied;    /* data bytes moved by copy_file_range or read/write */
} rl_clone_result;

/*
 * Make dst_fd's content that of src_fd's first `size` bytes. src_fd must be open for reading,
 * dst_fd for writing, on a new empty file; both are borrowed. dst_fs describes dst_fd's
 * filesystem (may be NULL: then nothing is remembered): once it is known that FICLONE or
 * copy_file_range cannot work there, later files skip straight to what can. `what` names the
 * file in messages. Holes of the source stay holes; a copy ends up exactly `size` bytes
 * long (a reflink takes the source as it is at that instant).
 *
 * Returns 0 and fills *ret, or a negative errno: -ESTALE when the source shrank during a
 * copy; -ENOSPC, -EIO, ... from the copy.
 */
int rl_file_clone(int src_fd, int dst_fd, rl_fsinfo *dst_fs, uint64_t size, const char *what,
                  rl_clone_result *ret, rl_error *err);
