/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * idmap.c owns uid/gid maps: parsing containerd-style ranges, mapping one id, and mapping the
 * ids that live inside xattr values (POSIX ACLs, file capabilities).
 */
#include <endian.h>
#include <errno.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <reflayer/idmap.h>

#include "util.h"

typedef struct range {
        uint32_t container;
        uint32_t host;
        uint32_t length;
} range;

struct rl_idmap {
        size_t n;
        range r[RL_IDMAP_RANGES_MAX];
};

/* POSIX ACL xattr layout (include/uapi/linux/posix_acl_xattr.h), little-endian on disk. */
#define ACL_XATTR_VERSION 0x0002
#define ACL_TAG_USER 0x02
#define ACL_TAG_GROUP 0x08

struct acl_xattr_entry {
        uint16_t tag;
        uint16_t perm;
        uint32_t id;
};

static bool overlaps(uint32_t a, uint32_t alen, uint32_t b, uint32_t blen)
{
        return (uint64_t)a < (uint64_t)b + blen && (uint64_t)b < (uint64_t)a + alen;
}

RL_EXPORT int rl_idmap_new(rl_idmap **ret, rl_error *err)
{
        rl_idmap *m = calloc(1, sizeof(*m));
        if (!m)
                return rl_error_set(err, -ENOMEM, "id map");
        *ret = m;
        return 0;
}

RL_EXPORT rl_idmap *rl_idmap_free(rl_idmap *map)
{
        free(map);
        return NULL;
}

RL_EXPORT void rl_idmap_freep(rl_idmap **map)
{
        rl_idmap_free(*map);
}

RL_EXPORT int rl_idmap_add(rl_idmap *map, uint32_t container_id, uint32_t host_id,
                           uint32_t length, rl_error *err)
{
        if (length == 0)
                return rl_error_set(err, -EINVAL, "id range %u:%u:%u: length is 0",
                                    container_id, host_id, length);
        if ((uint64_t)container_id + length > (uint64_t)UINT32_MAX + 1 ||
            (uint64_t)host_id + length > (uint64_t)UINT32_MAX + 1)
                return rl_error_set(err, -EINVAL, "id range %u:%u:%u: beyond 32-bit ids",
                                    container_id, host_id, length);
        if (map->n >= RL_IDMAP_RANGES_MAX)
                return rl_error_set(err, -EINVAL, "id map: more than %d ranges",
                                    RL_IDMAP_RANGES_MAX);
        for (size_t i = 0; i < map->n; i++) {
                const range *o = &map->r[i];
                if (overlaps(container_id, length, o->container, o->length) ||
                    overlaps(host_id, length, o->host, o->length))
                        return rl_error_set(err, -EINVAL,
                                            "id range %u:%u:%u overlaps range %u:%u:%u",
                                            container_id, host_id, length, o->container,
                                            o->host, o->length);
        }
        map->r[map->n++] = (range){ container_id, host_id, length };
        return 0;
}

