/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Tar layers for tests: a builder over libarchive's writer (PAX, so nanosecond times and
 * SCHILY.xattr.* records), and a raw writer of hand-made ustar headers for archives no
 * well-behaved writer produces (libarchive writes names such as "../x" or "/x" as given,
 * but it decides the layout: the raw writer is for exact offsets and malformed headers).
 * Every failure fails the test, naming the entry and the archive.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <reflayer/layer.h>

typedef struct rlt_tar rlt_tar;

typedef enum rlt_tar_type {
        RLT_TAR_REG,
        RLT_TAR_DIR,
        RLT_TAR_SYMLINK,
        RLT_TAR_HARDLINK,
        RLT_TAR_FIFO,
        RLT_TAR_CHR,
        RLT_TAR_BLK,
} rlt_tar_type;

#define RLT_TAR_XATTRS_MAX 8

typedef struct rlt_tar_xattr {
        const char *name;
        const void *value;
        size_t size;
} rlt_tar_xattr;

/*
 * One entry. Zero fields mean: mode 0644 (file) / 0755 (dir) / 0777 (symlink) / 0644
 * (others), owner 0:0, mtime RLT_TAR_MTIME. data/size is a regular file's content (size 0
 * with data set: strlen(data)); target is a symlink's or hardlink's target.
 */
typedef struct rlt_tar_entry {
        rlt_tar_type type;
        const char *name;
        mode_t mode; /* permission bits and setuid/setgid/sticky only */
        uid_t uid;
        gid_t gid;
        int64_t mtime_sec; /* 0: RLT_TAR_MTIME */
        long mtime_nsec;
        const void *data;
        size_t size;
        const char *target;
        unsigned rdev_major, rdev_minor;
        rlt_tar_xattr xattrs[RLT_TAR_XATTRS_MAX];
} rlt_tar_entry;

#define RLT_TAR_MTIME 1650000000

/* Start a layer at path (created or truncated), compressed as asked. */
rlt_tar *rlt_tar_open(const char *path, rl_compression c);
/* Finish the archive (end blocks, compressor flush) and free the builder. */
void rlt_tar_close(rlt_tar *t);

void rlt_tar_add(rlt_tar *t, const rlt_tar_entry *e);
void rlt_tar_dir(rlt_tar *t, const char *name, mode_t mode);
void rlt_tar_file(rlt_tar *t, const char *name, mode_t mode, const char *content);
void rlt_tar_symlink(rlt_tar *t, const char *name, const char *target);
void rlt_tar_hardlink(rlt_tar *t, const char *name, const char *target);
void rlt_tar_fifo(rlt_tar *t, const char *name, mode_t mode);
void rlt_tar_chardev(rlt_tar *t, const char *name, mode_t mode, unsigned major, unsigned minor);
/* The whiteout "DIR/.wh.NAME" of path "DIR/NAME" (or ".wh.NAME" of "NAME"). */
void rlt_tar_whiteout(rlt_tar *t, const char *path);
/* The opaque marker "DIR/.wh..wh..opq" (dir "" or ".": the root's). */
void rlt_tar_opaque(rlt_tar *t, const char *dir);

/*
 * Raw ustar: a 512-byte header with exactly these fields (name up to 100 bytes, prefix up to
 * 155, linkname up to 100; no normalisation of any kind) and a correct checksum, then size
 * bytes of data padded to 512. typeflag is '0', '5', '2', '1', ... as in POSIX.
 */
void rlt_tar_raw_entry(int fd, const char *prefix, const char *name, char typeflag,
                       const char *linkname, const void *data, size_t size);
/* The end of a raw archive: two zero blocks. */
void rlt_tar_raw_end(int fd);

/* Cut the file at path to size bytes (a truncated layer). */
void rlt_truncate(const char *path, uint64_t size);

/* "sha256:HEX" of the output of the shell command cmd (e.g. "zcat F"), by sha256sum: an
 * independent check on the driver's digests. */
void rlt_sha256_of_command(const char *cmd, char ret[RL_DIGEST_MAX]);
/* "sha256:HEX" of the file at path, by sha256sum. */
void rlt_sha256_file(const char *path, char ret[RL_DIGEST_MAX]);
