/*
 * RPC methods on a leased connection: one synchronous call engine
 * (surpool__rpc) and a thin, validating wrapper per SurrealDB method.
 */
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "codec.h"
#include "lease.h"
#include "pool.h"
#include "raw.h"
#include "wire.h"
#include "thread.h"
#include "utf8.h"
#include "value.h"

/* ------------------------------------------------------------------------- */
/* The call engine                                                            */
/* ------------------------------------------------------------------------- */

int surpool__sync_init(surpool__sync *s)
{
    s->done = 0;
    if (pthread_mutex_init(&s->mu, NULL) != 0)
        return -1;
    if (surpool__cond_init(&s->cv) != 0) {
        pthread_mutex_destroy(&s->mu);
        return -1;
    }
    return 0;
}

void surpool__sync_destroy(surpool__sync *s)
{
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
}

void surpool__sync_signal(surpool__sync *s)
{
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void surpool__sync_wait(surpool__sync *s)
{
    pthread_mutex_lock(&s->mu);
    while (!s->done)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

static void sync_done(surpool__treq *req)
{
    surpool__sync_signal(req->userdata);
}

/* How long past the request deadline we wait for the transport to report the
 * timeout itself before we cancel the request on our own (rule 4 is the
 * transport's job; this only guards against a stuck transport). */
#define TRANSPORT_GRACE_NS (2 * INT64_C(1000000000))

static surpool_err wait_done(surpool_conn *c, surpool__treq *req, surpool__sync *s)
{
    int64_t limit = req->deadline_ns;
    if (limit != INT64_MAX)
        limit = limit > INT64_MAX - TRANSPORT_GRACE_NS ? INT64_MAX : limit + TRANSPORT_GRACE_NS;
    pthread_mutex_lock(&s->mu);
    while (!s->done) {
        int rc = surpool__cond_wait_until(&s->cv, &s->mu, limit);
        if (rc == ETIMEDOUT && !s->done) {
            pthread_mutex_unlock(&s->mu);
            if (surpool__conn_cancel(c, req)) {
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
int surpool__breaks_connection(surpool_err code)
{
    switch (code) {
    case SURPOOL_ERR_DISCONNECTED:
    case SURPOOL_ERR_REQUEST_TIMEOUT:
    case SURPOOL_ERR_PROTOCOL:
    case SURPOOL_ERR_TOO_LARGE:
    case SURPOOL_ERR_BROKEN: return 1;
    default: return 0;
    }
}

/* Methods whose effect outlives the call: a lease that used one must not be
 * lent to the next borrower as it is. */
/* Requests whose text holds a password or token: wiped once sent. */
static int carries_secret(const char *method)
{
    return strcmp(method, "signin") == 0 || strcmp(method, "signup") == 0 ||
           strcmp(method, "authenticate") == 0;
}

surpool_err surpool__check_method_params(const char *method, const json_t *params,
                                         surpool_error *err)
{
    if (method == NULL || method[0] == '\0' || strlen(method) >= 32)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "method must be a non-empty string shorter than 32 bytes");
    if (params != NULL && !json_is_array(params))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "params must be a JSON array or NULL");
    return SURPOOL_OK;
}

int surpool__method_changes_session(const char *method)
{
    static const char *const names[] = {"use",        "signin", "signup", "authenticate",
                                        "invalidate", "let",    "unset",  "reset",
                                        "begin",      "live",   "attach", "detach"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(method, names[i]) == 0)
            return 1;
    return 0;
}

surpool_err surpool__rpc_prepare(surpool_pool *p, surpool__treq *req, const char *method,
                                 const json_t *params, int64_t deadline_ns,
                                 const surpool__reqopts *o, surpool_error *err)
{
    req->id = (int64_t)atomic_fetch_add(&p->next_id, 1);
    surpool_err rc = surpool__wire_encode_request_env(
        p->cfg.pub.wire_format, req->id, method, params, o != NULL ? o->session : NULL,
        o != NULL ? o->txn : NULL, p->ops->headroom, &req->buf, &req->len, err);
    if (rc != SURPOOL_OK)
        return rc;
    long timeout_ms =
        o != NULL && o->timeout_ms >= 0 ? o->timeout_ms : p->cfg.pub.request_timeout_ms;
    int64_t rdeadline = surpool__deadline_after_ms(timeout_ms > 0 ? timeout_ms : -1);
    req->deadline_ns = rdeadline < deadline_ns ? rdeadline : deadline_ns;
    return SURPOOL_OK;
}

void surpool__rpc_free_payload(surpool_pool *p, surpool__treq *req, const char *method)
{
    if (req->buf != NULL && carries_secret(method))
        surpool__wipe(req->buf, p->ops->headroom + req->len);
    surpool__free(req->buf);
    req->buf = NULL;
}

surpool_err surpool__rpc_outcome(surpool_pool *p, const char *method, surpool__treq *req,
                                 json_t **result, surpool_error *err)
{
    /* Decoding happens here, on the thread that wants the result, never on
     * the transport's: one big reply must not hold up every connection. */
    surpool__wire_decode_reply(req);
    surpool_err rc = req->status;
    atomic_fetch_add(&p->requests, 1);
    if (rc != SURPOOL_OK)
        surpool__seterr(err, rc, "%s: %s", method, req->message);
    else
        rc = surpool__codec_reply_result(req->reply, result, err);
    /* The methods that carry credentials are the ones that present them: the
     * server refusing one is an authentication failure on every version. */
    if (rc == SURPOOL_ERR_SERVER && carries_secret(method))
        rc = surpool__codec_auth_refusal(req->reply, err);
    if (rc != SURPOOL_OK)
        atomic_fetch_add(&p->request_errors, 1);
    return rc;
}

/* Methods after which the session's identity is the borrower's, not the
 * pool's: an expired session is then not ours to renew. */
static int changes_identity(const char *method)
{
    return carries_secret(method) || strcmp(method, "invalidate") == 0 ||
           strcmp(method, "reset") == 0;
}

/* One RPC, inside the lease's open transaction if any, without the session
 * bookkeeping. *session_expired (may be NULL) is set when the server refused
 * it because the session expired. */
static surpool_err rpc_once(surpool_conn *c, const char *method, const json_t *params,
                            int64_t deadline_ns, json_t **out, surpool_raw **raw,
                            surpool_error *err, int *session_expired);

/* rpc_once without the expiry report (begin, commit, cancel). */
static surpool_err rpc_send(surpool_conn *c, const char *method, const json_t *params,
                            int64_t deadline_ns, json_t **out, surpool_error *err)
{
    return rpc_once(c, method, params, deadline_ns, out, NULL, err, NULL);
}

/* With `raw` (not NULL) the reply is not decoded: a result is handed over as
 * its bytes in *raw (raw.h), an error is decoded alone and mapped as usual. */
static surpool_err rpc_once(surpool_conn *c, const char *method, const json_t *params,
                            int64_t deadline_ns, json_t **out, surpool_raw **raw,
                            surpool_error *err, int *session_expired)
{
    surpool_pool *p = c->pool;
    surpool_error local;
    if (err == NULL)
        err = &local;
    if (surpool__in_result_callback()) {
        /* On the transport's thread it would wait for its own reply. */
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s called from inside a surpool_result_fn callback", method);
    }
    if (c->broken || c->t == NULL) {
        return surpool__seterr(err, SURPOOL_ERR_BROKEN,
                               "connection is broken: release it and acquire another");
    }

    surpool__treq req;
    memset(&req, 0, sizeof(req));
    surpool__reqopts o = {c->txn[0] != '\0' ? c->txn : NULL,
                          c->own_timeout ? c->timeout_ms : -1, NULL};
    surpool_err rc = surpool__rpc_prepare(p, &req, method, params, deadline_ns, &o, err);
    if (rc != SURPOOL_OK)
        return rc;

    surpool__sync s;
    if (surpool__sync_init(&s) != 0) {
        surpool__rpc_free_payload(p, &req, method);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
    }
    req.done = sync_done;
    req.userdata = &s;

    rc = surpool__conn_submit(c, &req);
    if (rc == SURPOOL_OK) {
        wait_done(c, &req, &s);
        rc = req.status;
    } else {
        surpool__strlcpy(req.message, surpool_strerror(rc), sizeof(req.message));
    }
    surpool__sync_destroy(&s);
    surpool__rpc_free_payload(p, &req, method);

    req.status = rc;
    if (raw != NULL)
        surpool__raw_take_reply(&req, p->cfg.pub.wire_format, raw);
    json_t *result = NULL;
    rc = surpool__rpc_outcome(p, method, &req, &result, err);
    if (rc == SURPOOL_OK && out != NULL)
        *out = json_incref(result);
    if (rc != SURPOOL_OK && raw != NULL) {
        surpool_raw_free(*raw);
        *raw = NULL;
    }
    if (surpool__breaks_connection(rc))
        c->broken = 1;
    if (session_expired != NULL)
        *session_expired = rc != SURPOOL_OK && surpool__reply_session_expired(req.reply);
    json_decref(req.reply);
    return rc;
}

static surpool_err rpc_call(surpool_conn *c, const char *method, const json_t *params,
                            int64_t deadline_ns, json_t **out, surpool_raw **raw,
                            surpool_error *err)
{
    if (surpool__method_changes_session(method))
        c->session_dirty = 1; /* even on failure: the server may have applied it */
    if (!c->pool_auth && changes_identity(method))
        c->user_auth = 1;
    int expired = 0;
    surpool_err rc = rpc_once(c, method, params, deadline_ns, out, raw, err, &expired);
    if (!expired || !surpool__conn_may_reauth(c))
        return rc;
    /* The server refused the call before running it (an expired session
     * refuses everything but ping; docs/lifecycle.md, rule A5): renew the
     * session and send it once more. */
    surpool_error rerr;
    if (surpool__conn_reauth(c, &rerr) != SURPOOL_OK)
        return surpool__error_copy(err, &rerr);
    return rpc_once(c, method, params, deadline_ns, out, raw, err, NULL);
}

surpool_err surpool__rpc(surpool_conn *c, const char *method, const json_t *params,
                         int64_t deadline_ns, json_t **out, surpool_error *err)
{
    return rpc_call(c, method, params, deadline_ns, out, NULL, err);
}

/* json_pack with the failure kept: jansson refuses invalid UTF-8 (the caller's
 * fault) and fails on out-of-memory (ours to report as such). */
static json_t *pack(json_error_t *je, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    json_t *r = json_vpack_ex(je, 0, fmt, ap);
    va_end(ap);
    return r;
}

/* Every public call on a lease goes through here: one RPC with the request
 * deadline. `params` is stolen; NULL means pack() failed, explained by `je`. */
static surpool_err call_stolen(surpool_conn *c, const char *method, json_t *params,
                               const json_error_t *je, json_t **out, surpool_error *err)
{
    if (params == NULL) {
        /* jansson leaves the text empty when an allocation failed. */
        if (je->text[0] == '\0' || json_error_code(je) == json_error_out_of_memory)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "%s: out of memory", method);
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "%s: bad argument: %s", method,
                               je->text);
    }
    surpool_err rc = surpool__rpc(c, method, params, INT64_MAX, out, err);
    json_decref(params);
    return rc;
}

static surpool_err bad_arg(surpool_error *err, const char *what)
{
    return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "%s", what);
}

/* The strings a call takes, checked before anything is built or sent: NULL
 * (absent) is fine, anything else must be valid UTF-8 (surpool__utf8_valid).
 * Up to five per call; `names` is a comma-separated list naming them in order
 * ("user,pass,ns,db,access"). */
static surpool_err check_strings(surpool_error *err, const char *fn, const char *names,
                                 const char *a, const char *b, const char *d, const char *e,
                                 const char *f)
{
    const char *v[5] = {a, b, d, e, f};
    const char *name = names;
    for (int i = 0; i < 5 && name != NULL && *name != '\0'; i++) {
        const char *end = strchr(name, ',');
        int len = end != NULL ? (int)(end - name) : (int)strlen(name);
        if (!surpool__utf8_valid_str(v[i])) {
            char msg[128];
            snprintf(msg, sizeof(msg), "%s: %.*s is not valid UTF-8", fn, len, name);
            return bad_arg(err, msg);
        }
        name = end != NULL ? end + 1 : NULL;
    }
    return SURPOOL_OK;
}

/* A json_t argument: every string and key valid UTF-8, not too deep. */
static surpool_err check_json(surpool_error *err, const char *what, const json_t *v)
{
    surpool_error local;
    if (err == NULL)
        err = &local;
    return surpool__codec_check_value(v, what, err);
}

#define CHECK(call)                                                                            \
    do {                                                                                       \
        surpool_err check_rc_ = (call);                                                        \
        if (check_rc_ != SURPOOL_OK)                                                           \
            return check_rc_;                                                                  \
    } while (0)

static int nonempty(const char *s)
{
    return s != NULL && s[0] != '\0';
}

/* ------------------------------------------------------------------------- */
/* Method bodies (their public wrappers are at the end of the file)           */
/* ------------------------------------------------------------------------- */

/* The arguments of a lease's call (and its raw twin); the params' values are
 * checked as they are encoded. */
static surpool_err check_call_args(const char *method, const json_t *params, surpool_error *err)
{
    if (!nonempty(method))
        return bad_arg(err, "method must be a non-empty string");
    if (params != NULL && !json_is_array(params))
        return bad_arg(err, "params must be a JSON array or NULL");
    return check_strings(err, "call", "method", method, NULL, NULL, NULL, NULL);
}

static surpool_err conn_call(surpool_conn *c, const char *method, const json_t *params,
                             json_t **out, surpool_error *err)
{
    CHECK(check_call_args(method, params, err));
    return surpool__rpc(c, method, params, INT64_MAX, out, err);
}

surpool_err surpool__query_params(const char *sql, const json_t *vars, json_t **params,
                                  surpool_error *err)
{
    if (!nonempty(sql))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "sql must be a non-empty string");
    if (vars != NULL && !json_is_object(vars))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "vars must be a JSON object or NULL");
    CHECK(check_strings(err, "query", "sql", sql, NULL, NULL, NULL, NULL));
    CHECK(check_json(err, "query: vars", vars));
    json_error_t je;
    memset(&je, 0, sizeof(je));
    *params = vars != NULL ? pack(&je, "[sO]", sql, (json_t *)vars) : pack(&je, "[s]", sql);
    if (*params == NULL) {
        /* jansson leaves the text empty when an allocation failed. */
        if (je.text[0] == '\0' || json_error_code(&je) == json_error_out_of_memory)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "query: out of memory");
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "query: %s", je.text);
    }
    return SURPOOL_OK;
}

