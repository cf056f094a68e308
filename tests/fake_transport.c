/*
 * Fake transport: implements every rule of src/transport.h in memory, with
 * knobs for latency, connect failures and broken connections.
 *
 * Requests with no call latency complete inside submit(). With latency they go
 * on a timer list served by one thread per transport. Every request sits on its
 * connection's pending list until it completes, so close() and kill can fail
 * exactly the ones still outstanding.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cbor_codec.h"
#include "codec.h"
#include "fake_transport.h"

typedef struct pending {
    surpool__treq *req;
    surpool__tconn *conn;
    int64_t due_ns; /* when the reply is delivered; INT64_MAX: never */
    json_t *reply;  /* NULL: no reply (only the deadline ends it) */
    struct pending *next;
} pending;

struct surpool__transport {
    fake_settings *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t timer;
    int stop;
    surpool__tconn *conns; /* all open connections */
    pending *timed;        /* outstanding requests, unordered */
};

struct surpool__tconn {
    surpool__transport *t;
    surpool__tconn *next, *prev;
    surpool__tconn_events ev;
    atomic_int dead;
    int calls;
    int index; /* 1-based order of successful opens */
};

/* A pending request's record hangs off req->tnext; tstate is 1 while queued. */
static pending *pending_of(surpool__treq *req)
{
    return (pending *)(void *)req->tnext;
}

static int64_t due_of(const pending *pd)
{
    return pd->due_ns < pd->req->deadline_ns ? pd->due_ns : pd->req->deadline_ns;
}

static void unlink_pending_locked(surpool__transport *t, pending *target)
{
    for (pending **pp = &t->timed; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == target) {
            *pp = target->next;
            target->next = NULL;
            target->req->tstate = 0;
            return;
        }
    }
}

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

/* Complete a request: set status/reply, then done(). Called with no lock. */
static void complete(surpool__treq *req, surpool_err status, json_t *reply, const char *msg)
{
    req->status = status;
    req->reply = reply;
    snprintf(req->message, sizeof(req->message), "%s", msg != NULL ? msg : "");
    req->done(req);
}

static void *timer_main(void *arg)
{
    surpool__transport *t = arg;
    pthread_mutex_lock(&t->mu);
    while (!t->stop) {
        pending *best = NULL;
        for (pending *pd = t->timed; pd != NULL; pd = pd->next)
            if (best == NULL || due_of(pd) < due_of(best))
                best = pd;
        if (best == NULL) {
            pthread_cond_wait(&t->cv, &t->mu);
            continue;
        }
        int64_t due = due_of(best);
        if (due > surpool__now_ns()) {
            struct timespec ts = {(time_t)(due / 1000000000), (long)(due % 1000000000)};
            pthread_cond_timedwait(&t->cv, &t->mu, &ts);
            continue;
        }
        unlink_pending_locked(t, best);
        pthread_mutex_unlock(&t->mu);

        surpool__treq *req = best->req;
        json_t *reply = best->reply;
        int answered = reply != NULL && best->due_ns <= req->deadline_ns;
        free(best);
        if (answered) {
            complete(req, SURPOOL_OK, reply, NULL);
        } else {
            json_decref(reply);
            complete(req, SURPOOL_ERR_REQUEST_TIMEOUT, NULL, "fake: no reply before deadline");
        }
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

static surpool_err fake_create(const surpool__tconfig *cfg, void *arg, surpool__transport **out,
                               surpool_error *err)
{
    (void)cfg;
    surpool__transport *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "fake: out of memory");
    t->s = arg;
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cv, &a);
    pthread_condattr_destroy(&a);
    if (pthread_create(&t->timer, NULL, timer_main, t) != 0) {
        free(t);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "fake: no thread");
    }
    *out = t;
    return SURPOOL_OK;
}

/* Remove every pending request of `c` (or all when c == NULL) from the timer
 * list and return them chained through pending.next. */
static pending *take_pending_locked(surpool__transport *t, surpool__tconn *c)
{
    pending *taken = NULL;
    pending **pp = &t->timed;
    while (*pp != NULL) {
        pending *pd = *pp;
        if (c == NULL || pd->conn == c) {
            *pp = pd->next;
            pd->req->tstate = 0;
            pd->next = taken;
            taken = pd;
        } else {
            pp = &pd->next;
        }
    }
    return taken;
}

static void fail_all(pending *list, const char *why)
{
    while (list != NULL) {
        pending *next = list->next;
        surpool__treq *req = list->req;
        json_decref(list->reply);
        free(list);
        complete(req, SURPOOL_ERR_DISCONNECTED, NULL, why);
        list = next;
    }
}

/* Mark `c` dead, fire its on_dead (under t->mu, so that close() cannot free it
 * while the event runs: rule 6 of transport.h) and take its pending requests
 * for fail_all() once the lock is released. */
static pending *kill_locked(surpool__transport *t, surpool__tconn *c, const char *why)
{
    pending *mine = take_pending_locked(t, c);
    if (!atomic_exchange(&c->dead, 1) && c->ev.on_dead != NULL)
        c->ev.on_dead(c->ev.userdata, SURPOOL_ERR_DISCONNECTED, why);
    return mine;
}

