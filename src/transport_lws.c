/*
 * The libwebsockets (4.1) transport: the only file that includes <libwebsockets.h>.
 *
 * Shape (from measured libwebsockets 4.1 behaviour):
 *  - One lws context and one service thread per transport (= per pool). Every lws
 *    call happens on that thread, except lws_cancel_service(), which callers use to
 *    wake it. The context is created on the creating thread before the service
 *    thread starts and destroyed on the service thread.
 *  - A connection (surpool__tconn) has a mutex guarding its send queue, its
 *    in-flight table (an intrusive FIFO list plus an open-addressing hash by RPC
 *    id), its state and its error text. Callers enqueue under the mutex and put
 *    the connection on the transport's wake list; the service thread takes the
 *    list in LWS_CALLBACK_EVENT_WAIT_CANCELLED and asks lws for writable
 *    callbacks, starts connects, or closes.
 *  - Lifetime is reference counted: the handle (opener, then user) holds one
 *    reference, a live wsi holds one, a wake-list entry holds one. Whoever drops
 *    the last one frees the connection, so no callback ever sees freed memory no
 *    matter how close(), open() timeouts and WSI_DESTROY interleave.
 *  - Request completions (done()) run without the connection mutex held: they are
 *    collected on a local list first.
 *
 * Process-wide side effects of libwebsockets that users must be told about:
 * lws_create_context() sets SIGPIPE to ignored, and lws' log level and emitter
 * are process global (we install ours once: lws lines go to every live pool's log
 * callback at WARN/ERROR, else nowhere; an application that uses lws itself loses
 * its own emitter).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "cbor_codec.h"
#include "codec.h"
#include "internal.h"
#include "transport.h"
#include "thread.h"
#include "utf8.h"

/* ------------------------------------------------------------------------- */
/* Types                                                                      */
/* ------------------------------------------------------------------------- */

enum { TS_NONE = 0, TS_QUEUED = 1, TS_INFLIGHT = 2, TS_DONE = 3 }; /* treq.tstate */
enum { CS_CONNECTING = 0, CS_OPEN = 1, CS_FAILED = 2 };            /* tconn.state */

#define MAX_ADDRS 4              /* resolved addresses tried in order while TCP fails */
#define RX_KEEP_BYTES (1u << 20) /* receive buffers above this are freed after use */
#define ABORT_WAIT_NS (2000 * SURPOOL__NS_PER_MS)
#define SHUTDOWN_WAIT_NS (1000 * SURPOOL__NS_PER_MS)

/* A FIFO of requests linked through treq.tnext/tprev. `sorted` stays 1 while
 * deadlines are non-decreasing from head to tail: the common case (one constant
 * request timeout) lets the deadline sweep look at the head only. */
typedef struct treq_list {
    surpool__treq *head;
    surpool__treq *tail;
    size_t n;
    int sorted;
} treq_list;

/* In-flight requests by id: open addressing, linear probing, backward-shift
 * deletion. Capacity is reserved at submit() so that the service thread never
 * has to allocate (or fail) when it moves a request in flight. */
typedef struct id_map {
    surpool__treq **slots;
    size_t mask; /* capacity - 1; capacity is a power of two, 0 slots when unused */
    size_t count;
} id_map;

struct surpool__tconn {
    surpool__transport *t;
    atomic_int refs;
    atomic_int dead;                     /* alive() == !dead */
    atomic_int in_wake;                  /* on the transport's wake list (or about to be) */
    surpool__tconn *wake_next;           /* t->mu */
    surpool__tconn *all_next, *all_prev; /* t->mu */

    pthread_mutex_t mu;  /* everything below up to "service thread only" */
    pthread_cond_t cond; /* the opener waits here */
    int state;
    int started;    /* the service thread took the current connect request */
    int svc_done;   /* the service thread is finished with this connection's socket */
    int wsi_gone;   /* the current attempt's wsi was destroyed */
    int abort;      /* open() gave up: kill the attempt */
    int closing;    /* close() was called */
    int tcp_up;     /* the current attempt got a TCP connection */
    int tcp_failed; /* lws said the TCP connect failed (it keeps the errno to itself) */
    int dead_notified;
    treq_list queue;
    treq_list inflight;
    id_map map;
    int64_t deadline_hint; /* <= every pending deadline (INT64_MAX: none) */
    int64_t open_deadline;
    int64_t open_started;
    surpool_err fail_code; /* why it failed (connect error, too large, protocol) */
    char fail_msg[200];
    int peer_close_code;
    char peer_close_reason[124];
    char tls_reason[120]; /* certificate verification failure, if any */
    char addrs[MAX_ADDRS][INET6_ADDRSTRLEN];
    int n_addrs;
    int addr_idx;

    /* Service thread only. */
    struct lws *wsi;
    char *rx;
    size_t rx_len, rx_cap;
    int rx_overflow, rx_binary;
    lws_sorted_usec_list_t sul;
    int64_t timer_at; /* when the sul fires (INT64_MAX: not scheduled) */

    /* Events: events_mu is held around every on_dead/on_notify so that close()
     * can wait out a running one and then detach. */
    pthread_mutex_t events_mu;
    surpool__tconn_events ev;
    int ev_detached;
};

struct surpool__transport {
    const surpool__url *url;
    const surpool__logger *logger;
    size_t max_message_bytes;
    int cbor;          /* subprotocol "cbor": binary frames both ways */
    const char *proto; /* "cbor" or "json" */
    long connect_timeout_ms;
    int timeout_secs;
    int insecure;
    char host_header[300]; /* "host[:port]" / "[v6][:port]": Host, Origin, SNI */
    int host_is_ip;

    struct lws_context *ctx;
    struct lws_protocols protocols[2]; /* lws keeps a pointer: must live here */
    SSL_CTX *ssl_ctx;
    pthread_t thread;
    atomic_int stop;
    atomic_int wake_pending;

    /* Guards lws_cancel_service() against a destroyed context. */
    pthread_rwlock_t alive_lock;
    int ctx_alive;

    pthread_mutex_t mu; /* wake list, connection list */
    pthread_cond_t cond;
    surpool__tconn *wake_head, *wake_tail;
    surpool__tconn *all_head;
    int n_conns;

    surpool__transport *reg_next; /* g_reg: transports whose logger gets lws lines */
};

/* ------------------------------------------------------------------------- */
/* Process-wide: lws logging, OpenSSL ex_data indexes                        */
/* ------------------------------------------------------------------------- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static surpool__transport *g_reg_head;
static int g_ssl_rx_alert_idx = -1; /* SSL ex_data: last fatal alert received */
static int g_ssl_tx_alert_idx = -1; /* SSL ex_data: last fatal alert sent */
static int g_ssl_note_idx = -1;     /* SSL ex_data: other static explanation */

/* lws' log level and emitter are process global: forward its ERR/WARN lines to
 * every live transport's logger (we cannot tell which context a line is about).
 * With no logger registered the line goes nowhere: the library never prints. */
static void lws_emit(int level, const char *line)
{
    char buf[300];
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    /* lws lines can quote what the peer sent (headers, close reasons). */
    surpool__text_sanitize(buf, sizeof(buf), line, n);
    surpool_log_level lv = (level & LLL_ERR) ? SURPOOL_LOG_ERROR : SURPOOL_LOG_WARN;

    pthread_mutex_lock(&g_reg_mu);
    for (surpool__transport *t = g_reg_head; t != NULL; t = t->reg_next) {
        /* Pools sharing one log callback get each line once. */
        int seen = 0;
        for (surpool__transport *u = g_reg_head; u != t && !seen; u = u->reg_next)
            seen = u->logger->fn == t->logger->fn && u->logger->userdata == t->logger->userdata;
        if (!seen)
            surpool__log(t->logger, lv, "libwebsockets: %s", buf);
    }
    pthread_mutex_unlock(&g_reg_mu);
}

static void global_init(void)
{
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_emit);
    g_ssl_rx_alert_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    g_ssl_tx_alert_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    g_ssl_note_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static void registry_add(surpool__transport *t)
{
    if (t->logger == NULL || t->logger->fn == NULL)
        return;
    pthread_mutex_lock(&g_reg_mu);
    t->reg_next = g_reg_head;
    g_reg_head = t;
    pthread_mutex_unlock(&g_reg_mu);
}

static void registry_remove(surpool__transport *t)
{
    pthread_mutex_lock(&g_reg_mu);
    for (surpool__transport **pp = &g_reg_head; *pp != NULL; pp = &(*pp)->reg_next) {
        if (*pp == t) {
            *pp = t->reg_next;
            break;
        }
    }
    pthread_mutex_unlock(&g_reg_mu);
}

/* ------------------------------------------------------------------------- */
/* Small helpers                                                              */
/* ------------------------------------------------------------------------- */

/* Validity policy: lws pings after 30 s without a PONG and hangs up after 40 s.
 * hangup must exceed ping or every connection is killed on schedule. lws keeps a
 * pointer to it, hence static. */
static const lws_retry_bo_t g_retry = {
    .secs_since_valid_ping = 30,
    .secs_since_valid_hangup = 40,
};

