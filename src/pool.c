/*
 * The pool core: waiters, direct handoff, acquire and release, and the
 * lifecycle (create, pause, drain, close, destroy). The connect governor
 * (governor.c) opens connections, the maintainer (maintainer.c) retires and
 * pings idle ones; both work on the books kept here.
 *
 * One mutex (pool->mu) guards every list and counter of the pool (pool.h). A
 * function named *_locked is called with it held and returns with it held,
 * never dropping it on the way. The rules:
 *
 *  1. Slots. idle + in_use + connecting <= max_connections, always (checked by
 *     surpool__pool_check_locked(), fatal in the test builds only:
 *     SURPOOL__CHECK). A slot is reserved under the mutex before a connection
 *     is opened and is returned under the mutex when the open fails or the
 *     connection is destroyed.
 *  2. FIFO. A caller that finds no idle connection joins the tail of the waiter
 *     queue. Each waiter has its own condition variable; nobody broadcasts.
 *  3. Handoff. Whenever a usable connection becomes free (released, or freshly
 *     opened) and the queue is not empty, it goes straight to the OLDEST waiter:
 *     the waiter's `conn` is set and only that waiter is signalled. The
 *     connection never passes through the idle list, so a newcomer can never
 *     take it, and a wake-up can never be lost: the grant is a state change under
 *     the mutex, not a signal someone has to catch. (While paused, released
 *     connections go idle instead; resume hands them out in order.)
 *  4. A deadline that expires while a connection is being handed over is settled
 *     under the mutex: if `conn` is set the waiter keeps it and succeeds;
 *     otherwise it unlinks itself. A connection is never lost nor given twice.
 *  5.-6. Connects, backoff and the circuit breaker: the connect governor's
 *     rules, in governor.c.
 *  7. close() wakes every waiter with SURPOOL_ERR_CLOSED at once; connections
 *     still leased are closed when they come back.
 *  8. Events, log lines and slow work (pings, closes, restores) never run under
 *     the mutex.
 *  9. A lease is given back once. Users hold lease handles, not connections
 *     (lease.c): surpool_conn_release() ends the handle's lease first (one
 *     compare-and-swap on its generation), so a stale handle, even one whose
 *     connection has been lent again, never gets here. Then release claims the
 *     connection under the mutex (state LEASED -> RELEASING) before anything
 *     else; a connection that is not a lease at that moment (idle, being
 *     released, closed, lent to the maintainer: a bug of an internal
 *     borrower) is logged and ignored. A closed connection's memory stays in
 *     the graveyard for the next SURPOOL__GRAVE_MAX closes, which keeps such a
 *     connection readable and lets a stale handle of it still name its pool
 *     for the log line.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lease.h"
#include "pool.h"
#include "thread.h"

struct surpool__waiter {
    pthread_cond_t cv;
    surpool__queue link; /* pool->waiters */
    surpool_conn *conn;  /* set under mu by a handoff */
    surpool_err outcome; /* set under mu with `done` */
    int done;
};

/* ------------------------------------------------------------------------- */
/* Small helpers (all with mu held unless said otherwise)                     */
/* ------------------------------------------------------------------------- */

void surpool__pool_check_locked(const surpool_pool *p)
{
    SURPOOL__CHECK(p->nidle >= 0 && p->nleased >= 0 && p->nconnecting >= 0 && p->nmaint >= 0);
    SURPOOL__CHECK(p->nwaiters >= 0 && p->nlane >= 0 && p->nclosing >= 0);
    SURPOOL__CHECK(p->nidle + p->nleased + p->nconnecting <= p->cfg.pub.max_connections);
    SURPOOL__CHECK(p->nidle == 0 || p->nwaiters == 0 || p->closed || p->paused);
#if defined(SURPOOL_FATAL_CHECKS) && SURPOOL_FATAL_CHECKS
    /* The per-node books (docs/cluster.md) add up to the pool's. */
    int conns = 0, connecting = 0;
    for (int i = 0; i < p->neps; i++) {
        SURPOOL__CHECK(p->eps[i].nconns >= 0 && p->eps[i].nconnecting >= 0);
        conns += p->eps[i].nconns;
        connecting += p->eps[i].nconnecting;
    }
    SURPOOL__CHECK(conns == p->nidle + p->nleased && connecting == p->nconnecting);
#endif
    (void)p;
}

int surpool__pool_total_locked(const surpool_pool *p)
{
    return p->nidle + p->nleased + p->nconnecting;
}

/* The idle list: head = most recently used, tail = the cold end. */
static surpool_conn *idle_first_locked(const surpool_pool *p)
{
    surpool__queue *q = surpool__queue_head(&p->idle);
    return q != NULL ? SURPOOL__QUEUE_DATA(q, surpool_conn, idle_link) : NULL;
}

static void idle_push_front(surpool_pool *p, surpool_conn *c)
{
    surpool__queue_insert_head(&p->idle, &c->idle_link);
    p->nidle++;
    c->state = SURPOOL__CONN_IDLE;
}

static void idle_push_back(surpool_pool *p, surpool_conn *c)
{
    surpool__queue_insert_tail(&p->idle, &c->idle_link);
    p->nidle++;
    c->state = SURPOOL__CONN_IDLE;
}

static void idle_unlink(surpool_pool *p, surpool_conn *c)
{
    surpool__queue_remove(&c->idle_link);
    p->nidle--;
}

