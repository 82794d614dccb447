/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The libFuzzer main of every target, built once per target with -DFUZZ_TARGET=NAME: rpc
 * (JSON-RPC request lines into rpc_handle), layer (OCI layer blobs into rl_layer_apply) and
 * image (OCI layouts into rl_store_import). The bodies are harness-NAME.c, which
 * tests/unit/fuzz-regress.c replays in the ordinary build.
 */
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"

#ifndef FUZZ_TARGET
#error "build with -DFUZZ_TARGET=rpc|layer|image"
#endif

#define CAT_(a, b, c) a##b##c
#define CAT(a, b, c) CAT_(a, b, c)
#define STR_(a) #a
#define STR(a) STR_(a)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        char msg[512];
        (void)argc;
        (void)argv;
        if (CAT(fuzz_, FUZZ_TARGET, _init)(msg, sizeof(msg)) < 0) {
                fprintf(stderr, "%s\n", msg);
                exit(1);
        }
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        const char *bad = CAT(fuzz_, FUZZ_TARGET, _one)(data, size);
        if (bad) {
                /* abort: libFuzzer keeps the input as a crash. */
                fprintf(stderr, "fuzz " STR(FUZZ_TARGET) ": %s\n", bad);
                abort();
        }
        return 0;
}
