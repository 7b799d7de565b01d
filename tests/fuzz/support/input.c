#include "input.h"

#include <stdlib.h>
#include <string.h>

char *fuzz_input_string(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return NULL;
    memcpy(text, data, size);
    text[size] = '\0';
    return text;
}
