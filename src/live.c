/*
 * Live queries that survive their socket (docs/live.md is the contract).
 *
 * A pool has one manager (surpool__live_mgr). Live queries ride dedicated
 * connections ("carriers") borrowed from the pool as the lane borrows its
 * own (carrier_acquire / carrier_release: the one place that borrows). Two
 * threads, started with the first live query:
 *  - the worker: every RPC of the live machinery (start, start again, move at
 *    max_lifetime_ms, kill), every carrier acquire and release. One thing at a
 *    time, so no two RPCs ever share a carrier's lease.
 *  - the delivery thread: runs the callbacks, one event at a time.
 * The transport's thread only routes a notification to its live query (a hash
 * lookup by live id) and appends it to that query's bounded queue.
 *
 * The rules:
 *  L1. m->mu guards everything below (the hash, the lists, every field of a
 *      handle marked so). It is a leaf for surpool: never held across an RPC,
 *      an acquire, a release or a callback. The transport calls in holding a
 *      connection's event mutex (on_dead) or nothing (on_notify): so no path
 *      that holds m->mu may close a connection.
 *  L2. A notification for an id nobody registered yet, on the carrier a `live`
 *      is in flight on, is kept (m->orphans, bounded) until that reply was
 *      handled: then the ones for the new id are queued first, in order, and
 *      the rest freed. The reply and the notifications of the same socket can
 *      be handled in either order by two threads: this is how none is lost.
 *  L3. A handle is freed once the user killed it (or destroy did) and its
 *      CLOSED event was delivered and nobody pins it (the worker in an RPC for
 *      it, the delivery thread in its callback).
 *  L4. Only the worker frees carriers, and only when no key is registered on
 *      it and no kill job names it (or it is dead).
 *  L5. Per handle at most queue_max notifications wait; past that they are
 *      counted (gap_pending) and the next item carries the count, delivered as
 *      one OVERFLOW before it. Control items (RESUBSCRIBED, KILLED, CLOSED) are
 *      not counted against the bound; RESUBSCRIBED items are coalesced, and
 *      when one cannot be allocated the handle's spare takes its place (the
 *      user always learns that changes may have been missed).
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "live.h"
#include "pool.h"
#include "thread.h"
#include "utf8.h"

#define LIVE_ID_LEN 36
#define ORPHANS_MAX 4096
#define EMPTY_CARRIER_NS (5 * INT64_C(1000000000)) /* keep an empty carrier 5 s */
#define SHUTDOWN_KILL_MS 1000                      /* destroy's kills, all together */
#define DEFAULT_QUEUE_MAX 1024
#define DEFAULT_PER_CONN 1000
#define GRAVE_MAX 256       /* killed handles whose memory is kept (a second kill is a no-op) */
#define LIVE_REFUSALS_MAX 8 /* a restart refused this often in a row ends the query */

typedef struct carrier carrier;

typedef struct live_key {
    char id[LIVE_ID_LEN + 1];
    json_t *value; /* the id as the server gave it (sent back in `kill`) */
    struct live_key *hnext;
    surpool_live *sub;
    carrier *car;
    int registered;
} live_key;

enum { ITEM_NOTE, ITEM_RESUB, ITEM_KILLED, ITEM_CLOSED };

typedef struct live_item {
    surpool__queue link;
    int kind;
    json_t *frame; /* ITEM_NOTE / ITEM_KILLED: the notification (a reference) */
    uint64_t gap;  /* notifications dropped just before this item (L5) */
    int spare;     /* the handle's own RESUB item (resub_spare): never freed */
} live_item;

struct carrier {
    surpool__queue link; /* m->carriers */
    surpool_conn *c;
    int nkeys;    /* keys registered on it */
    int nkills;   /* kill jobs naming it */
    int retiring; /* past max_lifetime_ms: its queries move, then it goes */
    int failed;   /* an RPC on it broke the connection */
    int64_t empty_since;
};

typedef struct kill_job {
    surpool__queue link; /* m->kills */
    carrier *car;
    json_t *value;
} kill_job;

typedef struct orphan {
    surpool__queue link; /* m->orphans */
    char id[LIVE_ID_LEN + 1];
    json_t *frame;
} orphan;

enum { SUB_STARTING, SUB_ACTIVE, SUB_HOMELESS, SUB_ENDED };

struct surpool_live {
    surpool__live_mgr *m;
    surpool_live_fn cb;
    void *userdata;
    char *table, *sql;
    json_t *vars;
    int diff;
    size_t queue_max;

    /* m->mu */
    live_key cur, old; /* old: the previous id while a move kills it */
    int state;
    surpool__queue all_link;  /* m->subs once started */
    surpool__queue work_link; /* m->starts or m->homeless */
    int pinned;               /* the worker is in an RPC for it */
    int refusals;             /* the server refused to start it again, in a row */
    int in_grave;             /* freed but for its memory (maybe_free_locked) */
    int killed;               /* the user (or destroy) killed it */
    surpool__queue items;     /* live_item.link */
    size_t nnotes;
    uint64_t gap_pending, dropped_total;
    surpool__queue ready_link; /* m->ready */
    int delivering;
    int closed_queued, closed_delivered;
    surpool_err close_code;
    char close_msg[160];
    char resub_msg[160];
    live_item resub_spare; /* RESUB when allocating one fails: it is never lost */

    /* The first start (the caller waits for the worker). */
    pthread_cond_t start_cv;
    int start_done;
    surpool_err start_rc;
    surpool_error start_err;
};

struct surpool__live_mgr {
    surpool_pool *p;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;  /* wakes the worker */
    pthread_cond_t ready_cv; /* wakes the delivery thread */
    pthread_t worker, deliverer;
    int started;
    int stopping;     /* destroy: the worker kills everything and ends */
    int deliver_stop; /* the delivery thread ends once nothing is ready */
    int died;         /* a connection died: the worker looks at its carriers */
    size_t queue_max;
    int per_conn;

    live_key **buckets;
    size_t nbuckets, nkeys;
    surpool__queue subs, starts, homeless, carriers, kills, ready, orphans;
    surpool__queue grave; /* killed handles' memory, oldest first (GRAVE_MAX) */
    int ngrave;
    char move_error[256]; /* the worker's: why the last move failed */
    size_t norphans;
    const void *start_conn; /* the connection a `live` is in flight on (L2) */
    int64_t retry_at;       /* homeless queries wait until then (backoff) */
    long backoff_ms;
};

static _Thread_local int in_live_cb;

int surpool__live_in_callback(void)
{
    return in_live_cb;
}

/* ------------------------------------------------------------------------- */
/* Ids and the hash                                                           */
/* ------------------------------------------------------------------------- */

/* The canonical text of a live id: a UUID string (JSON) or a typed uuid
 * (CBOR), lower case. 0 on success. */
