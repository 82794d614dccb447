/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The store's intent journal (private to store.c): a fixed-size file of checksummed entries,
 * appended with one overwrite in place and one fdatasync. An entry says what a change will
 * have done once whole; whoever appends it then makes the change without flushing, and a
 * checkpoint, later and in the background, records that every change before a mark has
 * reached the disk by other means. After a crash, the entries since the last checkpoint are
 * handed back (rl_journal_replay) to be made whole. Entries are opaque bytes here.
 *
 * Why: a durable change that would otherwise need two flushes in a row (a record, then the
 * directory it is renamed into) needs one. The file is written whole when created, so an
 * append changes no metadata and fdatasync writes one block and flushes the cache, with no
 * filesystem journal commit.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <reflayer/error.h>

typedef struct rl_journal rl_journal;

/* Open (dir_fd, name), creating it when missing or never finished (written whole and
 * synced). -EUCLEAN when neither header reads: it may hold entries, which making it anew
 * would lose. */
int rl_journal_open(int dir_fd, const char *name, rl_journal **ret, rl_error *err);

/* Close and free. Accepts NULL. */
void rl_journal_free(rl_journal *j);

/*
 * Hand every entry appended since the last checkpoint to fn, oldest first; stops at fn's
 * first error. An entry torn by a crash (its append had not returned) and what follows it
 * are not entries.
 */
int rl_journal_replay(rl_journal *j,
                      int (*fn)(const char *payload, size_t len, void *userdata, rl_error *err),
                      void *userdata, rl_error *err);

/*
 * Append one entry, durably. -ENOSPC (no message) when it does not fit before the next
 * checkpoint: the caller makes its change durable the slow way instead. Thread-safe.
 */
int rl_journal_append(rl_journal *j, const char *payload, size_t len, rl_error *err);

/* The mark of every entry appended so far, for rl_journal_checkpoint. Thread-safe. */
uint64_t rl_journal_mark(rl_journal *j);

/*
 * Every change of an entry appended before mark is durable by other means: forget those
 * entries (the header is written and flushed). Once nothing is left, appends start again
 * at the beginning of the file. Thread-safe.
 */
int rl_journal_checkpoint(rl_journal *j, uint64_t mark, rl_error *err);
