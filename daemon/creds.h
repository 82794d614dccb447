/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Acting for a client: a call that touches paths the client named (Clone) runs with the
 * client's file-system identity, so reflayerd never lets a member of its group read or write
 * what that member could not. Only the calling thread changes (and the tree workers it
 * starts, which inherit its credentials).
 */
#pragma once

#include <linux/capability.h>
#include <stdbool.h>
#include <sys/types.h>

#include "rpc.h"

typedef struct creds_saved {
        bool changed;
        uid_t fsuid;
        gid_t fsgid;
        int n_groups;
        gid_t groups[RPC_MAX_GROUPS];
        struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
} creds_saved;

/*
 * Take on the peer's fsuid, fsgid and supplementary groups, with no effective capability
 * (so CAP_DAC_OVERRIDE, CAP_SYS_ADMIN or CAP_SETFCAP cannot act for a client). A root peer
 * keeps the daemon's identity. -EPERM if the daemon may not change identity.
 */
int creds_assume(const rpc_peer *peer, creds_saved *saved);

/* Back to the daemon's own identity. A thread that cannot get back aborts the daemon:
 * serving the next client with someone else's identity is worse than a restart. */
void creds_restore(creds_saved *saved);