/* snprintf into a fixed buffer where truncating a message is fine (on a UTF-8
 * character boundary). Text from the server or from libwebsockets goes through
 * surpool__text_sanitize() before it gets here. */
__attribute__((format(printf, 3, 4))) static void msgf(char *dst, size_t cap, const char *fmt,
                                                       ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= cap && cap > 0)
        surpool__utf8_trim(dst);
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    surpool__strlcpy(dst, src, cap);
}

/* ---- request lists ---- */

static void list_init(treq_list *l)
{
    memset(l, 0, sizeof(*l));
    l->sorted = 1;
}

static void list_push(treq_list *l, surpool__treq *r)
{
    r->tnext = NULL;
    r->tprev = l->tail;
    if (l->tail != NULL) {
        if (r->deadline_ns < l->tail->deadline_ns)
            l->sorted = 0;
        l->tail->tnext = r;
    } else {
        l->head = r;
    }
    l->tail = r;
    l->n++;
}

static void list_remove(treq_list *l, surpool__treq *r)
{
    if (r->tprev != NULL)
        r->tprev->tnext = r->tnext;
    else
        l->head = r->tnext;
    if (r->tnext != NULL)
        r->tnext->tprev = r->tprev;
    else
        l->tail = r->tprev;
    r->tnext = r->tprev = NULL;
    if (--l->n == 0)
        l->sorted = 1;
}

/* Completed requests waiting for their done() call, linked through tnext. */
typedef struct done_list {
    surpool__treq *head, *tail;
} done_list;

static void done_add(done_list *d, surpool__treq *r, surpool_err code, const char *msg)
{
    r->tstate = TS_DONE;
    r->status = code;
    if (code != SURPOOL_OK)
        copy_str(r->message, sizeof(r->message), msg);
    else
        r->message[0] = '\0';
    r->tnext = NULL;
    r->tprev = NULL;
    if (d->tail != NULL)
        d->tail->tnext = r;
    else
        d->head = r;
    d->tail = r;
}

/* Call done() for each; never with a connection mutex held. */
static void done_run(done_list *d)
{
    surpool__treq *r = d->head;
    while (r != NULL) {
        surpool__treq *next = r->tnext; /* r may be freed by done() */
        r->tnext = NULL;
        r->done(r);
        r = next;
    }
    d->head = d->tail = NULL;
}

/* ---- id map ---- */

static size_t id_hash(int64_t id)
{
    uint64_t x = (uint64_t)id * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(x ^ (x >> 29));
}

/* Make room for `need` entries at load factor <= 1/2. */
static int map_reserve(id_map *m, size_t need)
{
    size_t cap = m->slots != NULL ? m->mask + 1 : 0;
    if (need <= cap / 2)
        return 0;
    size_t ncap = cap != 0 ? cap : 64;
    while (need > ncap / 2) {
        if (ncap > SIZE_MAX / 4 / sizeof(void *))
            return -1;
        ncap *= 2;
    }
    surpool__treq **ns = surpool__calloc(ncap, sizeof(*ns));
    if (ns == NULL)
        return -1;
    for (size_t i = 0; i < cap; i++) {
        surpool__treq *r = m->slots[i];
        if (r == NULL)
            continue;
        size_t j = id_hash(r->id) & (ncap - 1);
        while (ns[j] != NULL)
            j = (j + 1) & (ncap - 1);
        ns[j] = r;
    }
    surpool__free(m->slots);
    m->slots = ns;
    m->mask = ncap - 1;
    return 0;
}

static void map_insert(id_map *m, surpool__treq *r)
{
    size_t i = id_hash(r->id) & m->mask;
    while (m->slots[i] != NULL)
        i = (i + 1) & m->mask;
    m->slots[i] = r;
    m->count++;
}

/* Slot of the first entry with `id` (and, if want != NULL, that exact request). */
static size_t map_find(const id_map *m, int64_t id, const surpool__treq *want)
{
    if (m->slots == NULL)
        return SIZE_MAX;
    size_t i = id_hash(id) & m->mask;
    for (surpool__treq *r; (r = m->slots[i]) != NULL; i = (i + 1) & m->mask) {
        if (r->id == id && (want == NULL || r == want))
            return i;
    }
    return SIZE_MAX;
}

static void map_remove_at(id_map *m, size_t i)
{
    /* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        surpool__treq *r = m->slots[j];
        if (r == NULL)
            break;
        size_t k = id_hash(r->id) & m->mask;
        /* r may stay at j if its home k lies cyclically in (i, j]. */
        if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
            continue;
        m->slots[i] = r;
        i = j;
    }
    m->slots[i] = NULL;
    m->count--;
}

static void map_clear(id_map *m)
{
    if (m->slots != NULL)
        memset(m->slots, 0, (m->mask + 1) * sizeof(*m->slots));
    m->count = 0;
}

/* ---- connection bookkeeping ---- */

static void conn_free(surpool__tconn *c)
{
    surpool__transport *t = c->t;
    pthread_mutex_lock(&t->mu);
    if (c->all_prev != NULL)
        c->all_prev->all_next = c->all_next;
    else if (t->all_head == c)
        t->all_head = c->all_next;
    if (c->all_next != NULL)
        c->all_next->all_prev = c->all_prev;
    t->n_conns--;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->mu);

    surpool__free(c->map.slots);
    surpool__free(c->rx);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->events_mu);
    surpool__free(c);
}

static void conn_ref(surpool__tconn *c)
{
    atomic_fetch_add(&c->refs, 1);
}

static void conn_unref(surpool__tconn *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1)
        conn_free(c);
}

/* A reference unless the count already reached zero (being freed). */
static int conn_tryref(surpool__tconn *c)
{
    int n = atomic_load(&c->refs);
    while (n > 0) {
        if (atomic_compare_exchange_weak(&c->refs, &n, n + 1))
            return 1;
    }
    return 0;
}

/* Wake the service thread; only lws call allowed off it. */
static void transport_kick(surpool__transport *t)
{
    pthread_rwlock_rdlock(&t->alive_lock);
    if (t->ctx_alive)
        lws_cancel_service(t->ctx);
    pthread_rwlock_unlock(&t->alive_lock);
}

/* Ask the service thread to look at `c` (connect, write, close, abort). */
static void conn_wake(surpool__tconn *c)
{
    surpool__transport *t = c->t;
    if (atomic_exchange(&c->in_wake, 1) != 0)
        return;  /* already listed: the pending visit sees our change */
    conn_ref(c); /* the list's reference */
    pthread_mutex_lock(&t->mu);
    c->wake_next = NULL;
    if (t->wake_tail != NULL)
        t->wake_tail->wake_next = c;
    else
        t->wake_head = c;
    t->wake_tail = c;
    pthread_mutex_unlock(&t->mu);
    /* Coalesce: one cancel per service-loop visit (measured: +40% throughput). */
    if (atomic_exchange(&t->wake_pending, 1) == 0)
        transport_kick(t);
}

/* Move every queued and in-flight request of `c` to `d` (c->mu held). */
static void conn_collect_all(surpool__tconn *c, done_list *d, surpool_err code, const char *msg)
{
    surpool__treq *r;
    while ((r = c->inflight.head) != NULL) {
        list_remove(&c->inflight, r);
        done_add(d, r, code, msg);
    }
    map_clear(&c->map);
    while ((r = c->queue.head) != NULL) {
        list_remove(&c->queue, r);
        done_add(d, r, code, msg);
    }
    c->deadline_hint = INT64_MAX;
}

/* Fail the connection from the service thread (reply too large, bad frame, write
 * error): in-flight requests complete with `code`, and the caller returns -1 so
 * that lws closes the socket; queued ones end with DISCONNECTED at WSI_DESTROY. */
static void conn_fail(surpool__tconn *c, surpool_err code, const char *msg)
{
    done_list d = {0};
    pthread_mutex_lock(&c->mu);
    atomic_store(&c->dead, 1);
    if (c->fail_code == SURPOOL_OK) {
        c->fail_code = code;
        copy_str(c->fail_msg, sizeof(c->fail_msg), msg);
    }
    surpool__treq *r;
    while ((r = c->inflight.head) != NULL) {
        list_remove(&c->inflight, r);
        done_add(&d, r, code, msg);
    }
    map_clear(&c->map);
    pthread_mutex_unlock(&c->mu);
    done_run(&d);
    surpool__log(c->t->logger, SURPOOL_LOG_WARN, "connection failed: %s", msg);
}

/* ------------------------------------------------------------------------- */
/* Request deadlines (service thread)                                        */
/* ------------------------------------------------------------------------- */

/* Move expired requests of `l` to `d`; lower *earliest to the first remaining
 * deadline. Sorted lists cost O(expired); unsorted ones a full walk, which also
 * notices when the list became sorted again. */
