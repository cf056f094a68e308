/*
 * The shared lane: pool-level calls without a lease.
 *
 * The lane holds up to shared_connections connections, leased from the pool
 * like any borrower's (so max_connections still bounds everything), and sends
 * each request on the least-loaded one with room (< shared_max_inflight in
 * flight). Requests that find no room wait in a FIFO and go out as replies
 * free room.
 *
 * Three threads, started by the first lane call:
 *  - the lane thread gives dead and expired sockets back to the pool, fails
 *    queued requests whose deadline passed, asks for growth, and sends what
 *    queued when a blocking callback holds up a delivery batch. It never
 *    blocks in the pool: it sleeps at most until the earliest deadline of a
 *    queued request (or a 100 ms tick while it holds sockets);
 *  - the acquirer blocks in surpool__pool_acquire_conn() when the lane must grow,
 *    so that a slow or impossible acquire never holds up the deadlines;
 *  - the delivery thread settles async requests the transport completed, in
 *    completion order: decodes the reply, runs the callback, gives the slot
 *    back. The transport's thread only hands them over (on_done), so neither a
 *    big reply's decode nor a slow callback holds up the other connections.
 *    A sync request is settled by its waiting thread the same way.
 *    Wake-ups between the two threads are what this costs, so both batch
 *    (deliver_batch, hand_over): the replies of one pass of the transport's
 *    loop cross together, and a batch's resubmits are sent together.
 *
 * Each lane socket is a heap object (lane_conn) that in-flight requests point
 * to. It is unlinked and freed only once nothing is in flight on it, so a
 * completion always counts against the socket it was sent on, whatever
 * sockets came and went meanwhile.
 *
 * Locking: lane->mu guards everything below and is never held while calling
 * the pool, the transport (submit) or a user callback. The pool may take it
 * under its own mutex (stats): order pool -> lane.
 * Completions (on_done) run on the transport's thread; they never take
 * lane->mu: they signal a sync waiter, or hand an async request to the
 * delivery thread under lane->dmu (a leaf, see struct surpool__lane).
 *
 * Rule: every accepted request completes exactly once: by its reply or error
 * from the transport, by the lane thread (deadline while queued), by the
 * acquirer (the lane has no connection and cannot get one), or by
 * close/destroy (SURPOOL_ERR_CLOSED).
 */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "auth.h"
#include "conn.h"
#include "lane.h"
#include "queue.h"
#include "rpc.h"
#include "thread.h"
#include "transport.h"

typedef struct lane_conn lane_conn;
struct lane_conn {
    surpool__queue link; /* l->conns */
    surpool_conn *c;     /* NULL once given back by destroy */
    int inflight;        /* requests sent on it and not completed */
    int failed;          /* a transport failure was seen: take no more, return when idle */
    int expired;         /* past max_lifetime_ms: take no more, return when idle */
    int reauth;          /* its session expired: take no more until the acquirer has
                            re-authenticated it */
    int reauthing;       /* the acquirer is re-authenticating it: not given back meanwhile */
    uint64_t auth_seq;   /* lane.auth_seq when the lane re-authenticated it; 0: never
                            (a lease from the pool may hold an old session) */
    uint64_t gen;        /* its identity for sessions: unique in the lane, never 0 */
    int sessions;        /* sessions (session.c) attached on it and not unbound */
};

typedef struct lane_req lane_req;
struct lane_req {
    surpool__treq treq;  /* first: the transport hands us &treq */
    surpool__queue link; /* l->pending, a list of requests to fail, or l->delivery */
    surpool__lane *lane;
    lane_conn *lc;         /* the socket it was sent on; stable until it completes */
    uint64_t seq;          /* 1, 2, ... in queueing order */
    int retried;           /* sent again after its session expired (once only) */
    uint64_t min_auth_seq; /* 0, or: goes only to a socket whose auth_seq is at least
                              this (re-authenticated after the refusal) */
    json_t *params;        /* our own copy, to encode it again for that retry (the
                              transport masks the sent payload in place); NULL when
                              the pool does not authenticate */
    char method[32];
    /* A session's request (surpool__lane_session_call): it goes only to the
     * socket of generation `gen`, or, with `bind`, to the one with the fewest
     * sessions (then `gen` receives that socket's). Never retried by the lane. */
    int for_session;
    int bind;
    uint64_t gen;
    int expired;          /* sync, set by settle(): refused because its session expired */
    int sent;             /* submitted to a socket at least once */
    surpool_result_fn cb; /* async */
    void *userdata;
    surpool__sync *sync; /* sync: the waiting thread's */
    /* An acquire error that failed it: the server's code and kind, kept. */
    int has_why;
    int server_code;
    char kind[32];
    /* sync results, set by settle() on the waiter's thread */
    surpool_err rc;
    json_t *result;
    surpool_error err;
};

struct surpool__lane {
    surpool_pool *pool;
    pthread_mutex_t mu;
    pthread_cond_t cv;     /* wakes the lane thread; destroy waits on it too */
    pthread_cond_t acq_cv; /* wakes the acquirer */
    surpool__queue conns;  /* lane_conn.link: every socket not yet given back */
    int nconns, target, cap;
    long acquire_timeout_ms; /* for one socket; see lane_acquire_timeout_ms() */
    surpool__queue pending;  /* lane_req.link: FIFO, head = the oldest */
    int npending, inflight;
    int completing;    /* on_done() calls between giving a slot back and returning */
    int submitting;    /* pump() calls inside submit(): destroy must not close under them */
    uint64_t seq;      /* requests queued so far */
    int acq_want;      /* the acquirer should try to get one more socket */
    int acq_busy;      /* the acquirer is in surpool__pool_acquire_conn() */
    int reauth_want;   /* a socket waits for re-authentication (lane_conn.reauth) */
    uint64_t auth_seq; /* re-authentications done so far */
    int64_t grow_not_before_ns; /* after a failed acquire with sockets left: pace retries */
    uint64_t conn_gen;          /* lane_conn.gen of the newest socket */
    int grow_sessions;      /* a session bound where every socket already carried one while the
                          lane is below its size: grow, though nothing queues (taken,
                          cleared, by the acquirer's next attempt) */
    surpool__queue members; /* surpool__lane_member.link: the sessions of this lane */
    int closed;
    int stop;
    int thread_started, acq_started;
    pthread_t thread, acq_thread;
    uint64_t requests;
    uint64_t delivered;     /* requests the delivery thread settled */
    int64_t stall_since_ns; /* lane thread: since when `delivered` stayed at
                                  stall_delivered with requests queued; 0: not */
    uint64_t stall_delivered;
    int dthread_started;
    pthread_t dthread;
    /* The hand-over from the transport's thread to the delivery thread, under
     * a mutex of its own (dmu, a leaf: nothing is taken under it), so that a
     * completion never waits for lane->mu, which the delivery thread's
     * give-backs and sends take often. Guarded by dmu: */
    pthread_mutex_t dmu;
    surpool__queue delivery; /* lane_req.link: async requests the transport
                                completed, oldest first; they still count in
                                `inflight` */
    pthread_cond_t dcv;      /* wakes the delivery thread */
    int dsleeping;           /* the delivery thread waits on dcv: signal it */
    int dstop;               /* destroy: the delivery thread ends once its queue is empty */
    atomic_int dwakers;      /* hand_over() calls signalling dcv after unlocking dmu:
                                destroy waits for 0 before freeing the lane */
    /* The transport thread's side, touched only there (no lock): what it
     * completed during its current pass, moved to `delivery` by one hold of
     * dmu when the pass ends (handover_run, transport.h contract 10). */
    surpool__queue handover;
    surpool__pass_hook hook;
};

