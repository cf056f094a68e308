/*
 * The wire format of a pool (surpool_config.wire_format, URL key format=):
 * picks the codec for requests and the form of "thing" arguments. The
 * transport picks the frame type and the reply decoder (transport_lws.c).
 */
#ifndef SURPOOL_WIRE_H
#define SURPOOL_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "internal.h"

/* Encode one request in `format` (SURPOOL_WIRE_JSON or SURPOOL_WIRE_CBOR; the
 * buffer contract is the codecs': `headroom` spare bytes first, *len payload
 * bytes, freed with surpool__free). Over JSON, params holding typed values
 * ({"$surreal": ...}, docs/values.md) are sent as their plain JSON text forms;
 * a malformed typed value is SURPOOL_ERR_INVALID_ARG in both formats. `txn`
 * (NULL: none) puts the request in that interactive transaction: a UUID
 * string over JSON, a UUID (tag 37) over CBOR. */
surpool_err surpool__wire_encode_request(surpool_wire_format format, int64_t id,
                                         const char *method, const json_t *params,
                                         const char *txn, size_t headroom, char **out,
                                         size_t *len, surpool_error *err);

/* The same with a session (NULL: none; 3.x, opened with `attach`): UUID text
 * over JSON, a UUID (tag 37) over CBOR, as txn. */
surpool_err surpool__wire_encode_request_env(surpool_wire_format format, int64_t id,
                                             const char *method, const json_t *params,
                                             const char *session, const char *txn,
                                             size_t headroom, char **out, size_t *len,
                                             surpool_error *err);

/* A "thing" argument (table or record id text) as `format` sends it: over
 * JSON the text itself (the server parses it), over CBOR a typed table or
 * record id read here by surpool_value_thing(). New reference, or NULL with
 * err set (INVALID_ARG, NOMEM). */
json_t *surpool__wire_thing(surpool_wire_format format, const char *thing, surpool_error *err);

/* The submitter's half of a reply (transport.h, contract 3): decode req->frame
 * (JSON or CBOR, req->frame_cbor) into req->reply on the calling thread and
 * free the frame. A frame that does not decode, or decodes to another kind or
 * id than the one the transport routed by (a peek is no validator), turns the
 * request into SURPOOL_ERR_PROTOCOL (or NOMEM) with the reason in
 * req->message: the connection is then not to be trusted. Does nothing unless
 * req->status is SURPOOL_OK with a frame; always leaves req->frame NULL. */
struct surpool__treq;
void surpool__wire_decode_reply(struct surpool__treq *req);

#endif
