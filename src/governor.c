/*
 * The connect governor: connector threads open connections on behalf of
 * waiters and of min_connections, paced by a backoff, behind a circuit
 * breaker. Everything here is guarded by the pool mutex (pool.c).
 *
 *  5. Connections are opened by connector threads (at most
 *     max_concurrent_connects), outside the mutex, when waiters outnumber the
 *     connects in progress or the pool is below min_connections. A waiter whose
 *     deadline passes returns, and the connect it caused goes on: its connection
 *     goes to the next waiter or to the idle list. A slow server costs a caller
 *     no more than its timeout, and the work is never thrown away.
 *  6. A failed connect returns its slot, backs off (exponential, with jitter)
 *     and tries again while there is demand. Waiters that time out while
 *     connects keep failing get the last connect error, not a bare timeout.
 *     After breaker_threshold failures in a row the circuit opens: callers that
 *     nothing could serve fail at once with SURPOOL_ERR_UNAVAILABLE, and one
 *     probe at a time, paced by the backoff, tests whether the server is back.
 *  6a. Several nodes (docs/cluster.md): the backoff and the breaker of rule 6
 *     are per node (surpool__endpoint). A connect goes to a node chosen by
 *     pick_node_locked(): a node whose breaker is open and whose
 *     backoff has passed gets its one probe first if a slot is spare (one no
 *     uncovered waiter needs; else a healthy node serves the waiter first);
 *     otherwise the placement policy chooses among the healthy nodes (breaker
 *     closed, backoff passed), and with none, the due probe runs.
 *     The pool's circuit (pool->breaker_open: fail fast with UNAVAILABLE) is
 *     open only while every node's is. A probe does not count as covering a
 *     waiter (pool->nprobing): waiters get connects on healthy nodes meanwhile.
 *     With one node all of this is rule 6 exactly.
 *
 * (Rules 1-4 and 7-9 are the core's, in pool.c.)
 */
#include <pthread.h>

#include "pool.h"
#include "thread.h"
#include "utf8.h"

static int rebalancing(const surpool_pool *p)
{
    return p->cfg.pub.rebalance_interval_ms > 0 && p->neps > 1;
}

/* Does node `e` get probes (one at a time, paced by its backoff, not counted
 * as covering a waiter)? A node whose circuit is open; with active
 * rebalancing also one whose last connect failed with the circuit still
 * closed (below breaker_threshold, or breaker_threshold 0). */
static int needs_probe(const surpool_pool *p, const surpool__endpoint *e)
{
    return e->breaker_open || (rebalancing(p) && e->consecutive_failures > 0);
}

/* Waiters that no connect in progress covers (a probe covers none, rule 6a). */
static int uncovered_waiters_locked(const surpool_pool *p)
{
    return p->paused ? 0 : p->nwaiters - (p->nconnecting - p->nprobing);
}

/* Connects the pool wants started now: enough for every waiter not already
 * covered by a connect in progress, and enough to reach min_connections. With
 * the circuit open, a single probe at a time. */
static int connect_demand_locked(const surpool_pool *p)
{
    if (p->closed)
        return 0;
    int free_slots = p->cfg.pub.max_connections - surpool__pool_total_locked(p);
    if (p->breaker_open)
        return p->nconnecting == 0 && free_slots > 0 ? 1 : 0;
    int want = uncovered_waiters_locked(p);
    int below_min = p->cfg.pub.min_connections - surpool__pool_total_locked(p);
    if (below_min > want)
        want = below_min;
    if (want < 1 && rebalancing(p)) {
        /* Active rebalancing: a node whose last connect failed (its circuit
         * open, or not yet) is probed even without demand, so that it can
         * get connections back: rebalance moves connections only to a node
         * whose last connect worked (maintainer.c). */
        int64_t now = surpool__now_ns();
        for (int i = 0; i < p->neps; i++)
            if (needs_probe(p, &p->eps[i]) && p->eps[i].nconnecting == 0 &&
                now >= p->eps[i].not_before_ns)
                want = 1;
    }
    if (want > free_slots)
        want = free_slots;
    return want > 0 ? want : 0;
}