/* The waiter queue: head = the oldest. */
static surpool__waiter *oldest_waiter_locked(const surpool_pool *p)
{
    surpool__queue *q = surpool__queue_head(&p->waiters);
    return q != NULL ? SURPOOL__QUEUE_DATA(q, surpool__waiter, link) : NULL;
}

static void waiter_enqueue(surpool_pool *p, surpool__waiter *w)
{
    surpool__queue_insert_tail(&p->waiters, &w->link);
    p->nwaiters++;
    if (p->nwaiters > p->stats.peak_waiters)
        p->stats.peak_waiters = p->nwaiters;
}

static void waiter_unlink(surpool_pool *p, surpool__waiter *w)
{
    surpool__queue_remove(&w->link);
    p->nwaiters--;
}

/* Wake one waiter with an outcome (a connection, or an error). */
static void waiter_finish(surpool_pool *p, surpool__waiter *w, surpool_err outcome,
                          surpool_conn *c)
{
    waiter_unlink(p, w);
    w->conn = c;
    w->outcome = outcome;
    w->done = 1;
    pthread_cond_signal(&w->cv);
}

/* ------------------------------------------------------------------------- */
/* The books: slots, handoff, forgetting                                      */
/* ------------------------------------------------------------------------- */

/* Book a freshly opened connection: its serial, the list of all. */
void surpool__pool_add_locked(surpool_pool *p, surpool_conn *c)
{
    c->serial = ++p->next_serial;
    surpool__queue_insert_head(&p->all, &c->all_link);
    p->eps[c->ep].nconns++;
}

const char *surpool__pool_worn_out_locked(surpool_pool *p, const surpool_conn *c, int64_t now)
{
    if (!surpool__conn_usable(c)) {
        p->stats.broken++;
        return "dead";
    }
    if (now >= c->expires_ns) {
        p->stats.lifetime_retirements++;
        return "max_lifetime reached";
    }
    return NULL;
}

/* Take an idle connection out of the idle list as a lease. */
void surpool__pool_take_idle_locked(surpool_pool *p, surpool_conn *c)
{
    idle_unlink(p, c);
    c->state = SURPOOL__CONN_LEASED;
    p->nleased++;
}

void surpool__pool_fail_waiters_locked(surpool_pool *p, surpool_err outcome)
{
    surpool__waiter *w;
    while ((w = oldest_waiter_locked(p)) != NULL)
        waiter_finish(p, w, outcome, NULL);
}

/* A usable connection is free: give it to the oldest waiter, else make it idle.
 * The caller has taken `c` out of nleased / nconnecting already. `used` says a
 * user had it (it counts as recently used); a keepalive ping does not make a
 * connection "used", so it goes back to the cold end with its idle clock
 * unchanged (idle_timeout_ms still applies). */
void surpool__pool_put_locked(surpool_pool *p, surpool_conn *c, int used, int64_t now)
{
    surpool__waiter *w = oldest_waiter_locked(p);
    c->last_checked_ns = now;
    if (w != NULL && !p->closed && !p->paused) {
        c->state = SURPOOL__CONN_LEASED;
        p->nleased++;
        p->stats.handoffs++;
        waiter_finish(p, w, SURPOOL_OK, c);
    } else if (used) {
        c->last_used_ns = now;
        idle_push_front(p, c);
    } else {
        idle_push_back(p, c);
    }
}

/* Remove an idle or leased connection from the books. The caller closes it
 * with surpool__pool_close_forgotten() once the mutex is released. */
void surpool__pool_forget_locked(surpool_pool *p, surpool_conn *c)
{
    if (c->state == SURPOOL__CONN_IDLE)
        idle_unlink(p, c);
    else if (c->state == SURPOOL__CONN_LEASED)
        p->nleased--;
    surpool__queue_remove(&c->all_link);
    p->eps[c->ep].nconns--;
    c->state = SURPOOL__CONN_CLOSED; /* a stale release of it is now a no-op */
    p->stats.destroyed++;
    p->nclosing++;
    /* Its slot is free: a waiter may need a replacement. */
    surpool__governor_kick_locked(p);
}

/* Close a forgotten connection, mu NOT held, then tell destroy() it is gone
 * (destroy must not free the transport under a close in progress). */
void surpool__pool_close_forgotten(surpool_pool *p, surpool_conn *c)
{
    /* Close the transport now; keep the memory in the graveyard (rule 9) and
     * free the oldest one there instead. Nobody reads c->t of a CLOSED one. */
    surpool__conn_close_transport(c);
    surpool_conn *evicted = NULL;
    pthread_mutex_lock(&p->mu);
    surpool__queue_insert_tail(&p->grave, &c->idle_link);
    if (++p->ngrave > SURPOOL__GRAVE_MAX) {
        evicted = SURPOOL__QUEUE_DATA(surpool__queue_head(&p->grave), surpool_conn, idle_link);
        surpool__queue_remove(&evicted->idle_link);
        p->ngrave--;
    }
    if (--p->nclosing == 0 && p->closed)
        pthread_cond_broadcast(&p->state_cv);
    pthread_mutex_unlock(&p->mu);
    surpool__conn_close(evicted); /* transport closed already: frees; NULL ok */
}

/* Leases drain() and destroy() wait for changed: wake them. */
void surpool__pool_leases_changed_locked(surpool_pool *p)
{
    if (p->ndrainers > 0 || p->closed)
        pthread_cond_broadcast(&p->state_cv);
}

surpool__lane *surpool__pool_lane(surpool_pool *p)
{
    return p->lane;
}

