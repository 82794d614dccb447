/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * idmap.c: parsing, mapping, and ids inside ACLs and capabilities. error.c: messages.
 */
#include <criterion/criterion.h>
#include <endian.h>
#include <errno.h>
#include <linux/capability.h>
#include <string.h>

#include <reflayer/error.h>
#include <reflayer/idmap.h>

Test(idmap, parse_and_map)
{
        rl_idmap *m = NULL;
        rl_error err = {};
        uint32_t id;

        cr_assert_eq(rl_idmap_new(&m, &err), 0);
        cr_assert_eq(rl_idmap_parse(m, "0:100000:1000,1000:200000:64536", &err), 0, "%s", err.msg);
        cr_expect_eq(rl_idmap_ranges(m), 2);
        cr_assert_eq(rl_idmap_map(m, 0, &id), 0);
        cr_expect_eq(id, 100000);
        cr_assert_eq(rl_idmap_map(m, 999, &id), 0);
        cr_expect_eq(id, 100999);
        cr_assert_eq(rl_idmap_map(m, 1000, &id), 0);
        cr_expect_eq(id, 200000);
        cr_expect_eq(rl_idmap_map(m, 65536, &id), -ERANGE);
        cr_assert_eq(rl_idmap_map(NULL, 42, &id), 0);
        cr_expect_eq(id, 42);
        rl_idmap_free(m);
}

Test(idmap, rejects_bad_ranges)
{
        rl_idmap *m = NULL;
        rl_error err = {};

        cr_assert_eq(rl_idmap_new(&m, &err), 0);
        cr_expect_eq(rl_idmap_parse(m, "0:100000", &err), -EINVAL);
        cr_expect(strstr(err.msg, "CONTAINER:HOST:LENGTH"), "%s", err.msg);
        cr_expect_eq(rl_idmap_parse(m, "a:1:1", &err), -EINVAL);
        cr_expect_eq(rl_idmap_parse(m, "0:1:0", &err), -EINVAL);
        cr_expect_eq(rl_idmap_parse(m, "1:4294967295:2", &err), -EINVAL);
        cr_expect_eq(rl_idmap_parse(m, "0:100:10,", &err), -EINVAL);
        cr_assert_eq(rl_idmap_parse(m, "0:100:10", &err), 0);
        cr_expect_eq(rl_idmap_parse(m, "5:1000:10", &err), -EINVAL, "container overlap");
        cr_expect(strstr(err.msg, "overlaps"), "%s", err.msg);
        cr_expect_eq(rl_idmap_parse(m, "100:105:10", &err), -EINVAL, "host overlap");
        rl_idmap_free(m);
}

Test(idmap, shifts_acl_entries)
{
        rl_idmap *u = NULL, *g = NULL;
        rl_error err = {};
        struct {
                uint32_t version;
                struct {
                        uint16_t tag, perm;
                        uint32_t id;
                } e[3];
        } __attribute__((packed)) acl = { htole32(2),
                                          { { htole16(1), htole16(6), htole32(~0u) },
                                            { htole16(2), htole16(6), htole32(5) },
                                            { htole16(8), htole16(4), htole32(7) } } };
        size_t size = sizeof(acl);

        cr_assert_eq(rl_idmap_new(&u, &err), 0);
        cr_assert_eq(rl_idmap_new(&g, &err), 0);
        cr_assert_eq(rl_idmap_parse(u, "0:1000:100", &err), 0);
        cr_assert_eq(rl_idmap_parse(g, "0:2000:100", &err), 0);
        cr_assert_eq(rl_idmap_shift_xattr(u, g, false, "system.posix_acl_access", &acl, &size,
                                          sizeof(acl)),
                     0);
        cr_expect_eq(le32toh(acl.e[0].id), ~0u, "USER_OBJ has no id to shift");
        cr_expect_eq(le32toh(acl.e[1].id), 1005);
        cr_expect_eq(le32toh(acl.e[2].id), 2007);
        acl.e[1].id = htole32(500);
        cr_expect_eq(rl_idmap_shift_xattr(u, g, false, "system.posix_acl_default", &acl, &size,
                                          sizeof(acl)),
                     -ERANGE);
        cr_expect_eq(rl_idmap_shift_xattr(u, g, true, "system.posix_acl_default", &acl, &size,
                                          sizeof(acl)),
                     0);
        cr_expect_eq(le32toh(acl.e[1].id), 500);
        char junk[7] = "abcdefg";
        size = sizeof(junk);
        cr_expect_eq(rl_idmap_shift_xattr(u, g, false, "system.posix_acl_access", junk, &size,
                                          sizeof(junk)),
                     -EINVAL);
        rl_idmap_free(u);
        rl_idmap_free(g);
}

