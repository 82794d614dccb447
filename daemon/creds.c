/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * creds.c owns per-thread identity changes. glibc's setgroups() changes every thread of the
 * process (it broadcasts), so the raw system calls are used: setfsuid, setfsgid, setgroups
 * and capset act on the calling thread only.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/fsuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "creds.h"
#include "log.h"

static int caps_get(struct __user_cap_data_struct *data)
{
        struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
        return syscall(SYS_capget, &h, data) < 0 ? -errno : 0;
}

static int caps_set(const struct __user_cap_data_struct *data)
{
        struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
        return syscall(SYS_capset, &h, data) < 0 ? -errno : 0;
}

int creds_assume(const rpc_peer *peer, creds_saved *saved)
{
        *saved = (creds_saved){};
        if (peer->uid == 0)
                return 0;
        int n = getgroups(RPC_MAX_GROUPS, saved->groups);
        if (n < 0)
                return -errno;
        saved->n_groups = n;
        int r = caps_get(saved->caps);
        if (r < 0)
                return r;
        saved->fsuid = (uid_t)setfsuid((uid_t)-1);
        saved->fsgid = (gid_t)setfsgid((gid_t)-1);
        saved->changed = true;
        /* Groups and fsgid first: changing them needs CAP_SETGID, which the fsuid change
         * below takes away from the effective set. */
        if (syscall(SYS_setgroups, (size_t)peer->n_groups, peer->groups) < 0) {
                r = -errno;
                goto fail;
        }
        setfsgid(peer->gid);
        setfsuid(peer->uid);
        /* setfsuid and setfsgid say nothing about failure: read the values back. */
        if ((uid_t)setfsuid((uid_t)-1) != peer->uid || (gid_t)setfsgid((gid_t)-1) != peer->gid) {
                r = -EPERM;
                goto fail;
        }
        struct __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3];
        for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
                none[i] = (struct __user_cap_data_struct){
                        .effective = 0,
                        .permitted = saved->caps[i].permitted,
                        .inheritable = saved->caps[i].inheritable,
                };
        r = caps_set(none);
        if (r < 0)
                goto fail;
        return 0;
fail:
        creds_restore(saved);
        return r;
}

void creds_restore(creds_saved *saved)
{
        if (!saved->changed)
                return;
        /* Capabilities first: the way back to the daemon's fsuid needs CAP_SETUID. */
        if (caps_set(saved->caps) < 0)
                goto fatal;
        setfsuid(saved->fsuid);
        setfsgid(saved->fsgid);
        if ((uid_t)setfsuid((uid_t)-1) != saved->fsuid ||
            (gid_t)setfsgid((gid_t)-1) != saved->fsgid ||
            syscall(SYS_setgroups, (size_t)saved->n_groups, saved->groups) < 0 ||
            caps_set(saved->caps) < 0)
                goto fatal;
        saved->changed = false;
        return;
fatal:
        log_error("cannot return to the daemon's own identity after acting for a client: "
                  "stopping");
        abort();
}