void surpool__pool_lane_unhook(surpool_pool *p, surpool__lane *l)
{
    pthread_mutex_lock(&p->mu);
    if (p->lane == l)
        p->lane = NULL;
    pthread_mutex_unlock(&p->mu);
}

void surpool__pool_lane_mark(surpool_pool *p, surpool_conn *c)
{
    pthread_mutex_lock(&p->mu);
    c->lane = 1;
    p->nlane++;
    surpool__pool_leases_changed_locked(p);
    pthread_mutex_unlock(&p->mu);
}

/* ------------------------------------------------------------------------- */
/* Create / close / destroy                                                   */
/* ------------------------------------------------------------------------- */

surpool_err surpool__pool_create_with(const surpool_config *cfg,
                                      const surpool__transport_ops *ops, void *transport_arg,
                                      surpool_pool **out, surpool_error *err)
{
    if (cfg == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "cfg and out are required");
    surpool_config full; /* the caller's struct_size bytes, defaults after them */
    surpool_err rc = surpool__config_widen(cfg, &full, err);
    if (rc != SURPOOL_OK)
        return rc;
    cfg = &full;
    rc = surpool__config_validate(cfg, err);
    if (rc != SURPOOL_OK)
        return rc;

    surpool_pool *p = surpool__calloc(1, sizeof(*p));
    if (p == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory creating the pool");
    surpool__queue_init(&p->all);
    surpool__queue_init(&p->idle);
    surpool__queue_init(&p->grave);
    surpool__queue_init(&p->waiters);
    /* The nodes: url's host list, then config.endpoints (docs/cluster.md). */
    rc = surpool__config_endpoints(cfg, &p->eps, &p->neps, err);
    if (rc != SURPOOL_OK) {
        surpool__free(p);
        return rc;
    }
    rc = surpool__config_copy(&p->cfg, cfg, &p->eps[0].url, err);
    if (rc != SURPOOL_OK)
        goto fail_eps;
    rc = surpool__config_validate_merged(&p->cfg.pub, err);
    if (rc != SURPOOL_OK)
        goto fail_config;
    p->cfg.max_concurrent_connects =
        cfg->max_concurrent_connects > 0 ? cfg->max_concurrent_connects : cfg->max_connections;
    if (p->cfg.max_concurrent_connects > cfg->max_connections)
        p->cfg.max_concurrent_connects = cfg->max_connections;
    p->logger.fn = cfg->log_fn;
    p->logger.userdata = cfg->log_userdata;
    p->logger.level = cfg->log_level;
    p->ops = ops;
    p->rng = (uint64_t)surpool__now_ns() | 1u;
    atomic_init(&p->reap_pending, 0);
    atomic_init(&p->requests, 0);
    atomic_init(&p->request_errors, 0);
    atomic_init(&p->resets, 0);
    atomic_init(&p->next_id, 1);

    p->connectors = surpool__calloc((size_t)p->cfg.max_concurrent_connects, sizeof(pthread_t));
    if (p->connectors == NULL) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory creating the pool");
        goto fail_config;
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create the pool mutex");
        goto fail_connectors;
    }
    if (surpool__cond_init(&p->connector_cv) != 0) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
        goto fail_mutex;
    }
    if (surpool__cond_init(&p->state_cv) != 0) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
        goto fail_cv1;
    }
    if (surpool__cond_init(&p->maint_cv) != 0) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
        goto fail_cv2;
    }
    if (surpool__auth_init(&p->auth) != 0) {
        pthread_cond_destroy(&p->maint_cv);
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
        goto fail_cv2;
    }

    if (surpool__live_create(p, &p->live) != SURPOOL_OK) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory creating the pool");
        goto fail_cv3;
    }

    surpool__tconfig tc;
    memset(&tc, 0, sizeof(tc));
    tc.url = &p->eps[0].url;
    tc.connect_timeout_ms = cfg->connect_timeout_ms;
    tc.max_message_bytes = cfg->max_message_bytes;
    tc.cbor = p->cfg.pub.wire_format == SURPOOL_WIRE_CBOR;
    tc.max_connections = cfg->max_connections;
    tc.tls_ca_file = p->cfg.pub.tls_ca_file;
    tc.tls_ca_dir = p->cfg.pub.tls_ca_dir;
    tc.tls_cert_file = p->cfg.pub.tls_cert_file;
    tc.tls_key_file = p->cfg.pub.tls_key_file;
    tc.tls_insecure_skip_verify = cfg->tls_insecure_skip_verify;
    tc.logger = &p->logger;
    rc = ops->create(&tc, transport_arg, &p->transport, err);
    if (rc != SURPOOL_OK)
        goto fail_cv3;

    const surpool_config *merged = &p->cfg.pub; /* the URL's settings applied */
    surpool__lane_config lc = {merged->shared_connections, merged->max_connections,
                               merged->shared_max_inflight, merged->acquire_timeout_ms,
                               merged->connect_timeout_ms};
    if (p->cfg.pub.shared_connections > 0 && p->cfg.pub.max_connections > 1 &&
        surpool__lane_create(p, &lc, &p->lane) != SURPOOL_OK) {
        ops->destroy(p->transport);
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory creating the lane");
        goto fail_cv3;
    }
    if (surpool__maintainer_start(p) != 0) {
        surpool__lane_destroy(p->lane);
        ops->destroy(p->transport);
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot start the maintainer thread");
        goto fail_cv3;
    }

    /* Warm up: open min_connections in parallel (bounded by the connector cap).
     * Unless lazy_start, wait for them, or for the first failure. */
    if (cfg->min_connections > 0) {
        pthread_mutex_lock(&p->mu);
        surpool__governor_kick_locked(p);
        if (cfg->lazy_start) {
            pthread_mutex_unlock(&p->mu);
        } else {
            int64_t deadline = surpool__deadline_after_ms(cfg->connect_timeout_ms);
            while (p->nidle < cfg->min_connections && p->connect_failures_pending == 0) {
                surpool__governor_kick_locked(p);
                if (surpool__cond_wait_until(&p->state_cv, &p->mu, deadline) == ETIMEDOUT)
                    break;
            }
            surpool_error cerr = p->last_connect_error;
            int failed = p->connect_failures_pending > 0;
            int opened = p->nidle;
            pthread_mutex_unlock(&p->mu);
            if (opened < cfg->min_connections) {
                if (failed) {
                    /* As acquire reports it: a connect that timed out is a
                     * connect error. */
                    if (cerr.code == SURPOOL_ERR_TIMEOUT)
                        cerr.code = SURPOOL_ERR_CONNECT;
                    surpool__error_copy(err, &cerr);
                    rc = cerr.code;
                } else {
                    rc = surpool__seterr(err, SURPOOL_ERR_CONNECT,
                                         "could not open min_connections (%d) within %ld ms",
                                         cfg->min_connections, cfg->connect_timeout_ms);
                }
                surpool_pool_destroy(p);
                return rc;
            }
        }
    }
    *out = p;
    return SURPOOL_OK;

