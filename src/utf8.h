/*
 * Text helpers shared by every source file: the one UTF-8 checker, the one
 * bounded string copy (surpool__strlcpy, declared in internal.h) and the one
 * sanitizer for text that comes from the server or from libwebsockets.
 *
 * Pure: no I/O, no globals, no allocation.
 */
#ifndef SURPOOL_UTF8_H
#define SURPOOL_UTF8_H

#include <stddef.h>

#include "internal.h"

/* Length (1..4) of the well-formed UTF-8 sequence at the start of s (n bytes
 * available), or 0 when it is not one. Strict, as RFC 3629: no overlong forms,
 * no surrogates (U+D800..U+DFFF), nothing above U+10FFFF. n == 0 returns 0. */
size_t surpool__utf8_seq(const unsigned char *s, size_t n);

/* 1 when the n bytes at s are well-formed UTF-8 (by surpool__utf8_seq), else 0.
 * NUL bytes count as valid (U+0000); callers that take C strings never pass
 * them. */
int surpool__utf8_valid(const char *s, size_t n);

/* 1 when the NUL-terminated s is well-formed UTF-8; NULL counts as valid (an
 * absent optional argument). */
int surpool__utf8_valid_str(const char *s);

/* Drop an incomplete UTF-8 sequence at the end of the NUL-terminated s (what a
 * truncating snprintf may leave). Returns the new length. */
size_t surpool__utf8_trim(char *s);

/*
 * Copy the n bytes at src (not necessarily NUL-terminated, may hold anything)
 * into dst[dstsize] as printable UTF-8 text, for error messages and log lines:
 * well-formed non-control characters are kept; each byte that does not start a
 * well-formed sequence becomes U+FFFD (the replacement character); control
 * characters (U+0000..U+001F, U+007F, U+0080..U+009F) become '?', except tab,
 * newline and carriage return, which become the two-character escapes \t \n \r
 * so that one message stays one log line. Output is cut on a character
 * boundary to fit and always NUL-terminated when dstsize > 0. Returns the
 * bytes written (without the NUL).
 */
size_t surpool__text_sanitize(char *dst, size_t dstsize, const char *src, size_t n);

/* The same for a NUL-terminated src (NULL = ""). */
size_t surpool__text_sanitize_str(char *dst, size_t dstsize, const char *src);

/*
 * 1 when a and b are equal ignoring the case of ASCII letters, comparing at
 * most n bytes (a NUL in both ends the comparison early), else 0. Unlike
 * strncasecmp() it ignores the locale: in an 8-bit Turkish locale
 * tolower('I') is not 'i', and in Latin-1 'É' would equal 'é'. Protocol
 * names (HTTP headers, SurrealQL keywords) are ASCII.
 */
int surpool__ascii_ncaseeq(const char *a, const char *b, size_t n);

/* The same for whole NUL-terminated strings. */
int surpool__ascii_caseeq(const char *a, const char *b);

#endif