/* ------------------------------------------------------------------------- */

/* Result callbacks running on this thread (they may nest: a callback's
 * resubmit can complete at once). A synchronous call made from one would hold
 * up every callback behind it (on the delivery thread) or wait for a reply only
 * this thread can deliver (where a request fails on another thread): refused. */
static _Thread_local int in_result_cb;
static _Thread_local int on_delivery_thread;

int surpool__in_result_callback(void)
{
    return in_result_cb > 0;
}

int surpool__lane_on_delivery_thread(void)
{
    return on_delivery_thread;
}

static int64_t earliest_deadline_locked(const surpool__lane *l)
{
    int64_t d = INT64_MAX;
    const surpool__queue *q;
    SURPOOL__QUEUE_FOREACH(q, &l->pending)
    {
        const lane_req *r = SURPOOL__QUEUE_DATA(q, lane_req, link);
        if (r->treq.deadline_ns < d)
            d = r->treq.deadline_ns;
    }
    return d;
}

static void pump(surpool__lane *l);

/* The lanes this thread is pumping, innermost first (see pump()). */
typedef struct pump_frame {
    const surpool__lane *lane;
    struct pump_frame *up;
} pump_frame;
static _Thread_local pump_frame *pumping;

/* A completed request's slot on `lc` is free again. */
static void release_slot_locked(surpool__lane *l, lane_conn *lc)
{
    lc->inflight--; /* last touch of lc: the lane thread may free it from here on */
    l->inflight--;
    if (lc->inflight == 0 && (lc->failed || lc->expired))
        pthread_cond_signal(&l->cv); /* the lane thread gives it back */
}

/* Give a completed request's slot on `lc` back, then send what queued behind
 * it. `completing` keeps destroy waiting until this function no longer touches
 * the lane. */
static void give_back(surpool__lane *l, lane_conn *lc)
{
    pthread_mutex_lock(&l->mu);
    release_slot_locked(l, lc);
    l->completing++;
    pthread_mutex_unlock(&l->mu);
    pump(l);
    pthread_mutex_lock(&l->mu);
    if (--l->completing == 0 && l->inflight == 0 && l->stop)
        pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu); /* last touch of the lane */
}

static int retry_after_reauth(lane_req *r, surpool_err rc);

/* The outcome of a completed request, lane->mu NOT held, never on the
 * transport's thread: decode its reply and hand it to its caller (a sync
 * request's fields, read by the waiter, which is the calling thread; or the
 * async callback). Its slot is not given back and an async r not freed: the
 * caller does both (settle(), deliver_batch()). 1 if it was queued again
 * instead (retry_after_reauth(), which gave the slot back itself). */
static int settle_outcome(lane_req *r)
{
    surpool__lane *l = r->lane;
    lane_conn *lc = r->lc; /* stays valid: its inflight count includes us */
    surpool_pool *p = l->pool;
    json_t *result = NULL;
    surpool_error err;
    surpool__error_clear(&err);
    surpool_err rc = surpool__rpc_outcome(p, r->method, &r->treq, &result, &err);
    if (retry_after_reauth(r, rc))
        return 1;
    json_decref(r->params); /* kept only for that retry */
    r->params = NULL;
    if (rc != SURPOOL_OK && r->has_why) {
        err.server_code = r->server_code;
        surpool__strlcpy(err.kind, r->kind, sizeof(err.kind));
    }
    /* A transport failure, or a reply that did not decode: no more on it. A
     * reply is routed by the id at its head alone, so one that then does not
     * decode ({"id":<another call>,"id":<ours>,...}) may have been another
     * call's: the socket fails now (PROTOCOL for every call in flight on it),
     * or that call would wait for its deadline. */
    if (lc != NULL && surpool__breaks_connection(rc) && rc != SURPOOL_ERR_REQUEST_TIMEOUT) {
        pthread_mutex_lock(&l->mu);
        lc->failed = 1;
        surpool_conn *fc = lc->c;
        pthread_mutex_unlock(&l->mu);
        if (rc == SURPOOL_ERR_PROTOCOL && fc != NULL)
            surpool__conn_fail(fc, rc, err.message);
    }
    surpool__rpc_free_payload(p, &r->treq, r->method);
    if (r->sync != NULL) {
        r->rc = rc;
        r->err = err;
        r->expired = rc != SURPOOL_OK && r->treq.reply != NULL &&
                     surpool__reply_session_expired(r->treq.reply);
        r->result = rc == SURPOOL_OK ? json_incref(result) : NULL;
        json_decref(r->treq.reply);
    } else {
        in_result_cb++;
        r->cb(r->userdata, rc, rc == SURPOOL_OK ? result : NULL, &err);
        in_result_cb--;
        json_decref(r->treq.reply);
        r->treq.reply = NULL;
    }
    return 0;
}

/* Settle one completed request (as settle_outcome()), then free an async one
 * and give its slot back. 1 if it was queued again instead. */
static int settle(lane_req *r)
{
    surpool__lane *l = r->lane;
    lane_conn *lc = r->lc;
    if (settle_outcome(r))
        return 1;
    if (r->sync == NULL)
        surpool__free(r);
    if (lc != NULL)
        give_back(l, lc);
    return 0;
}

/* Complete a request that never reached the transport. `why` (may be NULL)
 * carries the server's code and kind when an acquire failed on them. The sync
 * waiter settles its own; an async one is settled on this thread. */
static void fail(lane_req *r, surpool_err code, const char *message, const surpool_error *why)
{
    r->treq.status = code;
    r->treq.reply = NULL;
    surpool__strlcpy(r->treq.message, message, sizeof(r->treq.message));
    if (why != NULL) {
        r->has_why = 1;
        r->server_code = why->server_code;
        surpool__strlcpy(r->kind, why->kind, sizeof(r->kind));
    }
    if (r->sync != NULL)
        surpool__sync_signal(r->sync); /* r belongs to the waiter from here on */
    else
        settle(r);
}

/* Fail every request of a list of our own (lane->mu NOT held); it ends empty. */
static void fail_list(surpool__queue *list, surpool_err code, const char *message,
                      const surpool_error *why)
{
    surpool__queue *q;
    while ((q = surpool__queue_head(list)) != NULL) {
        surpool__queue_remove(q);
        fail(SURPOOL__QUEUE_DATA(q, lane_req, link), code, message, why);
    }
}

/* Ask the acquirer for one more socket if requests wait for room and the lane
 * may grow. */
static void want_grow_locked(surpool__lane *l)
{
    if ((l->npending > 0 || l->grow_sessions) && l->nconns < l->target && !l->closed &&
        !l->stop && !l->acq_busy && !l->acq_want &&
        surpool__now_ns() >= l->grow_not_before_ns) {
        l->acq_want = 1;
        pthread_cond_signal(&l->acq_cv);
    }
}

