/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The store's intent journal: entries replayed in order until checkpointed, a torn entry
 * and what follows it not replayed, appends starting over once everything is checkpointed
 * without older rounds coming back, a torn header leaving the previous one standing; and
 * the store's replay of a pooled Prepare whose renames and record a crash lost.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <reflayer/store.h>

#include "journal.h"
#include "rltest.h"

static char dir[PATH_MAX];
static int dir_fd = -1;

static void setup(void)
{
        rlt_init();
        snprintf(dir, sizeof(dir), "%s/j", rlt_scratch());
        cr_assert(mkdir(dir, 0700) == 0);
        dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        cr_assert(dir_fd >= 0);
}

static void teardown(void)
{
        close(dir_fd);
        rlt_fini();
}

TestSuite(journal, .init = setup, .fini = teardown, .timeout = 120);

typedef struct seen {
        char text[64][64];
        unsigned n;
} seen;

static int collect(const char *payload, size_t len, void *userdata, rl_error *err)
{
        (void)err;
        seen *s = userdata;
        cr_assert_lt(s->n, 64u);
        cr_assert_lt(len, 64u);
        memcpy(s->text[s->n], payload, len);
        s->text[s->n++][len] = '\0';
        return 0;
}

static rl_journal *reopen(rl_journal *j, seen *s)
{
        rl_error err = {};
        rl_journal_free(j);
        j = NULL;
        cr_assert_eq(rl_journal_open(dir_fd, "journal", &j, &err), 0, "%s", err.msg);
        *s = (seen){};
        cr_assert_eq(rl_journal_replay(j, collect, s, &err), 0, "%s", err.msg);
        return j;
}

static void append(rl_journal *j, const char *text)
{
        rl_error err = {};
        cr_assert_eq(rl_journal_append(j, text, strlen(text), &err), 0, "%s", err.msg);
}

Test(journal, entries_replay_in_order_until_checkpointed)
{
        seen s;
        rl_journal *j = reopen(NULL, &s);
        cr_assert_eq(s.n, 0u, "a new journal holds nothing");
        struct stat st;
        cr_assert(fstatat(dir_fd, "journal", &st, 0) == 0);
        cr_assert_eq(st.st_size, 2 << 20, "made whole, so that appends allocate nothing");

        append(j, "one");
        append(j, "two");
        uint64_t mark = rl_journal_mark(j);
        append(j, "three");
        j = reopen(j, &s);
        cr_assert_eq(s.n, 3u);
        cr_assert_str_eq(s.text[0], "one");
        cr_assert_str_eq(s.text[2], "three");

        /* A checkpoint at the mark forgets the first two only. */
        rl_error err = {};
        cr_assert_eq(rl_journal_checkpoint(j, mark, &err), 0, "%s", err.msg);
        j = reopen(j, &s);
        cr_assert_eq(s.n, 1u);
        cr_assert_str_eq(s.text[0], "three");
        append(j, "four");
        j = reopen(j, &s);
        cr_assert_eq(s.n, 2u);
        cr_assert_str_eq(s.text[1], "four");

        /* Everything: nothing comes back, and appends start over without reviving the
         * entries further on. */
        cr_assert_eq(rl_journal_checkpoint(j, rl_journal_mark(j), &err), 0, "%s", err.msg);
        j = reopen(j, &s);
        cr_assert_eq(s.n, 0u);
        append(j, "five");
        j = reopen(j, &s);
        cr_assert_eq(s.n, 1u, "an older round's entries came back");
        cr_assert_str_eq(s.text[0], "five");
        rl_journal_free(j);
}

Test(journal, a_torn_entry_ends_the_replay)
{
        seen s;
        rl_journal *j = reopen(NULL, &s);
        append(j, "first");
        append(j, "second");
        append(j, "third");
        rl_journal_free(j);
        /* The last entry (entries start at 8 KiB, one 4 KiB block each) loses a byte of its
         * payload, as a write cut short would leave it; then the same with its header. */
        int fd = openat(dir_fd, "journal", O_RDWR | O_CLOEXEC);
        cr_assert(fd >= 0);
        cr_assert_eq(pwrite(fd, "X", 1, 8192 + 2 * 4096 + 24 + 2), 1);
        j = reopen(NULL, &s);
        cr_assert_eq(s.n, 2u, "a torn entry replayed");
        cr_assert_str_eq(s.text[1], "second");
        /* The next append takes the torn one's place. */
        append(j, "again");
        j = reopen(j, &s);
        cr_assert_eq(s.n, 3u);
        cr_assert_str_eq(s.text[2], "again");
        cr_assert_eq(pwrite(fd, "\x7f", 1, 8192 + 2 * 4096 + 8), 1);
        close(fd);
        j = reopen(j, &s);
        cr_assert_eq(s.n, 2u, "an entry with a torn header replayed");
        rl_journal_free(j);
}