static void expire_list(surpool__tconn *c, treq_list *l, int in_map, int64_t now, done_list *d,
                        int64_t *earliest, const char *msg)
{
    if (l->sorted) {
        surpool__treq *r;
        while ((r = l->head) != NULL && r->deadline_ns <= now) {
            list_remove(l, r);
            if (in_map) {
                size_t i = map_find(&c->map, r->id, r);
                if (i != SIZE_MAX)
                    map_remove_at(&c->map, i);
            }
            done_add(d, r, SURPOOL_ERR_REQUEST_TIMEOUT, msg);
        }
        if (l->head != NULL && l->head->deadline_ns < *earliest)
            *earliest = l->head->deadline_ns;
        return;
    }
    int64_t prev = INT64_MIN;
    int in_order = 1;
    surpool__treq *r = l->head;
    while (r != NULL) {
        surpool__treq *next = r->tnext;
        if (r->deadline_ns <= now) {
            list_remove(l, r);
            if (in_map) {
                size_t i = map_find(&c->map, r->id, r);
                if (i != SIZE_MAX)
                    map_remove_at(&c->map, i);
            }
            done_add(d, r, SURPOOL_ERR_REQUEST_TIMEOUT, msg);
        } else {
            if (r->deadline_ns < *earliest)
                *earliest = r->deadline_ns;
            if (r->deadline_ns < prev)
                in_order = 0;
            prev = r->deadline_ns;
        }
        r = next;
    }
    if (in_order)
        l->sorted = 1;
}

static void timer_cb(lws_sorted_usec_list_t *sul);

/* (Re)schedule the connection's deadline timer if something is due earlier than
 * the timer currently set. The hint is a lower bound: a stale one only costs a
 * spurious, cheap wake-up. */
static void timer_arm(surpool__tconn *c, int64_t hint)
{
    if (c->wsi == NULL || hint >= c->timer_at)
        return;
    int64_t now = surpool__now_ns();
    lws_usec_t us = hint > now ? (lws_usec_t)((hint - now + 999) / 1000) : 1;
    c->timer_at = hint;
    lws_sul_schedule(c->t->ctx, 0, &c->sul, timer_cb, us);
}

static void timer_cb(lws_sorted_usec_list_t *sul)
{
    surpool__tconn *c = lws_container_of(sul, surpool__tconn, sul);
    done_list d = {0};
    int64_t now = surpool__now_ns();
    int64_t earliest = INT64_MAX;

    c->timer_at = INT64_MAX;
    pthread_mutex_lock(&c->mu);
    expire_list(c, &c->queue, 0, now, &d, &earliest,
                "request timed out before it could be sent");
    expire_list(c, &c->inflight, 1, now, &d, &earliest,
                "request timed out waiting for the reply");
    c->deadline_hint = earliest;
    pthread_mutex_unlock(&c->mu);
    done_run(&d);
    timer_arm(c, earliest);
}

/* ------------------------------------------------------------------------- */
/* Service thread: wake list                                                  */
/* ------------------------------------------------------------------------- */

static void conn_start(surpool__tconn *c);
static int conn_maybe_next_addr(surpool__tconn *c);

/* One visit of a connection taken from the wake list. */
static void conn_visit(surpool__tconn *c)
{
    surpool__transport *t = c->t;
    enum { NOTHING, CONNECT, WRITE, CLOSE, KILL } act = NOTHING;
    int64_t hint = INT64_MAX;

    pthread_mutex_lock(&c->mu);
    if (c->abort || c->closing) {
        if (!c->started) {
            /* Never started (or between two address attempts): nothing to undo. */
            c->started = 1;
            c->svc_done = 1;
            if (c->state == CS_CONNECTING)
                c->state = CS_FAILED;
            pthread_cond_broadcast(&c->cond);
        } else if (c->wsi != NULL) {
            act = c->state == CS_OPEN ? CLOSE : KILL;
        }
    } else if (!c->started) {
        act = atomic_load(&t->stop) ? NOTHING : CONNECT;
    } else if (c->wsi != NULL && c->state == CS_OPEN) {
        /* Arm the deadline timer even when the queue is already empty: a
         * writable callback may have sent the new request before this visit. */
        hint = c->deadline_hint;
        if (c->queue.head != NULL)
            act = WRITE;
    }
    pthread_mutex_unlock(&c->mu);

    switch (act) {
    case NOTHING: break;
    case CONNECT: conn_start(c); break;
    case WRITE: lws_callback_on_writable(c->wsi); break;
    case CLOSE:
        /* The close frame goes out from the writable callback; the timeout is a
         * backstop for a peer that stops reading. */
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_SEND, t->timeout_secs);
        lws_callback_on_writable(c->wsi);
        break;
    case KILL:
        /* Not established yet, so no close frame: drop the socket. ASYNC because
         * we are inside another wsi's callback. */
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_AWAITING_CONNECT_RESPONSE, LWS_TO_KILL_ASYNC);
        break;
    }
    timer_arm(c, hint);
}

static void process_wake_list(surpool__transport *t)
{
    /* Clear the flag BEFORE taking the list: a caller that enqueues after the take
     * then sees 0 and cancels again, so no wake-up is lost. */
    atomic_store(&t->wake_pending, 0);
    pthread_mutex_lock(&t->mu);
    surpool__tconn *c = t->wake_head;
    t->wake_head = t->wake_tail = NULL;
    pthread_mutex_unlock(&t->mu);
    while (c != NULL) {
        surpool__tconn *next = c->wake_next; /* read before in_wake lets it relist */
        atomic_store(&c->in_wake, 0);
        conn_visit(c);
        conn_unref(c); /* the list's reference */
        c = next;
    }
}

/* ------------------------------------------------------------------------- */
/* Service thread: connecting                                                 */
/* ------------------------------------------------------------------------- */

static void conn_start(surpool__tconn *c)
{
    surpool__transport *t = c->t;
    struct lws_client_connect_info i;

    pthread_mutex_lock(&c->mu);
    c->started = 1;
    c->svc_done = 0;
    c->wsi_gone = 0;
    c->tcp_up = 0;
    const char *addr = c->addrs[c->addr_idx];
    pthread_mutex_unlock(&c->mu);

    memset(&i, 0, sizeof(i));
    i.context = t->ctx;
    i.address = addr; /* numeric: a name would block this thread in getaddrinfo */
    i.port = t->url->port;
    i.path = t->url->path;
    i.host = t->host_header;
    i.origin = t->host_header;
    i.protocol = t->proto;
    i.local_protocol_name = t->proto;
    i.retry_and_idle_policy = &g_retry;
    i.opaque_user_data = c;
    if (t->url->tls) {
        i.ssl_connection = LCCSCF_USE_SSL;
        if (t->insecure)
            i.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED |
                                LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK | LCCSCF_ALLOW_EXPIRED |
                                LCCSCF_ALLOW_INSECURE;
        else if (t->host_is_ip == 6)
            /* lws cuts the name at the first ':' ("[::1]" → "[") and would
             * reject every certificate; our verify callback checks the address. */
            i.ssl_connection |= LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK;
    }

    conn_ref(c); /* the wsi's reference, dropped at WSI_DESTROY */
    pthread_mutex_lock(&c->mu);
    c->open_started = c->open_started != 0 ? c->open_started : surpool__now_ns();
    pthread_mutex_unlock(&c->mu);

    /* May call back synchronously, even WSI_DESTROY, before returning NULL. The
     * wake list's reference keeps c alive through all of it. */
    struct lws *wsi = lws_client_connect_via_info(&i);

    int drop_ref = 0, retry = 0;
    pthread_mutex_lock(&c->mu);
    if (wsi == NULL && !c->wsi_gone) {
        /* Failed without WSI_DESTROY (with it, on_wsi_destroy() has already
         * decided everything): the reference is ours to drop. */
        drop_ref = 1;
        c->wsi_gone = 1;
        if (c->state == CS_CONNECTING) {
            retry = conn_maybe_next_addr(c);
            if (!retry) {
                c->state = CS_FAILED;
                if (c->fail_code == SURPOOL_OK) {
                    c->fail_code = SURPOOL_ERR_CONNECT;
                    msgf(c->fail_msg, sizeof(c->fail_msg), "cannot connect to %s port %d (%s)",
                         t->url->host, t->url->port, addr);
                }
            }
        }
        c->svc_done = !retry;
        pthread_cond_broadcast(&c->cond);
    } else if (wsi != NULL && !c->wsi_gone) {
        c->wsi = wsi;
    }
    pthread_mutex_unlock(&c->mu);
    if (retry)
        conn_wake(c);
    if (drop_ref)
        conn_unref(c);
}

/* The TCP attempt to one address failed and another address is left: try it.
 * c->mu held. Returns 1 if a retry was scheduled. */
static int conn_maybe_next_addr(surpool__tconn *c)
{
    if (c->state != CS_CONNECTING || c->tcp_up || c->abort || c->closing ||
        c->addr_idx + 1 >= c->n_addrs || atomic_load(&c->t->stop) ||
        surpool__now_ns() >= c->open_deadline)
        return 0;
    c->addr_idx++;
    c->started = 0;
    c->fail_code = SURPOOL_OK;
    c->fail_msg[0] = '\0';
    c->tcp_failed = 0;
    return 1;
}

static int is_tls_text(const char *s)
{
    return strstr(s, "SSL") != NULL || strstr(s, "ssl") != NULL || strstr(s, "TLS") != NULL ||
           strstr(s, "cert") != NULL || strncmp(s, "connect SYSCALL", 15) == 0 ||
           strncmp(s, "connect unk", 11) == 0;
}

