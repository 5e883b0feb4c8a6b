#include <stdio.h>

int main(void) {
    puts("hello from cc");
    return 0;
}
