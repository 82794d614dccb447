/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reflayer: the command line. Verbs that need no daemon (clone) call the driver directly.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <libmount.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>

#include <reflayer/client.h>
#include <reflayer/fsinfo.h>
#include <reflayer/idmap.h>
#include <reflayer/tree.h>
#include <reflayer/usage.h>

#include "codec.h"
#include "util.h"

#define VERSION "0.1.0"
#define PROGRESS_AFTER_NS 1000000000ULL /* a terminal gets progress once a clone runs 1 s */

static const char *prog = "reflayer";

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: %s [--socket PATH] [--json] COMMAND [ARGS]\n"
                "\n"
                "Snapshots (through reflayerd, at --socket, $REFLAYER_SOCKET or %s):\n"
                "  prepare KEY [PARENT] [--label K=V]... [--uid-map C:H:L]... [--gid-map C:H:L]...\n"
                "          [--ephemeral|--durable]   a new writable snapshot (a clone of PARENT);\n"
                "                           --ephemeral: never flushed, gone after a reboot;\n"
                "                           --durable: not, even from reflayerd --ephemeral\n"
                "  view KEY PARENT [--label K=V]... [--ephemeral|--durable]\n"
                "                           a new read-only snapshot\n"
                "  commit NAME KEY [--label K=V]...   make the active KEY the layer NAME\n"
                "  rm KEY...                remove snapshots\n"
                "  stat KEY                 kind, parent, labels, times\n"
                "  ls [--filter EXPR]...    list (containerd filters: kind==active, ...)\n"
                "  tree                     the parent chains\n"
                "  usage KEY                bytes the snapshot alone holds, and shared bytes\n"
                "  mounts KEY               the bind mount for it\n"
                "  update KEY --label K=V... [--field labels.K]...   change labels\n"
                "  cleanup                  wait until removed trees are deleted\n"
                "  status                   store, filesystem, reflink, counts\n"
                "  mount KEY TARGET         bind-mount the snapshot at TARGET (read-only for\n"
                "                           views and committed snapshots)\n"
                "  umount TARGET            undo that\n"
                "  apply KEY [FILE|-]       apply an OCI layer tar (plain, gzip, zstd) onto the\n"
                "                           active KEY, all or nothing (default: stdin)\n"
                "  import DIR [--ref NAME]  import an OCI image layout: each layer a committed\n"
                "                           snapshot named by its chain ID\n"                "  diff KEY                 what KEY changed against its parent: A added,\n"
                "                           C changed, D deleted (as docker diff)\n"
                "  export KEY [-o FILE] [--compression none|gzip|zstd]\n"
                "                           those changes as an OCI layer tar (default: stdout);\n"
                "                           prints its digest and diff_id\n"
                "\n"
                "Without a daemon:\n"
                "  clone [OPTIONS] SRC DST  replicate the tree SRC as the new directory DST,\n"
                "                           sharing file data by reflink where the filesystem can\n"
                "                           (--daemon: reflayerd does it, with your permissions)\n"
                "  du [--json] DIR          disk usage of the tree DIR that understands reflinks:\n"
                "                           bytes it alone holds vs bytes shared with other files\n"
                "  version                  the version (and the daemon's, if one answers)\n"
                "  help                     show this help\n"
                "\n"
                "clone options:\n"
                "  -j, --jobs N             worker threads (default: online CPUs)\n"
                "      --uid-map C:H:L      shift uids: container id C..C+L-1 -> host id H..;\n"
                "                           repeat or separate ranges with commas\n"
                "      --gid-map C:H:L      the same for gids\n"
                "      --keep-unmapped      keep ids outside the maps instead of failing\n"
                "      --sync               flush the new tree to disk before publishing it\n"
                "      --subvolume          on btrfs, DST is a subvolume: a snapshot of SRC\n"
                "                           when SRC is one (whatever its size), else filled\n"
                "                           file by file\n"
                "      --json               print the summary as JSON\n"
                "      --progress           show progress on stderr (default: on a terminal,\n"
                "                           once the clone has run for a second)\n"
                "      --no-progress        never show progress\n"
                "      --daemon             ask reflayerd to clone (paths made absolute; it acts\n"
                "                           with your uid, gid and groups)\n"
                "\n"
                "Exit status: 0 done; 1 failed (the message names the key or path and why);\n"
                "2 bad usage; 3 not found; 4 already exists; 5 failed precondition;\n"
                "6 cannot reach or use the daemon.\n",
                prog, RL_DEFAULT_SOCKET);
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