static int id_text(const json_t *v, char out[LIVE_ID_LEN + 1])
{
    const char *s = NULL;
    if (json_is_string(v)) {
        s = json_string_value(v);
    } else if (json_is_object(v)) {
        const char *t = json_string_value(json_object_get(v, "$surreal"));
        if (t != NULL && strcmp(t, "uuid") == 0)
            s = json_string_value(json_object_get(v, "value"));
    }
    if (s == NULL || strlen(s) != LIVE_ID_LEN)
        return -1;
    for (int i = 0; i < LIVE_ID_LEN; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[LIVE_ID_LEN] = '\0';
    return 0;
}

static size_t id_hash(const char *id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (int i = 0; i < LIVE_ID_LEN; i++) {
        h ^= (unsigned char)id[i];
        h *= 1099511628211ull;
    }
    return (size_t)h;
}

static live_key *lookup_locked(surpool__live_mgr *m, const char *id)
{
    if (m->nbuckets == 0)
        return NULL;
    for (live_key *k = m->buckets[id_hash(id) & (m->nbuckets - 1)]; k != NULL; k = k->hnext)
        if (memcmp(k->id, id, LIVE_ID_LEN) == 0)
            return k;
    return NULL;
}

static void grow_locked(surpool__live_mgr *m)
{
    size_t n = m->nbuckets == 0 ? 64 : m->nbuckets * 2;
    live_key **b = surpool__calloc(n, sizeof(*b));
    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < m->nbuckets; i++) {
        live_key *k = m->buckets[i], *next;
        for (; k != NULL; k = next) {
            next = k->hnext;
            size_t j = id_hash(k->id) & (n - 1);
            k->hnext = b[j];
            b[j] = k;
        }
    }
    surpool__free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

/* 0, or -1 when no table could be allocated. */
static int register_locked(surpool__live_mgr *m, live_key *k)
{
    if (m->nkeys >= m->nbuckets)
        grow_locked(m);
    if (m->nbuckets == 0)
        return -1;
    size_t j = id_hash(k->id) & (m->nbuckets - 1);
    k->hnext = m->buckets[j];
    m->buckets[j] = k;
    k->registered = 1;
    m->nkeys++;
    k->car->nkeys++;
    return 0;
}

static void unregister_locked(surpool__live_mgr *m, live_key *k, int64_t now)
{
    if (!k->registered)
        return;
    live_key **pp = &m->buckets[id_hash(k->id) & (m->nbuckets - 1)];
    while (*pp != k)
        pp = &(*pp)->hnext;
    *pp = k->hnext;
    k->registered = 0;
    m->nkeys--;
    if (--k->car->nkeys == 0)
        k->car->empty_since = now;
}

static void queue_kill_locked(surpool__live_mgr *m, carrier *k, json_t *value);

/* Forget a key: unregistered, and with `kill` its server-side query queued
 * for a `kill` on its carrier (best effort). */
static void drop_key_locked(surpool__live_mgr *m, live_key *k, int kill, int64_t now)
{
    if (k->registered) {
        unregister_locked(m, k, now);
        if (kill) {
            queue_kill_locked(m, k->car, k->value); /* moved */
            k->value = NULL;
        }
    }
    json_decref(k->value);
    k->value = NULL;
    k->car = NULL;
}

/* ------------------------------------------------------------------------- */
/* Queues and delivery                                                        */
/* ------------------------------------------------------------------------- */

static void make_ready_locked(surpool__live_mgr *m, surpool_live *s)
{
    if (!surpool__queue_linked(&s->ready_link)) {
        surpool__queue_insert_tail(&m->ready, &s->ready_link);
        pthread_cond_signal(&m->ready_cv);
    }
}

static void item_free(live_item *it)
{
    json_decref(it->frame);
    it->frame = NULL;
    if (!it->spare)
        surpool__free(it);
}

/* Queue an item; `frame` (NULL for RESUB; NULL for a NOTE whose copy failed:
 * counted as dropped) is stolen. */
static void push_item_locked(surpool__live_mgr *m, surpool_live *s, int kind, json_t *frame)
{
    if (kind == ITEM_RESUB) { /* coalesce (L5) */
        surpool__queue *t = surpool__queue_tail(&s->items);
        if (t != NULL && SURPOOL__QUEUE_DATA(t, live_item, link)->kind == ITEM_RESUB)
            return;
    }
    live_item *it = NULL;
    if (kind == ITEM_NOTE && (s->nnotes >= s->queue_max || frame == NULL)) {
        it = NULL;
    } else if ((it = surpool__calloc(1, sizeof(*it))) == NULL && kind == ITEM_RESUB &&
               !surpool__queue_linked(&s->resub_spare.link)) {
        /* Out of memory: the user must still learn that changes may have
         * been missed. At most one RESUB waits in the spare (coalesced). */
        it = &s->resub_spare;
        memset(it, 0, sizeof(*it));
        it->spare = 1;
    }
    if (it == NULL) {
        /* Full, or out of memory: counted as dropped (L5). */
        json_decref(frame);
        if (kind == ITEM_NOTE) {
            s->gap_pending++;
            s->dropped_total++;
        }
        make_ready_locked(m, s);
        return;
    }
    it->kind = kind;
    it->frame = frame;
    it->gap = s->gap_pending;
    s->gap_pending = 0;
    if (kind == ITEM_NOTE)
        s->nnotes++;
    surpool__queue_insert_tail(&s->items, &it->link);
    make_ready_locked(m, s);
}

/* Queue the last event (once). Nothing queued behind it is delivered. */
static void close_locked(surpool__live_mgr *m, surpool_live *s, surpool_err code,
                         const char *msg)
{
    if (s->closed_queued)
        return;
    s->closed_queued = 1;
    s->close_code = code;
    surpool__strlcpy(s->close_msg, msg, sizeof(s->close_msg));
    s->state = SUB_ENDED;
    if (surpool__queue_linked(&s->work_link))
        surpool__queue_remove(&s->work_link);
    /* The CLOSED item is not allocated: the flag is the item (never lost). */
    make_ready_locked(m, s);
}

/* Everything a handle holds but its own memory. */
static void empty_sub(surpool_live *s)
{
    surpool__queue *q;
    while ((q = surpool__queue_head(&s->items)) != NULL) {
        surpool__queue_remove(q);
        item_free(SURPOOL__QUEUE_DATA(q, live_item, link));
    }
    json_decref(s->cur.value);
    json_decref(s->old.value);
    json_decref(s->vars);
    surpool__free(s->table);
    surpool__free(s->sql);
    s->cur.value = s->old.value = s->vars = NULL;
    s->table = s->sql = NULL;
}

static void free_sub(surpool_live *s)
{
    empty_sub(s);
    pthread_cond_destroy(&s->start_cv);
    surpool__free(s);
}

/* L3. The memory itself waits in the graveyard for the next GRAVE_MAX frees,
 * so that a second kill of the handle finds it killed (a no-op), as the
 * pool's graveyard does for released connections. */
static void maybe_free_locked(surpool_live *s)
{
    if (s->killed && s->closed_delivered && s->pinned == 0 && !s->delivering && !s->in_grave) {
        surpool__live_mgr *m = s->m;
        surpool__queue_remove(&s->all_link);
        if (surpool__queue_linked(&s->ready_link))
            surpool__queue_remove(&s->ready_link);
        empty_sub(s);
        s->in_grave = 1;
        surpool__queue_insert_tail(&m->grave, &s->all_link);
        if (++m->ngrave > GRAVE_MAX) {
            surpool__queue *q = surpool__queue_head(&m->grave);
            surpool__queue_remove(q);
            m->ngrave--;
            free_sub(SURPOOL__QUEUE_DATA(q, surpool_live, all_link));
        }
    }
}

static surpool_live_event_type action_type(const char *a)
{
    if (a == NULL)
        return 0;
    if (strcmp(a, "CREATE") == 0)
        return SURPOOL_LIVE_CREATE;
    if (strcmp(a, "UPDATE") == 0)
        return SURPOOL_LIVE_UPDATE;
    if (strcmp(a, "DELETE") == 0)
        return SURPOOL_LIVE_DELETE;
    if (strcmp(a, "KILLED") == 0)
        return SURPOOL_LIVE_KILLED;
    return 0;
}

static void *deliver_main(void *arg)
{
    surpool__live_mgr *m = arg;
    pthread_mutex_lock(&m->mu);
    for (;;) {
        surpool__queue *q = surpool__queue_head(&m->ready);
        if (q == NULL) {
            if (m->deliver_stop)
                break;
            pthread_cond_wait(&m->ready_cv, &m->mu);
            continue;
        }
        surpool__queue_remove(q);
        surpool_live *s = SURPOOL__QUEUE_DATA(q, surpool_live, ready_link);
        if (s->closed_delivered)
            continue;
        surpool_live_event ev;
        memset(&ev, 0, sizeof(ev));
        ev.message = "";
        char idbuf[LIVE_ID_LEN + 1];
        char msg[160];
        surpool__strlcpy(idbuf, s->cur.id, sizeof(idbuf));
        ev.live_id = idbuf;
        live_item *it = NULL;
        surpool__queue *h = surpool__queue_head(&s->items);
        live_item *first = h != NULL ? SURPOOL__QUEUE_DATA(h, live_item, link) : NULL;
        int final = 0;
        if (first != NULL && first->gap > 0) {
            ev.type = SURPOOL_LIVE_OVERFLOW;
            ev.dropped = first->gap;
            first->gap = 0;
        } else if (first != NULL) {
            it = first;
            surpool__queue_remove(&it->link);
            if (it->kind == ITEM_NOTE)
                s->nnotes--;
        } else if (s->gap_pending > 0) {
            ev.type = SURPOOL_LIVE_OVERFLOW;
            ev.dropped = s->gap_pending;
            s->gap_pending = 0;
        } else if (s->closed_queued) {
            ev.type = SURPOOL_LIVE_CLOSED;
            ev.code = s->close_code;
            surpool__strlcpy(msg, s->close_msg, sizeof(msg));
            ev.message = msg;
            final = 1;
        } else {
            continue; /* nothing (a kill emptied it) */
        }
        if (it != NULL && it->kind == ITEM_RESUB) {
            ev.type = SURPOOL_LIVE_RESUBSCRIBED;
            surpool__strlcpy(msg, s->resub_msg, sizeof(msg));
            ev.message = msg;
            if (it->spare)
                it = NULL; /* the handle's own: the worker may reuse it once unlocked */
        }
        if (!final &&
            (!surpool__queue_empty(&s->items) || s->gap_pending > 0 || s->closed_queued))
            surpool__queue_insert_tail(&m->ready, &s->ready_link);
        s->delivering = 1;
        pthread_mutex_unlock(&m->mu);

        if (it != NULL && (it->kind == ITEM_NOTE || it->kind == ITEM_KILLED)) {
            const json_t *r = json_object_get(it->frame, "result");
            ev.type = action_type(json_string_value(json_object_get(r, "action")));
            if (id_text(json_object_get(r, "id"), idbuf) != 0)
                idbuf[0] = '\0';
            if (ev.type != SURPOOL_LIVE_KILLED) {
                ev.record_id = json_object_get(r, "record");
                ev.result = json_object_get(r, "result");
            }
        }
        if (ev.type != 0) {
            in_live_cb = 1;
            s->cb(s->userdata, s, &ev);
            in_live_cb = 0;
        }
        if (it != NULL)
            item_free(it);

        pthread_mutex_lock(&m->mu);
        s->delivering = 0;
        if (final) {
            s->closed_delivered = 1;
            maybe_free_locked(s);
        }
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* The transport's side (quick, under m->mu only)                            */
/* ------------------------------------------------------------------------- */

void surpool__live_notify(surpool__live_mgr *m, const void *conn, json_t *frame)
{
    if (m == NULL)
        return;
    const json_t *r = json_object_get(frame, "result");
    char id[LIVE_ID_LEN + 1];
    if (id_text(json_object_get(r, "id"), id) != 0)
        return;
    surpool_live_event_type type = action_type(json_string_value(json_object_get(r, "action")));
    if (type == 0)
        return;
    /* Our own copy: the transport drops its reference once we return, and
     * jansson's reference count may not be shared across threads without a
     * race (its decref reads the count plainly first). */
    json_t *own = json_deep_copy(frame);
    pthread_mutex_lock(&m->mu);
    live_key *k = lookup_locked(m, id);
    if (k == NULL) {
        /* L2: maybe the reply of the `live` in flight on this socket. */
        orphan *o = NULL;
        if (own != NULL && conn == m->start_conn && m->norphans < ORPHANS_MAX &&
            (o = surpool__malloc(sizeof(*o))) != NULL) {
            memcpy(o->id, id, sizeof(id));
            o->frame = own;
            own = NULL;
            surpool__queue_insert_tail(&m->orphans, &o->link);
            m->norphans++;
        }
    } else if (!k->sub->killed && !k->sub->closed_queued) {
        surpool_live *s = k->sub;
        if (type != SURPOOL_LIVE_KILLED) {
            push_item_locked(m, s, ITEM_NOTE, own);
            own = NULL;
        } else if (k == &s->cur) {
            /* The server ended it by itself (our own kills unregister first). */
            drop_key_locked(m, k, 0, surpool__now_ns());
            push_item_locked(m, s, ITEM_KILLED, own);
            own = NULL;
            close_locked(m, s, SURPOOL_OK, "the server ended the live query");
        }
    }
    pthread_mutex_unlock(&m->mu);
    json_decref(own);
}

void surpool__live_conn_died(surpool__live_mgr *m)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->mu);
    m->died = 1;
    pthread_cond_signal(&m->work_cv);
    pthread_mutex_unlock(&m->mu);
}

/* ------------------------------------------------------------------------- */
/* Carriers: the one place that borrows from the pool                         */
/* ------------------------------------------------------------------------- */

static surpool_err carrier_acquire(surpool_pool *p, surpool_conn **out, surpool_error *err)
{
    surpool_err rc = surpool__pool_acquire_conn(p, p->cfg.pub.acquire_timeout_ms, out, err,
                                                __FILE__, __LINE__);
    if (rc == SURPOOL_OK)
        surpool__pool_lane_mark(p, *out); /* not a user lease: no leak report, no drain */
    return rc;
}

static void carrier_release(surpool_conn *c)
{
    c->discard = 1; /* it may still carry live queries the server keeps */
    surpool__pool_release_conn(c);
}

static int carrier_ok(const carrier *k)
{
    return !k->failed && surpool__conn_usable(k->c) && !k->c->broken;
}

static int64_t rpc_deadline(const surpool_pool *p)
{
    long ms = p->cfg.pub.request_timeout_ms > 0 ? p->cfg.pub.request_timeout_ms
                                                : p->cfg.pub.connect_timeout_ms;
    return surpool__deadline_after_ms(ms);
}

/* A carrier with room that is not `avoid`, or a new one (the mutex is
 * dropped while acquiring). NULL with err filled when none could be had. */
static carrier *carrier_get_locked(surpool__live_mgr *m, const carrier *avoid,
                                   surpool_error *err)
{
    surpool__queue *q;
    SURPOOL__QUEUE_FOREACH(q, &m->carriers)
    {
        carrier *k = SURPOOL__QUEUE_DATA(q, carrier, link);
        if (k != avoid && !k->retiring && carrier_ok(k) && k->nkeys < m->per_conn)
            return k;
    }
    carrier *k = surpool__calloc(1, sizeof(*k));
    if (k == NULL) {
        surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_unlock(&m->mu);
    surpool_err rc = carrier_acquire(m->p, &k->c, err);
    pthread_mutex_lock(&m->mu);
    if (rc != SURPOOL_OK) {
        surpool__free(k);
        return NULL;
    }
    k->empty_since = surpool__now_ns();
    surpool__queue_insert_tail(&m->carriers, &k->link);
    return k;
}

/* ------------------------------------------------------------------------- */
/* The worker                                                                 */
/* ------------------------------------------------------------------------- */

/* Free the orphans (L2), after moving those of `k` (if any) to its query. */
static void settle_orphans_locked(surpool__live_mgr *m, live_key *k)
{
    surpool__queue *q;
    while ((q = surpool__queue_head(&m->orphans)) != NULL) {
        orphan *o = SURPOOL__QUEUE_DATA(q, orphan, link);
        surpool__queue_remove(q);
        m->norphans--;
        if (k != NULL && memcmp(o->id, k->id, LIVE_ID_LEN) == 0) {
            const json_t *r = json_object_get(o->frame, "result");
            surpool_live_event_type t =
                action_type(json_string_value(json_object_get(r, "action")));
            if (t != 0 && t != SURPOOL_LIVE_KILLED) {
                push_item_locked(m, k->sub, ITEM_NOTE, o->frame);
                o->frame = NULL;
            }
        }
        json_decref(o->frame);
        surpool__free(o);
    }
}

/* Send the start of `s` on `k` (the mutex dropped meanwhile); *id_value: the
 * server's id (a new reference) on success. */
static surpool_err send_start_locked(surpool__live_mgr *m, surpool_live *s, carrier *k,
                                     json_t **id_value, surpool_error *err)
{
    surpool_pool *p = m->p;
    int cbor = p->cfg.pub.wire_format == SURPOOL_WIRE_CBOR;
    json_t *params = NULL;
    surpool_err rc = SURPOOL_OK;
    if (s->sql != NULL) {
        rc = surpool__query_params(s->sql, s->vars, &params, err);
    } else {
        json_t *t = cbor ? json_pack("{s:s, s:s}", "$surreal", "table", "value", s->table)
                         : json_string(s->table);
        params = t != NULL ? json_pack(s->diff ? "[o, b]" : "[o]", t, 1) : NULL;
        if (params == NULL)
            rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
    }
    if (rc != SURPOOL_OK)
        return rc;
    m->start_conn = k->c;
    s->pinned++;
    pthread_mutex_unlock(&m->mu);
    json_t *result = NULL;
    int major = s->vars != NULL ? surpool__rpc_server_major(k->c) : 3;
    if (major > 0 && major < 3) {
        /* Checked on the 2.6 core: it does not keep the variables sent with
         * the statement for the live query (its WHERE then sees NONE, and
         * every record matches). Refuse rather than deliver the wrong set. */
        rc = surpool__seterr(err, SURPOOL_ERR_UNSUPPORTED,
                             "live queries with vars need SurrealDB 3 (this server is %d.x: "
                             "write the values into the statement)",
                             major);
    } else {
        rc = surpool__rpc(k->c, s->sql != NULL ? "query" : "live", params, rpc_deadline(p),
                          &result, err);
    }
    json_decref(params);
    const json_t *idv = result;
    json_t *stray = NULL; /* live ids of a refused multi-statement text */
    if (rc == SURPOOL_OK && s->sql != NULL) {
        if (json_array_size(result) > 1) {
            /* `LIVE SELECT ...; LIVE SELECT ...`: the server started each
             * one; nobody will own them, so they are killed (below). */
            stray = json_array();
            size_t i;
            json_t *st;
            char tmp[LIVE_ID_LEN + 1];
            json_array_foreach(result, i, st)
            {
                json_t *v = json_object_get(st, "result");
                if (stray != NULL && id_text(v, tmp) == 0)
                    json_array_append(stray, v);
            }
        }
        rc = surpool_query_check(result, err);
        if (rc == SURPOOL_OK && json_array_size(result) != 1)
            rc = surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                 "sql must be exactly one LIVE SELECT statement (got %zu "
                                 "statements)",
                                 json_array_size(result));
        idv = json_object_get(json_array_get(result, 0), "result");
    }
    char id[LIVE_ID_LEN + 1];
    if (rc == SURPOOL_OK && id_text(idv, id) != 0)
        rc = surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                             "the statement did not start a live query (no live id in "
                             "its result): sql must be one LIVE SELECT statement");
    if (rc == SURPOOL_OK)
        *id_value = json_incref((json_t *)idv);
    json_decref(result);
    if (rc == SURPOOL_ERR_SERVER && err != NULL &&
        (err->server_code == -32601 || strstr(err->message, "ethod not found") != NULL))
        rc = err->code = SURPOOL_ERR_UNSUPPORTED;
    pthread_mutex_lock(&m->mu);
    s->pinned--;
    m->start_conn = NULL;
    if (surpool__breaks_connection(rc))
        k->failed = 1;
    size_t i;
    json_t *v;
    json_array_foreach(stray, i, v) queue_kill_locked(m, k, json_incref(v));
    json_decref(stray);
    return rc;
}

