/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * filter.c owns walk filters: parsing containerd's filter syntax, and matching.
 */
#include <errno.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "filter.h"
#include "util.h"

#define PATH_MAX_PARTS 2

typedef enum op { OP_PRESENT, OP_EQ, OP_NE, OP_MATCH } op;

typedef struct term {
        char *path[PATH_MAX_PARTS];
        size_t n_path;
        op op;
        char *value;
        regex_t re;
        bool has_re;
} term;

typedef struct conj {
        term *terms;
        size_t n;
} conj;

struct rl_filter {
        conj *alts;
        size_t n;
};

typedef struct parser {
        const char *src, *p;
        rl_error *err;
} parser;

static int syntax(parser *ps, const char *what)
{
        return rl_error_set(ps->err, -EINVAL, "filter '%s': %s at column %zu", ps->src, what,
                            (size_t)(ps->p - ps->src) + 1);
}

static void skip_space(parser *ps)
{
        while (*ps->p == ' ' || *ps->p == '\t')
                ps->p++;
}

/* "quoted" with \" \\ \n \t escapes. */
static int parse_quoted(parser *ps, char **ret)
{
        size_t cap = strlen(ps->p) + 1, len = 0;
        _cleanup_free_ char *out = malloc(cap);

        if (!out)
                return -ENOMEM;
        ps->p++;
        for (;;) {
                char c = *ps->p++;
                if (c == '\0') {
                        ps->p--;
                        return syntax(ps, "unterminated quote");
                }
                if (c == '"')
                        break;
                if (c == '\\') {
                        c = *ps->p++;
                        switch (c) {
                        case 'n':
                                c = '\n';
                                break;
                        case 't':
                                c = '\t';
                                break;
                        case '"':
                        case '\\':
                                break;
                        default:
                                ps->p--;
                                return syntax(ps, "unknown escape");
                        }
                }
                out[len++] = c;
        }
        out[len] = '\0';
        *ret = TAKE_PTR(out);
        return 0;
}

static bool ident_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '-' || c == '/';
}

static int parse_component(parser *ps, char **ret)
{
        if (*ps->p == '"')
                return parse_quoted(ps, ret);
        const char *start = ps->p;
        while (ident_char(*ps->p))
                ps->p++;
        if (ps->p == start)
                return syntax(ps, "expected a field name");
        *ret = strndup(start, ps->p - start);
        return *ret ? 0 : -ENOMEM;
}

/* A regular expression may also be quoted /like this/ or |like this|, as containerd
 * allows; the delimiter is escaped with a backslash inside. */
static int parse_delimited(parser *ps, char delim, char **ret)
{
        size_t cap = strlen(ps->p) + 1, len = 0;
        _cleanup_free_ char *out = malloc(cap);

        if (!out)
                return -ENOMEM;
        ps->p++;
        for (;;) {
                char c = *ps->p++;
                if (c == '\0') {
                        ps->p--;
                        return syntax(ps, "unterminated regular expression");
                }
                if (c == delim)
                        break;
                if (c == '\\' && *ps->p == delim)
                        c = *ps->p++;
                out[len++] = c;
        }
        out[len] = '\0';
        *ret = TAKE_PTR(out);
        return 0;
}

static int parse_value(parser *ps, bool regex, char **ret)
{
        skip_space(ps);
        if (*ps->p == '"')
                return parse_quoted(ps, ret);
        if (regex && (*ps->p == '/' || *ps->p == '|'))
                return parse_delimited(ps, *ps->p, ret);
        /* Unquoted: up to a comma or white space; "a b" must be quoted. */
        const char *start = ps->p;
        while (*ps->p && *ps->p != ',' && *ps->p != ' ' && *ps->p != '\t')
                ps->p++;
        if (ps->p == start)
                return syntax(ps, "expected a value");
        *ret = strndup(start, ps->p - start);
        return *ret ? 0 : -ENOMEM;
}

static void term_clear(term *t)
{
        for (size_t i = 0; i < t->n_path; i++)
                free(t->path[i]);
        free(t->value);
        if (t->has_re)
                regfree(&t->re);
}

