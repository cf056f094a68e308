/*
 * The libwebsockets (4.1) transport: the only file that includes <libwebsockets.h>.
 *
 * libwebsockets runs raw client sockets ("RAW" method): it connects them, reads
 * them, says when one can take more (we write with send(): sock_send() says
 * why), and runs the event loop and timers. The WebSocket protocol on them is
 * ws.c's (wslay framing: lws 4.1's own client parser ran once per received
 * byte on the service thread), and TLS for wss is tls.c's on memory buffers
 * (lws 4.1 cannot put TLS under a raw client). So a connection is: TCP up (RAW_CONNECTED) → TLS handshake (wss) →
 * upgrade request and answer (on_handshake_rx) → frames (on_frames).
 *
 * Shape (from measured libwebsockets 4.1 behaviour):
 *  - One lws context and one service thread per transport (= per pool). Every lws
 *    call happens on that thread, except lws_cancel_service(), which callers use to
 *    wake it. The context is created on the creating thread before the service
 *    thread starts and destroyed on the service thread.
 *  - A connection (surpool__tconn) has a mutex guarding its request table
 *    (reqtable.c: the send queue, the in-flight list and map by RPC id,
 *    deadlines), its state and its error text. Callers enqueue under the mutex and put
 *    the connection on the transport's wake list; the service thread takes the
 *    list in LWS_CALLBACK_EVENT_WAIT_CANCELLED and asks lws for writable
 *    callbacks, starts connects, or closes.
 *  - Lifetime is reference counted: the handle (opener, then user) holds one
 *    reference, a live wsi holds one, a wake-list entry holds one. Whoever drops
 *    the last one frees the connection, so no callback ever sees freed memory no
 *    matter how close(), open() timeouts and WSI_DESTROY interleave.
 *  - Request completions (done()) run without the connection mutex held: they are
 *    collected on a local list first. A done() for a reply may ask to finish its
 *    hand-over at the end of the loop's pass (transport.h contract 10, pass_end()).
 *  - Replies are routed by their id, read where the frame starts (json_peek.c,
 *    cbor_codec.c: surpool__codec_route, surpool__cbor_route), and
 *    handed to their request as raw bytes: this thread never builds or frees a
 *    result tree, so one big reply does not stall every connection (dispatch()).
 *  - TLS (our SSL_CTX, sessions on memory buffers, certificate checks,
 *    handshake notes) is tls.c; this file moves its bytes (on_rx(), ws_flush()).
 *  - The event loop is either lws' own poll() loop (lws_service()) or a libuv
 *    loop of ours (a "foreign" loop, uv_run() on the service thread; never the
 *    loop lws would create itself, which installs process signal handlers).
 *    poll() walks every descriptor on every pass: with 1000 idle sockets it cost
 *    77.7 us of CPU per round trip against 10.2 us on libuv (flat), but with no
 *    idle socket libuv costs ~30 % more (10.7 vs 8.1 us). So `auto` picks libuv
 *    for pools of more than SURPOOL__LOOP_AUTO_LIBUV_ABOVE connections (where
 *    the two lines cross, ~40 sockets) and poll() below. lws loads libuv support
 *    as a plugin (libwebsockets-evlib-uv); without it we fall back to poll().
 *
 * Locks, outermost first (each one's place is also written next to it):
 *   transport mu → connection mu → process-wide log registry mutex → log_fn;
 *   connection events_mu → (the pool's on_dead/on_notify, which log);
 *   alive_lock (read) → log registry mutex.
 * The registry mutex is taken inside lws calls that log. Requests are framed
 * (copied into ws.c's output) under the connection mutex and written after it
 * is released. No lock of ours is held while done() runs.
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>
#include <uv.h>

#include "cbor_codec.h"
#include "codec.h"
#include "internal.h"
#include "reqtable.h"
#include "transport.h"
#include "thread.h"
#include "tcp_info.h"
#include "tls.h"
#include "utf8.h"
#include "ws.h"

/* ------------------------------------------------------------------------- */
/* Types                                                                      */
/* ------------------------------------------------------------------------- */

enum { CS_CONNECTING = 0, CS_OPEN = 1, CS_FAILED = 2 }; /* tconn.state */

#define MAX_ADDRS 4                 /* resolved addresses tried in order while TCP fails */
#define RX_KEEP_BYTES (1u << 20)    /* receive buffers above this are freed after use */
#define RX_STEAL_BYTES (256u << 10) /* replies from this size take the buffer, not a copy */
#define ABORT_WAIT_NS (2000 * SURPOOL__NS_PER_MS)
#define SHUTDOWN_WAIT_NS (1000 * SURPOOL__NS_PER_MS)
#define TX_HELD_BYTES (64u << 10)   /* a send queue this long is a long request's */
#define TLS_PLAIN_BYTES (64u << 10) /* decrypted bytes handed on per read (4 records) */
#define TLS_WRITE_CHUNK (16u << 10) /* bytes encrypted per write (one record) */

struct surpool__tconn {
    surpool__transport *t;
    atomic_int refs;
    atomic_int dead;                     /* alive() == !dead */
    atomic_int in_wake;                  /* on the transport's wake list (or about to be) */
    surpool__tconn *wake_next;           /* t->mu */
    surpool__tconn *all_next, *all_prev; /* t->mu */

    /* Everything below up to "service thread only". Lock order: after t->mu (destroy
     * takes it inside); before g_reg_mu (should a logging lws call run under it); no other
     * lock is taken under it, and conn_wake() is called only after releasing it. */
    pthread_mutex_t mu;
    pthread_cond_t cond; /* the opener waits here */
    int state;
    int started;    /* the service thread took the current connect request */
    int svc_done;   /* the service thread is finished with this connection's socket */
    int wsi_gone;   /* the current attempt's wsi was destroyed */
    int abort;      /* open() gave up: kill the attempt */
    int closing;    /* close() was called */
    int tcp_up;     /* the current attempt got a TCP connection */
    int tcp_failed; /* lws said the TCP connect failed (it keeps the errno to itself) */
    int tls_hs;     /* wss: TCP is up, the TLS handshake is not done yet */
    int dead_notified;
    /* fail() (contract 11): 1 asked, 2 seen by the service thread; with why. */
    int failing;
    surpool_err failing_code;
    char failing_msg[200];
    surpool__reqtable rt; /* queued and in-flight requests */
    int64_t open_deadline;
    int64_t open_started;
    surpool_err fail_code; /* why it failed (connect error, too large, protocol) */
    char fail_msg[200];
    int peer_close_code;
    char peer_close_reason[124];
    SSL *ssl;               /* wss: our TLS session on the raw socket (service thread) */
    surpool__tls_peer peer; /* what its certificate is checked against */
    int tls_up;             /* its handshake is done (service thread) */
    unsigned char *tls_out; /* encrypted bytes being written (service thread): */
    size_t tls_out_cap;     /* ...tls_out_off of its tls_out_len are sent */
    size_t tls_out_len, tls_out_off;
    char addrs[MAX_ADDRS][INET6_ADDRSTRLEN];
    int n_addrs;
    int addr_idx;
    /* The endpoint this connection goes to (borrowed: outlives the transport)
     * and what follows from it: the Host header and SNI name. */
    const surpool__url *url;
    char host_header[300]; /* "host[:port]" / "[v6][:port]" */
    int host_is_ip;        /* 4, 6, or 0 for a name */

    /* Service thread only. */
    struct lws *wsi;
    surpool__ws *ws; /* the WebSocket protocol on the current attempt's socket */
    int upgraded;    /* the server accepted the WebSocket upgrade */
    int ending;      /* write what ws has queued (a close frame), then drop the socket */
    int stop_code;   /* the close code for ws when dispatch() stopped reading */
    size_t out_off;  /* ws://: bytes of ws's output already sent (ws_flush()) */
    char *rx;
    size_t rx_len, rx_cap;
    int rx_overflow;
    lws_sorted_usec_list_t sul;
    int64_t timer_at;              /* when the sul fires (INT64_MAX: not scheduled) */
    lws_sorted_usec_list_t ka_sul; /* keepalive (keepalive_check()) */
    int64_t rx_last;               /* when bytes last came from the server */
    int64_t tx_last;               /* when the server last took more of a long request */
    uint64_t tx_acked;             /* TCP bytes it had acknowledged at the last check */
    int tx_held;                   /* a long request waited at the last check */
    int ka_pinged;                 /* a ping went out since rx_last */

    /* Events: events_mu is held around every on_dead/on_notify so that close()
     * can wait out a running one and then detach. Lock order: taken with no other
     * lock of ours held; under it run only the pool's event handlers (they set a
     * flag, signal the maintainer and call log_fn). */
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

    struct lws_context *ctx;           /* lws sets it to NULL when a libuv context is freed */
    struct lws_protocols protocols[2]; /* lws keeps a pointer: must live here */
    int use_uv;                        /* set before the service thread starts */
    uv_loop_t uv;                      /* ours when use_uv; run by the service thread */
    int uv_stopping;                   /* service thread only */
    uv_check_t pass_check;             /* end the pass after the I/O callbacks... */
    uv_prepare_t pass_prep;            /* ...and before the loop blocks (pass_end) */
    int pass_handles;                  /* service thread only: how many of the two
                                          are initialised (uv_teardown closes them) */
    SSL_CTX *ssl_ctx;
    unsigned char *tls_plain; /* wss: decrypted records land here (service thread) */
    pthread_t thread;
    atomic_int stop;
    atomic_int wake_pending;