/* A request the server refused because the socket's session expired was
 * not run (docs/lifecycle.md, rule A5): put it back at the head of the queue,
 * once, with a new id and payload and the same deadline, and have the
 * acquirer re-authenticate the socket. Called by settle() once the reply is
 * decoded (on the waiter's or the delivery thread). 1 if it did: the request
 * is queued again, not settled (a sync waiter waits once more). */
static int retry_after_reauth(lane_req *r, surpool_err rc)
{
    surpool__lane *l = r->lane;
    lane_conn *lc = r->lc;
    if (r->for_session || r->retried || rc == SURPOOL_OK || lc == NULL ||
        r->treq.reply == NULL || !surpool__reply_session_expired(r->treq.reply) ||
        !surpool__pool_authenticates(l->pool))
        return 0; /* (a pool that authenticates kept a copy of the params) */
    /* Not surpool__conn_may_reauth(): its flags belong to the thread that
     * re-authenticates; a lane socket never carries the borrower's own
     * sign-in (the lane refuses session methods). */
    surpool__treq fresh = r->treq;
    surpool_error perr;
    if (surpool__rpc_prepare(l->pool, &fresh, r->method, r->params, r->treq.deadline_ns, NULL,
                             &perr) != SURPOOL_OK)
        return 0;
    pthread_mutex_lock(&l->mu);
    if (l->closed || lc->failed) {
        pthread_mutex_unlock(&l->mu);
        surpool__rpc_free_payload(l->pool, &fresh, r->method);
        return 0; /* settled as it is */
    }
    surpool__rpc_free_payload(l->pool, &r->treq, r->method);
    json_decref(r->treq.reply);
    fresh.status = SURPOOL_OK;
    fresh.reply = NULL;
    fresh.frame = NULL; /* the old one was freed by its decode */
    fresh.frame_len = 0;
    fresh.message[0] = '\0';
    r->treq = fresh;
    r->retried = 1;
    /* Other sockets, and leases from the pool, may hold an expired session
     * as well: the second try goes to a socket the lane re-authenticates
     * from now on (this one, at least). */
    r->min_auth_seq = l->auth_seq + 1;
    r->lc = NULL;
    lc->reauth = 1;
    lc->inflight--; /* last touch of lc */
    l->inflight--;
    if (r->sync != NULL) {
        /* The waiter (this thread) waits again: clear its flag before anyone
         * can complete the request a second time. */
        pthread_mutex_lock(&r->sync->mu);
        r->sync->done = 0;
        pthread_mutex_unlock(&r->sync->mu);
    }
    surpool__queue_insert_head(&l->pending, &r->link);
    l->npending++;
    l->reauth_want = 1;
    pthread_cond_signal(&l->acq_cv);
    pthread_mutex_unlock(&l->mu); /* last touch of the lane: not stopped, as it is open */
    return 1;
}

/* Queue completed async requests (`list`, emptied) for the delivery thread,
 * all under one hold of dmu. Only a sleeping delivery thread is signalled,
 * once: an awake one takes them with its next batch (it looks at the queue
 * under dmu before it sleeps). The signal goes after the unlock, so that the
 * woken thread does not at once block on dmu (measured: with the signal under
 * the lock half the futex calls of the hand-over were that collision);
 * `dwakers` keeps the lane alive meanwhile. Those requests count in
 * `inflight` until the delivery thread settles them, so the lane outlives the
 * unlock too. */
static void hand_over(surpool__lane *l, surpool__queue *list)
{
    pthread_mutex_lock(&l->dmu);
    surpool__queue_move_tail(&l->delivery, list);
    int wake = l->dsleeping;
    l->dsleeping = 0;
    if (wake)
        atomic_fetch_add(&l->dwakers, 1);
    pthread_mutex_unlock(&l->dmu); /* without `wake`, the last touch of the lane */
    if (wake) {
        pthread_cond_signal(&l->dcv);
        atomic_fetch_sub(&l->dwakers, 1); /* last touch of the lane */
    }
}

/* The transport's completion (usually on its thread, which must not decode or
 * run callbacks): wake the sync waiter, or queue the request for the delivery
 * thread. The request still counts in `inflight`, so destroy waits for it. */
static void on_done(surpool__treq *treq)
{
    lane_req *r = (lane_req *)treq;
    surpool__lane *l = r->lane;
    if (r->sync != NULL) {
        surpool__sync_signal(r->sync); /* r belongs to the waiter from here on */
        return;
    }
    if (surpool__transport_defer(&l->hook)) {
        /* The transport's thread, inside a pass: with the pass's other
         * completions at its end (handover_run). */
        surpool__queue_insert_tail(&l->handover, &r->link);
        return;
    }
    surpool__queue one;
    surpool__queue_init(&one);
    surpool__queue_insert_tail(&one, &r->link);
    hand_over(l, &one);
}

/* The end of the transport's pass: hand what it completed meanwhile to the
 * delivery thread at once. Those requests count in `inflight`, so the lane
 * outlives this call; after the unlock it is not touched. */
static void handover_run(surpool__pass_hook *h)
{
    surpool__lane *l = SURPOOL__QUEUE_DATA(h, surpool__lane, hook);
    hand_over(l, &l->handover);
}

/* Settle a batch the delivery thread took (a list of its own, emptied), in
 * order, each slot given back as soon as its callback returned. The sends are
 * made once, for the whole batch: the callbacks' resubmits (and whatever
 * queued behind the batch's requests) only queue while it runs (a pump of this
 * lane on this thread returns at once meanwhile, see pump()), and one pump()
 * at the end sends them. So the transport's thread is woken once per batch,
 * not once per request. (Other threads' pumps still send meanwhile, and the
 * lane thread does once nothing was settled for a tick: a callback blocks.) No
 * `completing` count: destroy joins this thread before freeing the lane. */
static void deliver_batch(surpool__lane *l, surpool__queue *batch)
{
    surpool__queue *q;
    pump_frame frame = {l, pumping};
    pumping = &frame;
    while ((q = surpool__queue_head(batch)) != NULL) {
        surpool__queue_remove(q);
        lane_req *r = SURPOOL__QUEUE_DATA(q, lane_req, link);
        lane_conn *lc = r->lc; /* an async request completed here was sent */
        if (settle_outcome(r))
            continue;
        surpool__free(r);
        pthread_mutex_lock(&l->mu);
        release_slot_locked(l, lc);
        l->delivered++;
        if (l->inflight == 0 && l->completing == 0 && l->stop)
            pthread_cond_broadcast(&l->cv); /* destroy waits for this */
        pthread_mutex_unlock(&l->mu);
    }
    pumping = frame.up;
    pump(l);
}

/* The delivery thread: settles async completions in the order they came,
 * taking every one that is there at once (deliver_batch()). */
static void *delivery_main(void *arg)
{
    surpool__lane *l = arg;
    on_delivery_thread = 1;
    surpool__queue batch;
    surpool__queue_init(&batch);
    pthread_mutex_lock(&l->dmu);
    for (;;) {
        while (surpool__queue_empty(&l->delivery) && !l->dstop) {
            l->dsleeping = 1;
            pthread_cond_wait(&l->dcv, &l->dmu);
        }
        l->dsleeping = 0;
        if (surpool__queue_empty(&l->delivery))
            break; /* dstop: destroy saw nothing in flight, so nothing more comes */
        surpool__queue_move_tail(&batch, &l->delivery);
        pthread_mutex_unlock(&l->dmu);
        deliver_batch(l, &batch);
        pthread_mutex_lock(&l->dmu);
    }
    pthread_mutex_unlock(&l->dmu);
    return NULL;
}