/* The raw variants (include/surpool.h, "Raw results"): checked as their
 * json_t twins, then one RPC whose result stays bytes. */
static surpool_err conn_call_raw(surpool_conn *c, const char *method, const json_t *params,
                                 surpool_raw **out, surpool_error *err)
{
    if (out == NULL)
        return bad_arg(err, "out is required");
    *out = NULL;
    CHECK(check_call_args(method, params, err));
    return rpc_call(c, method, params, INT64_MAX, NULL, out, err);
}

static surpool_err conn_query_raw(surpool_conn *c, const char *sql, const json_t *vars,
                                  surpool_raw **out, surpool_error *err)
{
    if (out == NULL)
        return bad_arg(err, "out is required");
    *out = NULL;
    json_t *params = NULL;
    surpool_err rc = surpool__query_params(sql, vars, &params, err);
    if (rc != SURPOOL_OK)
        return rc;
    rc = rpc_call(c, "query", params, INT64_MAX, NULL, out, err);
    json_decref(params);
    return rc;
}

static surpool_err conn_query(surpool_conn *c, const char *sql, const json_t *vars,
                              json_t **out, surpool_error *err)
{
    json_t *params = NULL;
    surpool_err rc = surpool__query_params(sql, vars, &params, err);
    if (rc != SURPOOL_OK)
        return rc;
    rc = surpool__rpc(c, "query", params, INT64_MAX, out, err);
    json_decref(params);
    return rc;
}

