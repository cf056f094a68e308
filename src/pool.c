/*
 * The pool core: waiters, direct handoff, connectors and lifecycle.
 *
 * One mutex (pool->mu) guards every list and counter below. The rules:
 *
 *  1. Slots. idle + in_use + connecting <= max_connections, always (asserted in
 *     debug builds by check_invariants()). A slot is reserved under the mutex
 *     before a connection is opened and is returned under the mutex when the
 *     open fails or the connection is destroyed.
 *  2. FIFO. A caller that finds no idle connection joins the tail of the waiter
 *     queue. Each waiter has its own condition variable; nobody broadcasts.
 *  3. Handoff. Whenever a usable connection becomes free (released, or freshly
 *     opened) and the queue is not empty, it goes straight to the OLDEST waiter:
 *     the waiter's `conn` is set and only that waiter is signalled. The
 *     connection never passes through the idle list, so a newcomer can never
 *     take it, and a wake-up can never be lost: the grant is a state change under
 *     the mutex, not a signal someone has to catch.
 *  4. A deadline that expires while a connection is being handed over is settled
 *     under the mutex: if `conn` is set the waiter keeps it and succeeds;
 *     otherwise it unlinks itself. A connection is never lost nor given twice.
 *  5. Connections are opened by connector threads (at most
 *     max_concurrent_connects), outside the mutex, when waiters outnumber the
 *     connects in progress or the pool is below min_connections. A waiter whose
 *     deadline passes returns, and the connect it caused goes on: its connection
 *     goes to the next waiter or to the idle list. So a slow server costs the
 *     caller no more than its timeout, and the work is never thrown away.
 *  6. A failed connect returns its slot, backs off (exponential, with jitter)
 *     and tries again while there is demand. Waiters that time out while
 *     connects keep failing get the last connect error, not a bare timeout.
 *  7. close() wakes every waiter with SURPOOL_ERR_CLOSED at once; connections
 *     still leased are closed when they come back.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

struct surpool__waiter {
    pthread_cond_t cv;
    surpool__waiter *next, *prev;
    uint64_t ticket;
    surpool_conn *conn; /* set under mu by a handoff */
    surpool_err outcome; /* set under mu with `done`: CLOSED, ... */
    int done;
};

/* ------------------------------------------------------------------------- */
/* Small helpers (all with mu held unless said otherwise)                     */
/* ------------------------------------------------------------------------- */

static void check_invariants(const surpool_pool *p)
{
    assert(p->nidle >= 0 && p->nleased >= 0 && p->nconnecting >= 0);
    assert(p->nidle + p->nleased + p->nconnecting <= p->cfg.pub.max_connections);
    assert((p->nidle == 0) || (p->nwaiters == 0) || p->closed);
    (void)p;
}

static int total_locked(const surpool_pool *p)
{
    return p->nidle + p->nleased + p->nconnecting;
}

static int cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}

/* Wait on cv until signalled or the monotonic deadline; returns ETIMEDOUT when
 * the deadline passed. INT64_MAX waits without a deadline. */
static int cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns)
{
    if (deadline_ns == INT64_MAX)
        return pthread_cond_wait(cv, mu);
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ns / INT64_C(1000000000));
    ts.tv_nsec = (long)(deadline_ns % INT64_C(1000000000));
    return pthread_cond_timedwait(cv, mu, &ts);
}

static void idle_push_front(surpool_pool *p, surpool_conn *c)
{
    c->idle_prev = NULL;
    c->idle_next = p->idle_head;
    if (p->idle_head != NULL)
        p->idle_head->idle_prev = c;
    else
        p->idle_tail = c;
    p->idle_head = c;
    p->nidle++;
    c->state = SURPOOL__CONN_IDLE;
}

static void idle_unlink(surpool_pool *p, surpool_conn *c)
{
    if (c->idle_prev != NULL)
        c->idle_prev->idle_next = c->idle_next;
    else
        p->idle_head = c->idle_next;
    if (c->idle_next != NULL)
        c->idle_next->idle_prev = c->idle_prev;
    else
        p->idle_tail = c->idle_prev;
    c->idle_next = c->idle_prev = NULL;
    p->nidle--;
}

static void all_link(surpool_pool *p, surpool_conn *c)
{
    c->all_prev = NULL;
    c->all_next = p->all_head;
    if (p->all_head != NULL)
        p->all_head->all_prev = c;
    p->all_head = c;
}