    /* Guards lws_cancel_service() against a destroyed context. Lock order: taken
     * with no other lock of ours held (transport_kick() runs after t->mu is
     * released); under it only lws' own logging (g_reg_mu). */
    pthread_rwlock_t alive_lock;
    int ctx_alive;

    /* Wake list, connection list. Lock order: the outermost transport lock; may
     * take a connection's mu under it (destroy); never taken under one. */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    surpool__tconn *wake_head, *wake_tail;
    surpool__tconn *all_head;
    int n_conns;

    surpool__transport *reg_next; /* g_reg: transports whose logger gets lws lines */
};

/* ------------------------------------------------------------------------- */
/* Process-wide: lws logging                                                 */
/* ------------------------------------------------------------------------- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
/* Lock order: innermost of ours (taken inside lws' logging, possibly under a
 * connection's mu or the alive_lock); only the user's log_fn runs under it. */
static pthread_mutex_t g_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static surpool__transport *g_reg_head;

/* lws' log level and emitter are process global: forward its ERR/WARN lines to
 * every live transport's logger (we cannot tell which context a line is about).
 * With no logger registered the line goes nowhere: the library never prints. */
static void forward_lws_log(int level, const char *line)
{
    char buf[300];
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    /* lws lines can quote what the peer sent (headers, close reasons). */
    surpool__text_sanitize(buf, sizeof(buf), line, n);
    surpool_log_level lv = (level & LLL_ERR) ? SURPOOL_LOG_ERROR : SURPOOL_LOG_WARN;
    /* Our empty proxy setting (transport_create()), said at every context. */
    if (strstr(buf, "http_proxy needs to be ads:port") != NULL)
        return;

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

/* Set once lws failed to load its libuv plugin: later pools skip the attempt
 * (and lws' error line about it). */
static atomic_int g_uv_missing;

static void global_init(void)
{
    lws_set_log_level(LLL_ERR | LLL_WARN, forward_lws_log);
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

/* Keepalive of every open socket (keepalive_check()): a WebSocket ping after
 * 30 s without a byte from the server, hang up after 40 s. */
int surpool__lws_test_ka_ping_ms, surpool__lws_test_ka_hangup_ms;
static int64_t ka_ping_ns(void)
{
    int ms = surpool__lws_test_ka_ping_ms;
    return (ms > 0 ? ms : 30000) * SURPOOL__NS_PER_MS;
}
static int64_t ka_hangup_ns(void)
{
    int ms = surpool__lws_test_ka_hangup_ms;
    return (ms > 0 ? ms : 40000) * SURPOOL__NS_PER_MS;
}

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

/* "cannot connect to HOST port P (ADDR): WHY" into dst: the address only when
 * it is not the host as written (a name that resolved to it). */
static void connect_msg(char *dst, size_t cap, const surpool__tconn *c, const char *addr,
                        const char *why)
{
    if (strcmp(addr, c->url->host) != 0)
        msgf(dst, cap, "cannot connect to %s port %d (%s): %s", c->url->host, c->url->port,
             addr, why);
    else
        msgf(dst, cap, "cannot connect to %s port %d: %s", c->url->host, c->url->port, why);
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

    surpool__reqtable_free(&c->rt);
    surpool__ws_free(c->ws);
    SSL_free(c->ssl);
    surpool__free(c->tls_out);
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

/* Contract 10: the hooks armed during the current pass of this thread's
 * loop. A pass ends when lws_service() returns (poll loop), or on libuv in
 * its check phase (right after the I/O callbacks) and its prepare phase
 * (right before it blocks for I/O). Hooks are armed only while a reply is
 * routed (g_routing, on_reply()): lws reads sockets after poll() returned
 * (or in libuv's I/O callbacks), so such a hook runs before the loop waits
 * again. Completions made elsewhere on this thread (deadline timers, which
 * lws' poll loop runs before poll(); sockets closing) hand over at once: a
 * hook armed there could wait for the next event. */
static _Thread_local int g_in_pass;
static _Thread_local int g_routing;
static _Thread_local surpool__pass_hook *g_pass_head;
static _Thread_local surpool__pass_hook **g_pass_tail;

int surpool__transport_defer(surpool__pass_hook *h)
{
    if (!g_in_pass || !g_routing)
        return 0;
    if (!h->armed) {
        h->armed = 1;
        h->next = NULL;
        *g_pass_tail = h;
        g_pass_tail = &h->next;
    }
    return 1;
}

static void pass_begin(void)
{
    g_pass_head = NULL;
    g_pass_tail = &g_pass_head;
    g_in_pass = 1;
}

/* Run the hooks armed so far, oldest first. */
static void pass_end(void)
{
    surpool__pass_hook *h;
    while ((h = g_pass_head) != NULL) {
        g_pass_head = h->next;
        if (g_pass_head == NULL)
            g_pass_tail = &g_pass_head;
        h->armed = 0;
        h->run(h); /* may free h's owner: not touched again */
    }
}

/* The loop is over: run what is armed; done() calls from here on (the
 * context's destruction) hand over at once. */
static void pass_stop(void)
{
    pass_end();
    g_in_pass = 0;
}

static void on_pass_check(uv_check_t *h)
{
    (void)h;
    pass_end();
}

static void on_pass_prep(uv_prepare_t *h)
{
    (void)h;
    pass_end();
}

/* Wake the service thread; only lws call allowed off it. */
static void transport_kick(surpool__transport *t)
{
    pthread_rwlock_rdlock(&t->alive_lock);
    if (t->ctx_alive)
        lws_cancel_service(t->ctx);
    pthread_rwlock_unlock(&t->alive_lock);
}

/* On the service thread, before the context goes: from here on nobody may call
 * lws_cancel_service() on it. */
static void context_mark_dead(surpool__transport *t)
{
    pthread_rwlock_wrlock(&t->alive_lock);
    t->ctx_alive = 0;
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

/* Fail the connection from the service thread (reply too large, bad frame, write
 * error): in-flight requests complete with `code`, and the caller returns -1 so
 * that lws closes the socket; queued ones end with DISCONNECTED at WSI_DESTROY. */
static void conn_fail(surpool__tconn *c, surpool_err code, const char *msg)
{
    surpool__reqdone d;
    surpool__reqdone_init(&d);
    pthread_mutex_lock(&c->mu);
    atomic_store(&c->dead, 1);
    if (c->fail_code == SURPOOL_OK) {
        c->fail_code = code;
        surpool__strlcpy(c->fail_msg, msg, sizeof(c->fail_msg));
    }
    surpool__reqtable_fail_inflight(&c->rt, &d, code, msg);
    pthread_mutex_unlock(&c->mu);
    surpool__reqdone_run(&d);
    surpool__log(c->t->logger, SURPOOL_LOG_WARN, "connection failed: %s", msg);
}

/* A frame the connection cannot go on after (service thread): fail it, and
 * have our close frame carry `close_code` (RFC 6455 7.4.1). Returns -1 for
 * the receive path to stop reading. */
static int conn_refuse(surpool__tconn *c, surpool_err code, const char *msg, int close_code)
{
    conn_fail(c, code, msg);
    c->stop_code = close_code;
    return -1;
}

/* ------------------------------------------------------------------------- */
/* Request deadlines (service thread)                                        */
/* ------------------------------------------------------------------------- */

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
    surpool__reqdone d;
    surpool__reqdone_init(&d);
    int64_t now = surpool__now_ns();

    c->timer_at = INT64_MAX;
    pthread_mutex_lock(&c->mu);
    int64_t earliest = surpool__reqtable_expire(&c->rt, now, &d);
    pthread_mutex_unlock(&c->mu);
    surpool__reqdone_run(&d);
    timer_arm(c, earliest);
}

/* ------------------------------------------------------------------------- */
/* Service thread: wake list                                                  */
/* ------------------------------------------------------------------------- */

static void conn_start(surpool__tconn *c);
static int conn_maybe_next_addr(surpool__tconn *c);
static int on_ws_data(void *ud, const unsigned char *p, size_t len, int first, int final,
                      int binary);
static void conn_end(struct lws *wsi, surpool__tconn *c);

/* One visit of a connection taken from the wake list. */
static void conn_visit(surpool__tconn *c)
{
    surpool__transport *t = c->t;
    enum { NOTHING, CONNECT, WRITE, CLOSE, KILL, FAIL } act = NOTHING;
    int64_t hint = INT64_MAX;
    char why[sizeof(c->failing_msg)];
    surpool_err why_code = SURPOOL_ERR_PROTOCOL;

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
    } else if (c->wsi != NULL && c->state == CS_OPEN && c->failing == 1) {
        c->failing = 2;
        why_code = c->failing_code;
        surpool__strlcpy(why, c->failing_msg, sizeof(why));
        /* Already failed (a frame it refused, a write error): it is closing. */
        act = atomic_load(&c->dead) ? NOTHING : FAIL;
    } else if (c->wsi != NULL && c->state == CS_OPEN) {
        /* Arm the deadline timer even when the queue is already empty: a
         * writable callback may have sent the new request before this visit. */
        hint = c->rt.deadline_hint;
        if (surpool__reqtable_has_queued(&c->rt))
            act = WRITE;
    }
    pthread_mutex_unlock(&c->mu);

    switch (act) {
    case NOTHING: break;
    case CONNECT: conn_start(c); break;
    case WRITE: lws_callback_on_writable(c->wsi); break;
    case CLOSE: conn_end(c->wsi, c); break;
    case KILL:
        /* Not established yet, so no close frame: drop the socket. ASYNC because
         * we are inside another wsi's callback. */
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_AWAITING_CONNECT_RESPONSE, LWS_TO_KILL_ASYNC);
        break;
    case FAIL:
        /* As dispatch() does with a frame it refuses: in-flight requests end
         * with the submitter's code now, the socket closes (on_writeable()),
         * queued requests end at WSI_DESTROY. */
        conn_fail(c, why_code, why);
        conn_end(c->wsi, c);
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
    c->tls_hs = 0;
    const char *addr = c->addrs[c->addr_idx];
    pthread_mutex_unlock(&c->mu);

    /* A fresh protocol state for every attempt (service thread only). */
    surpool__ws_free(c->ws);
    c->ws = surpool__ws_new(on_ws_data, c, 0);
    SSL_free(c->ssl);
    c->ssl = NULL;
    c->tls_up = 0;
    c->upgraded = 0;
    c->ending = 0;
    c->stop_code = 0;
    c->out_off = 0;
    c->tls_out_len = c->tls_out_off = 0;
    c->rx_len = 0;
    c->rx_overflow = 0;
    if (c->ws == NULL) {
        pthread_mutex_lock(&c->mu);
        c->state = CS_FAILED;
        c->svc_done = 1;
        if (c->fail_code == SURPOOL_OK) {
            c->fail_code = SURPOOL_ERR_NOMEM;
            surpool__strlcpy(c->fail_msg, "out of memory starting a connection",
                             sizeof(c->fail_msg));
        }
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->mu);
        return;
    }

    /* A raw socket (TCP, and TLS for wss): the WebSocket upgrade and frames
     * are ws.c's, not libwebsockets' (ws.h says why). */
    memset(&i, 0, sizeof(i));
    i.context = t->ctx;
    i.method = "RAW";
    i.address = addr; /* numeric: a name would block this thread in getaddrinfo */
    i.port = c->url->port;
    i.path = c->url->path;
    i.host = c->host_header; /* not the TLS server name: tls.c sets that (peer.host) */
    i.local_protocol_name = t->proto;
    i.opaque_user_data = c;
    /* No i.ssl_connection: libwebsockets 4.1 cannot put TLS under a raw client
     * (it starts TLS before the socket exists); wss is tls.c's, on_rx(). */

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
                         c->url->host, c->url->port, addr);
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

/* LWS_CALLBACK_CLIENT_CONNECTION_ERROR (the TCP connect failed): remember why;
 * WSI_DESTROY (or the NULL return of the connect call) decides what happens
 * next. */
static void on_connection_error(surpool__tconn *c, const char *in, size_t len)
{
    char text[160];
    size_t n = in != NULL ? strnlen(in, len) : 0; /* len may count the NUL */
    n = surpool__text_sanitize(text, sizeof(text), in, n);
    if (n == 0)
        n = surpool__strlcpy(text, "connection failed", sizeof(text));

    pthread_mutex_lock(&c->mu);
    c->wsi = NULL; /* lws is tearing it down; nothing else may act on it */
    if (c->fail_code == SURPOOL_OK) {
        c->fail_code = SURPOOL_ERR_CONNECT;
        c->tcp_failed = !c->tcp_up; /* open() names the cause (tcp_diagnose) */
        connect_msg(c->fail_msg, sizeof(c->fail_msg), c, c->addrs[c->addr_idx], text);
    }
    pthread_mutex_unlock(&c->mu);
}

/* The TLS handshake failed (`text`: OpenSSL's reasons): why, for open(), from
 * what the session noted (a refused certificate, an alert, a plain HTTP
 * answer). */
static void tls_failed(surpool__tconn *c, const char *text)
{
    const char *alert_rx, *alert_tx, *note;
    surpool__tls_handshake_notes(c->ssl, &alert_rx, &alert_tx, &note);
    pthread_mutex_lock(&c->mu);
    if (c->fail_code == SURPOOL_OK) {
        c->fail_code = SURPOOL_ERR_TLS;
        if (c->peer.reason != NULL) /* static text (tls.h) */
            msgf(c->fail_msg, sizeof(c->fail_msg), "certificate verify failed: %s",
                 c->peer.reason);
        else if (note != NULL)
            msgf(c->fail_msg, sizeof(c->fail_msg), "TLS handshake with %s failed: %s",
                 c->url->host, note);
        else if (alert_rx != NULL)
            msgf(c->fail_msg, sizeof(c->fail_msg),
                 "TLS handshake with %s failed: the server sent alert '%s'", c->url->host,
                 alert_rx);
        else if (alert_tx != NULL)
            msgf(c->fail_msg, sizeof(c->fail_msg),
                 "TLS handshake with %s failed: sent alert '%s' (%s)", c->url->host, alert_tx,
                 text);
        else
            msgf(c->fail_msg, sizeof(c->fail_msg), "TLS handshake with %s failed: %s",
                 c->url->host, text);
    }
    pthread_mutex_unlock(&c->mu);
}

/* The upgrade was not accepted (ws.c says how): why, for open(). c->mu held. */
static void upgrade_refused(surpool__tconn *c, surpool__ws_rc rc)
{
    if (c->fail_code != SURPOOL_OK)
        return;
    c->fail_code = rc == SURPOOL__WS_NOMEM ? SURPOOL_ERR_NOMEM : SURPOOL_ERR_CONNECT;
    unsigned status = surpool__ws_status(c->ws);
    if (rc == SURPOOL__WS_NOMEM)
        surpool__strlcpy(c->fail_msg, "out of memory reading the upgrade answer",
                         sizeof(c->fail_msg));
    else if (rc == SURPOOL__WS_REFUSED && status == 404)
        msgf(c->fail_msg, sizeof(c->fail_msg),
             "server at %s port %d answered HTTP 404 to the WebSocket upgrade: path "
             "'%.64s' is not a SurrealDB RPC endpoint%s",
             c->url->host, c->url->port, c->url->path,
             strcmp(c->url->path, "/rpc") != 0 ? " (is it /rpc?)" : "");
    else if (rc == SURPOOL__WS_REFUSED)
        msgf(c->fail_msg, sizeof(c->fail_msg),
             "server at %s port %d answered the WebSocket upgrade of '%.64s' with HTTP "
             "%u instead of 101",
             c->url->host, c->url->port, c->url->path, status);
    else /* a subprotocol other than ours (1.x–2.1 servers would guess the format) */
        msgf(c->fail_msg, sizeof(c->fail_msg), "server at %s port %d %s", c->url->host,
             c->url->port, surpool__ws_error(c->ws));
}

static int on_established(struct lws *wsi, surpool__tconn *c);
static void keepalive_check(lws_sorted_usec_list_t *sul);
static int on_frames(struct lws *wsi, surpool__tconn *c, const unsigned char *in, size_t len);

/* Queue the upgrade request (TCP, and TLS for wss, are up). 0 or -1. */
static int upgrade_start(surpool__tconn *c)
{
    if (surpool__ws_start(c->ws, c->host_header, c->url->path, c->t->proto) == 0)
        return 0;
    pthread_mutex_lock(&c->mu);
    upgrade_refused(c, SURPOOL__WS_NOMEM);
    pthread_mutex_unlock(&c->mu);
    return -1;
}

/* LWS_CALLBACK_RAW_CONNECTED: TCP is up. The TLS handshake (wss) and then the
 * upgrade request go out from the writable callback; both must be done within
 * timeout_secs (lws cleared its connect timeout before this callback). */
static int on_raw_connected(struct lws *wsi, surpool__tconn *c)
{
    pthread_mutex_lock(&c->mu);
    c->tcp_up = 1;
    c->tls_hs = c->url->tls;
    pthread_mutex_unlock(&c->mu);
    lws_set_timeout(wsi, PENDING_TIMEOUT_AWAITING_SERVER_RESPONSE, c->t->timeout_secs);
    if (c->url->tls) {
        char why[160];
        c->peer.insecure = c->t->insecure;
        c->peer.host = c->url->host;
        c->peer.host_is_ip = c->host_is_ip;
        c->peer.reason = NULL;
        c->ssl = surpool__tls_session_new(c->t->ssl_ctx, &c->peer);
        if (c->ssl == NULL) {
            pthread_mutex_lock(&c->mu);
            if (c->fail_code == SURPOOL_OK) {
                c->fail_code = SURPOOL_ERR_NOMEM;
                surpool__strlcpy(c->fail_msg, "out of memory starting TLS",
                                 sizeof(c->fail_msg));
            }
            pthread_mutex_unlock(&c->mu);
            return -1;
        }
        if (surpool__tls_handshake(c->ssl, why, sizeof(why)) < 0) { /* the hello */
            tls_failed(c, why);
            return -1;
        }
    } else if (upgrade_start(c) != 0) {
        return -1;
    }
    lws_callback_on_writable(wsi);
    return 0;
}

/* LWS_CALLBACK_RAW_RX before the upgrade was accepted. */
static int on_handshake_rx(struct lws *wsi, surpool__tconn *c, const unsigned char *in,
                           size_t len)
{
    size_t used;
    surpool__ws_rc rc = surpool__ws_handshake(c->ws, in, len, &used);
    if (rc == SURPOOL__WS_OK)
        return 0;
    if (rc != SURPOOL__WS_OPEN) {
        pthread_mutex_lock(&c->mu);
        upgrade_refused(c, rc);
        pthread_mutex_unlock(&c->mu);
        return -1;
    }
    lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);
    c->upgraded = 1;
    if (on_established(wsi, c) != 0)
        return -1;
    return used < len ? on_frames(wsi, c, in + used, len - used) : 0;
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
    int queued = surpool__reqtable_has_queued(&c->rt);
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
    c->rx_last = c->tx_last = surpool__now_ns();
    c->tx_acked = 0;
    c->tx_held = 0;
    c->ka_pinged = 0;
    lws_sul_schedule(c->t->ctx, 0, &c->ka_sul, keepalive_check,
                     (lws_usec_t)(ka_ping_ns() / 1000));
    if (queued)
        lws_callback_on_writable(wsi);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Service thread: writing and receiving                                      */
/* ------------------------------------------------------------------------- */

/* Requests framed per writable callback at most (and written together,
 * ws_flush()): with many requests queued on few sockets (the shared lane)
 * that saves a pass of the event loop over every socket per frame. The cap
 * keeps one busy socket from starving the others. */
#define WRITE_BATCH 32
#define WRITE_BATCH_BYTES (256u * 1024u)

/* Write what the socket takes of `p`, `n` bytes, with send() on lws' socket
 * (non-blocking): the number written, or -1 when the socket failed. Not
 * lws_write(): lws keeps what the socket does not take and then reads
 * nothing until it has written it, so a server that stops reading while its
 * replies wait for us to read them (back-pressure) and a big request of ours
 * would wait for each other forever (test_upload_while_downloading). */
static ssize_t sock_send(struct lws *wsi, const unsigned char *p, size_t n)
{
    int fd = lws_get_socket_fd(wsi);
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(fd, p + off, n - off, MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno == EINTR)
            continue;
        else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        else
            return -1;
    }
    return (ssize_t)off;
}

