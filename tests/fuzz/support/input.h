/* What the targets do with libFuzzer's input before they parse it. */
#ifndef EMBER_TESTS_FUZZ_INPUT_H
#define EMBER_TESTS_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>

/* The input as a C string in a buffer of its own, just large enough (ASan then sees any read
 * past the terminating NUL); the caller frees it. NULL when memory runs out. */
char *fuzz_input_string(const uint8_t *data, size_t size);

#endif
