/*
 * The pool core: waiters, direct handoff, connectors, the maintainer and the
 * lifecycle.
 *
 * One mutex (pool->mu) guards every list and counter below. The rules:
 *
 *  1. Slots. idle + in_use + connecting <= max_connections, always (checked by
 *     check_invariants(), fatal in the test builds only: SURPOOL__CHECK). A slot is reserved under the mutex
 *     before a connection is opened and is returned under the mutex when the
 *     open fails or the connection is destroyed.
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
 *  7. close() wakes every waiter with SURPOOL_ERR_CLOSED at once; connections
 *     still leased are closed when they come back.
 *  8. Events, log lines and slow work (pings, closes, restores) never run under
 *     the mutex.
 *  9. A lease is given back once. release() claims it under the mutex (state
 *     LEASED -> RELEASING) before anything else; a handle that is not a user
 *     lease at that moment (idle, being released, closed, lent to the
 *     maintainer) is a second release: logged and ignored. A closed
 *     connection's memory stays in the graveyard for the next
 *     SURPOOL__GRAVE_MAX closes, so such a handle is still readable.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "thread.h"

struct surpool__waiter {
    pthread_cond_t cv;
    surpool__waiter *next, *prev;
    surpool_conn *conn;  /* set under mu by a handoff */
    surpool_err outcome; /* set under mu with `done` */
    int done;
};

/* ------------------------------------------------------------------------- */
/* Small helpers (all with mu held unless said otherwise)                     */
/* ------------------------------------------------------------------------- */

static void check_invariants(const surpool_pool *p)
{
    SURPOOL__CHECK(p->nidle >= 0 && p->nleased >= 0 && p->nconnecting >= 0 && p->nmaint >= 0);
    SURPOOL__CHECK(p->nwaiters >= 0 && p->nlane >= 0 && p->nclosing >= 0);
    SURPOOL__CHECK(p->nidle + p->nleased + p->nconnecting <= p->cfg.pub.max_connections);
    SURPOOL__CHECK(p->nidle == 0 || p->nwaiters == 0 || p->closed || p->paused);
    (void)p;
}

/* Closed connections kept readable for stale handles (rule 9). */
#define SURPOOL__GRAVE_MAX 32

static int total_locked(const surpool_pool *p)
{
    return p->nidle + p->nleased + p->nconnecting;
}

/* Settings are at most SURPOOL__MS_MAX (config.c), so this cannot overflow;
 * it saturates anyway, as a second line of defence. */
static int64_t ms_to_ns(long ms)
{
    if ((int64_t)ms > INT64_MAX / SURPOOL__NS_PER_MS)
        return INT64_MAX;
    return (int64_t)ms * SURPOOL__NS_PER_MS;
}