/* Our bytes wait for the socket (ws_flush() wrote part of them). */
static int out_pending(surpool__tconn *c)
{
    unsigned char *p;
    return (c->ws != NULL && surpool__ws_output(c->ws, &p) != 0) ||
           c->tls_out_off < c->tls_out_len;
}

/* wss: send what the socket takes of tls_out; once all of it is sent, it
 * starts over (freed if big: one big request should not pin its buffer for
 * the connection's life). 0, or -1 when the socket failed. */
static int tls_out_send(struct lws *wsi, surpool__tconn *c)
{
    ssize_t w = sock_send(wsi, c->tls_out + c->tls_out_off, c->tls_out_len - c->tls_out_off);
    if (w < 0)
        return -1;
    c->tls_out_off += (size_t)w;
    if (c->tls_out_off < c->tls_out_len) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    c->tls_out_off = c->tls_out_len = 0;
    if (c->tls_out_cap > RX_KEEP_BYTES) {
        surpool__free(c->tls_out);
        c->tls_out = NULL;
        c->tls_out_cap = 0;
    }
    return 0;
}

/* Write what ws has queued, as far as the socket takes it: the rest waits
 * (out_pending()) for the writable callback this asks for. 0, or -1 when the
 * write failed. For wss the bytes are encrypted a TLS record at a time
 * (TLS_WRITE_CHUNK) and collected in tls_out: OpenSSL's memory BIO keeps the
 * largest size it ever held, so encrypting a big request in one call would pin
 * its size for the connection's life. Nothing more is encrypted while tls_out
 * still has bytes to send. */
