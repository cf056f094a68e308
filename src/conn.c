/*
 * Per-connection state: opening a connection and setting it up (auth,
 * namespace/database, the user's hook) before the pool lends it, and closing it.
 */
#include <string.h>
#include <time.h>

#include "lease.h"
#include "pool.h"
#include "rpc.h"
#include "utf8.h"

static void on_dead(void *userdata, surpool_err why, const char *message)
{
    surpool_conn *c = userdata;
    atomic_store(&c->dead, 1);
    surpool__pool_conn_died(c->pool);
    surpool__live_conn_died(c->pool->live);
    surpool__log(&c->pool->logger, SURPOOL_LOG_INFO, "connection %llu lost: %s (%s)",
                 (unsigned long long)c->serial, message != NULL ? message : "",
                 surpool_strerror(why));
}

static void on_notify(void *userdata, json_t *frame)
{
    surpool_conn *c = userdata;
    surpool__live_notify(c->pool->live, c, frame); /* quick: routed and queued */
}

int surpool__conn_usable(const surpool_conn *c)
{
    return c->t != NULL && !atomic_load(&c->dead) && c->pool->ops->alive(c->t);
}

int surpool__conn_expired(const surpool_conn *c, int64_t now)
{
    return now >= c->expires_ns;
}

void surpool__conn_mark_broken(surpool_conn *c)
{
    c->broken = 1;
}

surpool_err surpool__conn_submit(surpool_conn *c, surpool__treq *req)
{
    return c->pool->ops->submit(c->t, req);
}

int surpool__conn_cancel(surpool_conn *c, surpool__treq *req)
{
    return c->pool->ops->cancel(c->t, req);
}

surpool_err surpool__conn_ping(surpool_conn *c, long timeout_ms, surpool_error *err)
{
    return surpool__rpc(c, "ping", NULL, surpool__deadline_after_ms(timeout_ms), NULL, err);
}

/* One setup RPC, retried while the server says its transaction conflicted and
 * "can be retried" (SurrealDB 3.0 answers so when several new connections `use`
 * a namespace or database that does not exist yet: each defines it). Bounded by
 * a few attempts and the connect deadline. */
static surpool_err setup_rpc(surpool_conn *c, const char *method, const json_t *params,
                             int64_t deadline, json_t **out, surpool_error *err)
{
    surpool_error local;
    if (err == NULL)
        err = &local;
    for (int attempt = 1;; attempt++) {
        surpool_err rc = surpool__rpc(c, method, params, deadline, out, err);
        if (rc != SURPOOL_ERR_SERVER || strstr(err->message, "can be retried") == NULL ||
            attempt == 5)
            return rc;
        struct timespec ts = {0, (long)attempt * 10 * 1000000L}; /* 10, 20, 30, 40 ms */
        if (surpool__now_ns() + (int64_t)ts.tv_nsec >= deadline)
            return rc;
        nanosleep(&ts, NULL);
    }
}

static surpool_err authenticate_pool(surpool_conn *c, int64_t deadline, surpool_error *err);

/* Who setup signs in as, and where, for the message of a failed signin (as
 * libpq names the user and the server): "signin as root user 'root' at
 * 127.0.0.1 port 8000 failed: ". Never the password or the token. */
static void auth_failed_prefix(const surpool_conn *c, char *buf, size_t size)
{
    const surpool_pool *p = c->pool;
    const surpool__url *u = &p->eps[c->ep].url; /* the node it signed in at */
    const surpool_config *cfg = &p->cfg.pub;
    char user[72], ns[72], db[72], ac[72], who[400];
    surpool__text_sanitize_str(user, sizeof(user), cfg->user != NULL ? cfg->user : "");
    surpool__text_sanitize_str(ns, sizeof(ns), cfg->ns != NULL ? cfg->ns : "");
    surpool__text_sanitize_str(db, sizeof(db), cfg->db != NULL ? cfg->db : "");
    surpool__text_sanitize_str(ac, sizeof(ac), cfg->access != NULL ? cfg->access : "");
    if (cfg->token != NULL)
        snprintf(who, sizeof(who), "authentication with config.token");
    else if (cfg->token_fn != NULL)
        snprintf(who, sizeof(who), "authentication with config.token_fn");
    else if (cfg->signin_params != NULL)
        snprintf(who, sizeof(who), "signin with config.signin_params");
    else if (cfg->access != NULL)
        snprintf(who, sizeof(who),
                 "signin as user '%s' through record access '%s' (namespace '%s', database "
                 "'%s')",
                 user, ac, ns, db);
    else if (cfg->auth_level == SURPOOL_AUTH_DATABASE)
        snprintf(who, sizeof(who),
                 "signin as database user '%s' (namespace '%s', database '%s')", user, ns, db);
    else if (cfg->auth_level == SURPOOL_AUTH_NAMESPACE)
        snprintf(who, sizeof(who), "signin as namespace user '%s' (namespace '%s')", user, ns);
    else
        snprintf(who, sizeof(who), "signin as root user '%s'", user);
    char host[72];
    surpool__text_sanitize_str(host, sizeof(host), u->host);
    if (snprintf(buf, size, "%s at %s port %d failed: ", who, host, u->port) >= (int)size)
        surpool__utf8_trim(buf);
}