static void *connector_main(void *arg);

void surpool__governor_kick_locked(surpool_pool *p)
{
    if (connect_demand_locked(p) <= 0)
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
        /* Cannot start any thread: waiters learn why when their deadline passes. */
        surpool__seterr(&p->last_connect_error, SURPOOL_ERR_NOMEM,
                        "cannot start a connector thread");
        p->consecutive_failures++;
    }
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

/* Which node a new connection should go to now (the placement policy over
 * the healthy nodes; a due probe first when a slot is spare, rule 6a), or -1
 * with *retry_at_ns set to when one may be (INT64_MAX: when a connect in
 * progress ends). *probe says the connect is a probe (of a node whose circuit
 * is open or, rebalancing, whose last connect failed): it covers no waiter. */
static int pick_node_locked(surpool_pool *p, int64_t now, int64_t *retry_at_ns, int *probe)
{
    int64_t retry = INT64_MAX;
    *probe = 0;
    /* A due probe (the node's backoff has passed and none is running) goes
     * first, unless it would take a slot that a waiter not covered by a
     * connect in progress needs: then a healthy node serves the waiter, and
     * the probe waits for a spare slot (or for no healthy node to be left). */
    int uncovered = uncovered_waiters_locked(p);
    int spare = p->cfg.pub.max_connections - surpool__pool_total_locked(p) -
                (uncovered > 0 ? uncovered : 0);
    int due = -1;
    for (int i = 0; i < p->neps && due < 0; i++) {
        const surpool__endpoint *e = &p->eps[i];
        if (!needs_probe(p, e) || e->nconnecting > 0)
            continue;
        if (now >= e->not_before_ns)
            due = i;
        else if (e->not_before_ns < retry)
            retry = e->not_before_ns;
    }
    if (due >= 0 && spare > 0) {
        *probe = 1;
        return due;
    }
    int best = -1;
    for (int k = 0; k < p->neps; k++) {
        int i = k;
        if (p->cfg.pub.placement == SURPOOL_PLACE_ROUND_ROBIN)
            i = (p->rr_next + k) % p->neps;
        const surpool__endpoint *e = &p->eps[i];
        if (e->breaker_open)
            continue;
        if (now < e->not_before_ns) {
            if (e->not_before_ns < retry)
                retry = e->not_before_ns;
            continue;
        }
        if (p->cfg.pub.placement != SURPOOL_PLACE_LEAST_CONNECTIONS) {
            best = i; /* round-robin: the next in turn; ordered: the first */
            break;
        }
        if (best < 0 ||
            e->nconns + e->nconnecting < p->eps[best].nconns + p->eps[best].nconnecting)
            best = i;
    }
    if (best >= 0 && p->cfg.pub.placement == SURPOOL_PLACE_ROUND_ROBIN)
        p->rr_next = (best + 1) % p->neps;
    if (best < 0 && due >= 0) {
        *probe = 1; /* no healthy node: the probe is the only way forward */
        return due;
    }
    if (best < 0)
        *retry_at_ns = retry;
    return best;
}

/* The pool's circuit is open while every node's is. */
static void pool_breaker_update_locked(surpool_pool *p)
{
    int all = 1;
    for (int i = 0; i < p->neps; i++)
        all &= p->eps[i].breaker_open;
    p->breaker_open = all;
}

static long backoff_ms(surpool_pool *p, int failures)
{
    long lo = p->cfg.pub.reconnect_backoff_min_ms;
    long hi = p->cfg.pub.reconnect_backoff_max_ms;
    long d = lo;
    for (int i = 1; i < failures && d < hi; i++)
        d = d > hi / 2 ? hi : d * 2; /* never past hi, so never overflows */
    if (d > hi)
        d = hi;
    /* Jitter over the upper half spreads the retries of many clients. */
    if (d > 1)
        d = d / 2 + (long)(next_random_locked(p) % (uint64_t)(d / 2 + 1));
    return d;
}

