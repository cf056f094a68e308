/*
 * The transport vtable: how the pool core talks to connections.
 *
 * The pool (pool.c, conn.c, rpc.c) never knows what carries its requests. The
 * library ships one implementation, transport_lws.c (libwebsockets, with its
 * TLS in tls.c); the unit tests run the same core on tests/fake_transport.c.
 * Both keep their requests in a request table (reqtable.h).
 *
 * Contract (every implementation must keep all of it):
 *  1. create() starts whatever machinery the transport needs (threads, contexts)
 *     for one pool. destroy() closes every connection still open (completing
 *     their requests with SURPOOL_ERR_DISCONNECTED), stops it and frees it.
 *  2. open() connects to one endpoint: `ep` (borrowed; it must outlive the
 *     connection), or tconfig.url when ep is NULL. Every endpoint shares the
 *     transport's scheme, credentials and TLS settings; its own host is what
 *     the connection resolves, sends as Host and SNI, and checks the
 *     server certificate against. open() blocks the calling thread until the
 *     connection is established
 *     (WebSocket upgrade done, subprotocol checked) or fails, or deadline_ns
 *     (CLOCK_MONOTONIC) passes. On failure it returns CONNECT / TLS / TIMEOUT /
 *     NOMEM with a message in err and nothing is left behind.
 *  3. submit() queues a request. If it returns SURPOOL_OK, req->done(req) is
 *     called EXACTLY ONCE later, from any thread (usually the transport's own),
 *     with req->status and (on OK) req->frame (or req->reply) set. done() must
 *     be quick: it runs on the thread that moves every connection's bytes, so it
 *     neither decodes nor frees a result (surpool__wire_decode_reply() does, on
 *     the thread that wants the result). done() may even run before
 *     submit() returns. If submit() returns an error, done() is never called.
 *     After done() returns the transport never touches req again.
 *  4. The transport enforces req->deadline_ns itself: a request without a
 *     reply by then completes with SURPOOL_ERR_REQUEST_TIMEOUT.
 *  5. cancel() removes a request that has not completed: it returns 1 if it
 *     did (done() will NOT be called; the caller owns req again), 0 if done()
 *     has run or is running (the caller must wait for it).
 *  6. close() starts closing a connection and returns without waiting for the
 *     peer. Every queued or in-flight request completes with
 *     SURPOOL_ERR_DISCONNECTED (done() called, possibly on the calling thread
 *     before close() returns). After close() returns no event callback for
 *     this connection is running or will start, and the handle is invalid.
 *  7. Events (ev->on_dead, ev->on_notify) run on the transport's thread. They
 *     must be quick and must not call close() or submit() on any connection.
 *  8. alive() is cheap and lock-free or nearly: 0 once the connection is known
 *     dead (peer closed, error, keepalive failure).
 *  9. done() and event callbacks must never call back into this connection's
 *     close(); they may signal other threads.
 * 10. A done() may batch what it hands to another thread: where the transport
 *     can promise to run it before its thread waits for I/O again (the lws
 *     transport: a done() for a reply, in a pass over the sockets),
 *     surpool__transport_defer() arms a hook that runs once when that pass
 *     ends, so that the replies of one pass cross to the other thread with
 *     one wake-up instead of one each. Anywhere else it returns 0 and the
 *     caller hands over at once.
 * 11. fail() is for a submitter whose reply did not decode (a frame is routed
 *     by its id alone, so the connection's other replies are suspect too):
 *     from any thread, never from done() or an event; it returns without
 *     waiting. The connection dies as if the transport had refused that frame
 *     itself: every request in flight completes with `code` and `msg`, queued
 *     ones with SURPOOL_ERR_DISCONNECTED (done() possibly on the calling
 *     thread, before fail() returns), alive() turns 0 and on_dead runs. The
 *     handle stays valid until close(). Nothing happens on a connection
 *     already dead or closing.
 */
#ifndef SURPOOL_TRANSPORT_H
#define SURPOOL_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "internal.h"
#include "queue.h"
#include "url.h"

typedef struct surpool__transport surpool__transport; /* one per pool */
typedef struct surpool__tconn surpool__tconn;         /* one per connection */
typedef struct surpool__treq surpool__treq;           /* one per RPC request */

typedef void (*surpool__treq_done_fn)(surpool__treq *req);

struct surpool__treq {
    /* In: set by the submitter before submit(). */
    int64_t id;                 /* the RPC id inside payload */
    char *buf;                  /* owned by the submitter; payload starts at buf + headroom */
    size_t len;                 /* payload length in bytes (text, no NUL) */
    int64_t deadline_ns;        /* INT64_MAX: none */
    surpool__treq_done_fn done; /* completion, exactly once (see contract 3) */
    void *userdata;