/* A statement the server skipped because another one failed the transaction.
 * 3.x marks it with details.kind "NotExecuted"; older servers only say it. */
static int not_executed(const json_t *st)
{
    const char *dk = json_string_value(json_object_get(json_object_get(st, "details"), "kind"));
    if (dk != NULL)
        return strcmp(dk, "NotExecuted") == 0;
    const char *msg = json_string_value(json_object_get(st, "result"));
    return msg != NULL && strstr(msg, "not executed due to a failed transaction") != NULL;
}

static int statement_failed(const json_t *st)
{
    const char *status = json_string_value(json_object_get(st, "status"));
    return status != NULL && strcmp(status, "OK") != 0;
}

/* The statement that failed the transaction `skipped` was skipped in: the
 * first failed statement of the reply that was not itself skipped (the THROW,
 * the failing CREATE, ...). SIZE_MAX if there is none. */
static size_t failing_statement(const json_t *reply)
{
    size_t i;
    json_t *st;
    json_array_foreach(reply, i, st)
    {
        if (statement_failed(st) && !not_executed(st))
            return i;
    }
    return SIZE_MAX;
}

/* Fill err for failed statement `i` of `reply`: its text and kind, or, when it
 * was only skipped, the statement that failed the transaction. */
static surpool_err statement_error(const json_t *reply, size_t i, surpool_error *err)
{
    const json_t *st = json_array_get(reply, i);
    size_t cause = not_executed(st) ? failing_statement(reply) : SIZE_MAX;
    const json_t *shown = cause != SIZE_MAX ? json_array_get(reply, cause) : st;
    json_t *r = json_object_get(shown, "result");
    const char *msg = json_string_value(r);
    /* Server text: made printable before it reaches a message. */
    char text[sizeof(err->message)];
    if (msg != NULL)
        surpool__text_sanitize(text, sizeof(text), msg, json_string_length(r));
    else
        surpool__text_sanitize_str(text, sizeof(text),
                                   json_string_value(json_object_get(shown, "status")));
    if (cause == SIZE_MAX)
        surpool__seterr(err, SURPOOL_ERR_SERVER, "statement %zu failed: %s", i, text);
    else
        surpool__seterr(err, SURPOOL_ERR_SERVER,
                        "statement %zu failed the transaction (statement %zu was not "
                        "executed): %s",
                        cause, i, text);
    json_t *kind = json_object_get(shown, "kind");
    if (err != NULL && json_is_string(kind))
        surpool__text_sanitize(err->kind, sizeof(err->kind), json_string_value(kind),
                               json_string_length(kind));
    return SURPOOL_ERR_SERVER;
}