static void print_summary(const char *src, const char *dst, const rl_tree_stats *st,
                          const char *fstype)
{
        char bytes[32], refl[32], copied[32];
        uint64_t special = st->fifos + st->sockets + st->chardevs + st->blockdevs;
        double secs = (double)st->elapsed_ns / 1e9;

        printf("cloned %s -> %s on %s: ", src, dst, fstype);
        if (st->snapshots) {
                printf("a snapshot (%" PRIu64 " btrfs subvolume%s, nested ones included, each "
                       "in one call)",
                       st->snapshots, st->snapshots == 1 ? "" : "s");
                /* Nothing walked, unless owners were shifted in place. */
                if (!st->entries) {
                        printf("; %.3f s\n", secs);
                        return;
                }
                printf(", owners shifted in place: ");
        }
        human_bytes(bytes, sizeof(bytes), st->bytes);
        human_bytes(refl, sizeof(refl), st->bytes_reflinked);
        human_bytes(copied, sizeof(copied), st->bytes_copied);
        printf("%" PRIu64 " entries (%" PRIu64 " files, %" PRIu64
               " dirs, %" PRIu64 " symlinks, %" PRIu64 " hardlinks, %" PRIu64
               " special), %s: %s reflinked, %s copied; %.3f s, %.1f us/entry "
               "[reflink %" PRIu64 ", copy_range %" PRIu64 ", read_write %" PRIu64
               ", empty %" PRIu64 "]\n",
               st->entries, st->regular, st->dirs, st->symlinks, st->hardlinks,
               special, bytes, refl, copied, secs,
               st->entries ? secs * 1e6 / (double)st->entries : 0.0,
               st->methods[RL_CLONE_REFLINK], st->methods[RL_CLONE_COPY_RANGE],
               st->methods[RL_CLONE_READ_WRITE], st->methods[RL_CLONE_EMPTY]);
}

static const char *arg_socket;
static bool arg_json;

/* Exit codes scripts can test, by the daemon's error code. */
static int exit_code(int r)
{
        switch (-r) {
        case ENOENT:
                return 3;
        case EEXIST:
                return 4;
        case EBUSY:
                return 5;
        case ECONNREFUSED:
        case EACCES:
        case ESHUTDOWN:
        case EIO:
                return 6;
        default:
                return 1;
        }
}