    /* Out: set by the transport before done(). */
    surpool_err status; /* SURPOOL_OK: frame (or reply) is set */
    char *frame;        /* the raw reply frame routed here by its id, not decoded:
                            frame_len bytes and a NUL, freed with surpool__free;
                            the submitter takes it over */
    size_t frame_len;
    int frame_cbor;    /* frame is CBOR (else JSON text) */
    json_t *reply;     /* the decoded reply {"id":..,"result"|"error":..}, a new
                           reference the submitter takes over: set by
                           surpool__wire_decode_reply() from frame, or directly
                           by a transport that has no bytes (tests' fake one) */
    char message[200]; /* why, when status != SURPOOL_OK */

    /* Transport private: never touched by the submitter (src/reqtable.h). */
    surpool__queue tlink;
    int tstate;
};

/* Per-connection events, delivered on the transport's thread. */
typedef struct surpool__tconn_events {
    /* The connection died (peer close, error, keepalive failure). Called at most
     * once, never after close() returned. */
    void (*on_dead)(void *userdata, surpool_err why, const char *message);
    /* A frame without id that is a live-query notification; `frame` is borrowed. */
    void (*on_notify)(void *userdata, json_t *frame);
    void *userdata;
} surpool__tconn_events;

/* tconfig.event_loop. AUTO takes SURPOOL_EVENT_LOOP from the environment ("poll",
 * "libuv" or "auto") and otherwise picks libuv for pools of more than
 * SURPOOL__LOOP_AUTO_LIBUV_ABOVE connections (transport_lws.c says why). */
enum { SURPOOL__LOOP_AUTO = 0, SURPOOL__LOOP_POLL = 1, SURPOOL__LOOP_LIBUV = 2 };
#define SURPOOL__LOOP_AUTO_LIBUV_ABOVE 32

typedef struct surpool__tconfig {
    const surpool__url *url; /* borrowed; outlives the transport: the default
                                endpoint (open() with ep == NULL) and the scheme */
    long connect_timeout_ms;
    size_t max_message_bytes;
    int cbor;            /* 1: subprotocol "cbor", binary frames, CBOR replies */
    int max_connections; /* sizing hint (fd table, event loop choice) */
    int event_loop;      /* SURPOOL__LOOP_*: which loop runs libwebsockets */
    const char *tls_ca_file;
    const char *tls_ca_dir;
    const char *tls_cert_file;
    const char *tls_key_file;
    int tls_insecure_skip_verify;
    const surpool__logger *logger; /* borrowed; outlives the transport */
} surpool__tconfig;

typedef struct surpool__transport_ops {
    const char *name;
    /* Bytes the submitter must reserve in front of every payload (room for a
     * transport that writes a frame header there; 0 for libwebsockets). */
    size_t headroom;
    surpool_err (*create)(const surpool__tconfig *cfg, void *arg, surpool__transport **out,
                          surpool_error *err);
    void (*destroy)(surpool__transport *t);
    surpool_err (*open)(surpool__transport *t, const surpool__url *ep, int64_t deadline_ns,
                        const surpool__tconn_events *ev, surpool__tconn **out,
                        surpool_error *err);
    surpool_err (*submit)(surpool__tconn *c, surpool__treq *req);
    int (*cancel)(surpool__tconn *c, surpool__treq *req);
    int (*alive)(surpool__tconn *c);
    void (*close)(surpool__tconn *c);
    void (*fail)(surpool__tconn *c, surpool_err code, const char *msg); /* contract 11 */
} surpool__transport_ops;

/* Contract 10. `run` is called on the transport's thread with no lock of the
 * transport held, after the hook was unlinked: it may let the hook's owner be
 * freed. `next` and `armed` belong to the transport (zero them at init). */
typedef struct surpool__pass_hook surpool__pass_hook;
struct surpool__pass_hook {
    void (*run)(surpool__pass_hook *h);
    surpool__pass_hook *next;
    int armed;
};
/* Called from a done(): 1 if `h` now runs once at the end of the transport's
 * current pass (arming an armed hook again changes nothing); 0 if the call
 * is not made where contract 10 allows it: nothing is armed. Only ever 1 on
 * the transport's thread, which is the thread that runs the hook. */
int surpool__transport_defer(surpool__pass_hook *h);

/* The real one (transport_lws.c). `arg` is unused (NULL). */
extern const surpool__transport_ops surpool__transport_lws;

/* Test hook (set before creating transports): act as if libwebsockets' libuv
 * plugin were missing, so that the poll() fallback can be tested. */
extern int surpool__lws_test_no_uv;

/* Test hook (set before opening connections; 0 = the fixed 30 s / 40 s): the
 * keepalive's ping and hang-up times in milliseconds. */
extern int surpool__lws_test_ka_ping_ms, surpool__lws_test_ka_hangup_ms;

#endif