/* Fill key `key` of s with the id the server gave (stolen) and register it;
 * on failure the id is killed on the server. */
static int adopt_locked(surpool__live_mgr *m, surpool_live *s, live_key *key, carrier *k,
                        json_t *value)
{
    if (id_text(value, key->id) != 0) {
        json_decref(value);
        return -1;
    }
    key->value = value;
    key->sub = s;
    key->car = k;
    if (register_locked(m, key) != 0) {
        /* Out of memory: nobody can route it, so the server must not keep
         * it running on the carrier either. */
        key->car = NULL;
        key->value = NULL;
        queue_kill_locked(m, k, value);
        return -1;
    }
    settle_orphans_locked(m, key);
    return 0;
}

/* Queue a `kill` of `value` (stolen) on carrier `k`: a live query the server
 * started that nobody will own (killed meanwhile, or a statement the start
 * refused). Out of memory: it stays until the carrier closes (L4: carriers
 * are never lent to anyone else). */
static void queue_kill_locked(surpool__live_mgr *m, carrier *k, json_t *value)
{
    kill_job *j = surpool__calloc(1, sizeof(*j));
    if (j == NULL) {
        json_decref(value);
        return;
    }
    j->car = k;
    j->value = value;
    k->nkills++;
    surpool__queue_insert_tail(&m->kills, &j->link);
    pthread_cond_signal(&m->work_cv);
}