static int ws_flush(struct lws *wsi, surpool__tconn *c)
{
    unsigned char *p;
    size_t n = surpool__ws_output(c->ws, &p);
    if (c->ssl == NULL) {
        if (n == 0)
            return 0;
        ssize_t w = sock_send(wsi, p + c->out_off, n - c->out_off);
        if (w < 0)
            return -1;
        c->out_off += (size_t)w;
        if (c->out_off < n) {
            lws_callback_on_writable(wsi);
            return 0;
        }
        c->out_off = 0;
        surpool__ws_written(c->ws, n);
        return 0;
    }
    if (c->tls_out_off < c->tls_out_len && tls_out_send(wsi, c) != 0)
        return -1;
    if (c->tls_out_off < c->tls_out_len)
        return 0; /* tls_out_send() asked for the writable callback */
    if (!c->tls_up)
        n = 0; /* only the handshake's own bytes */
    size_t off = 0, have = 0;
    for (;;) {
        size_t k = n - off < TLS_WRITE_CHUNK ? n - off : TLS_WRITE_CHUNK;
        if (k != 0) {
            char why[160];
            if (surpool__tls_send(c->ssl, p + off, k, why, sizeof(why)) != 0) {
                surpool__log(c->t->logger, SURPOOL_LOG_WARN, "TLS write failed: %s", why);
                return -1;
            }
            off += k;
        }
        size_t m = surpool__tls_pending(c->ssl);
        if (m == 0 && off == n)
            break;
        if (have + m > c->tls_out_cap) {
            size_t cap = c->tls_out_cap != 0 ? c->tls_out_cap : TLS_WRITE_CHUNK + 1024;
            while (cap < have + m)
                cap *= 2;
            unsigned char *nb = surpool__realloc(c->tls_out, cap);
            if (nb == NULL)
                return -1;
            c->tls_out = nb;
            c->tls_out_cap = cap;
        }
        have += surpool__tls_take(c->ssl, c->tls_out + have, m);
        if (off == n)
            break;
    }
    if (n != 0)
        surpool__ws_written(c->ws, n);
    c->tls_out_len = have;
    return have != 0 ? tls_out_send(wsi, c) : 0;
}

/* Queue our close frame (`code`, `reason`), write it, and end: the socket
 * closes without waiting for the server's answer. Returns -1 (close now). */
static int ws_end(struct lws *wsi, surpool__tconn *c, int code, const char *reason)
{
    surpool__ws_close(c->ws, code, reason);
    if (ws_flush(wsi, c) != 0)
        return -1;
    /* Close once the socket took all of it (ws_flush() asked for the writable
     * callback that comes back here; the close is idempotent). */
    return out_pending(c) ? 0 : -1;
}

/* An open socket is to end (it failed, or close() was called): our close
 * frame goes out from the writable callback (ws_end()), the timeout a
 * backstop for a server that stops reading. But when our output waits for
 * the socket even after it took what it could now (a request half written),
 * the close frame can only follow the rest of it, and a server that reads no
 * more would hold the socket, its queued requests and on_dead until that
 * backstop: the socket goes now. (A close frame already queued, wslay's
 * answer to a frame it refused, goes out with that write.) ASYNC: this may
 * run inside another wsi's callback. */
static void conn_end(struct lws *wsi, surpool__tconn *c)
{
    if (ws_flush(wsi, c) != 0 || out_pending(c)) {
        lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
        return;
    }
    lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_SEND, c->t->timeout_secs);
    lws_callback_on_writable(wsi);
}

static int on_writeable(struct lws *wsi, surpool__tconn *c)
{
    if (c->ending)
        return ws_end(wsi, c, c->stop_code != 0 ? c->stop_code : 1011, NULL);
    pthread_mutex_lock(&c->mu);
    int open = c->state == CS_OPEN;
    if (c->closing && open) {
        pthread_mutex_unlock(&c->mu);
        return ws_end(wsi, c, 1001, "client closing"); /* idempotent */
    }
    if (c->failing == 2) {
        pthread_mutex_unlock(&c->mu);
        return ws_end(wsi, c, 1007, NULL);
    }
    int queued = open && surpool__reqtable_has_queued(&c->rt) && !atomic_load(&c->dead);
    if (!queued || out_pending(c)) {
        /* Frame nothing more while the socket has not taken what is framed: the
         * requests wait in the queue, not as a second copy in ws' output. */
        pthread_mutex_unlock(&c->mu);
        /* The upgrade request, pongs; unasked writable callbacks happen too. */
        if (ws_flush(wsi, c) != 0)
            return -1;
        if (queued && !out_pending(c))
            lws_callback_on_writable(wsi); /* now the queued requests */
        return 0;
    }
    int failed = 0;
    size_t bytes = 0;
    for (int i = 0;
         i < WRITE_BATCH && bytes < WRITE_BATCH_BYTES && surpool__reqtable_has_queued(&c->rt);
         i++) {
        /* In flight before the write and all under the mutex: a reply cannot
         * beat the bookkeeping, and cancel() cannot free the buffer mid-write. */
        surpool__treq *r = surpool__reqtable_send_next(&c->rt);
        if (surpool__ws_send(c->ws, c->t->cbor, r->buf, r->len) != 0) {
            failed = 1;
            break;
        }
        bytes += r->len;
    }
    int more = surpool__reqtable_has_queued(&c->rt);
    pthread_mutex_unlock(&c->mu);
    /* The requests framed are off limits from here: close() or a reply may
     * complete them any time. ws holds their bytes. */

    if (failed) {
        conn_fail(c, SURPOOL_ERR_NOMEM, "out of memory framing a request");
        return -1;
    }
    if (ws_flush(wsi, c) != 0) {
        conn_fail(c, SURPOOL_ERR_DISCONNECTED, "write to the server failed");
        return -1;
    }
    if (more)
        lws_callback_on_writable(wsi);
    return 0;
}