fail_cv3:
    surpool__live_free(p->live);
    surpool__auth_destroy(&p->auth);
    pthread_cond_destroy(&p->maint_cv);
fail_cv2:
    pthread_cond_destroy(&p->state_cv);
fail_cv1:
    pthread_cond_destroy(&p->connector_cv);
fail_mutex:
    pthread_mutex_destroy(&p->mu);
fail_connectors:
    surpool__free(p->connectors);
fail_config:
    surpool__config_free(&p->cfg);
fail_eps:
    surpool__config_free_endpoints(p->eps, p->neps);
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
    surpool__pool_fail_waiters_locked(p, SURPOOL_ERR_CLOSED);
    pthread_cond_broadcast(&p->connector_cv);
    pthread_cond_broadcast(&p->state_cv);
    pthread_cond_broadcast(&p->maint_cv);
}

void surpool_pool_close(surpool_pool *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_lock(&pool->mu);
    close_locked(pool);
    pthread_mutex_unlock(&pool->mu);
    surpool__lane_close(pool->lane);
}

void surpool_pool_destroy(surpool_pool *p)
{
    if (p == NULL)
        return;
    /* From inside a result callback, destroy would wait for the very thread it
     * runs on (the delivery or the transport's thread) and never return:
     * refuse, loudly, and leave the pool to its owner. */
    if (surpool__in_result_callback() || surpool__live_in_callback()) {
        surpool__log(&p->logger, SURPOOL_LOG_ERROR,
                     "surpool_pool_destroy called from inside a surpool callback: refused "
                     "(it would wait for its own thread); destroy the pool from another "
                     "thread");
        return;
    }
    pthread_mutex_lock(&p->mu);
    close_locked(p);
    pthread_mutex_unlock(&p->mu);
    /* Live queries: killed (best effort, bounded), their carriers given back,
     * every final event delivered. */
    surpool__live_shutdown(p->live);
    /* The lane completes its requests and gives its leases back. It stays
     * hooked (closed) until then, so that callbacks resubmitting meanwhile get
     * SURPOOL_ERR_CLOSED; it unhooks itself under the mutex (an event callback
     * on a connector thread may be reading stats) before it is freed. */
    surpool__lane_destroy(p->lane);
    surpool__maintainer_join(p);

    pthread_mutex_lock(&p->mu);
    /* Wait for every lease to come back and every connect and close to finish. */
    while (p->nleased > 0 || p->nconnecting > 0 || p->nclosing > 0)
        pthread_cond_wait(&p->state_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    surpool__governor_join(p);

    /* No other thread touches the pool now. */
    surpool_conn *c;
    while ((c = idle_first_locked(p)) != NULL) {
        surpool__pool_forget_locked(p, c);
        surpool__conn_close(c);
        p->nclosing--;
    }
    SURPOOL__CHECK(surpool__queue_empty(&p->all) && p->nclosing == 0);
    surpool__queue *q;
    while ((q = surpool__queue_head(&p->grave)) != NULL) {
        surpool__queue_remove(q);
        surpool__conn_close(SURPOOL__QUEUE_DATA(q, surpool_conn, idle_link));
    }
    p->ops->destroy(p->transport);
    surpool__live_free(p->live);     /* no notification can arrive any more */
    surpool__auth_destroy(&p->auth); /* wipes the token */
    pthread_cond_destroy(&p->maint_cv);
    pthread_cond_destroy(&p->state_cv);
    pthread_cond_destroy(&p->connector_cv);
    pthread_mutex_destroy(&p->mu);
    surpool__free(p->connectors);
    surpool__config_free(&p->cfg);
    surpool__config_free_endpoints(p->eps, p->neps);
    surpool__wipe(&p->last_connect_error, sizeof(p->last_connect_error));
    surpool__free(p);
}

/* ------------------------------------------------------------------------- */
/* Acquire / release                                                          */
/* ------------------------------------------------------------------------- */

/* Book a lease that is about to be returned to its caller. */
static void grant_locked(surpool_pool *p, surpool_conn *c, int64_t t0, int64_t now,
                         const char *file, int line, surpool__evq *q)
{
    c->lease_start_ns = now;
    c->lease_file = file;
    c->lease_line = line;
    c->leak_reported = 0;
    p->stats.acquired++;
    int64_t waited_us = (now - t0) / 1000;
    surpool__hist_add(&p->wait_hist, waited_us);
    surpool__evq_add(p, q, SURPOOL_EVENT_ACQUIRE, c->serial, -1, waited_us, SURPOOL_OK, NULL,
                     file, line);
    surpool__pool_check_locked(p);
}

/* Step 1: the most recently used idle connection, taken as a lease; NULL if
 * none. Idle connections exist only while nobody waits (rule 3), so taking
 * one never jumps the queue. */
static surpool_conn *take_idle_locked(surpool_pool *p)
{
    surpool_conn *c = idle_first_locked(p);
    if (c != NULL)
        surpool__pool_take_idle_locked(p, c);
    return c;
}

/* Step 2: may `c`, just taken idle at `t0`, be lent? 1: yes, and *granted_ns
 * is when. 0: it was dead, expired or failed its validation ping, and is
 * retired (closed, its events sent). Called with the mutex held; drops it for
 * the ping and the close, and returns with it held again. */
static int validate(surpool_pool *p, surpool_conn *c, int64_t t0, int64_t *granted_ns,
                    surpool__evq *q)
{
    const surpool_config *cfg = &p->cfg.pub;
    int64_t now = t0;
    int validated = 0;
    const char *retire = surpool__pool_worn_out_locked(p, c, now);
    surpool_err why = SURPOOL_OK;
    if (retire == NULL && cfg->validation_idle_ms >= 0 &&
        now - c->last_checked_ns > surpool__ms_to_ns(cfg->validation_idle_ms)) {
        /* Idle a while: prove it works before lending it (outside mu). */
        p->stats.validations++;
        validated = 1;
        pthread_mutex_unlock(&p->mu);
        surpool_error verr;
        why = surpool__conn_ping(c, cfg->validation_timeout_ms, &verr);
        pthread_mutex_lock(&p->mu);
        if (why != SURPOOL_OK) {
            retire = "validation ping failed";
            p->stats.validation_failures++;
            surpool__evq_add(p, q, SURPOOL_EVENT_HEALTH_FAIL, c->serial, c->ep, 0, why,
                             verr.message, NULL, 0);
        } else if (p->closed) {
            retire = "pool closed";
        }
    }
    if (retire != NULL) {
        uint64_t serial = c->serial;
        int ep = c->ep;
        surpool__pool_forget_locked(p, c);
        pthread_mutex_unlock(&p->mu);
        surpool__pool_close_forgotten(p, c);
        surpool__evq_add(p, q, SURPOOL_EVENT_DESTROY, serial, ep, 0, why, retire, NULL, 0);
        surpool__evq_flush(p, q);
        pthread_mutex_lock(&p->mu);
        return 0;
    }
    /* A validation ping took time; otherwise no need to read the clock. */
    *granted_ns = validated ? surpool__now_ns() : t0;
    return 1;
}

/* Step 3: nothing idle. Join the waiter queue and wait for a handoff until
 * `deadline` (rules 2-4); *out is the connection handed over. Called with the
 * mutex held; the condition wait releases it meanwhile, and it returns with it
 * held. */
static surpool_err wait_for_handoff(surpool_pool *p, long timeout_ms, int64_t t0,
                                    int64_t deadline, surpool_conn **out, surpool_error *err,
                                    surpool__evq *q, const char *file, int line)
{
    const surpool_config *cfg = &p->cfg.pub;
    /* With the circuit open and no lease to come back, waiting is pointless:
     * fail fast. */
    if (p->breaker_open && p->nleased - p->nmaint == 0 && !p->paused) {
        surpool__governor_kick_locked(p);
        return surpool__governor_unavailable_locked(p, err);
    }
    if (cfg->max_waiters > 0 && p->nwaiters >= cfg->max_waiters) {
        p->stats.shed++;
        surpool__evq_add(p, q, SURPOOL_EVENT_SHED, 0, -1, 0, SURPOOL_ERR_OVERLOADED, NULL, file,
                         line);
        return surpool__seterr(err, SURPOOL_ERR_OVERLOADED,
                               "%d callers already wait for a connection (max_waiters)",
                               p->nwaiters);
    }

    surpool__waiter w;
    memset(&w, 0, sizeof(w));
    if (surpool__cond_init(&w.cv) != 0)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
    waiter_enqueue(p, &w);
    surpool__governor_kick_locked(p);
    surpool__pool_check_locked(p);

    while (!w.done) {
        int wrc = surpool__cond_wait_until(&w.cv, &p->mu, deadline);
        if (wrc == ETIMEDOUT && !w.done) {
            /* Rule 4: nothing was handed over, so we may leave. */
            waiter_unlink(p, &w);
            surpool_err rc = surpool__governor_timeout_error_locked(p, timeout_ms, err);
            surpool__evq_add(p, q, SURPOOL_EVENT_TIMEOUT, 0, -1,
                             (surpool__now_ns() - t0) / 1000, rc, NULL, file, line);
            pthread_cond_destroy(&w.cv);
            return rc;
        }
    }
    pthread_cond_destroy(&w.cv);
    if (w.outcome == SURPOOL_OK) {
        *out = w.conn;
        return SURPOOL_OK;
    }
    if (w.outcome == SURPOOL_ERR_UNAVAILABLE) /* failed by the circuit opening */
        return surpool__governor_unavailable_locked(p, err);
    return surpool__seterr(err, w.outcome, "%s", surpool_strerror(w.outcome));
}

surpool_err surpool__pool_acquire_conn(surpool_pool *p, long timeout_ms, surpool_conn **out,
                                       surpool_error *err, const char *file, int line)
{
    if (p == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "pool and out are required");
    if (surpool__in_result_callback()) /* it could wait on the transport's thread */
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "acquire called from inside a surpool_result_fn callback");
    if (timeout_ms < 0)
        timeout_ms = p->cfg.pub.acquire_timeout_ms;
    int64_t t0 = surpool__now_ns(); /* the one clock read of the fast path */
    int64_t deadline = (int64_t)timeout_ms > (INT64_MAX - t0) / SURPOOL__NS_PER_MS
                           ? INT64_MAX
                           : t0 + surpool__ms_to_ns(timeout_ms);
    surpool__evq q; /* not zero-filled: only q.n matters, and it is 6 KB */
    q.n = 0;
    surpool_conn *c = NULL;
    int64_t granted_ns = t0;
    surpool_err rc;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->closed) {
            rc = surpool__seterr(err, SURPOOL_ERR_CLOSED, "pool is closed");
            goto out_unlock;
        }
        if (p->paused) {
            if (p->pause_fail_fast) {
                rc = surpool__seterr(err, SURPOOL_ERR_PAUSED, "pool is paused");
                goto out_unlock;
            }
            break; /* queue until resume */
        }
        c = take_idle_locked(p); /* 1. take idle */
        if (c == NULL)
            break;
        if (validate(p, c, t0, &granted_ns, &q)) /* 2. validate; else retired: next */
            goto granted;
    }
    rc = wait_for_handoff(p, timeout_ms, t0, deadline, &c, err, &q, file, line); /* 3. wait */
    if (rc != SURPOOL_OK)
        goto out_unlock;
    granted_ns = surpool__now_ns();