/* Authenticate as configured (the pool's own authentication: c->pool_auth is
 * set meanwhile, so none of it counts as the borrower's). The message never
 * contains the password or the token. */
static surpool_err setup_auth(surpool_conn *c, int64_t deadline, surpool_error *err)
{
    c->pool_auth = 1;
    surpool_err rc = authenticate_pool(c, deadline, err);
    c->pool_auth = 0;
    if (rc != SURPOOL_OK && rc != SURPOOL_ERR_NOMEM && err != NULL) {
        char prefix[192];
        auth_failed_prefix(c, prefix, sizeof(prefix));
        surpool__error_prefix(err, prefix);
    }
    return rc;
}

/* Overwrite the strings of a JSON value that held a secret (jansson owns
 * the buffers; we free the value next). */
static void wipe_strings(json_t *v)
{
    if (json_is_string(v)) {
        surpool__wipe((char *)json_string_value(v), json_string_length(v));
    } else if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m) wipe_strings(m);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m) wipe_strings(m);
    }
}

static void decref_secret(json_t *v)
{
    if (v != NULL && v->refcount == 1)
        wipe_strings(v);
    json_decref(v);
}

/* `authenticate [token]` on c. */
static surpool_err authenticate_with(surpool_conn *c, const char *token, int64_t deadline,
                                     surpool_error *err)
{
    json_t *params = json_pack("[s]", token);
    if (params == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
    surpool_err rc = setup_rpc(c, "authenticate", params, deadline, NULL, err);
    decref_secret(params);
    return rc;
}

/* The signin object for user/pass (with ns, db, ac as configured) or
 * signin_params; NULL when out of memory. */
static json_t *signin_params(const surpool_pool *p)
{
    const surpool_config *cfg = &p->cfg.pub;
    json_t *creds;
    if (cfg->signin_params != NULL) {
        creds = json_deep_copy(p->cfg.signin_params); /* ours to wipe once sent */
    } else {
        creds = json_pack("{s:s, s:s}", "user", cfg->user, "pass", cfg->pass);
        if (creds != NULL && (cfg->access != NULL || cfg->auth_level >= SURPOOL_AUTH_NAMESPACE))
            json_object_set_new(creds, "ns", json_string(cfg->ns));
        if (creds != NULL && (cfg->access != NULL || cfg->auth_level == SURPOOL_AUTH_DATABASE))
            json_object_set_new(creds, "db", json_string(cfg->db));
        if (creds != NULL && cfg->access != NULL)
            json_object_set_new(creds, "ac", json_string(cfg->access));
    }
    return creds != NULL ? json_pack("[o]", creds) : NULL;
}

/* Ask the application's provider for a token (a copy in *token). */
static surpool_err provider_token(const surpool_config *cfg, char **token, surpool_error *err)
{
    char *buf = surpool__calloc(1, SURPOOL_TOKEN_MAX);
    if (buf == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
    surpool_error perr;
    surpool__error_clear(&perr);
    surpool_err rc = cfg->token_fn(cfg->token_userdata, buf, SURPOOL_TOKEN_MAX, &perr);
    buf[SURPOOL_TOKEN_MAX - 1] = '\0';
    if (rc != SURPOOL_OK) {
        char why[sizeof(perr.message)];
        perr.message[sizeof(perr.message) - 1] = '\0';
        surpool__text_sanitize_str(why, sizeof(why), perr.message);
        rc = surpool__seterr(err, SURPOOL_ERR_AUTH, "config.token_fn failed: %s",
                             why[0] != '\0' ? why : surpool_strerror(rc));
    } else if (buf[0] == '\0' || !surpool__utf8_valid_str(buf)) {
        rc = surpool__seterr(err, SURPOOL_ERR_AUTH,
                             "config.token_fn returned an empty or invalid token");
    } else if ((*token = surpool__strdup(buf)) == NULL) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
    }
    surpool__wipe(buf, SURPOOL_TOKEN_MAX);
    surpool__free(buf);
    return rc;
}

/* Rule A2's refresh (auth.h), done on c: sign in with the pool's password
 * (which also authenticates c), or ask the provider for a token and
 * authenticate c with it. *token: the new token (a secret), or NULL when the
 * server gave none. */
static surpool_err refresh(surpool_conn *c, int64_t deadline, char **token, surpool_error *err)
{
    const surpool_config *cfg = &c->pool->cfg.pub;
    *token = NULL;
    surpool_err rc;
    if (cfg->token_fn != NULL) {
        rc = provider_token(cfg, token, err);
        if (rc != SURPOOL_OK)
            return rc;
        rc = authenticate_with(c, *token, deadline, err);
        if (rc != SURPOOL_OK && rc != SURPOOL_ERR_NOMEM && !surpool__breaks_connection(rc)) {
            /* Whatever the server said (a malformed token is -32000): the
             * provider's token is not accepted. */
            rc = SURPOOL_ERR_AUTH;
            if (err != NULL) {
                err->code = rc;
                surpool__error_prefix(err, "the token from config.token_fn was refused: ");
            }
        }
        if (rc != SURPOOL_OK) {
            surpool__free_secret(*token);
            *token = NULL;
        }
        return rc;
    }
    json_t *params = signin_params(c->pool);
    if (params == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
    json_t *result = NULL;
    rc = setup_rpc(c, "signin", params, deadline, &result, err);
    decref_secret(params); /* refused: AUTH (surpool__codec_auth_refusal) */
    /* A JWT, or (record access with refresh) {token, refresh}. */
    const char *t = json_string_value(result);
    if (t == NULL)
        t = json_string_value(json_object_get(result, "token"));
    if (rc == SURPOOL_OK && t != NULL)
        *token = surpool__strdup(t); /* NULL (out of memory): nothing cached */
    decref_secret(result);
    return rc;
}

/* The server does not take `authenticate` (rather than refusing this token):
 * JSON-RPC "method not found" (-32601), 3.x "method not allowed" (-32602).
 * The request path reports every refusal of a method that presents
 * credentials as SURPOOL_ERR_AUTH (rpc.c, surpool__codec_auth_refusal), so
 * the code may be either; the server's code and message tell. */
static int refuses_authenticate(const surpool_error *err)
{
    return (err->code == SURPOOL_ERR_SERVER || err->code == SURPOOL_ERR_AUTH) &&
           (err->server_code == -32601 || err->server_code == -32602 ||
            strstr(err->message, "ethod not") != NULL);
}

/* Authenticate c as the pool does (rules A1-A3 in auth.h): with the cached
 * token, or by the one refresh in flight, or by refreshing itself. */
static surpool_err authenticate_pool(surpool_conn *c, int64_t deadline, surpool_error *err)
{
    surpool_pool *p = c->pool;
    const surpool_config *cfg = &p->cfg.pub;
    if (cfg->token != NULL) /* the user's token: never a password we do not have */
        return authenticate_with(c, cfg->token, deadline, err);
    if (cfg->token_fn == NULL && cfg->signin_params == NULL && cfg->user == NULL)
        return SURPOOL_OK; /* anonymous */
    surpool_error local;
    if (err == NULL)
        err = &local;
    uint64_t gen;
    char *token = surpool__auth_current(&p->auth, &gen);
    for (int round = 0; round < 3; round++) {
        if (token != NULL) {
            surpool_err rc = authenticate_with(c, token, deadline, err);
            surpool__free_secret(token);
            token = NULL;
            if (rc == SURPOOL_OK || rc == SURPOOL_ERR_NOMEM || surpool__breaks_connection(rc))
                return rc;
            /* Refused (expired, revoked, signed by a server since restarted):
             * refresh. A server that does not take `authenticate` at all
             * (method not found / not allowed): sign in from now on. */
            surpool__auth_refused(&p->auth, gen, refuses_authenticate(err));
        }
        int who = surpool__auth_enter(&p->auth, &gen, deadline, &token, err);
        if (who == SURPOOL__AUTH_FAILED)
            return err->code;
        if (who == SURPOOL__AUTH_NEWER)
            continue;
        char *fresh = NULL;
        surpool_err rc = refresh(c, deadline, &fresh, err);
        surpool__auth_done(&p->auth, fresh, rc == SURPOOL_OK ? NULL : err);
        surpool__free_secret(fresh);
        return rc;
    }
    return surpool__seterr(err, SURPOOL_ERR_AUTH, "the server keeps refusing fresh tokens");
}

/* What the on_connect hook set on its lease ends with it, as a borrower's
 * does at release: its own timeout; a transaction it left open (cancelled:
 * else the first borrower's calls would run inside it, and be cancelled with
 * it at that borrower's release); a discard, which refuses the connection as
 * a hook returning an error does. */
static surpool_err end_hook_lease(surpool_conn *c, surpool_error *err)
{
    c->own_timeout = 0;
    c->timeout_ms = 0;
    if (c->discard)
        return surpool__seterr(err, SURPOOL_ERR_CONNECT,
                               "the on_connect hook discarded the connection");
    if (c->txn[0] != '\0') {
        surpool__log(&c->pool->logger, SURPOOL_LOG_WARN,
                     "the on_connect hook left a transaction open: cancelling it");
        surpool_err rc = surpool__rpc_end_txn(c, err);
        if (rc != SURPOOL_OK) {
            surpool__error_prefix(err, "cancelling the transaction the on_connect hook left "
                                       "open: ");
            return rc;
        }
    }
    return SURPOOL_OK;
}

static surpool_err setup(surpool_conn *c, int64_t deadline, surpool_error *err)
{
    surpool_pool *p = c->pool;
    const surpool_config *cfg = &p->cfg.pub;
    surpool_err rc = setup_auth(c, deadline, err);
    if (rc != SURPOOL_OK)
        return rc;
    c->user_auth = 0; /* authenticated as configured (the hook below may change it) */
    if (cfg->ns != NULL) {
        json_t *params = cfg->db != NULL ? json_pack("[s, s]", cfg->ns, cfg->db)
                                         : json_pack("[s, n]", cfg->ns);
        if (params == NULL)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
        rc = setup_rpc(c, "use", params, deadline, NULL, err);
        json_decref(params);
        if (rc != SURPOOL_OK)
            return rc;
    }
    if (cfg->init_sql != NULL) {
        json_t *params = json_pack("[s]", cfg->init_sql);
        json_t *result = NULL;
        if (params == NULL)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
        rc = setup_rpc(c, "query", params, deadline, &result, err);
        json_decref(params);
        if (rc == SURPOOL_OK)
            rc = surpool_query_check(result, err);
        json_decref(result);
        if (rc != SURPOOL_OK)
            return rc;
    }
    if (cfg->on_connect != NULL) {
        /* The hook gets a handle of its own lease (it may call surpool_conn_*
         * on it), which ends with the hook: kept, it is stale. */
        surpool_conn *h = surpool__lease_lend_hook(c);
        rc = cfg->on_connect(cfg->on_connect_userdata, h);
        surpool__lease_reclaim(c);
        if (rc == SURPOOL_OK)
            rc = end_hook_lease(c, err);
        if (rc != SURPOOL_OK) {
            if (err != NULL && err->code == SURPOOL_OK)
                surpool__seterr(err, rc, "on_connect hook refused the connection (%s)",
                                surpool_strerror(rc));
            else if (err != NULL)
                err->code = rc;
            return rc;
        }
    }
    c->last_error[0] = '\0'; /* what the hook's own calls left is not the borrower's */
    return SURPOOL_OK;
}

surpool_err surpool__conn_open(surpool_pool *p, int ep, surpool_conn **out, surpool_error *err)
{
    if (ep < 0 || ep >= p->neps)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "conn_open: no node %d", ep);
    surpool_conn *c = surpool__calloc(1, sizeof(*c));
    if (c == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory opening a connection");
    c->pool = p;
    c->ep = ep;
    c->state = SURPOOL__CONN_SETUP;
    surpool__queue_init(&c->all_link);
    surpool__queue_init(&c->idle_link);
    atomic_init(&c->dead, 0);
    c->created_ns = surpool__now_ns();
    c->expires_ns = INT64_MAX;
    if (surpool__lease_slot_assign(c) != 0) {
        surpool__free(c);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM,
                               "out of lease slots or memory opening a connection");
    }

    surpool__tconn_events ev = {on_dead, on_notify, c};
    int64_t deadline = surpool__deadline_after_ms(p->cfg.pub.connect_timeout_ms);
    surpool_err rc = p->ops->open(p->transport, &p->eps[ep].url, deadline, &ev, &c->t, err);
    if (rc != SURPOOL_OK) {
        surpool__lease_slot_retire(c);
        surpool__free(c);
        return rc;
    }
    surpool_error serr;
    surpool__error_clear(&serr);
    rc = setup(c, deadline, &serr);
    if (rc != SURPOOL_OK) {
        /* Say which step failed; keep the server's code and kind. */
        if (err != NULL) {
            *err = serr;
            err->code = rc;
            surpool__error_prefix(err, "connection setup failed: ");
        }
        surpool__conn_close(c);
        return rc;
    }
    c->session_dirty = 0; /* the configured state is the clean state */
    c->connect_ns = surpool__now_ns() - c->created_ns;
    *out = c;
    return SURPOOL_OK;
}

surpool_err surpool__conn_restore(surpool_conn *c, surpool_error *err)
{
    int64_t deadline = surpool__deadline_after_ms(c->pool->cfg.pub.connect_timeout_ms);
    surpool_err rc = setup_rpc(c, "reset", NULL, deadline, NULL, err);
    if (rc == SURPOOL_OK)
        rc = setup(c, deadline, err);
    if (rc == SURPOOL_OK)
        c->session_dirty = 0;
    return rc;
}

int surpool__pool_authenticates(const surpool_pool *p)
{
    const surpool_config *cfg = &p->cfg.pub;
    return cfg->token != NULL || cfg->token_fn != NULL || cfg->signin_params != NULL ||
           cfg->user != NULL;
}

int surpool__conn_may_reauth(const surpool_conn *c)
{
    return surpool__pool_authenticates(c->pool) && !c->pool_auth && !c->user_auth;
}

surpool_err surpool__conn_reauth(surpool_conn *c, surpool_error *err)
{
    int64_t deadline = surpool__deadline_after_ms(c->pool->cfg.pub.connect_timeout_ms);
    surpool_err rc = setup_auth(c, deadline, err);
    if (rc != SURPOOL_OK) {
        /* Its session is over and cannot be renewed: close it on release; the
         * replacement goes through the connect path (backoff, breaker). */
        c->broken = 1;
        if (err != NULL)
            surpool__error_prefix(err, "session expired; re-authentication failed: ");
    }
    return rc;
}

void surpool__conn_fail(surpool_conn *c, surpool_err code, const char *msg)
{
    if (c->t != NULL && c->pool->ops->fail != NULL)
        c->pool->ops->fail(c->t, code, msg);
}

void surpool__conn_close_transport(surpool_conn *c)
{
    if (c->t != NULL)
        c->pool->ops->close(c->t);
    c->t = NULL;
}

void surpool__conn_close(surpool_conn *c)
{
    if (c == NULL)
        return;
    surpool__conn_close_transport(c);
    surpool__lease_slot_retire(c); /* every handle of it is stale from here */
    surpool__free(c);
}

void surpool_conn_discard(surpool_conn *h)
{
    if (h == NULL)
        return;
    surpool_conn *c = NULL;
    surpool__lease_claim why = surpool__lease_pin(h, &c);
    if (why != SURPOOL__LEASE_OK) {
        surpool__lease_log_refused(h, why, "surpool_conn_discard");
        return;
    }
    c->discard = 1;
    surpool__lease_unpin(h);
}

const char *surpool_conn_last_error(const surpool_conn *h)
{
    if (h == NULL)
        return "";
    /* Pinned while it copies nothing: the text stays the lease's until its
     * next call, which only its (one) holder thread makes. */
    surpool_conn *c = NULL;
    surpool__lease_claim why = surpool__lease_pin((surpool_conn *)h, &c);
    if (why != SURPOOL__LEASE_OK)
        return surpool__lease_refusal(why);
    const char *text = c->last_error;
    surpool__lease_unpin((surpool_conn *)h);
    return text;
}