surpool_err surpool_query_check(const json_t *result, surpool_error *err)
{
    if (!json_is_array(result))
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL, "query result is not an array");
    size_t i;
    json_t *st;
    json_array_foreach(result, i, st)
    {
        if (json_string_value(json_object_get(st, "status")) == NULL)
            return surpool__seterr(err, SURPOOL_ERR_PROTOCOL, "statement %zu has no status", i);
    }
    json_array_foreach(result, i, st)
    {
        if (statement_failed(st))
            return statement_error(result, i, err);
    }
    return SURPOOL_OK;
}

surpool_err surpool_query_result(const json_t *reply, size_t i, json_t **out,
                                 surpool_error *err)
{
    if (out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "out is required");
    if (!json_is_array(reply))
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL, "query result is not an array");
    if (i >= json_array_size(reply))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "statement %zu does not exist (the reply has %zu)", i,
                               json_array_size(reply));
    const json_t *st = json_array_get(reply, i);
    if (json_string_value(json_object_get(st, "status")) == NULL)
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL, "statement %zu has no status", i);
    if (statement_failed(st))
        return statement_error(reply, i, err);
    json_t *r = json_object_get(st, "result");
    *out = r != NULL ? json_incref(r) : json_null();
    return SURPOOL_OK;
}

/* ------------------------------------------------------------------------- */
/* Method wrappers                                                            */
/* ------------------------------------------------------------------------- */

/* Variable names as `let` accepts them: [A-Za-z_][A-Za-z0-9_]*. */
static int valid_var_name(const char *s)
{
    if (!nonempty(s))
        return 0;
    for (const char *q = s; *q; q++) {
        int alpha = (*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || *q == '_';
        int digit = *q >= '0' && *q <= '9';
        if (!alpha && !(digit && q != s))
            return 0;
    }
    return 1;
}

static surpool_err conn_ping(surpool_conn *c, surpool_error *err)
{
    return surpool__rpc(c, "ping", NULL, INT64_MAX, NULL, err);
}

static surpool_err conn_version(surpool_conn *c, json_t **out, surpool_error *err)
{
    return surpool__rpc(c, "version", NULL, INT64_MAX, out, err);
}

static surpool_err conn_use(surpool_conn *c, const char *ns, const char *db, surpool_error *err)
{
    json_error_t je;
    memset(&je, 0, sizeof(je));
    if (!nonempty(ns))
        return bad_arg(err, "use: ns must be a non-empty string (db without ns is refused)");
    if (db != NULL && db[0] == '\0')
        return bad_arg(err, "use: db must be NULL or non-empty");
    CHECK(check_strings(err, "use", "ns,db", ns, db, NULL, NULL, NULL));
    json_t *params = db != NULL ? pack(&je, "[ss]", ns, db) : pack(&je, "[sn]", ns);
    return call_stolen(c, "use", params, &je, NULL, err);
}

surpool_err surpool__signin_params(const surpool_credentials *cred, json_t **params,
                                   surpool_error *err)
{
    json_error_t je;
    memset(&je, 0, sizeof(je));
    if (cred == NULL)
        return bad_arg(err, "signin: credentials are required");
    if (cred->db != NULL && cred->ns == NULL)
        return bad_arg(err, "signin: db needs ns");
    if (cred->access != NULL && (cred->ns == NULL || cred->db == NULL))
        return bad_arg(err, "signin: access needs ns and db");
    if (cred->access == NULL && (cred->user == NULL || cred->pass == NULL))
        return bad_arg(err, "signin: user and pass are required (or access)");
    if (cred->vars != NULL && !json_is_object(cred->vars))
        return bad_arg(err, "signin: vars must be a JSON object");
    if ((cred->user != NULL && cred->user[0] == '\0') ||
        (cred->ns != NULL && cred->ns[0] == '\0') ||
        (cred->db != NULL && cred->db[0] == '\0') ||
        (cred->access != NULL && cred->access[0] == '\0'))
        return bad_arg(err, "signin: strings must be NULL or non-empty");
    CHECK(check_strings(err, "signin", "user,pass,ns,db,access", cred->user, cred->pass,
                        cred->ns, cred->db, cred->access));
    CHECK(check_json(err, "signin: vars", cred->vars));

    json_t *obj = cred->vars != NULL ? json_deep_copy(cred->vars) : json_object();
    int bad = obj == NULL;
    if (!bad && cred->user != NULL)
        bad |= json_object_set_new(obj, "user", json_string(cred->user));
    if (!bad && cred->pass != NULL)
        bad |= json_object_set_new(obj, "pass", json_string(cred->pass));
    if (!bad && cred->ns != NULL)
        bad |= json_object_set_new(obj, "ns", json_string(cred->ns));
    if (!bad && cred->db != NULL)
        bad |= json_object_set_new(obj, "db", json_string(cred->db));
    if (!bad && cred->access != NULL)
        bad |= json_object_set_new(obj, "ac", json_string(cred->access));
    if (bad) {
        /* Every string was checked above: this was an allocation failure. */
        json_decref(obj);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "signin: out of memory");
    }
    *params = pack(&je, "[o]", obj);
    if (*params == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "signin: out of memory");
    return SURPOOL_OK;
}