/* LWS_CALLBACK_CLIENT_CONNECTION_ERROR: remember why; WSI_DESTROY (or the NULL
 * return of the connect call) decides what happens next. */
static void on_connection_error(struct lws *wsi, surpool__tconn *c, const char *in, size_t len)
{
    surpool__transport *t = c->t;
    char text[160];
    size_t n = in != NULL ? strnlen(in, len) : 0; /* len may count the NUL */
    /* lws' text may quote the server (a status line, a header). */
    n = surpool__text_sanitize(text, sizeof(text), in, n);
    if (n == 0)
        n = surpool__strlcpy(text, "connection failed", sizeof(text));
    /* The HTTP status of a refused upgrade says more than lws' wording. */
    unsigned int status = lws_http_client_http_response(wsi);

    const char *alert_rx = NULL, *alert_tx = NULL, *note = NULL;
    if (t->url->tls) {
        SSL *ssl = lws_get_ssl(wsi);
        if (ssl != NULL) {
            alert_rx = SSL_get_ex_data(ssl, g_ssl_rx_alert_idx);
            alert_tx = SSL_get_ex_data(ssl, g_ssl_tx_alert_idx);
            note = SSL_get_ex_data(ssl, g_ssl_note_idx);
        }
    }

    pthread_mutex_lock(&c->mu);
    c->wsi = NULL; /* lws is tearing it down; nothing else may act on it */
    if (c->fail_code == SURPOOL_OK) {
        if (c->tls_reason[0] != '\0') {
            c->fail_code = SURPOOL_ERR_TLS;
            msgf(c->fail_msg, sizeof(c->fail_msg), "certificate verify failed: %s",
                 c->tls_reason);
        } else if (t->url->tls && (alert_rx != NULL || alert_tx != NULL || note != NULL ||
                                   is_tls_text(text))) {
            c->fail_code = SURPOOL_ERR_TLS;
            if (note != NULL)
                msgf(c->fail_msg, sizeof(c->fail_msg), "TLS handshake with %s failed: %s",
                     t->url->host, note);
            else if (alert_rx != NULL)
                msgf(c->fail_msg, sizeof(c->fail_msg),
                     "TLS handshake with %s failed: the server sent alert '%s'", t->url->host,
                     alert_rx);
            else if (alert_tx != NULL)
                msgf(c->fail_msg, sizeof(c->fail_msg),
                     "TLS handshake with %s failed: sent alert '%s' (%s)", t->url->host,
                     alert_tx, text);
            else
                msgf(c->fail_msg, sizeof(c->fail_msg), "TLS handshake with %s failed: %s",
                     t->url->host, text);
        } else if (status == 404) {
            c->fail_code = SURPOOL_ERR_CONNECT;
            msgf(c->fail_msg, sizeof(c->fail_msg),
                 "server at %s port %d answered HTTP 404 to the WebSocket upgrade: path "
                 "'%.64s' is not a SurrealDB RPC endpoint%s",
                 t->url->host, t->url->port, t->url->path,
                 strcmp(t->url->path, "/rpc") != 0 ? " (is it /rpc?)" : "");
        } else if (status != 0 && status != 101) {
            c->fail_code = SURPOOL_ERR_CONNECT;
            msgf(c->fail_msg, sizeof(c->fail_msg),
                 "server at %s port %d answered the WebSocket upgrade of '%.64s' with HTTP "
                 "%u instead of 101",
                 t->url->host, t->url->port, t->url->path, status);
        } else {
            c->fail_code = SURPOOL_ERR_CONNECT;
            c->tcp_failed = !c->tcp_up; /* open() names the cause (tcp_diagnose) */
            const char *a = c->addrs[c->addr_idx];
            if (strcmp(a, t->url->host) != 0)
                msgf(c->fail_msg, sizeof(c->fail_msg), "cannot connect to %s port %d (%s): %s",
                     t->url->host, t->url->port, a, text);
            else
                msgf(c->fail_msg, sizeof(c->fail_msg), "cannot connect to %s port %d: %s",
                     t->url->host, t->url->port, text);
        }
    }
    pthread_mutex_unlock(&c->mu);
}

/* LWS_CALLBACK_CLIENT_FILTER_PRE_ESTABLISH: lws accepts a server that ignored our
 * subprotocol; we do not (1.x–2.1 servers would guess the format). */
static int on_pre_establish(struct lws *wsi, surpool__tconn *c)
{
    char proto[32];
    int n = lws_hdr_copy(wsi, proto, sizeof(proto), WSI_TOKEN_PROTOCOL);
    if (n > 0 && strcmp(proto, c->t->proto) == 0)
        return 0;
    pthread_mutex_lock(&c->mu);
    if (c->fail_code == SURPOOL_OK) {
        c->fail_code = SURPOOL_ERR_CONNECT;
        msgf(c->fail_msg, sizeof(c->fail_msg),
             "server at %s port %d did not accept WebSocket subprotocol '%s' "
             "(answered %s%s%s)",
             c->t->url->host, c->t->url->port, c->t->proto, n > 0 ? "'" : "",
             n > 0 ? proto : "none", n > 0 ? "'" : "");
    }
    pthread_mutex_unlock(&c->mu);
    return 1;
}

static int on_established(struct lws *wsi, surpool__tconn *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->abort || c->closing) {
        pthread_mutex_unlock(&c->mu);
        return -1;
    }
    c->state = CS_OPEN;
    c->wsi = wsi;
    int queued = c->queue.head != NULL;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
    if (queued)
        lws_callback_on_writable(wsi);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Service thread: TLS                                                        */
/* ------------------------------------------------------------------------- */

/* lws reports every handshake failure as "connect SSL err 1" (it drains
 * OpenSSL's error queue into its info log first). Alerts and the first record
 * header we read say more; keep them on the SSL (static strings only). */
static void tls_info_cb(const SSL *ssl, int where, int ret)
{
    if (where & SSL_CB_HANDSHAKE_DONE) {
        /* Only the handshake is interesting: stop watching records. */
        SSL_set_msg_callback((SSL *)ssl, NULL);
        return;
    }
    if (!(where & SSL_CB_ALERT) || strcmp(SSL_alert_type_string(ret), "F") != 0)
        return;
    int idx = (where & SSL_CB_READ) ? g_ssl_rx_alert_idx : g_ssl_tx_alert_idx;
    SSL_set_ex_data((SSL *)ssl, idx, (void *)SSL_alert_desc_string_long(ret));
}

static void tls_msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                       SSL *ssl, void *arg)
{
    SURPOOL__UNUSED(version);
    SURPOOL__UNUSED(arg);
    if (write_p || content_type != SSL3_RT_HEADER || len < 1)
        return;
    unsigned char type = ((const unsigned char *)buf)[0];
    /* TLS record types are 20..24; "H" (72) is an HTTP answer to our hello. */
    if ((type < 20 || type > 24) && SSL_get_ex_data(ssl, g_ssl_note_idx) == NULL)
        SSL_set_ex_data(ssl, g_ssl_note_idx,
                        (void *)(type == 'H' ? "the server answered in plain HTTP "
                                               "(is it a ws:// endpoint?)"
                                             : "the server's answer is not TLS"));
}

