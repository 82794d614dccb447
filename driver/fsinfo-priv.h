/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What the clone engine may learn about a filesystem while it works (driver only). */
#pragma once

#include <reflayer/fsinfo.h>

/* FICLONE failed in a way that speaks for the whole filesystem (only while still UNKNOWN). */
void rl_fsinfo_note_no_reflink(rl_fsinfo *fs);
/* copy_file_range is missing (ENOSYS) or refused (EOPNOTSUPP) here. */
void rl_fsinfo_note_no_copy_range(rl_fsinfo *fs);