static surpool_err conn_signin(surpool_conn *c, const surpool_credentials *cred, json_t **out,
                               surpool_error *err)
{
    json_t *params = NULL;
    CHECK(surpool__signin_params(cred, &params, err));
    json_error_t je;
    memset(&je, 0, sizeof(je));
    surpool_err rc = call_stolen(c, "signin", params, &je, out, err);
    if (rc == SURPOOL_ERR_AUTH) {
        /* Name who and where (never the password), as connection setup does. */
        char prefix[200], user[72], host[72];
        surpool__text_sanitize_str(user, sizeof(user), cred->user != NULL ? cred->user : "");
        const surpool__url *node = &c->pool->eps[c->ep].url; /* the node it is on */
        surpool__text_sanitize_str(host, sizeof(host), node->host);
        snprintf(prefix, sizeof(prefix), "signin as user '%s' at %s port %d failed: ", user,
                 host, node->port);
        surpool__error_prefix(err, prefix);
    }
    return rc;
}

surpool_err surpool__signup_params(const char *ns, const char *db, const char *access,
                                   const json_t *vars, json_t **params, surpool_error *err)
{
    json_error_t je;
    memset(&je, 0, sizeof(je));
    if (!nonempty(ns) || !nonempty(db) || !nonempty(access))
        return bad_arg(err, "signup: ns, db and access are required");
    if (vars != NULL && !json_is_object(vars))
        return bad_arg(err, "signup: vars must be a JSON object or NULL");
    CHECK(check_strings(err, "signup", "ns,db,access", ns, db, access, NULL, NULL));
    CHECK(check_json(err, "signup: vars", vars));
    json_t *obj = vars != NULL ? json_deep_copy(vars) : json_object();
    if (obj == NULL || json_object_set_new(obj, "ns", json_string(ns)) ||
        json_object_set_new(obj, "db", json_string(db)) ||
        json_object_set_new(obj, "ac", json_string(access))) {
        json_decref(obj); /* every string was checked above: out of memory */
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "signup: out of memory");
    }
    *params = pack(&je, "[o]", obj);
    if (*params == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "signup: out of memory");
    return SURPOOL_OK;
}

static surpool_err conn_signup(surpool_conn *c, const char *ns, const char *db,
                               const char *access, const json_t *vars, json_t **out,
                               surpool_error *err)
{
    json_t *params = NULL;
    CHECK(surpool__signup_params(ns, db, access, vars, &params, err));
    json_error_t je;
    memset(&je, 0, sizeof(je));
    return call_stolen(c, "signup", params, &je, out, err);
}

static surpool_err conn_authenticate(surpool_conn *c, const char *token, surpool_error *err)
{
    json_error_t je;
    memset(&je, 0, sizeof(je));
    if (!nonempty(token))
        return bad_arg(err, "authenticate: token is required");
    CHECK(check_strings(err, "authenticate", "token", token, NULL, NULL, NULL, NULL));
    return call_stolen(c, "authenticate", pack(&je, "[s]", token), &je, NULL, err);
}

static surpool_err conn_invalidate(surpool_conn *c, surpool_error *err)
{
    return surpool__rpc(c, "invalidate", NULL, INT64_MAX, NULL, err);
}

surpool_err surpool__var_params(const char *method, const char *name, const json_t *value,
                                json_t **params, surpool_error *err)
{
    json_error_t je;
    memset(&je, 0, sizeof(je));
    int let = strcmp(method, "let") == 0;
    if (!valid_var_name(name))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s: name must match [A-Za-z_][A-Za-z0-9_]* (no '$')", method);
    if (let && value == NULL)
        return bad_arg(err, "let: value is required (use json_null())");
    if (let)
        CHECK(check_json(err, "let: value", value));
    *params = let ? pack(&je, "[sO]", name, (json_t *)value) : pack(&je, "[s]", name);
    if (*params == NULL) /* every string was checked above */
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "%s: out of memory", method);
    return SURPOOL_OK;
}

static surpool_err conn_let(surpool_conn *c, const char *name, const json_t *value,
                            surpool_error *err)
{
    json_t *params = NULL;
    CHECK(surpool__var_params("let", name, value, &params, err));
    json_error_t je;
    memset(&je, 0, sizeof(je));
    return call_stolen(c, "let", params, &je, NULL, err);
}

static surpool_err conn_unset(surpool_conn *c, const char *name, surpool_error *err)
{
    json_t *params = NULL;
    CHECK(surpool__var_params("unset", name, NULL, &params, err));
    json_error_t je;
    memset(&je, 0, sizeof(je));
    return call_stolen(c, "unset", params, &je, NULL, err);
}

/* A thing argument in the pool's wire format: over CBOR "table" / "table:id"
 * text is read here into a typed table or record id (wire.h). NULL: err says
 * why (err is never NULL inside LEASE_CALL). */
static json_t *thing_arg(surpool_conn *c, const char *thing, surpool_error *err)
{
    return surpool__wire_thing(c->pool->cfg.pub.wire_format, thing, err);
}

/* [thing] or [thing, data]: data NULL is left out, else it must be an object
 * (or, when arrays_ok, an array). */
static surpool_err thing_data_call(surpool_conn *c, const char *method, const char *thing,
                                   const json_t *data, int data_required, int arrays_ok,
                                   json_t **out, surpool_error *err)
{
    json_error_t je;
    memset(&je, 0, sizeof(je));
    if (!nonempty(thing))
        return bad_arg(err, "the table or record id must be a non-empty string");
    if (data == NULL && data_required)
        return bad_arg(err, "data is required");
    if (data != NULL && !json_is_object(data) && !(arrays_ok && json_is_array(data)))
        return bad_arg(err, arrays_ok ? "data must be a JSON object or array"
                                      : "data must be a JSON object");
    CHECK(check_strings(err, method, "the table or record id", thing, NULL, NULL, NULL, NULL));
    CHECK(check_json(err, method, data));
    json_t *t = thing_arg(c, thing, err);
    if (t == NULL)
        return err->code;
    json_t *params = data != NULL ? pack(&je, "[oO]", t, (json_t *)data) : pack(&je, "[o]", t);
    return call_stolen(c, method, params, &je, out, err);
}