static int host_matches(const surpool__tconn *c, X509 *cert)
{
    const surpool__transport *t = c->t;
    if (t->host_is_ip)
        return X509_check_ip_asc(cert, t->url->host, 0) == 1;
    return X509_check_host(cert, t->url->host, strlen(t->url->host),
                           X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1;
}

/* LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION, once per certificate of
 * the chain. Return 0 to let OpenSSL's verdict stand, non-zero to reject. */
static int on_cert_verify(surpool__tconn *c, X509_STORE_CTX *xs, int preverify_ok)
{
    if (c->t->insecure) {
        /* tls_insecure_skip_verify: accept any certificate and name. */
        X509_STORE_CTX_set_error(xs, X509_V_OK);
        return 0;
    }
    if (!preverify_ok) {
        /* Record the reason for the user; returning 0 keeps it a failure (a
         * non-zero return would reject good certificates too). */
        int e = X509_STORE_CTX_get_error(xs);
        pthread_mutex_lock(&c->mu);
        if (c->tls_reason[0] == '\0')
            copy_str(c->tls_reason, sizeof(c->tls_reason), X509_verify_cert_error_string(e));
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    /* Belt and braces: lws sets the expected name on each SSL, but cuts it at the
     * first ':' (IPv6 literals) and at 127 bytes. Check the leaf ourselves. */
    if (X509_STORE_CTX_get_error_depth(xs) == 0) {
        X509 *cert = X509_STORE_CTX_get_current_cert(xs);
        if (cert == NULL || !host_matches(c, cert)) {
            int e = c->t->host_is_ip ? X509_V_ERR_IP_ADDRESS_MISMATCH
                                     : X509_V_ERR_HOSTNAME_MISMATCH;
            X509_STORE_CTX_set_error(xs, e);
            pthread_mutex_lock(&c->mu);
            if (c->tls_reason[0] == '\0')
                copy_str(c->tls_reason, sizeof(c->tls_reason),
                         X509_verify_cert_error_string(e));
            pthread_mutex_unlock(&c->mu);
            return 1;
        }
    }
    return 0;
}

/* OpenSSL's reasons for the errors queued on this thread, oldest first:
 * "No such file or directory; system lib". */
static void tls_reasons(char *out, size_t cap)
{
    size_t n = 0;
    int kept = 0;
    out[0] = '\0';
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        if (kept == 2)
            continue; /* the first ones are the specific ones; drain the rest */
        /* "error:80000002:system library::No such file or directory": keep the
         * reason (thread-safe, unlike strerror). */
        char full[256];
        ERR_error_string_n(e, full, sizeof(full));
        const char *r = strrchr(full, ':');
        r = r != NULL && r[1] != '\0' ? r + 1 : full;
        if (strstr(out, r) != NULL || n + 3 >= cap)
            continue;
        msgf(out + n, cap - n, "%s%s", n > 0 ? "; " : "", r);
        n = strlen(out);
        kept++;
    }
    if (n == 0)
        copy_str(out, cap, "unknown error");
}

static surpool_err tls_error(surpool_error *err, const char *what, const char *path)
{
    char reason[160];
    tls_reasons(reason, sizeof(reason));
    if (path != NULL)
        return surpool__seterr(err, SURPOOL_ERR_TLS, "%s '%s': %s", what, path, reason);
    return surpool__seterr(err, SURPOOL_ERR_TLS, "%s: %s", what, reason);
}

/* Our own client SSL_CTX: lws' built-in one only logs a bad CA path, and leaks
 * per context in 4.1. lws still sets SNI and the expected name on each SSL. */
static surpool_err tls_ctx_create(const surpool__tconfig *cfg, SSL_CTX **out,
                                  surpool_error *err)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return tls_error(err, "cannot create the TLS context", NULL);
    surpool_err rc = SURPOOL_OK;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        rc = tls_error(err, "cannot require TLS 1.2", NULL);
        goto fail;
    }
    if (cfg->tls_ca_file != NULL || cfg->tls_ca_dir != NULL) {
        if (cfg->tls_ca_file != NULL &&
            SSL_CTX_load_verify_locations(ctx, cfg->tls_ca_file, NULL) != 1) {
            rc = tls_error(err, "cannot load tls_ca_file", cfg->tls_ca_file);
            goto fail;
        }
        if (cfg->tls_ca_dir != NULL &&
            SSL_CTX_load_verify_locations(ctx, NULL, cfg->tls_ca_dir) != 1) {
            rc = tls_error(err, "cannot load tls_ca_dir", cfg->tls_ca_dir);
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        rc = tls_error(err, "cannot load the system CA store", NULL);
        goto fail;
    }
    if (cfg->tls_key_file != NULL && cfg->tls_cert_file == NULL) {
        rc = surpool__seterr(err, SURPOOL_ERR_TLS,
                             "tls_key_file is set but tls_cert_file is not");
        goto fail;
    }
    if (cfg->tls_cert_file != NULL) {
        /* Without tls_key_file the key is expected in the certificate's file. */
        const char *key = cfg->tls_key_file != NULL ? cfg->tls_key_file : cfg->tls_cert_file;
        if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_file) != 1) {
            rc = tls_error(err, "cannot load tls_cert_file", cfg->tls_cert_file);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            rc = tls_error(err, "cannot load tls_key_file", key);
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            rc = tls_error(err, "tls_cert_file and tls_key_file do not match", NULL);
            goto fail;
        }
    }
    /* lws overrides the mode on each SSL (SSL_VERIFY_PEER plus its callback, which
     * calls ours); this is the policy it starts from. */
    SSL_CTX_set_verify(ctx, cfg->tls_insecure_skip_verify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER,
                       NULL);
    SSL_CTX_set_info_callback(ctx, tls_info_cb);
    SSL_CTX_set_msg_callback(ctx, tls_msg_cb);
    *out = ctx;
    return SURPOOL_OK;
fail:
    SSL_CTX_free(ctx);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Service thread: writing and receiving                                      */
/* ------------------------------------------------------------------------- */

/* Frames written per writable callback at most. lws allows more than one
 * lws_write() per callback as long as the socket is not choked (no partial
 * write pending, kernel buffer has room): with many requests queued on few
 * sockets (the shared lane) that saves a pass of the event loop over every
 * socket per frame. The cap keeps one busy socket from starving the others. */
#define WRITE_BATCH 32

static int on_writeable(struct lws *wsi, surpool__tconn *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        static const char bye[] = "client closing";
        lws_close_reason(wsi, LWS_CLOSE_STATUS_GOINGAWAY, (unsigned char *)bye,
                         sizeof(bye) - 1);
        return -1; /* idempotent: a second visit just finishes the close */
    }
    if (c->queue.head == NULL || atomic_load(&c->dead)) {
        pthread_mutex_unlock(&c->mu); /* unasked writable callbacks happen */
        return 0;
    }
    int failed = 0;
    for (int i = 0; i < WRITE_BATCH && c->queue.head != NULL; i++) {
        if (i > 0 && lws_send_pipe_choked(wsi))
            break;
        surpool__treq *r = c->queue.head;
        /* In flight before the write and all under the mutex: a reply cannot
         * beat the bookkeeping, and cancel() cannot free the buffer mid-write. */
        list_remove(&c->queue, r);
        list_push(&c->inflight, r);
        map_insert(&c->map, r);
        r->tstate = TS_INFLIGHT;
        /* lws masks the payload in place and buffers any unsent remainder. */
        size_t len = r->len;
        int n = lws_write(wsi, (unsigned char *)r->buf + LWS_PRE, len,
                          c->t->cbor ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
        if (n < 0 || (size_t)n < len) {
            failed = 1;
            break;
        }
    }
    int more = c->queue.head != NULL;
    pthread_mutex_unlock(&c->mu);
    /* The requests written are off limits from here: close() or a reply may
     * complete them any time. */

    if (failed) {
        conn_fail(c, SURPOOL_ERR_DISCONNECTED, "write to the server failed");
        return -1;
    }
    if (more)
        lws_callback_on_writable(wsi);
    return 0;
}

/* A complete message (text for JSON, binary for CBOR). Returns -1 when the
 * connection must close. */
static int dispatch(struct lws *wsi, surpool__tconn *c, const char *buf, size_t len)
{
    surpool__transport *t = c->t;
    surpool__frame f;
    surpool_error e;

    surpool_err rc = t->cbor
                         ? surpool__cbor_decode_frame((const unsigned char *)buf, len, &f, &e)
                         : surpool__codec_decode_frame(buf, len, &f, &e);
    if (rc != SURPOOL_OK) {
        conn_fail(c, rc == SURPOOL_ERR_NOMEM ? SURPOOL_ERR_NOMEM : SURPOOL_ERR_PROTOCOL,
                  e.message);
        lws_close_reason(wsi, LWS_CLOSE_STATUS_INVALID_PAYLOAD, NULL, 0);
        return -1;
    }
    switch (f.kind) {
    case SURPOOL__FRAME_REPLY: {
        surpool__treq *r = NULL;
        pthread_mutex_lock(&c->mu);
        size_t i = map_find(&c->map, f.id, NULL);
        if (i != SIZE_MAX) {
            r = c->map.slots[i];
            map_remove_at(&c->map, i);
            list_remove(&c->inflight, r);
            r->tstate = TS_DONE;
            r->status = SURPOOL_OK;
            r->reply = f.root; /* ownership moves to the request */
            r->message[0] = '\0';
        }
        pthread_mutex_unlock(&c->mu);
        if (r != NULL) {
            r->done(r);
        } else {
            /* A late reply (after a timeout or cancel), or an unknown id. */
            surpool__log(t->logger, SURPOOL_LOG_DEBUG,
                         "dropping a reply for id %lld: no such request in flight",
                         (long long)f.id);
            json_decref(f.root);
        }
        break;
    }
    case SURPOOL__FRAME_NOTIFICATION:
        pthread_mutex_lock(&c->events_mu);
        if (!c->ev_detached && c->ev.on_notify != NULL)
            c->ev.on_notify(c->ev.userdata, f.root);
        pthread_mutex_unlock(&c->events_mu);
        json_decref(f.root);
        break;
    case SURPOOL__FRAME_ORPHAN_ERROR: {
        /* The server lost the id; the request's own deadline will end it. */
        json_t *em = json_object_get(json_object_get(f.root, "error"), "message");
        surpool__log(t->logger, SURPOOL_LOG_WARN,
                     "server sent an error without an id (dropped): %s",
                     json_is_string(em) ? json_string_value(em) : "(no message)");
        json_decref(f.root);
        break;
    }
    }
    return 0;
}

