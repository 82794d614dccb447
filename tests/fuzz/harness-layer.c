/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * harness-layer.c owns the layer target: each input is a layer blob (tar, gzip or zstd:
 * rl_layer_apply detects which; a plain tar's header checksums are set right first),
 * applied with uid and gid maps (so ACL and capability
 * xattrs are rewritten too) onto an empty tree /layer/tree in the sandbox. The invariant is
 * the one that matters for a daemon applying untrusted layers as root: nothing is written
 * outside the tree. /layer holds a sentinel beside it; after each apply /layer must hold
 * exactly the tree (still a directory) and the unchanged sentinel, and the sandbox's root
 * nothing new.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/idmap.h>
#include <reflayer/layer.h>
#include <reflayer/tree.h>

#include "harness-priv.h"
#include "harness.h"
#include "util.h"

#define SENTINEL "the tree's neighbour: an apply must never touch it\n"

static int layer_fd = -EBADF;
static rl_idmap *uids, *gids;

int fuzz_layer_init(char *msg, size_t msg_size)
{
        rl_error err = {};
        int r = fuzz_sandbox(msg, msg_size);
        if (r < 0)
                return r;
        if ((r = rl_idmap_new(&uids, &err)) < 0 || (r = rl_idmap_new(&gids, &err)) < 0 ||
            (r = rl_idmap_add(uids, 0, 100000, 65536, &err)) < 0 ||
            (r = rl_idmap_add(gids, 0, 100000, 65536, &err)) < 0) {
                snprintf(msg, msg_size, "id maps: %s", err.msg);
                return r;
        }
        _cleanup_close_ int fd = -EBADF;
        if (mkdir("/layer", 0755) < 0 || mkdir("/layer/tree", 0755) < 0 ||
            (layer_fd = open("/layer", O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 ||
            (fd = openat(layer_fd, "sentinel", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) <
                    0 ||
            (r = rl_write_all(fd, SENTINEL, strlen(SENTINEL))) < 0) {
                r = r < 0 ? r : -errno;
                snprintf(msg, msg_size, "make /layer: %s", strerror(-r));
                return r;
        }
        return 0;
}

/* /layer: exactly "tree" (a directory) and "sentinel" (the same file, the same bytes). */
static const char *check_layer_dir(void)
{
        struct stat st;
        char buf[sizeof(SENTINEL) + 1];
        _cleanup_close_ int fd = openat(layer_fd, "sentinel", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf));
        if (n != (ssize_t)strlen(SENTINEL) || memcmp(buf, SENTINEL, (size_t)n) != 0 ||
            fstat(fd, &st) < 0 || st.st_nlink != 1 || (st.st_mode & 07777) != 0644 ||
            st.st_uid != 0)
                return fuzz_fail("the sentinel beside the tree was changed (an escape)");
        if (fstatat(layer_fd, "tree", &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
                return fuzz_fail("the tree is no longer a directory");

        int dfd = openat(layer_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
        if (!d) {
                if (dfd >= 0)
                        close(dfd);
                return fuzz_fail("read /layer: %s", strerror(errno));
        }
        const char *bad = NULL;
        struct dirent *de;
        while (!bad && (de = readdir(d)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 &&
                    strcmp(de->d_name, "tree") != 0 && strcmp(de->d_name, "sentinel") != 0)
                        bad = fuzz_fail("'/layer/%.200s' appeared beside the tree (an escape)",
                                        de->d_name);
        closedir(d);
        return bad;
}

/* A header block's size field: octal, or base-256 when its first byte has the high bit. */
static uint64_t header_size(const uint8_t *h)
{
        uint64_t n = 0;
        if (h[124] & 0x80) {
                for (int i = 125; i < 136; i++)
                        n = n << 8 | h[i];
                return n;
        }
        for (int i = 124; i < 136 && h[i] >= '0' && h[i] <= '7'; i++)
                n = n * 8 + (uint64_t)(h[i] - '0');
        return n;
}

/*
 * Give every ustar header of an uncompressed tar its right checksum, walking header to
 * header by the sizes. A mutation almost always breaks the checksum, and libarchive then
 * stops at the header: without this, the fuzzer would hardly ever get past it.
 */
static void fix_checksums(uint8_t *t, size_t size)
{
        for (size_t off = 0; off + 512 <= size;) {
                uint8_t *h = t + off;
                if (memcmp(h + 257, "ustar", 5) != 0)
                        return;
                unsigned sum = 0;
                for (int i = 0; i < 512; i++)
                        sum += i >= 148 && i < 156 ? ' ' : h[i];
                char field[9];
                snprintf(field, sizeof(field), "%06o", sum & 0777777);
                memcpy(h + 148, field, 6);
                h[154] = '\0';
                h[155] = ' ';
                uint64_t n = header_size(h);
                if (n > size)
                        return;
                off += 512 + (size_t)((n + 511) / 512 * 512);
        }
}

const char *fuzz_layer_one(const uint8_t *data, size_t size)
{
        static const char *const keep[] = {"proc", "layer", NULL};
        rl_error err = {};
        rl_layer_stats st;
        _cleanup_free_ uint8_t *tar = malloc(size ? size : 1);
        if (!tar)
                return fuzz_fail("out of memory");
        memcpy(tar, data, size);
        fix_checksums(tar, size);
        _cleanup_close_ int tar_fd = fuzz_memfd(tar, size);
        _cleanup_close_ int tree_fd =
                openat(layer_fd, "tree", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (tar_fd < 0 || tree_fd < 0)
                return fuzz_fail("set up the apply: %s", strerror(tar_fd < 0 ? -tar_fd : errno));
        rl_apply_options o = {.uid_map = uids, .gid_map = gids, .keep_unmapped = true};
        (void)rl_layer_apply(tree_fd, tar_fd, &o, &st, &err);

        const char *bad = check_layer_dir();
        if (!bad)
                bad = fuzz_root_check(keep, true);
        if (bad)
                return bad;
        if (rl_tree_remove(layer_fd, "tree", 1, NULL, &err) < 0)
                return fuzz_fail("remove the applied tree: %s", err.msg);
        if (mkdirat(layer_fd, "tree", 0755) < 0)
                return fuzz_fail("mkdir /layer/tree: %s", strerror(errno));
        return NULL;
}