static surpool_err conn_select(surpool_conn *c, const char *thing, json_t **out,
                               surpool_error *err)
{
    return thing_data_call(c, "select", thing, NULL, 0, 0, out, err);
}

static surpool_err conn_create(surpool_conn *c, const char *thing, const json_t *data,
                               json_t **out, surpool_error *err)
{
    return thing_data_call(c, "create", thing, data, 0, 0, out, err);
}

static surpool_err conn_insert(surpool_conn *c, const char *table, const json_t *data,
                               json_t **out, surpool_error *err)
{
    return thing_data_call(c, "insert", table, data, 1, 1, out, err);
}

static surpool_err conn_update(surpool_conn *c, const char *thing, const json_t *data,
                               json_t **out, surpool_error *err)
{
    return thing_data_call(c, "update", thing, data, 0, 0, out, err);
}

static surpool_err conn_upsert(surpool_conn *c, const char *thing, const json_t *data,
                               json_t **out, surpool_error *err)
{
    return thing_data_call(c, "upsert", thing, data, 0, 0, out, err);
}

static surpool_err conn_merge(surpool_conn *c, const char *thing, const json_t *data,
                              json_t **out, surpool_error *err)
{
    return thing_data_call(c, "merge", thing, data, 1, 0, out, err);
}

static surpool_err conn_patch(surpool_conn *c, const char *thing, const json_t *ops, int diff,
                              json_t **out, surpool_error *err)
{
    json_error_t je;
    memset(&je, 0, sizeof(je));
    if (!nonempty(thing))
        return bad_arg(err, "patch: the table or record id must be a non-empty string");
    if (!json_is_array(ops))
        return bad_arg(err, "patch: ops must be a JSON array of patch operations");
    CHECK(check_strings(err, "patch", "the table or record id", thing, NULL, NULL, NULL, NULL));
    CHECK(check_json(err, "patch: ops", ops));
    json_t *t = thing_arg(c, thing, err);
    if (t == NULL)
        return err->code;
    json_t *params = pack(&je, "[oOb]", t, (json_t *)ops, diff != 0);
    return call_stolen(c, "patch", params, &je, out, err);
}

static surpool_err conn_delete(surpool_conn *c, const char *thing, json_t **out,
                               surpool_error *err)
{
    return thing_data_call(c, "delete", thing, NULL, 0, 0, out, err);
}

static surpool_err conn_relate(surpool_conn *c, const char *from, const char *table,
                               const char *to, const json_t *data, json_t **out,
                               surpool_error *err)
{
    json_error_t je;
    memset(&je, 0, sizeof(je));
    if (!nonempty(from) || !nonempty(table) || !nonempty(to))
        return bad_arg(err, "relate: from, table and to are required");
    if (data != NULL && !json_is_object(data))
        return bad_arg(err, "relate: data must be a JSON object or NULL");
    CHECK(check_strings(err, "relate", "from,table,to", from, table, to, NULL, NULL));
    CHECK(check_json(err, "relate: data", data));
    json_t *f = thing_arg(c, from, err);
    json_t *tb = f != NULL ? thing_arg(c, table, err) : NULL;
    json_t *to_ = tb != NULL ? thing_arg(c, to, err) : NULL;
    if (to_ == NULL) {
        json_decref(f);
        json_decref(tb);
        return err->code;
    }
    json_t *params = data != NULL ? pack(&je, "[oooO]", f, tb, to_, (json_t *)data)
                                  : pack(&je, "[ooo]", f, tb, to_);
    return call_stolen(c, "relate", params, &je, out, err);
}

static surpool_err conn_run(surpool_conn *c, const char *fn, const char *version,
                            const json_t *args, json_t **out, surpool_error *err)
{
    json_error_t je;
    memset(&je, 0, sizeof(je));
    if (!nonempty(fn))
        return bad_arg(err, "run: fn is required");
    if (version != NULL && version[0] == '\0')
        return bad_arg(err, "run: version must be NULL or non-empty");
    if (args != NULL && !json_is_array(args))
        return bad_arg(err, "run: args must be a JSON array or NULL");
    CHECK(check_strings(err, "run", "fn,version", fn, version, NULL, NULL, NULL));
    CHECK(check_json(err, "run: args", args));
    json_t *params = pack(&je, "[s s? O?]", fn, version, (json_t *)args);
    return call_stolen(c, "run", params, &je, out, err);
}

static surpool_err conn_info(surpool_conn *c, json_t **out, surpool_error *err)
{
    return surpool__rpc(c, "info", NULL, INT64_MAX, out, err);
}

/* ------------------------------------------------------------------------- */
/* Interactive transactions (3.x)                                             */
/*                                                                            */
/* `begin` returns a transaction id; every later request of the lease carries */
/* it in its envelope ("txn") until `commit [id]` or `cancel [id]` ends it.   */
/* Transactions are not session state (`reset` leaves one open, and the 3.0   */
/* core keeps it until it is ended), so a lease that began one is not dirty:  */
/* release cancels it instead (surpool__rpc_end_txn).                         */
/* ------------------------------------------------------------------------- */

int surpool__server_major_of(const char *version)
{
    if (version == NULL)
        return 0;
    const char *q = strrchr(version, '-'); /* "surrealdb-3.0.2" */
    q = q != NULL ? q + 1 : version;
    int major = 0;
    for (; *q >= '0' && *q <= '9' && major < 1000; q++)
        major = major * 10 + (*q - '0');
    return major;
}

/* Asked when first needed rather than in connection setup: a round trip per
 * new connection (and a call the fake transports of older tests would have to
 * script) that most leases never use. Once per connection either way. */