/* The error for callers nothing can serve while the circuit is open. When
 * the server is reachable but refuses us (credentials, certificate), that is
 * the answer, not "unavailable": retrying will not help either way, but the
 * caller must see what to fix. */
surpool_err surpool__governor_unavailable_locked(const surpool_pool *p, surpool_error *err)
{
    surpool_err last = p->last_connect_error.code;
    if (last == SURPOOL_ERR_AUTH || last == SURPOOL_ERR_TLS) {
        surpool__seterr(err, last, "connects keep failing (%d in a row): %s",
                        p->consecutive_failures, p->last_connect_error.message);
        if (err != NULL) {
            err->server_code = p->last_connect_error.server_code;
            surpool__strlcpy(err->kind, p->last_connect_error.kind, sizeof(err->kind));
        }
        return last;
    }
    if (p->neps > 1)
        return surpool__seterr(err, SURPOOL_ERR_UNAVAILABLE,
                               "all %d nodes unavailable (%d connects failed in a row); last "
                               "error: %s",
                               p->neps, p->consecutive_failures, p->last_connect_error.message);
    return surpool__seterr(err, SURPOOL_ERR_UNAVAILABLE,
                           "server unavailable (%d connects failed in a row); last error: %s",
                           p->consecutive_failures, p->last_connect_error.message);
}

/* Fail the waiters that only a new connection could serve: with the circuit
 * open and no lease out, nothing will come back for them. */
static void fail_stranded_waiters_locked(surpool_pool *p)
{
    if (!p->breaker_open || p->nleased - p->nmaint > 0 || p->nidle > 0)
        return;
    surpool__pool_fail_waiters_locked(p, SURPOOL_ERR_UNAVAILABLE);
}

