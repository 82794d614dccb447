/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * journal.c owns the store's intent journal (journal.h): its file format, appends,
 * checkpoints and the scan that finds the entries to replay.
 *
 * The file is JOURNAL_SIZE bytes, written whole when made. Its first two blocks are header
 * slots, written in turn, each {magic, generation, start, crc}: the valid one of the higher
 * generation says which sequence number the entries to replay start at (a checkpoint writes
 * the other slot, so a header torn by a crash leaves the previous one standing). Entries
 * start at ENTRY0, each {magic, length, sequence, crc} and the payload, padded to BLOCK:
 * the scan takes entries from ENTRY0 while each is whole (its crc) and numbered one past the
 * previous; those numbered from `start` on are replayed. When a checkpoint leaves nothing to
 * replay, appends start over at ENTRY0 with the next number: what is left further on of
 * older rounds is numbered lower, so the scan stops there.
 *
 * Every write is of whole 4 KiB blocks no other write shares: a device that tears a write
 * tears it within its own block (a 4Kn disk's atomic unit), never an entry or header that
 * was already flushed.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "util.h"

#define JOURNAL_SIZE (2u << 20) /* 510 entries of up to 4 KiB */
#define BLOCK 4096u
#define ENTRY0 (2 * BLOCK)
#define HEADER_MAGIC "RLJRNL01"
#define ENTRY_MAGIC 0x454a4c52u /* "RLJE" */
#define ENTRY_HEAD 24u

struct rl_journal {
        int fd;
        pthread_mutex_t lock;
        uint64_t gen;   /* of the current header */
        uint64_t start; /* first sequence number not checkpointed */
        uint64_t next;  /* of the next entry */
        uint64_t tail;  /* its offset */
};

/* CRC-32C (Castagnoli), four bits at a time: an entry is a few hundred bytes. */
static uint32_t crc32c(uint32_t crc, const void *buf, size_t n)
{
        static const uint32_t t[16] = {
                0x00000000, 0x105ec76f, 0x20bd8ede, 0x30e349b1, 0x417b1dbc, 0x5125dad3,
                0x61c69362, 0x7198540d, 0x82f63b78, 0x92a8fc17, 0xa24bb5a6, 0xb21572c9,
                0xc38d26c4, 0xd3d3e1ab, 0xe330a81a, 0xf36e6f75,
        };
        const unsigned char *p = buf;
        crc = ~crc;
        while (n--) {
                crc ^= *p++;
                crc = (crc >> 4) ^ t[crc & 15];
                crc = (crc >> 4) ^ t[crc & 15];
        }
        return ~crc;
}

static void put32(unsigned char *p, uint32_t v)
{
        v = htole32(v);
        memcpy(p, &v, 4);
}

static void put64(unsigned char *p, uint64_t v)
{
        v = htole64(v);
        memcpy(p, &v, 8);
}

static uint32_t get32(const unsigned char *p)
{
        uint32_t v;
        memcpy(&v, p, 4);
        return le32toh(v);
}

static uint64_t get64(const unsigned char *p)
{
        uint64_t v;
        memcpy(&v, p, 8);
        return le64toh(v);
}

/* Exactly n bytes at off, or -errno (-EIO: the file ends before). */
static int pread_all(int fd, void *buf, size_t n, uint64_t off)
{
        ssize_t r = rl_pread_all(fd, buf, n, off);
        return r < 0 ? (int)r : (size_t)r == n ? 0 : -EIO;
}

/* Header slot i (0 or 1): 0 and its generation and start when valid, -ENODATA when never
 * written (zeros), -EUCLEAN when neither. */
static int header_read(int fd, unsigned i, uint64_t *gen, uint64_t *start)
{
        static const unsigned char zeros[32];
        unsigned char h[32];
        int r = pread_all(fd, h, sizeof(h), i * BLOCK);
        if (r < 0)
                return r;
        if (memcmp(h, zeros, sizeof(h)) == 0)
                return -ENODATA;
        if (memcmp(h, HEADER_MAGIC, 8) != 0 || get32(h + 24) != crc32c(0, h, 24))
                return -EUCLEAN;
        *gen = get64(h + 8);
        *start = get64(h + 16);
        return 0;
}

/* The next header (generation gen + 1) into the slot the current one is not in, flushed. */
static int header_write(rl_journal *j, uint64_t start)
{
        unsigned char h[BLOCK] = {};
        uint64_t gen = j->gen + 1;
        memcpy(h, HEADER_MAGIC, 8);
        put64(h + 8, gen);
        put64(h + 16, start);
        put32(h + 24, crc32c(0, h, 24));
        int r = rl_pwrite_all(j->fd, h, sizeof(h), (gen & 1) * BLOCK);
        if (r == 0 && fdatasync(j->fd) < 0)
                r = -errno;
        if (r < 0)
                return r;
        j->gen = gen;
        j->start = start;
        return 0;
}

static uint64_t entry_size(size_t len)
{
        return (ENTRY_HEAD + len + BLOCK - 1) / BLOCK * BLOCK;
}

/* The entry at off: its number, payload (malloc'd) and length, or -EUCLEAN when there is
 * none (not whole). */
static int entry_read(int fd, uint64_t off, uint64_t *ret_seq, char **ret, size_t *ret_len)
{
        unsigned char h[ENTRY_HEAD];
        if (off + ENTRY_HEAD > JOURNAL_SIZE || pread_all(fd, h, sizeof(h), off) < 0)
                return -EUCLEAN;
        uint32_t len = get32(h + 4);
        if (get32(h) != ENTRY_MAGIC || len > JOURNAL_SIZE || off + entry_size(len) > JOURNAL_SIZE)
                return -EUCLEAN;
        char *p = malloc(len + 1);
        if (!p)
                return -ENOMEM;
        if (pread_all(fd, p, len, off + ENTRY_HEAD) < 0 ||
            crc32c(crc32c(0, h + 4, 12), p, len) != get32(h + 16)) {
                free(p);
                return -EUCLEAN;
        }
        p[len] = '\0';
        *ret_seq = get64(h + 8);
        *ret = p;
        *ret_len = len;
        return 0;
}

/*
 * Walk the chain from ENTRY0: sets j->next and j->tail past its last entry, and hands
 * those numbered from j->start on to fn (when not NULL).
 */
static int scan(rl_journal *j, int (*fn)(const char *, size_t, void *, rl_error *),
                void *userdata, rl_error *err)
{
        uint64_t off = ENTRY0, seq = 0;
        bool first = true;
        for (;;) {
                _cleanup_free_ char *p = NULL;
                uint64_t got;
                size_t len;
                int r = entry_read(j->fd, off, &got, &p, &len);
                if (r == -ENOMEM)
                        return rl_error_set(err, r, "journal: read");
                /* The first entry may carry any number up to start: the chain runs on from
                 * it. One numbered past start is of no round since the last checkpoint;
                 * after the first, each must be the next. */
                if (r < 0 || (first ? got > j->start : got != seq))
                        break;
                seq = got;
                if (fn && seq >= j->start && (r = fn(p, len, userdata, err)) < 0)
                        return r;
                first = false;
                off += entry_size(len);
                seq++;
        }
        if (first || seq <= j->start) {
                /* Nothing to replay: appends start over. */
                j->next = j->start;
                j->tail = ENTRY0;
        } else {
                j->next = seq;
                j->tail = off;
        }
        return 0;
}

int rl_journal_open(int dir_fd, const char *name, rl_journal **ret, rl_error *err)
{
        _cleanup_close_ int fd = openat(dir_fd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC,
                                        0600);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0)
                return rl_error_set(err, -errno, "journal: open %s", name);
        if (!S_ISREG(st.st_mode))
                return rl_error_set(err, -EUCLEAN, "journal: %s is not a regular file", name);

        rl_journal *j = calloc(1, sizeof(*j));
        if (!j)
                return rl_error_set(err, -ENOMEM, "journal");
        j->fd = TAKE_FD(fd);
        pthread_mutex_init(&j->lock, NULL);

        uint64_t gen[2] = {}, start[2] = {};
        int h0 = header_read(j->fd, 0, &gen[0], &start[0]);
        int h1 = header_read(j->fd, 1, &gen[1], &start[1]);
        bool ok[2] = { h0 == 0, h1 == 0 };
        int r;
        if (!ok[0] && !ok[1] && (h0 != -ENODATA || h1 != -ENODATA) &&
            st.st_size == JOURNAL_SIZE) {
                /* Written once, unreadable now: it may hold entries whose changes a crash
                 * cut short, which making it anew would lose. */
                rl_journal_free(j);
                return rl_error_set(err, -EUCLEAN,
                                    "journal: %s: neither header reads (%s, %s)", name,
                                    strerror(-h0), strerror(-h1));
        }
        if (!ok[0] && !ok[1]) {
                /* New, or made by a process that died before it was whole (nothing was
                 * appended then: appends wait for this to be durable). Zeros throughout,
                 * so that no append ever allocates, then a first header. */
                static const char zero[65536];
                r = ftruncate(j->fd, 0) < 0 ? -errno : 0;
                /* Allocated first, so that the writes below stay within the size: writes
                 * that extend a file make XFS allocate speculatively past its end, blocks
                 * df counts as used for as long as the file is open. */
                if (r == 0 && fallocate(j->fd, 0, 0, JOURNAL_SIZE) < 0 &&
                    errno != EOPNOTSUPP)
                        r = -errno;
                for (uint64_t off = 0; r == 0 && off < JOURNAL_SIZE; off += sizeof(zero))
                        r = rl_pwrite_all(j->fd, zero, sizeof(zero), off);
                j->gen = 0;
                if (r == 0 && fsync(j->fd) < 0)
                        r = -errno;
                if (r == 0)
                        r = header_write(j, 1);
                if (r == 0 && fsync(dir_fd) < 0)
                        r = -errno;
                if (r < 0) {
                        rl_journal_free(j);
                        return rl_error_set(err, r, "journal: create %s", name);
                }
        } else {
                unsigned i = ok[0] && (!ok[1] || gen[0] > gen[1]) ? 0 : 1;
                j->gen = gen[i];
                j->start = start[i];
        }
        r = scan(j, NULL, NULL, err);
        if (r < 0) {
                rl_journal_free(j);
                return r;
        }
        *ret = j;
        return 0;
}

