/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The libFuzzer main of the image target: OCI image layouts (index, manifest, config) into
 * rl_store_import (driver/image.c). The body is harness-image.c, which tests/unit/fuzz-regress.c
 * replays in the ordinary build.
 */
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        char msg[512];
        (void)argc;
        (void)argv;
        if (fuzz_image_init(msg, sizeof(msg)) < 0) {
                fprintf(stderr, "%s\n", msg);
                exit(1);
        }
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        const char *bad = fuzz_image_one(data, size);
        if (bad) {
                /* abort: libFuzzer keeps the input as a crash. */
                fprintf(stderr, "fuzz image: %s\n", bad);
                abort();
        }
        return 0;
}