Test(idmap, capability_v2_becomes_v3_with_root_id)
{
        rl_idmap *u = NULL;
        rl_error err = {};
        struct vfs_ns_cap_data caps = {};
        struct vfs_cap_data v2 = { htole32(VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE),
                                   { { htole32(1u << 13), 0 }, { 0, 0 } } };
        size_t size = XATTR_CAPS_SZ_2;

        cr_assert_eq(rl_idmap_new(&u, &err), 0);
        cr_assert_eq(rl_idmap_parse(u, "0:100000:65536", &err), 0);
        memcpy(&caps, &v2, sizeof(v2));
        cr_assert_eq(rl_idmap_shift_xattr(u, NULL, false, "security.capability", &caps, &size,
                                          sizeof(caps)),
                     0);
        cr_expect_eq(size, XATTR_CAPS_SZ_3);
        cr_expect_eq(le32toh(caps.magic_etc), VFS_CAP_REVISION_3 | VFS_CAP_FLAGS_EFFECTIVE);
        cr_expect_eq(le32toh(caps.rootid), 100000);
        cr_expect_eq(le32toh(caps.data[0].permitted), 1u << 13, "the capability itself is kept");
        /* v3 again: its root id is shifted like any other id. */
        caps.rootid = htole32(5);
        cr_assert_eq(rl_idmap_shift_xattr(u, NULL, false, "security.capability", &caps, &size,
                                          sizeof(caps)),
                     0);
        cr_expect_eq(le32toh(caps.rootid), 100005);
        /* No room to grow a v2 into a v3. */
        memcpy(&caps, &v2, sizeof(v2));
        size = XATTR_CAPS_SZ_2;
        cr_expect_eq(rl_idmap_shift_xattr(u, NULL, false, "security.capability", &caps, &size,
                                          XATTR_CAPS_SZ_2),
                     -ENOBUFS);
        /* Other names are left alone. */
        char v[4] = "keep";
        size = 4;
        cr_expect_eq(rl_idmap_shift_xattr(u, NULL, false, "user.x", v, &size, 4), 0);
        cr_expect_eq(memcmp(v, "keep", 4), 0);
        rl_idmap_free(u);
}

Test(error, message_keeps_reason_and_context)
{
        rl_error err = {};
        cr_expect_eq(rl_error_set(&err, -ENOSPC, "clone '%s': FICLONE", "usr/bin/ls"), -ENOSPC);
        cr_expect_str_eq(err.msg, "clone 'usr/bin/ls': FICLONE: No space left on device");
        cr_expect_eq(err.code, ENOSPC);
        cr_expect_eq(rl_error_prefix(&err, -ENOSPC, "prepare '%s'", "k"), -ENOSPC);
        cr_expect_str_eq(err.msg,
                         "prepare 'k': clone 'usr/bin/ls': FICLONE: No space left on device");
        /* A context too long for the buffer is cut; the reason never is. */
        char longpath[5000];
        memset(longpath, 'a', sizeof(longpath) - 1);
        longpath[sizeof(longpath) - 1] = '\0';
        rl_error_set(&err, -EACCES, "open '%s'", longpath);
        cr_expect(strstr(err.msg, "...: Permission denied"), "%s", err.msg + strlen(err.msg) - 40);
        rl_error_prefix(&err, -EACCES, "%s", longpath);
        cr_expect(strstr(err.msg, ": Permission denied"));
        cr_expect_eq(rl_error_set(NULL, -EIO, "x"), -EIO);
        rl_error_clear(&err);
        cr_expect_eq(err.code, 0);
        cr_expect_eq(rl_error_prefix(&err, -EBUSY, "x"), -EBUSY);
        cr_expect_eq(rl_error_prefix(NULL, -EBUSY, "x"), -EBUSY, "the errno survives no err");
}