granted:
    grant_locked(p, c, t0, granted_ns, file, line, &q);
    pthread_mutex_unlock(&p->mu);
    surpool__evq_flush(p, &q);
    *out = c;
    return SURPOOL_OK;

out_unlock:
    surpool__pool_check_locked(p);
    pthread_mutex_unlock(&p->mu);
    surpool__evq_flush(p, &q);
    return rc;
}

/* The user's lease: the connection stays internal, the caller gets a handle
 * naming this lease only (lease.c). */
surpool_err surpool_pool_acquire_at(surpool_pool *p, long timeout_ms, surpool_conn **out,
                                    surpool_error *err, const char *file, int line)
{
    surpool_conn *c = NULL;
    surpool_err rc = surpool__pool_acquire_conn(p, timeout_ms, &c, err, file, line);
    if (rc == SURPOOL_OK)
        *out = surpool__lease_lend(c);
    return rc;
}

surpool_err(surpool_pool_acquire)(surpool_pool *pool, long timeout_ms, surpool_conn **out,
                                  surpool_error *err)
{
    return surpool_pool_acquire_at(pool, timeout_ms, out, err, NULL, 0);
}

static const char *state_name(surpool__conn_state st, int maint)
{
    if (maint)
        return "lent to the maintainer for a keepalive ping";
    switch (st) {
    case SURPOOL__CONN_SETUP: return "being opened";
    case SURPOOL__CONN_IDLE: return "idle";
    case SURPOOL__CONN_LEASED: return "leased";
    case SURPOOL__CONN_RELEASING: return "being released";
    case SURPOOL__CONN_CLOSED: return "closed";
    }
    return "unknown";
}

