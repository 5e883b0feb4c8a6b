/* Prints a small deterministic report; used by //gen:report_txt. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/mathx.h"

int main(int argc, char **argv) {
    unsigned n = 12;
    if (argc > 1) {
        n = (unsigned)strtoul(argv[1], NULL, 10);
    }
    for (unsigned i = 1; i <= n; i++) {
        printf("fib %u %llu\n", i, (unsigned long long)mathx_fib(i));
    }
    printf("gcd 1071 462 %llu\n", (unsigned long long)mathx_gcd(1071, 462));
    const char *word = "nativelink";
    printf("fnv1a %s %016llx\n", word,
           (unsigned long long)mathx_fnv1a(word, strlen(word)));
    return 0;
}