/* A kill job: `kill [id]` on its carrier if it is still up. */
static void run_kill_locked(surpool__live_mgr *m, kill_job *j, int64_t deadline)
{
    if (carrier_ok(j->car) && surpool__now_ns() < deadline) {
        json_t *params = json_pack("[O]", j->value);
        pthread_mutex_unlock(&m->mu);
        surpool_error kerr;
        if (params != NULL &&
            surpool__rpc(j->car->c, "kill", params, deadline, NULL, &kerr) != SURPOOL_OK)
            surpool__log(&m->p->logger, SURPOOL_LOG_DEBUG, "live: kill failed: %s",
                         kerr.message);
        json_decref(params);
        pthread_mutex_lock(&m->mu);
    }
    j->car->nkills--;
    json_decref(j->value);
    surpool__free(j);
}

/* The first start of a query a caller waits for. */
static void first_start_locked(surpool__live_mgr *m, surpool_live *s)
{
    surpool__queue_remove(&s->work_link);
    surpool_error *err = &s->start_err;
    surpool_err rc;
    carrier *k = carrier_get_locked(m, NULL, err);
    json_t *value = NULL;
    if (k == NULL)
        rc = err->code != SURPOOL_OK ? err->code : SURPOOL_ERR_CLOSED;
    else
        rc = send_start_locked(m, s, k, &value, err);
    if (rc == SURPOOL_OK && adopt_locked(m, s, &s->cur, k, value) != 0)
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
    if (rc == SURPOOL_OK) {
        s->state = SUB_ACTIVE;
        surpool__queue_insert_tail(&m->subs, &s->all_link);
    } else {
        settle_orphans_locked(m, NULL);
    }
    s->start_rc = rc;
    s->start_done = 1;
    pthread_cond_signal(&s->start_cv);
}