void rl_journal_free(rl_journal *j)
{
        if (!j)
                return;
        closep(&j->fd);
        pthread_mutex_destroy(&j->lock);
        free(j);
}

int rl_journal_replay(rl_journal *j,
                      int (*fn)(const char *payload, size_t len, void *userdata, rl_error *err),
                      void *userdata, rl_error *err)
{
        pthread_mutex_lock(&j->lock);
        int r = scan(j, fn, userdata, err);
        pthread_mutex_unlock(&j->lock);
        return r;
}

int rl_journal_append(rl_journal *j, const char *payload, size_t len, rl_error *err)
{
        uint64_t size = entry_size(len);
        if (size > JOURNAL_SIZE - ENTRY0)
                return -ENOSPC;
        _cleanup_free_ unsigned char *buf = calloc(1, size);
        if (!buf)
                return rl_error_set(err, -ENOMEM, "journal: append");

        pthread_mutex_lock(&j->lock);
        int r = 0;
        if (j->tail + size > JOURNAL_SIZE) {
                r = -ENOSPC;
                goto out;
        }
        put32(buf, ENTRY_MAGIC);
        put32(buf + 4, (uint32_t)len);
        put64(buf + 8, j->next);
        memcpy(buf + ENTRY_HEAD, payload, len);
        put32(buf + 16, crc32c(crc32c(0, buf + 4, 12), payload, len));
        /* An overwrite of blocks written when the file was made: fdatasync writes them and
         * flushes the cache, and commits nothing of the filesystem's own. */
        r = rl_pwrite_all(j->fd, buf, size, j->tail);
        if (r == 0 && fdatasync(j->fd) < 0)
                r = -errno;
        if (r < 0) {
                /* Whatever reached the file is not an entry: the next append overwrites it,
                 * and a crash before then leaves it unreplayed, as its change never was. */
                rl_error_set(err, r, "journal: append");
                goto out;
        }
        j->next++;
        j->tail += size;
out:
        pthread_mutex_unlock(&j->lock);
        return r;
}

uint64_t rl_journal_mark(rl_journal *j)
{
        pthread_mutex_lock(&j->lock);
        uint64_t mark = j->next;
        pthread_mutex_unlock(&j->lock);
        return mark;
}

int rl_journal_checkpoint(rl_journal *j, uint64_t mark, rl_error *err)
{
        int r = 0;
        pthread_mutex_lock(&j->lock);
        if (mark > j->start && mark <= j->next) {
                r = header_write(j, mark);
                if (r < 0)
                        rl_error_set(err, r, "journal: checkpoint");
        }
        /* Nothing left, and the header says so: start over. */
        if (r == 0 && mark == j->next && j->start == mark)
                j->tail = ENTRY0;
        pthread_mutex_unlock(&j->lock);
        return r;
}
