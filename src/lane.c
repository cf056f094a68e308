/*
 * The shared lane: pool-level calls without a lease.
 *
 * The lane holds up to shared_connections connections, leased from the pool
 * like any borrower's (so max_connections still bounds everything), and sends
 * each request on the least-loaded one with room (< shared_max_inflight in
 * flight). Requests that find no room wait in a FIFO and go out as replies
 * free room. A lane thread grows the lane when requests queue, returns dead
 * connections to the pool, and fails queued requests whose deadline passed.
 *
 * Locking: lane->mu guards everything below and is never held while calling
 * the pool, the transport (submit) or a user callback. The pool may take it
 * under its own mutex (stats): order pool -> lane.
 * Completions run on the transport's thread; they only take lane->mu.
 *
 * Rule: every accepted request completes exactly once: by its reply or error
 * from the transport, by the lane thread (deadline while queued, lane cannot
 * get a connection), or by close/destroy (SURPOOL_ERR_CLOSED).
 */
#include <errno.h>
#include <string.h>

#include "codec.h"
#include "pool.h"
#include "wire.h"

typedef struct lane_conn {
    surpool_conn *c;
    int inflight;
    int dead; /* a transport failure was seen: take no more, return when idle */
} lane_conn;

typedef struct lane_req lane_req;
struct lane_req {
    surpool__treq treq; /* first: the transport hands us &treq */
    lane_req *next;     /* pending FIFO */
    surpool__lane *lane;
    lane_conn *lc;
    char method[32];
    surpool_result_fn cb; /* async */
    void *userdata;
    surpool__sync *sync; /* sync: the waiting thread's */
    /* sync results, read by the waiter after the signal */
    surpool_err rc;
    json_t *result;
    surpool_error err;
};

struct surpool__lane {
    surpool_pool *pool;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* wakes the lane thread */
    lane_conn *conns;  /* array of `target` */
    int nconns, target, cap;
    lane_req *pend_head, *pend_tail;
    int npending, inflight;
    int completing; /* on_done() calls between giving a slot back and returning */
    int want_grow;
    int64_t grow_not_before_ns; /* after a failed acquire: pace the retries */
    int closed;
    int stop;
    int thread_started;
    pthread_t thread;
    uint64_t requests;
};

/* ------------------------------------------------------------------------- */

static int64_t earliest_deadline_locked(const surpool__lane *l)
{
    int64_t d = INT64_MAX;
    for (const lane_req *r = l->pend_head; r != NULL; r = r->next)
        if (r->treq.deadline_ns < d)
            d = r->treq.deadline_ns;
    return d;
}

/* Deliver a finished request to its caller, lane->mu NOT held. Takes over
 * req->treq.reply. */
static void finish(lane_req *r)
{
    surpool_pool *p = r->lane->pool;
    json_t *result = NULL;
    surpool_error err;
    surpool__error_clear(&err);
    surpool_err rc = surpool__rpc_outcome(p, r->method, &r->treq, &result, &err);
    surpool__free(r->treq.buf);
    r->treq.buf = NULL;
    if (r->sync != NULL) {
        r->rc = rc;
        r->err = err;
        r->result = rc == SURPOOL_OK ? json_incref(result) : NULL;
        json_decref(r->treq.reply);
        surpool__sync_signal(r->sync); /* r belongs to the waiter from here on */
        return;
    }
    r->cb(r->userdata, rc, rc == SURPOOL_OK ? result : NULL, &err);
    json_decref(r->treq.reply);
    surpool__free(r);
}

/* Complete a request that never reached the transport. */
static void fail(lane_req *r, surpool_err code, const char *message)
{
    r->treq.status = code;
    r->treq.reply = NULL;
    surpool__strlcpy(r->treq.message, message, sizeof(r->treq.message));
    finish(r);
}

static void pump(surpool__lane *l);

