/*
 * UTF-8 checking, bounded copy and sanitizing. See utf8.h.
 */
#include <stdint.h>
#include <string.h>

#include "utf8.h"

size_t surpool__utf8_seq(const unsigned char *s, size_t n)
{
    if (n == 0)
        return 0;
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0; /* a continuation byte, C0/C1 (overlong) or F5..FF */
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
    }
    return len;
}

int surpool__utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t len = surpool__utf8_seq(p + i, n - i);
        if (len == 0)
            return 0;
        i += len;
    }
    return 1;
}

int surpool__utf8_valid_str(const char *s)
{
    return s == NULL || surpool__utf8_valid(s, strlen(s));
}

size_t surpool__strlcpy(char *dst, const char *src, size_t size)
{
    if (dst == NULL || size == 0)
        return 0;
    if (src == NULL)
        src = "";
    size_t n = strnlen(src, size - 1);
    if (src[n] != '\0') {
        /* Truncating: src[n] is the first byte left out. If it continues a
         * sequence, drop that sequence's lead byte and the rest (at most 3
         * bytes back: further than that it was not UTF-8 anyway). */
        size_t cut = n;
        for (int k = 0; k < 3 && cut > 0 && ((unsigned char)src[cut] & 0xC0) == 0x80; k++)
            cut--;
        if (((unsigned char)src[cut] & 0xC0) != 0x80)
            n = cut;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
    return n;
}

size_t surpool__utf8_trim(char *s)
{
    size_t len = strlen(s);
    size_t i = len;
    /* Walk back over at most 3 continuation bytes to the last lead byte. */
    for (int k = 0; k < 3 && i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80; k++)
        i--;
    if (i == 0)
        return len;
    size_t lead = i - 1;
    if ((unsigned char)s[lead] >= 0xC2 &&
        surpool__utf8_seq((const unsigned char *)s + lead, len - lead) == 0) {
        s[lead] = '\0';
        return lead;
    }
    return len;
}

/* Is the well-formed sequence s (len bytes) a control character? */
static int is_control(const unsigned char *s, size_t len)
{
    if (len == 1)
        return s[0] < 0x20 || s[0] == 0x7F;
    return len == 2 && s[0] == 0xC2 && s[1] <= 0x9F; /* U+0080..U+009F */
}

size_t surpool__text_sanitize(char *dst, size_t dstsize, const char *src, size_t n)
{
    if (dst == NULL || dstsize == 0)
        return 0;
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, j = 0;
    while (src != NULL && i < n) {
        char esc[4];
        const char *out;
        size_t olen;
        size_t len = surpool__utf8_seq(s + i, n - i);
        if (len == 0) {
            out = "\xEF\xBF\xBD"; /* U+FFFD for the one byte */
            olen = 3;
            len = 1;
        } else if (is_control(s + i, len)) {
            char c = s[i] == '\t' ? 't' : s[i] == '\n' ? 'n' : s[i] == '\r' ? 'r' : 0;
            if (c != 0) {
                esc[0] = '\\';
                esc[1] = c;
                olen = 2;
            } else {
                esc[0] = '?';
                olen = 1;
            }
            out = esc;
        } else {
            out = (const char *)s + i;
            olen = len;
        }
        if (olen >= dstsize - j)
            break; /* no room for it and the NUL: cut here, on a boundary */
        memcpy(dst + j, out, olen);
        j += olen;
        i += len;
    }
    dst[j] = '\0';
    return j;
}

size_t surpool__text_sanitize_str(char *dst, size_t dstsize, const char *src)
{
    return surpool__text_sanitize(dst, dstsize, src, src != NULL ? strlen(src) : 0);
}

static unsigned char ascii_lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

int surpool__ascii_ncaseeq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = ascii_lower((unsigned char)a[i]),
                      y = ascii_lower((unsigned char)b[i]);
        if (x != y)
            return 0;
        if (x == '\0')
            return 1;
    }
    return 1;
}

int surpool__ascii_caseeq(const char *a, const char *b)
{
    return surpool__ascii_ncaseeq(a, b, SIZE_MAX);
}
