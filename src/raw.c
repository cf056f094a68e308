/*
 * Raw results (raw.h, include/surpool.h "Raw results"): a reply's "result"
 * as the bytes the server sent. The transport already hands each reply over
 * as its whole frame, undecoded (transport.h, contract 3); a raw call keeps
 * that frame instead of decoding it, and finds the result's bytes with the
 * allocation-free walk routing uses, taken past the id to the frame's end
 * (surpool__codec_peek_info, surpool__cbor_peek_info). So
 * a large result costs its frame once and no tree: the point of the API.
 *
 * Rules:
 *  1. The bytes are the server's, located, never validated: the walk checks
 *     the envelope (one object/map, an integer id, no repeated "id", "result"
 *     or "error" key), not the value.
 *  2. An error reply is never handed over raw: its "error" value alone is
 *     decoded (small) and mapped as every other call's error.
 *  3. Everything here runs on the caller's thread, never on the transport's.
 */
#include <string.h>

#include "cbor_codec.h"
#include "codec.h"
#include "lane.h"
#include "raw.h"
#include "rpc.h"

struct surpool_raw {
    char *buf;        /* the frame (or an encoded copy), surpool__free */
    const char *data; /* the value's first byte, inside buf */
    size_t size;
    surpool_wire_format format;
};

static void fail(surpool__treq *req, surpool_err code, const char *msg)
{
    req->status = code;
    surpool__strlcpy(req->message, msg, sizeof(req->message));
}

static surpool_raw *raw_new(char *buf, size_t off, size_t size, surpool_wire_format format)
{
    surpool_raw *r = surpool__malloc(sizeof(*r));
    if (r == NULL)
        return NULL;
    r->buf = buf;
    r->data = buf + off;
    r->size = size;
    r->format = format;
    return r;
}

/* The "error" value of an error frame, alone: a small object. */
static surpool_err decode_error(const char *frame, const surpool__peek_info *in, int cbor,
                                json_t **out, surpool_error *e)
{
    const char *p = frame + in->error_off;
    if (cbor)
        return surpool__cbor_decode_value((const unsigned char *)p, in->error_len, out, e);
    return surpool__codec_load(p, in->error_len, JSON_DECODE_ANY, out, e);
}

