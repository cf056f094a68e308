/*
 * Text conversions of typed values: RFC 3339 datetimes, SurrealQL durations,
 * UUIDs, decimals, base64. See value.h. Pure: no I/O, no globals, no locale.
 */
#include <stdio.h>
#include <string.h>

#include "value.h"

/* ---- calendar (proleptic Gregorian, H. Hinnant's days_from_civil) ---- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : dm[m - 1];
}

/* Read exactly n decimal digits at s[*i]. */
static int digits(const char *s, size_t len, size_t *i, int n, unsigned *out)
{
    unsigned v = 0;
    for (int k = 0; k < n; k++) {
        if (*i >= len || s[*i] < '0' || s[*i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[*i] - '0');
        (*i)++;
    }
    *out = v;
    return 0;
}

static int expect(const char *s, size_t len, size_t *i, char c)
{
    if (*i >= len || s[*i] != c)
        return -1;
    (*i)++;
    return 0;
}

int surpool__datetime_parse(const char *s, size_t len, surpool__datetime *out)
{
    size_t i = 0;
    unsigned y, mo, d, h = 0, mi = 0, se = 0;
    uint32_t nanos = 0;
    int64_t offset = 0;
    if (s == NULL || digits(s, len, &i, 4, &y) || expect(s, len, &i, '-') ||
        digits(s, len, &i, 2, &mo) || expect(s, len, &i, '-') || digits(s, len, &i, 2, &d))
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo))
        return -1;
    if (i < len) {
        if (s[i] != 'T' && s[i] != 't' && s[i] != ' ')
            return -1;
        i++;
        if (digits(s, len, &i, 2, &h) || expect(s, len, &i, ':') ||
            digits(s, len, &i, 2, &mi) || expect(s, len, &i, ':') || digits(s, len, &i, 2, &se))
            return -1;
        if (h > 23 || mi > 59 || se > 59)
            return -1;
        if (i < len && s[i] == '.') {
            i++;
            int n = 0;
            while (i < len && s[i] >= '0' && s[i] <= '9') {
                if (n == 9)
                    return -1;
                nanos = nanos * 10 + (uint32_t)(s[i] - '0');
                n++;
                i++;
            }
            if (n == 0)
                return -1;
            for (; n < 9; n++)
                nanos *= 10;
        }
        if (i >= len)
            return -1; /* a time needs a zone */
        if (s[i] == 'Z' || s[i] == 'z') {
            i++;
        } else if (s[i] == '+' || s[i] == '-') {
            int neg = s[i] == '-';
            unsigned oh, om;
            i++;
            if (digits(s, len, &i, 2, &oh) || expect(s, len, &i, ':') ||
                digits(s, len, &i, 2, &om) || oh > 23 || om > 59)
                return -1;
            offset = (int64_t)(oh * 3600 + om * 60);
            if (neg)
                offset = -offset;
        } else {
            return -1;
        }
        if (i != len)
            return -1;
    }
    out->secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offset;
    out->nanos = nanos;
    return 0;
}

/* Seconds of 0000-01-01T00:00:00Z and of 10000-01-01T00:00:00Z. */
#define DT_MIN_SECS INT64_C(-62167219200)
#define DT_END_SECS INT64_C(253402300800)

