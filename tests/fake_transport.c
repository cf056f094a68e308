/*
 * Fake transport: implements every rule of src/transport.h in memory, with
 * knobs for latency, connect failures and broken connections.
 *
 * Requests with no call latency complete inside submit(). With latency (or no
 * reply at all) they go in flight in their connection's request table
 * (src/reqtable.h, the one the real transport uses), and the scripted reply goes
 * on a list of replies due later, as if a server had sent it. One timer thread
 * per transport delivers due replies by id and expires deadlines, so close(),
 * kill, cancel and late replies follow the real transport's bookkeeping.
 * Replies are handed over as raw frames in the request's wire format (JSON text
 * or CBOR), as the real transport does, so the pool decodes them itself.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cbor_codec.h"
#include "codec.h"
#include "fake_transport.h"
#include "reqtable.h"
#include "thread.h"

/* A reply the fake server will deliver at due_ns (to whatever is then in flight
 * with that id). */
typedef struct scripted {
    surpool__tconn *conn;
    int64_t id;
    int64_t due_ns;
    json_t *reply; /* a new reference, owned here */
    struct scripted *next;
} scripted;

struct surpool__transport {
    fake_settings *s;
    const surpool__url *url; /* tconfig.url: the default endpoint */
    /* Guards everything below and every connection's table and links. Held while
     * on_dead runs (rule 6 of transport.h); never while done() runs. A leaf
     * otherwise: nothing else of ours is taken under it. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t timer;
    int stop;
    surpool__tconn *conns; /* all open connections */
    scripted *replies;     /* replies not delivered yet, unordered */
};

struct surpool__tconn {
    surpool__transport *t;
    surpool__tconn *next, *prev;
    surpool__tconn_events ev;
    atomic_int dead;
    int calls;
    int index;            /* 1-based order of successful opens */
    int port;             /* the endpoint's port (fake_kill_port) */
    surpool__reqtable rt; /* requests waiting for their reply (t->mu) */
};

void fake_settings_init(fake_settings *s)
{
    memset(s, 0, sizeof(*s));
}

json_t *fake_default_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    (void)ud;
    if (strcmp(method, "ping") == 0 || strcmp(method, "let") == 0 ||
        strcmp(method, "unset") == 0 || strcmp(method, "reset") == 0 ||
        strcmp(method, "invalidate") == 0 || strcmp(method, "authenticate") == 0)
        return json_pack("{s:I, s:n}", "id", id, "result");
    if (strcmp(method, "signin") == 0)
        return json_pack("{s:I, s:s}", "id", id, "result", "fake-token");
    if (strcmp(method, "use") == 0)
        return json_pack("{s:I, s:{}}", "id", id, "result");
    if (strcmp(method, "query") == 0) {
        json_t *sql = json_array_get(params, 0);
        return json_pack("{s:I, s:[{s:s, s:O, s:s}]}", "id", id, "result", "status", "OK",
                         "result", sql != NULL ? sql : json_null(), "time", "1\xc2\xb5s");
    }
    if (strcmp(method, "fail") == 0)
        return json_pack("{s:I, s:{s:i, s:s, s:s}}", "id", id, "error", "code", -32000,
                         "message", "deliberate failure", "kind", "Internal");
    if (strcmp(method, "authfail") == 0)
        return json_pack("{s:I, s:{s:i, s:s}}", "id", id, "error", "code", -32002, "message",
                         "There was a problem with authentication");
    if (strcmp(method, "noreply") == 0)
        return NULL;
    return json_pack("{s:I, s:{s:i, s:s}}", "id", id, "error", "code", -32601, "message",
                     "Method not found");
}