static void all_unlink(surpool_pool *p, surpool_conn *c)
{
    if (c->all_prev != NULL)
        c->all_prev->all_next = c->all_next;
    else
        p->all_head = c->all_next;
    if (c->all_next != NULL)
        c->all_next->all_prev = c->all_prev;
    c->all_next = c->all_prev = NULL;
}

static void waiter_enqueue(surpool_pool *p, surpool__waiter *w)
{
    w->next = NULL;
    w->prev = p->wait_tail;
    if (p->wait_tail != NULL)
        p->wait_tail->next = w;
    else
        p->wait_head = w;
    p->wait_tail = w;
    p->nwaiters++;
    if (p->nwaiters > p->stats.peak_waiters)
        p->stats.peak_waiters = p->nwaiters;
}

static void waiter_unlink(surpool_pool *p, surpool__waiter *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        p->wait_head = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    else
        p->wait_tail = w->prev;
    w->next = w->prev = NULL;
    p->nwaiters--;
}

/* Connects the pool wants started now: enough for every waiter not already
 * covered by a connect in progress, and enough to reach min_connections. */
static int connect_demand_locked(const surpool_pool *p)
{
    if (p->closed)
        return 0;
    int free_slots = p->cfg.pub.max_connections - total_locked(p);
    int want = p->nwaiters - p->nconnecting;
    int below_min = p->cfg.pub.min_connections - total_locked(p);
    if (below_min > want)
        want = below_min;
    if (want > free_slots)
        want = free_slots;
    return want > 0 ? want : 0;
}

static void *connector_main(void *arg);

/* Make sure a connector will look at the demand: wake an idle one, or start a
 * new one if all are busy and the cap allows. */
static void kick_connectors_locked(surpool_pool *p)
{
    int demand = connect_demand_locked(p);
    if (demand <= 0)
        return;
    if (p->nconnectors_idle > 0) {
        pthread_cond_signal(&p->connector_cv);
        return;
    }
    if (p->nconnectors >= p->cfg.max_concurrent_connects)
        return;
    if (pthread_create(&p->connectors[p->nconnectors], NULL, connector_main, p) == 0) {
        p->nconnectors++;
    } else if (p->nconnectors == 0) {
        /* Cannot start any thread: fail the waiters rather than let them hang. */
        surpool__seterr(&p->last_connect_error, SURPOOL_ERR_NOMEM,
                        "cannot start a connector thread");
        p->consecutive_failures++;
    }
}

/* A usable connection is free: give it to the oldest waiter, else make it idle.
 * `c` must be counted in nleased (released) or nconnecting (fresh) by the
 * caller, who adjusts the counters before calling. */
static void put_conn_locked(surpool_pool *p, surpool_conn *c)
{
    surpool__waiter *w = p->wait_head;
    if (w != NULL && !p->closed) {
        waiter_unlink(p, w);
        c->state = SURPOOL__CONN_LEASED;
        p->nleased++;
        w->conn = c;
        w->outcome = SURPOOL_OK;
        w->done = 1;
        p->stats.handoffs++;
        pthread_cond_signal(&w->cv);
    } else {
        c->last_used_ns = surpool__now_ns();
        idle_push_front(p, c);
    }
}

/* Remove a leased or idle connection from the books. The caller closes it
 * outside the mutex with surpool__conn_close(). */
static void forget_conn_locked(surpool_pool *p, surpool_conn *c)
{
    if (c->state == SURPOOL__CONN_IDLE)
        idle_unlink(p, c);
    else if (c->state == SURPOOL__CONN_LEASED)
        p->nleased--;
    all_unlink(p, c);
    p->stats.destroyed++;
    p->nclosing++;
    /* Its slot is free: a waiter may need a replacement. */
    kick_connectors_locked(p);
}

/* Close a connection forgotten by forget_conn_locked(), with mu NOT held, and
 * tell destroy() once it is gone (destroy must not free the transport under a
 * close in progress). */
static void close_forgotten(surpool_pool *p, surpool_conn *c)
{
    surpool__conn_close(c);
    pthread_mutex_lock(&p->mu);
    if (--p->nclosing == 0 && p->closed)
        pthread_cond_broadcast(&p->state_cv);
    pthread_mutex_unlock(&p->mu);
}

