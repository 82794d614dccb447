/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * rl_idmap: a uid or gid map in containerd's form, a list of (container id, host id, length)
 * ranges. Mapping takes a container id (what the image says) to a host id (what the files
 * on disk must say for a user-namespaced container whose namespace uses the same map).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <reflayer/error.h>

typedef struct rl_idmap rl_idmap;

/* The kernel's limit on ranges in one /proc/PID/uid_map. */
#define RL_IDMAP_RANGES_MAX 340

int rl_idmap_new(rl_idmap **ret, rl_error *err);
rl_idmap *rl_idmap_free(rl_idmap *map);
void rl_idmap_freep(rl_idmap **map);

/*
 * Add one range. -EINVAL (with a message) for a zero length, a range that overflows 32 bits
 * or one whose container or host side overlaps a range already there.
 */
int rl_idmap_add(rl_idmap *map, uint32_t container_id, uint32_t host_id, uint32_t length,
                 rl_error *err);

/* Add ranges written "C:H:L", several separated by commas. -EINVAL on bad syntax. */
int rl_idmap_parse(rl_idmap *map, const char *spec, rl_error *err);

size_t rl_idmap_ranges(const rl_idmap *map);

/* Range i (0 ≤ i < rl_idmap_ranges()): -ERANGE past the end. */
int rl_idmap_range(const rl_idmap *map, size_t i, uint32_t *ret_container, uint32_t *ret_host,
                   uint32_t *ret_length);

/* Container id → host id. -ERANGE when no range holds id. A NULL map is the identity. */
int rl_idmap_map(const rl_idmap *map, uint32_t id, uint32_t *ret_id);

/*
 * Shift the ids stored inside an xattr value, in place:
 *  - system.posix_acl_access / system.posix_acl_default: ACL_USER and ACL_GROUP entries;
 *  - security.capability: a v3 capability's root id is mapped; a v2 (or v1) capability
 *    becomes v3 with root id map(0), as the kernel itself writes it when a namespaced root
 *    sets one, since a v2 capability is ignored inside a user namespace whose root is not
 *    host root. *size may grow (v2 → v3); capacity is the buffer's size.
 * Other names are left alone. An unmapped id gives -ERANGE unless keep_unmapped, in which
 * case it is kept as it is. -EINVAL for a malformed value.
 */
int rl_idmap_shift_xattr(const rl_idmap *uids, const rl_idmap *gids, bool keep_unmapped,
                         const char *name, void *value, size_t *size, size_t capacity);