static void sleep_ns(int64_t ns)
{
    if (ns <= 0)
        return;
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* The reply as the frame a server would send, in the request's wire format
 * (the payload of a JSON request starts with '{'). 0, or -1 (reply kept as a
 * tree) when it cannot be encoded. Takes over `reply` on success. */
/* A reply fake_submit() chose to corrupt carries this member until encoded. */
#define CORRUPT_KEY "fake: corrupt"

static int to_frame(surpool__treq *req, json_t *reply)
{
    int corrupt = json_object_get(reply, CORRUPT_KEY) != NULL;
    json_object_del(reply, CORRUPT_KEY);
    char *buf = NULL;
    size_t len = 0;
    if (req->buf[fake_transport_ops.headroom] == '{') {
        char *text = json_dumps(reply, JSON_COMPACT | JSON_ENCODE_ANY);
        if (text == NULL)
            return -1;
        len = strlen(text);
        buf = surpool__malloc(len + 1);
        if (buf != NULL)
            memcpy(buf, text, len + 1);
        free(text);
        req->frame_cbor = 0;
    } else {
        if (surpool__cbor_encode_value(reply, 0, &buf, &len, NULL) != SURPOOL_OK)
            return -1;
        req->frame_cbor = 1;
    }
    if (buf == NULL)
        return -1;
    req->frame = buf;
    req->frame_len = len;
    if (corrupt && req->frame_len > 0)
        buf[--req->frame_len] = '\0'; /* truncated: the id is there, the rest breaks */
    json_decref(reply);
    return 0;
}

/* Complete a request: set status/reply, then done(). Called with no lock. */
static void complete(surpool__treq *req, surpool_err status, json_t *reply, const char *msg)
{
    req->status = status;
    req->reply = NULL;
    if (reply != NULL && to_frame(req, reply) != 0)
        req->reply = reply;
    snprintf(req->message, sizeof(req->message), "%s", msg != NULL ? msg : "");
    req->done(req);
}

/* Unlink and return the reply due first, if it is due by `now`. */
static scripted *take_due_reply_locked(surpool__transport *t, int64_t now)
{
    scripted **best = NULL;
    for (scripted **pp = &t->replies; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->due_ns <= now && (best == NULL || (*pp)->due_ns < (*best)->due_ns))
            best = pp;
    if (best == NULL)
        return NULL;
    scripted *sr = *best;
    *best = sr->next;
    return sr;
}

/* Deliver one reply (no lock held): to its request if that is still in flight
 * (`r`), else dropped, as the real transport drops a late reply. A reply due
 * after the request's deadline is a timeout even if this thread runs late. */
static void deliver(scripted *sr, surpool__treq *r)
{
    if (r == NULL)
        json_decref(sr->reply);
    else if (sr->due_ns <= r->deadline_ns)
        complete(r, SURPOOL_OK, sr->reply, NULL);
    else {
        json_decref(sr->reply);
        complete(r, SURPOOL_ERR_REQUEST_TIMEOUT, NULL,
                 "request timed out waiting for the reply");
    }
    free(sr);
}

static void *timer_main(void *arg)
{
    surpool__transport *t = arg;
    pthread_mutex_lock(&t->mu);
    while (!t->stop) {
        int64_t now = surpool__now_ns();
        /* Replies first: one due before its request's deadline is an answer. */
        scripted *sr = take_due_reply_locked(t, now);
        if (sr != NULL) {
            surpool__treq *r = surpool__reqtable_take(&sr->conn->rt, sr->id);
            pthread_mutex_unlock(&t->mu);
            deliver(sr, r);
            pthread_mutex_lock(&t->mu);
            continue;
        }
        surpool__reqdone d;
        surpool__reqdone_init(&d);
        int64_t next = INT64_MAX;
        for (surpool__tconn *c = t->conns; c != NULL; c = c->next) {
            int64_t e = surpool__reqtable_expire(&c->rt, now, &d);
            next = e < next ? e : next;
        }
        if (!surpool__queue_empty(&d.head)) {
            pthread_mutex_unlock(&t->mu);
            surpool__reqdone_run(&d);
            pthread_mutex_lock(&t->mu);
            continue;
        }
        for (scripted *p = t->replies; p != NULL; p = p->next)
            next = p->due_ns < next ? p->due_ns : next;
        surpool__cond_wait_until(&t->cv, &t->mu, next);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* Forget the undelivered replies of `c` (all when c == NULL). */
static void drop_replies_locked(surpool__transport *t, surpool__tconn *c)
{
    scripted **pp = &t->replies;
    while (*pp != NULL) {
        scripted *sr = *pp;
        if (c == NULL || sr->conn == c) {
            *pp = sr->next;
            json_decref(sr->reply);
            free(sr);
        } else {
            pp = &sr->next;
        }
    }
}

static surpool_err fake_create(const surpool__tconfig *cfg, void *arg, surpool__transport **out,
                               surpool_error *err)
{
    surpool__transport *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "fake: out of memory");
    t->s = arg;
    t->url = cfg != NULL ? cfg->url : NULL;
    pthread_mutex_init(&t->mu, NULL);
    surpool__cond_init(&t->cv);
    if (pthread_create(&t->timer, NULL, timer_main, t) != 0) {
        free(t);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "fake: no thread");
    }
    *out = t;
    return SURPOOL_OK;
}

/* Mark `c` dead, fire its on_dead (under t->mu, so that close() cannot free it
 * while the event runs: rule 6 of transport.h) and move its requests to `d`
 * (failed with `code` and `fail_msg`) for a run once the lock is released. */
static void kill_locked(surpool__tconn *c, surpool_err code, const char *why,
                        surpool__reqdone *d, const char *fail_msg)
{
    surpool__reqtable_fail_all(&c->rt, d, code, fail_msg);
    if (!atomic_exchange(&c->dead, 1) && c->ev.on_dead != NULL)
        c->ev.on_dead(c->ev.userdata, code, why);
}

static void fake_destroy(surpool__transport *t)
{
    surpool__reqdone left;
    surpool__reqdone_init(&left);
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    for (surpool__tconn *c = t->conns; c != NULL; c = c->next)
        surpool__reqtable_fail_all(&c->rt, &left, SURPOOL_ERR_DISCONNECTED,
                                   "fake: transport destroyed");
    drop_replies_locked(t, NULL);
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->timer, NULL);
    surpool__reqdone_run(&left);
    while (t->conns != NULL) {
        surpool__tconn *c = t->conns;
        t->conns = c->next;
        atomic_fetch_sub(&t->s->open_now, 1);
        if (c->port > 0)
            atomic_fetch_sub(&t->s->port_now[c->port], 1);
        surpool__reqtable_free(&c->rt);
        free(c);
    }
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

static surpool_err fake_open(surpool__transport *t, const surpool__url *ep, int64_t deadline_ns,
                             const surpool__tconn_events *ev, surpool__tconn **out,
                             surpool_error *err)
{
    fake_settings *s = t->s;
    if (ep == NULL)
        ep = t->url;
    int port = ep != NULL && ep->port > 0 && ep->port < FAKE_MAX_PORTS ? ep->port : 0;
    pthread_mutex_lock(&t->mu);
    if (ep != NULL && ep->host != NULL) {
        strncpy(s->last_host, ep->host, sizeof(s->last_host) - 1);
        s->last_host[sizeof(s->last_host) - 1] = '\0';
    }
    pthread_mutex_unlock(&t->mu);
    int n = atomic_fetch_add(&s->opens, 1) + 1;
    int64_t lat = (int64_t)atomic_load(&s->connect_latency_ms) * 1000000;
    int64_t now = surpool__now_ns();
    if (now + lat > deadline_ns) {
        sleep_ns(deadline_ns - now);
        return surpool__seterr(err, SURPOOL_ERR_TIMEOUT, "fake: connect timed out");
    }
    sleep_ns(lat);
    int every = atomic_load(&s->fail_connect_every);
    int fail_now = atomic_load(&s->fail_connects);
    while (fail_now > 0 &&
           !atomic_compare_exchange_weak(&s->fail_connects, &fail_now, fail_now - 1))
        ;
    if (fail_now > 0 || (every > 0 && n % every == 0))
        return surpool__seterr(err, SURPOOL_ERR_CONNECT, "fake: connection refused");
    if (port > 0 && atomic_load(&s->port_down[port]))
        return surpool__seterr(err, SURPOOL_ERR_CONNECT, "fake: connection refused by port %d",
                               port);

    surpool__tconn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "fake: out of memory");
    c->t = t;
    c->ev = *ev;
    c->port = port;
    atomic_init(&c->dead, 0);
    surpool__reqtable_init(&c->rt);
    pthread_mutex_lock(&t->mu);
    c->index = atomic_fetch_add(&s->open_ok, 1) + 1;
    c->next = t->conns;
    if (t->conns != NULL)
        t->conns->prev = c;
    t->conns = c;
    pthread_mutex_unlock(&t->mu);
    atomic_fetch_add(&s->open_now, 1);
    if (port > 0) {
        atomic_fetch_add(&s->port_opens[port], 1);
        atomic_fetch_add(&s->port_now[port], 1);
    }
    *out = c;
    return SURPOOL_OK;
}

