#ifndef LRE_SMOKE_MATHX_H
#define LRE_SMOKE_MATHX_H

#include <stddef.h>
#include <stdint.h>

/* Greatest common divisor (gcd(0, 0) == 0). */
uint64_t mathx_gcd(uint64_t a, uint64_t b);

/* n-th Fibonacci number, fib(0) == 0, fib(1) == 1 (valid for n <= 93). */
uint64_t mathx_fib(unsigned n);

/* 64-bit FNV-1a hash of len bytes at data. */
uint64_t mathx_fnv1a(const void *data, size_t len);

#endif
