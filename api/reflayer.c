/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reflayer: the command line. Verbs that need no daemon (clone) call the driver directly.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <reflayer/fsinfo.h>
#include <reflayer/idmap.h>
#include <reflayer/tree.h>
#include <reflayer/usage.h>

#include "util.h"

#define VERSION "0.1.0"
#define PROGRESS_AFTER_NS 1000000000ULL /* a terminal gets progress once a clone runs 1 s */

static const char *prog = "reflayer";

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: %s COMMAND [OPTIONS]\n"
                "\n"
                "Commands:\n"
                "  clone [OPTIONS] SRC DST  replicate the tree SRC as the new directory DST,\n"
                "                           sharing file data by reflink where the filesystem can\n"
                "  usage [--json] DIR       disk usage of the tree DIR that understands reflinks:\n"
                "                           bytes it alone holds vs bytes shared with other files\n"
                "  version                  print the version\n"
                "  help                     show this help\n"
                "\n"
                "clone options:\n"
                "  -j, --jobs N             worker threads (default: online CPUs)\n"
                "      --uid-map C:H:L      shift uids: container id C..C+L-1 -> host id H..;\n"
                "                           repeat or separate ranges with commas\n"
                "      --gid-map C:H:L      the same for gids\n"
                "      --keep-unmapped      keep ids outside the maps instead of failing\n"
                "      --sync               flush the new tree to disk before publishing it\n"
                "      --json               print the summary as JSON\n"
                "      --progress           show progress on stderr (default: on a terminal,\n"
                "                           once the clone has run for a second)\n"
                "      --no-progress        never show progress\n",
                prog);
}

static void human_bytes(char *buf, size_t size, uint64_t b)
{
        static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
        double v = (double)b;
        size_t u = 0;

        while (v >= 1024 && u + 1 < ELEMENTSOF(units)) {
                v /= 1024;
                u++;
        }
        if (u == 0)
                snprintf(buf, size, "%" PRIu64 " B", b);
        else
                snprintf(buf, size, "%.1f %s", v, units[u]);
}

typedef struct progress_state {
        int mode; /* 0: never, 1: always, 2: on a terminal after a second */
        bool shown;
} progress_state;

static void show_progress(const rl_tree_progress *p, void *userdata)
{
        progress_state *s = userdata;
        char bytes[32];

        if (s->mode == 0 || (s->mode == 2 && p->elapsed_ns < PROGRESS_AFTER_NS))
                return;
        human_bytes(bytes, sizeof(bytes), p->bytes);
        double secs = (double)p->elapsed_ns / 1e9;
        /* The total is not known without a second walk; show a moving bar of throughput. */
        static const char spin[] = "|/-\\";
        fprintf(stderr, "\r\033[K%c %" PRIu64 " entries, %s, %.0f entries/s, %.1f s",
                spin[(p->elapsed_ns / 100000000ULL) % 4], p->entries, bytes,
                secs > 0 ? (double)p->entries / secs : 0.0, secs);
        fflush(stderr);
        s->shown = true;
}

static json_t *stats_json(const char *src, const char *dst, const rl_tree_stats *st,
                          const char *fstype, rl_reflink reflink)
{
        json_t *methods = json_object();
        for (int m = 0; m < _RL_CLONE_METHOD_MAX; m++)
                json_object_set_new(methods, rl_clone_method_to_string(m),
                                    json_integer((json_int_t)st->methods[m]));
        return json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
                         "s:I, s:I, s:I, s:o, s:f}",
                         "source", src, "destination", dst, "filesystem", fstype, "reflink",
                         rl_reflink_to_string(reflink), "entries", (json_int_t)st->entries,
                         "dirs", (json_int_t)st->dirs, "regular", (json_int_t)st->regular,
                         "hardlinks", (json_int_t)st->hardlinks, "symlinks",
                         (json_int_t)st->symlinks, "fifos", (json_int_t)st->fifos, "sockets",
                         (json_int_t)st->sockets, "chardevs", (json_int_t)st->chardevs,
                         "blockdevs", (json_int_t)st->blockdevs, "xattrs",
                         (json_int_t)st->xattrs, "bytes", (json_int_t)st->bytes,
                         "bytes_reflinked", (json_int_t)st->bytes_reflinked, "bytes_copied",
                         (json_int_t)st->bytes_copied, "methods", methods, "seconds",
                         (double)st->elapsed_ns / 1e9);
}