int surpool__rpc_server_major(surpool_conn *c)
{
    if (c->server_major == 0) {
        json_t *v = NULL;
        surpool_error e;
        surpool_err rc = surpool__rpc(c, "version", NULL, INT64_MAX, &v, &e);
        int major = rc == SURPOOL_OK ? surpool__server_major_of(json_string_value(v)) : 0;
        json_decref(v);
        if (rc == SURPOOL_OK || rc == SURPOOL_ERR_SERVER || rc == SURPOOL_ERR_AUTH)
            c->server_major = major > 0 ? major : -1; /* the server's answer: kept */
    }
    return c->server_major > 0 ? c->server_major : 0;
}

/* A feature of server major version `major` and later: SURPOOL_ERR_UNSUPPORTED
 * at once on an older server. Unknown (0): let the server say. */
static surpool_err need_major(surpool_conn *c, int major, const char *what, surpool_error *err)
{
    int have = surpool__rpc_server_major(c);
    if (have == 0 || have >= major)
        return SURPOOL_OK;
    return surpool__seterr(err, SURPOOL_ERR_UNSUPPORTED,
                           "the server (SurrealDB %d) does not support %s (SurrealDB %d and "
                           "later)",
                           have, what, major);
}

/* The transaction id of begin's result: a string over JSON, a typed UUID
 * ({"$surreal":"uuid","value":...}) over CBOR. NULL if it is neither. */
static const char *txn_id_of(const json_t *result)
{
    const char *id = json_string_value(result);
    if (id == NULL && json_is_object(result)) {
        const char *type = json_string_value(json_object_get(result, "$surreal"));
        if (type != NULL && strcmp(type, "uuid") == 0)
            id = json_string_value(json_object_get(result, "value"));
    }
    unsigned char u[16];
    return id != NULL && surpool__uuid_parse(id, strlen(id), u) == 0 ? id : NULL;
}

static surpool_err conn_begin(surpool_conn *c, surpool_error *err)
{
    if (c->txn[0] != '\0')
        return bad_arg(err, "begin: a transaction is already open on this lease (commit or "
                            "cancel it first)");
    CHECK(need_major(c, 3, "interactive transactions", err));
    json_t *result = NULL;
    surpool_err rc = rpc_send(c, "begin", NULL, INT64_MAX, &result, err);
    if (rc == SURPOOL_ERR_SERVER && err->server_code == -32601)
        rc = surpool__seterr(err, SURPOOL_ERR_UNSUPPORTED,
                             "the server does not support interactive transactions (begin: "
                             "method not found)");
    if (rc != SURPOOL_OK)
        return rc;
    const char *id = txn_id_of(result);
    if (id != NULL) {
        surpool__strlcpy(c->txn, id, sizeof(c->txn));
    } else {
        /* A transaction we cannot name may be open: never lend this again. */
        c->broken = 1;
        rc = surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                             "begin: the server's reply is not a transaction id");
    }
    json_decref(result);
    return rc;
}

/* commit or cancel the open transaction. Whatever the outcome the lease is out
 * of it: the 3.0 core drops a transaction whose commit failed (a conflict, for
 * one; cancelling it then says "Transaction not found"), and a transport
 * failure breaks the connection. */
static surpool_err conn_end_txn(surpool_conn *c, const char *method, int64_t deadline,
                                surpool_error *err)
{
    if (c->txn[0] == '\0')
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s: no transaction is open on this lease", method);
    json_t *id = NULL;
    surpool_err rc = surpool_value_uuid(c->txn, &id, err);
    json_t *params = rc == SURPOOL_OK ? json_pack("[o]", id) : NULL;
    if (params == NULL)
        return rc != SURPOOL_OK
                   ? rc
                   : surpool__seterr(err, SURPOOL_ERR_NOMEM, "%s: out of memory", method);
    /* The id is the parameter; the request itself runs outside (3.0 refuses
     * `cancel` with only the envelope's txn). */
    c->txn[0] = '\0';
    rc = rpc_send(c, method, params, deadline, NULL, err);
    json_decref(params);
    return rc;
}

surpool_err surpool__rpc_end_txn(surpool_conn *c, surpool_error *err)
{
    if (c->txn[0] == '\0')
        return SURPOOL_OK;
    /* Bounded like the reset that may follow it (release must not hang on a
     * server that stopped answering, even with request_timeout_ms = 0). */
    int64_t deadline = surpool__deadline_after_ms(c->pool->cfg.pub.connect_timeout_ms);
    return conn_end_txn(c, "cancel", deadline, err);
}

/* ------------------------------------------------------------------------- */
/* The public calls on a lease                                                */
/*                                                                            */
/* One error channel: each call fills the caller's surpool_error (or a local  */
/* one), and the lease's last-error text is derived from it here, in          */
/* lease_end(), and nowhere else. The conn_* functions above never see a NULL */
/* `err` nor a handle: LEASE_CALL resolves the handle `h` to its connection  */
/* `c`, pinned for the call (lease.c: a stale handle is INVALID_ARG and never */
/* reaches the connection's next borrower), and passes `e`, the caller's      */
/* struct or a local one.                                                     */
/* ------------------------------------------------------------------------- */

static surpool_err lease_end(surpool_conn *c, surpool_err rc, const surpool_error *e)
{
    if (rc == SURPOOL_OK)
        c->last_error[0] = '\0';
    else
        surpool__strlcpy(c->last_error, e->message, sizeof(c->last_error));
    return rc;
}

#define LEASE_CALL(h, err, call)                                                               \
    do {                                                                                       \
        if ((h) == NULL)                                                                       \
            return surpool__seterr((err), SURPOOL_ERR_INVALID_ARG, "conn is NULL");            \
        surpool_error lease_local_;                                                            \
        lease_local_.message[0] = '\0';                                                        \
        surpool_error *e = (err) != NULL ? (err) : &lease_local_;                              \
        surpool_conn *c = NULL;                                                                \
        surpool__lease_claim why_ = surpool__lease_pin((h), &c);                               \
        if (why_ != SURPOOL__LEASE_OK)                                                         \
            return surpool__lease_refused(why_, __func__, e);                                  \
        surpool_err rc_ = lease_end(c, (call), e);                                             \
        surpool__lease_unpin(h);                                                               \
        return rc_;                                                                            \
    } while (0)