int surpool__datetime_format(surpool__datetime dt, char *buf, size_t size)
{
    if (dt.nanos > 999999999u || dt.secs < DT_MIN_SECS || dt.secs >= DT_END_SECS)
        return -1;
    int64_t days = dt.secs / 86400, rem = dt.secs % 86400;
    if (rem < 0) {
        rem += 86400;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    char frac[12] = "";
    if (dt.nanos != 0) {
        if (dt.nanos % 1000000 == 0)
            snprintf(frac, sizeof(frac), ".%03u", (unsigned)(dt.nanos / 1000000));
        else if (dt.nanos % 1000 == 0)
            snprintf(frac, sizeof(frac), ".%06u", (unsigned)(dt.nanos / 1000));
        else
            snprintf(frac, sizeof(frac), ".%09u", (unsigned)dt.nanos);
    }
    int n = snprintf(buf, size, "%04d-%02u-%02uT%02d:%02d:%02d%sZ", (int)y, m, d,
                     (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60), frac);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

/* ---- durations ---- */

#define NS_PER_S UINT64_C(1000000000)

int surpool__duration_parse(const char *s, size_t len, surpool__duration *out)
{
    static const struct {
        const char *name;
        uint64_t secs;  /* seconds per unit, or 0 */
        uint64_t nanos; /* nanoseconds per unit when below a second */
    } units[] = {
        /* Longer names first so "ms" is not read as "m" then "s". */
        {"ms", 0, 1000000}, {"us", 0, 1000},  {"\xC2\xB5s", 0, 1000}, {"ns", 0, 1},
        {"y", 31536000, 0}, {"w", 604800, 0}, {"d", 86400, 0},        {"h", 3600, 0},
        {"m", 60, 0},       {"s", 1, 0},
    };
    if (s == NULL || len == 0)
        return -1;
    uint64_t secs = 0, nanos = 0; /* nanos may exceed a second until the end */
    size_t i = 0;
    while (i < len) {
        uint64_t n = 0;
        size_t start = i;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (n > (UINT64_MAX - 9) / 10)
                return -1;
            n = n * 10 + (uint64_t)(s[i] - '0');
            i++;
        }
        if (i == start)
            return -1;
        size_t u = 0;
        for (; u < sizeof(units) / sizeof(units[0]); u++) {
            size_t ul = strlen(units[u].name);
            if (len - i >= ul && memcmp(s + i, units[u].name, ul) == 0) {
                i += ul;
                break;
            }
        }
        if (u == sizeof(units) / sizeof(units[0]))
            return -1;
        if (units[u].secs != 0) {
            if (n > UINT64_MAX / units[u].secs || secs > UINT64_MAX - n * units[u].secs)
                return -1;
            secs += n * units[u].secs;
        } else {
            uint64_t whole = n / (NS_PER_S / units[u].nanos);
            uint64_t part = n % (NS_PER_S / units[u].nanos) * units[u].nanos;
            if (secs > UINT64_MAX - whole)
                return -1;
            secs += whole;
            nanos += part; /* < 1e9 per step, a sum of at most len steps */
            if (nanos >= NS_PER_S) {
                if (secs == UINT64_MAX)
                    return -1;
                secs++;
                nanos -= NS_PER_S;
            }
        }
    }
    out->secs = secs;
    out->nanos = (uint32_t)nanos;
    return 0;
}

void surpool__duration_format(surpool__duration d, char *buf, size_t size)
{
    if (size == 0)
        return;
    buf[0] = '\0';
    if (d.secs == 0 && d.nanos == 0) {
        snprintf(buf, size, "0ns");
        return;
    }
    /* Each unit takes what the larger ones left (a year is 365 days, not a
     * whole number of weeks). */
    uint64_t rem = d.secs;
    uint64_t parts[9];
    static const uint64_t unit_secs[6] = {31536000, 604800, 86400, 3600, 60, 1};
    for (int k = 0; k < 6; k++) {
        parts[k] = rem / unit_secs[k];
        rem %= unit_secs[k];
    }
    parts[6] = d.nanos / 1000000;
    parts[7] = d.nanos / 1000 % 1000;
    parts[8] = d.nanos % 1000;
    static const char *names[9] = {"y", "w", "d", "h", "m", "s", "ms", "\xC2\xB5s", "ns"};
    size_t used = 0;
    for (int k = 0; k < 9; k++) {
        if (parts[k] == 0)
            continue;
        int n =
            snprintf(buf + used, size - used, "%llu%s", (unsigned long long)parts[k], names[k]);
        if (n < 0 || (size_t)n >= size - used)
            return;
        used += (size_t)n;
    }
}

/* ---- UUID ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int surpool__uuid_parse(const char *s, size_t len, unsigned char out[16])
{
    if (s == NULL || len != 36)
        return -1;
    size_t j = 0;
    for (size_t i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return -1;
            i++;
            continue;
        }
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[j++] = (unsigned char)(hi << 4 | lo);
        i += 2;
    }
    return 0;
}

void surpool__uuid_format(const unsigned char in[16], char out[37])
{
    static const char hex[] = "0123456789abcdef";
    size_t j = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[j++] = '-';
        out[j++] = hex[in[i] >> 4];
        out[j++] = hex[in[i] & 15];
    }
    out[j] = '\0';
}

/* ---- decimal ---- */

int surpool__decimal_valid(const char *s, size_t len)
{
    size_t i = 0, n;
    if (s == NULL)
        return 0;
    if (i < len && (s[i] == '+' || s[i] == '-'))
        i++;
    for (n = 0; i < len && s[i] >= '0' && s[i] <= '9'; n++)
        i++;
    if (n == 0)
        return 0;
    if (i < len && s[i] == '.') {
        i++;
        for (n = 0; i < len && s[i] >= '0' && s[i] <= '9'; n++)
            i++;
        if (n == 0)
            return 0;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        for (n = 0; i < len && s[i] >= '0' && s[i] <= '9'; n++)
            i++;
        if (n == 0)
            return 0;
    }
    return i == len;
}

/* ---- base64 ---- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t surpool__base64_encoded_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

void surpool__base64_encode(const unsigned char *in, size_t n, char *out)
{
    size_t j = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[j++] = b64[v >> 18];
        out[j++] = b64[v >> 12 & 63];
        out[j++] = b64[v >> 6 & 63];
        out[j++] = b64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[j++] = b64[v >> 18];
        out[j++] = b64[v >> 12 & 63];
        out[j++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
        out[j++] = '=';
    }
    out[j] = '\0';
}

static int b64val(char c)
{
    const char *p = c != '\0' ? strchr(b64, c) : NULL;
    return p != NULL ? (int)(p - b64) : -1;
}

long long surpool__base64_decode(const char *in, size_t len, unsigned char *out)
{
    if (len % 4 != 0)
        return -1;
    size_t j = 0;
    for (size_t i = 0; i < len; i += 4) {
        int last = i + 4 == len;
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            if (in[i + k] == '=' && last && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad > 0) {
                return -1; /* data after padding */
            } else if ((v[k] = b64val(in[i + k])) < 0) {
                return -1;
            }
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        /* Canonical form only: the bits padding drops must be zero. */
        if ((pad == 1 && (w & 0xFF) != 0) || (pad == 2 && (w & 0xFFFF) != 0))
            return -1;
        out[j++] = (unsigned char)(w >> 16);
        if (pad < 2)
            out[j++] = (unsigned char)(w >> 8 & 0xFF);
        if (pad < 1)
            out[j++] = (unsigned char)(w & 0xFF);
    }
    return (long long)j;
}