static void restart_pinned_locked(surpool__live_mgr *m, surpool_live *s);

/* Start a homeless query again (its carrier died). Pinned meanwhile: a kill
 * while the mutex is dropped (acquire, RPC) must not free it under us (L3). */
static void restart_locked(surpool__live_mgr *m, surpool_live *s)
{
    s->pinned++;
    restart_pinned_locked(m, s);
    s->pinned--;
    maybe_free_locked(s);
}

static void restart_pinned_locked(surpool__live_mgr *m, surpool_live *s)
{
    surpool__queue_remove(&s->work_link);
    surpool_error err;
    surpool__error_clear(&err);
    carrier *k = carrier_get_locked(m, NULL, &err);
    json_t *value = NULL;
    surpool_err rc = k != NULL ? send_start_locked(m, s, k, &value, &err) : err.code;
    if (rc == SURPOOL_OK && (s->killed || s->closed_queued)) {
        /* Killed meanwhile: undo on the server. */
        queue_kill_locked(m, k, value);
        settle_orphans_locked(m, NULL);
        return;
    }
    if (rc == SURPOOL_OK && adopt_locked(m, s, &s->cur, k, value) == 0) {
        s->state = SUB_ACTIVE;
        snprintf(s->resub_msg, sizeof(s->resub_msg),
                 "started again on another connection; changes in between may be missed");
        push_item_locked(m, s, ITEM_RESUB, NULL);
        m->backoff_ms = 0;
        s->refusals = 0;
        return;
    }
    settle_orphans_locked(m, NULL);
    if (s->killed || s->closed_queued)
        return;
    if (rc == SURPOOL_ERR_CLOSED) { /* surpool_pool_close(): nothing more to lend */
        close_locked(m, s, rc, "the pool was closed before it could be started again");
        return;
    }
    int refused = rc == SURPOOL_ERR_SERVER || rc == SURPOOL_ERR_INVALID_ARG ||
                  rc == SURPOOL_ERR_UNSUPPORTED;
    if (refused && ++s->refusals >= LIVE_REFUSALS_MAX) {
        /* The server will not take it any more (table gone, permissions):
         * a restarted server may need a moment (its schema restored), so
         * only after LIVE_REFUSALS_MAX refusals in a row, backed off. */
        char msg[sizeof(err.message) + 40];
        snprintf(msg, sizeof(msg), "could not be started again: %s", err.message);
        close_locked(m, s, rc, msg);
        return;
    }
    /* No connection yet (server down, pool busy), or refused: back off, as
     * the connect governor does, then try again. */
    const surpool_config *cfg = &m->p->cfg.pub;
    long b = m->backoff_ms == 0 ? cfg->reconnect_backoff_min_ms : m->backoff_ms * 2;
    if (b > cfg->reconnect_backoff_max_ms)
        b = cfg->reconnect_backoff_max_ms;
    if (b < 10)
        b = 10;
    m->backoff_ms = b;
    m->retry_at = surpool__now_ns() + surpool__ms_to_ns(b);
    surpool__queue_insert_head(&m->homeless, &s->work_link);
}

/* Move the queries of a carrier past max_lifetime_ms, one per call: start the
 * new one, then kill the old (a duplicate notification is possible, a gap is
 * not: the old id stays registered until its kill was answered). 1 if it did
 * something. */
static int move_pinned_locked(surpool__live_mgr *m, surpool_live *s, carrier *old);