static surpool_err fake_submit(surpool__tconn *c, surpool__treq *req)
{
    surpool__transport *t = c->t;
    fake_settings *s = t->s;
    if (atomic_load(&c->dead))
        return SURPOOL_ERR_DISCONNECTED;
    req->tstate = SURPOOL__TREQ_NONE; /* until it goes in flight below */
    int nth = atomic_fetch_add(&s->calls, 1) + 1;
    if (c->index > 0 && c->index < FAKE_MAX_CONNS)
        atomic_fetch_add(&s->conn_calls[c->index], 1);
    int drop = atomic_load(&s->drop_every);
    if (drop > 0 && nth % drop == 0) {
        atomic_fetch_add(&s->drops, 1);
        surpool__reqdone mine;
        surpool__reqdone_init(&mine);
        pthread_mutex_lock(&t->mu);
        kill_locked(c, SURPOOL_ERR_DISCONNECTED, "fake: connection dropped", &mine,
                    "fake: connection dropped");
        pthread_mutex_unlock(&t->mu);
        surpool__reqdone_run(&mine);
        complete(req, SURPOOL_ERR_DISCONNECTED, NULL, "fake: connection dropped");
        return SURPOOL_OK;
    }

    int brk = atomic_load(&s->break_after_calls);
    pthread_mutex_lock(&t->mu);
    int calls = ++c->calls;
    pthread_mutex_unlock(&t->mu);
    if (brk > 0 && calls > brk) {
        atomic_store(&c->dead, 1);
        complete(req, SURPOOL_ERR_DISCONNECTED, NULL, "fake: connection broke");
        return SURPOOL_OK;
    }

    /* Requests come in the pool's wire format: JSON text or a CBOR map. */
    json_error_t jerr;
    const char *payload = req->buf + fake_transport_ops.headroom;
    json_t *env = NULL;
    if (req->len > 0 && payload[0] == '{')
        env = json_loadb(payload, req->len, 0, &jerr);
    else if (surpool__cbor_decode_value((const unsigned char *)payload, req->len, &env, NULL) !=
             SURPOOL_OK)
        env = NULL;
    const char *method = json_string_value(json_object_get(env, "method"));
    json_int_t id = json_integer_value(json_object_get(env, "id"));
    if (method == NULL || id != req->id) {
        json_decref(env);
        complete(req, SURPOOL_ERR_PROTOCOL, NULL, "fake: bad request envelope");
        return SURPOOL_OK;
    }
    fake_responder_fn fn = s->responder != NULL ? s->responder : fake_default_responder;
    json_t *reply = fn(s->responder_ud, id, method, json_object_get(env, "params"));
    json_decref(env);
    int left = atomic_load(&s->corrupt_replies);
    while (reply != NULL && left > 0 &&
           !atomic_compare_exchange_weak(&s->corrupt_replies, &left, left - 1)) {
    }
    if (reply != NULL && left > 0)
        json_object_set_new(reply, CORRUPT_KEY, json_true());

    int lat_us = atomic_load(&s->call_latency_us);
    if (lat_us == 0 && reply != NULL) {
        complete(req, SURPOOL_OK, reply, NULL);
        return SURPOOL_OK;
    }
    scripted *sr = NULL;
    if (reply != NULL) {
        if ((sr = calloc(1, sizeof(*sr))) == NULL) {
            json_decref(reply);
            return SURPOOL_ERR_NOMEM;
        }
        sr->conn = c;
        sr->id = id;
        sr->reply = reply;
        sr->due_ns = surpool__now_ns() + (int64_t)lat_us * 1000;
    }
    pthread_mutex_lock(&t->mu);
    if (surpool__reqtable_reserve(&c->rt) != 0) {
        pthread_mutex_unlock(&t->mu);
        if (sr != NULL)
            json_decref(sr->reply);
        free(sr);
        return SURPOOL_ERR_NOMEM;
    }
    /* Sent at once: the request is in flight until its reply, deadline or close. */
    surpool__reqtable_queue(&c->rt, req);
    surpool__reqtable_send_next(&c->rt);
    if (sr != NULL) {
        sr->next = t->replies;
        t->replies = sr;
    }
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return SURPOOL_OK;
}