static void on_done(surpool__treq *treq)
{
    lane_req *r = (lane_req *)treq;
    surpool__lane *l = r->lane;
    lane_conn *lc = r->lc;
    if (treq->status != SURPOOL_OK && surpool__breaks_connection(treq->status) &&
        treq->status != SURPOOL_ERR_REQUEST_TIMEOUT) {
        pthread_mutex_lock(&l->mu);
        lc->dead = 1;
        pthread_cond_signal(&l->cv); /* the lane thread returns it when idle */
        pthread_mutex_unlock(&l->mu);
    }
    finish(r);
    /* Give the slot back, then send what queued behind it. `completing` keeps
     * destroy waiting until this function no longer touches the lane: this
     * may run on the transport's thread while destroy runs. */
    pthread_mutex_lock(&l->mu);
    lc->inflight--;
    l->inflight--;
    l->completing++;
    pthread_mutex_unlock(&l->mu);
    pump(l);
    pthread_mutex_lock(&l->mu);
    if (--l->completing == 0 && l->inflight == 0 && l->stop)
        pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu); /* last touch of the lane */
}

/* Pick the least-loaded usable connection with room. */
static lane_conn *pick_locked(surpool__lane *l)
{
    lane_conn *best = NULL;
    for (int i = 0; i < l->nconns; i++) {
        lane_conn *lc = &l->conns[i];
        if (lc->dead || lc->inflight >= l->cap)
            continue;
        if (!surpool__conn_usable(lc->c)) {
            lc->dead = 1;
            pthread_cond_signal(&l->cv);
            continue;
        }
        if (best == NULL || lc->inflight < best->inflight)
            best = lc;
    }
    return best;
}

/* Send queued requests while there is room. Re-entrant calls (a transport that
 * completes inside submit) return at once: the outer loop carries on. */
static _Thread_local int in_pump;

static void pump(surpool__lane *l)
{
    if (in_pump)
        return;
    in_pump = 1;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        lane_req *r = l->pend_head;
        lane_conn *lc = r != NULL ? pick_locked(l) : NULL;
        if (r == NULL || lc == NULL) {
            if (r != NULL && l->nconns < l->target && !l->want_grow) {
                l->want_grow = 1;
                pthread_cond_signal(&l->cv);
            }
            pthread_mutex_unlock(&l->mu);
            break;
        }
        l->pend_head = r->next;
        if (l->pend_head == NULL)
            l->pend_tail = NULL;
        l->npending--;
        r->next = NULL;
        r->lc = lc;
        lc->inflight++;
        l->inflight++;
        l->requests++;
        surpool_conn *c = lc->c;
        pthread_mutex_unlock(&l->mu);

        surpool_err rc = c->pool->ops->submit(c->t, &r->treq);
        if (rc != SURPOOL_OK) {
            pthread_mutex_lock(&l->mu);
            lc->inflight--;
            l->inflight--;
            if (rc == SURPOOL_ERR_DISCONNECTED) {
                /* Dead socket: requeue at the head and try another. */
                lc->dead = 1;
                r->lc = NULL;
                r->next = l->pend_head;
                l->pend_head = r;
                if (l->pend_tail == NULL)
                    l->pend_tail = r;
                l->npending++;
                pthread_cond_signal(&l->cv);
                pthread_mutex_unlock(&l->mu);
                continue;
            }
            pthread_mutex_unlock(&l->mu);
            fail(r, rc, surpool_strerror(rc));
        }
    }
    in_pump = 0;
}

/* ------------------------------------------------------------------------- */
/* The lane thread                                                            */
/* ------------------------------------------------------------------------- */

