#include <string.h>

#include "greet.h"

int main(void) {
    char buf[16];
    if (greet(buf, sizeof buf, "bazel") != 12 || strcmp(buf, "hello, bazel") != 0) {
        return 1;
    }
    /* Truncated, but the full length is still reported. */
    if (greet(buf, 6, "bazel") != 12 || strcmp(buf, "hello") != 0) {
        return 1;
    }
    return 0;
}
