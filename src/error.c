/*
 * Error codes, error structs, logging and clocks.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "utf8.h"

/* The one error table (libuv's UV_ERRNO_MAP): every code's name and text come
 * from this list. Both functions below are switches without a default, so the
 * compiler (-Wswitch) flags a code of the enum that is missing here. */
#define SURPOOL__ERR_MAP(X)                                                                    \
    X(OK, "success")                                                                           \
    X(ERR_INVALID_ARG, "invalid argument")                                                     \
    X(ERR_NOMEM, "out of memory")                                                              \
    X(ERR_TIMEOUT, "timed out waiting for a connection")                                       \
    X(ERR_CLOSED, "pool is closed")                                                            \
    X(ERR_OVERLOADED, "too many callers waiting for a connection")                             \
    X(ERR_CONNECT, "could not connect to the server")                                          \
    X(ERR_AUTH, "authentication failed")                                                       \
    X(ERR_SERVER, "the server returned an error")                                              \
    X(ERR_PROTOCOL, "protocol error: unexpected data from the server")                         \
    X(ERR_DISCONNECTED, "connection lost")                                                     \
    X(ERR_REQUEST_TIMEOUT, "request timed out")                                                \
    X(ERR_TLS, "TLS error")                                                                    \
    X(ERR_TOO_LARGE, "message exceeds the size limit")                                         \
    X(ERR_UNAVAILABLE, "server unavailable")                                                   \
    X(ERR_BROKEN, "connection is broken")                                                      \
    X(ERR_PAUSED, "pool is paused")                                                            \
    X(ERR_UNSUPPORTED, "the server does not support this feature")

const char *surpool_strerror(surpool_err code)
{
#define SURPOOL__ERR_TEXT(name, text)                                                          \
    case SURPOOL_##name: return text;
    switch (code) {
        SURPOOL__ERR_MAP(SURPOOL__ERR_TEXT)
    }
#undef SURPOOL__ERR_TEXT
    return "unknown error";
}

const char *surpool_err_name(surpool_err code)
{
#define SURPOOL__ERR_NAME(name, text)                                                          \
    case SURPOOL_##name: return "SURPOOL_" #name;
    switch (code) {
        SURPOOL__ERR_MAP(SURPOOL__ERR_NAME)
    }
#undef SURPOOL__ERR_NAME
    return "SURPOOL_ERR_UNKNOWN";
}

const char *surpool_version(void)
{
    return SURPOOL_VERSION_STRING;
}

void surpool__error_clear(surpool_error *err)
{
    if (err != NULL)
        memset(err, 0, sizeof(*err));
}

surpool_err surpool__seterr(surpool_error *err, surpool_err code, const char *fmt, ...)
{
    if (err == NULL)
        return code;
    memset(err, 0, sizeof(*err));
    err->code = code;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
        if (n >= (int)sizeof(err->message))
            surpool__utf8_trim(err->message); /* cut, maybe inside a character */
    } else {
        snprintf(err->message, sizeof(err->message), "%s", surpool_strerror(code));
    }
    return code;
}

void surpool__error_prefix(surpool_error *err, const char *prefix)
{
    if (err == NULL || prefix == NULL)
        return;
    size_t plen = strlen(prefix), cap = sizeof(err->message);
    if (plen >= cap - 1)
        plen = cap - 1;
    size_t mlen = strnlen(err->message, cap - 1);
    if (plen + mlen > cap - 1)
        mlen = cap - 1 - plen;
    memmove(err->message + plen, err->message, mlen);
    memcpy(err->message, prefix, plen);
    err->message[plen + mlen] = '\0';
}

surpool_err surpool__error_copy(surpool_error *dst, const surpool_error *src)
{
    if (dst != NULL && src != NULL && dst != src)
        memcpy(dst, src, sizeof(*dst));
    return src != NULL ? src->code : SURPOOL_OK;
}

void surpool__vlog(const surpool__logger *lg, surpool_log_level level, const char *fmt,
                   va_list ap)
{
    if (lg == NULL || lg->fn == NULL || level > lg->level)
        return;
    char line[512];
    if (vsnprintf(line, sizeof(line), fmt, ap) >= (int)sizeof(line))
        surpool__utf8_trim(line);
    lg->fn(lg->userdata, level, line);
}

void surpool__log(const surpool__logger *lg, surpool_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    surpool__vlog(lg, level, fmt, ap);
    va_end(ap);
}

int64_t surpool__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * INT64_C(1000000000) + ts.tv_nsec;
}

int64_t surpool__deadline_after_ms(long ms)
{
    if (ms < 0)
        return INT64_MAX;
    int64_t now = surpool__now_ns();
    int64_t add = (int64_t)ms;
    if (add > (INT64_MAX - now) / SURPOOL__NS_PER_MS)
        return INT64_MAX;
    return now + add * SURPOOL__NS_PER_MS;
}
