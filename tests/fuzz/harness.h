/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The fuzz harnesses: one body per target, shared by the libFuzzer main (tests/fuzz/main.c,
 * built once per target with clang by `make fuzz`) and by the regression test that replays
 * tests/fuzz/regress/TARGET/ in the ordinary build (tests/unit/fuzz-regress.c).
 *
 * init enters the sandbox every target runs in: a private mount namespace, a tmpfs over /tmp,
 * and a chroot into it, so no input can reach the host's files however wrong the code under
 * test goes (the working directory stays outside: libFuzzer's relative corpus and artifact
 * paths still work). Call it once per process, single-threaded, as root.
 *
 * one runs one input and returns NULL, or a sentence naming the invariant it broke (a
 * libFuzzer main aborts with it, so the input is kept as a crash). Memory errors are the
 * sanitizers' to catch.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Each returns 0, or a negative errno with why in msg. */
int fuzz_rpc_init(char *msg, size_t msg_size);
int fuzz_layer_init(char *msg, size_t msg_size);
int fuzz_image_init(char *msg, size_t msg_size);

/* Each returns NULL, or what went wrong (static storage, valid until the next call). */
const char *fuzz_rpc_one(const uint8_t *data, size_t size);
const char *fuzz_layer_one(const uint8_t *data, size_t size);
const char *fuzz_image_one(const uint8_t *data, size_t size);