/* A socket is usable for sessions: given, not failing, not expiring. */
static int session_usable_locked(surpool__lane *l, lane_conn *lc)
{
    if (lc->c == NULL || lc->failed || lc->expired)
        return 0;
    if (!surpool__conn_usable(lc->c)) {
        lc->failed = 1;
        pthread_cond_signal(&l->cv);
        return 0;
    }
    return 1;
}

static lane_conn *find_gen_locked(surpool__lane *l, uint64_t gen)
{
    surpool__queue *q;
    SURPOOL__QUEUE_FOREACH(q, &l->conns)
    {
        lane_conn *lc = SURPOOL__QUEUE_DATA(q, lane_conn, link);
        if (lc->gen == gen)
            return lc;
    }
    return NULL;
}

/* Where a session's request goes: its own socket (NULL with *gone set when
 * that socket is failing or given back), or for a `bind` the usable socket
 * with the fewest sessions, the least loaded of those (while the lane is
 * below its size and every socket carries a session, it also asks the lane to
 * grow, so that the next sessions spread over shared_connections sockets).
 * NULL also when the socket has no room. The socket's pool-level
 * re-authentication (reauth) does not concern a session, which has an
 * authentication of its own. */
static lane_conn *pick_session_locked(surpool__lane *l, const lane_req *r, int *gone)
{
    if (!r->bind) {
        lane_conn *lc = find_gen_locked(l, r->gen);
        if (lc == NULL || !session_usable_locked(l, lc)) {
            *gone = 1;
            return NULL;
        }
        return lc->inflight < l->cap ? lc : NULL;
    }
    lane_conn *best = NULL;
    surpool__queue *q;
    SURPOOL__QUEUE_FOREACH(q, &l->conns)
    {
        lane_conn *lc = SURPOOL__QUEUE_DATA(q, lane_conn, link);
        if (lc->inflight >= l->cap || !session_usable_locked(l, lc))
            continue;
        if (best == NULL || lc->sessions < best->sessions ||
            (lc->sessions == best->sessions && lc->inflight < best->inflight))
            best = lc;
    }
    /* Never wait for a socket of its own (an acquire may block for long when
     * leases hold the pool): bind now, and have the lane grow so that the
     * next sessions spread. */
    if ((best == NULL || best->sessions > 0) && l->nconns < l->target)
        l->grow_sessions = 1;
    return best;
}

/* Pick the least-loaded usable connection with room (and, when
 * `min_auth_seq` is not 0, re-authenticated as lane_req.min_auth_seq says). */
static lane_conn *pick_locked(surpool__lane *l, uint64_t min_auth_seq)
{
    lane_conn *best = NULL;
    surpool__queue *q;
    SURPOOL__QUEUE_FOREACH(q, &l->conns)
    {
        lane_conn *lc = SURPOOL__QUEUE_DATA(q, lane_conn, link);
        if (lc->c == NULL || lc->failed || lc->expired || lc->reauth ||
            lc->inflight >= l->cap || lc->auth_seq < min_auth_seq)
            continue;
        if (!surpool__conn_usable(lc->c)) {
            lc->failed = 1;
            pthread_cond_signal(&l->cv);
            continue;
        }
        if (best == NULL || lc->inflight < best->inflight)
            best = lc;
    }
    return best;
}

/* Send queued requests while there is room.
 *
 * A transport may complete a request inside submit(), and that completion
 * pumps again: such a nested pump of the SAME lane returns at once and the
 * outer loop carries on. The guard is kept per lane (the lanes this thread is
 * pumping, innermost first), so a callback of pool A that queues on pool B
 * still sends B's request; other threads pump the same lane concurrently. */
static void pump(surpool__lane *l)
{
    for (const pump_frame *f = pumping; f != NULL; f = f->up)
        if (f->lane == l)
            return;
    pump_frame frame = {l, pumping};
    pumping = &frame;
    surpool__queue gone_list;
    surpool__queue_init(&gone_list);
    for (;;) {
        pthread_mutex_lock(&l->mu);
        /* The oldest request that can go. A plain request (or a session's
         * bind) that finds no room keeps everything behind it waiting (FIFO);
         * a session's request for its own busy socket lets others pass. */
        surpool__queue *q, *next;
        lane_conn *lc = NULL;
        lane_req *r = NULL;
        SURPOOL__QUEUE_FOREACH_SAFE(q, next, &l->pending)
        {
            lane_req *cand = SURPOOL__QUEUE_DATA(q, lane_req, link);
            if (!cand->for_session) {
                lc = pick_locked(l, cand->min_auth_seq);
                if (lc != NULL)
                    r = cand;
                break;
            }
            int gone = 0;
            lc = pick_session_locked(l, cand, &gone);
            if (lc != NULL) {
                r = cand;
                break;
            }
            if (gone) { /* its socket died: it fails, the session rebuilds */
                surpool__queue_remove(q);
                surpool__queue_insert_tail(&gone_list, q);
                l->npending--;
            } else if (cand->bind) {
                break;
            }
        }
        if (r == NULL) {
            want_grow_locked(l);
            pthread_mutex_unlock(&l->mu);
            break;
        }
        q = &r->link;
        surpool__queue_remove(q);
        l->npending--;
        if (r->bind) {
            lc->sessions++;
            r->gen = lc->gen;
            want_grow_locked(l); /* pick_session_locked() may have asked for it */
        }
        /* Set before the send: once sent, r may complete (and its waiter
         * return) before this thread looks at it again. */
        r->sent = 1;
        r->lc = lc;
        lc->inflight++; /* keeps lc alive until the request completes */
        l->inflight++;
        l->requests++;
        l->submitting++; /* keeps destroy from closing c under submit() */
        surpool_conn *c = lc->c;
        pthread_mutex_unlock(&l->mu);

        surpool_err rc = surpool__conn_submit(c, &r->treq);
        pthread_mutex_lock(&l->mu);
        if (--l->submitting == 0 && l->closed)
            pthread_cond_broadcast(&l->cv); /* destroy waits for this */
        if (rc == SURPOOL_OK) {
            pthread_mutex_unlock(&l->mu);
            continue;
        }
        lc->inflight--;
        l->inflight--;
        r->lc = NULL;
        r->sent = 0;
        if (r->bind) { /* not attached there after all */
            lc->sessions--;
            r->gen = 0;
        }
        if (rc == SURPOOL_ERR_DISCONNECTED && !l->closed) {
            /* Dead socket: requeue at the head and try another. */
            lc->failed = 1;
            surpool__queue_insert_head(&l->pending, &r->link);
            l->npending++;
            pthread_cond_signal(&l->cv);
            pthread_mutex_unlock(&l->mu);
            continue;
        }
        pthread_mutex_unlock(&l->mu);
        if (rc == SURPOOL_ERR_DISCONNECTED) /* closed meanwhile: as a queued request */
            fail(r, SURPOOL_ERR_CLOSED, "pool is closed", NULL);
        else
            fail(r, rc, surpool_strerror(rc), NULL);
    }
    pumping = frame.up;
    fail_list(&gone_list, SURPOOL_ERR_DISCONNECTED,
              "the session's socket closed before the request was sent", NULL);
}

