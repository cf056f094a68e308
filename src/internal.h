/*
 * Internal helpers shared by every surpool source file: allocation, clocks,
 * error filling and logging. Not installed.
 */
#ifndef SURPOOL_INTERNAL_H
#define SURPOOL_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "surpool.h"

/* ---- allocation: every allocation of the library goes through these ---- */
void *surpool__malloc(size_t n);
void *surpool__calloc(size_t count, size_t n);
void *surpool__realloc(void *p, size_t n);
void surpool__free(void *p);
char *surpool__strdup(const char *s); /* NULL in → NULL out */
/* Overwrite then free a secret string (password, token). NULL ok. */
void surpool__free_secret(char *s);
/* memset that the compiler may not drop. */
void surpool__wipe(void *p, size_t n);

/* ---- clocks ---- */
#define SURPOOL__NS_PER_MS INT64_C(1000000)
int64_t surpool__now_ns(void); /* CLOCK_MONOTONIC */
/* The largest millisecond setting the configuration accepts (365 days);
 * with it, every sum of a clock reading and a setting fits in 64 bits. */
#define SURPOOL__MS_MAX 31536000000LL
/* now + ms, saturating; ms < 0 means "no deadline" and returns INT64_MAX. */
int64_t surpool__deadline_after_ms(long ms);
/* ms in nanoseconds. Settings are at most SURPOOL__MS_MAX (config.c), so this
 * cannot overflow; it saturates anyway, as a second line of defence. */
static inline int64_t surpool__ms_to_ns(long ms)
{
    if ((int64_t)ms > INT64_MAX / SURPOOL__NS_PER_MS)
        return INT64_MAX;
    return (int64_t)ms * SURPOOL__NS_PER_MS;
}
/* a + b for b >= 0, saturating at INT64_MAX. */
static inline int64_t surpool__add_sat(int64_t a, int64_t b)
{
    return b > INT64_MAX - a ? INT64_MAX : a + b;
}

/* ---- errors ---- */
/* Fill err (if non-NULL) with code and printf-style message; returns code. */
surpool_err surpool__seterr(surpool_error *err, surpool_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void surpool__error_clear(surpool_error *err);
/* Copy src (NULL = "") into dst[size], truncating on a UTF-8 character
 * boundary; always NUL-terminates when size > 0. Returns the bytes copied. */
size_t surpool__strlcpy(char *dst, const char *src, size_t size);
/* Put `prefix` in front of err->message (truncating the end to fit). */
void surpool__error_prefix(surpool_error *err, const char *prefix);
/* Copy src into dst if both non-NULL; returns src->code. */
surpool_err surpool__error_copy(surpool_error *dst, const surpool_error *src);

/* ---- logging ---- */
typedef struct surpool__logger {
    surpool_log_fn fn;
    void *userdata;
    surpool_log_level level;
} surpool__logger;

void surpool__log(const surpool__logger *lg, surpool_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void surpool__vlog(const surpool__logger *lg, surpool_log_level level, const char *fmt,
                   va_list ap) __attribute__((format(printf, 3, 0)));

#define SURPOOL__UNUSED(x) ((void)(x))

/* ---- invariant checks ----
 * SURPOOL__CHECK(cond) states an internal invariant. The library never aborts
 * the program it is embedded in: in the library as built for users the check
 * compiles to nothing (cond is not evaluated). The test suite links a copy of
 * the library built with SURPOOL_FATAL_CHECKS=1 (CMake target surpool_checked),
 * where a broken invariant prints where it broke and aborts, so that tests
 * catch it. Never use assert() in src/: it is live in any build without
 * NDEBUG, such as a vendored add_subdirectory() with no build type. */
#if defined(SURPOOL_FATAL_CHECKS) && SURPOOL_FATAL_CHECKS
#include <stdio.h>
#include <stdlib.h>
#define SURPOOL__CHECK(cond)                                                                   \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: surpool invariant broken: %s\n", __FILE__, __LINE__,       \
                    #cond);                                                                    \
            abort();                                                                           \
        }                                                                                      \
    } while (0)
#else
#define SURPOOL__CHECK(cond) ((void)sizeof(!(cond)))
#endif

#endif