static void *lane_main(void *arg)
{
    surpool__lane *l = arg;
    surpool_pool *p = l->pool;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        /* 1. Return dead connections with nothing in flight. A connection past
         *    its max lifetime takes no new requests: it drains, then the pool
         *    retires it on return and the lane grows a fresh one on demand. */
        int64_t tnow = surpool__now_ns();
        for (int i = 0; i < l->nconns; i++)
            if (tnow >= l->conns[i].c->expires_ns)
                l->conns[i].dead = 1;
        for (int i = 0; i < l->nconns;) {
            lane_conn *lc = &l->conns[i];
            if (!lc->dead || lc->inflight > 0) {
                i++;
                continue;
            }
            surpool_conn *c = lc->c;
            l->conns[i] = l->conns[--l->nconns];
            pthread_mutex_unlock(&l->mu);
            surpool_conn_release(c); /* broken: the pool closes and replaces it */
            pthread_mutex_lock(&l->mu);
        }

        /* 2. Grow while requests queue and the lane is below its size. */
        if (l->npending > 0 && l->nconns < l->target && !l->closed &&
            surpool__now_ns() >= l->grow_not_before_ns) {
            l->want_grow = 0;
            pthread_mutex_unlock(&l->mu);
            surpool_conn *c = NULL;
            surpool_error aerr;
            surpool_err rc = surpool_pool_acquire_at(p, -1, &c, &aerr, __FILE__, __LINE__);
            if (rc == SURPOOL_OK)
                surpool__pool_lane_mark(p, c);
            pthread_mutex_lock(&l->mu);
            if (rc == SURPOOL_OK) {
                if (l->stop || l->closed) {
                    pthread_mutex_unlock(&l->mu);
                    surpool_conn_release(c);
                    pthread_mutex_lock(&l->mu);
                } else {
                    l->conns[l->nconns].c = c;
                    l->conns[l->nconns].inflight = 0;
                    l->conns[l->nconns].dead = 0;
                    l->nconns++;
                    pthread_mutex_unlock(&l->mu);
                    pump(l);
                    pthread_mutex_lock(&l->mu);
                }
            } else if (l->nconns > 0) {
                l->grow_not_before_ns = surpool__now_ns() + 100 * SURPOOL__NS_PER_MS;
            } else {
                /* Nothing can serve the queue: fail it with the reason. */
                lane_req *list = l->pend_head;
                l->pend_head = l->pend_tail = NULL;
                l->npending = 0;
                pthread_mutex_unlock(&l->mu);
                while (list != NULL) {
                    lane_req *next = list->next;
                    fail(list, rc, aerr.message);
                    list = next;
                }
                pthread_mutex_lock(&l->mu);
            }
            continue;
        }

        /* 3. Fail queued requests past their deadline. */
        int64_t now = surpool__now_ns();
        lane_req *expired = NULL, **pp = &l->pend_head;
        l->pend_tail = NULL;
        while (*pp != NULL) {
            lane_req *r = *pp;
            if (r->treq.deadline_ns <= now) {
                *pp = r->next;
                r->next = expired;
                expired = r;
                l->npending--;
            } else {
                l->pend_tail = r;
                pp = &r->next;
            }
        }
        if (expired != NULL) {
            pthread_mutex_unlock(&l->mu);
            while (expired != NULL) {
                lane_req *next = expired->next;
                fail(expired, SURPOOL_ERR_REQUEST_TIMEOUT,
                     "no lane capacity before the request deadline");
                expired = next;
            }
            pthread_mutex_lock(&l->mu);
            continue;
        }

        /* 4. Sleep until signalled, the next queued deadline, the next allowed
         *    growth attempt, or a tick (to notice dead sockets). */
        l->want_grow = 0;
        int64_t until = earliest_deadline_locked(l);
        int64_t tick = now + 100 * SURPOOL__NS_PER_MS;
        if (until > tick)
            until = tick;
        if (l->npending > 0 && l->nconns < l->target && l->grow_not_before_ns < until)
            until = l->grow_not_before_ns;
        if (until > now) {
            struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
            pthread_cond_timedwait(&l->cv, &l->mu, &ts);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* Create / close / destroy / stats                                           */
/* ------------------------------------------------------------------------- */

surpool_err surpool__lane_create(surpool_pool *p, surpool__lane **out)
{
    surpool__lane *l = surpool__calloc(1, sizeof(*l));
    if (l == NULL)
        return SURPOOL_ERR_NOMEM;
    l->pool = p;
    l->target = p->cfg.pub.shared_connections;
    if (l->target > p->cfg.pub.max_connections - 1)
        l->target = p->cfg.pub.max_connections - 1; /* leave leases at least one */
    l->cap = p->cfg.pub.shared_max_inflight;
    l->conns = surpool__calloc((size_t)l->target, sizeof(*l->conns));
    if (l->conns == NULL)
        goto fail;
    if (pthread_mutex_init(&l->mu, NULL) != 0)
        goto fail;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&l->cv, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0) {
        pthread_mutex_destroy(&l->mu);
        goto fail;
    }
    *out = l;
    return SURPOOL_OK;
fail:
    surpool__free(l->conns);
    surpool__free(l);
    return SURPOOL_ERR_NOMEM;
}

void surpool__lane_close(surpool__lane *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    l->closed = 1;
    lane_req *list = l->pend_head;
    l->pend_head = l->pend_tail = NULL;
    l->npending = 0;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    while (list != NULL) {
        lane_req *next = list->next;
        fail(list, SURPOOL_ERR_CLOSED, "pool is closed");
        list = next;
    }
}

void surpool__lane_destroy(surpool__lane *l)
{
    if (l == NULL)
        return;
    surpool__lane_close(l);
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_signal(&l->cv);
    int started = l->thread_started;
    pthread_mutex_unlock(&l->mu);
    if (started)
        pthread_join(l->thread, NULL);
    /* The pool is closed: releasing closes each connection, which completes
     * whatever is still in flight with SURPOOL_ERR_DISCONNECTED (on_done). */
    for (;;) {
        pthread_mutex_lock(&l->mu);
        if (l->nconns == 0) {
            pthread_mutex_unlock(&l->mu);
            break;
        }
        surpool_conn *c = l->conns[l->nconns - 1].c;
        pthread_mutex_unlock(&l->mu);
        surpool_conn_release(c);
        pthread_mutex_lock(&l->mu);
        /* on_done() may have touched this slot during the release: drop it now. */
        l->nconns--;
        pthread_mutex_unlock(&l->mu);
    }
    /* Completions of what was in flight may still be running on the
     * transport's thread: wait for the last one to count itself out. */
    pthread_mutex_lock(&l->mu);
    while (l->inflight > 0 || l->completing > 0)
        pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    surpool__free(l->conns);
    surpool__free(l);
}

void surpool__lane_stats(surpool__lane *l, surpool_stats *out)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    out->lane_requests = l->requests;
    out->lane_connections = l->nconns;
    out->lane_inflight = l->inflight;
    out->lane_queued = l->npending;
    pthread_mutex_unlock(&l->mu);
}