/* The bytes of a complete message as a frame a request can own: c->rx itself
 * when it holds a big message (no copy; the connection starts a new buffer),
 * else a copy. NUL-terminated. NULL when out of memory. */
static char *frame_take(surpool__tconn *c, const char *buf, size_t len)
{
    if (buf == c->rx && len >= RX_STEAL_BYTES) {
        char *f = c->rx;
        c->rx = NULL;
        c->rx_cap = 0;
        f[len] = '\0'; /* on_receive keeps a byte spare */
        return f;
    }
    char *f = surpool__malloc(len + 1);
    if (f != NULL) {
        memcpy(f, buf, len);
        f[len] = '\0';
    }
    return f;
}

/* Hand a reply routed by `id` to its request. Returns -1 when the connection
 * must close: a frame that matches no request is dropped only if the walk to
 * its end accepts it. */
static int on_reply(surpool__tconn *c, int64_t id, const char *buf, size_t len)
{
    pthread_mutex_lock(&c->mu);
    surpool__treq *r = surpool__reqtable_take(&c->rt, id);
    pthread_mutex_unlock(&c->mu);
    if (r == NULL) {
        /* A late reply (after a timeout or cancel), or an unknown id. Routing
         * read only its head, and no decode will see the rest: walk it to the
         * end here (rare, so the cost routing saves is not spent again). A
         * frame that repeats its "id" ({"id":<not ours>,"id":<ours>,...}) or
         * is broken fails the connection, so the caller whose reply it may
         * have been gets PROTOCOL now instead of waiting for its deadline. */
        surpool__peek_info walk;
        surpool_error e;
        surpool_err rc =
            c->t->cbor ? surpool__cbor_peek_info((const unsigned char *)buf, len, &walk, &e)
                       : surpool__codec_peek_info(buf, len, &walk, &e);
        if (rc != SURPOOL_OK)
            return conn_refuse(c, SURPOOL_ERR_PROTOCOL, e.message, 1007);
        surpool__log(c->t->logger, SURPOOL_LOG_DEBUG,
                     "dropping a reply for id %lld: no such request in flight", (long long)id);
        return 0;
    }
    r->frame = frame_take(c, buf, len);
    r->frame_len = len;
    r->frame_cbor = c->t->cbor;
    if (r->frame == NULL) {
        r->status = SURPOOL_ERR_NOMEM;
        surpool__strlcpy(r->message, "out of memory taking a reply", sizeof(r->message));
    }
    g_routing = 1; /* contract 10: a hook armed here runs at the end of this pass */
    r->done(r);
    g_routing = 0;
    return 0;
}

/* A complete message (text for JSON, binary for CBOR). Replies are routed by
 * their id (the walk stops there: the server writes it first) and handed over
 * undecoded (the submitter decodes them on its own thread: a 50 MB reply takes
 * a second to parse, and every connection of the pool would wait). A reply
 * the decode then refuses (a repeated "id", broken bytes after the id) fails
 * its request with PROTOCOL, and that breaks the connection (rpc.c; lane.c
 * fails the socket at once through fail(), contract 11); one that matches no
 * request is walked to its end here (on_reply()).
 * Notifications and id-less errors are decoded here: the
 * pool's handlers take a tree on this thread, and both are small and rare.
 * Returns -1 when the connection must close. */
