/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What the crash test and its child program share: the child's current operation. */
#pragma once

enum { OP_OPEN, OP_PREPARE, OP_WRITE, OP_COMMIT, OP_VIEW, OP_REMOVE, OP_IDLE, OP_MAX };

typedef struct shared {
        volatile int op;
        volatile unsigned seq; /* keys made so far, across children */
} shared;