static int on_receive(struct lws *wsi, surpool__tconn *c, const char *in, size_t len)
{
    surpool__transport *t = c->t;
    int first = lws_is_first_fragment(wsi);
    int final = lws_is_final_fragment(wsi);

    if (first) {
        c->rx_len = 0;
        c->rx_overflow = 0;
        c->rx_binary = lws_frame_is_binary(wsi);
    }
    if ((c->rx_binary != 0) != t->cbor) {
        conn_fail(c, SURPOOL_ERR_PROTOCOL,
                  t->cbor ? "server sent a text frame on a CBOR connection"
                          : "server sent a binary frame on a JSON connection");
        lws_close_reason(wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE, NULL, 0);
        return -1;
    }
    if (!c->rx_overflow) {
        if (len > t->max_message_bytes - c->rx_len) {
            /* Stop buffering; the id is unknown until the end, so the whole
             * connection pays (below). */
            c->rx_overflow = 1;
            c->rx_len = 0;
        } else if (first && final) {
            return dispatch(wsi, c, in, len); /* one piece: decode in place */
        } else {
            if (c->rx_len + len > c->rx_cap) {
                size_t cap = c->rx_cap != 0 ? c->rx_cap : 64 * 1024;
                while (cap < c->rx_len + len)
                    cap = cap > SIZE_MAX / 2 ? c->rx_len + len : cap * 2;
                char *nb = surpool__realloc(c->rx, cap);
                if (nb == NULL) {
                    conn_fail(c, SURPOOL_ERR_NOMEM, "out of memory buffering a reply");
                    lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, NULL, 0);
                    return -1;
                }
                c->rx = nb;
                c->rx_cap = cap;
            }
            memcpy(c->rx + c->rx_len, in, len);
            c->rx_len += len;
        }
    }
    if (!final)
        return 0;
    if (c->rx_overflow) {
        char msg[96];
        msgf(msg, sizeof(msg), "reply larger than max_message_bytes (%zu)",
             t->max_message_bytes);
        conn_fail(c, SURPOOL_ERR_TOO_LARGE, msg);
        lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, NULL, 0);
        return -1;
    }
    int rc = dispatch(wsi, c, c->rx, c->rx_len);
    c->rx_len = 0;
    if (c->rx_cap > RX_KEEP_BYTES) {
        /* One huge reply should not pin its buffer for the connection's life. */
        surpool__free(c->rx);
        c->rx = NULL;
        c->rx_cap = 0;
    }
    return rc;
}

static void on_peer_close(surpool__tconn *c, const unsigned char *in, size_t len)
{
    if (in == NULL || len < 2)
        return;
    pthread_mutex_lock(&c->mu);
    c->peer_close_code = (in[0] << 8) | in[1];
    /* Any bytes at all: keep log lines and messages printable UTF-8. */
    surpool__text_sanitize(c->peer_close_reason, sizeof(c->peer_close_reason),
                           (const char *)in + 2, len - 2);
    pthread_mutex_unlock(&c->mu);
}

/* LWS_CALLBACK_WSI_DESTROY: the one reliable "this socket is gone". */
static void on_wsi_destroy(struct lws *wsi, surpool__tconn *c)
{
    surpool__transport *t = c->t;
    done_list d = {0};
    char msg[200];
    int notify = 0, retry = 0;
    surpool_err why = SURPOOL_ERR_DISCONNECTED;

    lws_set_opaque_user_data(wsi, NULL);
    lws_sul_cancel(&c->sul);
    c->timer_at = INT64_MAX;

    pthread_mutex_lock(&c->mu);
    c->wsi = NULL;
    c->wsi_gone = 1;
    if (c->state == CS_CONNECTING) {
        retry = conn_maybe_next_addr(c);
        if (!retry) {
            c->state = CS_FAILED;
            if (c->fail_code == SURPOOL_OK) {
                /* No error callback: lws' own handshake timeout (a server that
                 * accepts TCP but never answers the upgrade), or a plain close. */
                int64_t took = (surpool__now_ns() - c->open_started) / SURPOOL__NS_PER_MS;
                if (took + 100 >= (int64_t)t->timeout_secs * 1000) {
                    c->fail_code = SURPOOL_ERR_TIMEOUT;
                    msgf(c->fail_msg, sizeof(c->fail_msg),
                         "connect to %s port %d timed out after %lld ms (%s)", t->url->host,
                         t->url->port, (long long)took,
                         c->tcp_up ? "TCP connected, no answer to the WebSocket upgrade"
                                   : "no answer to the TCP connect");
                } else {
                    c->fail_code = SURPOOL_ERR_CONNECT;
                    msgf(c->fail_msg, sizeof(c->fail_msg),
                         "server at %s port %d closed the connection before the "
                         "WebSocket upgrade completed",
                         t->url->host, t->url->port);
                }
            }
        }
    } else {
        atomic_store(&c->dead, 1);
        if (c->peer_close_code != 0)
            msgf(msg, sizeof(msg), "connection closed by peer (code %d%s%s)",
                 c->peer_close_code, c->peer_close_reason[0] != '\0' ? " " : "",
                 c->peer_close_reason);
        else if (c->fail_code != SURPOOL_OK)
            copy_str(msg, sizeof(msg), c->fail_msg);
        else
            copy_str(msg, sizeof(msg), "connection lost");
        conn_collect_all(c, &d, SURPOOL_ERR_DISCONNECTED, msg);
        if (c->fail_code != SURPOOL_OK)
            why = c->fail_code;
        notify = c->state == CS_OPEN && !c->closing && !c->dead_notified;
        c->dead_notified = 1;
    }
    c->svc_done = !retry;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);

    done_run(&d);
    if (notify) {
        surpool__log(t->logger, SURPOOL_LOG_INFO, "%s", msg);
        pthread_mutex_lock(&c->events_mu);
        if (!c->ev_detached && c->ev.on_dead != NULL)
            c->ev.on_dead(c->ev.userdata, why, msg);
        pthread_mutex_unlock(&c->events_mu);
    }
    if (retry)
        conn_wake(c);
    conn_unref(c); /* the wsi's reference */
}

/* ------------------------------------------------------------------------- */
/* The protocol callback                                                      */
/* ------------------------------------------------------------------------- */

