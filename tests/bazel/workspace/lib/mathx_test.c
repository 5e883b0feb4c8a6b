/* Plain C unit test: exits 0 when every check passes, 1 otherwise. */
#include <stdio.h>
#include <string.h>

#include "lib/mathx.h"

static int failures = 0;

#define CHECK_EQ(got, want)                                                  \
    do {                                                                     \
        unsigned long long g_ = (got), w_ = (want);                          \
        if (g_ != w_) {                                                      \
            fprintf(stderr, "%s:%d: %s == %llu, want %llu\n", __FILE__,     \
                    __LINE__, #got, g_, w_);                                 \
            failures++;                                                      \
        }                                                                    \
    } while (0)

int main(void) {
    CHECK_EQ(mathx_gcd(0, 0), 0);
    CHECK_EQ(mathx_gcd(12, 18), 6);
    CHECK_EQ(mathx_gcd(17, 5), 1);
    CHECK_EQ(mathx_fib(0), 0);
    CHECK_EQ(mathx_fib(1), 1);
    CHECK_EQ(mathx_fib(10), 55);
    CHECK_EQ(mathx_fib(93), 12200160415121876738ULL);
    CHECK_EQ(mathx_fnv1a("", 0), 14695981039346656037ULL);
    CHECK_EQ(mathx_fnv1a("a", 1), 0xaf63dc4c8601ec8cULL);
    CHECK_EQ(mathx_fnv1a("foobar", strlen("foobar")), 0x85944171f73967e8ULL);
    if (failures != 0) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("mathx_test: all checks passed\n");
    return 0;
}
