/*
 * Wire format dispatch: JSON or CBOR request encoding and thing arguments.
 * See wire.h.
 */
#include <string.h>

#include "cbor_codec.h"
#include "codec.h"
#include "transport.h"
#include "value.h"
#include "wire.h"

/* Does v hold an object with a "$surreal" key anywhere? */
static int has_typed(const json_t *v)
{
    if (json_is_object(v)) {
        if (json_object_get(v, SURPOOL__TYPE_KEY) != NULL)
            return 1;
        const char *k;
        json_t *m;
        json_object_foreach((json_t *)v, k, m)
        {
            if (has_typed(m))
                return 1;
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (has_typed(json_array_get(v, i)))
                return 1;
        }
    }
    return 0;
}

surpool_err surpool__wire_encode_request(surpool_wire_format format, int64_t id,
                                         const char *method, const json_t *params,
                                         const char *txn, size_t headroom, char **out,
                                         size_t *len, surpool_error *err)
{
    return surpool__wire_encode_request_env(format, id, method, params, NULL, txn, headroom,
                                            out, len, err);
}

surpool_err surpool__wire_encode_request_env(surpool_wire_format format, int64_t id,
                                             const char *method, const json_t *params,
                                             const char *session, const char *txn,
                                             size_t headroom, char **out, size_t *len,
                                             surpool_error *err)
{
    if (format == SURPOOL_WIRE_CBOR)
        return surpool__cbor_encode_request(id, method, params, session, txn, headroom, out,
                                            len, err);
    if (params == NULL || !has_typed(params))
        return surpool__codec_encode_request_env(id, method, params, session, txn, headroom,
                                                 out, len, err);
    /* JSON has no types: send each typed value as its text form. */
    json_t *plain = NULL;
    surpool_err rc = surpool_value_to_plain(params, &plain, err);
    if (rc != SURPOOL_OK)
        return rc;
    rc = surpool__codec_encode_request_env(id, method, plain, session, txn, headroom, out, len,
                                           err);
    json_decref(plain);
    return rc;
}

json_t *surpool__wire_thing(surpool_wire_format format, const char *thing, surpool_error *err)
{
    json_t *v = NULL;
    if (format != SURPOOL_WIRE_CBOR) {
        v = json_string(thing);
        if (v == NULL)
            surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                            "the table or record id must be valid UTF-8");
        return v;
    }
    if (surpool_value_thing(thing, &v, err) != SURPOOL_OK)
        return NULL;
    return v;
}

void surpool__wire_decode_reply(surpool__treq *req)
{
    char *frame = req->frame;
    req->frame = NULL;
    if (frame == NULL)
        return;
    if (req->status != SURPOOL_OK || req->reply != NULL) {
        surpool__free(frame);
        return;
    }
    surpool__frame f;
    surpool_error e;
    surpool_err rc =
        req->frame_cbor
            ? surpool__cbor_decode_frame((const unsigned char *)frame, req->frame_len, &f, &e)
            : surpool__codec_decode_frame(frame, req->frame_len, &f, &e);
    surpool__free(frame); /* at once: a big reply should not be held twice for long */
    if (rc == SURPOOL_OK && (f.kind != SURPOOL__FRAME_REPLY || f.id != req->id)) {
        json_decref(f.root);
        rc = surpool__seterr(&e, SURPOOL_ERR_PROTOCOL,
                             "reply routed by id %lld decodes to another frame",
                             (long long)req->id);
    }
    if (rc != SURPOOL_OK) {
        req->status = rc == SURPOOL_ERR_NOMEM ? SURPOOL_ERR_NOMEM : SURPOOL_ERR_PROTOCOL;
        surpool__strlcpy(req->message, e.message, sizeof(req->message));
        return;
    }
    req->reply = f.root;
}
