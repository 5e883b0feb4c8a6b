#ifndef GREET_H
#define GREET_H

#include <stddef.h>

/* Writes "hello, NAME" into buf (at most size bytes, NUL-terminated) and
   returns the length of the full greeting. */
size_t greet(char *buf, size_t size, const char *name);

#endif