/* A transport without bytes (tests' fake one) gave a tree: encode its result. */
static void from_tree(surpool__treq *req, surpool_wire_format format, surpool_raw **out)
{
    const json_t *e = json_object_get(req->reply, "error");
    const json_t *result = json_object_get(req->reply, "result");
    if ((e != NULL && !json_is_null(e)) || result == NULL)
        return; /* surpool__rpc_outcome() maps it */
    char *buf = NULL;
    size_t len = 0;
    surpool_error err;
    if (format == SURPOOL_WIRE_CBOR) {
        if (surpool__cbor_encode_value(result, 0, &buf, &len, &err) != SURPOOL_OK) {
            fail(req, err.code == SURPOOL_ERR_NOMEM ? SURPOOL_ERR_NOMEM : SURPOOL_ERR_PROTOCOL,
                 err.message);
            return;
        }
    } else {
        len = json_dumpb(result, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
        buf = len > 0 ? surpool__malloc(len + 1) : NULL;
        if (buf == NULL ||
            json_dumpb(result, buf, len, JSON_COMPACT | JSON_ENCODE_ANY) != len) {
            surpool__free(buf);
            fail(req, SURPOOL_ERR_NOMEM, "out of memory encoding a raw result");
            return;
        }
        buf[len] = '\0';
    }
    *out = raw_new(buf, 0, len, format);
    if (*out == NULL) {
        surpool__free(buf);
        fail(req, SURPOOL_ERR_NOMEM, "out of memory taking a raw result");
    }
}

void surpool__raw_take_reply(surpool__treq *req, surpool_wire_format format, surpool_raw **out)
{
    char *frame = req->frame;
    req->frame = NULL;
    *out = NULL;
    if (req->status != SURPOOL_OK) {
        surpool__free(frame);
        return;
    }
    if (frame == NULL) {
        if (req->reply != NULL)
            from_tree(req, format, out);
        return;
    }
    int cbor = req->frame_cbor;
    surpool__peek_info in;
    surpool_error e;
    surpool_err rc =
        cbor ? surpool__cbor_peek_info((const unsigned char *)frame, req->frame_len, &in, &e)
             : surpool__codec_peek_info(frame, req->frame_len, &in, &e);
    if (rc == SURPOOL_OK && (in.kind != SURPOOL__FRAME_REPLY || in.id != req->id))
        rc = surpool__seterr(&e, SURPOOL_ERR_PROTOCOL,
                             "reply routed by id %lld is another frame", (long long)req->id);
    if (rc == SURPOOL_OK && in.dup_key)
        rc = surpool__seterr(&e, SURPOOL_ERR_PROTOCOL,
                             "reply repeats its \"result\" or \"error\" key");
    json_t *reply = NULL;
    if (rc == SURPOOL_OK && in.has_error) {
        json_t *ev = NULL;
        rc = decode_error(frame, &in, cbor, &ev, &e);
        if (rc == SURPOOL_OK) {
            reply = json_pack("{so}", "error", ev);
            if (reply == NULL)
                rc = surpool__seterr(&e, SURPOOL_ERR_NOMEM, "out of memory");
        }
    } else if (rc == SURPOOL_OK && in.has_result) {
        reply = json_pack("{sn}", "result");
        *out = reply != NULL ? raw_new(frame, in.result_off, in.result_len,
                                       cbor ? SURPOOL_WIRE_CBOR : SURPOOL_WIRE_JSON)
                             : NULL;
        if (*out == NULL) {
            json_decref(reply);
            reply = NULL;
            rc = surpool__seterr(&e, SURPOOL_ERR_NOMEM, "out of memory taking a raw result");
        } else {
            /* The byte after the value is the frame's (a separator, or the
             * NUL the transport keeps after it), no longer needed. */
            frame[in.result_off + in.result_len] = '\0';
            frame = NULL; /* *out owns it */
        }
    } else if (rc == SURPOOL_OK) {
        reply = json_object(); /* neither: surpool__rpc_outcome() says PROTOCOL */
        if (reply == NULL)
            rc = surpool__seterr(&e, SURPOOL_ERR_NOMEM, "out of memory");
    }
    surpool__free(frame);
    if (rc != SURPOOL_OK) {
        fail(req, rc == SURPOOL_ERR_NOMEM ? SURPOOL_ERR_NOMEM : SURPOOL_ERR_PROTOCOL,
             e.message);
        return;
    }
    req->reply = reply;
}

/* ------------------------------------------------------------------------- */
/* Public                                                                     */
/* ------------------------------------------------------------------------- */

const void *surpool_raw_data(const surpool_raw *raw)
{
    return raw != NULL ? raw->data : NULL;
}

size_t surpool_raw_size(const surpool_raw *raw)
{
    return raw != NULL ? raw->size : 0;
}

surpool_wire_format surpool_raw_format(const surpool_raw *raw)
{
    return raw != NULL ? raw->format : SURPOOL_WIRE_DEFAULT;
}

void surpool_raw_free(surpool_raw *raw)
{
    if (raw == NULL)
        return;
    surpool__free(raw->buf);
    surpool__free(raw);
}

/* Pool-level raw calls lease a connection for the call (not the lane: one big
 * reply on a lane socket would hold up the small requests queued behind it
 * on that socket), and refuse what the lane refuses. Arguments are checked
 * before the lease (a query's params built), as the lane's are. */
static surpool_err pool_raw(surpool_pool *p, const char *fn, const char *method,
                            const json_t *params, surpool_raw **out, surpool_error *err)
{
    if (p == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "%s: pool and out are required",
                               fn);
    if (surpool__in_result_callback())
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s() called from inside a surpool_result_fn callback: it "
                               "would deadlock",
                               fn);
    if (surpool__method_changes_session(method))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s: %s changes session state: lease a connection for it", fn,
                               method);
    surpool_conn *c = NULL;
    surpool_err rc = surpool_pool_acquire(p, -1, &c, err);
    if (rc != SURPOOL_OK)
        return rc;
    rc = surpool_conn_call_raw(c, method, params, out, err);
    surpool_conn_release(c);
    return rc;
}

surpool_err surpool_query_raw(surpool_pool *pool, const char *sql, const json_t *vars,
                              surpool_raw **out, surpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    json_t *params = NULL;
    surpool_err rc = surpool__query_params(sql, vars, &params, err);
    if (rc != SURPOOL_OK)
        return rc;
    rc = pool_raw(pool, "surpool_query_raw", "query", params, out, err);
    json_decref(params);
    return rc;
}

surpool_err surpool_call_raw(surpool_pool *pool, const char *method, const json_t *params,
                             surpool_raw **out, surpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (method == NULL || method[0] == '\0')
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "method must be a non-empty string");
    if (params != NULL && !json_is_array(params))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "params must be a JSON array or NULL");
    return pool_raw(pool, "surpool_call_raw", method, params, out, err);
}