static int move_one_locked(surpool__live_mgr *m, carrier *old)
{
    surpool__queue *q;
    surpool_live *s = NULL;
    SURPOOL__QUEUE_FOREACH(q, &m->subs)
    {
        surpool_live *c = SURPOOL__QUEUE_DATA(q, surpool_live, all_link);
        if (c->cur.registered && c->cur.car == old && !c->killed && !c->closed_queued &&
            !c->old.registered) {
            s = c;
            break;
        }
    }
    if (s == NULL)
        return 0;
    /* Pinned meanwhile: a kill while the mutex is dropped (acquire, RPCs)
     * must not free it under us (L3). */
    s->pinned++;
    m->move_error[0] = '\0';
    int did = move_pinned_locked(m, s, old);
    s->pinned--;
    maybe_free_locked(s);
    if (m->move_error[0] != '\0') {
        char why[sizeof(m->move_error)];
        surpool__strlcpy(why, m->move_error, sizeof(why));
        pthread_mutex_unlock(&m->mu);
        surpool__log(&m->p->logger, SURPOOL_LOG_INFO,
                     "live: moving a live query off a connection past max_lifetime_ms "
                     "failed (%s); it stays there until that connection dies",
                     why);
        pthread_mutex_lock(&m->mu);
    }
    return did;
}

static int move_pinned_locked(surpool__live_mgr *m, surpool_live *s, carrier *old)
{
    surpool_error err;
    surpool__error_clear(&err);
    carrier *k = carrier_get_locked(m, old, &err);
    json_t *value = NULL;
    surpool_err rc = k != NULL ? send_start_locked(m, s, k, &value, &err) : err.code;
    if (rc != SURPOOL_OK) {
        settle_orphans_locked(m, NULL);
        /* Logged by the caller, once the handle is unpinned and the mutex
         * can be dropped (L1: no user code under it). */
        surpool__strlcpy(m->move_error, err.message, sizeof(m->move_error));
        return 0;
    }
    if (s->killed || s->closed_queued || !s->cur.registered || s->cur.car != old) {
        /* Killed or moved meanwhile: the new one was started for nothing. */
        queue_kill_locked(m, k, value);
        settle_orphans_locked(m, NULL);
        return 1;
    }
    /* The old id moves to s->old (still routed), the new one takes s->cur:
     * one critical section, so no notification is routed in between. */
    int64_t now = surpool__now_ns();
    unregister_locked(m, &s->cur, now);
    s->old = s->cur;
    s->old.registered = 0;
    s->old.hnext = NULL;
    register_locked(m, &s->old); /* cannot fail: the table has room */
    memset(&s->cur, 0, sizeof(s->cur));
    if (adopt_locked(m, s, &s->cur, k, value) != 0) { /* out of memory: stay */
        unregister_locked(m, &s->old, now);
        s->cur = s->old;
        s->cur.registered = 0;
        register_locked(m, &s->cur);
        memset(&s->old, 0, sizeof(s->old));
        return 0;
    }
    /* Kill the old id; it stays routed until the kill was answered, so that
     * whatever the server sent on it before is delivered (L2's reasoning:
     * same socket, in order). Duplicates are possible, a gap is not. */
    json_t *params = json_pack("[O]", s->old.value);
    carrier *oc = s->old.car;
    pthread_mutex_unlock(&m->mu);
    if (params != NULL)
        surpool__rpc(oc->c, "kill", params, rpc_deadline(m->p), NULL, NULL);
    json_decref(params);
    pthread_mutex_lock(&m->mu);
    drop_key_locked(m, &s->old, 0, surpool__now_ns());
    return 1;
}

/* Dead carriers: their queries become homeless; the carrier is released
 * (outside the mutex). Also empty and moved-off carriers. 1 if it released. */
static int reap_locked(surpool__live_mgr *m, int64_t now)
{
    surpool__queue *q, *n;
    SURPOOL__QUEUE_FOREACH_SAFE(q, n, &m->carriers)
    {
        carrier *k = SURPOOL__QUEUE_DATA(q, carrier, link);
        int ok = carrier_ok(k);
        if (ok && k->nkeys == 0 && k->nkills == 0 &&
            (k->retiring || (m->stopping || now - k->empty_since >= EMPTY_CARRIER_NS))) {
            /* nothing on it */
        } else if (ok) {
            continue;
        }
        if (!ok) {
            surpool__queue *sq;
            SURPOOL__QUEUE_FOREACH(sq, &m->subs)
            {
                surpool_live *s = SURPOOL__QUEUE_DATA(sq, surpool_live, all_link);
                if (s->old.registered && s->old.car == k)
                    drop_key_locked(m, &s->old, 0, now);
                if (s->cur.registered && s->cur.car == k) {
                    drop_key_locked(m, &s->cur, 0, now);
                    if (!s->killed && !s->closed_queued) {
                        s->state = SUB_HOMELESS;
                        surpool__queue_insert_tail(&m->homeless, &s->work_link);
                    }
                }
            }
            surpool__queue *kq, *kn;
            SURPOOL__QUEUE_FOREACH_SAFE(kq, kn, &m->kills)
            {
                kill_job *j = SURPOOL__QUEUE_DATA(kq, kill_job, link);
                if (j->car == k) { /* its socket is gone: so is the query */
                    surpool__queue_remove(kq);
                    json_decref(j->value);
                    surpool__free(j);
                    k->nkills--;
                }
            }
            m->retry_at = 0; /* a new carrier may already be there */
        }
        if (k->nkeys != 0 || k->nkills != 0)
            continue; /* cannot happen once dead: keys dropped above */
        surpool__queue_remove(&k->link);
        pthread_mutex_unlock(&m->mu);
        carrier_release(k->c);
        surpool__free(k);
        pthread_mutex_lock(&m->mu);
        return 1;
    }
    return 0;
}

/* Destroy: fail waiting starts, kill every query (bounded), release. */
static void worker_stop_locked(surpool__live_mgr *m)
{
    surpool__queue *q;
    while ((q = surpool__queue_head(&m->starts)) != NULL) {
        surpool_live *s = SURPOOL__QUEUE_DATA(q, surpool_live, work_link);
        surpool__queue_remove(q);
        s->start_rc = surpool__seterr(&s->start_err, SURPOOL_ERR_CLOSED, "pool is closed");
        s->start_done = 1;
        pthread_cond_signal(&s->start_cv);
    }
    int64_t now = surpool__now_ns();
    SURPOOL__QUEUE_FOREACH(q, &m->subs)
    {
        surpool_live *s = SURPOOL__QUEUE_DATA(q, surpool_live, all_link);
        drop_key_locked(m, &s->old, 0, now);
        drop_key_locked(m, &s->cur, 1, now);
        if (surpool__queue_linked(&s->work_link))
            surpool__queue_remove(&s->work_link);
    }
    int64_t deadline = surpool__deadline_after_ms(SHUTDOWN_KILL_MS);
    if (rpc_deadline(m->p) < deadline)
        deadline = rpc_deadline(m->p);
    while ((q = surpool__queue_head(&m->kills)) != NULL) {
        surpool__queue_remove(q);
        run_kill_locked(m, SURPOOL__QUEUE_DATA(q, kill_job, link), deadline);
    }
    while ((q = surpool__queue_head(&m->carriers)) != NULL) {
        carrier *k = SURPOOL__QUEUE_DATA(q, carrier, link);
        surpool__queue_remove(q);
        pthread_mutex_unlock(&m->mu);
        carrier_release(k->c);
        surpool__free(k);
        pthread_mutex_lock(&m->mu);
    }
    settle_orphans_locked(m, NULL);
}

