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

/* Deepest nesting we send or accept: jansson's parser limit. */
#define SURPOOL__JSON_MAX_DEPTH 2048

/* SURPOOL_OK when every string and object key inside v (NULL ok) is valid UTF-8
 * (surpool__utf8_valid) and v nests at most SURPOOL__JSON_MAX_DEPTH levels
 * (which also catches a reference cycle); else SURPOOL_ERR_INVALID_ARG with a
 * message that starts with `what`. Only reads v. Used on every json_t the API
 * takes (params, vars, data, signin_params). */
surpool_err surpool__codec_check_value(const json_t *v, const char *what, surpool_error *err);

/* Encode {"id":id,"method":method,"params":params} as compact JSON text, raw
 * UTF-8 (no JSON_ENSURE_ASCII, no JSON_ESCAPE_SLASH). params may be NULL (sent
 * as []); it must be an array otherwise. The result buffer (*out, freed with
 * surpool__free) holds `headroom` spare bytes, then the text, then a NUL;
 * *len is the text length. *out and *len are set only on success.
 * params is only read (no reference taken), so one value may be encoded by
 * several threads at once. Values built with jansson's *_nocheck functions must
 * hold valid UTF-8: jansson 2.14 silently emits broken JSON for a bad key.
 * Returns SURPOOL_ERR_INVALID_ARG for a method that is not [a-z_]+, params that
 * are not an array, params that fail surpool__codec_check_value() (a string or
 * key that is not valid UTF-8, too deep, a cycle), or params jansson still
 * refuses to encode; SURPOOL_ERR_NOMEM when our buffer (or, as a retry shows,
 * jansson) runs out of memory. */
surpool_err surpool__codec_encode_request(int64_t id, const char *method, const json_t *params,
                                          size_t headroom, char **out, size_t *len,
                                          surpool_error *err);
/* The same with "txn":txn in the envelope (3.x: the request runs inside that
 * interactive transaction) unless txn is NULL; txn must be 36-character UUID
 * text, else SURPOOL_ERR_INVALID_ARG. */
surpool_err surpool__codec_encode_request_txn(int64_t id, const char *method,
                                              const json_t *params, const char *txn,
                                              size_t headroom, char **out, size_t *len,
                                              surpool_error *err);

/* The same with "session":session (3.x: the request runs in that session of
 * the socket, opened with `attach`) too, unless session is NULL; UUID text
 * as txn. */
surpool_err surpool__codec_encode_request_env(int64_t id, const char *method,
                                              const json_t *params, const char *session,
                                              const char *txn, size_t headroom, char **out,
                                              size_t *len, surpool_error *err);

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
 * An object that repeats a key anywhere in the frame is refused
 * (JSON_REJECT_DUPLICATES): keeping one of the two would let a frame carry two
 * ids and be routed to another caller.
 * *out is zeroed first and filled only on success. "id":null counts as no id;
 * an id-less frame with a non-null "error" is an ORPHAN_ERROR even if it also
 * looks like a notification. SURPOOL_ERR_PROTOCOL with a message (jansson's
 * text and position for parse errors, always valid UTF-8) when it is not JSON,
 * repeats a key, is nested deeper than jansson's limit (2048), is not an object, has a
 * non-integer id, or fits none of the kinds above; SURPOOL_ERR_NOMEM when
 * jansson ran out of memory (as far as it says so). */
surpool_err surpool__codec_decode_frame(const char *buf, size_t len, surpool__frame *out,
                                        surpool_error *err);

/* json_loadb() of server bytes (a frame, or one value of a frame with
 * JSON_DECODE_ANY in flags) as the decode reads them: NUL allowed, a repeated
 * object key refused; jansson's allocation failures are NOMEM, bad JSON is
 * PROTOCOL with jansson's text sanitised. *out is a new reference, set on
 * success only (NULL otherwise). */
surpool_err surpool__codec_load(const char *buf, size_t len, size_t flags, json_t **out,
                                surpool_error *err);