Test(journal, a_full_journal_says_so_and_a_checkpoint_makes_room)
{
        seen s;
        rl_error err = {};
        rl_journal *j = reopen(NULL, &s);
        char big[3500];
        memset(big, 'b', sizeof(big));
        unsigned n = 0;
        int r;
        while ((r = rl_journal_append(j, big, sizeof(big), &err)) == 0)
                n++;
        cr_assert_eq(r, -ENOSPC, "%s", err.msg);
        cr_assert_eq(n, 510u, "2 MiB less two header blocks holds 510 entries of one block");
        cr_assert_eq(rl_journal_append(j, "x", 1, &err), -ENOSPC);
        cr_assert_eq(rl_journal_checkpoint(j, rl_journal_mark(j), &err), 0, "%s", err.msg);
        append(j, "after");
        j = reopen(j, &s);
        cr_assert_eq(s.n, 1u);
        cr_assert_str_eq(s.text[0], "after");
        /* Full once more, all of it checkpointed, and opened again: appends start over at
         * the beginning, all 510 fit again. */
        cr_assert_eq(rl_journal_checkpoint(j, rl_journal_mark(j), &err), 0, "%s", err.msg);
        n = 0;
        while (rl_journal_append(j, big, sizeof(big), &err) == 0)
                n++;
        cr_assert_eq(n, 510u);
        cr_assert_eq(rl_journal_checkpoint(j, rl_journal_mark(j), &err), 0, "%s", err.msg);
        j = reopen(j, &s);
        cr_assert_eq(s.n, 0u);
        n = 0;
        while (rl_journal_append(j, big, sizeof(big), &err) == 0)
                n++;
        cr_assert_eq(n, 510u, "after a reopen, appends went on where the last round ended");
        /* One that could never fit is refused the same way. */
        char *huge = calloc(1, 2 << 20);
        cr_assert(huge);
        cr_assert_eq(rl_journal_append(j, huge, 2 << 20, &err), -ENOSPC);
        free(huge);
        rl_journal_free(j);
}

Test(journal, a_torn_header_leaves_the_previous_one)
{
        seen s;
        rl_error err = {};
        rl_journal *j = reopen(NULL, &s);
        append(j, "a");
        append(j, "b");
        uint64_t mark = rl_journal_mark(j);
        append(j, "c");
        cr_assert_eq(rl_journal_checkpoint(j, mark, &err), 0, "%s", err.msg);
        rl_journal_free(j);
        /* The creation wrote slot 1 (generation 1, at 4 KiB), the checkpoint slot 0
         * (generation 2, at 0): tear slot 0. The older header stands, and its entries are replayed again (a
         * replay makes whole what is whole already). */
        int fd = openat(dir_fd, "journal", O_RDWR | O_CLOEXEC);
        cr_assert(fd >= 0);
        cr_assert_eq(pwrite(fd, "\xff", 1, 20), 1);
        close(fd);
        j = reopen(NULL, &s);
        cr_assert_eq(s.n, 3u, "not the previous header's start");
        cr_assert_str_eq(s.text[0], "a");
        rl_journal_free(j);

        /* Neither header reads: it may hold entries to replay, so the open refuses. */
        fd = openat(dir_fd, "journal", O_RDWR | O_CLOEXEC);
        cr_assert(fd >= 0);
        cr_assert_eq(pwrite(fd, "\xff", 1, 4096 + 20), 1);
        j = NULL;
        cr_assert_eq(rl_journal_open(dir_fd, "journal", &j, &err), -EUCLEAN);
        cr_assert(strstr(err.msg, "neither header reads"), "%s", err.msg);
        /* Neither written (a journal whose making was cut short): made anew. */
        static const char zeros[4096];
        cr_assert_eq(pwrite(fd, zeros, sizeof(zeros), 0), (ssize_t)sizeof(zeros));
        cr_assert_eq(pwrite(fd, zeros, sizeof(zeros), 4096), (ssize_t)sizeof(zeros));
        close(fd);
        j = reopen(NULL, &s);
        cr_assert_eq(s.n, 0u);
        append(j, "new");
        j = reopen(j, &s);
        cr_assert_eq(s.n, 1u);
        cr_assert_str_eq(s.text[0], "new");
        rl_journal_free(j);
}

