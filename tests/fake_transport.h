/*
 * A fake transport for the pool core's unit tests: scripted replies, connect
 * latency and failures, call latency, connections that break. Lives under
 * tests/, never in the library.
 */
#ifndef SURPOOL_FAKE_TRANSPORT_H
#define SURPOOL_FAKE_TRANSPORT_H

#include <stdatomic.h>

#include <jansson.h>

#include "transport.h"

/* Produce the reply frame for one request: return a NEW reference to a full
 * reply object {"id":..,"result":..} or {"id":..,"error":..}, or NULL to leave
 * the request unanswered (it then times out or fails on close). */
typedef json_t *(*fake_responder_fn)(void *ud, json_int_t id, const char *method,
                                     json_t *params);

#define FAKE_MAX_CONNS 64
#define FAKE_MAX_PORTS 16

typedef struct fake_settings {
    atomic_int connect_latency_ms; /* each open() sleeps this long */
    atomic_int call_latency_us;    /* 0: replies complete inside submit() */
    atomic_int fail_connects;      /* fail the next N opens */
    atomic_int fail_connect_every; /* every Nth open fails (0 = never) */
    atomic_int break_after_calls;  /* a connection dies after N calls (0 = never) */
    atomic_int drop_every;         /* every Nth submit (pool-wide) kills its connection as
                                      fake_kill_conn() does, that request included (0 = never) */
    atomic_int corrupt_replies;    /* the next N replies arrive cut short by a byte: routed
                                      to their request, refused by the decoder */
    fake_responder_fn responder;   /* NULL: fake_default_responder */
    void *responder_ud;

    /* Counters, read by tests. */
    atomic_int opens;    /* open() calls */
    atomic_int open_ok;  /* successful opens */
    atomic_int open_now; /* connections currently open */
    atomic_int calls;    /* requests submitted */
    atomic_int drops;    /* connections killed by drop_every */
    /* Requests submitted per connection, by index: the Nth successful open is
     * index N (1-based); connections past FAKE_MAX_CONNS - 1 are not counted. */
    atomic_int conn_calls[FAKE_MAX_CONNS];

    /* Several endpoints: the fake knows an endpoint by its URL's port, so
     * tests use ports 1..FAKE_MAX_PORTS-1 ("ws://h:1,h:2,h:3"). */
    atomic_int port_down[FAKE_MAX_PORTS];  /* 1: opens to that port are refused */
    atomic_int port_opens[FAKE_MAX_PORTS]; /* successful opens per port */
    atomic_int port_now[FAKE_MAX_PORTS];   /* connections open now per port */
    char last_host[64]; /* host of the last open() (written under the transport's
                           mutex; read it once the opens are over) */
} fake_settings;

void fake_settings_init(fake_settings *s);

/* ping, let, unset, reset, invalidate, authenticate → null; query → one OK statement per call echoing the SQL; signin →
 * "fake-token"; use → {}; "fail" → error -32000; "authfail" → error -32002;
 * "noreply" → no reply; anything else → -32601. */
json_t *fake_default_responder(void *ud, json_int_t id, const char *method, json_t *params);

extern const surpool__transport_ops fake_transport_ops;

/* Kill every open connection (as if the server went away): in-flight requests
 * complete with SURPOOL_ERR_DISCONNECTED and on_dead fires. */
void fake_kill_all(surpool__transport *t);

/* Kill one connection, the Nth successful open (1-based), as fake_kill_all()
 * does. Returns 1 if it was open and alive, else 0. */
int fake_kill_conn(surpool__transport *t, int index);

/* Kill every open connection to one endpoint (by its port), as
 * fake_kill_all() does; returns how many were killed. With port_down set
 * first, this is a node going away. */
int fake_kill_port(surpool__transport *t, int port);

#endif
