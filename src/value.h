/*
 * Typed SurrealDB values inside jansson trees (docs/values.md): the reserved
 * {"$surreal": "<type>", ...} object form, and the text conversions the CBOR
 * codec and the public constructors share. Pure: no I/O, no globals.
 */
#ifndef SURPOOL_VALUE_H
#define SURPOOL_VALUE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "internal.h"

/* The reserved key of a typed value. */
#define SURPOOL__TYPE_KEY "$surreal"

/* A datetime as seconds since 1970-01-01T00:00:00Z and nanoseconds (0..999999999).
 * Years 0000..9999 only (what RFC 3339 text can carry). */
typedef struct surpool__datetime {
    int64_t secs;
    uint32_t nanos;
} surpool__datetime;

/* Parse RFC 3339 text ("YYYY-MM-DD", optionally followed by 'T', 't' or ' ',
 * "HH:MM:SS", up to 9 fraction digits and "Z"/"z"/"+HH:MM"/"-HH:MM"; a date
 * alone is midnight UTC). Returns 0 on success, -1 when it is not such text. */
int surpool__datetime_parse(const char *s, size_t len, surpool__datetime *out);
/* Canonical text: "YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z" (the
 * shortest of 0, 3, 6 or 9 fraction digits that is exact). buf needs 32 bytes.
 * Returns -1 when the year falls outside 0000..9999 or nanos > 999999999. */
int surpool__datetime_format(surpool__datetime dt, char *buf, size_t size);

/* A duration: whole seconds and nanoseconds (0..999999999). */
typedef struct surpool__duration {
    uint64_t secs;
    uint32_t nanos;
} surpool__duration;

/* Parse SurrealQL duration text: one or more <digits><unit> with units y (365
 * days), w, d, h, m, s, ms, us, µs, ns. Returns 0 or -1 (bad text, overflow). */
int surpool__duration_parse(const char *s, size_t len, surpool__duration *out);
/* Canonical text as SurrealDB prints it ("1h30m", "0ns"). buf needs 96 bytes. */
void surpool__duration_format(surpool__duration d, char *buf, size_t size);

/* UUID text (8-4-4-4-12 hex digits, either case) ↔ 16 bytes. Format writes
 * lower case and a NUL (37 bytes). */
int surpool__uuid_parse(const char *s, size_t len, unsigned char out[16]);
void surpool__uuid_format(const unsigned char in[16], char out[37]);

/* Decimal text: [+-]digits[.digits][(e|E)[+-]digits]. Returns 1 if valid. */
int surpool__decimal_valid(const char *s, size_t len);

/* Standard base64 with padding. encode: out needs 4*ceil(n/3)+1 bytes (NUL
 * written). decode: strict (padding required, no whitespace); out needs
 * 3*(len/4) bytes; returns the decoded length or -1. */
void surpool__base64_encode(const unsigned char *in, size_t n, char *out);
long long surpool__base64_decode(const char *in, size_t len, unsigned char *out);
size_t surpool__base64_encoded_len(size_t n);

/* The type name of a typed value (the string under "$surreal"), or NULL when
 * v is not an object with a string "$surreal" member. Borrowed. */
const char *surpool__value_type_name(const json_t *v);

/* An object {"$surreal": type, key: value} stealing `value` (which may be
 * NULL: then only the type key). NULL on allocation failure (value released). */
json_t *surpool__typed_new(const char *type, const char *key, json_t *value);

#endif