static int dispatch(surpool__tconn *c, const char *buf, size_t len)
{
    surpool__transport *t = c->t;
    surpool__frame f;
    surpool_error e;
    surpool__frame_kind kind;
    int64_t id;

    surpool_err rc = t->cbor
                         ? surpool__cbor_route((const unsigned char *)buf, len, &kind, &id, &e)
                         : surpool__codec_route(buf, len, &kind, &id, &e);
    if (rc == SURPOOL_OK && kind == SURPOOL__FRAME_REPLY)
        return on_reply(c, id, buf, len);
    if (rc == SURPOOL_OK)
        rc = t->cbor ? surpool__cbor_decode_frame((const unsigned char *)buf, len, &f, &e)
                     : surpool__codec_decode_frame(buf, len, &f, &e);
    if (rc != SURPOOL_OK)
        return conn_refuse(c,
                           rc == SURPOOL_ERR_NOMEM ? SURPOOL_ERR_NOMEM : SURPOOL_ERR_PROTOCOL,
                           e.message, 1007);
    switch (f.kind) {
    case SURPOOL__FRAME_REPLY:
        /* The peek saw no id where the decoder sees one: they disagree. */
        json_decref(f.root);
        return conn_refuse(c, SURPOOL_ERR_PROTOCOL,
                           "frame routing and decoding disagree on its id", 1007);
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

/* A piece of a data message, from ws.c (surpool__ws_data_fn): buffered until
 * the message is complete, then dispatched. -1 stops reading (the connection
 * failed; c->stop_code is the close code to send). */
static int on_ws_data(void *ud, const unsigned char *p, size_t len, int first, int final,
                      int binary)
{
    surpool__tconn *c = ud;
    surpool__transport *t = c->t;
    const char *in = (const char *)p;

    if (first) {
        c->rx_len = 0;
        c->rx_overflow = 0;
    }
    if ((binary != 0) != t->cbor)
        return conn_refuse(c, SURPOOL_ERR_PROTOCOL,
                           t->cbor ? "server sent a text frame on a CBOR connection"
                                   : "server sent a binary frame on a JSON connection",
                           1003);
    if (!c->rx_overflow) {
        if (len > t->max_message_bytes - c->rx_len) {
            /* Stop buffering; the id is unknown until the end, so the whole
             * connection pays (below). */
            c->rx_overflow = 1;
            c->rx_len = 0;
        } else if (first && final) {
            return dispatch(c, in, len); /* one piece: route in place */
        } else {
            /* One byte spare: a frame handed over whole gets its NUL there. */
            if (c->rx_len + len + 1 > c->rx_cap) {
                size_t cap = c->rx_cap != 0 ? c->rx_cap : 64 * 1024;
                while (cap < c->rx_len + len + 1)
                    cap = cap > SIZE_MAX / 2 ? c->rx_len + len + 1 : cap * 2;
                char *nb = surpool__realloc(c->rx, cap);
                if (nb == NULL)
                    return conn_refuse(c, SURPOOL_ERR_NOMEM, "out of memory buffering a reply",
                                       1009);
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
        return conn_refuse(c, SURPOOL_ERR_TOO_LARGE, msg, 1009);
    }
    int rc = dispatch(c, c->rx, c->rx_len);
    c->rx_len = 0;
    if (c->rx_cap > RX_KEEP_BYTES) {
        /* One huge reply should not pin its buffer for the connection's life. */
        surpool__free(c->rx);
        c->rx = NULL;
        c->rx_cap = 0;
    }
    return rc;
}

/* LWS_CALLBACK_RAW_RX once open: frames. Returns -1 to drop the socket now; a
 * connection that is ending (a close frame to write first) returns 0 and asks
 * for a writable callback (on_writeable() writes it and closes). */
static int on_frames(struct lws *wsi, surpool__tconn *c, const unsigned char *in, size_t len)
{
    c->rx_last = surpool__now_ns();
    c->ka_pinged = 0;
    surpool__ws_rc rc = surpool__ws_recv(c->ws, in, len);
    switch (rc) {
    case SURPOOL__WS_OK: break;
    case SURPOOL__WS_CLOSED: {
        const char *reason;
        int code = surpool__ws_peer_close(c->ws, &reason);
        pthread_mutex_lock(&c->mu);
        c->peer_close_code = code;
        surpool__strlcpy(c->peer_close_reason, reason, sizeof(c->peer_close_reason));
        pthread_mutex_unlock(&c->mu);
        c->ending = 1; /* our answer is queued */
        break;
    }
    case SURPOOL__WS_PROTOCOL:
        conn_fail(c, SURPOOL_ERR_PROTOCOL, surpool__ws_error(c->ws));
        c->ending = 1; /* the close frame wslay chose is queued */
        break;
    case SURPOOL__WS_STOPPED:
        c->ending = 1; /* dispatch() failed the connection and chose the code */
        break;
    default: /* NOMEM */
        conn_fail(c, SURPOOL_ERR_NOMEM, "out of memory reading frames");
        return -1;
    }
    unsigned char *p;
    if (rc == SURPOOL__WS_CLOSED) {
        /* The server closed: our answer goes out now if the socket takes it,
         * and the socket goes either way. Waiting for the writable callback
         * would wait, up to the backstop, for a server that may read no more,
         * and behind a request of ours it may hold half written (our close
         * frame can only follow the rest of it). */
        (void)ws_flush(wsi, c);
        return -1;
    }
    if (c->ending)
        conn_end(wsi, c);
    else if (surpool__ws_output(c->ws, &p) != 0)
        lws_callback_on_writable(wsi); /* a pong */
    return 0;
}

/* Bytes of the WebSocket stream (decrypted, for wss). */
static int on_plain(struct lws *wsi, surpool__tconn *c, const unsigned char *in, size_t len)
{
    if (c->ending)
        return 0; /* closing: what follows is not read */
    if (!c->upgraded)
        return on_handshake_rx(wsi, c, in, len);
    return on_frames(wsi, c, in, len);
}

/* LWS_CALLBACK_RAW_RX: bytes from the socket; for wss through our TLS session
 * (its handshake first, then records decrypted one at a time). */
static int on_rx(struct lws *wsi, surpool__tconn *c, const unsigned char *in, size_t len)
{
    if (c->ending)
        return 0; /* closing: nothing that follows is read (a close_notify after the
                     server's close frame must not replace its close code) */
    if (c->ssl == NULL)
        return on_plain(wsi, c, in, len);
    char why[160];
    if (surpool__tls_put(c->ssl, in, len) != 0) {
        conn_fail(c, SURPOOL_ERR_NOMEM, "out of memory reading TLS records");
        return -1;
    }
    if (!c->tls_up) {
        int h = surpool__tls_handshake(c->ssl, why, sizeof(why));
        if (h < 0) {
            tls_failed(c, why);
            return -1;
        }
        if (h == 0) {
            if (surpool__tls_pending(c->ssl) != 0)
                lws_callback_on_writable(wsi);
            return 0;
        }
        c->tls_up = 1;
        pthread_mutex_lock(&c->mu);
        c->tls_hs = 0;
        pthread_mutex_unlock(&c->mu);
        if (upgrade_start(c) != 0)
            return -1;
        lws_callback_on_writable(wsi);
    }
    unsigned char *buf = c->t->tls_plain;
    for (;;) {
        long got = surpool__tls_get(c->ssl, buf, TLS_PLAIN_BYTES, why, sizeof(why));
        if (got == 0)
            break;
        if (got < 0) {
            if (!c->upgraded) {
                /* The handshake is done: an alert now (TLS 1.3 refusing our
                 * certificate) is a TLS failure; a clean end of the session is
                 * a close before the answer, as for ws:// (on_wsi_destroy()). */
                if (got == -1)
                    tls_failed(c, why);
            } else {
                char msg[200];
                msgf(msg, sizeof(msg), "TLS session failed: %s", why);
                conn_fail(c, SURPOOL_ERR_DISCONNECTED, msg);
            }
            return -1;
        }
        int rc = on_plain(wsi, c, buf, (size_t)got);
        if (rc != 0 || c->ending)
            return rc;
    }
    if (surpool__tls_pending(c->ssl) != 0)
        lws_callback_on_writable(wsi);
    return 0;
}

/* The keepalive timer of an open socket: a ping after ka_ping_ns() without a
 * byte from the server, the socket dropped after ka_hangup_ns(). Reads only
 * note the time (no timer work per read): on a busy socket this fires once per
 * ka_ping_ns() and finds it was not quiet. */
static void keepalive_check(lws_sorted_usec_list_t *sul)
{
    surpool__tconn *c = lws_container_of(sul, surpool__tconn, ka_sul);
    if (c->wsi == NULL || c->ending)
        return;
    int64_t ping = ka_ping_ns(), hangup = ka_hangup_ns(), now = surpool__now_ns();
    /* A server that takes a long request is alive though it sends nothing (it
     * answers once it has all of it, and our ping waits behind it): the
     * kernel's count of the bytes it acknowledged says whether it took more
     * since the last check. Only when a long request was waiting then (bytes
     * of it waited for the socket, out_pending(), or in the send queue): a
     * server process that stopped reading still has its
     * kernel acknowledge small requests and our ping until its buffer fills. */
    uint64_t acked;
    size_t queued;
    if (surpool__tcp_sending(lws_get_socket_fd(c->wsi), &acked, &queued) == 0) {
        if (c->tx_held && acked != c->tx_acked)
            c->tx_last = now;
        c->tx_acked = acked;
        c->tx_held = out_pending(c) || queued >= TX_HELD_BYTES;
    } else {
        c->tx_held = 0;
    }
    int64_t quiet = now - (c->rx_last > c->tx_last ? c->rx_last : c->tx_last);
    int64_t next = ping - quiet;
    if (quiet >= hangup) {
        char msg[96];
        msgf(msg, sizeof(msg), "no answer from the server for %.3g s (keepalive)",
             (double)hangup / 1e9);
        conn_fail(c, SURPOOL_ERR_DISCONNECTED, msg);
        c->ending = 1;
        c->stop_code = 1001;
        conn_end(c->wsi, c); /* our output may wait for a server that stopped reading */
        return;
    }
    if (quiet >= ping / 2) {
        /* Quiet for a while: give back what the buffers grew to (up to
         * RX_KEEP_BYTES / OUT_KEEP_BYTES are kept between busy messages; a
         * TLS memory BIO never shrinks by itself). */
        surpool__ws_trim(c->ws);
        if (c->rx_len == 0) {
            surpool__free(c->rx);
            c->rx = NULL;
            c->rx_cap = 0;
        }
        if (c->ssl != NULL && c->tls_out_off == c->tls_out_len) {
            surpool__tls_trim(c->ssl);
            surpool__free(c->tls_out);
            c->tls_out = NULL;
            c->tls_out_cap = 0;
            c->tls_out_len = c->tls_out_off = 0;
        }
    }
    if (quiet >= ping) {
        if (!c->ka_pinged && surpool__ws_ping(c->ws) == 0) {
            c->ka_pinged = 1;
            lws_callback_on_writable(c->wsi);
        }
        next = hangup - quiet;
    }
    if (next <= 0)
        next = 1000;
    lws_sul_schedule(c->t->ctx, 0, &c->ka_sul, keepalive_check, (lws_usec_t)(next / 1000));
}

/* LWS_CALLBACK_WSI_DESTROY: the one reliable "this socket is gone". */
static void on_wsi_destroy(struct lws *wsi, surpool__tconn *c)
{
    surpool__transport *t = c->t;
    surpool__reqdone d;
    surpool__reqdone_init(&d);
    char msg[200];
    int notify = 0, retry = 0;
    surpool_err why = SURPOOL_ERR_DISCONNECTED;

    lws_set_opaque_user_data(wsi, NULL);
    lws_sul_cancel(&c->sul);
    lws_sul_cancel(&c->ka_sul);
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
                int in_tls = c->tls_hs;
                if (took + 100 >= (int64_t)t->timeout_secs * 1000) {
                    c->fail_code = SURPOOL_ERR_TIMEOUT;
                    msgf(c->fail_msg, sizeof(c->fail_msg),
                         "connect to %s port %d timed out after %lld ms (%s)", c->url->host,
                         c->url->port, (long long)took,
                         in_tls      ? "TCP connected, no answer to the TLS handshake"
                         : c->tcp_up ? "TCP connected, no answer to the WebSocket upgrade"
                                     : "no answer to the TCP connect");
                } else if (!c->tcp_up) {
                    /* The TCP connect failed at once (lws calls back no error
                     * then): no server was reached. open() names the cause. */
                    c->fail_code = SURPOOL_ERR_CONNECT;
                    c->tcp_failed = 1;
                    connect_msg(c->fail_msg, sizeof(c->fail_msg), c, c->addrs[c->addr_idx],
                                "connect failed");
                } else if (in_tls) {
                    /* As the lws TLS client said it ("connect SYSCALL"). */
                    c->fail_code = SURPOOL_ERR_TLS;
                    msgf(c->fail_msg, sizeof(c->fail_msg),
                         "TLS handshake with %s failed: the server closed the connection",
                         c->url->host);
                } else {
                    c->fail_code = SURPOOL_ERR_CONNECT;
                    msgf(c->fail_msg, sizeof(c->fail_msg),
                         "server at %s port %d closed the connection before the "
                         "WebSocket upgrade completed",
                         c->url->host, c->url->port);
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
            surpool__strlcpy(msg, c->fail_msg, sizeof(msg));
        else
            surpool__strlcpy(msg, "connection lost", sizeof(msg));
        surpool__reqtable_fail_all(&c->rt, &d, SURPOOL_ERR_DISCONNECTED, msg);
        if (c->fail_code != SURPOOL_OK)
            why = c->fail_code;
        notify = c->state == CS_OPEN && !c->closing && !c->dead_notified;
        c->dead_notified = 1;
    }
    c->svc_done = !retry;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);

    surpool__reqdone_run(&d);
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

static int protocol_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len)
{
    surpool__tconn *c;

    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED: {
        surpool__transport *t = lws_context_user(lws_get_context(wsi));
        /* Once stopping, leave the list to destroy(): no new lws work now. */
        if (t != NULL && !atomic_load(&t->stop))
            process_wake_list(t);
        else if (t != NULL && t->use_uv && !t->uv_stopping) {
            /* uv_run() returns only once no handle is left: ask lws to close
             * its own (asynchronously; WSI_DESTROY for every remaining wsi). */
            t->uv_stopping = 1;
            context_mark_dead(t);
            lws_context_destroy(t->ctx);
        }
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
            on_connection_error(c, in, len);
        return 0;
    case LWS_CALLBACK_RAW_CONNECTED:
        if ((c = lws_get_opaque_user_data(wsi)) != NULL)
            return on_raw_connected(wsi, c);
        return -1;
    case LWS_CALLBACK_RAW_WRITEABLE:
        if ((c = lws_get_opaque_user_data(wsi)) != NULL)
            return on_writeable(wsi, c);
        return 0;
    case LWS_CALLBACK_RAW_RX:
        if ((c = lws_get_opaque_user_data(wsi)) == NULL)
            return -1;
        return on_rx(wsi, c, in, len);
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

/* After uv_run() returned (lws closed its handles), or when the loop never ran:
 * lws needs a second lws_context_destroy() to free the context (else ~13 KB
 * leak per pool), then the loop is ours to close. */
static void uv_teardown(surpool__transport *t)
{
    if (t->pass_handles > 0)
        uv_close((uv_handle_t *)&t->pass_check, NULL);
    if (t->pass_handles > 1)
        uv_close((uv_handle_t *)&t->pass_prep, NULL);
    t->pass_handles = 0;
    if (t->ctx != NULL) {
        lws_context_destroy(t->ctx);
        uv_run(&t->uv, UV_RUN_DEFAULT); /* the handles' close callbacks */
    }
    if (t->ctx != NULL)
        lws_context_destroy(t->ctx);
    t->ctx = NULL;
    for (int i = 0; uv_loop_close(&t->uv) == UV_EBUSY && i < 100; i++)
        uv_run(&t->uv, UV_RUN_NOWAIT);
}

/* The loop returned an error: say so once, then retry after a pause. */
static void loop_failed(surpool__transport *t, int *complained, const char *what)
{
    if (!(*complained)++)
        surpool__log(t->logger, SURPOOL_LOG_ERROR, "%s; retrying", what);
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static void *service_main(void *arg)
{
    surpool__transport *t = arg;
    int complained = 0;
    if (t->use_uv) {
        /* Passes end in the check and prepare phases (pass_begin()); the
         * handles do not keep the loop alive (unref). Without both, no
         * passes: completions hand over at once. */
        if (uv_check_init(&t->uv, &t->pass_check) == 0) {
            t->pass_handles = 1; /* closed by uv_teardown() */
            uv_unref((uv_handle_t *)&t->pass_check);
            if (uv_prepare_init(&t->uv, &t->pass_prep) == 0) {
                t->pass_handles = 2;
                uv_unref((uv_handle_t *)&t->pass_prep);
                if (uv_check_start(&t->pass_check, on_pass_check) == 0 &&
                    uv_prepare_start(&t->pass_prep, on_pass_prep) == 0)
                    pass_begin();
            }
        }
        /* Returns once the EVENT_WAIT_CANCELLED after stop destroyed the context
         * and lws closed its handles. */
        for (;;) {
            uv_run(&t->uv, UV_RUN_DEFAULT);
            pass_end();
            if (!t->ctx_alive)
                break;
            loop_failed(t, &complained, "libuv loop returned before stop");
        }
        pass_stop();
        uv_teardown(t);
        return NULL;
    }
    pass_begin();
    while (!atomic_load(&t->stop)) {
        if (lws_service(t->ctx, 0) < 0 && !atomic_load(&t->stop))
            loop_failed(t, &complained, "libwebsockets service loop failed");
        pass_end();
    }
    pass_stop();
    context_mark_dead(t);
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
    surpool__free(t->tls_plain);
    registry_remove(t);
    pthread_rwlock_destroy(&t->alive_lock);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cond);
    surpool__free(t);
}

/* lws' fd_limit_per_thread. Left at 0, lws sizes its fd table by `ulimit -n`
 * (16 bytes per descriptor) and indexes it by fd; any smaller value makes it
 * search the table linearly on every event (11.8 vs 10.1 us per round trip at
 * 1000 sockets). So 0 while that table stays small (RLIMIT_NOFILE up to 65536:
 * at most 1 MiB per pool), else the pool's size: twice the pool, because closed
 * connections linger until the peer acknowledges the close frame (or lws times
 * out) while the pool already opens their replacements. An application that
 * raises RLIMIT_NOFILE must do it before creating pools (docs/configuration.md). */
static unsigned int fd_limit(const surpool__tconfig *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur <= 65536)
        return 0;
    int maxc = cfg->max_connections > 0 ? cfg->max_connections : 1;
    return (unsigned int)(maxc > 100000 ? 100000 : maxc) * 2 + 16;
}

/* Which loop: cfg->event_loop, else SURPOOL_EVENT_LOOP, else by pool size. */
static int want_uv(const surpool__tconfig *cfg)
{
    int choice = cfg->event_loop;
    if (choice == SURPOOL__LOOP_AUTO) {
        const char *env = getenv("SURPOOL_EVENT_LOOP");
        if (env != NULL && strcmp(env, "poll") == 0)
            choice = SURPOOL__LOOP_POLL;
        else if (env != NULL && strcmp(env, "libuv") == 0)
            choice = SURPOOL__LOOP_LIBUV;
    }
    if (choice == SURPOOL__LOOP_AUTO)
        choice = cfg->max_connections > SURPOOL__LOOP_AUTO_LIBUV_ABOVE ? SURPOOL__LOOP_LIBUV
                                                                       : SURPOOL__LOOP_POLL;
    return choice == SURPOOL__LOOP_LIBUV;
}

/* Test hook: behave as if lws' libuv plugin were missing. */
int surpool__lws_test_no_uv;

/* The lws context on a libuv loop of ours when wanted and available, else on
 * lws' poll() loop. 0 on success (t->ctx set). */
static int context_create(surpool__transport *t, const surpool__tconfig *cfg,
                          struct lws_context_creation_info *info)
{
    if (want_uv(cfg)) {
        if (!atomic_load(&g_uv_missing) && !surpool__lws_test_no_uv &&
            uv_loop_init(&t->uv) == 0) {
            void *loops[1] = {&t->uv};
            struct lws_context_creation_info ui = *info;
            ui.options |= LWS_SERVER_OPTION_LIBUV;
            ui.foreign_loops = loops;
            ui.pcontext = &t->ctx;
            t->ctx = lws_create_context(&ui); /* note: sets SIGPIPE to ignored */
            if (t->ctx != NULL) {
                t->use_uv = 1;
                surpool__log(t->logger, SURPOOL_LOG_INFO, "event loop: libuv");
                return 0;
            }
            /* lws says "unable to load evlib plugin evlib_uv" (package
             * libwebsockets-evlib-uv) or failed otherwise: poll() will do. */
            atomic_store(&g_uv_missing, 1);
            uv_loop_close(&t->uv);
        }
        surpool__log(t->logger, SURPOOL_LOG_INFO,
                     "libwebsockets cannot run on libuv here (package "
                     "libwebsockets-evlib-uv missing?); using its poll() loop");
    }
    t->ctx = lws_create_context(info); /* note: sets SIGPIPE to ignored */
    if (t->ctx == NULL)
        return -1;
    surpool__log(t->logger, SURPOOL_LOG_INFO, "event loop: poll");
    return 0;
}

/* The Host header value for an endpoint ("host[:port]", "[v6][:port]",
 * the port left out when it is the scheme's default) and whether its host is an
 * IP literal (4, 6) or a name (0): the name TLS sends as SNI and checks against
 * the certificate. -1 when it does not fit. */
static int host_header_for(const surpool__url *u, char *buf, size_t size, int *is_ip)
{
    unsigned char tmp[sizeof(struct in6_addr)];
    *is_ip = 0;
    if (inet_pton(AF_INET6, u->host, tmp) == 1)
        *is_ip = 6;
    else if (inet_pton(AF_INET, u->host, tmp) == 1)
        *is_ip = 4;
    int default_port = u->port == (u->tls ? 443 : 80);
    int n;
    if (*is_ip == 6)
        n = default_port ? snprintf(buf, size, "[%s]", u->host)
                         : snprintf(buf, size, "[%s]:%d", u->host, u->port);
    else
        n = default_port ? snprintf(buf, size, "%s", u->host)
                         : snprintf(buf, size, "%s:%d", u->host, u->port);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

static surpool_err transport_create(const surpool__tconfig *cfg, void *arg,
                                    surpool__transport **out, surpool_error *err)
{
    SURPOOL__UNUSED(arg);
    if (cfg == NULL || out == NULL || cfg->url == NULL || cfg->url->host == NULL ||
        cfg->url->path == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "transport create: cfg, cfg->url and out are required");
    pthread_once(&g_once, global_init);
    if (surpool__tls_init() != 0)
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

    /* Every connection computes its own (its endpoint's); checking the
     * default endpoint here refuses an unusable URL before anything starts. */
    char hh[sizeof(((surpool__tconn *)0)->host_header)];
    int is_ip;
    if (host_header_for(cfg->url, hh, sizeof(hh), &is_ip) != 0) {
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
        surpool_err rc = surpool__tls_ctx_create(cfg, &t->ssl_ctx, err);
        if (rc != SURPOOL_OK) {
            transport_free(t);
            return rc;
        }
        t->tls_plain = surpool__malloc(TLS_PLAIN_BYTES);
        if (t->tls_plain == NULL) {
            transport_free(t);
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory");
        }
    }

    t->protocols[0].name = t->proto;
    t->protocols[0].callback = protocol_cb;
    t->protocols[0].rx_buffer_size = 64 * 1024;

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    /* No TLS option: lws moves bytes, TLS is ours (on_rx()). */
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = t->protocols;
    info.user = t;
    info.fd_limit_per_thread = fd_limit(cfg);
    info.pt_serv_buf_size = 64 * 1024 + LWS_PRE; /* RAW_RX: up to 64 KiB per read */
    info.timeout_secs = (unsigned int)t->timeout_secs;
    info.connect_timeout_secs = (unsigned int)t->timeout_secs;
    /* Never through an HTTP proxy: without this lws takes $http_proxy and
     * would send a CONNECT a raw socket cannot finish. */
    info.http_proxy_address = "";
    info.count_threads = 1;

    if (context_create(t, cfg, &info) != 0) {
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
        if (t->use_uv)
            uv_teardown(t);
        else
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
static surpool_err resolve(surpool__tconn *c, surpool_error *err)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(c->url->host, NULL, &hints, &res);
    if (rc != 0) {
        if (rc == EAI_MEMORY)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "cannot resolve host '%s': %s",
                                   c->url->host, gai_strerror(rc));
        return surpool__seterr(err, SURPOOL_ERR_CONNECT,
                               "cannot connect to %s port %d: name not resolved (%s)",
                               c->url->host, c->url->port, gai_strerror(rc));
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
            surpool__strlcpy(c->addrs[c->n_addrs++], s, sizeof(c->addrs[0]));
    }
    freeaddrinfo(res);
    if (c->n_addrs == 0)
        return surpool__seterr(err, SURPOOL_ERR_CONNECT,
                               "cannot connect to %s port %d: name not resolved (no IPv4 "
                               "or IPv6 address)",
                               c->url->host, c->url->port);
    return SURPOOL_OK;
}

static surpool_err conn_open(surpool__transport *t, const surpool__url *ep, int64_t deadline_ns,
                             const surpool__tconn_events *ev, surpool__tconn **out,
                             surpool_error *err)
{
    if (t == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "open: t and out are required");
    if (ep == NULL)
        ep = t->url;
    if (ep->host == NULL || ep->path == NULL || strlen(ep->path) > SURPOOL__URL_PATH_MAX ||
        ep->tls != t->url->tls)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "open: the endpoint needs a host, a path of at most %d bytes "
                               "and the scheme the transport was created for",
                               SURPOOL__URL_PATH_MAX);
    char hh[sizeof(((surpool__tconn *)0)->host_header)];
    int is_ip = 0;
    if (host_header_for(ep, hh, sizeof(hh), &is_ip) != 0)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "host name too long");
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
    c->url = ep;
    memcpy(c->host_header, hh, sizeof(hh));
    c->host_is_ip = is_ip;
    atomic_init(&c->refs, 1); /* the opener's, then the user's */
    c->state = CS_CONNECTING;
    surpool__reqtable_init(&c->rt);
    c->timer_at = INT64_MAX;
    c->open_deadline = deadline_ns;
    if (ev != NULL)
        c->ev = *ev;

    surpool_err rc = resolve(c, err);

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
        surpool__strlcpy(addr, c->addrs[c->addr_idx], sizeof(addr));
        pthread_mutex_unlock(&c->mu);
        const char *why = tcp_failed ? tcp_diagnose(addr, c->url->port, deadline_ns) : NULL;
        if (why != NULL) {
            char msg[sizeof(err->message)];
            connect_msg(msg, sizeof(msg), c, addr, why);
            surpool__seterr(err, rc, "%s", msg);
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
        int tcp_up = c->tcp_up, tls_hs = c->tls_hs;
        pthread_mutex_unlock(&c->mu);
        long ms = (long)((deadline_ns - start + SURPOOL__NS_PER_MS / 2) / SURPOOL__NS_PER_MS);
        rc = surpool__seterr(err, SURPOOL_ERR_TIMEOUT,
                             "connect to %s port %d timed out after %ld ms (%s)", c->url->host,
                             c->url->port, ms > 0 ? ms : 0,
                             tls_hs   ? "TCP connected, no answer to the TLS handshake"
                             : tcp_up ? "TCP connected, no answer to the WebSocket upgrade"
                                      : "no answer to the TCP connect");
    }
    conn_unref(c);
    return rc;
}

static surpool_err conn_submit(surpool__tconn *c, surpool__treq *req)
{
    if (c == NULL || req == NULL || req->buf == NULL || req->len == 0 || req->done == NULL)
        return SURPOOL_ERR_INVALID_ARG;
    pthread_mutex_lock(&c->mu);
    if (c->state != CS_OPEN || c->closing || atomic_load(&c->dead)) {
        pthread_mutex_unlock(&c->mu);
        return SURPOOL_ERR_DISCONNECTED;
    }
    /* Reserve the in-flight slot now: the service thread must not fail later. */
    if (surpool__reqtable_reserve(&c->rt) != 0) {
        pthread_mutex_unlock(&c->mu);
        return SURPOOL_ERR_NOMEM;
    }
    surpool__reqtable_queue(&c->rt, req);
    pthread_mutex_unlock(&c->mu);
    conn_wake(c);
    return SURPOOL_OK;
}

static int conn_cancel(surpool__tconn *c, surpool__treq *req)
{
    if (c == NULL || req == NULL)
        return 0;
    pthread_mutex_lock(&c->mu);
    int removed = surpool__reqtable_cancel(&c->rt, req);
    pthread_mutex_unlock(&c->mu);
    return removed;
}

static int conn_alive(surpool__tconn *c)
{
    return c != NULL && !atomic_load(&c->dead);
}

static void conn_close(surpool__tconn *c)
{
    if (c == NULL)
        return;
    surpool__reqdone d;
    surpool__reqdone_init(&d);
    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    c->closing = 1;
    atomic_store(&c->dead, 1);
    surpool__reqtable_fail_all(&c->rt, &d, SURPOOL_ERR_DISCONNECTED, "connection closed");
    pthread_mutex_unlock(&c->mu);
    surpool__reqdone_run(&d);

    /* Wait out a running event callback, then make sure none starts. */
    pthread_mutex_lock(&c->events_mu);
    c->ev_detached = 1;
    pthread_mutex_unlock(&c->events_mu);

    conn_wake(c);  /* the service thread sends the close frame */
    conn_unref(c); /* the user's reference */
}

/* Contract 11: a submitter could not decode a reply. The service thread fails
 * the connection on its next visit (conn_visit()), as it would have failed it
 * itself had it decoded the frame. */
static void conn_fail_from(surpool__tconn *c, surpool_err code, const char *msg)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    int go = !c->closing && c->failing == 0 && !atomic_load(&c->dead) && c->state == CS_OPEN;
    if (go) {
        c->failing = 1;
        c->failing_code = code;
        surpool__strlcpy(c->failing_msg, msg != NULL ? msg : "", sizeof(c->failing_msg));
    }
    pthread_mutex_unlock(&c->mu);
    if (go)
        conn_wake(c);
}

static void transport_destroy(surpool__transport *t)
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
        conn_close(victim);
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
        surpool__reqdone d;
        surpool__reqdone_init(&d);
        pthread_mutex_lock(&c->mu);
        surpool__reqtable_fail_all(&c->rt, &d, SURPOOL_ERR_DISCONNECTED, "transport destroyed");
        pthread_mutex_unlock(&c->mu);
        surpool__reqdone_run(&d);
        atomic_store(&c->refs, 0);
        conn_free(c);
    }
    transport_free(t);
}

const surpool__transport_ops surpool__transport_lws = {
    .name = "libwebsockets",
    .headroom = 0, /* ws.c frames a copy: nothing is written in front of a payload */
    .create = transport_create,
    .destroy = transport_destroy,
    .open = conn_open,
    .submit = conn_submit,
    .cancel = conn_cancel,
    .alive = conn_alive,
    .close = conn_close,
    .fail = conn_fail_from,
};