static void *connector_main(void *arg)
{
    surpool_pool *p = arg;
    surpool__evq q; /* not zero-filled: only q.n matters, and it is 6 KB */
    q.n = 0;
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
        int64_t retry_at = INT64_MAX;
        int probe = 0;
        int ep = pick_node_locked(p, surpool__now_ns(), &retry_at, &probe);
        if (ep < 0) {
            /* Every node backs off (or has its probe running): wait for the
             * first backoff to pass, or for a connect to end. */
            p->nconnectors_idle++;
            if (retry_at == INT64_MAX)
                pthread_cond_wait(&p->connector_cv, &p->mu);
            else
                surpool__cond_wait_until(&p->connector_cv, &p->mu, retry_at);
            p->nconnectors_idle--;
            continue;
        }
        surpool__endpoint *e = &p->eps[ep];

        /* Reserve the slot, open outside the mutex. */
        p->nconnecting++;
        e->nconnecting++;
        p->nprobing += probe;
        surpool__pool_check_locked(p);
        pthread_mutex_unlock(&p->mu);

        surpool_conn *c = NULL;
        surpool_error cerr;
        surpool__error_clear(&cerr);
        surpool_err rc = surpool__conn_open(p, ep, &c, &cerr);

        pthread_mutex_lock(&p->mu);
        p->nconnecting--;
        e->nconnecting--;
        p->nprobing -= probe;
        if (rc == SURPOOL_OK) {
            if (e->breaker_open) {
                e->breaker_open = 0;
                surpool__evq_add(p, &q, SURPOOL_EVENT_BREAKER_CLOSE, 0, ep, 0, SURPOOL_OK,
                                 "a probe connected: the server is back", NULL, 0);
                if (p->neps == 1)
                    surpool__evq_log(p, &q, SURPOOL_LOG_WARN,
                                     "server reachable again: circuit closed");
                else
                    surpool__evq_log(p, &q, SURPOOL_LOG_WARN,
                                     "node %d (port %d) reachable again: its circuit closed",
                                     ep + 1, e->url.port);
                pool_breaker_update_locked(p);
            }
            p->consecutive_failures = 0;
            e->consecutive_failures = 0;
            e->not_before_ns = 0;
            e->connects++;
            if (p->stats.destroyed > 0 || p->stats.connect_failures > 0)
                p->stats.reconnects++;
            p->stats.created++;
            surpool__pool_add_locked(p, c); /* its serial, the list of all */
            int64_t lifetime = surpool__ms_to_ns(p->cfg.pub.max_lifetime_ms);
            if (lifetime > 0) {
                /* Up to 5% earlier, so connections made together expire apart. */
                int64_t jitter =
                    (int64_t)(next_random_locked(p) % (uint64_t)(lifetime / 20 + 1));
                c->expires_ns = surpool__add_sat(c->created_ns, lifetime - jitter);
            }
            int64_t cus = c->connect_ns / 1000;
            surpool__hist_add(&p->connect_hist, cus);
            surpool__evq_add(p, &q, SURPOOL_EVENT_CREATE, c->serial, ep, cus, SURPOOL_OK, NULL,
                             NULL, 0);
            if (p->closed) {
                /* Lost the race with close(): nobody may have it. */
                c->state = SURPOOL__CONN_LEASED;
                p->nleased++;
                surpool__pool_forget_locked(p, c);
                pthread_mutex_unlock(&p->mu);
                surpool__pool_close_forgotten(p, c);
                pthread_mutex_lock(&p->mu);
            } else {
                surpool__pool_put_locked(p, c, 1, surpool__now_ns());
            }
        } else {
            p->stats.connect_failures++;
            p->consecutive_failures++;
            p->connect_failures_pending++;
            e->connect_failures++;
            e->consecutive_failures++;
            surpool__text_sanitize_str(e->last_error, sizeof(e->last_error), cerr.message);
            surpool__error_copy(&p->last_connect_error, &cerr);
            long d = backoff_ms(p, e->consecutive_failures);
            e->not_before_ns = surpool__add_sat(surpool__now_ns(), surpool__ms_to_ns(d));
            surpool__evq_add(p, &q, SURPOOL_EVENT_CONNECT_FAIL, 0, ep, 0, cerr.code,
                             cerr.message, NULL, 0);
            if (p->neps == 1)
                surpool__evq_log(p, &q, SURPOOL_LOG_WARN,
                                 "connect failed (%d in a row, next try in %ld ms): %s",
                                 p->consecutive_failures, d, cerr.message);
            else
                surpool__evq_log(p, &q, SURPOOL_LOG_WARN,
                                 "connect to node %d failed (%d in a row, next try in %ld ms): "
                                 "%s",
                                 ep + 1, e->consecutive_failures, d, cerr.message);
            int threshold = p->cfg.pub.breaker_threshold;
            if (threshold > 0 && e->consecutive_failures >= threshold && !e->breaker_open) {
                e->breaker_open = 1;
                e->breaker_opens++;
                p->stats.breaker_opens++;
                surpool__evq_add(p, &q, SURPOOL_EVENT_BREAKER_OPEN, 0, ep, 0, cerr.code,
                                 cerr.message, NULL, 0);
                if (p->neps == 1)
                    surpool__evq_log(p, &q, SURPOOL_LOG_ERROR,
                                     "server unreachable: circuit open after %d failed "
                                     "connects",
                                     e->consecutive_failures);
                else
                    surpool__evq_log(p, &q, SURPOOL_LOG_ERROR,
                                     "node %d (port %d) unreachable: its circuit open after %d "
                                     "failed connects",
                                     ep + 1, e->url.port, e->consecutive_failures);
                pool_breaker_update_locked(p);
            }
            fail_stranded_waiters_locked(p);
        }
        surpool__pool_check_locked(p);
        pthread_cond_broadcast(&p->state_cv);
        surpool__evq_flush_dropping(p, &q);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* The error a waiter gets when its deadline passes: the last connect error if
 * connects are failing right now, else a plain timeout. */
surpool_err surpool__governor_timeout_error_locked(surpool_pool *p, long timeout_ms,
                                                   surpool_error *err)
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

void surpool__governor_join(surpool_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->nconnectors;
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < n; i++)
        pthread_join(p->connectors[i], NULL);
}
