/*
 * The test server launcher: start one of our Node test servers (tests/server/
 * server.mjs, the real SurrealDB core behind a WebSocket /rpc endpoint, or
 * null_server.mjs) on a loopback port, and stop it. Every integration test
 * starts its own and always stops it. Part of the test toolkit (testkit.h).
 */
#ifndef SURPOOL_TEST_HARNESS_H
#define SURPOOL_TEST_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

#include "surpool.h"

#define HARNESS_MAX_NODES 8

typedef struct test_server {
    pid_t pid;
    int port;
    int stdin_fd; /* closing it makes the server exit (--exit-on-stdin-close) */
    char url[256];
    /* Cluster simulator (harness_start_cluster): node ports, 1-based node k at
     * node_ports[k - 1]; port == node_ports[0]; /control and /stats go to the
     * control port, which stays up whichever nodes are killed. */
    int nnodes; /* 0 for a plain server */
    int node_ports[HARNESS_MAX_NODES];
    int control_port;
} test_server;

/* How long a server may take to print its LISTENING line (times TK_SLOW). */
#define HARNESS_START_MS 30000

/* Start `script` (relative to tests/server/) with extra args (NULL-terminated
 * array, may be NULL) on --port `port` (0 = free port). Returns 0 on success;
 * on failure prints why to stderr (no LISTENING line within HARNESS_START_MS,
 * the server exited) and returns -1. */
int harness_start(test_server *s, const char *script, int port, const char *const *args);
/* harness_start on a port that may still be busy (a server just killed on
 * it): retries for up to HARNESS_START_MS. Returns 0 on success. */
int harness_restart(test_server *s, const char *script, int port, const char *const *args);
/* The usual group setup: tests/server/server.mjs with --user root --pass root
 * on a free port (s->url is then its ws:// URL). Returns 0, or -1 after saying
 * on stderr that it could not start (and that npm ci may not have run). */
int harness_start_root(test_server *s);
/* SIGTERM, wait up to 5 s, then SIGKILL. Safe to call twice. */
void harness_stop(test_server *s);
/* SIGKILL at once (crash simulation); waits for the process. */
void harness_kill9(test_server *s);
/* HTTP POST /control with a JSON body; returns 0 on HTTP 200. */
int harness_control(const test_server *s, const char *json_body);
/* Start server.mjs as a cluster simulator: `nodes` (2..HARNESS_MAX_NODES)
 * WebSocket nodes on their own loopback ports over one shared SurrealDB core
 * (--nodes), plus a control port. s->url lists every node
 * ("ws://127.0.0.1:p1,127.0.0.1:p2,.../rpc"). Returns 0 or -1 (printed why). */
int harness_start_cluster(test_server *s, int nodes, const char *const *args);
/* Kill node k (1-based): its listener closes (connects are refused) and its
 * sockets drop without a close frame. Returns 0 on success. */
int harness_node_kill(const test_server *s, int node);
/* Bring node k back on the same port. Returns 0 on success. */
int harness_node_revive(const test_server *s, int node);
/* "ws://127.0.0.1:<port of node k>/rpc" into buf. */
void harness_node_url(const test_server *s, int node, char *buf, size_t size);

/* The major version of the SurrealDB core server.mjs runs: 2 when
 * SURPOOL_TEST_CORE=2 (harness_start then adds --core 2), else 3. For the
 * expectations that really differ by server version (docs/errors.md, the
 * README's "Server versions"); never to weaken a 3.x assertion. */
int harness_core_major(void);

/* The wire format SURPOOL_TEST_WIRE names: CBOR for "cbor", else JSON
 * (tests/CMakeLists.txt runs the integration suites once per format). */
surpool_wire_format harness_wire(void);

/* The config every integration suite starts from, for a server started with
 * --user root --pass root (harness_start_root, or a cluster with those args):
 * surpool_config_init, then `url`, the wire format harness_wire() names, user
 * and pass root, ns "test" and database `db` (db NULL: neither ns nor db, for
 * a url that names them), and bounds generous enough for a sanitized build on
 * a busy machine (acquire 30 s, connect 10 s, request 30 s; pinned here so a
 * change of the library's defaults does not change the tests). The caller then
 * sets only what is its own. `url` and `db` are borrowed until pool create. */
void harness_root_config(surpool_config *cfg, const char *url, const char *db);

/* GET /stats and read one counter (signins, signinFailures, authenticates,
 * sockets, ...); -1 on failure. */
long harness_stat(const test_server *s, const char *key);

#endif