static void *worker_main(void *arg)
{
    surpool__live_mgr *m = arg;
    pthread_mutex_lock(&m->mu);
    while (!m->stopping) {
        int64_t now = surpool__now_ns();
        m->died = 0;
        if (reap_locked(m, now))
            continue;
        surpool__queue *q = surpool__queue_head(&m->kills);
        if (q != NULL) {
            surpool__queue_remove(q);
            run_kill_locked(m, SURPOOL__QUEUE_DATA(q, kill_job, link), rpc_deadline(m->p));
            continue;
        }
        if ((q = surpool__queue_head(&m->starts)) != NULL) {
            first_start_locked(m, SURPOOL__QUEUE_DATA(q, surpool_live, work_link));
            continue;
        }
        if ((q = surpool__queue_head(&m->homeless)) != NULL && now >= m->retry_at) {
            restart_locked(m, SURPOOL__QUEUE_DATA(q, surpool_live, work_link));
            continue;
        }
        /* Lifetime: move queries off carriers past max_lifetime_ms. */
        int64_t wake = now + 1000 * SURPOOL__NS_PER_MS;
        int moved = 0;
        SURPOOL__QUEUE_FOREACH(q, &m->carriers)
        {
            carrier *k = SURPOOL__QUEUE_DATA(q, carrier, link);
            if (!k->retiring && surpool__conn_expired(k->c, now))
                k->retiring = 1;
            if (k->retiring && k->nkeys > 0 && carrier_ok(k)) {
                moved = move_one_locked(m, k);
                break;
            }
            if (k->c->expires_ns < wake)
                wake = k->c->expires_ns;
        }
        if (moved)
            continue;
        if (!surpool__queue_empty(&m->homeless) && m->retry_at < wake)
            wake = m->retry_at;
        if (!m->died && surpool__queue_empty(&m->kills) && surpool__queue_empty(&m->starts))
            surpool__cond_wait_until(&m->work_cv, &m->mu, wake);
    }
    worker_stop_locked(m);
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* Lifecycle                                                                  */
/* ------------------------------------------------------------------------- */

surpool_err surpool__live_create(surpool_pool *p, surpool__live_mgr **out)
{
    surpool__live_mgr *m = surpool__calloc(1, sizeof(*m));
    if (m == NULL)
        return SURPOOL_ERR_NOMEM;
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        surpool__free(m);
        return SURPOOL_ERR_NOMEM;
    }
    if (surpool__cond_init(&m->work_cv) != 0) {
        pthread_mutex_destroy(&m->mu);
        surpool__free(m);
        return SURPOOL_ERR_NOMEM;
    }
    if (surpool__cond_init(&m->ready_cv) != 0) {
        pthread_cond_destroy(&m->work_cv);
        pthread_mutex_destroy(&m->mu);
        surpool__free(m);
        return SURPOOL_ERR_NOMEM;
    }
    m->p = p;
    const surpool_config *cfg = &p->cfg.pub;
    m->queue_max = cfg->live_queue_max > 0 ? (size_t)cfg->live_queue_max : DEFAULT_QUEUE_MAX;
    m->per_conn =
        cfg->live_max_per_connection > 0 ? cfg->live_max_per_connection : DEFAULT_PER_CONN;
    surpool__queue_init(&m->subs);
    surpool__queue_init(&m->starts);
    surpool__queue_init(&m->homeless);
    surpool__queue_init(&m->carriers);
    surpool__queue_init(&m->kills);
    surpool__queue_init(&m->ready);
    surpool__queue_init(&m->orphans);
    surpool__queue_init(&m->grave);
    *out = m;
    return SURPOOL_OK;
}

void surpool__live_shutdown(surpool__live_mgr *m)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->mu);
    int started = m->started;
    m->stopping = 1;
    pthread_cond_signal(&m->work_cv);
    pthread_mutex_unlock(&m->mu);
    if (!started)
        return;
    pthread_join(m->worker, NULL);
    pthread_mutex_lock(&m->mu);
    surpool__queue *q;
    SURPOOL__QUEUE_FOREACH(q, &m->subs)
    {
        surpool_live *s = SURPOOL__QUEUE_DATA(q, surpool_live, all_link);
        close_locked(m, s, SURPOOL_ERR_CLOSED, "the pool was destroyed");
    }
    m->deliver_stop = 1;
    pthread_cond_signal(&m->ready_cv);
    pthread_mutex_unlock(&m->mu);
    pthread_join(m->deliverer, NULL);
    /* Every handle got its CLOSED event; destroy frees the ones not killed. */
    while ((q = surpool__queue_head(&m->subs)) != NULL) {
        surpool__queue_remove(q);
        free_sub(SURPOOL__QUEUE_DATA(q, surpool_live, all_link));
    }
    while ((q = surpool__queue_head(&m->grave)) != NULL) {
        surpool__queue_remove(q);
        free_sub(SURPOOL__QUEUE_DATA(q, surpool_live, all_link));
    }
    m->ngrave = 0;
    m->started = 0;
}

void surpool__live_free(surpool__live_mgr *m)
{
    if (m == NULL)
        return;
    settle_orphans_locked(m, NULL); /* none after shutdown; cheap */
    surpool__free(m->buckets);
    pthread_cond_destroy(&m->ready_cv);
    pthread_cond_destroy(&m->work_cv);
    pthread_mutex_destroy(&m->mu);
    surpool__free(m);
}

const void *surpool__live_starting_conn(surpool__live_mgr *m)
{
    pthread_mutex_lock(&m->mu);
    const void *c = m->start_conn;
    pthread_mutex_unlock(&m->mu);
    return c;
}

size_t surpool__live_orphans(surpool__live_mgr *m)
{
    pthread_mutex_lock(&m->mu);
    size_t n = m->norphans;
    pthread_mutex_unlock(&m->mu);
    return n;
}

void surpool__live_counts(surpool_live *s, size_t *queued, uint64_t *dropped)
{
    pthread_mutex_lock(&s->m->mu);
    *queued = s->nnotes;
    *dropped = s->dropped_total;
    pthread_mutex_unlock(&s->m->mu);
}

/* ------------------------------------------------------------------------- */
/* Public API                                                                 */
/* ------------------------------------------------------------------------- */

void surpool_live_options_init(surpool_live_options *opts)
{
    if (opts != NULL)
        memset(opts, 0, sizeof(*opts));
}