static int fake_cancel(surpool__tconn *c, surpool__treq *req)
{
    surpool__transport *t = c->t;
    /* A scripted reply stays listed and is dropped when it comes, like a late one. */
    pthread_mutex_lock(&t->mu);
    int removed = surpool__reqtable_cancel(&c->rt, req);
    pthread_mutex_unlock(&t->mu);
    return removed;
}

static int fake_alive(surpool__tconn *c)
{
    return !atomic_load(&c->dead);
}

static void fake_close(surpool__tconn *c)
{
    surpool__transport *t = c->t;
    surpool__reqdone mine;
    surpool__reqdone_init(&mine);
    pthread_mutex_lock(&t->mu);
    surpool__reqtable_fail_all(&c->rt, &mine, SURPOOL_ERR_DISCONNECTED,
                               "fake: connection closed");
    drop_replies_locked(t, c);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        t->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&t->mu);
    surpool__reqdone_run(&mine);
    atomic_fetch_sub(&t->s->open_now, 1);
    if (c->port > 0)
        atomic_fetch_sub(&t->s->port_now[c->port], 1);
    surpool__reqtable_free(&c->rt);
    free(c);
}

/* Contract 11, at once: the fake has no thread of its own to defer it to. */
static void fake_fail(surpool__tconn *c, surpool_err code, const char *msg)
{
    surpool__transport *t = c->t;
    surpool__reqdone mine;
    surpool__reqdone_init(&mine);
    pthread_mutex_lock(&t->mu);
    if (!atomic_load(&c->dead))
        kill_locked(c, code, msg, &mine, msg);
    pthread_mutex_unlock(&t->mu);
    surpool__reqdone_run(&mine);
}