/* xorshift64*: jitter only, not cryptographic. */
static uint64_t next_random_locked(surpool_pool *p)
{
    uint64_t x = p->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    p->rng = x;
    return x * UINT64_C(2685821657736338717);
}

static long backoff_ms(surpool_pool *p, int failures)
{
    long lo = p->cfg.pub.reconnect_backoff_min_ms;
    long hi = p->cfg.pub.reconnect_backoff_max_ms;
    long d = lo;
    for (int i = 1; i < failures && d < hi; i++)
        d *= 2;
    if (d > hi)
        d = hi;
    /* Full jitter on the upper half: spreads retries of many clients. */
    if (d > 1)
        d = d / 2 + (long)(next_random_locked(p) % (uint64_t)(d / 2 + 1));
    return d;
}

/* ------------------------------------------------------------------------- */
/* Connector threads                                                          */
/* ------------------------------------------------------------------------- */

static void *connector_main(void *arg)
{
    surpool_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->closed)
            break;
        if (connect_demand_locked(p) <= 0) {
            p->nconnectors_idle++;
            pthread_cond_wait(&p->connector_cv, &p->mu);
            p->nconnectors_idle--;
            continue;
        }
        int64_t now = surpool__now_ns();
        if (now < p->connect_not_before_ns) {
            p->nconnectors_idle++;
            cond_wait_until(&p->connector_cv, &p->mu, p->connect_not_before_ns);
            p->nconnectors_idle--;
            continue;
        }

        /* Reserve the slot, open outside the mutex. */
        p->nconnecting++;
        check_invariants(p);
        pthread_mutex_unlock(&p->mu);

        surpool_conn *c = NULL;
        surpool_error cerr;
        surpool__error_clear(&cerr);
        surpool_err rc = surpool__conn_open(p, &c, &cerr);

        pthread_mutex_lock(&p->mu);
        p->nconnecting--;
        if (rc == SURPOOL_OK) {
            p->consecutive_failures = 0;
            p->connect_not_before_ns = 0;
            p->stats.created++;
            c->serial = ++p->next_serial;
            all_link(p, c);
            if (p->closed) {
                /* Lost the race with close(): nobody may have it. */
                c->state = SURPOOL__CONN_LEASED;
                p->nleased++;
                forget_conn_locked(p, c);
                pthread_mutex_unlock(&p->mu);
                close_forgotten(p, c);
                pthread_mutex_lock(&p->mu);
            } else {
                put_conn_locked(p, c);
            }
        } else {
            p->stats.connect_failures++;
            p->consecutive_failures++;
            p->connect_failures_pending++;
            surpool__error_copy(&p->last_connect_error, &cerr);
            long d = backoff_ms(p, p->consecutive_failures);
            p->connect_not_before_ns = surpool__now_ns() + d * SURPOOL__NS_PER_MS;
            surpool__log(&p->logger, SURPOOL_LOG_WARN,
                         "connect failed (%d in a row, retry in %ld ms): %s",
                         p->consecutive_failures, d, cerr.message);
        }
        check_invariants(p);
        pthread_cond_broadcast(&p->state_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* Create / close / destroy                                                   */
/* ------------------------------------------------------------------------- */

static surpool_err dup_field(char **dst, const char **pub, const char *src)
{
    *dst = NULL;
    *pub = NULL;
    if (src == NULL)
        return SURPOOL_OK;
    *dst = surpool__strdup(src);
    if (*dst == NULL)
        return SURPOOL_ERR_NOMEM;
    *pub = *dst;
    return SURPOOL_OK;
}

static void free_config(surpool__pool_config *c)
{
    surpool__free(c->url);
    surpool__free(c->ns);
    surpool__free(c->db);
    surpool__free(c->user);
    surpool__free_secret(c->pass);
    surpool__free(c->access);
    surpool__free_secret(c->token);
    surpool__free(c->init_sql);
    surpool__free(c->tls_ca_file);
    surpool__free(c->tls_ca_dir);
    surpool__free(c->tls_cert_file);
    surpool__free(c->tls_key_file);
    json_decref(c->signin_params);
    memset(c, 0, sizeof(*c));
}

/* Take a string from the config, or from the URL when the config has none. */
static const char *pick(const char *cfg_value, const char *url_value)
{
    return cfg_value != NULL ? cfg_value : url_value;
}

static surpool_err copy_config(surpool__pool_config *dst, const surpool_config *src,
                               const surpool__url *url, surpool_error *err)
{
    memset(dst, 0, sizeof(*dst));
    dst->pub = *src;
    surpool_err rc = SURPOOL_OK;
    surpool_config *pub = &dst->pub;
#define DUP(field, value)                                                                \
    do {                                                                                 \
        if (rc == SURPOOL_OK)                                                            \
            rc = dup_field(&dst->field, &pub->field, (value));                          \
    } while (0)
    DUP(url, src->url);
    DUP(ns, pick(src->ns, url->ns));
    DUP(db, pick(src->db, url->db));
    DUP(user, pick(src->user, url->user));
    DUP(pass, pick(src->pass, url->pass));
    DUP(access, pick(src->access, url->access));
    DUP(token, src->token);
    DUP(init_sql, src->init_sql);
    DUP(tls_ca_file, src->tls_ca_file);
    DUP(tls_ca_dir, src->tls_ca_dir);
    DUP(tls_cert_file, src->tls_cert_file);
    DUP(tls_key_file, src->tls_key_file);
#undef DUP
    if (rc == SURPOOL_OK && src->signin_params != NULL) {
        dst->signin_params = json_deep_copy(src->signin_params);
        if (dst->signin_params == NULL)
            rc = SURPOOL_ERR_NOMEM;
        pub->signin_params = dst->signin_params;
    }
    if (rc != SURPOOL_OK) {
        free_config(dst);
        return surpool__seterr(err, rc, "out of memory copying the configuration");
    }
    return SURPOOL_OK;
}

static int empty(const char *s)
{
    return s != NULL && s[0] == '\0';
}

/* Validate what create() needs; messages name the field. */
static surpool_err validate_config(const surpool_config *c, surpool_error *err)
{
    if (c->struct_size != sizeof(surpool_config))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config not initialised with surpool_config_init()");
    if (c->url == NULL || c->url[0] == '\0')
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.url is required");
    if (c->max_connections < 1 || c->max_connections > 100000)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.max_connections must be 1..100000 (got %d)",
                               c->max_connections);
    if (c->min_connections < 0 || c->min_connections > c->max_connections)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.min_connections must be 0..max_connections (got %d)",
                               c->min_connections);
    if (c->acquire_timeout_ms < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.acquire_timeout_ms must be >= 0");
    if (c->connect_timeout_ms <= 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.connect_timeout_ms must be > 0");
    if (c->request_timeout_ms < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.request_timeout_ms must be >= 0 (0 = none)");
    if (c->max_waiters < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.max_waiters must be >= 0 (0 = unbounded)");
    if (c->reconnect_backoff_min_ms < 0 ||
        c->reconnect_backoff_max_ms < c->reconnect_backoff_min_ms)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.reconnect_backoff_min_ms must be >= 0 and <= "
                               "reconnect_backoff_max_ms");
    if (c->max_concurrent_connects < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.max_concurrent_connects must be >= 0");
    if (c->max_message_bytes < 1024)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.max_message_bytes must be >= 1024");
    if (c->log_level < SURPOOL_LOG_ERROR || c->log_level > SURPOOL_LOG_DEBUG)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.log_level is invalid");
    if (empty(c->ns) || empty(c->db) || empty(c->user) || empty(c->access) ||
        empty(c->token) || empty(c->init_sql))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config strings must be NULL or non-empty");
    if (c->tls_insecure_skip_verify != 0 && c->tls_insecure_skip_verify != 1)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.tls_insecure_skip_verify must be 0 or 1");
    if ((c->tls_cert_file == NULL) != (c->tls_key_file == NULL))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.tls_cert_file and tls_key_file go together");
    return SURPOOL_OK;
}

/* Checks that need the URL merged in. */
static surpool_err validate_merged(const surpool_config *c, surpool_error *err)
{
    if (c->db != NULL && c->ns == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.db needs config.ns");
    if (c->pass != NULL && c->user == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.pass needs config.user");
    if (c->user != NULL && c->pass == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.user needs config.pass");
    if ((c->token != NULL) + (c->user != NULL) + (c->signin_params != NULL) > 1)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.user, config.token and config.signin_params are "
                               "exclusive");
    if (c->signin_params != NULL && !json_is_object(c->signin_params))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.signin_params must be a JSON object");
    if (c->auth_level < SURPOOL_AUTH_ROOT || c->auth_level > SURPOOL_AUTH_DATABASE)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "config.auth_level is invalid");
    if (c->auth_level == SURPOOL_AUTH_NAMESPACE && c->ns == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.auth_level NAMESPACE needs config.ns");
    if (c->auth_level == SURPOOL_AUTH_DATABASE && c->db == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.auth_level DATABASE needs config.ns and config.db");
    if (c->access != NULL && (c->ns == NULL || c->db == NULL))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "config.access needs config.ns and config.db");
    return SURPOOL_OK;
}

void surpool_config_init(surpool_config *cfg)
{
    if (cfg == NULL)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->struct_size = sizeof(*cfg);
    cfg->min_connections = 0;
    cfg->max_connections = 10;
    cfg->acquire_timeout_ms = 30000;
    cfg->connect_timeout_ms = 10000;
    cfg->request_timeout_ms = 30000;
    cfg->max_waiters = 0;
    cfg->max_concurrent_connects = 8;
    cfg->reconnect_backoff_min_ms = 100;
    cfg->reconnect_backoff_max_ms = 5000;
    cfg->max_message_bytes = (size_t)64 * 1024 * 1024;
    cfg->log_level = SURPOOL_LOG_WARN;
}

surpool_err surpool__pool_create_with(const surpool_config *cfg,
                                      const surpool__transport_ops *ops, void *transport_arg,
                                      surpool_pool **out, surpool_error *err)
{
    if (cfg == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "cfg and out are required");
    surpool_err rc = validate_config(cfg, err);
    if (rc != SURPOOL_OK)
        return rc;

    surpool_pool *p = surpool__calloc(1, sizeof(*p));
    if (p == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory creating the pool");
    rc = surpool__url_parse(cfg->url, &p->url, err);
    if (rc != SURPOOL_OK) {
        surpool__free(p);
        return rc;
    }
    rc = copy_config(&p->cfg, cfg, &p->url, err);
    if (rc == SURPOOL_OK)
        rc = validate_merged(&p->cfg.pub, err);
    if (rc != SURPOOL_OK)
        goto fail_config;
    p->cfg.max_concurrent_connects = cfg->max_concurrent_connects > 0
                                         ? cfg->max_concurrent_connects
                                         : cfg->max_connections;
    if (p->cfg.max_concurrent_connects > cfg->max_connections)
        p->cfg.max_concurrent_connects = cfg->max_connections;
    p->logger.fn = cfg->log_fn;
    p->logger.userdata = cfg->log_userdata;
    p->logger.level = cfg->log_level;
    p->ops = ops;
    p->rng = (uint64_t)surpool__now_ns() | 1u;

    p->connectors = surpool__calloc((size_t)p->cfg.max_concurrent_connects,
                                    sizeof(pthread_t));
    if (p->connectors == NULL) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory creating the pool");
        goto fail_config;
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create the pool mutex");
        goto fail_connectors;
    }
    if (cond_init_monotonic(&p->connector_cv) != 0) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
        goto fail_mutex;
    }
    if (cond_init_monotonic(&p->state_cv) != 0) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
        goto fail_cv1;
    }

    surpool__tconfig tc;
    memset(&tc, 0, sizeof(tc));
    tc.url = &p->url;
    tc.connect_timeout_ms = cfg->connect_timeout_ms;
    tc.max_message_bytes = cfg->max_message_bytes;
    tc.max_connections = cfg->max_connections;
    tc.tls_ca_file = p->cfg.pub.tls_ca_file;
    tc.tls_ca_dir = p->cfg.pub.tls_ca_dir;
    tc.tls_cert_file = p->cfg.pub.tls_cert_file;
    tc.tls_key_file = p->cfg.pub.tls_key_file;
    tc.tls_insecure_skip_verify = cfg->tls_insecure_skip_verify;
    tc.logger = &p->logger;
    rc = ops->create(&tc, transport_arg, &p->transport, err);
    if (rc != SURPOOL_OK)
        goto fail_cv2;

    /* Warm up: open min_connections in parallel (bounded by the connector cap)
     * and wait for them, or for the first failure. */
    if (cfg->min_connections > 0) {
        int64_t deadline = surpool__deadline_after_ms(cfg->connect_timeout_ms);
        pthread_mutex_lock(&p->mu);
        kick_connectors_locked(p);
        while (total_locked(p) - p->nconnecting < cfg->min_connections &&
               p->connect_failures_pending == 0) {
            kick_connectors_locked(p);
            if (cond_wait_until(&p->state_cv, &p->mu, deadline) == ETIMEDOUT)
                break;
        }
        surpool_error cerr = p->last_connect_error;
        int failed = p->connect_failures_pending > 0;
        int opened = total_locked(p) - p->nconnecting;
        pthread_mutex_unlock(&p->mu);
        if (opened < cfg->min_connections) {
            if (failed)
                surpool__error_copy(err, &cerr);
            else
                surpool__seterr(err, SURPOOL_ERR_CONNECT,
                                "could not open min_connections (%d) within %ld ms",
                                cfg->min_connections, cfg->connect_timeout_ms);
            rc = failed ? cerr.code : SURPOOL_ERR_CONNECT;
            surpool_pool_destroy(p);
            return rc;
        }
    }
    *out = p;
    return SURPOOL_OK;

fail_cv2:
    pthread_cond_destroy(&p->state_cv);
fail_cv1:
    pthread_cond_destroy(&p->connector_cv);
fail_mutex:
    pthread_mutex_destroy(&p->mu);
fail_connectors:
    surpool__free(p->connectors);
fail_config:
    free_config(&p->cfg);
    surpool__url_free(&p->url);
    surpool__free(p);
    return rc;
}

surpool_err surpool_pool_create(const surpool_config *cfg, surpool_pool **out,
                                surpool_error *err)
{
    return surpool__pool_create_with(cfg, &surpool__transport_lws, NULL, out, err);
}

static void close_locked(surpool_pool *p)
{
    if (p->closed)
        return;
    p->closed = 1;
    for (surpool__waiter *w = p->wait_head; w != NULL; w = p->wait_head) {
        waiter_unlink(p, w);
        w->outcome = SURPOOL_ERR_CLOSED;
        w->done = 1;
        pthread_cond_signal(&w->cv);
    }
    pthread_cond_broadcast(&p->connector_cv);
    pthread_cond_broadcast(&p->state_cv);
}

void surpool_pool_close(surpool_pool *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_lock(&pool->mu);
    close_locked(pool);
    pthread_mutex_unlock(&pool->mu);
}

void surpool_pool_destroy(surpool_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    close_locked(p);
    /* Wait for every lease to come back and every connect to finish. */
    while (p->nleased > 0 || p->nconnecting > 0 || p->nclosing > 0)
        pthread_cond_wait(&p->state_cv, &p->mu);
    int n = p->nconnectors;
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < n; i++)
        pthread_join(p->connectors[i], NULL);

    /* No other thread touches the pool now. */
    while (p->idle_head != NULL) {
        surpool_conn *c = p->idle_head;
        forget_conn_locked(p, c);
        surpool__conn_close(c);
        p->nclosing--;
    }
    assert(p->all_head == NULL && p->nclosing == 0);
    p->ops->destroy(p->transport);
    pthread_cond_destroy(&p->state_cv);
    pthread_cond_destroy(&p->connector_cv);
    pthread_mutex_destroy(&p->mu);
    surpool__free(p->connectors);
    free_config(&p->cfg);
    surpool__url_free(&p->url);
    surpool__wipe(&p->last_connect_error, sizeof(p->last_connect_error));
    surpool__free(p);
}

/* ------------------------------------------------------------------------- */
/* Acquire / release                                                          */
/* ------------------------------------------------------------------------- */

/* The error a waiter gets when its deadline passes: the last connect error if
 * connects are failing right now, else a plain timeout. */
static surpool_err timeout_error_locked(surpool_pool *p, long timeout_ms, surpool_error *err)
{
    if (p->consecutive_failures > 0) {
        surpool_err code = p->last_connect_error.code;
        if (code == SURPOOL_ERR_TIMEOUT || code == SURPOOL_OK)
            code = SURPOOL_ERR_CONNECT;
        if (err != NULL) {
            surpool__error_copy(err, &p->last_connect_error);
            err->code = code;
        }
        return code;
    }
    p->stats.timeouts++;
    return surpool__seterr(err, SURPOOL_ERR_TIMEOUT,
                           "no connection available within %ld ms (%d in use, %d waiting)",
                           timeout_ms, p->nleased, p->nwaiters);
}

surpool_err surpool_pool_acquire(surpool_pool *p, long timeout_ms, surpool_conn **out,
                                 surpool_error *err)
{
    if (p == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "pool and out are required");
    if (timeout_ms < 0)
        timeout_ms = p->cfg.pub.acquire_timeout_ms;
    int64_t deadline = surpool__deadline_after_ms(timeout_ms);
    surpool_err rc;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->closed) {
            rc = surpool__seterr(err, SURPOOL_ERR_CLOSED, "pool is closed");
            goto out_unlock;
        }
        /* Idle connections exist only while nobody waits (rule 3), so taking
         * one never jumps the queue. */
        surpool_conn *c = p->idle_head;
        if (c == NULL)
            break;
        if (!surpool__conn_usable(c)) {
            p->stats.broken++;
            forget_conn_locked(p, c);
            pthread_mutex_unlock(&p->mu);
            close_forgotten(p, c);
            pthread_mutex_lock(&p->mu);
            continue;
        }
        idle_unlink(p, c);
        c->state = SURPOOL__CONN_LEASED;
        p->nleased++;
        p->stats.acquired++;
        check_invariants(p);
        pthread_mutex_unlock(&p->mu);
        *out = c;
        return SURPOOL_OK;
    }

    if (p->cfg.pub.max_waiters > 0 && p->nwaiters >= p->cfg.pub.max_waiters) {
        p->stats.shed++;
        rc = surpool__seterr(err, SURPOOL_ERR_OVERLOADED,
                             "%d callers already wait for a connection (max_waiters)",
                             p->nwaiters);
        goto out_unlock;
    }

    surpool__waiter w;
    memset(&w, 0, sizeof(w));
    if (cond_init_monotonic(&w.cv) != 0) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
        goto out_unlock;
    }
    w.ticket = p->next_ticket++;
    waiter_enqueue(p, &w);
    kick_connectors_locked(p);
    check_invariants(p);

    while (!w.done) {
        int wrc = cond_wait_until(&w.cv, &p->mu, deadline);
        if (wrc == ETIMEDOUT && !w.done) {
            /* Rule 4: nothing was handed over, so we may leave. */
            waiter_unlink(p, &w);
            rc = timeout_error_locked(p, timeout_ms, err);
            pthread_cond_destroy(&w.cv);
            goto out_unlock;
        }
    }
    pthread_cond_destroy(&w.cv);
    if (w.outcome == SURPOOL_OK) {
        p->stats.acquired++;
        check_invariants(p);
        pthread_mutex_unlock(&p->mu);
        *out = w.conn;
        return SURPOOL_OK;
    }
    rc = surpool__seterr(err, w.outcome, "%s", surpool_strerror(w.outcome));

