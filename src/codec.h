/*
 * JSON codec for SurrealDB RPC frames (jansson). Pure: no I/O, no globals, no
 * threads, so it can be fuzzed.
 */
#ifndef SURPOOL_CODEC_H
#define SURPOOL_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "internal.h"

/* Encode {"id":id,"method":method,"params":params} as compact JSON text, raw
 * UTF-8 (no JSON_ENSURE_ASCII, no JSON_ESCAPE_SLASH). params may be NULL (sent
 * as []); it must be an array otherwise. The result buffer (*out, freed with
 * surpool__free) holds `headroom` spare bytes, then the text, then a NUL;
 * *len is the text length. */
surpool_err surpool__codec_encode_request(int64_t id, const char *method, const json_t *params,
                                          size_t headroom, char **out, size_t *len,
                                          surpool_error *err);

typedef enum surpool__frame_kind {
    SURPOOL__FRAME_REPLY = 1,        /* has an integer id: result or error */
    SURPOOL__FRAME_NOTIFICATION = 2, /* no id; result is an object with "action" */
    SURPOOL__FRAME_ORPHAN_ERROR = 3, /* no id; an error the server could not correlate */
} surpool__frame_kind;

typedef struct surpool__frame {
    surpool__frame_kind kind;
    int64_t id;   /* REPLY only */
    json_t *root; /* new reference owned by the caller */
} surpool__frame;

/* Decode one text frame (may contain NUL bytes inside strings: JSON_ALLOW_NUL).
 * SURPOOL_ERR_PROTOCOL with a message when it is not JSON, not an object, has a
 * non-integer id, or fits none of the kinds above. */
surpool_err surpool__codec_decode_frame(const char *buf, size_t len, surpool__frame *out,
                                        surpool_error *err);

/* For a REPLY root: SURPOOL_OK with *result set to the BORROWED "result" member
 * (json null when the server sent null); or the server's error mapped by
 * surpool__codec_map_error(); or SURPOOL_ERR_PROTOCOL when neither is there. */
surpool_err surpool__codec_reply_result(const json_t *root, json_t **result, surpool_error *err);

/* Map a server error object (1.x/2.x {code,message}; 3.x adds kind, details,
 * cause) into err: code -32002 (authentication) → SURPOOL_ERR_AUTH, everything
 * else (including a missing or malformed object) → SURPOOL_ERR_SERVER. server_code, kind and message copied
 * (truncated to fit). Returns the code. */
surpool_err surpool__codec_map_error(const json_t *error, surpool_error *err);

#endif