surpool_err surpool_conn_call(surpool_conn *h, const char *method, const json_t *params,
                              json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_call(c, method, params, out, e));
}

surpool_err surpool_conn_query(surpool_conn *h, const char *sql, const json_t *vars,
                               json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_query(c, sql, vars, out, e));
}

surpool_err surpool_conn_call_raw(surpool_conn *h, const char *method, const json_t *params,
                                  surpool_raw **out, surpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    LEASE_CALL(h, err, conn_call_raw(c, method, params, out, e));
}

surpool_err surpool_conn_query_raw(surpool_conn *h, const char *sql, const json_t *vars,
                                   surpool_raw **out, surpool_error *err)
{
    if (out != NULL)
        *out = NULL;
    LEASE_CALL(h, err, conn_query_raw(c, sql, vars, out, e));
}

surpool_err surpool_conn_ping(surpool_conn *h, surpool_error *err)
{
    LEASE_CALL(h, err, conn_ping(c, e));
}

surpool_err surpool_conn_version(surpool_conn *h, json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_version(c, out, e));
}

surpool_err surpool_conn_use(surpool_conn *h, const char *ns, const char *db,
                             surpool_error *err)
{
    LEASE_CALL(h, err, conn_use(c, ns, db, e));
}

surpool_err surpool_conn_signin(surpool_conn *h, const surpool_credentials *cred, json_t **out,
                                surpool_error *err)
{
    LEASE_CALL(h, err, conn_signin(c, cred, out, e));
}

surpool_err surpool_conn_signup(surpool_conn *h, const char *ns, const char *db,
                                const char *access, const json_t *vars, json_t **out,
                                surpool_error *err)
{
    LEASE_CALL(h, err, conn_signup(c, ns, db, access, vars, out, e));
}

surpool_err surpool_conn_authenticate(surpool_conn *h, const char *token, surpool_error *err)
{
    LEASE_CALL(h, err, conn_authenticate(c, token, e));
}

surpool_err surpool_conn_invalidate(surpool_conn *h, surpool_error *err)
{
    LEASE_CALL(h, err, conn_invalidate(c, e));
}

surpool_err surpool_conn_let(surpool_conn *h, const char *name, const json_t *value,
                             surpool_error *err)
{
    LEASE_CALL(h, err, conn_let(c, name, value, e));
}

surpool_err surpool_conn_unset(surpool_conn *h, const char *name, surpool_error *err)
{
    LEASE_CALL(h, err, conn_unset(c, name, e));
}

surpool_err surpool_conn_select(surpool_conn *h, const char *thing, json_t **out,
                                surpool_error *err)
{
    LEASE_CALL(h, err, conn_select(c, thing, out, e));
}

surpool_err surpool_conn_create(surpool_conn *h, const char *thing, const json_t *data,
                                json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_create(c, thing, data, out, e));
}

surpool_err surpool_conn_insert(surpool_conn *h, const char *table, const json_t *data,
                                json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_insert(c, table, data, out, e));
}

surpool_err surpool_conn_update(surpool_conn *h, const char *thing, const json_t *data,
                                json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_update(c, thing, data, out, e));
}

surpool_err surpool_conn_upsert(surpool_conn *h, const char *thing, const json_t *data,
                                json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_upsert(c, thing, data, out, e));
}

surpool_err surpool_conn_merge(surpool_conn *h, const char *thing, const json_t *data,
                               json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_merge(c, thing, data, out, e));
}

surpool_err surpool_conn_patch(surpool_conn *h, const char *thing, const json_t *ops, int diff,
                               json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_patch(c, thing, ops, diff, out, e));
}

surpool_err surpool_conn_delete(surpool_conn *h, const char *thing, json_t **out,
                                surpool_error *err)
{
    LEASE_CALL(h, err, conn_delete(c, thing, out, e));
}

surpool_err surpool_conn_relate(surpool_conn *h, const char *from, const char *table,
                                const char *to, const json_t *data, json_t **out,
                                surpool_error *err)
{
    LEASE_CALL(h, err, conn_relate(c, from, table, to, data, out, e));
}

surpool_err surpool_conn_run(surpool_conn *h, const char *fn, const char *version,
                             const json_t *args, json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_run(c, fn, version, args, out, e));
}

surpool_err surpool_conn_info(surpool_conn *h, json_t **out, surpool_error *err)
{
    LEASE_CALL(h, err, conn_info(c, out, e));
}

surpool_err surpool_conn_begin(surpool_conn *h, surpool_error *err)
{
    LEASE_CALL(h, err, conn_begin(c, e));
}

surpool_err surpool_conn_commit(surpool_conn *h, surpool_error *err)
{
    LEASE_CALL(h, err, conn_end_txn(c, "commit", INT64_MAX, e));
}

surpool_err surpool_conn_cancel(surpool_conn *h, surpool_error *err)
{
    LEASE_CALL(h, err, conn_end_txn(c, "cancel", INT64_MAX, e));
}

surpool_err surpool_conn_set_timeout(surpool_conn *h, long timeout_ms)
{
    if (h == NULL || timeout_ms > SURPOOL__MS_MAX)
        return SURPOOL_ERR_INVALID_ARG;
    surpool_conn *c = NULL;
    if (surpool__lease_pin(h, &c) != SURPOOL__LEASE_OK)
        return SURPOOL_ERR_INVALID_ARG;
    c->own_timeout = timeout_ms >= 0;
    c->timeout_ms = timeout_ms >= 0 ? timeout_ms : 0;
    surpool__lease_unpin(h);
    return SURPOOL_OK;
}