/* --- the store's replay --------------------------------------------------------------- */

static void open_store(const char *root, rl_store **s)
{
        rl_store_options o = { .pool_size = 1, .jobs = 2 };
        rl_error err = {};
        cr_assert_eq(rl_store_open(root, &o, s, &err), 0, "%s", err.msg);
}

/* A store on a new loop XFS (its root into root) with "base", pooled by one clone. */
static rl_store *pooled_store(char root[PATH_MAX])
{
        rl_store *s = NULL;
        rl_label l = { RL_POOL_LABEL, "1" };
        snprintf(root, PATH_MAX, "%s/store", rlt_mkfs(RLT_XFS, 0, "xfs"));
        open_store(root, &s);
        rlt_store_base(s, &l, 1);
        return s;
}

/* The publish entries of ROOT/journal from its start: ids and pool names. */
static unsigned journal_publishes(const char *root, uint64_t ids[], char pools[][32],
                                  unsigned max)
{
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "%s/journal", root);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        cr_assert(fd >= 0, "%s: %s", p, strerror(errno));
        static char buf[2 << 20];
        cr_assert_eq(read(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
        close(fd);
        unsigned n = 0;
        const char *at = buf + 8192;
        while (n < max && at < buf + sizeof(buf)) {
                const char *e = memmem(at, buf + sizeof(buf) - at, "{\"publish\":", 11);
                if (!e)
                        break;
                cr_assert_eq(sscanf(e, "{\"publish\":%" SCNu64 ",\"pool\":\"%31[^\"]\"", &ids[n],
                                    pools[n]),
                             2, "%.80s", e);
                n++;
                at = e + 1;
        }
        return n;
}

Test(journal, the_store_replays_a_pooled_prepare_a_crash_cut_short)
{
        char root[PATH_MAX], p[PATH_MAX], q[PATH_MAX];
        rl_store *s = pooled_store(root);
        rl_error err = {};
        s = rl_store_free(s);

        /* Three Prepares from the pool, and the journal as it was then, before the close
         * settled them: what a crash would have left. */
        open_store(root, &s);
        const char *made[] = { "from-pool", "from-tmp", "removed" };
        for (unsigned i = 0; i < 3; i++) {
                rl_pool_stats ps0, ps1;
                ps0 = rlt_store_pool_wait(s, 1, 60);
                cr_assert_eq(rl_store_prepare(s, made[i], "base", NULL, 0, NULL, &err), 0, "%s",
                             err.msg);
                rl_store_pool_stats(s, &ps1);
                cr_assert_eq(ps1.hits, ps0.hits + 1, "%s: not from the pool", made[i]);
        }
        snprintf(p, sizeof(p), "%s/journal", root);
        snprintf(q, sizeof(q), "%s/journal.saved", rlt_scratch());
        char *argv[] = { "cp", p, q, NULL };
        cr_assert_eq(rlt_run(argv, NULL, 0), 0);
        s = rl_store_free(s);
        char *argv2[] = { "cp", q, p, NULL };
        cr_assert_eq(rlt_run(argv2, NULL, 0), 0);

        uint64_t ids[4];
        char pools[4][32];
        cr_assert_eq(journal_publishes(root, ids, pools, 4), 3u, "three entries, unsettled");

        /* What the crash undid: the first snapshot's renames and record did not reach the
         * disk (back in pool/, the placeholder), the second's last rename did not (tmp/);
         * the third was removed (trash/). */
        char blank[4096];
        memset(blank, ' ', sizeof(blank) - 1);
        blank[sizeof(blank) - 1] = '\n';
        snprintf(p, sizeof(p), "%s/snapshots/%" PRIu64, root, ids[0]);
        snprintf(q, sizeof(q), "%s/pool/%s", root, pools[0]);
        cr_assert(rename(p, q) == 0, "%s: %s", p, strerror(errno));
        snprintf(p, sizeof(p), "%s/pool/%s/info.json", root, pools[0]);
        FILE *f = fopen(p, "w");
        cr_assert(f);
        cr_assert_eq(fwrite(blank, 1, sizeof(blank), f), sizeof(blank));
        fclose(f);
        snprintf(p, sizeof(p), "%s/snapshots/%" PRIu64, root, ids[1]);
        snprintf(q, sizeof(q), "%s/tmp/%" PRIu64, root, ids[1]);
        cr_assert(rename(p, q) == 0, "%s: %s", p, strerror(errno));
        snprintf(p, sizeof(p), "%s/snapshots/%" PRIu64, root, ids[2]);
        snprintf(q, sizeof(q), "%s/trash/%" PRIu64, root, ids[2]);
        cr_assert(rename(p, q) == 0, "%s: %s", p, strerror(errno));

        open_store(root, &s);
        const char *keys[] = { "from-pool", "from-tmp" };
        for (unsigned i = 0; i < 2; i++) {
                rl_info info;
                cr_assert_eq(rl_store_stat(s, keys[i], &info, &err), 0, "%s: %s", keys[i],
                             err.msg);
                cr_assert_eq(info.kind, RL_KIND_ACTIVE);
                cr_assert_str_eq(info.parent, "base");
                rl_info_clear(&info);
                char why[512] = "";
                cr_assert(rlt_tree_equal(rlt_store_tree(s, "base"), rlt_store_tree(s, keys[i]),
                                         NULL, NULL, why, sizeof(why)),
                          "%s: %s", keys[i], why);
        }
        rl_info info;
        cr_assert_eq(rl_store_stat(s, "removed", &info, &err), -ENOENT,
                     "a removed snapshot came back");
        /* The replay was checkpointed: a second open finds the same store. */
        s = rl_store_free(s);
        open_store(root, &s);
        cr_assert_eq(rl_store_stat(s, "from-pool", &info, &err), 0, "%s", err.msg);
        rl_info_clear(&info);
        s = rl_store_free(s);
}

/* Is id in a publish entry of ROOT/journal (settled or not)? */
static bool journalled(const char *root, uint64_t id)
{
        uint64_t ids[64];
        char pools[64][32];
        unsigned n = journal_publishes(root, ids, pools, 64);
        for (unsigned i = 0; i < n; i++)
                if (ids[i] == id)
                        return true;
        return false;
}

static uint64_t id_of(rl_store *s, const char *key)
{
        rl_info info;
        rl_error err = {};
        cr_assert_eq(rl_store_stat(s, key, &info, &err), 0, "%s", err.msg);
        uint64_t id = info.id;
        rl_info_clear(&info);
        return id;
}

/* Remove key, Prepare it again from the pool (durable): not journalled (why: as it says). */
static void removed_then_prepared_again(rl_store *s, const char *root, const char *key,
                                        const char *why)
{
        rl_error err = {};
        rl_pool_stats ps0, ps1;
        cr_assert_eq(rl_store_remove(s, key, &err), 0, "%s", err.msg);
        ps0 = rlt_store_pool_wait(s, 1, 60);
        cr_assert_eq(rl_store_prepare(s, key, "base", NULL, 0, NULL, &err), 0, "%s", err.msg);
        rl_store_pool_stats(s, &ps1);
        cr_assert_eq(ps1.hits, ps0.hits + 1, "not from the pool");
        cr_expect(!journalled(root, id_of(s, key)), "journalled after %s", why);
}

Test(journal, a_key_removed_and_prepared_again_is_not_journalled_until_flushed)
{
        char root[PATH_MAX];
        rl_store *s = pooled_store(root);
        rl_error err = {};
        rlt_store_pool_wait(s, 1, 60);
        cr_assert_eq(rl_store_prepare(s, "k", "base", NULL, 0, NULL, &err), 0, "%s", err.msg);
        cr_assert(journalled(root, id_of(s, "k")));
        /* Journalled, this Prepare would flush only its entry, not the removal before it: a
         * power cut could then bring the first "k" back beside it, and the store would not
         * open (two snapshots of one key). It takes the way that flushes snapshots/. */
        removed_then_prepared_again(s, root, "k", "a removal of its key");
        /* Another key is journalled as before. */
        rlt_store_pool_wait(s, 1, 60);
        cr_assert_eq(rl_store_prepare(s, "other", "base", NULL, 0, NULL, &err), 0, "%s",
                     err.msg);
        cr_assert(journalled(root, id_of(s, "other")));
        /* An ephemeral one's key too: after a shutdown without a reboot its record still
         * reads, so the same two-of-one-key would follow. */
        rl_prepare_options eph = { .ephemeral = true };
        cr_assert_eq(rl_store_prepare(s, "e", "base", NULL, 0, &eph, &err), 0, "%s", err.msg);
        removed_then_prepared_again(s, root, "e", "an ephemeral removal");
        s = rl_store_free(s);
}