static int fail_with(int r, const rl_error *err)
{
        fprintf(stderr, "%s: %s\n", prog, err->msg);
        return exit_code(r);
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

/* --uid-map / --gid-map: add ranges to *m (made on first use). -EINVAL, said on stderr. */
static int add_idmap(rl_idmap **m, const char *option, const char *spec)
{
        rl_error err = {};
        if ((!*m && rl_idmap_new(m, &err) < 0) || rl_idmap_parse(*m, spec, &err) < 0) {
                fprintf(stderr, "%s: --%s: %s\n", prog, option, err.msg);
                return -EINVAL;
        }
        return 0;
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

static int print_clone_result(const char *src, const char *dst, const char *fstype,
                              rl_reflink reflink, const rl_tree_stats *st, bool json)
{
        if (json) {
                json_t *o = rl_clone_result_to_json(src, dst, fstype, reflink, st);
                if (!o || json_dumpf(o, stdout, JSON_COMPACT | JSON_REAL_PRECISION(6)) < 0) {
                        json_decref(o);
                        fprintf(stderr, "%s clone: cannot write JSON\n", prog);
                        return 1;
                }
                json_decref(o);
                putchar('\n');
        } else {
                print_summary(src, dst, st, fstype);
        }
        return fflush(stdout) == 0 ? 0 : 1;
}

/* A path as the daemon must see it: absolute (it does not share our working directory). */
static char *absolute(const char *path)
{
        if (path[0] == '/')
                return strdup(path);
        _cleanup_free_ char *cwd = getcwd(NULL, 0);
        char *out = NULL;
        if (cwd && asprintf(&out, "%s/%s", cwd, path) < 0)
                out = NULL;
        return out;
}

/* clone --daemon: the same clone, done by reflayerd with our permissions. */
static int clone_through_daemon(const char *src, const char *dst, rl_tree_options *opts,
                                bool json)
{
        _cleanup_(rl_client_freep) rl_client *c = NULL;
        _cleanup_free_ char *asrc = absolute(src), *adst = absolute(dst);
        rl_client_clone_result res;
        rl_error err = {};

        if (!asrc || !adst) {
                fprintf(stderr, "%s clone: cannot make the paths absolute: %s\n", prog,
                        rl_strerror(errno));
                return 1;
        }
        int r = rl_client_connect(arg_socket, &c, &err);
        if (r < 0) {
                fprintf(stderr, "%s: %s\n", prog, err.msg);
                return 6;
        }
        progress_state *ps = opts->progress_userdata;
        if (ps->mode == 0)
                opts->progress = NULL; /* no notifications nobody will see */
        catch_signals();
        r = rl_client_clone(c, asrc, adst, opts, &res, &err);
        if (ps->shown)
                fprintf(stderr, "\r\033[K");
        if (r < 0)
                return fail_with(r, &err);
        return print_clone_result(asrc, adst, res.filesystem, res.reflink, &res.stats, json);
}

static int cmd_clone(int argc, char **argv)
{
        enum { OPT_UID_MAP = 256, OPT_GID_MAP, OPT_KEEP, OPT_SYNC, OPT_JSON, OPT_PROGRESS,
               OPT_NO_PROGRESS, OPT_DAEMON, OPT_SUBVOLUME };
        static const struct option options[] = {
                { "jobs", required_argument, NULL, 'j' },
                { "uid-map", required_argument, NULL, OPT_UID_MAP },
                { "gid-map", required_argument, NULL, OPT_GID_MAP },
                { "keep-unmapped", no_argument, NULL, OPT_KEEP },
                { "sync", no_argument, NULL, OPT_SYNC },
                { "json", no_argument, NULL, OPT_JSON },
                { "progress", no_argument, NULL, OPT_PROGRESS },
                { "no-progress", no_argument, NULL, OPT_NO_PROGRESS },
                { "daemon", no_argument, NULL, OPT_DAEMON },
                { "subvolume", no_argument, NULL, OPT_SUBVOLUME },
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
        bool json = false, daemon = false;
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
                case OPT_GID_MAP:
                        if (add_idmap(c == OPT_UID_MAP ? &uids : &gids,
                                      c == OPT_UID_MAP ? "uid-map" : "gid-map", optarg) < 0)
                                return 2;
                        break;
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
                case OPT_DAEMON:
                        daemon = true;
                        break;
                case OPT_SUBVOLUME:
                        opts.flags |= RL_TREE_SUBVOLUME;
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
        opts.uid_map = uids;
        opts.gid_map = gids;
        opts.progress = show_progress;
        opts.progress_userdata = &progress;
        opts.cancel = &interrupted;
        if (daemon)
                return clone_through_daemon(src, dst, &opts, json);

        raise_nofile();
        src_fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (src_fd < 0) {
                rl_error_set(&err, -errno, "clone: source '%s'", src);
                goto fail;
        }
        r = rl_tree_open_destination(dst, &dst_dir_fd, &dst_name, &err);
        if (r < 0) {
                rl_error_prefix(&err, r, "clone");
                goto fail;
        }
        if (rl_fsinfo_open(dst_dir_fd, &fs, &err) < 0)
                goto fail;
        catch_signals();

        r = rl_tree_clone(src_fd, dst_dir_fd, dst_name, &opts, &stats, &err);
        if (progress.shown)
                fprintf(stderr, "\r\033[K");
        if (r < 0)
                goto fail;

        return print_clone_result(src, dst, rl_fsinfo_type(fs), rl_fsinfo_reflink(fs), &stats,
                                  json);
fail:
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        return 1;
}

static int cmd_du(int argc, char **argv)
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
                fprintf(stderr, "%s du: expected DIR\n", prog);
                return 2;
        }
        const char *dir = argv[optind];
        raise_nofile();
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
                rl_error_set(&err, -errno, "du: '%s'", dir);
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
                       ",\"bytes_exclusive\":%" PRIu64 ",\"bytes_shared\":%" PRIu64
                       ",\"bytes_metadata\":%" PRIu64 "}\n",
                       u.inodes, u.bytes, u.bytes_exclusive, u.bytes_shared, u.bytes_metadata);
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

/* --- mount and umount, with libmount ------------------------------------------------------- */

static void mnt_free_contextp(struct libmnt_context **c)
{
        mnt_free_context(*c);
}

/* Perform the mount reflayerd describes for key (bind; rbind and rw/ro options). */
static int do_mount(const rl_mount *m, const char *target, rl_error *err)
{
        _cleanup_(mnt_free_contextp) struct libmnt_context *cxt = mnt_new_context();
        char opts[256] = "";
        if (!cxt)
                return rl_error_set(err, -ENOMEM, "mount");
        for (size_t i = 0; i < m->n_options; i++) {
                if (i)
                        strncat(opts, ",", sizeof(opts) - strlen(opts) - 1);
                strncat(opts, m->options[i], sizeof(opts) - strlen(opts) - 1);
        }
        /* libmount does a read-only bind the two-step way the kernel needs (bind, then
         * remount,bind,ro), which a lone mount(2) with MS_RDONLY would silently skip. */
        if (mnt_context_set_source(cxt, m->source) < 0 || mnt_context_set_target(cxt, target) < 0 ||
            mnt_context_set_options(cxt, opts) < 0)
                return rl_error_set(err, -EINVAL, "mount '%s'", target);
        int rc = mnt_context_mount(cxt);
        if (rc != 0 || mnt_context_get_status(cxt) != 1) {
                char buf[BUFSIZ] = "";
                mnt_context_get_excode(cxt, rc, buf, sizeof(buf));
                return rl_error_set(err, -EIO, "mount %s on '%s': %s", m->source, target,
                                    buf[0] ? buf : "failed");
        }
        return 0;
}

static int do_umount(const char *target, rl_error *err)
{
        _cleanup_(mnt_free_contextp) struct libmnt_context *cxt = mnt_new_context();
        if (!cxt)
                return rl_error_set(err, -ENOMEM, "umount");
        if (mnt_context_set_target(cxt, target) < 0)
                return rl_error_set(err, -EINVAL, "umount '%s'", target);
        int rc = mnt_context_umount(cxt);
        if (rc != 0 || mnt_context_get_status(cxt) != 1) {
                char buf[BUFSIZ] = "";
                mnt_context_get_excode(cxt, rc, buf, sizeof(buf));
                return rl_error_set(err, -EIO, "umount '%s': %s", target,
                                    buf[0] ? buf : "failed");
        }
        return 0;
}

/* --- verbs through reflayerd ------------------------------------------------------------ */

typedef struct verb_args {
        rl_label labels[64];
        size_t n_labels;
        const char *filters[64];
        size_t n_filters;
        const char *fields[64];
        size_t n_fields;
        rl_idmap *uids, *gids;
        const char *ref;         /* import --ref */
        const char *output;      /* export -o */
        const char *compression; /* export --compression */
        bool ephemeral;          /* prepare, view --ephemeral */
        bool durable;            /* prepare, view --durable */
        char *pos[8];
        size_t n_pos;
} verb_args;

static void verb_args_clear(verb_args *a)
{
        rl_idmap_free(a->uids);
        rl_idmap_free(a->gids);
}

/* --label K=V, --filter E, --field F, --uid-map, --gid-map, and positional arguments. */
static int parse_verb(int argc, char **argv, verb_args *a)
{
        enum { O_LABEL = 256, O_FILTER, O_FIELD, O_UID, O_GID, O_REF, O_COMPRESSION,
               O_EPHEMERAL, O_DURABLE };
        static const struct option options[] = {
                { "ref", required_argument, NULL, O_REF },
                { "compression", required_argument, NULL, O_COMPRESSION },
                { "output", required_argument, NULL, 'o' },
                { "label", required_argument, NULL, O_LABEL },
                { "filter", required_argument, NULL, O_FILTER },
                { "field", required_argument, NULL, O_FIELD },
                { "uid-map", required_argument, NULL, O_UID },
                { "gid-map", required_argument, NULL, O_GID },
                { "ephemeral", no_argument, NULL, O_EPHEMERAL },
                { "durable", no_argument, NULL, O_DURABLE },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;
        optind = 1;
        while ((c = getopt_long(argc, argv, "ho:", options, NULL)) != -1) {
                switch (c) {
                case O_REF:
                        a->ref = optarg;
                        break;
                case O_COMPRESSION:
                        a->compression = optarg;
                        break;
                case 'o':
                        a->output = optarg;
                        break;
                case O_EPHEMERAL:
                        a->ephemeral = true;
                        break;
                case O_DURABLE:
                        a->durable = true;
                        break;
                case O_LABEL: {
                        char *eq = strchr(optarg, '=');
                        if (!eq || eq == optarg || a->n_labels == 64) {
                                fprintf(stderr, "%s: --label '%s': expected KEY=VALUE\n", prog,
                                        optarg);
                                return -EINVAL;
                        }
                        *eq = '\0';
                        a->labels[a->n_labels++] = (rl_label){ optarg, eq + 1 };
                        break;
                }
                case O_FILTER:
                        if (a->n_filters == 64)
                                return -EINVAL;
                        a->filters[a->n_filters++] = optarg;
                        break;
                case O_FIELD:
                        if (a->n_fields == 64)
                                return -EINVAL;
                        a->fields[a->n_fields++] = optarg;
                        break;
                case O_UID:
                case O_GID:
                        if (add_idmap(c == O_UID ? &a->uids : &a->gids,
                                      c == O_UID ? "uid-map" : "gid-map", optarg) < 0)
                                return -EINVAL;
                        break;
                case 'h':
                        usage(stdout);
                        exit(0);
                default:
                        return -EINVAL;
                }
        }
        for (; optind < argc; optind++) {
                if (a->n_pos == 8)
                        return -EINVAL;
                a->pos[a->n_pos++] = argv[optind];
        }
        return 0;
}

static void time_str(char *buf, size_t size, int64_t ns)
{
        time_t t = (time_t)(ns / 1000000000);
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm);
}

/* A snapshot's kind as the human-readable output shows it: "active", or "active, ephemeral"
 * (and "view, ephemeral"). */
static const char *kind_text(const rl_info *i)
{
        if (i->ephemeral && i->kind == RL_KIND_ACTIVE)
                return "active, ephemeral";
        if (i->ephemeral && i->kind == RL_KIND_VIEW)
                return "view, ephemeral";
        return rl_kind_to_string(i->kind);
}

static void print_json(json_t *o)
{
        if (o) {
                json_dumpf(o, stdout, JSON_COMPACT | JSON_ENCODE_ANY);
                putchar('\n');
                json_decref(o);
        }
}

static void print_mount(const rl_mount *m)
{
        if (arg_json) {
                print_json(rl_mount_to_json(m));
                return;
        }
        printf("mount -t %s %s TARGET -o ", m->type, m->source);
        for (size_t i = 0; i < m->n_options; i++)
                printf("%s%s", i ? "," : "", m->options[i]);
        putchar('\n');
}

/* apply KEY [FILE]: the layer from FILE, or from stdin ("-" or none). */
static int verb_apply(rl_client *c, const verb_args *a, rl_error *err)
{
        const char *file = a->n_pos > 1 ? a->pos[1] : "-";
        _cleanup_close_ int fd = strcmp(file, "-") ? open(file, O_RDONLY | O_CLOEXEC)
                                                   : fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return rl_error_set(err, -errno, "apply: open '%s'", file);
        progress_state ps = { .mode = isatty(STDERR_FILENO) ? 2 : 0 };
        rl_apply_options o = { .uid_map = a->uids,
                               .gid_map = a->gids,
                               .progress = ps.mode ? show_progress : NULL,
                               .progress_userdata = &ps,
                               .cancel = &interrupted };
        rl_layer_stats st;
        catch_signals();
        int r = rl_client_apply(c, a->pos[0], fd, &o, &st, err);
        if (ps.shown)
                fprintf(stderr, "\r\033[K");
        if (r < 0)
                return r;
        if (arg_json) {
                print_json(rl_layer_stats_to_json(&st));
        } else {
                char b[32];
                human_bytes(b, sizeof(b), st.bytes);
                printf("applied %s onto %s: %" PRIu64 " entries, %" PRIu64 " whiteouts, %" PRIu64
                       " opaque dirs, %s of data; diff_id %s; %.3f s\n",
                       file, a->pos[0], st.entries, st.whiteouts, st.opaques, b, st.diff_id,
                       (double)st.elapsed_ns / 1e9);
        }
        return 0;
}

static int print_change(const rl_change *ch, void *userdata)
{
        json_t *arr = userdata;
        if (arr)
                return json_array_append_new(arr, rl_change_to_json(ch)) < 0 ? -ENOMEM : 0;
        char path[PATH_MAX + 2];
        rl_change_path(ch, path, sizeof(path));
        printf("%c %s\n", (char)ch->kind, path);
        return 0;
}

/* diff KEY: the changes against the parent, as `docker diff` prints them. */
static int verb_diff(rl_client *c, const verb_args *a, rl_error *err)
{
        json_t *arr = arg_json ? json_array() : NULL;
        rl_diff_stats st;
        int r = rl_client_diff(c, a->pos[0], print_change, arr, &st, err);
        if (r == 0 && arr) {
                json_t *o = rl_diff_stats_to_json(&st);
                if (o)
                        json_object_set(o, "changes", arr);
                print_json(o);
        }
        json_decref(arr);
        return r;
}

/* export KEY [-o FILE] [--compression none|gzip|zstd]: the changes as an OCI layer. */
static int verb_export(rl_client *c, const verb_args *a, rl_error *err)
{
        rl_export_options o = { .cancel = &interrupted };
        if (a->compression && rl_compression_from_string(a->compression, &o.compression) < 0)
                return rl_error_set(err, -EINVAL, "export: --compression '%s': none, gzip or zstd",
                                    a->compression);
        const char *out = a->output && strcmp(a->output, "-") ? a->output : NULL;
        if (!out && isatty(STDOUT_FILENO))
                return rl_error_set(err, -EINVAL,
                                    "export: a layer is binary; give -o FILE or redirect "
                                    "stdout");
        _cleanup_close_ int fd = out ? open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)
                                     : fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return rl_error_set(err, -errno, "export: open '%s'", out ? out : "stdout");
        rl_layer_stats st;
        catch_signals();
        int r = rl_client_export(c, a->pos[0], fd, &o, &st, err);
        if (r < 0) {
                if (out)
                        unlink(out);
                return r;
        }
        /* The layer may be on stdout: the summary goes where it cannot mix with it. */
        FILE *f = out ? stdout : stderr;
        if (arg_json) {
                json_t *j = rl_layer_stats_to_json(&st);
                if (j && json_dumpf(j, f, JSON_COMPACT) == 0)
                        fputc('\n', f);
                json_decref(j);
        } else {
                fprintf(f,
                        "exported %s: %" PRIu64 " entries, %" PRIu64 " whiteouts, %" PRIu64
                        " opaque dirs, %" PRIu64 " bytes (%s)\ndigest:  %s\ndiff_id: %s\n",
                        a->pos[0], st.entries, st.whiteouts, st.opaques, st.size,
                        rl_compression_to_string(o.compression), st.digest, st.diff_id);
        }
        return 0;
}