static void print_summary(const char *src, const char *dst, const rl_tree_stats *st,
                          const char *fstype)
{
        char bytes[32], refl[32], copied[32];
        uint64_t special = st->fifos + st->sockets + st->chardevs + st->blockdevs;
        double secs = (double)st->elapsed_ns / 1e9;

        human_bytes(bytes, sizeof(bytes), st->bytes);
        human_bytes(refl, sizeof(refl), st->bytes_reflinked);
        human_bytes(copied, sizeof(copied), st->bytes_copied);
        printf("cloned %s -> %s on %s: %" PRIu64 " entries (%" PRIu64 " files, %" PRIu64
               " dirs, %" PRIu64 " symlinks, %" PRIu64 " hardlinks, %" PRIu64
               " special), %s: %s reflinked, %s copied; %.3f s, %.1f us/entry "
               "[reflink %" PRIu64 ", copy_range %" PRIu64 ", read_write %" PRIu64
               ", empty %" PRIu64 "]\n",
               src, dst, fstype, st->entries, st->regular, st->dirs, st->symlinks, st->hardlinks,
               special, bytes, refl, copied, secs,
               st->entries ? secs * 1e6 / (double)st->entries : 0.0,
               st->methods[RL_CLONE_REFLINK], st->methods[RL_CLONE_COPY_RANGE],
               st->methods[RL_CLONE_READ_WRITE], st->methods[RL_CLONE_EMPTY]);
}

/* Split DST into its directory (opened) and last component, ignoring trailing slashes. */
static int open_destination(const char *dst, int *ret_dir_fd, char **ret_name)
{
        _cleanup_free_ char *copy = strdup(dst);
        if (!copy)
                return -ENOMEM;
        size_t len = strlen(copy);
        while (len > 1 && copy[len - 1] == '/')
                copy[--len] = '\0';
        char *slash = strrchr(copy, '/');
        const char *dir = ".", *name = copy;
        if (slash) {
                *slash = '\0';
                dir = slash == copy ? "/" : copy;
                name = slash + 1;
        }
        char *n = strdup(name);
        if (!n)
                return -ENOMEM;
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
                int r = -errno;
                free(n);
                return r;
        }
        *ret_dir_fd = fd;
        *ret_name = n;
        return 0;
}

/* Ctrl-C, SIGTERM, SIGHUP: let the clone stop and remove what it built. A second signal
 * gets the default action (SA_RESETHAND): a way out if removal itself hangs. */
static atomic_bool interrupted;

static void on_signal(int sig _unused_)
{
        atomic_store(&interrupted, true);
}

static void catch_signals(void)
{
        struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESETHAND };
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
}

/* Deep trees need about two fds per level: use what the hard limit allows. */
static void raise_nofile(void)
{
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
}

