/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The crash test's child: store operations without pause (prepare from base, write a marker,
 * commit; views; removes) until it is killed. Usage: crash-child ROOT SHARED-FILE SEED.
 * Exits non-zero (3-9) only when an operation fails, which the test reports.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <reflayer/store.h>

#include "crash.h"

static uint64_t rnd_state;
static uint64_t rnd(void)
{
        rnd_state ^= rnd_state << 13;
        rnd_state ^= rnd_state >> 7;
        rnd_state ^= rnd_state << 17;
        return rnd_state;
}

/* The child: operations without end, until killed. */
static void child(const char *root, shared *sh, uint64_t seed)
{
        rl_store *s = NULL;
        rl_error err = {};
        char key[64], name[64], path[PATH_MAX];
        unsigned mine[64], n_mine = 0; /* layers this child committed */

        rnd_state = seed;
        sh->op = OP_OPEN;
        if (rl_store_open(root, &(rl_store_options){ .jobs = 2 }, &s, &err) < 0)
                _exit(3);
        for (;;) {
                unsigned k = __atomic_add_fetch(&sh->seq, 1, __ATOMIC_SEQ_CST);
                switch (rnd() % 4) {
                case 0:
                case 1: {
                        /* prepare from base, write a marker, commit */
                        snprintf(key, sizeof(key), "active-%u", k);
                        snprintf(name, sizeof(name), "layer-%u", k);
                        sh->op = OP_PREPARE;
                        if (rl_store_prepare(s, key, "base", NULL, 0, NULL, &err) < 0)
                                _exit(4);
                        sh->op = OP_WRITE;
                        rl_mount m;
                        if (rl_store_mounts(s, key, &m, &err) < 0)
                                _exit(5);
                        snprintf(path, sizeof(path), "%s/marker", m.source);
                        rl_mount_clear(&m);
                        FILE *f = fopen(path, "w");
                        if (!f)
                                _exit(6);
                        fprintf(f, "%s", name);
                        fclose(f);
                        if (rnd() % 4 == 0)
                                break; /* leave it active */
                        sh->op = OP_COMMIT;
                        rl_label l[] = { { "marker", name } };
                        if (rl_store_commit(s, name, key, l, 1, &err) < 0)
                                _exit(7);
                        if (n_mine < 64)
                                mine[n_mine++] = k;
                        break;
                }
                case 2:
                        snprintf(key, sizeof(key), "view-%u", k);
                        sh->op = OP_VIEW;
                        if (rl_store_view(s, key, "base", NULL, 0, NULL, &err) < 0)
                                _exit(8);
                        break;
                case 3: {
                        /* remove a layer this child made, and maybe a view */
                        if (n_mine) {
                                unsigned j = (unsigned)(rnd() % n_mine);
                                snprintf(key, sizeof(key), "layer-%u", mine[j]);
                                mine[j] = mine[--n_mine];
                        } else {
                                snprintf(key, sizeof(key), "layer-%u", k);
                        }
                        sh->op = OP_REMOVE;
                        int r = rl_store_remove(s, key, &err);
                        if (r < 0 && r != -ENOENT)
                                _exit(9);
                        snprintf(key, sizeof(key), "view-%u", (unsigned)(rnd() % k) + 1);
                        r = rl_store_remove(s, key, &err);
                        if (r < 0 && r != -ENOENT)
                                _exit(9);
                        break;
                }
                }
                sh->op = OP_IDLE;
        }
}

int main(int argc, char **argv)
{
        if (argc != 4)
                return 2;
        int fd = open(argv[2], O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return 2;
        shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (sh == MAP_FAILED)
                return 2;
        child(argv[1], sh, strtoull(argv[3], NULL, 10));
        return 0;
}
