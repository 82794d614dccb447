/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The JSON shapes of reflayer's results (api/PROTOCOL.md), in one place: reflayerd encodes
 * them, libreflayer-client decodes them, and the CLI prints them with --json.
 */
#pragma once

#include <jansson.h>

#include <reflayer/fsinfo.h>
#include <reflayer/image.h>
#include <reflayer/layer.h>
#include <reflayer/store.h>
#include <reflayer/tree.h>

/* A JSON string of s; what is not UTF-8 becomes U+FFFD (a message may quote a key that was
 * refused for not being UTF-8). NULL only when out of memory. */
json_t *rl_json_string_lossy(const char *s);

/* "2026-11-26T15:33:31.123456789Z" <-> nanoseconds since the epoch (0 if unparsable). */
json_t *rl_json_time(int64_t ns);
int64_t rl_json_time_parse(const char *s);

/* {name, kind, parent?, labels, created, updated, id} */
json_t *rl_info_to_json(const rl_info *i);
int rl_info_from_json(json_t *o, rl_info *ret); /* -EIO bad shape, -ENOMEM */

/* {type, source, options} */
json_t *rl_mount_to_json(const rl_mount *m);
int rl_mount_from_json(json_t *o, rl_mount *ret);

/* {inodes, size, exclusive, shared} */
json_t *rl_usage_to_json(const rl_usage *u);
void rl_usage_from_json(json_t *o, rl_usage *ret);

/* A finished clone: {source, destination, filesystem, reflink, entries, dirs, ..., methods,
 * seconds}. */
json_t *rl_clone_result_to_json(const char *src, const char *dst, const char *fstype,
                                rl_reflink reflink, const rl_tree_stats *st);
void rl_tree_stats_from_json(json_t *o, rl_tree_stats *ret);

/* A progress notification's params (without the request id): {entries, bytes, seconds}. */
json_t *rl_progress_to_json(const rl_tree_progress *p);
void rl_progress_from_json(json_t *o, rl_tree_progress *ret);

/* A layer read or written: {entries, whiteouts, opaques, bytes, size, digest, diff_id,
 * seconds}. */
json_t *rl_layer_stats_to_json(const rl_layer_stats *st);
void rl_layer_stats_from_json(json_t *o, rl_layer_stats *ret);

/* An import: {manifest, top, layers, layers_new, bytes, seconds}. */
json_t *rl_import_result_to_json(const rl_import_result *r);
void rl_import_result_from_json(json_t *o, rl_import_result *ret);

/* One change: {"kind": "A"|"C"|"D", "path": "/etc/x", "metadata_only": bool}. Paths are
 * absolute in the snapshot, as `docker diff` prints them ("/" for the root). */
json_t *rl_change_to_json(const rl_change *c);
/* The path as printed ("/" + path); out must hold PATH_MAX + 2. */
void rl_change_path(const rl_change *c, char *out, size_t size);
/* kind, path and metadata_only back; path points into o. -EIO on a bad shape. */
int rl_change_from_json(json_t *o, rl_change *ret);

/* {entries, by_extents, files_read, bytes_read, seconds} */
json_t *rl_diff_stats_to_json(const rl_diff_stats *st);
void rl_diff_stats_from_json(json_t *o, rl_diff_stats *ret);