/* 1 when the SurrealQL text's first keyword is LIVE (after blanks and
 * comments: `-- `, `//` and `#` to the end of the line, block comments).
 * Checked before anything is sent, so that `CREATE ...` or `RETURN <uuid>` is
 * refused without running: only the server can tell the rest (one statement,
 * a LIVE SELECT), after running it. */
static int starts_with_live(const char *p)
{
    for (;;) {
        while (*p != '\0' && isspace((unsigned char)*p))
            p++;
        if (*p == '#' || (p[0] == '-' && p[1] == '-') || (p[0] == '/' && p[1] == '/')) {
            while (*p != '\0' && *p != '\n')
                p++;
        } else if (p[0] == '/' && p[1] == '*') {
            const char *e = strstr(p + 2, "*/");
            if (e == NULL)
                return 0;
            p = e + 2;
        } else {
            break;
        }
    }
    if (!surpool__ascii_ncaseeq(p, "LIVE", 4))
        return 0;
    unsigned char c = (unsigned char)p[4];
    return c != '_' && !isalnum(c) && c != '\0';
}

static surpool_err check_options(const surpool_live_options *o, surpool_error *err)
{
    if (o == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "live options are required");
    if ((o->table == NULL) == (o->sql == NULL))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "set exactly one of live options table and sql");
    if (o->table != NULL && o->table[0] == '\0')
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "live options table is empty");
    if (o->sql != NULL && o->sql[0] == '\0')
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "live options sql is empty");
    if (!surpool__utf8_valid_str(o->table) || !surpool__utf8_valid_str(o->sql))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "live options table and sql must be valid UTF-8");
    if (o->sql != NULL && !starts_with_live(o->sql))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "live options sql must be one LIVE SELECT statement (it "
                               "does not start with LIVE; nothing was sent)");
    if (o->sql != NULL && o->diff)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "live options diff applies to table; write LIVE SELECT DIFF "
                               "in sql instead");
    if (o->vars != NULL && o->sql == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "live options vars apply to sql only");
    if (o->vars != NULL && !json_is_object(o->vars))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "live options vars must be a JSON object");
    if (o->queue_max < 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "live options queue_max must be >= 0");
    return SURPOOL_OK;
}

/* Start the two threads (m->mu held). 0 or -1. */
static int start_threads_locked(surpool__live_mgr *m)
{
    if (m->started)
        return 0;
    if (pthread_create(&m->worker, NULL, worker_main, m) != 0)
        return -1;
    if (pthread_create(&m->deliverer, NULL, deliver_main, m) != 0) {
        m->stopping = 1;
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->worker, NULL);
        pthread_mutex_lock(&m->mu);
        m->stopping = 0;
        return -1;
    }
    m->started = 1;
    return 0;
}

surpool_err surpool_live_start(surpool_pool *pool, const surpool_live_options *opts,
                               surpool_live_fn cb, void *userdata, surpool_live **out,
                               surpool_error *err)
{
    if (pool == NULL || cb == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "pool, cb and out are required");
    if (surpool__in_result_callback())
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "surpool_live_start called from inside a surpool_result_fn");
    surpool_err rc = check_options(opts, err);
    if (rc != SURPOOL_OK)
        return rc;
    surpool__live_mgr *m = pool->live;
    surpool_live *s = surpool__calloc(1, sizeof(*s));
    if (s == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
    if (surpool__cond_init(&s->start_cv) != 0) {
        surpool__free(s);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
    }
    s->m = m;
    s->cb = cb;
    s->userdata = userdata;
    s->diff = opts->diff != 0;
    s->queue_max = opts->queue_max > 0 ? (size_t)opts->queue_max : m->queue_max;
    s->table = surpool__strdup(opts->table);
    s->sql = surpool__strdup(opts->sql);
    s->vars = opts->vars != NULL ? json_deep_copy(opts->vars) : NULL;
    surpool__queue_init(&s->all_link);
    surpool__queue_init(&s->work_link);
    surpool__queue_init(&s->items);
    surpool__queue_init(&s->ready_link);
    surpool__queue_init(&s->resub_spare.link);
    surpool__error_clear(&s->start_err);
    if ((opts->table != NULL && s->table == NULL) || (opts->sql != NULL && s->sql == NULL) ||
        (opts->vars != NULL && s->vars == NULL)) {
        free_sub(s);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
    }

    pthread_mutex_lock(&m->mu);
    if (m->stopping) {
        pthread_mutex_unlock(&m->mu);
        free_sub(s);
        return surpool__seterr(err, SURPOOL_ERR_CLOSED, "pool is closed");
    }
    if (start_threads_locked(m) != 0) {
        pthread_mutex_unlock(&m->mu);
        free_sub(s);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot start the live query threads");
    }
    s->state = SUB_STARTING;
    surpool__queue_insert_tail(&m->starts, &s->work_link);
    pthread_cond_signal(&m->work_cv);
    while (!s->start_done)
        pthread_cond_wait(&s->start_cv, &m->mu); /* the worker's steps are bounded */
    rc = s->start_rc;
    pthread_mutex_unlock(&m->mu);
    if (rc != SURPOOL_OK) {
        surpool__error_copy(err, &s->start_err);
        if (err != NULL)
            err->code = rc;
        free_sub(s);
        return rc;
    }
    *out = s;
    return SURPOOL_OK;
}

void surpool_live_kill(surpool_live *s)
{
    if (s == NULL)
        return;
    surpool__live_mgr *m = s->m;
    pthread_mutex_lock(&m->mu);
    if (s->killed) {
        pthread_mutex_unlock(&m->mu);
        return;
    }
    s->killed = 1;
    int64_t now = surpool__now_ns();
    drop_key_locked(m, &s->old, 0, now); /* its kill is in flight already */
    drop_key_locked(m, &s->cur, 1, now);
    if (surpool__queue_linked(&s->work_link))
        surpool__queue_remove(&s->work_link);
    /* No notification after kill returns: drop what waits. The frames are
     * freed once the mutex is let go (up to queue_max of them, which the
     * transport's thread would wait for in surpool__live_notify); the spare
     * lives in the handle, has no frame and is only unlinked. */
    surpool__queue dropped;
    surpool__queue_init(&dropped);
    if (surpool__queue_linked(&s->resub_spare.link))
        surpool__queue_remove(&s->resub_spare.link);
    surpool__queue_move_tail(&dropped, &s->items);
    s->nnotes = 0;
    s->gap_pending = 0;
    close_locked(m, s, SURPOOL_OK, "killed");
    maybe_free_locked(s);
    pthread_mutex_unlock(&m->mu);
    surpool__queue *q;
    while ((q = surpool__queue_head(&dropped)) != NULL) {
        surpool__queue_remove(q);
        item_free(SURPOOL__QUEUE_DATA(q, live_item, link));
    }
}