/* import DIR [--ref NAME]: an OCI image layout, each layer a committed snapshot. */
static int verb_import(rl_client *c, const verb_args *a, rl_error *err)
{
        _cleanup_close_ int fd = open(a->pos[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return rl_error_set(err, -errno, "import: open '%s'", a->pos[0]);
        progress_state ps = { .mode = isatty(STDERR_FILENO) ? 2 : 0 };
        rl_import_options o = { .ref = a->ref,
                                .progress = ps.mode ? show_progress : NULL,
                                .progress_userdata = &ps,
                                .cancel = &interrupted };
        rl_import_result res;
        catch_signals();
        int r = rl_client_import(c, fd, &o, &res, err);
        if (ps.shown)
                fprintf(stderr, "\r\033[K");
        if (r < 0)
                return r;
        if (arg_json) {
                print_json(rl_import_result_to_json(&res));
        } else {
                char b[32];
                human_bytes(b, sizeof(b), res.bytes);
                printf("imported %s%s%s: %u layers, %u new (%s read), %u already stored; "
                       "%.3f s\ntop: %s\n",
                       a->pos[0], a->ref ? ":" : "", a->ref ? a->ref : "", res.layers,
                       res.layers_new, b, res.layers - res.layers_new,
                       (double)res.elapsed_ns / 1e9, res.top[0] ? res.top : "(no layers)");
        }
        return 0;
}

static int cmd_daemon(const char *verb, int argc, char **argv)
{
        _cleanup_(rl_client_freep) rl_client *c = NULL;
        verb_args a = {};
        rl_error err = {};
        int r, status = 0;

        if (parse_verb(argc, argv, &a) < 0) {
                verb_args_clear(&a);
                return 2;
        }
        struct {
                const char *verb;
                size_t min, max;
        } arity[] = { { "prepare", 1, 2 }, { "view", 2, 2 },  { "commit", 2, 2 },
                      { "rm", 1, 8 },      { "stat", 1, 1 },  { "ls", 0, 0 },
                      { "tree", 0, 0 },    { "usage", 1, 1 }, { "mounts", 1, 1 },
                      { "update", 1, 1 },  { "cleanup", 0, 0 }, { "status", 0, 0 },
                      { "mount", 2, 2 },     { "apply", 1, 2 },  { "import", 1, 1 },
                      { "diff", 1, 1 },      { "export", 1, 1 } };
        for (size_t i = 0; i < ELEMENTSOF(arity); i++)
                if (!strcmp(arity[i].verb, verb) &&
                    (a.n_pos < arity[i].min || a.n_pos > arity[i].max)) {
                        fprintf(stderr, "%s %s: wrong number of arguments (see %s help)\n", prog,
                                verb, prog);
                        verb_args_clear(&a);
                        return 2;
                }
        r = rl_client_connect(arg_socket, &c, &err);
        if (r < 0) {
                verb_args_clear(&a);
                fprintf(stderr, "%s: %s\n", prog, err.msg);
                return 6;
        }
        if (!strcmp(verb, "prepare") || !strcmp(verb, "view")) {
                /* A terminal sees progress once a Prepare has taken a second; Ctrl-C
                 * abandons it (the daemon publishes nothing). */
                progress_state ps = { .mode = isatty(STDERR_FILENO) ? 2 : 0 };
                rl_prepare_options o = { .uid_map = a.uids,
                                         .gid_map = a.gids,
                                         .progress = ps.mode ? show_progress : NULL,
                                         .progress_userdata = &ps,
                                         .cancel = &interrupted,
                                         .ephemeral = a.ephemeral,
                                         .durable = a.durable };
                rl_mount m;
                catch_signals();
                r = (verb[0] == 'p' ? rl_client_prepare : rl_client_view)(
                        c, a.pos[0], a.n_pos > 1 ? a.pos[1] : NULL, a.labels, a.n_labels, &o, &m,
                        &err);
                if (ps.shown)
                        fprintf(stderr, "\r\033[K");
                if (r == 0) {
                        print_mount(&m);
                        rl_mount_clear(&m);
                }
        } else if (!strcmp(verb, "apply")) {
                r = verb_apply(c, &a, &err);
        } else if (!strcmp(verb, "import")) {
                r = verb_import(c, &a, &err);
        } else if (!strcmp(verb, "diff")) {
                r = verb_diff(c, &a, &err);
        } else if (!strcmp(verb, "export")) {
                r = verb_export(c, &a, &err);
        } else if (!strcmp(verb, "commit")) {
                r = rl_client_commit(c, a.pos[0], a.pos[1], a.labels, a.n_labels, &err);
        } else if (!strcmp(verb, "rm")) {
                for (size_t i = 0; i < a.n_pos; i++) {
                        rl_error e = {};
                        int q = rl_client_remove(c, a.pos[i], &e);
                        if (q < 0) {
                                status = fail_with(q, &e);
                                r = 0;
                        }
                }
        } else if (!strcmp(verb, "stat")) {
                rl_info i;
                r = rl_client_stat(c, a.pos[0], &i, &err);
                if (r == 0) {
                        if (arg_json) {
                                print_json(rl_info_to_json(&i));
                        } else {
                                char t1[64], t2[64];
                                time_str(t1, sizeof(t1), i.created_ns);
                                time_str(t2, sizeof(t2), i.updated_ns);
                                printf("name:    %s\nkind:    %s\nparent:  %s\ncreated: %s\n"
                                       "updated: %s\n",
                                       i.name, kind_text(&i), i.parent ? i.parent : "-", t1,
                                       t2);
                                for (size_t k = 0; k < i.n_labels; k++)
                                        printf("label:   %s=%s\n", i.labels[k].key,
                                               i.labels[k].value);
                        }
                        rl_info_clear(&i);
                }
        } else if (!strcmp(verb, "ls") || !strcmp(verb, "tree")) {
                rl_info *infos = NULL;
                size_t n = 0;
                r = rl_client_list(c, a.filters, a.n_filters, &infos, &n, &err);
                if (r == 0 && arg_json) {
                        json_t *arr = json_array();
                        for (size_t i = 0; i < n; i++)
                                json_array_append_new(arr, rl_info_to_json(&infos[i]));
                        print_json(arr);
                } else if (r == 0 && verb[0] == 'l') {
                        printf("%-40s %-40s %s\n", "KEY", "PARENT", "KIND");
                        for (size_t i = 0; i < n; i++)
                                printf("%-40s %-40s %s\n", infos[i].name,
                                       infos[i].parent ? infos[i].parent : "",
                                       kind_text(&infos[i]));
                } else if (r == 0) {
                        /* Each snapshot below its parent, roots first. */
                        for (size_t i = 0; i < n; i++) {
                                if (infos[i].parent)
                                        continue;
                                const char *stack_name[256];
                                int depth[256], top = 0;
                                stack_name[top] = infos[i].name;
                                depth[top++] = 0;
                                while (top > 0) {
                                        top--;
                                        const char *nm = stack_name[top];
                                        int d = depth[top];
                                        const rl_info *self = NULL;
                                        for (size_t k = 0; k < n; k++)
                                                if (!strcmp(infos[k].name, nm))
                                                        self = &infos[k];
                                        printf("%*s%s%s (%s)\n", d * 2, "", d ? "└─ " : "", nm,
                                               self ? kind_text(self) : "?");
                                        for (size_t k = 0; k < n && top < 256; k++)
                                                if (infos[k].parent &&
                                                    !strcmp(infos[k].parent, nm)) {
                                                        stack_name[top] = infos[k].name;
                                                        depth[top++] = d + 1;
                                                }
                                }
                        }
                }
                rl_info_array_free(infos, n);
        } else if (!strcmp(verb, "usage")) {
                rl_usage u;
                r = rl_client_usage(c, a.pos[0], &u, &err);
                if (r == 0 && arg_json) {
                        print_json(rl_usage_to_json(&u));
                } else if (r == 0) {
                        char b[32], e[32], sh[32];
                        human_bytes(b, sizeof(b), u.bytes);
                        human_bytes(e, sizeof(e), u.bytes_exclusive);
                        human_bytes(sh, sizeof(sh), u.bytes_shared);
                        printf("%s: %" PRIu64 " inodes, %s: %s its own, %s shared\n", a.pos[0],
                               u.inodes, b, e, sh);
                }
        } else if (!strcmp(verb, "mount")) {
                rl_mount m;
                r = rl_client_mounts(c, a.pos[0], &m, &err);
                if (r == 0) {
                        r = do_mount(&m, a.pos[1], &err);
                        rl_mount_clear(&m);
                        if (r < 0) {
                                verb_args_clear(&a);
                                fprintf(stderr, "%s: %s\n", prog, err.msg);
                                return 1;
                        }
                }
        } else if (!strcmp(verb, "mounts")) {
                rl_mount m;
                r = rl_client_mounts(c, a.pos[0], &m, &err);
                if (r == 0) {
                        print_mount(&m);
                        rl_mount_clear(&m);
                }
        } else if (!strcmp(verb, "update")) {
                rl_info in = { .name = a.pos[0], .labels = a.labels, .n_labels = a.n_labels };
                rl_info out;
                /* Without --field, each --label sets that one label. */
                const char *fields[64];
                size_t nf = a.n_fields;
                for (size_t i = 0; i < nf; i++)
                        fields[i] = a.fields[i];
                char names[64][300];
                for (size_t i = 0; nf == 0 && i < a.n_labels; i++) {
                        snprintf(names[i], sizeof(names[i]), "labels.%s", a.labels[i].key);
                        fields[i] = names[i];
                }
                if (!nf)
                        nf = a.n_labels;
                r = rl_client_update(c, &in, fields, nf, &out, &err);
                if (r == 0) {
                        if (arg_json)
                                print_json(rl_info_to_json(&out));
                        rl_info_clear(&out);
                }
        } else if (!strcmp(verb, "cleanup")) {
                r = rl_client_cleanup(c, &err);
        } else if (!strcmp(verb, "status")) {
                char *result = NULL;
                r = rl_client_call(c, "Status", NULL, &result, &err);
                if (r == 0 && arg_json) {
                        printf("%s\n", result);
                } else if (r == 0) {
                        json_t *o = json_loads(result, 0, NULL);
                        json_t *fs = json_object_get(o, "filesystem"), *n = json_object_get(o, "snapshots");
                        printf("reflayerd %s\nstore:      %s\nfilesystem: %s on %s (%s)\n"
                               "reflink:    %s\nsnapshots:  %" JSON_INTEGER_FORMAT " active, %" JSON_INTEGER_FORMAT
                               " views, %" JSON_INTEGER_FORMAT " committed\n",
                               json_string_value(json_object_get(o, "version")),
                               json_string_value(json_object_get(o, "root")),
                               json_string_value(json_object_get(fs, "type")),
                               json_string_value(json_object_get(fs, "mountpoint")),
                               json_string_value(json_object_get(fs, "source")),
                               json_string_value(json_object_get(o, "reflink")),
                               json_integer_value(json_object_get(n, "active")),
                               json_integer_value(json_object_get(n, "view")),
                               json_integer_value(json_object_get(n, "committed")));
                        json_decref(o);
                }
                free(result);
        }
        verb_args_clear(&a);
        if (r < 0)
                return fail_with(r, &err);
        return status;
}

int main(int argc, char **argv)
{
        static const char *daemon_verbs[] = { "prepare", "view",   "commit",  "rm",
                                              "stat",    "ls",     "tree",    "usage",
                                              "mounts",  "update", "cleanup", "status",
                                              "mount",   "apply",  "import",  "diff",
                                              "export" };
        int i = 1;
        /* Global options come before the command. */
        for (; i < argc && argv[i][0] == '-'; i++) {
                if (!strcmp(argv[i], "--json")) {
                        arg_json = true;
                } else if (!strcmp(argv[i], "--socket") && i + 1 < argc) {
                        arg_socket = argv[++i];
                } else if (!strncmp(argv[i], "--socket=", 9)) {
                        arg_socket = argv[i] + 9;
                } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
                        usage(stdout);
                        return 0;
                } else if (!strcmp(argv[i], "--version")) {
                        printf("reflayer %s\n", VERSION);
                        return 0;
                } else {
                        fprintf(stderr, "%s: unknown option '%s'\n", prog, argv[i]);
                        usage(stderr);
                        return 2;
                }
        }
        if (i >= argc) {
                usage(stderr);
                return 2;
        }
        const char *cmd = argv[i];
        int sub_argc = argc - i;
        char **sub_argv = argv + i;
        if (strcmp(cmd, "clone") == 0)
                return cmd_clone(sub_argc, sub_argv);
        if (strcmp(cmd, "du") == 0)
                return cmd_du(sub_argc, sub_argv);
        if (strcmp(cmd, "umount") == 0) {
                rl_error err = {};
                if (sub_argc != 2) {
                        fprintf(stderr, "%s umount: expected TARGET\n", prog);
                        return 2;
                }
                if (do_umount(sub_argv[1], &err) < 0) {
                        fprintf(stderr, "%s: %s\n", prog, err.msg);
                        return 1;
                }
                return 0;
        }
        for (size_t k = 0; k < ELEMENTSOF(daemon_verbs); k++)
                if (strcmp(cmd, daemon_verbs[k]) == 0)
                        return cmd_daemon(cmd, sub_argc, sub_argv);
        if (strcmp(cmd, "version") == 0) {
                printf("reflayer %s\n", VERSION);
                _cleanup_(rl_client_freep) rl_client *c = NULL;
                char *result = NULL;
                if (rl_client_connect(arg_socket, &c, NULL) == 0 &&
                    rl_client_call(c, "Version", NULL, &result, NULL) == 0) {
                        json_t *o = json_loads(result, 0, NULL);
                        printf("reflayerd %s\n", json_string_value(json_object_get(o, "version")));
                        json_decref(o);
                        free(result);
                }
                return 0;
        }
        if (strcmp(cmd, "help") == 0) {
                usage(stdout);
                return 0;
        }
        fprintf(stderr, "%s: unknown command '%s'\n", prog, cmd);
        usage(stderr);
        return 2;
}