void fake_kill_all(surpool__transport *t)
{
    surpool__reqdone all;
    surpool__reqdone_init(&all);
    pthread_mutex_lock(&t->mu);
    /* on_dead runs under our lock so that close() (which takes it) cannot
     * free a connection while its event runs: rule 6 of transport.h. */
    for (surpool__tconn *c = t->conns; c != NULL; c = c->next)
        kill_locked(c, SURPOOL_ERR_DISCONNECTED, "fake: killed", &all,
                    "fake: server went away");
    pthread_mutex_unlock(&t->mu);
    surpool__reqdone_run(&all);
}

int fake_kill_conn(surpool__transport *t, int index)
{
    surpool__reqdone mine;
    surpool__reqdone_init(&mine);
    pthread_mutex_lock(&t->mu);
    surpool__tconn *c = t->conns;
    while (c != NULL && c->index != index)
        c = c->next;
    int alive = c != NULL && !atomic_load(&c->dead);
    if (c != NULL)
        kill_locked(c, SURPOOL_ERR_DISCONNECTED, "fake: killed", &mine,
                    "fake: connection killed");
    pthread_mutex_unlock(&t->mu);
    surpool__reqdone_run(&mine);
    return alive;
}

int fake_kill_port(surpool__transport *t, int port)
{
    surpool__reqdone all;
    surpool__reqdone_init(&all);
    int n = 0;
    pthread_mutex_lock(&t->mu);
    for (surpool__tconn *c = t->conns; c != NULL; c = c->next) {
        if (c->port != port || atomic_load(&c->dead))
            continue;
        kill_locked(c, SURPOOL_ERR_DISCONNECTED, "fake: node killed", &all,
                    "fake: node went away");
        n++;
    }
    pthread_mutex_unlock(&t->mu);
    surpool__reqdone_run(&all);
    return n;
}

const surpool__transport_ops fake_transport_ops = {
    .name = "fake",
    .headroom = 16,
    .create = fake_create,
    .destroy = fake_destroy,
    .open = fake_open,
    .submit = fake_submit,
    .cancel = fake_cancel,
    .alive = fake_alive,
    .close = fake_close,
    .fail = fake_fail,
};