/* a + b for b >= 0, saturating at INT64_MAX. */
static int64_t add_sat(int64_t a, int64_t b)
{
    return b > INT64_MAX - a ? INT64_MAX : a + b;
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

static void idle_push_back(surpool_pool *p, surpool_conn *c)
{
    c->idle_next = NULL;
    c->idle_prev = p->idle_tail;
    if (p->idle_tail != NULL)
        p->idle_tail->idle_next = c;
    else
        p->idle_head = c;
    p->idle_tail = c;
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

/* ---- histograms: 4 buckets per octave of microseconds, no allocation ---- */

static int hist_bucket(int64_t us)
{
    if (us < 4)
        return us < 0 ? 0 : (int)us;
    int oct = 63 - __builtin_clzll((unsigned long long)us);
    int idx = oct * 4 + (int)((us >> (oct - 2)) & 3) - 4;
    return idx < SURPOOL__HIST_BUCKETS ? idx : SURPOOL__HIST_BUCKETS - 1;
}

static int64_t hist_upper(int idx)
{
    if (idx < 4)
        return idx;
    int oct = (idx + 4) / 4, frac = (idx + 4) % 4;
    return ((int64_t)(4 + frac + 1) << (oct - 2)) - 1;
}

static void hist_add(uint32_t *h, int64_t *max, int64_t us)
{
    int b = hist_bucket(us);
    if (h[b] != UINT32_MAX)
        h[b]++;
    if (us > *max)
        *max = us;
}

static int64_t hist_percentile(const uint32_t *h, int64_t max, double q)
{
    uint64_t total = 0;
    for (int i = 0; i < SURPOOL__HIST_BUCKETS; i++)
        total += h[i];
    if (total == 0)
        return 0;
    uint64_t target = (uint64_t)(q * (double)total + 0.999999);
    if (target == 0)
        target = 1;
    uint64_t seen = 0;
    for (int i = 0; i < SURPOOL__HIST_BUCKETS; i++) {
        seen += h[i];
        if (seen >= target) {
            int64_t up = hist_upper(i);
            return up < max ? up : max;
        }
    }
    return max;
}

/* ---- events: collected under the mutex, emitted after it is released ---- */

#define EVQ_MAX 32
/* Events and log lines decided under the mutex wait here and go out once it is
 * released: neither a user callback nor a user logger ever runs under it. */
typedef struct evq {
    surpool_event ev[EVQ_MAX];
    int log_level[EVQ_MAX]; /* -1: an event; else a log line of that level */
    char msg[EVQ_MAX][192];
    int n;
} evq;

static void evq_add(const surpool_pool *p, evq *q, surpool_event_type type, uint64_t conn_id,
                    int64_t duration_us, surpool_err code, const char *msg, const char *file,
                    int line)
{
    if (p->cfg.pub.on_event == NULL || q->n >= EVQ_MAX)
        return;
    surpool_event *e = &q->ev[q->n];
    memset(e, 0, sizeof(*e));
    e->type = type;
    e->conn_id = conn_id;
    e->duration_us = duration_us;
    e->code = code;
    e->file = file;
    e->line = line;
    q->log_level[q->n] = -1;
    surpool__strlcpy(q->msg[q->n], msg != NULL ? msg : "", sizeof(q->msg[q->n]));
    q->n++;
}

static void evq_log(const surpool_pool *p, evq *q, surpool_log_level level, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

static void evq_log(const surpool_pool *p, evq *q, surpool_log_level level, const char *fmt,
                    ...)
{
    if (p->logger.fn == NULL || level > p->logger.level || q->n >= EVQ_MAX)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->msg[q->n], sizeof(q->msg[q->n]), fmt, ap);
    va_end(ap);
    q->log_level[q->n] = (int)level;
    q->n++;
}

/* mu NOT held. */
static void evq_flush(const surpool_pool *p, evq *q)
{
    for (int i = 0; i < q->n; i++) {
        if (q->log_level[i] >= 0) {
            p->logger.fn(p->logger.userdata, (surpool_log_level)q->log_level[i], q->msg[i]);
            continue;
        }
        q->ev[i].message = q->msg[i];
        p->cfg.pub.on_event(p->cfg.pub.event_userdata, &q->ev[i]);
    }
    q->n = 0;
}

/* ------------------------------------------------------------------------- */
/* Slots, connectors, handoff                                                 */
/* ------------------------------------------------------------------------- */

/* Connects the pool wants started now: enough for every waiter not already
 * covered by a connect in progress, and enough to reach min_connections. With
 * the circuit open, a single probe at a time. */
static int connect_demand_locked(const surpool_pool *p)
{
    if (p->closed)
        return 0;
    int free_slots = p->cfg.pub.max_connections - total_locked(p);
    if (p->breaker_open)
        return p->nconnecting == 0 && free_slots > 0 ? 1 : 0;
    int want = p->paused ? 0 : p->nwaiters - p->nconnecting;
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

/* A usable connection is free: give it to the oldest waiter, else make it idle.
 * The caller has taken `c` out of nleased / nconnecting already. `used` says a
 * user had it (it counts as recently used); a keepalive ping does not make a
 * connection "used", so it goes back to the cold end with its idle clock
 * unchanged (idle_timeout_ms still applies). */
static void put_conn_locked(surpool_pool *p, surpool_conn *c, int used, int64_t now)
{
    surpool__waiter *w = p->wait_head;
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
 * with close_forgotten() once the mutex is released. */
static void forget_conn_locked(surpool_pool *p, surpool_conn *c)
{
    if (c->state == SURPOOL__CONN_IDLE)
        idle_unlink(p, c);
    else if (c->state == SURPOOL__CONN_LEASED)
        p->nleased--;
    all_unlink(p, c);
    c->state = SURPOOL__CONN_CLOSED; /* a stale release of it is now a no-op */
    p->stats.destroyed++;
    p->nclosing++;
    /* Its slot is free: a waiter may need a replacement. */
    kick_connectors_locked(p);
}

/* Close a forgotten connection, mu NOT held, then tell destroy() it is gone
 * (destroy must not free the transport under a close in progress). */
static void close_forgotten(surpool_pool *p, surpool_conn *c)
{
    /* Close the transport now; keep the memory in the graveyard (rule 9) and
     * free the oldest one there instead. Nobody reads c->t of a CLOSED one. */
    if (c->t != NULL)
        p->ops->close(c->t);
    c->t = NULL;
    surpool_conn *evicted = NULL;
    pthread_mutex_lock(&p->mu);
    c->idle_next = NULL;
    if (p->grave_tail != NULL)
        p->grave_tail->idle_next = c;
    else
        p->grave_head = c;
    p->grave_tail = c;
    if (++p->ngrave > SURPOOL__GRAVE_MAX) {
        evicted = p->grave_head;
        p->grave_head = evicted->idle_next;
        p->ngrave--;
    }
    if (--p->nclosing == 0 && p->closed)
        pthread_cond_broadcast(&p->state_cv);
    pthread_mutex_unlock(&p->mu);
    surpool__conn_close(evicted); /* transport closed already: frees; NULL ok */
}

/* Leases drain() and destroy() wait for changed: wake them. */
static void leases_changed_locked(surpool_pool *p)
{
    if (p->ndrainers > 0 || p->closed)
        pthread_cond_broadcast(&p->state_cv);
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
static surpool_err unavailable_locked(const surpool_pool *p, surpool_error *err)
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
    while (p->wait_head != NULL)
        waiter_finish(p, p->wait_head, SURPOOL_ERR_UNAVAILABLE, NULL);
}

static void *connector_main(void *arg)
{
    surpool_pool *p = arg;
    evq q; /* not zero-filled: only q.n matters, and it is 6 KB */
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
        if (surpool__now_ns() < p->connect_not_before_ns) {
            p->nconnectors_idle++;
            surpool__cond_wait_until(&p->connector_cv, &p->mu, p->connect_not_before_ns);
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
            if (p->breaker_open) {
                p->breaker_open = 0;
                evq_add(p, &q, SURPOOL_EVENT_BREAKER_CLOSE, 0, 0, SURPOOL_OK,
                        "a probe connected: the server is back", NULL, 0);
                evq_log(p, &q, SURPOOL_LOG_WARN, "server reachable again: circuit closed");
            }
            p->consecutive_failures = 0;
            p->connect_not_before_ns = 0;
            if (p->stats.destroyed > 0 || p->stats.connect_failures > 0)
                p->stats.reconnects++;
            p->stats.created++;
            c->serial = ++p->next_serial;
            int64_t lifetime = ms_to_ns(p->cfg.pub.max_lifetime_ms);
            if (lifetime > 0) {
                /* Up to 5% earlier, so connections made together expire apart. */
                int64_t jitter =
                    (int64_t)(next_random_locked(p) % (uint64_t)(lifetime / 20 + 1));
                c->expires_ns = add_sat(c->created_ns, lifetime - jitter);
            }
            int64_t cus = c->connect_ns / 1000;
            hist_add(p->connect_hist, &p->connect_max_us, cus);
            all_link(p, c);
            evq_add(p, &q, SURPOOL_EVENT_CREATE, c->serial, cus, SURPOOL_OK, NULL, NULL, 0);
            if (p->closed) {
                /* Lost the race with close(): nobody may have it. */
                c->state = SURPOOL__CONN_LEASED;
                p->nleased++;
                forget_conn_locked(p, c);
                pthread_mutex_unlock(&p->mu);
                close_forgotten(p, c);
                pthread_mutex_lock(&p->mu);
            } else {
                put_conn_locked(p, c, 1, surpool__now_ns());
            }
        } else {
            p->stats.connect_failures++;
            p->consecutive_failures++;
            p->connect_failures_pending++;
            surpool__error_copy(&p->last_connect_error, &cerr);
            long d = backoff_ms(p, p->consecutive_failures);
            p->connect_not_before_ns = add_sat(surpool__now_ns(), ms_to_ns(d));
            evq_add(p, &q, SURPOOL_EVENT_CONNECT_FAIL, 0, 0, cerr.code, cerr.message, NULL, 0);
            evq_log(p, &q, SURPOOL_LOG_WARN,
                    "connect failed (%d in a row, next try in %ld ms): %s",
                    p->consecutive_failures, d, cerr.message);
            int threshold = p->cfg.pub.breaker_threshold;
            if (threshold > 0 && p->consecutive_failures >= threshold && !p->breaker_open) {
                p->breaker_open = 1;
                p->stats.breaker_opens++;
                evq_add(p, &q, SURPOOL_EVENT_BREAKER_OPEN, 0, 0, cerr.code, cerr.message, NULL,
                        0);
                evq_log(p, &q, SURPOOL_LOG_ERROR,
                        "server unreachable: circuit open after %d failed connects",
                        p->consecutive_failures);
            }
            fail_stranded_waiters_locked(p);
        }
        check_invariants(p);
        pthread_cond_broadcast(&p->state_cv);
        if (q.n > 0) {
            pthread_mutex_unlock(&p->mu);
            evq_flush(p, &q);
            pthread_mutex_lock(&p->mu);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

void surpool__pool_lane_mark(surpool_pool *p, surpool_conn *c)
{
    pthread_mutex_lock(&p->mu);
    c->lane = 1;
    p->nlane++;
    leases_changed_locked(p);
    pthread_mutex_unlock(&p->mu);
}

void surpool__pool_conn_died(surpool_pool *p)
{
    atomic_store(&p->reap_pending, 1);
    pthread_cond_signal(&p->maint_cv);
}

/* ------------------------------------------------------------------------- */
/* The maintainer: retire, keep alive, reap, report leaks, refill             */
/* ------------------------------------------------------------------------- */

/* One ping with its own deadline, mu NOT held. */
static surpool_err ping_with_deadline(surpool_conn *c, long timeout_ms, surpool_error *err)
{
    return surpool__rpc(c, "ping", NULL, surpool__deadline_after_ms(timeout_ms), NULL, err);
}

/* Per tick, so that one tick's events fit the event queue (EVQ_MAX). */
#define MAINT_BATCH 6

static void maintain_once_locked(surpool_pool *p, evq *q)
{
    const surpool_config *cfg = &p->cfg.pub;
    int64_t now = surpool__now_ns();
    surpool_conn *victims[MAINT_BATCH], *pings[MAINT_BATCH];
    const char *why[MAINT_BATCH];
    int nv = 0, np = 0;

    /* 1. Idle connections: dead, past their lifetime, or idle too long above the
     *    minimum (oldest first). */
    surpool_conn *c = p->idle_tail;
    while (c != NULL && nv < MAINT_BATCH) {
        surpool_conn *prev = c->idle_prev;
        const char *reason = NULL;
        if (!surpool__conn_usable(c)) {
            reason = "dead";
            p->stats.broken++;
        } else if (now >= c->expires_ns) {
            reason = "max_lifetime reached";
            p->stats.lifetime_retirements++;
        } else if (cfg->idle_timeout_ms > 0 &&
                   now - c->last_used_ns >= ms_to_ns(cfg->idle_timeout_ms) &&
                   total_locked(p) > cfg->min_connections) {
            reason = "idle_timeout reached";
            p->stats.idle_retirements++;
        }
        if (reason != NULL) {
            forget_conn_locked(p, c);
            why[nv] = reason;
            victims[nv++] = c;
        }
        c = prev;
    }

    /* 2. Keepalive: idle connections unused for keepalive_interval_ms are lent
     *    to the maintainer for one ping. */
    if (cfg->keepalive_interval_ms > 0 && p->nwaiters == 0) {
        for (c = p->idle_tail; c != NULL && np < MAINT_BATCH;) {
            surpool_conn *prev = c->idle_prev;
            if (now - c->last_checked_ns >= ms_to_ns(cfg->keepalive_interval_ms)) {
                idle_unlink(p, c);
                c->state = SURPOOL__CONN_LEASED;
                c->maint = 1;
                p->nleased++;
                p->nmaint++;
                pings[np++] = c;
            }
            c = prev;
        }
    }

    /* 3. Leaks: user leases older than leak_threshold_ms, reported once. */
    if (cfg->leak_threshold_ms > 0) {
        for (c = p->all_head; c != NULL; c = c->all_next) {
            if (c->state != SURPOOL__CONN_LEASED || c->maint || c->lane || c->leak_reported)
                continue;
            if (q->n + 2 > EVQ_MAX - 3 * MAINT_BATCH)
                break; /* the rest next tick: no event or log line is dropped */
            int64_t age = now - c->lease_start_ns;
            if (age < ms_to_ns(cfg->leak_threshold_ms))
                continue;
            c->leak_reported = 1;
            p->stats.leaks++;
            evq_log(p, q, SURPOOL_LOG_WARN,
                    "possible leak: connection %llu leased for %lld ms, acquired at %s:%d",
                    (unsigned long long)c->serial, (long long)(age / SURPOOL__NS_PER_MS),
                    c->lease_file != NULL ? c->lease_file : "(unknown)", c->lease_line);
            evq_add(p, q, SURPOOL_EVENT_LEAK, c->serial, age / 1000, SURPOOL_OK,
                    "lease held longer than leak_threshold_ms", c->lease_file, c->lease_line);
        }
    }

    /* 4. Refill to min_connections; probes while the circuit is open. */
    kick_connectors_locked(p);
    check_invariants(p);

    if (nv == 0 && np == 0)
        return;
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < nv; i++) {
        uint64_t serial = victims[i]->serial;
        surpool__log(&p->logger, SURPOOL_LOG_INFO, "closing connection %llu: %s",
                     (unsigned long long)serial, why[i]);
        close_forgotten(p, victims[i]);
        evq_add(p, q, SURPOOL_EVENT_DESTROY, serial, 0, SURPOOL_OK, why[i], NULL, 0);
    }
    surpool_error perr;
    surpool_err prc[MAINT_BATCH];
    for (int i = 0; i < np; i++)
        prc[i] = ping_with_deadline(pings[i], cfg->validation_timeout_ms, &perr);
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < np; i++) {
        c = pings[i];
        c->maint = 0;
        p->nmaint--;
        p->stats.validations++;
        if (prc[i] == SURPOOL_OK && !p->closed) {
            p->nleased--;
            put_conn_locked(p, c, 0, surpool__now_ns());
            continue;
        }
        if (prc[i] != SURPOOL_OK) {
            p->stats.validation_failures++;
            evq_add(p, q, SURPOOL_EVENT_HEALTH_FAIL, c->serial, 0, prc[i],
                    "keepalive ping failed", NULL, 0);
        }
        evq_add(p, q, SURPOOL_EVENT_DESTROY, c->serial, 0, prc[i],
                prc[i] != SURPOOL_OK ? "keepalive ping failed" : "pool closed", NULL, 0);
        forget_conn_locked(p, c);
        pthread_mutex_unlock(&p->mu);
        close_forgotten(p, c);
        pthread_mutex_lock(&p->mu);
    }
    leases_changed_locked(p);
}

static void *maintainer_main(void *arg)
{
    surpool_pool *p = arg;
    evq q; /* not zero-filled: only q.n matters, and it is 6 KB */
    q.n = 0;
    pthread_mutex_lock(&p->mu);
    while (!p->closed) {
        int64_t next = add_sat(surpool__now_ns(), ms_to_ns(p->cfg.pub.maintenance_interval_ms));
        while (!p->closed && !atomic_load(&p->reap_pending) &&
               surpool__cond_wait_until(&p->maint_cv, &p->mu, next) != ETIMEDOUT)
            ;
        if (p->closed)
            break;
        atomic_store(&p->reap_pending, 0);
        maintain_once_locked(p, &q);
        if (q.n > 0) {
            pthread_mutex_unlock(&p->mu);
            evq_flush(p, &q);
            pthread_mutex_lock(&p->mu);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
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
    rc = surpool__url_parse(cfg->url, &p->url, err);
    if (rc != SURPOOL_OK) {
        surpool__free(p);
        return rc;
    }
    rc = surpool__config_copy(&p->cfg, cfg, &p->url, err);
    if (rc != SURPOOL_OK)
        goto fail_url;
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

    surpool__tconfig tc;
    memset(&tc, 0, sizeof(tc));
    tc.url = &p->url;
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

    if (p->cfg.pub.shared_connections > 0 && p->cfg.pub.max_connections > 1 &&
        surpool__lane_create(p, &p->lane) != SURPOOL_OK) {
        ops->destroy(p->transport);
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory creating the lane");
        goto fail_cv3;
    }
    if (pthread_create(&p->maintainer, NULL, maintainer_main, p) != 0) {
        surpool__lane_destroy(p->lane);
        ops->destroy(p->transport);
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot start the maintainer thread");
        goto fail_cv3;
    }
    p->maintainer_started = 1;

    /* Warm up: open min_connections in parallel (bounded by the connector cap).
     * Unless lazy_start, wait for them, or for the first failure. */
    if (cfg->min_connections > 0) {
        pthread_mutex_lock(&p->mu);
        kick_connectors_locked(p);
        if (cfg->lazy_start) {
            pthread_mutex_unlock(&p->mu);
        } else {
            int64_t deadline = surpool__deadline_after_ms(cfg->connect_timeout_ms);
            while (p->nidle < cfg->min_connections && p->connect_failures_pending == 0) {
                kick_connectors_locked(p);
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
fail_url:
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
    while (p->wait_head != NULL)
        waiter_finish(p, p->wait_head, SURPOOL_ERR_CLOSED, NULL);
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
    pthread_mutex_lock(&p->mu);
    close_locked(p);
    pthread_mutex_unlock(&p->mu);
    /* The lane completes its requests and gives its leases back. It stays
     * hooked (closed) until then, so that callbacks resubmitting meanwhile get
     * SURPOOL_ERR_CLOSED; it unhooks itself under the mutex (an event callback
     * on a connector thread may be reading stats) before it is freed. */
    surpool__lane_destroy(p->lane);
    if (p->maintainer_started)
        pthread_join(p->maintainer, NULL);

    pthread_mutex_lock(&p->mu);
    /* Wait for every lease to come back and every connect and close to finish. */
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
    SURPOOL__CHECK(p->all_head == NULL && p->nclosing == 0);
    while (p->grave_head != NULL) {
        surpool_conn *c = p->grave_head;
        p->grave_head = c->idle_next;
        surpool__conn_close(c);
    }
    p->ops->destroy(p->transport);
    pthread_cond_destroy(&p->maint_cv);
    pthread_cond_destroy(&p->state_cv);
    pthread_cond_destroy(&p->connector_cv);
    pthread_mutex_destroy(&p->mu);
    surpool__free(p->connectors);
    surpool__config_free(&p->cfg);
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

/* Book a lease that is about to be returned to its caller. */
static void grant_locked(surpool_pool *p, surpool_conn *c, int64_t t0, int64_t now,
                         const char *file, int line, evq *q)
{
    c->lease_start_ns = now;
    c->lease_file = file;
    c->lease_line = line;
    c->leak_reported = 0;
    p->stats.acquired++;
    int64_t waited_us = (now - t0) / 1000;
    hist_add(p->wait_hist, &p->wait_max_us, waited_us);
    evq_add(p, q, SURPOOL_EVENT_ACQUIRE, c->serial, waited_us, SURPOOL_OK, NULL, file, line);
    check_invariants(p);
}

surpool_err surpool_pool_acquire_at(surpool_pool *p, long timeout_ms, surpool_conn **out,
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
                           : t0 + ms_to_ns(timeout_ms);
    const surpool_config *cfg = &p->cfg.pub;
    evq q; /* not zero-filled: only q.n matters, and it is 6 KB */
    q.n = 0;
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
        /* Idle connections exist only while nobody waits (rule 3), so taking
         * one never jumps the queue. */
        surpool_conn *c = p->idle_head;
        if (c == NULL)
            break;
        idle_unlink(p, c);
        c->state = SURPOOL__CONN_LEASED;
        p->nleased++;
        int64_t now = t0;
        int validated = 0;
        const char *retire = NULL;
        surpool_err why = SURPOOL_OK;
        if (!surpool__conn_usable(c)) {
            retire = "dead";
            p->stats.broken++;
        } else if (now >= c->expires_ns) {
            retire = "max_lifetime reached";
            p->stats.lifetime_retirements++;
        } else if (cfg->validation_idle_ms >= 0 &&
                   now - c->last_checked_ns > ms_to_ns(cfg->validation_idle_ms)) {
            /* Idle a while: prove it works before lending it (outside mu). */
            p->stats.validations++;
            validated = 1;
            pthread_mutex_unlock(&p->mu);
            surpool_error verr;
            why = ping_with_deadline(c, cfg->validation_timeout_ms, &verr);
            pthread_mutex_lock(&p->mu);
            if (why != SURPOOL_OK) {
                retire = "validation ping failed";
                p->stats.validation_failures++;
                evq_add(p, &q, SURPOOL_EVENT_HEALTH_FAIL, c->serial, 0, why, verr.message, NULL,
                        0);
            } else if (p->closed) {
                retire = "pool closed";
            }
        }
        if (retire != NULL) {
            uint64_t serial = c->serial;
            forget_conn_locked(p, c);
            pthread_mutex_unlock(&p->mu);
            close_forgotten(p, c);
            evq_add(p, &q, SURPOOL_EVENT_DESTROY, serial, 0, why, retire, NULL, 0);
            evq_flush(p, &q);
            pthread_mutex_lock(&p->mu);
            continue;
        }
        /* A validation ping took time; otherwise no need to read the clock. */
        grant_locked(p, c, t0, validated ? surpool__now_ns() : t0, file, line, &q);
        pthread_mutex_unlock(&p->mu);
        evq_flush(p, &q);
        *out = c;
        return SURPOOL_OK;
    }

    /* Nothing idle. With the circuit open and no lease to come back, waiting
     * is pointless: fail fast. */
    if (p->breaker_open && p->nleased - p->nmaint == 0 && !p->paused) {
        kick_connectors_locked(p);
        rc = unavailable_locked(p, err);
        goto out_unlock;
    }
    if (cfg->max_waiters > 0 && p->nwaiters >= cfg->max_waiters) {
        p->stats.shed++;
        evq_add(p, &q, SURPOOL_EVENT_SHED, 0, 0, SURPOOL_ERR_OVERLOADED, NULL, file, line);
        rc = surpool__seterr(err, SURPOOL_ERR_OVERLOADED,
                             "%d callers already wait for a connection (max_waiters)",
                             p->nwaiters);
        goto out_unlock;
    }

    surpool__waiter w;
    memset(&w, 0, sizeof(w));
    if (surpool__cond_init(&w.cv) != 0) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
        goto out_unlock;
    }
    waiter_enqueue(p, &w);
    kick_connectors_locked(p);
    check_invariants(p);

    while (!w.done) {
        int wrc = surpool__cond_wait_until(&w.cv, &p->mu, deadline);
        if (wrc == ETIMEDOUT && !w.done) {
            /* Rule 4: nothing was handed over, so we may leave. */
            waiter_unlink(p, &w);
            rc = timeout_error_locked(p, timeout_ms, err);
            evq_add(p, &q, SURPOOL_EVENT_TIMEOUT, 0, (surpool__now_ns() - t0) / 1000, rc, NULL,
                    file, line);
            pthread_cond_destroy(&w.cv);
            goto out_unlock;
        }
    }
    pthread_cond_destroy(&w.cv);
    if (w.outcome == SURPOOL_OK) {
        grant_locked(p, w.conn, t0, surpool__now_ns(), file, line, &q);
        pthread_mutex_unlock(&p->mu);
        evq_flush(p, &q);
        *out = w.conn;
        return SURPOOL_OK;
    }
    if (w.outcome == SURPOOL_ERR_UNAVAILABLE) /* failed by the circuit opening */
        rc = unavailable_locked(p, err);
    else
        rc = surpool__seterr(err, w.outcome, "%s", surpool_strerror(w.outcome));

out_unlock:
    check_invariants(p);
    pthread_mutex_unlock(&p->mu);
    evq_flush(p, &q);
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

void surpool_conn_release(surpool_conn *c)
{
    if (c == NULL)
        return;
    surpool_pool *p = c->pool;
    evq q; /* not zero-filled: only q.n matters, and it is 6 KB */
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

    /* A lease whose session state changed must not reach the next borrower as
     * it is: reset it to the configured state (outside the mutex), or close it.
     * The release event goes out while we still hold the lease: once it is
     * given back, destroy() may free the pool under us. With neither to do,
     * the release is one critical section. */
    int broken = !surpool__conn_usable(c) || c->broken;
    int restore = c->session_dirty && !broken && !c->discard && !p->cfg.pub.close_dirty_leases;
    int64_t now;
    if (restore || p->cfg.pub.on_event != NULL) {
        pthread_mutex_unlock(&p->mu);
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
        evq_add(p, &q, SURPOOL_EVENT_RELEASE, c->serial, (now - c->lease_start_ns) / 1000,
                SURPOOL_OK, NULL, c->lease_file, c->lease_line);
        evq_flush(p, &q);
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
        forget_conn_locked(p, c);
        leases_changed_locked(p);
        pthread_mutex_unlock(&p->mu);
        /* nclosing > 0 keeps destroy() waiting until close_forgotten() ends. */
        evq_add(p, &q, SURPOOL_EVENT_DESTROY, serial, 0, SURPOOL_OK, retire, NULL, 0);
        evq_flush(p, &q);
        close_forgotten(p, c); /* last touch of the pool */
        return;
    }
    p->nleased--;
    put_conn_locked(p, c, 1, now);
    leases_changed_locked(p);
    check_invariants(p);
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
    surpool_conn *dead[EVQ_MAX];
    int ndead = 0;
    pthread_mutex_lock(&p->mu);
    p->paused = 0;
    /* Serve the queue from the idle list, oldest waiter first. */
    while (p->wait_head != NULL && p->idle_head != NULL) {
        surpool_conn *c = p->idle_head;
        if (!surpool__conn_usable(c)) {
            if (ndead == EVQ_MAX)
                break; /* the maintainer reaps the rest; never hand a dead one out */
            p->stats.broken++;
            forget_conn_locked(p, c);
            dead[ndead++] = c;
            continue;
        }
        idle_unlink(p, c);
        put_conn_locked(p, c, 0, surpool__now_ns());
    }
    kick_connectors_locked(p);
    check_invariants(p);
    pthread_mutex_unlock(&p->mu);
    evq q; /* not zero-filled: only q.n matters, and it is 6 KB */
    q.n = 0;
    for (int i = 0; i < ndead; i++) {
        evq_add(p, &q, SURPOOL_EVENT_DESTROY, dead[i]->serial, 0, SURPOOL_OK, "dead", NULL, 0);
        close_forgotten(p, dead[i]);
    }
    evq_flush(p, &q);
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
    out->total = total_locked(p);
    out->waiters = p->nwaiters;
    out->breaker_open = p->breaker_open;
    out->paused = p->paused;
    out->acquire_wait_p50_us = hist_percentile(p->wait_hist, p->wait_max_us, 0.50);
    out->acquire_wait_p95_us = hist_percentile(p->wait_hist, p->wait_max_us, 0.95);
    out->acquire_wait_p99_us = hist_percentile(p->wait_hist, p->wait_max_us, 0.99);
    out->acquire_wait_max_us = p->wait_max_us;
    out->connect_p50_us = hist_percentile(p->connect_hist, p->connect_max_us, 0.50);
    out->connect_p95_us = hist_percentile(p->connect_hist, p->connect_max_us, 0.95);
    out->connect_p99_us = hist_percentile(p->connect_hist, p->connect_max_us, 0.99);
    out->connect_max_us = p->connect_max_us;
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