/* ------------------------------------------------------------------------- */
/* The lane thread and the acquirer                                           */
/* ------------------------------------------------------------------------- */

/* How long the acquirer waits for one connection: acquire_timeout_ms, but at
 * least connect_timeout_ms, so that the lane can always open a connection of
 * its own (acquire_timeout_ms = 0 must not make pool-level calls fail on a
 * cold pool). Queued requests still end at their own deadline meanwhile. */
static long lane_acquire_timeout_ms(const surpool__lane_config *cfg)
{
    long t = cfg->acquire_timeout_ms;
    return t > cfg->connect_timeout_ms ? t : cfg->connect_timeout_ms;
}

/* Re-authenticate the sockets whose session expired (lane_conn.reauth), on
 * the acquirer's thread: it may block, the lane thread must not. A socket
 * that cannot be renewed is given back (the pool closes it), and the
 * requests sent back for the renewal fail with the reason. Called with
 * lane->mu held; drops it meanwhile and returns with it held. */
static void reauth_sockets_locked(surpool__lane *l)
{
    l->reauth_want = 0;
    surpool__queue *q;
    SURPOOL__QUEUE_FOREACH(q, &l->conns)
    {
        lane_conn *lc = SURPOOL__QUEUE_DATA(q, lane_conn, link);
        if (!lc->reauth || lc->reauthing || lc->c == NULL || lc->failed)
            continue;
        lc->reauthing = 1;
        pthread_mutex_unlock(&l->mu);
        surpool_error rerr;
        surpool__error_clear(&rerr);
        surpool_err rc = surpool__conn_reauth(lc->c, &rerr);
        pthread_mutex_lock(&l->mu);
        lc->reauthing = 0;
        lc->reauth = 0;
        if (rc == SURPOOL_OK)
            lc->auth_seq = ++l->auth_seq;
        if (rc != SURPOOL_OK) {
            lc->failed = 1;
            pthread_cond_signal(&l->cv); /* the lane thread gives it back */
            surpool__queue failed, *qq, *next;
            surpool__queue_init(&failed);
            SURPOOL__QUEUE_FOREACH_SAFE(qq, next, &l->pending)
            {
                if (SURPOOL__QUEUE_DATA(qq, lane_req, link)->retried) {
                    surpool__queue_remove(qq);
                    surpool__queue_insert_tail(&failed, qq);
                    l->npending--;
                }
            }
            pthread_mutex_unlock(&l->mu);
            fail_list(&failed, rc, rerr.message, &rerr);
            pthread_mutex_lock(&l->mu);
        }
        l->reauth_want = 1; /* the list may have changed meanwhile: look again */
        break;
    }
}