/* ------------------------------------------------------------------------- */
/* Public calls                                                               */
/* ------------------------------------------------------------------------- */

static surpool_err check_method(const char *method, const json_t *params, surpool_error *err)
{
    if (method == NULL || method[0] == '\0' || strlen(method) >= 32)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "method must be a non-empty string shorter than 32 bytes");
    if (params != NULL && !json_is_array(params))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "params must be a JSON array or NULL");
    if (surpool__method_changes_session(method))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s changes session state: lease a connection for it", method);
    return SURPOOL_OK;
}

/* Build a request and queue it. On error nothing is queued and r is freed
 * unless it is the caller's (sync). */
static surpool_err enqueue(surpool_pool *p, lane_req *r, const char *method,
                           const json_t *params, surpool_error *err)
{
    surpool__lane *l = p->lane;
    surpool__strlcpy(r->method, method, sizeof(r->method));
    r->lane = l;
    r->treq.done = on_done;
    r->treq.userdata = r;
    r->treq.deadline_ns = surpool__deadline_after_ms(
        p->cfg.pub.request_timeout_ms > 0 ? p->cfg.pub.request_timeout_ms : -1);
    /* Encoded here, on the caller's thread; ids are unique pool-wide. */
    r->treq.id = (int64_t)atomic_fetch_add(&p->next_id, 1);
    surpool_err rc =
        surpool__wire_encode_request(p->cfg.pub.wire_format, r->treq.id, method, params,
                                     p->ops->headroom, &r->treq.buf, &r->treq.len, err);
    if (rc != SURPOOL_OK)
        return rc;
    pthread_mutex_lock(&l->mu);
    if (l->closed) {
        pthread_mutex_unlock(&l->mu);
        surpool__free(r->treq.buf);
        r->treq.buf = NULL;
        return surpool__seterr(err, SURPOOL_ERR_CLOSED, "pool is closed");
    }
    if (!l->thread_started) {
        if (pthread_create(&l->thread, NULL, lane_main, l) != 0) {
            pthread_mutex_unlock(&l->mu);
            surpool__free(r->treq.buf);
            r->treq.buf = NULL;
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot start the lane thread");
        }
        l->thread_started = 1;
    }
    r->next = NULL;
    if (l->pend_tail != NULL)
        l->pend_tail->next = r;
    else
        l->pend_head = r;
    l->pend_tail = r;
    l->npending++;
    pthread_mutex_unlock(&l->mu);
    pump(l);
    return SURPOOL_OK;
}