out_unlock:
    check_invariants(p);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void surpool_conn_release(surpool_conn *c)
{
    if (c == NULL)
        return;
    surpool_pool *p = c->pool;
    /* A lease whose session state changed is closed, never lent on: the next
     * borrower must get a connection exactly as configured. */
    int broken = !surpool__conn_usable(c) || c->broken;
    int reusable = !broken && !c->discard && !c->session_dirty;
    c->last_error[0] = '\0';

    pthread_mutex_lock(&p->mu);
    assert(c->state == SURPOOL__CONN_LEASED);
    p->stats.released++;
    if (!reusable || p->closed) {
        if (broken)
            p->stats.broken++;
        forget_conn_locked(p, c);
        pthread_mutex_unlock(&p->mu);
        close_forgotten(p, c);
        return;
    }
    p->nleased--;
    put_conn_locked(p, c);
    check_invariants(p);
    pthread_mutex_unlock(&p->mu);
}

surpool_err surpool_pool_stats(surpool_pool *p, surpool_stats *out)
{
    if (p == NULL || out == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    pthread_mutex_lock(&p->mu);
    *out = p->stats;
    out->idle = p->nidle;
    out->in_use = p->nleased;
    out->connecting = p->nconnecting;
    out->total = total_locked(p);
    out->waiters = p->nwaiters;
    pthread_mutex_unlock(&p->mu);
    out->struct_size = sizeof(*out);
    out->requests = atomic_load(&p->requests);
    out->request_errors = atomic_load(&p->request_errors);
    return SURPOOL_OK;
}
