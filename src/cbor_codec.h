/*
 * CBOR codec for SurrealDB RPC frames (subprotocol "cbor", binary frames),
 * through libcbor's encoding helpers and streaming decoder. Pure: no I/O, no
 * globals, no threads, so it can be fuzzed. Mirrors codec.h (the JSON codec):
 * a decoded frame is the same {"id":..,"result"|"error":..} json_t, so
 * surpool__codec_reply_result() and surpool__codec_map_error() serve both.
 *
 * Values: docs/values.md. Typed values travel as the reserved
 * {"$surreal": type, ...} objects (value.h); every json_t string is sent as a
 * CBOR text string, byte for byte.
 */
#ifndef SURPOOL_CBOR_CODEC_H
#define SURPOOL_CBOR_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "codec.h"
#include "internal.h"

/* Deepest nesting of arrays, maps and tags accepted in either direction
 * (decoded frames: the envelope counts; encoded values: typed values count as
 * one level each, plus their inner arrays). */
#define SURPOOL__CBOR_MAX_DEPTH 256

/* Encode {"id":id,"method":method,"params":params} (plus "session" and "txn"
 * as UUIDs when not NULL: 36-character UUID text) as one CBOR map. params may
 * be NULL (sent as []); it must be an array otherwise. Like the JSON codec the
 * buffer (*out, freed with surpool__free) starts with `headroom` spare bytes;
 * *len is the CBOR length. A NUL follows the payload (not counted).
 * params is only read. Returns SURPOOL_ERR_INVALID_ARG (bad method, params not
 * an array, a malformed typed value, a string that is not valid UTF-8, nesting
 * deeper than SURPOOL__CBOR_MAX_DEPTH) or SURPOOL_ERR_NOMEM. */
surpool_err surpool__cbor_encode_request(int64_t id, const char *method, const json_t *params,
                                         const char *session, const char *txn, size_t headroom,
                                         char **out, size_t *len, surpool_error *err);

/* Encode one value (any json_t) the same way, without an envelope. */
surpool_err surpool__cbor_encode_value(const json_t *v, size_t headroom, char **out,
                                       size_t *len, surpool_error *err);

/* Decode exactly one CBOR item (no trailing bytes) into a new json_t.
 * SURPOOL_ERR_PROTOCOL with a message for malformed or truncated input,
 * indefinite lengths, lengths longer than the input, nesting deeper than
 * SURPOOL__CBOR_MAX_DEPTH, map keys that are not text, duplicate map keys,
 * text that is not UTF-8, tag numbers above INT64_MAX, simple values other
 * than false/true/null/undefined; SURPOOL_ERR_NOMEM. */
surpool_err surpool__cbor_decode_value(const unsigned char *buf, size_t len, json_t **out,
                                       surpool_error *err);

/* Decode one binary frame like surpool__codec_decode_frame(): the root must be
 * a map; an integer "id" makes a REPLY, no id (or null) with a non-null
 * "error" an ORPHAN_ERROR, else a result object with "action" a NOTIFICATION.
 * Errors as surpool__cbor_decode_value(), plus PROTOCOL for a root that fits
 * none of the kinds. */
surpool_err surpool__cbor_decode_frame(const unsigned char *buf, size_t len,
                                       surpool__frame *out, surpool_error *err);

/* Route a frame without building it (the transport's service thread): walks
 * the top-level map's keys and stops at the first integer "id": *kind is REPLY
 * with *id set. Without one (or with a null one) it walks every key, skipping
 * the values: *kind is ORPHAN_ERROR when there is a non-null "error", else
 * NOTIFICATION (to be confirmed by the full decode). The core sends "id"
 * first, so a reply costs a few bytes whatever its size. Walks at most the
 * frame's bytes, never recurses, allocates nothing. SURPOOL_ERR_PROTOCOL for a
 * root that is not a definite map, a key that is not text, an "id" that is
 * not an integer in int64 (or a second "id" after a null one), or CBOR
 * malformed where the walk looks. Not a validator: what follows the id (a
 * second "id" included) is the full decode's to refuse, on the thread that
 * takes the reply; on every frame both accept they agree on kind and id. */
surpool_err surpool__cbor_route(const unsigned char *buf, size_t len, surpool__frame_kind *kind,
                                int64_t *id, surpool_error *err);

/* What surpool__cbor_route() walks, over every key of the frame, also reporting
 * where the top-level "result" and "error" items lie (codec.h:
 * surpool__peek_info; each span is one whole item, tags included). Refuses a
 * duplicate "id" and malformed or truncated CBOR anywhere in the frame's
 * top-level walk. The raw path runs it on the caller's thread, the transport
 * on a reply no request takes, before dropping it. On a frame the full decode
 * accepts, surpool__cbor_decode_value() of the result span alone gives the
 * frame's "result" (fuzz/fuzz_cbor_decode.c checks it). */
surpool_err surpool__cbor_peek_info(const unsigned char *buf, size_t len,
                                    surpool__peek_info *info, surpool_error *err);

#endif