static int lws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                  size_t len)
{
    surpool__tconn *c;

    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED: {
        surpool__transport *t = lws_context_user(lws_get_context(wsi));
        /* Once stopping, leave the list to destroy(): no new lws work now. */
        if (t != NULL && !atomic_load(&t->stop))
            process_wake_list(t);
        return 0; /* always: non-zero closes lws' wake pipe */
    }
    case LWS_CALLBACK_WSI_CREATE:
        /* Client wsis get this when the TCP connection is up. */
        if ((c = lws_get_opaque_user_data(wsi)) != NULL) {
            pthread_mutex_lock(&c->mu);
            c->tcp_up = 1;
            pthread_mutex_unlock(&c->mu);
        }
        return 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if ((c = lws_get_opaque_user_data(wsi)) != NULL)
            on_connection_error(wsi, c, in, len);
        return 0;
    case LWS_CALLBACK_CLIENT_FILTER_PRE_ESTABLISH:
        if ((c = lws_get_opaque_user_data(wsi)) != NULL)
            return on_pre_establish(wsi, c);
        return 0;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        if ((c = lws_get_opaque_user_data(wsi)) != NULL)
            return on_established(wsi, c);
        return -1;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if ((c = lws_get_opaque_user_data(wsi)) != NULL)
            return on_writeable(wsi, c);
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if ((c = lws_get_opaque_user_data(wsi)) != NULL)
            return on_receive(wsi, c, in, len);
        return 0;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if ((c = lws_get_opaque_user_data(wsi)) != NULL)
            on_peer_close(c, in, len);
        return 0;
    case LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION:
        /* user = X509_STORE_CTX, in = SSL, len = preverify_ok */
        if ((c = lws_get_opaque_user_data(wsi)) != NULL)
            return on_cert_verify(c, user, (int)len);
        return 0;
    case LWS_CALLBACK_WSI_DESTROY:
        if ((c = lws_get_opaque_user_data(wsi)) != NULL)
            on_wsi_destroy(wsi, c);
        return 0;
    default: break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* ------------------------------------------------------------------------- */
/* Service thread                                                             */
/* ------------------------------------------------------------------------- */

static void *service_main(void *arg)
{
    surpool__transport *t = arg;
    int complained = 0;
    while (!atomic_load(&t->stop)) {
        if (lws_service(t->ctx, 0) < 0 && !atomic_load(&t->stop)) {
            if (!complained++)
                surpool__log(t->logger, SURPOOL_LOG_ERROR,
                             "libwebsockets service loop failed; retrying");
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    /* From here on nobody may call lws_cancel_service() on this context. */
    pthread_rwlock_wrlock(&t->alive_lock);
    t->ctx_alive = 0;
    pthread_rwlock_unlock(&t->alive_lock);
    /* Synchronous; sends no close frames; WSI_DESTROY for every remaining wsi. */
    lws_context_destroy(t->ctx);
    t->ctx = NULL;
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* The vtable                                                                 */
/* ------------------------------------------------------------------------- */

static void transport_free(surpool__transport *t)
{
    if (t->ssl_ctx != NULL)
        SSL_CTX_free(t->ssl_ctx);
    registry_remove(t);
    pthread_rwlock_destroy(&t->alive_lock);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cond);
    surpool__free(t);
}

static surpool_err lws_t_create(const surpool__tconfig *cfg, void *arg,
                                surpool__transport **out, surpool_error *err)
{
    SURPOOL__UNUSED(arg);
    if (cfg == NULL || out == NULL || cfg->url == NULL || cfg->url->host == NULL ||
        cfg->url->path == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "transport create: cfg, cfg->url and out are required");
    pthread_once(&g_once, global_init);
    if (g_ssl_rx_alert_idx < 0 || g_ssl_tx_alert_idx < 0 || g_ssl_note_idx < 0)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot allocate OpenSSL ex_data");

    /* libwebsockets 4.1 refuses a connect whose path does not fit its header
     * buffer and then destroys the half-made socket later, behind our back (a
     * use-after-free of the connection and a leak inside lws). The URL parser
     * refuses such a path; refuse it here too, whoever filled the URL. */
    if (strlen(cfg->url->path) > SURPOOL__URL_PATH_MAX)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "URL path longer than %d bytes (libwebsockets cannot send it)",
                               SURPOOL__URL_PATH_MAX);
    surpool__transport *t = surpool__calloc(1, sizeof(*t));
    if (t == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory creating the transport");
    t->url = cfg->url;
    t->logger = cfg->logger;
    t->max_message_bytes = cfg->max_message_bytes != 0 ? cfg->max_message_bytes : SIZE_MAX;
    t->cbor = cfg->cbor != 0;
    t->proto = t->cbor ? "cbor" : "json";
    t->connect_timeout_ms = cfg->connect_timeout_ms;
    long secs = cfg->connect_timeout_ms > 0 ? (cfg->connect_timeout_ms + 999) / 1000 : 1;
    t->timeout_secs = secs < 1 ? 1 : secs > 3600 ? 3600 : (int)secs;
    t->insecure = cfg->tls_insecure_skip_verify != 0;
    t->ctx_alive = 0;

    unsigned char tmp[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET6, cfg->url->host, tmp) == 1)
        t->host_is_ip = 6;
    else if (inet_pton(AF_INET, cfg->url->host, tmp) == 1)
        t->host_is_ip = 4;
    int default_port = cfg->url->port == (cfg->url->tls ? 443 : 80);
    int n;
    if (t->host_is_ip == 6)
        n = default_port
                ? snprintf(t->host_header, sizeof(t->host_header), "[%s]", cfg->url->host)
                : snprintf(t->host_header, sizeof(t->host_header), "[%s]:%d", cfg->url->host,
                           cfg->url->port);
    else
        n = default_port
                ? snprintf(t->host_header, sizeof(t->host_header), "%s", cfg->url->host)
                : snprintf(t->host_header, sizeof(t->host_header), "%s:%d", cfg->url->host,
                           cfg->url->port);
    if (n < 0 || (size_t)n >= sizeof(t->host_header)) {
        surpool__free(t);
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "host name too long");
    }

    if (pthread_mutex_init(&t->mu, NULL) != 0) {
        surpool__free(t);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a mutex");
    }
    if (surpool__cond_init(&t->cond) != 0) {
        pthread_mutex_destroy(&t->mu);
        surpool__free(t);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
    }
    if (pthread_rwlock_init(&t->alive_lock, NULL) != 0) {
        pthread_cond_destroy(&t->cond);
        pthread_mutex_destroy(&t->mu);
        surpool__free(t);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a lock");
    }
    /* From here transport_free() undoes everything. */
    registry_add(t); /* before the context: its creation may log */

    if (cfg->url->tls) {
        surpool_err rc = tls_ctx_create(cfg, &t->ssl_ctx, err);
        if (rc != SURPOOL_OK) {
            transport_free(t);
            return rc;
        }
    }

    t->protocols[0].name = t->proto;
    t->protocols[0].callback = lws_cb;
    t->protocols[0].rx_buffer_size = 64 * 1024;
    t->protocols[0].tx_packet_size = 64 * 1024;

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    /* Without this option lws sets up no client TLS at all; with it and no
     * provided SSL_CTX it would build (and in 4.1 leak) one of its own, so ws://
     * transports go without. */
    info.options = cfg->url->tls ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0;
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = t->protocols;
    info.user = t;
    /* Without it lws sizes an fd table by `ulimit -n` and indexes it by fd number
     * unchecked; with it lws searches a small table. Twice the pool: closed
     * connections linger until the peer acknowledges the close frame (or lws
     * times out) while the pool already opens their replacements. */
    int maxc = cfg->max_connections > 0 ? cfg->max_connections : 1;
    info.fd_limit_per_thread = (unsigned int)(maxc > 100000 ? 100000 : maxc) * 2 + 16;
    info.pt_serv_buf_size = 64 * 1024;
    /* The header buffer SURPOOL__URL_PATH_MAX is sized against (lws' default,
     * stated so that the two cannot drift apart). */
    info.max_http_header_data = 4096;
    info.timeout_secs = (unsigned int)t->timeout_secs;
    info.connect_timeout_secs = (unsigned int)t->timeout_secs;
    info.retry_and_idle_policy = &g_retry;
    info.provided_client_ssl_ctx = t->ssl_ctx;
    info.count_threads = 1;

    t->ctx = lws_create_context(&info); /* note: sets SIGPIPE to ignored */
    if (t->ctx == NULL) {
        transport_free(t);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM,
                               "cannot create the libwebsockets context");
    }
    t->ctx_alive = 1;

    /* The service thread takes no signals: they belong to the application. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int prc = pthread_create(&t->thread, NULL, service_main, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (prc != 0) {
        lws_context_destroy(t->ctx);
        transport_free(t);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM,
                               "cannot start the service thread (error %d)", prc);
    }
    *out = t;
    return SURPOOL_OK;
}

/* lws reports a failed TCP connect as "Unable to connect" and keeps the errno
 * to itself. Say which failure it was, as libpq does: one connect of our own to
 * the same address, on the caller's thread (never the service thread), bounded
 * by the open deadline and 2 s. NULL when it cannot tell (e.g. it connects now). */
static const char *tcp_diagnose(const char *addr, int port, int64_t deadline_ns)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)(void *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)(void *)&ss;
    if (inet_pton(AF_INET, addr, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        sl = sizeof(*v4);
    } else if (inet_pton(AF_INET6, addr, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        sl = sizeof(*v6);
    } else {
        return NULL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0)
        return NULL;
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    int fl = fcntl(fd, F_GETFL, 0);
    int e = 0;
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        close(fd);
        return NULL;
    }
    if (connect(fd, (struct sockaddr *)&ss, sl) != 0) {
        e = errno;
        if (e == EINPROGRESS) {
            int64_t left = (deadline_ns - surpool__now_ns()) / SURPOOL__NS_PER_MS;
            struct pollfd pfd = {fd, POLLOUT, 0};
            int pr = poll(&pfd, 1, left < 0 ? 0 : left > 2000 ? 2000 : (int)left);
            socklen_t el = sizeof(e);
            if (pr == 0)
                e = ETIMEDOUT;
            else if (pr < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
                e = 0;
        }
    }
    close(fd);
    switch (e) {
    case ECONNREFUSED:
        return "connection refused (is the server running and listening on that port?)";
    case ENETUNREACH: return "network unreachable";
    case EHOSTUNREACH: return "host unreachable";
    case ETIMEDOUT: return "timed out (no answer to the TCP connect)";
    case ECONNRESET: return "connection reset by the server";
    default: return NULL;
    }
}

/* Resolve on the caller's thread: lws would block its service thread. */
static surpool_err resolve(surpool__transport *t, surpool__tconn *c, surpool_error *err)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(t->url->host, NULL, &hints, &res);
    if (rc != 0) {
        if (rc == EAI_MEMORY)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot resolve host '%s': %s",
                                   t->url->host, gai_strerror(rc));
        return surpool__seterr(err, SURPOOL_ERR_CONNECT,
                               "cannot connect to %s port %d: name not resolved (%s)",
                               t->url->host, t->url->port, gai_strerror(rc));
    }
    for (struct addrinfo *a = res; a != NULL && c->n_addrs < MAX_ADDRS; a = a->ai_next) {
        const void *src;
        if (a->ai_family == AF_INET)
            src = &((const struct sockaddr_in *)(const void *)a->ai_addr)->sin_addr;
        else if (a->ai_family == AF_INET6)
            src = &((const struct sockaddr_in6 *)(const void *)a->ai_addr)->sin6_addr;
        else
            continue;
        char s[INET6_ADDRSTRLEN];
        if (inet_ntop(a->ai_family, src, s, sizeof(s)) == NULL)
            continue;
        int dup = 0;
        for (int i = 0; i < c->n_addrs; i++)
            dup |= strcmp(c->addrs[i], s) == 0;
        if (!dup)
            copy_str(c->addrs[c->n_addrs++], sizeof(c->addrs[0]), s);
    }
    freeaddrinfo(res);
    if (c->n_addrs == 0)
        return surpool__seterr(err, SURPOOL_ERR_CONNECT,
                               "cannot connect to %s port %d: name not resolved (no IPv4 "
                               "or IPv6 address)",
                               t->url->host, t->url->port);
    return SURPOOL_OK;
}