void surpool_conn_release(surpool_conn *h)
{
    if (h == NULL)
        return;
    surpool_conn *c = NULL;
    surpool__lease_claim why = surpool__lease_end(h, &c);
    if (why != SURPOOL__LEASE_OK) {
        surpool__lease_log_refused(h, why, "surpool_conn_release");
        return;
    }
    surpool__pool_release_conn(c);
}

void surpool__pool_release_conn(surpool_conn *c)
{
    surpool_pool *p = c->pool;
    surpool__evq q; /* not zero-filled: only q.n matters, and it is 6 KB */
    q.n = 0;

    /* Rule 9: claim the lease before touching anything else. */
    pthread_mutex_lock(&p->mu);
    if (c->state != SURPOOL__CONN_LEASED || c->maint) {
        surpool__logger lg = p->logger; /* the pool is not ours to hold: copy */
        uint64_t serial = c->serial;
        const char *what = state_name(c->state, c->maint);
        pthread_mutex_unlock(&p->mu);
        surpool__log(&lg, SURPOOL_LOG_ERROR,
                     "surpool_conn_release: connection %llu is %s, not leased: released "
                     "twice? ignored",
                     (unsigned long long)serial, what);
        return;
    }
    c->state = SURPOOL__CONN_RELEASING;
    c->last_error[0] = '\0';
    c->own_timeout = 0; /* the lease's own timeout ends with it */

    /* A lease whose session state changed must not reach the next borrower as
     * it is: reset it to the configured state (outside the mutex), or close it.
     * The release event goes out while we still hold the lease: once it is
     * given back, destroy() may free the pool under us. With neither to do,
     * the release is one critical section. */
    int broken = !surpool__conn_usable(c) || c->broken;
    int restore = c->session_dirty && !broken && !c->discard && !p->cfg.pub.close_dirty_leases;
    /* An interactive transaction left open is cancelled (the next borrower
     * must not inherit it, nor the server keep it); if that fails the
     * connection is closed, not lent. */
    int end_txn = c->txn[0] != '\0' && !broken;
    int64_t now;
    if (restore || end_txn || p->cfg.pub.on_event != NULL) {
        pthread_mutex_unlock(&p->mu);
        if (end_txn) {
            surpool_error terr;
            if (surpool__rpc_end_txn(c, &terr) != SURPOOL_OK) {
                surpool__log(&p->logger, SURPOOL_LOG_INFO,
                             "connection %llu: the open transaction could not be cancelled "
                             "(%s): closing it",
                             (unsigned long long)c->serial, terr.message);
                c->broken = 1;
                restore = 0;
            }
            broken = !surpool__conn_usable(c) || c->broken;
        }
        if (restore) {
            surpool_error rerr;
            if (surpool__conn_restore(c, &rerr) == SURPOOL_OK) {
                atomic_fetch_add(&p->resets, 1);
            } else {
                surpool__log(&p->logger, SURPOOL_LOG_INFO,
                             "connection %llu could not be reset (%s): closing it",
                             (unsigned long long)c->serial, rerr.message);
            }
            broken = !surpool__conn_usable(c) || c->broken;
        }
        now = surpool__now_ns();
        surpool__evq_add(p, &q, SURPOOL_EVENT_RELEASE, c->serial, -1,
                         (now - c->lease_start_ns) / 1000, SURPOOL_OK, NULL, c->lease_file,
                         c->lease_line);
        surpool__evq_flush(p, &q);
        pthread_mutex_lock(&p->mu);
    } else {
        now = surpool__now_ns();
    }
    SURPOOL__CHECK(c->state == SURPOOL__CONN_RELEASING);
    c->state = SURPOOL__CONN_LEASED;
    if (c->lane) {
        c->lane = 0;
        p->nlane--;
    }
    p->stats.released++;
    const char *retire = NULL;
    if (broken) {
        retire = "broken";
        p->stats.broken++;
    } else if (c->discard) {
        retire = "discarded";
    } else if (c->session_dirty) {
        retire = "session state changed";
    } else if (now >= c->expires_ns) {
        retire = "max_lifetime reached";
        p->stats.lifetime_retirements++;
    } else if (p->closed) {
        retire = "pool closed";
    }
    if (retire != NULL) {
        uint64_t serial = c->serial;
        surpool__pool_forget_locked(p, c);
        surpool__pool_leases_changed_locked(p);
        pthread_mutex_unlock(&p->mu);
        /* nclosing > 0 keeps destroy() waiting until surpool__pool_close_forgotten() ends. */
        surpool__evq_add(p, &q, SURPOOL_EVENT_DESTROY, serial, c->ep, 0, SURPOOL_OK, retire,
                         NULL, 0); /* c is not closed yet */
        surpool__evq_flush(p, &q);
        surpool__pool_close_forgotten(p, c); /* last touch of the pool */
        return;
    }
    p->nleased--;
    surpool__pool_put_locked(p, c, 1, now);
    surpool__pool_leases_changed_locked(p);
    surpool__pool_check_locked(p);
    pthread_mutex_unlock(&p->mu); /* last touch of the pool */
}