/* Route a frame without building it (src/json_peek.c; the transport's
 * service thread): walks the top-level object's keys and stops at the first
 * integer "id" followed by ',' or '}': *kind is REPLY with *id set. Without
 * one (or with a null one) it walks every key, skipping the values: *kind is
 * ORPHAN_ERROR when there is a non-null "error", else NOTIFICATION (to be
 * confirmed by the full decode). Allocates nothing, never recurses.
 * SURPOOL_ERR_PROTOCOL for a frame that is not an object, an id that is not an
 * integer in int64 (or a second "id" after a null one), or JSON broken where
 * the walk looks. Not a validator: what follows the id (a repeated "id"
 * included) is the full decode's to refuse, on the thread that takes the
 * reply; on every frame both accept they agree on kind and id. */
surpool_err surpool__codec_route(const char *buf, size_t len, surpool__frame_kind *kind,
                                 int64_t *id, surpool_error *err);

/* What a peek learns about a frame besides its route: where the top-level
 * "result" and "error" values lie (byte offset and length inside the frame:
 * JSON from the value's first byte to its last, no surrounding whitespace;
 * CBOR the whole item, tags included), found without decoding them. */
typedef struct surpool__peek_info {
    surpool__frame_kind kind;
    int64_t id;     /* REPLY only */
    int has_result; /* a "result" key (its value may be null) */
    int has_error;  /* a non-null "error" value (error_len > 0: a key, null or not) */
    int dup_key;    /* "result" or "error" appears twice (the full decode
                       refuses such a frame; the spans are the last ones) */
    size_t result_off, result_len;
    size_t error_off, error_len;
} surpool__peek_info;

/* The raw path's walk (on the caller's thread; the transport also runs it on
 * a reply no request takes, before dropping it): surpool__codec_route()'s walk
 * over every key of the frame, also reporting the spans (info is filled on
 * success only). Refuses a repeated "id" and JSON broken anywhere in the
 * top-level walk, besides route's refusals; a frame the full decode accepts
 * has its "result" value's bytes at [result_off, result_off + result_len), and
 * decoding those alone gives the same value (fuzz/fuzz_decode.c checks it).
 * Not a validator: on a frame the full decode refuses the spans are only where
 * the walk found them. */
surpool_err surpool__codec_peek_info(const char *buf, size_t len, surpool__peek_info *info,
                                     surpool_error *err);

/* Classify a decoded frame's root object (both wire formats): an integer
 * "id" makes a REPLY, no id (or null) with a non-null "error" an ORPHAN_ERROR,
 * else a "result" object with "action" a NOTIFICATION; anything else, or a
 * non-integer id, is SURPOOL_ERR_PROTOCOL. Takes over `root`: on success it is
 * out->root, on failure it is released. */
surpool_err surpool__codec_classify_frame(json_t *root, surpool__frame *out,
                                          surpool_error *err);

/* For a REPLY root: SURPOOL_OK with *result set to the BORROWED "result" member
 * (json null when the server sent null); or the server's error mapped by
 * surpool__codec_map_error() (an "error" member wins over "result"; "error":null
 * counts as absent); or SURPOOL_ERR_PROTOCOL when neither is there. result may
 * be NULL; otherwise *result is NULL on every failure. */
surpool_err surpool__codec_reply_result(const json_t *root, json_t **result,
                                        surpool_error *err);

/* Map a server error object (1.x/2.x {code,message}; 3.x adds kind, details,
 * cause) into err: code -32002 (authentication) → SURPOOL_ERR_AUTH, everything
 * else (including a missing or malformed object) → SURPOOL_ERR_SERVER.
 * server_code (0 when missing or not an integer, clamped to int), kind ("" when
 * absent) and the server's message are copied through surpool__text_sanitize()
 * (control characters escaped or replaced), truncated to fit on a UTF-8
 * character boundary. details and cause are not copied. err may be NULL.
 * Returns the code. */
surpool_err surpool__codec_map_error(const json_t *error, surpool_error *err);

/* For a REPLY root whose error surpool__codec_reply_result() mapped to
 * SURPOOL_ERR_SERVER, when the request was signin, signup or authenticate: the
 * server refused those credentials, so SURPOOL_ERR_AUTH (err->code too; the
 * server's code, kind and message stay as mapped), whatever the code. SurrealDB
 * 2.x has no -32002 and answers a wrong password with -32000; 3.x answers a bad
 * token with -32000 and a THROW in a SIGNIN clause with -32006. The one
 * exception stays SURPOOL_ERR_SERVER: a message saying the request "can be
 * retried" (a transaction conflict, not a refusal). err may be NULL. */
surpool_err surpool__codec_auth_refusal(const json_t *root, surpool_error *err);

#endif
