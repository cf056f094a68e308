/*
 * Wire format dispatch: JSON or CBOR request encoding and thing arguments.
 * See wire.h.
 */
#include <string.h>

#include "cbor_codec.h"
#include "codec.h"
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
                                         size_t headroom, char **out, size_t *len,
                                         surpool_error *err)
{
    if (format == SURPOOL_WIRE_CBOR)
        return surpool__cbor_encode_request(id, method, params, NULL, NULL, headroom, out, len,
                                            err);
    if (params == NULL || !has_typed(params))
        return surpool__codec_encode_request(id, method, params, headroom, out, len, err);
    /* JSON has no types: send each typed value as its text form. */
    json_t *plain = NULL;
    surpool_err rc = surpool_value_to_plain(params, &plain, err);
    if (rc != SURPOOL_OK)
        return rc;
    rc = surpool__codec_encode_request(id, method, plain, headroom, out, len, err);
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