static int parse_term(parser *ps, term *t)
{
        int r;

        skip_space(ps);
        for (;;) {
                if (t->n_path == PATH_MAX_PARTS)
                        return syntax(ps, "field path too long (fields: kind, name, parent, "
                                          "labels.KEY)");
                r = parse_component(ps, &t->path[t->n_path]);
                if (r < 0)
                        return r;
                t->n_path++;
                if (*ps->p != '.')
                        break;
                ps->p++;
        }
        const char *f = t->path[0];
        bool known = (t->n_path == 1 && (!strcmp(f, "kind") || !strcmp(f, "name") ||
                                         !strcmp(f, "parent"))) ||
                     (t->n_path == 2 && !strcmp(f, "labels"));
        if (!known)
                return syntax(ps, "unknown field (fields: kind, name, parent, labels.KEY)");
        skip_space(ps);
        if (*ps->p == ',' || *ps->p == '\0') {
                t->op = OP_PRESENT;
                return 0;
        }
        if (!strncmp(ps->p, "==", 2))
                t->op = OP_EQ;
        else if (!strncmp(ps->p, "!=", 2))
                t->op = OP_NE;
        else if (!strncmp(ps->p, "~=", 2))
                t->op = OP_MATCH;
        else
                return syntax(ps, "expected ==, != or ~=");
        ps->p += 2;
        r = parse_value(ps, t->op == OP_MATCH, &t->value);
        if (r < 0)
                return r;
        if (t->op == OP_MATCH) {
                if (regcomp(&t->re, t->value, REG_EXTENDED | REG_NOSUB) != 0)
                        return syntax(ps, "bad regular expression");
                t->has_re = true;
        }
        skip_space(ps);
        return 0;
}

static int parse_conj(const char *src, conj *c, rl_error *err)
{
        parser ps = { src, src, err };

        for (;;) {
                term *terms = realloc(c->terms, (c->n + 1) * sizeof(*terms));
                if (!terms)
                        return rl_error_set(err, -ENOMEM, "filter");
                c->terms = terms;
                terms[c->n] = (term){};
                int r = parse_term(&ps, &terms[c->n]);
                c->n++;
                if (r < 0)
                        return r == -ENOMEM ? rl_error_set(err, r, "filter") : r;
                if (*ps.p == '\0')
                        return 0;
                if (*ps.p != ',')
                        return syntax(&ps, "expected ','");
                ps.p++;
        }
}

rl_filter *rl_filter_free(rl_filter *f)
{
        if (!f)
                return NULL;
        for (size_t i = 0; i < f->n; i++) {
                for (size_t j = 0; j < f->alts[i].n; j++)
                        term_clear(&f->alts[i].terms[j]);
                free(f->alts[i].terms);
        }
        free(f->alts);
        free(f);
        return NULL;
}

void rl_filter_freep(rl_filter **f)
{
        rl_filter_free(*f);
}

int rl_filter_parse(const char *const *filters, size_t n, rl_filter **ret, rl_error *err)
{
        _cleanup_(rl_filter_freep) rl_filter *f = calloc(1, sizeof(*f));

        if (!f)
                return rl_error_set(err, -ENOMEM, "filter");
        for (size_t i = 0; i < n; i++) {
                /* An empty filter matches everything, as in containerd. */
                if (!filters[i] || !filters[i][0])
                        continue;
                conj *alts = realloc(f->alts, (f->n + 1) * sizeof(*alts));
                if (!alts)
                        return rl_error_set(err, -ENOMEM, "filter");
                f->alts = alts;
                alts[f->n] = (conj){};
                f->n++;
                int r = parse_conj(filters[i], &alts[f->n - 1], err);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(f);
        return 0;
}

static bool term_match(const term *t, rl_filter_get_fn get, void *obj)
{
        const char *v = get(obj, (const char *const *)t->path, t->n_path);

        switch (t->op) {
        case OP_PRESENT:
                return v != NULL;
        case OP_EQ:
                return v && strcmp(v, t->value) == 0;
        case OP_NE:
                return !v || strcmp(v, t->value) != 0;
        case OP_MATCH:
                /* As containerd: an absent field is matched as the empty string. */
                return regexec(&t->re, v ? v : "", 0, NULL, 0) == 0;
        }
        return false;
}

bool rl_filter_match(const rl_filter *f, rl_filter_get_fn get, void *obj)
{
        if (!f || f->n == 0)
                return true;
        for (size_t i = 0; i < f->n; i++) {
                bool all = true;
                for (size_t j = 0; j < f->alts[i].n && all; j++)
                        all = term_match(&f->alts[i].terms[j], get, obj);
                if (all)
                        return true;
        }
        return false;
}