static surpool_err lane_call_sync(surpool_pool *p, const char *method, const json_t *params,
                                  json_t **out, surpool_error *err)
{
    lane_req r;
    memset(&r, 0, sizeof(r));
    surpool__sync s;
    if (surpool__sync_init(&s) != 0)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
    r.sync = &s;
    surpool_err rc = enqueue(p, &r, method, params, err);
    if (rc == SURPOOL_OK) {
        surpool__sync_wait(&s);
        rc = r.rc;
        if (rc == SURPOOL_OK) {
            if (out != NULL)
                *out = r.result;
            else
                json_decref(r.result);
        } else {
            surpool__error_copy(err, &r.err);
        }
    }
    surpool__sync_destroy(&s);
    return rc;
}

/* Without a lane, a pool-level call leases a connection for itself. */
static surpool_err leased_call(surpool_pool *p, const char *method, const json_t *params,
                               json_t **out, surpool_error *err)
{
    surpool_conn *c = NULL;
    surpool_err rc = surpool_pool_acquire_at(p, -1, &c, err, __FILE__, __LINE__);
    if (rc != SURPOOL_OK)
        return rc;
    rc = surpool_conn_call(c, method, params, out, err);
    surpool_conn_release(c);
    return rc;
}

surpool_err surpool_call(surpool_pool *p, const char *method, const json_t *params,
                         json_t **out, surpool_error *err)
{
    if (p == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "pool is NULL");
    surpool_err rc = check_method(method, params, err);
    if (rc != SURPOOL_OK)
        return rc;
    if (p->lane == NULL)
        return leased_call(p, method, params, out, err);
    return lane_call_sync(p, method, params, out, err);
}

surpool_err surpool_call_async(surpool_pool *p, const char *method, const json_t *params,
                               surpool_result_fn cb, void *userdata)
{
    if (p == NULL || cb == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    surpool_err rc = check_method(method, params, NULL);
    if (rc != SURPOOL_OK)
        return rc;
    if (p->lane == NULL)
        return SURPOOL_ERR_INVALID_ARG; /* async needs the lane (shared_connections > 0) */
    lane_req *r = surpool__calloc(1, sizeof(*r));
    if (r == NULL)
        return SURPOOL_ERR_NOMEM;
    r->cb = cb;
    r->userdata = userdata;
    rc = enqueue(p, r, method, params, NULL);
    if (rc != SURPOOL_OK)
        surpool__free(r);
    return rc;
}

surpool_err surpool_query(surpool_pool *p, const char *sql, const json_t *vars, json_t **out,
                          surpool_error *err)
{
    if (p == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "pool is NULL");
    json_t *params = NULL;
    surpool_err rc = surpool__query_params(sql, vars, &params, err);
    if (rc != SURPOOL_OK)
        return rc;
    rc = p->lane != NULL ? lane_call_sync(p, "query", params, out, err)
                         : leased_call(p, "query", params, out, err);
    json_decref(params);
    return rc;
}

surpool_err surpool_query_async(surpool_pool *p, const char *sql, const json_t *vars,
                                surpool_result_fn cb, void *userdata)
{
    if (p == NULL || cb == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    json_t *params = NULL;
    surpool_err rc = surpool__query_params(sql, vars, &params, NULL);
    if (rc != SURPOOL_OK)
        return rc;
    rc = surpool_call_async(p, "query", params, cb, userdata);
    json_decref(params);
    return rc;
}