static int parse_u32(const char *s, char **end, uint32_t *ret)
{
        if (*s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(s, end, 10);
        if (errno || v > UINT32_MAX)
                return -EINVAL;
        *ret = (uint32_t)v;
        return 0;
}

RL_EXPORT int rl_idmap_parse(rl_idmap *map, const char *spec, rl_error *err)
{
        const char *p = spec;
        size_t before = map->n;
        int r;

        /* All or nothing: a bad range drops the good ones this call added before it. */
        for (;;) {
                uint32_t c, h, l;
                char *end;

                if (parse_u32(p, &end, &c) < 0 || *end != ':' ||
                    parse_u32(end + 1, &end, &h) < 0 || *end != ':' ||
                    parse_u32(end + 1, &end, &l) < 0 || (*end != ',' && *end != '\0'))
                        goto out_undo;
                r = rl_idmap_add(map, c, h, l, err);
                if (r < 0) {
                        map->n = before;
                        return r;
                }
                if (*end == '\0')
                        return 0;
                p = end + 1;
        }
out_undo:
        map->n = before;
        return rl_error_set(err, -EINVAL, "id map '%s': expected CONTAINER:HOST:LENGTH", spec);
}

RL_EXPORT size_t rl_idmap_ranges(const rl_idmap *map)
{
        return map ? map->n : 0;
}

RL_EXPORT int rl_idmap_range(const rl_idmap *map, size_t i, uint32_t *ret_container,
                             uint32_t *ret_host, uint32_t *ret_length)
{
        if (!map || i >= map->n)
                return -ERANGE;
        *ret_container = map->r[i].container;
        *ret_host = map->r[i].host;
        *ret_length = map->r[i].length;
        return 0;
}

RL_EXPORT int rl_idmap_map(const rl_idmap *map, uint32_t id, uint32_t *ret_id)
{
        if (!map) {
                *ret_id = id;
                return 0;
        }
        for (size_t i = 0; i < map->n; i++) {
                const range *r = &map->r[i];
                if (id >= r->container && (uint64_t)id < (uint64_t)r->container + r->length) {
                        *ret_id = r->host + (id - r->container);
                        return 0;
                }
        }
        return -ERANGE;
}

static int map_or_keep(const rl_idmap *map, bool keep, uint32_t id, uint32_t *ret)
{
        int r = rl_idmap_map(map, id, ret);
        if (r == -ERANGE && keep) {
                *ret = id;
                return 0;
        }
        return r;
}

static int shift_acl(const rl_idmap *uids, const rl_idmap *gids, bool keep, uint8_t *v,
                     size_t size)
{
        uint32_t version;

        if (size < sizeof(version) || (size - sizeof(version)) % sizeof(struct acl_xattr_entry))
                return -EINVAL;
        memcpy(&version, v, sizeof(version));
        if (le32toh(version) != ACL_XATTR_VERSION)
                return -EINVAL;
        for (size_t off = sizeof(version); off < size; off += sizeof(struct acl_xattr_entry)) {
                struct acl_xattr_entry e;
                const rl_idmap *map;
                uint32_t id;

                memcpy(&e, v + off, sizeof(e));
                switch (le16toh(e.tag)) {
                case ACL_TAG_USER:
                        map = uids;
                        break;
                case ACL_TAG_GROUP:
                        map = gids;
                        break;
                default:
                        continue;
                }
                int r = map_or_keep(map, keep, le32toh(e.id), &id);
                if (r < 0)
                        return r;
                e.id = htole32(id);
                memcpy(v + off, &e, sizeof(e));
        }
        return 0;
}

static int shift_caps(const rl_idmap *uids, bool keep, uint8_t *v, size_t *size,
                      size_t capacity)
{
        struct vfs_ns_cap_data caps = {};
        uint32_t magic, rootid = 0;

        if (*size < sizeof(magic))
                return -EINVAL;
        memcpy(&magic, v, sizeof(magic));
        magic = le32toh(magic);
        switch (magic & VFS_CAP_REVISION_MASK) {
        case VFS_CAP_REVISION_1:
                if (*size != XATTR_CAPS_SZ_1)
                        return -EINVAL;
                break;
        case VFS_CAP_REVISION_2:
                if (*size != XATTR_CAPS_SZ_2)
                        return -EINVAL;
                break;
        case VFS_CAP_REVISION_3:
                if (*size != XATTR_CAPS_SZ_3)
                        return -EINVAL;
                memcpy(&caps, v, XATTR_CAPS_SZ_3);
                rootid = le32toh(caps.rootid);
                break;
        default:
                return -EINVAL;
        }
        if ((magic & VFS_CAP_REVISION_MASK) != VFS_CAP_REVISION_3) {
                /* v1/v2 hold no root id: it is implicitly 0, the image's root. */
                memcpy(&caps, v, *size);
        }
        if (capacity < XATTR_CAPS_SZ_3)
                return -ENOBUFS;

        uint32_t host;
        int r = map_or_keep(uids, keep, rootid, &host);
        if (r < 0)
                return r;
        caps.magic_etc = htole32(VFS_CAP_REVISION_3 | (magic & VFS_CAP_FLAGS_EFFECTIVE));
        caps.rootid = htole32(host);
        memcpy(v, &caps, XATTR_CAPS_SZ_3);
        *size = XATTR_CAPS_SZ_3;
        return 0;
}

RL_EXPORT int rl_idmap_shift_xattr(const rl_idmap *uids, const rl_idmap *gids,
                                   bool keep_unmapped, const char *name, void *value,
                                   size_t *size, size_t capacity)
{
        if (strcmp(name, "system.posix_acl_access") == 0 ||
            strcmp(name, "system.posix_acl_default") == 0)
                return shift_acl(uids, gids, keep_unmapped, value, *size);
        if (strcmp(name, "security.capability") == 0 && uids)
                return shift_caps(uids, keep_unmapped, value, size, capacity);
        return 0;
}