static surpool_err lws_t_open(surpool__transport *t, int64_t deadline_ns,
                              const surpool__tconn_events *ev, surpool__tconn **out,
                              surpool_error *err)
{
    if (t == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "open: t and out are required");
    int64_t start = surpool__now_ns();

    surpool__tconn *c = surpool__calloc(1, sizeof(*c));
    if (c == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory opening a connection");
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        surpool__free(c);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a mutex");
    }
    if (surpool__cond_init(&c->cond) != 0) {
        pthread_mutex_destroy(&c->mu);
        surpool__free(c);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a condition variable");
    }
    if (pthread_mutex_init(&c->events_mu, NULL) != 0) {
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->mu);
        surpool__free(c);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot create a mutex");
    }
    c->t = t;
    atomic_init(&c->refs, 1); /* the opener's, then the user's */
    c->state = CS_CONNECTING;
    list_init(&c->queue);
    list_init(&c->inflight);
    c->deadline_hint = INT64_MAX;
    c->timer_at = INT64_MAX;
    c->open_deadline = deadline_ns;
    if (ev != NULL)
        c->ev = *ev;

    surpool_err rc = resolve(t, c, err);

    pthread_mutex_lock(&t->mu);
    c->all_next = t->all_head;
    if (t->all_head != NULL)
        t->all_head->all_prev = c;
    t->all_head = c;
    t->n_conns++;
    pthread_mutex_unlock(&t->mu);
    if (rc != SURPOOL_OK) {
        conn_unref(c);
        return rc;
    }

    conn_wake(c);
    pthread_mutex_lock(&c->mu);
    while (c->state == CS_CONNECTING) {
        if (surpool__cond_wait_until(&c->cond, &c->mu, deadline_ns) == ETIMEDOUT)
            break;
    }
    if (c->state == CS_OPEN) {
        pthread_mutex_unlock(&c->mu);
        *out = c;
        return SURPOOL_OK;
    }
    if (c->state == CS_FAILED) {
        rc = surpool__seterr(err,
                             c->fail_code != SURPOOL_OK ? c->fail_code : SURPOOL_ERR_CONNECT,
                             "%s", c->fail_msg[0] != '\0' ? c->fail_msg : "connect failed");
        int tcp_failed = c->tcp_failed;
        char addr[sizeof(c->addrs[0])];
        copy_str(addr, sizeof(addr), c->addrs[c->addr_idx]);
        pthread_mutex_unlock(&c->mu);
        const char *why = tcp_failed ? tcp_diagnose(addr, t->url->port, deadline_ns) : NULL;
        if (why != NULL) {
            if (strcmp(addr, t->url->host) != 0)
                surpool__seterr(err, rc, "cannot connect to %s port %d (%s): %s", t->url->host,
                                t->url->port, addr, why);
            else
                surpool__seterr(err, rc, "cannot connect to %s port %d: %s", t->url->host,
                                t->url->port, why);
        }
    } else {
        /* Deadline: have the service thread kill the attempt, and wait (bounded)
         * until it let go of the socket so that nothing outlives this call. */
        c->abort = 1;
        pthread_mutex_unlock(&c->mu);
        conn_wake(c);
        int64_t until = surpool__now_ns() + ABORT_WAIT_NS;
        pthread_mutex_lock(&c->mu);
        while (!c->svc_done || !c->started) {
            if (surpool__cond_wait_until(&c->cond, &c->mu, until) == ETIMEDOUT)
                break;
        }
        int tcp_up = c->tcp_up;
        pthread_mutex_unlock(&c->mu);
        long ms = (long)((deadline_ns - start + SURPOOL__NS_PER_MS / 2) / SURPOOL__NS_PER_MS);
        rc = surpool__seterr(err, SURPOOL_ERR_TIMEOUT,
                             "connect to %s port %d timed out after %ld ms (%s)", t->url->host,
                             t->url->port, ms > 0 ? ms : 0,
                             tcp_up ? "TCP connected, no answer to the WebSocket upgrade"
                                    : "no answer to the TCP connect");
    }
    conn_unref(c);
    return rc;
}

static surpool_err lws_t_submit(surpool__tconn *c, surpool__treq *req)
{
    if (c == NULL || req == NULL || req->buf == NULL || req->len == 0 || req->done == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    pthread_mutex_lock(&c->mu);
    if (c->state != CS_OPEN || c->closing || atomic_load(&c->dead)) {
        pthread_mutex_unlock(&c->mu);
        return SURPOOL_ERR_DISCONNECTED;
    }
    /* Reserve the in-flight slot now: the service thread must not fail later. */
    if (map_reserve(&c->map, c->map.count + c->queue.n + 1) != 0) {
        pthread_mutex_unlock(&c->mu);
        return SURPOOL_ERR_NOMEM;
    }
    req->status = SURPOOL_OK;
    req->reply = NULL;
    req->message[0] = '\0';
    req->tstate = TS_QUEUED;
    list_push(&c->queue, req);
    if (req->deadline_ns < c->deadline_hint)
        c->deadline_hint = req->deadline_ns;
    pthread_mutex_unlock(&c->mu);
    conn_wake(c);
    return SURPOOL_OK;
}

static int lws_t_cancel(surpool__tconn *c, surpool__treq *req)
{
    if (c == NULL || req == NULL)
        return 0;
    int removed = 0;
    pthread_mutex_lock(&c->mu);
    if (req->tstate == TS_QUEUED) {
        list_remove(&c->queue, req);
        removed = 1;
    } else if (req->tstate == TS_INFLIGHT) {
        size_t i = map_find(&c->map, req->id, req);
        if (i != SIZE_MAX)
            map_remove_at(&c->map, i);
        list_remove(&c->inflight, req);
        removed = 1;
    }
    if (removed)
        req->tstate = TS_NONE;
    pthread_mutex_unlock(&c->mu);
    return removed;
}

static int lws_t_alive(surpool__tconn *c)
{
    return c != NULL && !atomic_load(&c->dead);
}

static void lws_t_close(surpool__tconn *c)
{
    if (c == NULL)
        return;
    done_list d = {0};
    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    c->closing = 1;
    atomic_store(&c->dead, 1);
    conn_collect_all(c, &d, SURPOOL_ERR_DISCONNECTED, "connection closed");
    pthread_mutex_unlock(&c->mu);
    done_run(&d);

    /* Wait out a running event callback, then make sure none starts. */
    pthread_mutex_lock(&c->events_mu);
    c->ev_detached = 1;
    pthread_mutex_unlock(&c->events_mu);

    conn_wake(c);  /* the service thread sends the close frame */
    conn_unref(c); /* the user's reference */
}

static void lws_t_destroy(surpool__transport *t)
{
    if (t == NULL)
        return;

    /* 1. Close every connection still open (contract 1). */
    for (;;) {
        surpool__tconn *victim = NULL;
        pthread_mutex_lock(&t->mu);
        for (surpool__tconn *c = t->all_head; c != NULL; c = c->all_next) {
            pthread_mutex_lock(&c->mu);
            int open = c->state == CS_OPEN && !c->closing;
            pthread_mutex_unlock(&c->mu);
            if (open && conn_tryref(c)) {
                victim = c;
                break;
            }
        }
        pthread_mutex_unlock(&t->mu);
        if (victim == NULL)
            break;
        lws_t_close(victim);
        conn_unref(victim);
    }

    /* 2. Give the close handshakes a moment: wait for every WSI_DESTROY. */
    int64_t until = surpool__now_ns() + SHUTDOWN_WAIT_NS;
    pthread_mutex_lock(&t->mu);
    while (t->n_conns > 0) {
        if (surpool__cond_wait_until(&t->cond, &t->mu, until) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&t->mu);

    /* 3-5. Stop the loop; the service thread marks the context dead under the
     * write lock and destroys it (WSI_DESTROY for whatever is left). */
    atomic_store(&t->stop, 1);
    transport_kick(t);
    pthread_join(t->thread, NULL);

    /* 6. Leftovers: wake-list references the loop never took, then anything
     * still allocated (only if lws skipped a WSI_DESTROY). */
    pthread_mutex_lock(&t->mu);
    surpool__tconn *w = t->wake_head;
    t->wake_head = t->wake_tail = NULL;
    pthread_mutex_unlock(&t->mu);
    while (w != NULL) {
        surpool__tconn *next = w->wake_next;
        atomic_store(&w->in_wake, 0);
        conn_unref(w);
        w = next;
    }
    for (;;) {
        pthread_mutex_lock(&t->mu);
        surpool__tconn *c = t->all_head;
        pthread_mutex_unlock(&t->mu);
        if (c == NULL)
            break;
        done_list d = {0};
        pthread_mutex_lock(&c->mu);
        conn_collect_all(c, &d, SURPOOL_ERR_DISCONNECTED, "transport destroyed");
        pthread_mutex_unlock(&c->mu);
        done_run(&d);
        atomic_store(&c->refs, 0);
        conn_free(c);
    }
    transport_free(t);
}

const surpool__transport_ops surpool__transport_lws = {
    .name = "libwebsockets",
    .headroom = LWS_PRE,
    .create = lws_t_create,
    .destroy = lws_t_destroy,
    .open = lws_t_open,
    .submit = lws_t_submit,
    .cancel = lws_t_cancel,
    .alive = lws_t_alive,
    .close = lws_t_close,
};
