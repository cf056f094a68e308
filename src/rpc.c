/*
 * RPC methods on a leased connection: one synchronous call engine
 * (surpool__rpc) and a thin, validating wrapper per SurrealDB method.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "pool.h"

/* ------------------------------------------------------------------------- */
/* The call engine                                                            */
/* ------------------------------------------------------------------------- */

typedef struct sync_call {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} sync_call;

static void sync_done(surpool__treq *req)
{
    sync_call *s = req->userdata;
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* How long past the request deadline we wait for the transport to report the
 * timeout itself before we cancel the request on our own (rule 4 is the
 * transport's job; this only guards against a stuck transport). */
#define TRANSPORT_GRACE_NS (2 * INT64_C(1000000000))

static surpool_err wait_done(surpool_conn *c, surpool__treq *req, sync_call *s)
{
    int64_t limit = req->deadline_ns;
    if (limit != INT64_MAX)
        limit = limit > INT64_MAX - TRANSPORT_GRACE_NS ? INT64_MAX : limit + TRANSPORT_GRACE_NS;
    pthread_mutex_lock(&s->mu);
    while (!s->done) {
        int rc;
        if (limit == INT64_MAX) {
            rc = pthread_cond_wait(&s->cv, &s->mu);
        } else {
            struct timespec ts = {(time_t)(limit / INT64_C(1000000000)),
                                  (long)(limit % INT64_C(1000000000))};
            rc = pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        if (rc == ETIMEDOUT && !s->done) {
            pthread_mutex_unlock(&s->mu);
            if (c->pool->ops->cancel(c->t, req)) {
                req->status = SURPOOL_ERR_REQUEST_TIMEOUT;
                snprintf(req->message, sizeof(req->message), "no reply before the deadline");
                return SURPOOL_OK;
            }
            pthread_mutex_lock(&s->mu);
            limit = INT64_MAX; /* done() is running: it will signal */
        }
    }
    pthread_mutex_unlock(&s->mu);
    return SURPOOL_OK;
}

/* Transport-level failures leave the connection in an unknown state (a reply
 * may still come, a statement may still run): never lend it again. */
static int breaks_connection(surpool_err code)
{
    switch (code) {
    case SURPOOL_ERR_DISCONNECTED:
    case SURPOOL_ERR_REQUEST_TIMEOUT:
    case SURPOOL_ERR_PROTOCOL:
    case SURPOOL_ERR_TOO_LARGE:
    case SURPOOL_ERR_BROKEN:
        return 1;
    default:
        return 0;
    }
}

surpool_err surpool__rpc(surpool_conn *c, const char *method, const json_t *params,
                         int64_t deadline_ns, json_t **out, surpool_error *err)
{
    surpool_pool *p = c->pool;
    surpool_error local;
    if (err == NULL)
        err = &local;
    if (c->broken || c->t == NULL)
        return surpool__seterr(err, SURPOOL_ERR_BROKEN,
                               "connection is broken: release it and acquire another");

    surpool__treq req;
    memset(&req, 0, sizeof(req));
    req.id = (int64_t)atomic_fetch_add(&c->next_id, 1);
    surpool_err rc = surpool__codec_encode_request(req.id, method, params, p->ops->headroom,
                                                   &req.buf, &req.len, err);
    if (rc != SURPOOL_OK)
        return rc;

    int64_t rdeadline = surpool__deadline_after_ms(
        p->cfg.pub.request_timeout_ms > 0 ? p->cfg.pub.request_timeout_ms : -1);
    req.deadline_ns = rdeadline < deadline_ns ? rdeadline : deadline_ns;

    sync_call s;
    s.done = 0;
    if (pthread_mutex_init(&s.mu, NULL) != 0) {
        surpool__free(req.buf);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a mutex");
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int cvrc = pthread_cond_init(&s.cv, &attr);
    pthread_condattr_destroy(&attr);
    if (cvrc != 0) {
        pthread_mutex_destroy(&s.mu);
        surpool__free(req.buf);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
    }
    req.done = sync_done;
    req.userdata = &s;

    rc = p->ops->submit(c->t, &req);
    if (rc == SURPOOL_OK) {
        wait_done(c, &req, &s);
        rc = req.status;
    } else {
        snprintf(req.message, sizeof(req.message), "%s", surpool_strerror(rc));
    }
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    surpool__free(req.buf);

    atomic_fetch_add(&p->requests, 1);
    if (rc != SURPOOL_OK) {
        json_decref(req.reply);
        if (breaks_connection(rc))
            c->broken = 1;
        surpool__seterr(err, rc, "%s: %s", method, req.message);
    } else {
        json_t *result = NULL;
        rc = surpool__codec_reply_result(req.reply, &result, err);
        if (rc == SURPOOL_OK && out != NULL)
            *out = json_incref(result);
        if (rc == SURPOOL_ERR_PROTOCOL)
            c->broken = 1;
        json_decref(req.reply);
    }
    if (rc != SURPOOL_OK) {
        atomic_fetch_add(&p->request_errors, 1);
        snprintf(c->last_error, sizeof(c->last_error), "%s", err->message);
    } else {
        c->last_error[0] = '\0';
    }
    return rc;
}

/* Every public call on a lease goes through here: argument checks, then one RPC
 * with the request deadline. `params` is stolen (NULL means it could not be
 * built: out of memory). */
static surpool_err call_stolen(surpool_conn *c, const char *method, json_t *params,
                               json_t **out, surpool_error *err)
{
    if (params == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory building %s params",
                               method);
    surpool_err rc = surpool__rpc(c, method, params, INT64_MAX, out, err);
    json_decref(params);
    return rc;
}

static surpool_err bad_arg(surpool_conn *c, surpool_error *err, const char *what)
{
    if (c != NULL)
        snprintf(c->last_error, sizeof(c->last_error), "%s", what);
    return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "%s", what);
}

static int nonempty(const char *s)
{
    return s != NULL && s[0] != '\0';
}

/* ------------------------------------------------------------------------- */
/* Public methods                                                             */
/* ------------------------------------------------------------------------- */

surpool_err surpool_conn_call(surpool_conn *c, const char *method, const json_t *params,
                              json_t **out, surpool_error *err)
{
    if (c == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "conn is NULL");
    if (!nonempty(method))
        return bad_arg(c, err, "method must be a non-empty string");
    if (params != NULL && !json_is_array(params))
        return bad_arg(c, err, "params must be a JSON array or NULL");
    return surpool__rpc(c, method, params, INT64_MAX, out, err);
}

surpool_err surpool_conn_query(surpool_conn *c, const char *sql, const json_t *vars,
                               json_t **out, surpool_error *err)
{
    if (c == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "conn is NULL");
    if (!nonempty(sql))
        return bad_arg(c, err, "sql must be a non-empty string");
    if (vars != NULL && !json_is_object(vars))
        return bad_arg(c, err, "vars must be a JSON object or NULL");
    json_t *params = vars != NULL ? json_pack("[sO]", sql, (json_t *)vars)
                                  : json_pack("[s]", sql);
    return call_stolen(c, "query", params, out, err);
}

surpool_err surpool_query(surpool_pool *pool, const char *sql, const json_t *vars,
                          json_t **out, surpool_error *err)
{
    if (pool == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "pool is NULL");
    if (!nonempty(sql))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "sql must be a non-empty string");
    if (vars != NULL && !json_is_object(vars))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "vars must be a JSON object or NULL");
    surpool_conn *c = NULL;
    surpool_err rc = surpool_pool_acquire(pool, -1, &c, err);
    if (rc != SURPOOL_OK)
        return rc;
    rc = surpool_conn_query(c, sql, vars, out, err);
    surpool_conn_release(c);
    return rc;
}

surpool_err surpool_query_check(const json_t *result, surpool_error *err)
{
    if (!json_is_array(result))
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL, "query result is not an array");
    size_t i;
    json_t *st;
    json_array_foreach(result, i, st) {
        const char *status = json_string_value(json_object_get(st, "status"));
        if (status == NULL)
            return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                                   "statement %zu has no status", i);
        if (strcmp(status, "OK") != 0) {
            json_t *r = json_object_get(st, "result");
            const char *msg = json_string_value(r);
            surpool__seterr(err, SURPOOL_ERR_SERVER, "statement %zu failed: %s", i,
                            msg != NULL ? msg : status);
            const char *kind = json_string_value(json_object_get(st, "kind"));
            if (err != NULL && kind != NULL)
                snprintf(err->kind, sizeof(err->kind), "%s", kind);
            return SURPOOL_ERR_SERVER;
        }
    }
    return SURPOOL_OK;
}