static void *acquirer_main(void *arg)
{
    surpool__lane *l = arg;
    surpool_pool *p = l->pool;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && !l->acq_want && !l->reauth_want)
            pthread_cond_wait(&l->acq_cv, &l->mu);
        if (l->stop)
            break;
        if (l->reauth_want) {
            reauth_sockets_locked(l);
            pthread_mutex_unlock(&l->mu);
            pump(l);
            pthread_mutex_lock(&l->mu);
            continue;
        }
        l->acq_want = 0;
        int for_sessions = l->grow_sessions;
        l->grow_sessions = 0;
        if (l->closed || (l->npending == 0 && !for_sessions) || l->nconns >= l->target)
            continue;
        l->acq_busy = 1;
        uint64_t upto = l->seq; /* requests this attempt answers for */
        pthread_mutex_unlock(&l->mu);

        surpool_conn *c = NULL;
        surpool_error aerr;
        surpool__error_clear(&aerr);
        surpool_err rc;
        lane_conn *lc = surpool__calloc(1, sizeof(*lc));
        if (lc == NULL) {
            rc = surpool__seterr(&aerr, SURPOOL_ERR_NOMEM, "out of memory growing the lane");
        } else {
            rc = surpool__pool_acquire_conn(p, l->acquire_timeout_ms, &c, &aerr, __FILE__,
                                            __LINE__);
            if (rc == SURPOOL_OK)
                surpool__pool_lane_mark(p, c);
        }

        pthread_mutex_lock(&l->mu);
        l->acq_busy = 0;
        if (rc == SURPOOL_OK && (l->stop || l->closed)) {
            pthread_mutex_unlock(&l->mu);
            surpool__pool_release_conn(c);
            surpool__free(lc);
            pthread_mutex_lock(&l->mu);
            continue;
        }
        if (rc == SURPOOL_OK) {
            lc->c = c;
            lc->gen = ++l->conn_gen;
            surpool__queue_insert_head(&l->conns, &lc->link);
            l->nconns++;
            pthread_cond_signal(&l->cv); /* the lane thread now ticks for this socket */
            pthread_mutex_unlock(&l->mu);
            pump(l);
            pthread_mutex_lock(&l->mu);
            continue;
        }
        surpool__free(lc);
        if (l->nconns > 0) {
            /* Sockets remain: queued requests wait for room there; retry later. */
            l->grow_not_before_ns = surpool__now_ns() + 100 * SURPOOL__NS_PER_MS;
            pthread_cond_signal(&l->cv);
            continue;
        }
        /* Nothing can serve the requests this attempt was for: fail them with
         * the reason. Later ones get an attempt of their own. */
        surpool__queue failed, *q, *next;
        surpool__queue_init(&failed);
        SURPOOL__QUEUE_FOREACH_SAFE(q, next, &l->pending)
        {
            if (SURPOOL__QUEUE_DATA(q, lane_req, link)->seq <= upto) {
                surpool__queue_remove(q);
                surpool__queue_insert_tail(&failed, q);
                l->npending--;
            }
        }
        pthread_mutex_unlock(&l->mu);
        fail_list(&failed, rc, aerr.message, &aerr);
        pthread_mutex_lock(&l->mu);
        want_grow_locked(l);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static void *lane_main(void *arg)
{
    surpool__lane *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        /* 1. Give back sockets that failed, died or expired, once nothing is
         *    in flight on them. A socket past its max lifetime takes no new
         *    requests: it drains, then the pool retires it on return and the
         *    lane grows a fresh one on demand. */
        int64_t now = surpool__now_ns();
        surpool__queue gone, *q, *next;
        surpool__queue_init(&gone);
        SURPOOL__QUEUE_FOREACH_SAFE(q, next, &l->conns)
        {
            lane_conn *lc = SURPOOL__QUEUE_DATA(q, lane_conn, link);
            if (!lc->failed && !lc->expired) {
                if (surpool__conn_expired(lc->c, now))
                    lc->expired = 1;
                else if (lc->inflight == 0 && !surpool__conn_usable(lc->c))
                    lc->failed = 1;
            }
            if ((lc->failed || lc->expired) && lc->inflight == 0 && !lc->reauthing) {
                surpool__queue_remove(q); /* nothing points to it any more */
                surpool__queue_insert_head(&gone, q);
                l->nconns--;
            }
        }
        if (!surpool__queue_empty(&gone)) {
            pthread_mutex_unlock(&l->mu);
            while ((q = surpool__queue_head(&gone)) != NULL) {
                lane_conn *lc = SURPOOL__QUEUE_DATA(q, lane_conn, link);
                surpool__queue_remove(q);
                /* A failed socket may still look alive (a reply without
                 * result or error): the pool must close it, not lend it. */
                if (lc->failed)
                    surpool__conn_mark_broken(lc->c);
                surpool__pool_release_conn(lc->c);
                surpool__free(lc);
            }
            pthread_mutex_lock(&l->mu);
        }

        /* 2. Grow while requests queue and the lane is below its size. */
        want_grow_locked(l);

        /* 3. Fail queued requests past their deadline. */
        now = surpool__now_ns();
        surpool__queue expired;
        surpool__queue_init(&expired);
        SURPOOL__QUEUE_FOREACH_SAFE(q, next, &l->pending)
        {
            if (SURPOOL__QUEUE_DATA(q, lane_req, link)->treq.deadline_ns <= now) {
                surpool__queue_remove(q);
                surpool__queue_insert_head(&expired, q);
                l->npending--;
            }
        }
        if (!surpool__queue_empty(&expired)) {
            pthread_mutex_unlock(&l->mu);
            fail_list(&expired, SURPOOL_ERR_REQUEST_TIMEOUT,
                      "no lane capacity before the request deadline", NULL);
            pthread_mutex_lock(&l->mu);
            continue;
        }

        /* 4. Send what waits where there is room, when the delivery thread
         *    has settled nothing for a tick while requests queue. A delivery
         *    batch sends only when it ends (deliver_batch()), so a slot freed
         *    in it before a callback that blocks would stay idle, and requests
         *    queued for it would wait for that callback or fail at their
         *    deadline. A batch that moves on is left alone: its own send at
         *    the end is the point of batching. */
        now = surpool__now_ns();
        if (l->npending == 0) {
            l->stall_since_ns = 0;
        } else if (l->stall_since_ns == 0 || l->delivered != l->stall_delivered) {
            l->stall_since_ns = now;
            l->stall_delivered = l->delivered;
        } else if (now - l->stall_since_ns >= 100 * SURPOOL__NS_PER_MS) {
            l->stall_since_ns = now; /* at most once a tick while it lasts */
            pthread_mutex_unlock(&l->mu);
            pump(l);
            pthread_mutex_lock(&l->mu);
        }

        /* 5. Sleep until signalled, the next queued deadline, the next allowed
         *    growth attempt, or (while sockets are held) a tick to notice
         *    expired and dead ones. Never longer than the earliest deadline. */
        /* Steps 1, 3 and 4 drop the mutex: a stop signalled meanwhile found
         * nobody waiting, so look at the flag before sleeping. */
        if (l->stop)
            break;
        int64_t until = earliest_deadline_locked(l);
        if (l->nconns > 0 && until > now + 100 * SURPOOL__NS_PER_MS)
            until = now + 100 * SURPOOL__NS_PER_MS;
        if (l->npending > 0 && l->nconns < l->target && !l->acq_busy &&
            l->grow_not_before_ns > now && l->grow_not_before_ns < until)
            until = l->grow_not_before_ns;
        if (until == INT64_MAX) {
            pthread_cond_wait(&l->cv, &l->mu);
        } else if (until > now) {
            surpool__cond_wait_until(&l->cv, &l->mu, until);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* Create / close / destroy / stats                                           */
/* ------------------------------------------------------------------------- */

surpool_err surpool__lane_create(surpool_pool *p, const surpool__lane_config *cfg,
                                 surpool__lane **out)
{
    surpool__lane *l = surpool__calloc(1, sizeof(*l));
    if (l == NULL)
        return SURPOOL_ERR_NOMEM;
    l->pool = p;
    l->target = cfg->shared_connections;
    if (l->target > cfg->max_connections - 1)
        l->target = cfg->max_connections - 1; /* leave leases at least one */
    l->cap = cfg->shared_max_inflight;
    l->acquire_timeout_ms = lane_acquire_timeout_ms(cfg);
    surpool__queue_init(&l->conns);
    surpool__queue_init(&l->pending);
    surpool__queue_init(&l->delivery);
    surpool__queue_init(&l->handover);
    l->hook.run = handover_run;
    surpool__queue_init(&l->members);
    if (pthread_mutex_init(&l->mu, NULL) != 0)
        goto fail;
    if (surpool__cond_init(&l->cv) != 0)
        goto fail_mu;
    if (surpool__cond_init(&l->acq_cv) != 0)
        goto fail_cv;
    if (surpool__cond_init(&l->dcv) != 0)
        goto fail_acq;
    if (pthread_mutex_init(&l->dmu, NULL) != 0)
        goto fail_dcv;
    *out = l;
    return SURPOOL_OK;
fail_dcv:
    pthread_cond_destroy(&l->dcv);
fail_acq:
    pthread_cond_destroy(&l->acq_cv);
fail_cv:
    pthread_cond_destroy(&l->cv);
fail_mu:
    pthread_mutex_destroy(&l->mu);
fail:
    surpool__free(l);
    return SURPOOL_ERR_NOMEM;
}

void surpool__lane_close(surpool__lane *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    l->closed = 1;
    surpool__queue list;
    surpool__queue_init(&list);
    surpool__queue_move_tail(&list, &l->pending);
    l->npending = 0;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    fail_list(&list, SURPOOL_ERR_CLOSED, "pool is closed", NULL);
}

void surpool__lane_destroy(surpool__lane *l)
{
    if (l == NULL)
        return;
    /* Closed first and still hooked to the pool: callbacks that resubmit from
     * here on get SURPOOL_ERR_CLOSED. */
    surpool__lane_close(l);
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_signal(&l->cv);
    pthread_cond_signal(&l->acq_cv);
    int started = l->thread_started, acq_started = l->acq_started;
    pthread_mutex_unlock(&l->mu);
    if (started)
        pthread_join(l->thread, NULL);
    if (acq_started)
        pthread_join(l->acq_thread, NULL); /* the closed pool ended its acquire */
    /* A pump may still be inside submit() on one of the sockets (it took its
     * request before the close): let it return before closing them. The queue
     * is empty and closed, so no new send starts. */
    pthread_mutex_lock(&l->mu);
    while (l->submitting > 0)
        pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    /* The pool is closed: releasing closes each connection, which completes
     * whatever is still in flight with SURPOOL_ERR_DISCONNECTED (on_done).
     * The lane_conn objects stay until the last completion is counted. */
    for (;;) {
        pthread_mutex_lock(&l->mu);
        surpool_conn *c = NULL;
        surpool__queue *q;
        SURPOOL__QUEUE_FOREACH(q, &l->conns)
        {
            lane_conn *lc = SURPOOL__QUEUE_DATA(q, lane_conn, link);
            if (lc->c != NULL) {
                c = lc->c;
                lc->c = NULL;
                l->nconns--;
                break;
            }
        }
        pthread_mutex_unlock(&l->mu);
        if (c == NULL)
            break;
        surpool__pool_release_conn(c);
    }
    /* Completions of what was in flight may still be running on the
     * transport's thread: wait for the last one to count itself out. */
    pthread_mutex_lock(&l->mu);
    while (l->inflight > 0 || l->completing > 0)
        pthread_cond_wait(&l->cv, &l->mu);
    int dstarted = l->dthread_started;
    pthread_mutex_unlock(&l->mu);
    pthread_mutex_lock(&l->dmu);
    l->dstop = 1;
    pthread_cond_signal(&l->dcv);
    pthread_mutex_unlock(&l->dmu);
    if (dstarted)
        pthread_join(l->dthread, NULL);
    /* A hand_over() may still be signalling the (now ended) thread: it is
     * past its unlock, a few instructions from done. */
    while (atomic_load(&l->dwakers) > 0)
        sched_yield();
    /* Nothing runs on the lane now: unhook it (stats read it under the pool
     * mutex), then free it. */
    surpool__pool_lane_unhook(l->pool, l);
    surpool__queue *q;
    /* Sessions still open outlive the lane: they forget it (every call on one
     * is SURPOOL_ERR_CLOSED from here on; closing it only frees it). */
    while ((q = surpool__queue_head(&l->members)) != NULL) {
        surpool__queue_remove(q);
        SURPOOL__QUEUE_DATA(q, surpool__lane_member, link)->lane = NULL;
    }
    while ((q = surpool__queue_head(&l->conns)) != NULL) {
        surpool__queue_remove(q);
        surpool__free(SURPOOL__QUEUE_DATA(q, lane_conn, link));
    }
    pthread_mutex_destroy(&l->dmu);
    pthread_cond_destroy(&l->dcv);
    pthread_cond_destroy(&l->acq_cv);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
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
    surpool_err rc = surpool__check_method_params(method, params, err);
    if (rc != SURPOOL_OK)
        return rc;
    if (surpool__method_changes_session(method))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s changes session state: lease a connection for it", method);
    return SURPOOL_OK;
}

/* Build a request and queue it. On error nothing is queued and r is freed
 * unless it is the caller's (sync). */
static surpool_err enqueue(surpool_pool *p, surpool__lane *l, lane_req *r, const char *method,
                           const json_t *params, const surpool__reqopts *o, surpool_error *err)
{
    surpool__strlcpy(r->method, method, sizeof(r->method));
    r->lane = l;
    r->treq.done = on_done;
    r->treq.userdata = r;
    /* A copy, not a reference: the caller's value may be released on its
     * thread while ours is on the transport's (jansson's refcount is not
     * race-free to read). */
    json_t *copy = NULL;
    if (params != NULL && !r->for_session && surpool__pool_authenticates(p) &&
        (copy = json_deep_copy(params)) == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
    /* Encoded here, on the caller's thread, as a lease's call is: ids are
     * unique pool-wide; the deadline is request_timeout_ms (or the call's own
     * timeout) from now, so queueing counts against it. */
    surpool_err rc = surpool__rpc_prepare(p, &r->treq, method, params, INT64_MAX, o, err);
    if (rc != SURPOOL_OK) {
        json_decref(copy);
        return rc;
    }
    pthread_mutex_lock(&l->mu);
    if (l->closed) {
        pthread_mutex_unlock(&l->mu);
        surpool__rpc_free_payload(p, &r->treq, method);
        json_decref(copy);
        return surpool__seterr(err, SURPOOL_ERR_CLOSED, "pool is closed");
    }
    if (!l->thread_started && pthread_create(&l->thread, NULL, lane_main, l) == 0)
        l->thread_started = 1;
    if (!l->acq_started && pthread_create(&l->acq_thread, NULL, acquirer_main, l) == 0)
        l->acq_started = 1;
    if (!l->dthread_started && pthread_create(&l->dthread, NULL, delivery_main, l) == 0)
        l->dthread_started = 1;
    if (!l->thread_started || !l->acq_started || !l->dthread_started) {
        pthread_mutex_unlock(&l->mu);
        surpool__rpc_free_payload(p, &r->treq, method);
        json_decref(copy);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot start the lane's threads");
    }
    r->params = copy; /* dropped by settle() */
    r->seq = ++l->seq;
    surpool__queue_insert_tail(&l->pending, &r->link);
    l->npending++;
    pthread_mutex_unlock(&l->mu);
    pump(l);
    return SURPOOL_OK;
}

/* A synchronous request: queue `r` (zeroed, with the caller's fields set)
 * and wait for it and its outcome. Decoded here, on the caller's thread; a
 * request refused for an expired session goes out once more (settle()) and
 * is waited for again. */
static surpool_err call_sync(surpool_pool *p, surpool__lane *l, lane_req *r, const char *method,
                             const json_t *params, const surpool__reqopts *o, json_t **out,
                             surpool_error *err)
{
    surpool__sync s;
    if (surpool__sync_init(&s) != 0)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
    r->sync = &s;
    surpool_err rc = enqueue(p, l, r, method, params, o, err);
    if (rc == SURPOOL_OK) {
        do
            surpool__sync_wait(&s);
        while (settle(r));
        rc = r->rc;
        if (rc == SURPOOL_OK) {
            if (out != NULL)
                *out = r->result;
            else
                json_decref(r->result);
        } else {
            surpool__error_copy(err, &r->err);
        }
    }
    surpool__sync_destroy(&s);
    return rc;
}

static surpool_err lane_call_sync(surpool_pool *p, surpool__lane *l, const char *method,
                                  const json_t *params, const surpool__reqopts *o, json_t **out,
                                  surpool_error *err)
{
    lane_req r;
    memset(&r, 0, sizeof(r));
    return call_sync(p, l, &r, method, params, o, out, err);
}

/* Without a lane, a pool-level call leases a connection for itself. A call
 * with its own timeout spends it on the acquire too (instead of
 * acquire_timeout_ms), as a lane request spends it queueing. */
static surpool_err leased_call(surpool_pool *p, const char *method, const json_t *params,
                               const surpool__reqopts *o, json_t **out, surpool_error *err)
{
    surpool_conn *c = NULL;
    long timeout_ms = o->timeout_ms;
    int64_t deadline = surpool__deadline_after_ms(timeout_ms > 0 ? timeout_ms : -1);
    surpool_err rc = surpool_pool_acquire_at(p, timeout_ms > 0 ? timeout_ms : -1, &c, err,
                                             __FILE__, __LINE__);
    if (rc != SURPOOL_OK)
        return rc;
    if (timeout_ms > 0) {
        int64_t left = (deadline - surpool__now_ns()) / SURPOOL__NS_PER_MS;
        timeout_ms = left > 0 ? (long)left : 1;
    }
    if (timeout_ms >= 0)
        surpool_conn_set_timeout(c, timeout_ms);
    rc = surpool_conn_call(c, method, params, out, err);
    surpool_conn_release(c);
    return rc;
}

/* A synchronous call from a result callback would wait for a reply that only
 * this thread may be able to deliver (the transport's thread): refuse it. */
static surpool_err refuse_in_callback(surpool_error *err, const char *fn)
{
    return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                           "%s() called from inside a surpool_result_fn callback: it would "
                           "deadlock; use the *_async calls there",
                           fn);
}

void surpool_call_options_init(surpool_call_options *opts)
{
    if (opts == NULL)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->timeout_ms = -1;
}

/* The caller's options (NULL: the defaults) as the request path takes them. */
static surpool_err call_opts(const surpool_call_options *opts, surpool__reqopts *o,
                             surpool_error *err)
{
    o->txn = NULL;
    o->session = NULL;
    o->timeout_ms = opts != NULL ? opts->timeout_ms : -1;
    if (o->timeout_ms > SURPOOL__MS_MAX)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "timeout_ms must be at most %lld (365 days)", SURPOOL__MS_MAX);
    return SURPOOL_OK;
}

surpool_err surpool_call_opts(surpool_pool *p, const char *method, const json_t *params,
                              const surpool_call_options *opts, json_t **out,
                              surpool_error *err)
{
    if (p == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "pool is NULL");
    if (surpool__in_result_callback())
        return refuse_in_callback(err, "surpool_call");
    surpool__reqopts o;
    surpool_err rc = call_opts(opts, &o, err);
    if (rc == SURPOOL_OK)
        rc = check_method(method, params, err);
    if (rc != SURPOOL_OK)
        return rc;
    surpool__lane *l = surpool__pool_lane(p); /* read once: see surpool_call_async() */
    if (l == NULL)
        return leased_call(p, method, params, &o, out, err);
    return lane_call_sync(p, l, method, params, &o, out, err);
}

surpool_err surpool_call(surpool_pool *p, const char *method, const json_t *params,
                         json_t **out, surpool_error *err)
{
    return surpool_call_opts(p, method, params, NULL, out, err);
}

surpool_err surpool_call_async_opts(surpool_pool *p, const char *method, const json_t *params,
                                    const surpool_call_options *opts, surpool_result_fn cb,
                                    void *userdata)
{
    if (p == NULL || cb == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    surpool__reqopts o;
    surpool_err rc = call_opts(opts, &o, NULL);
    if (rc == SURPOOL_OK)
        rc = check_method(method, params, NULL);
    if (rc != SURPOOL_OK)
        return rc;
    /* Read once. The pool keeps its lane until destroy has completed every
     * request (the lane refuses new ones with CLOSED from the start of
     * destroy), so a callback resubmitting during destroy sees a closed lane,
     * never a lane being freed. */
    surpool__lane *l = surpool__pool_lane(p);
    if (l == NULL)
        return SURPOOL_ERR_INVALID_ARG; /* async needs the lane (shared_connections > 0) */
    lane_req *r = surpool__calloc(1, sizeof(*r));
    if (r == NULL)
        return SURPOOL_ERR_NOMEM;
    r->cb = cb;
    r->userdata = userdata;
    rc = enqueue(p, l, r, method, params, &o, NULL);
    if (rc != SURPOOL_OK)
        surpool__free(r);
    return rc;
}

surpool_err surpool_call_async(surpool_pool *p, const char *method, const json_t *params,
                               surpool_result_fn cb, void *userdata)
{
    return surpool_call_async_opts(p, method, params, NULL, cb, userdata);
}

surpool_err surpool_query_opts(surpool_pool *p, const char *sql, const json_t *vars,
                               const surpool_call_options *opts, json_t **out,
                               surpool_error *err)
{
    if (p == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "pool is NULL");
    if (surpool__in_result_callback())
        return refuse_in_callback(err, "surpool_query");
    surpool__reqopts o;
    surpool_err rc = call_opts(opts, &o, err);
    if (rc != SURPOOL_OK)
        return rc;
    json_t *params = NULL;
    rc = surpool__query_params(sql, vars, &params, err);
    if (rc != SURPOOL_OK)
        return rc;
    surpool__lane *l = surpool__pool_lane(p);
    rc = l != NULL ? lane_call_sync(p, l, "query", params, &o, out, err)
                   : leased_call(p, "query", params, &o, out, err);
    json_decref(params);
    return rc;
}

surpool_err surpool_query(surpool_pool *p, const char *sql, const json_t *vars, json_t **out,
                          surpool_error *err)
{
    return surpool_query_opts(p, sql, vars, NULL, out, err);
}

surpool_err surpool_query_async_opts(surpool_pool *p, const char *sql, const json_t *vars,
                                     const surpool_call_options *opts, surpool_result_fn cb,
                                     void *userdata)
{
    if (p == NULL || cb == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    json_t *params = NULL;
    surpool_err rc = surpool__query_params(sql, vars, &params, NULL);
    if (rc != SURPOOL_OK)
        return rc;
    rc = surpool_call_async_opts(p, "query", params, opts, cb, userdata);
    json_decref(params);
    return rc;
}

surpool_err surpool_query_async(surpool_pool *p, const char *sql, const json_t *vars,
                                surpool_result_fn cb, void *userdata)
{
    return surpool_query_async_opts(p, sql, vars, NULL, cb, userdata);
}

/* ------------------------------------------------------------------------- */
/* Sessions (session.c)                                                       */
/* ------------------------------------------------------------------------- */

surpool_err surpool__lane_join(surpool__lane *l, surpool__lane_member *m, surpool_error *err)
{
    pthread_mutex_lock(&l->mu);
    if (l->closed) {
        pthread_mutex_unlock(&l->mu);
        return surpool__seterr(err, SURPOOL_ERR_CLOSED, "pool is closed");
    }
    m->lane = l;
    surpool__queue_insert_tail(&l->members, &m->link);
    pthread_mutex_unlock(&l->mu);
    return SURPOOL_OK;
}

void surpool__lane_leave(surpool__lane_member *m)
{
    surpool__lane *l = m->lane;
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    surpool__queue_remove(&m->link);
    m->lane = NULL;
    pthread_mutex_unlock(&l->mu);
}

int surpool__lane_socket_ok(surpool__lane *l, uint64_t gen)
{
    if (gen == 0)
        return 0;
    pthread_mutex_lock(&l->mu);
    lane_conn *lc = find_gen_locked(l, gen);
    int ok = lc != NULL && session_usable_locked(l, lc);
    pthread_mutex_unlock(&l->mu);
    return ok;
}

void surpool__lane_unbind(surpool__lane *l, uint64_t gen)
{
    if (gen == 0)
        return;
    pthread_mutex_lock(&l->mu);
    lane_conn *lc = find_gen_locked(l, gen);
    if (lc != NULL && lc->sessions > 0)
        lc->sessions--;
    pthread_mutex_unlock(&l->mu);
}

int surpool__lane_socket_sessions(surpool__lane *l, int *counts, int max)
{
    int n = 0;
    pthread_mutex_lock(&l->mu);
    surpool__queue *q;
    SURPOOL__QUEUE_FOREACH(q, &l->conns)
    {
        lane_conn *lc = SURPOOL__QUEUE_DATA(q, lane_conn, link);
        if (n < max && lc->c != NULL && !lc->failed && !lc->expired)
            counts[n++] = lc->sessions;
    }
    pthread_mutex_unlock(&l->mu);
    return n;
}

surpool_err surpool__lane_session_call(surpool__lane *l, uint64_t *gen, const char *session,
                                       const char *method, const json_t *params,
                                       long timeout_ms, json_t **out, int *flags,
                                       surpool_error *err)
{
    lane_req r;
    memset(&r, 0, sizeof(r));
    r.for_session = 1;
    r.bind = *gen == 0;
    r.gen = *gen;
    surpool__reqopts o = {NULL, timeout_ms, session};
    /* (settle() never retries a session's request) */
    surpool_err rc = call_sync(l->pool, l, &r, method, params, &o, out, err);
    *gen = r.gen; /* a bind that was sent counts on that socket, failed or not */
    *flags = (r.expired ? SURPOOL__LANE_EXPIRED : 0) | (r.sent ? 0 : SURPOOL__LANE_UNSENT);
    return rc;
}