static void fake_destroy(surpool__transport *t)
{
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pending *left = take_pending_locked(t, NULL);
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->timer, NULL);
    fail_all(left, "fake: transport destroyed");
    while (t->conns != NULL) {
        surpool__tconn *c = t->conns;
        t->conns = c->next;
        atomic_fetch_sub(&t->s->open_now, 1);
        free(c);
    }
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

static surpool_err fake_open(surpool__transport *t, int64_t deadline_ns,
                             const surpool__tconn_events *ev, surpool__tconn **out,
                             surpool_error *err)
{
    fake_settings *s = t->s;
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

    surpool__tconn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "fake: out of memory");
    c->t = t;
    c->ev = *ev;
    atomic_init(&c->dead, 0);
    pthread_mutex_lock(&t->mu);
    c->index = atomic_fetch_add(&s->open_ok, 1) + 1;
    c->next = t->conns;
    if (t->conns != NULL)
        t->conns->prev = c;
    t->conns = c;
    pthread_mutex_unlock(&t->mu);
    atomic_fetch_add(&s->open_now, 1);
    *out = c;
    return SURPOOL_OK;
}

static surpool_err fake_submit(surpool__tconn *c, surpool__treq *req)
{
    surpool__transport *t = c->t;
    fake_settings *s = t->s;
    if (atomic_load(&c->dead))
        return SURPOOL_ERR_DISCONNECTED;
    int nth = atomic_fetch_add(&s->calls, 1) + 1;
    if (c->index > 0 && c->index < FAKE_MAX_CONNS)
        atomic_fetch_add(&s->conn_calls[c->index], 1);
    int drop = atomic_load(&s->drop_every);
    if (drop > 0 && nth % drop == 0) {
        atomic_fetch_add(&s->drops, 1);
        pthread_mutex_lock(&t->mu);
        pending *mine = kill_locked(t, c, "fake: connection dropped");
        pthread_mutex_unlock(&t->mu);
        fail_all(mine, "fake: connection dropped");
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

    int lat_us = atomic_load(&s->call_latency_us);
    if (lat_us == 0 && reply != NULL) {
        complete(req, SURPOOL_OK, reply, NULL);
        return SURPOOL_OK;
    }
    pending *pd = calloc(1, sizeof(*pd));
    if (pd == NULL) {
        json_decref(reply);
        return SURPOOL_ERR_NOMEM;
    }
    pd->req = req;
    pd->conn = c;
    pd->reply = reply;
    pd->due_ns = reply != NULL ? surpool__now_ns() + (int64_t)lat_us * 1000 : INT64_MAX;
    req->tnext = (surpool__treq *)(void *)pd;
    req->tstate = 1;
    pthread_mutex_lock(&t->mu);
    pd->next = t->timed;
    t->timed = pd;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return SURPOOL_OK;
}

static int fake_cancel(surpool__tconn *c, surpool__treq *req)
{
    surpool__transport *t = c->t;
    pthread_mutex_lock(&t->mu);
    if (req->tstate != 1) {
        pthread_mutex_unlock(&t->mu);
        return 0;
    }
    pending *target = pending_of(req);
    unlink_pending_locked(t, target);
    pthread_mutex_unlock(&t->mu);
    json_decref(target->reply);
    free(target);
    return 1;
}

static int fake_alive(surpool__tconn *c)
{
    return !atomic_load(&c->dead);
}

static void fake_close(surpool__tconn *c)
{
    surpool__transport *t = c->t;
    pthread_mutex_lock(&t->mu);
    pending *mine = take_pending_locked(t, c);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        t->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&t->mu);
    fail_all(mine, "fake: connection closed");
    atomic_fetch_sub(&t->s->open_now, 1);
    free(c);
}

void fake_kill_all(surpool__transport *t)
{
    pthread_mutex_lock(&t->mu);
    pending *all = take_pending_locked(t, NULL);
    /* on_dead runs under our lock so that close() (which takes it) cannot
     * free a connection while its event runs: rule 6 of transport.h. */
    for (surpool__tconn *c = t->conns; c != NULL; c = c->next) {
        if (!atomic_exchange(&c->dead, 1) && c->ev.on_dead != NULL)
            c->ev.on_dead(c->ev.userdata, SURPOOL_ERR_DISCONNECTED, "fake: killed");
    }
    pthread_mutex_unlock(&t->mu);
    fail_all(all, "fake: server went away");
}

int fake_kill_conn(surpool__transport *t, int index)
{
    pthread_mutex_lock(&t->mu);
    surpool__tconn *c = t->conns;
    while (c != NULL && c->index != index)
        c = c->next;
    int alive = c != NULL && !atomic_load(&c->dead);
    pending *mine = c != NULL ? kill_locked(t, c, "fake: killed") : NULL;
    pthread_mutex_unlock(&t->mu);
    fail_all(mine, "fake: connection killed");
    return alive;
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
};