/* ------------------------------------------------------------------------- */
/* Pause, resume, drain, stats                                                */
/* ------------------------------------------------------------------------- */

surpool_err surpool_pool_pause(surpool_pool *p, int fail_fast)
{
    if (p == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    pthread_mutex_lock(&p->mu);
    p->paused = 1;
    p->pause_fail_fast = fail_fast != 0;
    pthread_mutex_unlock(&p->mu);
    return SURPOOL_OK;
}

surpool_err surpool_pool_resume(surpool_pool *p)
{
    if (p == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    surpool_conn *dead[SURPOOL__EVQ_MAX];
    int ndead = 0;
    pthread_mutex_lock(&p->mu);
    p->paused = 0;
    /* Serve the queue from the idle list, oldest waiter first. */
    surpool_conn *c;
    while (oldest_waiter_locked(p) != NULL && (c = idle_first_locked(p)) != NULL) {
        if (!surpool__conn_usable(c)) {
            if (ndead == SURPOOL__EVQ_MAX)
                break; /* the maintainer reaps the rest; never hand a dead one out */
            p->stats.broken++;
            surpool__pool_forget_locked(p, c);
            dead[ndead++] = c;
            continue;
        }
        idle_unlink(p, c);
        surpool__pool_put_locked(p, c, 0, surpool__now_ns());
    }
    surpool__governor_kick_locked(p);
    surpool__pool_check_locked(p);
    pthread_mutex_unlock(&p->mu);
    surpool__evq q; /* not zero-filled: only q.n matters, and it is 6 KB */
    q.n = 0;
    for (int i = 0; i < ndead; i++) {
        surpool__evq_add(p, &q, SURPOOL_EVENT_DESTROY, dead[i]->serial, dead[i]->ep, 0,
                         SURPOOL_OK, "dead", NULL, 0);
        surpool__pool_close_forgotten(p, dead[i]);
    }
    surpool__evq_flush(p, &q);
    return SURPOOL_OK;
}

surpool_err surpool_pool_drain(surpool_pool *p, long timeout_ms)
{
    if (p == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    int64_t deadline = surpool__deadline_after_ms(timeout_ms);
    surpool_err rc = SURPOOL_OK;
    pthread_mutex_lock(&p->mu);
    p->ndrainers++;
    while (p->nleased - p->nmaint - p->nlane > 0) {
        if (surpool__cond_wait_until(&p->state_cv, &p->mu, deadline) == ETIMEDOUT &&
            p->nleased - p->nmaint - p->nlane > 0) {
            rc = SURPOOL_ERR_TIMEOUT;
            break;
        }
    }
    p->ndrainers--;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

static surpool_err stats_fill(surpool_pool *p, surpool_stats *out)
{
    if (p == NULL || out == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    pthread_mutex_lock(&p->mu);
    *out = p->stats;
    out->idle = p->nidle;
    out->in_use = p->nleased;
    out->connecting = p->nconnecting;
    out->total = surpool__pool_total_locked(p);
    out->waiters = p->nwaiters;
    out->breaker_open = p->breaker_open;
    out->paused = p->paused;
    out->acquire_wait_p50_us = surpool__hist_percentile(&p->wait_hist, 0.50);
    out->acquire_wait_p95_us = surpool__hist_percentile(&p->wait_hist, 0.95);
    out->acquire_wait_p99_us = surpool__hist_percentile(&p->wait_hist, 0.99);
    out->acquire_wait_max_us = p->wait_hist.max_us;
    out->connect_p50_us = surpool__hist_percentile(&p->connect_hist, 0.50);
    out->connect_p95_us = surpool__hist_percentile(&p->connect_hist, 0.95);
    out->connect_p99_us = surpool__hist_percentile(&p->connect_hist, 0.99);
    out->connect_max_us = p->connect_hist.max_us;
    /* Lock order pool -> lane; the lane never takes the pool mutex while it
     * holds its own. */
    surpool__lane_stats(p->lane, out);
    pthread_mutex_unlock(&p->mu);
    out->struct_size = sizeof(*out);
    out->requests = atomic_load(&p->requests);
    out->request_errors = atomic_load(&p->request_errors);
    out->resets = atomic_load(&p->resets);
    return SURPOOL_OK;
}

/* Writes only the `size` bytes the caller has (zeroing any beyond ours). */
surpool_err surpool_pool_stats_sized(surpool_pool *p, surpool_stats *out, size_t size)
{
    if (p == NULL || out == NULL || size < sizeof(size_t))
        return SURPOOL_ERR_INVALID_ARG;
    surpool_stats full;
    stats_fill(p, &full);
    size_t n = size < sizeof(full) ? size : sizeof(full);
    full.struct_size = n;
    memset(out, 0, size);
    memcpy(out, &full, n);
    return SURPOOL_OK;
}

/* The exported symbol without the macro: the 0.1.0 size (see config_init). */
surpool_err(surpool_pool_stats)(surpool_pool *p, surpool_stats *out)
{
    return surpool_pool_stats_sized(p, out, sizeof(surpool_stats));
}

/* ------------------------------------------------------------------------- */
/* Per-node stats (docs/cluster.md)                                           */
/* ------------------------------------------------------------------------- */

int surpool_conn_endpoint(const surpool_conn *h)
{
    /* A lease handle (lease.h): resolve it; c->ep never changes. */
    surpool_conn *c = NULL;
    if (h == NULL || surpool__lease_pin((surpool_conn *)h, &c) != SURPOOL__LEASE_OK)
        return -1;
    int ep = c->ep;
    surpool__lease_unpin((surpool_conn *)h);
    return ep;
}

int surpool_pool_endpoint_count(surpool_pool *p)
{
    return p != NULL ? p->neps : 0; /* fixed at create: no lock needed */
}

surpool_err surpool_pool_endpoint_stats_sized(surpool_pool *p, int index,
                                              surpool_endpoint_stats *out, size_t size)
{
    if (p == NULL || out == NULL || size < sizeof(size_t) || index < 0 || index >= p->neps)
        return SURPOOL_ERR_INVALID_ARG;
    surpool_endpoint_stats full;
    memset(&full, 0, sizeof(full));
    const surpool__endpoint *e = &p->eps[index];
    full.index = index;
    full.port = e->url.port;
    surpool__strlcpy(full.host, e->url.host, sizeof(full.host));
    pthread_mutex_lock(&p->mu);
    full.connections = e->nconns;
    full.connecting = e->nconnecting;
    surpool__queue *q;
    SURPOOL__QUEUE_FOREACH(q, &p->all)
    {
        const surpool_conn *c = SURPOOL__QUEUE_DATA(q, surpool_conn, all_link);
        if (c->ep == index && c->state != SURPOOL__CONN_IDLE)
            full.in_use++;
    }
    full.breaker_open = e->breaker_open;
    full.consecutive_failures = e->consecutive_failures;
    full.connects = e->connects;
    full.connect_failures = e->connect_failures;
    full.breaker_opens = e->breaker_opens;
    full.retired_rebalance = e->retired_rebalance;
    surpool__strlcpy(full.last_error, e->last_error, sizeof(full.last_error));
    pthread_mutex_unlock(&p->mu);
    size_t n = size < sizeof(full) ? size : sizeof(full);
    full.struct_size = n;
    memset(out, 0, size);
    memcpy(out, &full, n);
    return SURPOOL_OK;
}
