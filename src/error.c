/*
 * Error codes, error structs, logging and clocks.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "utf8.h"

const char *surpool_strerror(surpool_err code)
{
    /* A switch without default: the compiler flags a code with no text. */
    switch (code) {
    case SURPOOL_OK: return "success";
    case SURPOOL_ERR_INVALID_ARG: return "invalid argument";
    case SURPOOL_ERR_NOMEM: return "out of memory";
    case SURPOOL_ERR_TIMEOUT: return "timed out waiting for a connection";
    case SURPOOL_ERR_CLOSED: return "pool is closed";
    case SURPOOL_ERR_OVERLOADED: return "too many callers waiting for a connection";
    case SURPOOL_ERR_CONNECT: return "could not connect to the server";
    case SURPOOL_ERR_AUTH: return "authentication failed";
    case SURPOOL_ERR_SERVER: return "the server returned an error";
    case SURPOOL_ERR_PROTOCOL: return "protocol error: unexpected data from the server";
    case SURPOOL_ERR_DISCONNECTED: return "connection lost";
    case SURPOOL_ERR_REQUEST_TIMEOUT: return "request timed out";
    case SURPOOL_ERR_TLS: return "TLS error";
    case SURPOOL_ERR_TOO_LARGE: return "message exceeds the size limit";
    case SURPOOL_ERR_UNAVAILABLE: return "server unavailable";
    case SURPOOL_ERR_BROKEN: return "connection is broken";
    case SURPOOL_ERR_PAUSED: return "pool is paused";
    }
    return "unknown error";
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
