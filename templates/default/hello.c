#include <stdio.h>

#include "greet.h"

int main(void) {
    char buf[64];
    greet(buf, sizeof buf, "nativelink-lre");
    puts(buf);
    return 0;
}