static int cmd_clone(int argc, char **argv)
{
        enum { OPT_UID_MAP = 256, OPT_GID_MAP, OPT_KEEP, OPT_SYNC, OPT_JSON, OPT_PROGRESS,
               OPT_NO_PROGRESS };
        static const struct option options[] = {
                { "jobs", required_argument, NULL, 'j' },
                { "uid-map", required_argument, NULL, OPT_UID_MAP },
                { "gid-map", required_argument, NULL, OPT_GID_MAP },
                { "keep-unmapped", no_argument, NULL, OPT_KEEP },
                { "sync", no_argument, NULL, OPT_SYNC },
                { "json", no_argument, NULL, OPT_JSON },
                { "progress", no_argument, NULL, OPT_PROGRESS },
                { "no-progress", no_argument, NULL, OPT_NO_PROGRESS },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_(rl_idmap_freep) rl_idmap *uids = NULL;
        _cleanup_(rl_idmap_freep) rl_idmap *gids = NULL;
        _cleanup_(rl_fsinfo_freep) rl_fsinfo *fs = NULL;
        _cleanup_close_ int src_fd = -EBADF, dst_dir_fd = -EBADF;
        _cleanup_free_ char *dst_name = NULL;
        progress_state progress = { .mode = isatty(STDERR_FILENO) ? 2 : 0 };
        rl_tree_options opts = {};
        rl_tree_stats stats;
        bool json = false;
        rl_error err = {};
        int c, r;

        optind = 1;
        while ((c = getopt_long(argc, argv, "j:h", options, NULL)) != -1) {
                switch (c) {
                case 'j': {
                        char *end;
                        errno = 0;
                        unsigned long n = strtoul(optarg, &end, 10);
                        if (errno || *end || n == 0 || n > 1024) {
                                fprintf(stderr, "%s clone: --jobs '%s': expected 1..1024\n",
                                        prog, optarg);
                                return 2;
                        }
                        opts.jobs = (unsigned)n;
                        break;
                }
                case OPT_UID_MAP:
                case OPT_GID_MAP: {
                        rl_idmap **m = c == OPT_UID_MAP ? &uids : &gids;
                        if (!*m && rl_idmap_new(m, &err) < 0)
                                goto fail;
                        if (rl_idmap_parse(*m, optarg, &err) < 0) {
                                fprintf(stderr, "%s clone: --%s: %s\n", prog,
                                        c == OPT_UID_MAP ? "uid-map" : "gid-map", err.msg);
                                return 2;
                        }
                        break;
                }
                case OPT_KEEP:
                        opts.flags |= RL_TREE_KEEP_UNMAPPED;
                        break;
                case OPT_SYNC:
                        opts.flags |= RL_TREE_SYNC;
                        break;
                case OPT_JSON:
                        json = true;
                        break;
                case OPT_PROGRESS:
                        progress.mode = 1;
                        break;
                case OPT_NO_PROGRESS:
                        progress.mode = 0;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (argc - optind != 2) {
                fprintf(stderr, "%s clone: expected SRC and DST\n", prog);
                usage(stderr);
                return 2;
        }
        const char *src = argv[optind], *dst = argv[optind + 1];

        raise_nofile();
        src_fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (src_fd < 0) {
                rl_error_set(&err, -errno, "clone: source '%s'", src);
                goto fail;
        }
        r = open_destination(dst, &dst_dir_fd, &dst_name);
        if (r < 0) {
                rl_error_set(&err, r, "clone: destination '%s'", dst);
                goto fail;
        }
        if (rl_fsinfo_open(dst_dir_fd, &fs, &err) < 0)
                goto fail;
        opts.uid_map = uids;
        opts.gid_map = gids;
        opts.progress = show_progress;
        opts.progress_userdata = &progress;
        opts.cancel = &interrupted;
        catch_signals();

        r = rl_tree_clone(src_fd, dst_dir_fd, dst_name, &opts, &stats, &err);
        if (progress.shown)
                fprintf(stderr, "\r\033[K");
        if (r < 0)
                goto fail;

        if (json) {
                json_t *o = stats_json(src, dst, &stats, rl_fsinfo_type(fs),
                                       rl_fsinfo_reflink(fs));
                if (!o || json_dumpf(o, stdout, JSON_COMPACT | JSON_REAL_PRECISION(6)) < 0) {
                        json_decref(o);
                        fprintf(stderr, "%s clone: cannot write JSON\n", prog);
                        return 1;
                }
                json_decref(o);
                putchar('\n');
        } else {
                print_summary(src, dst, &stats, rl_fsinfo_type(fs));
        }
        return fflush(stdout) == 0 ? 0 : 1;
fail:
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        return 1;
}

static int cmd_usage(int argc, char **argv)
{
        static const struct option options[] = {
                { "json", no_argument, NULL, 'J' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_close_ int fd = -EBADF;
        rl_error err = {};
        rl_usage u;
        bool json = false;
        int c;

        optind = 1;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
                switch (c) {
                case 'J':
                        json = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (argc - optind != 1) {
                fprintf(stderr, "%s usage: expected DIR\n", prog);
                return 2;
        }
        const char *dir = argv[optind];
        raise_nofile();
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
                rl_error_set(&err, -errno, "usage: '%s'", dir);
                goto fail;
        }
        if (rl_usage_tree(fd, 0, &u, &err) < 0)
                goto fail;
        if (json) {
                printf("{\"path\":");
                json_t *p = json_string(dir);
                json_dumpf(p, stdout, JSON_ENCODE_ANY);
                json_decref(p);
                printf(",\"inodes\":%" PRIu64 ",\"bytes\":%" PRIu64
                       ",\"bytes_exclusive\":%" PRIu64 ",\"bytes_shared\":%" PRIu64 "}\n",
                       u.inodes, u.bytes, u.bytes_exclusive, u.bytes_shared);
        } else {
                char b[32], e[32], sh[32];
                human_bytes(b, sizeof(b), u.bytes);
                human_bytes(e, sizeof(e), u.bytes_exclusive);
                human_bytes(sh, sizeof(sh), u.bytes_shared);
                printf("%s: %" PRIu64 " inodes, %s: %s exclusive, %s shared with other files\n",
                       dir, u.inodes, b, e, sh);
        }
        return fflush(stdout) == 0 ? 0 : 1;
fail:
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        return 1;
}

int main(int argc, char **argv)
{
        if (argc < 2) {
                usage(stderr);
                return 2;
        }
        const char *cmd = argv[1];
        if (strcmp(cmd, "clone") == 0)
                return cmd_clone(argc - 1, argv + 1);
        if (strcmp(cmd, "usage") == 0)
                return cmd_usage(argc - 1, argv + 1);
        if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
                printf("reflayer %s\n", VERSION);
                return 0;
        }
        if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
                usage(stdout);
                return 0;
        }
        fprintf(stderr, "%s: unknown command '%s'\n", prog, cmd);
        usage(stderr);
        return 2;
}
