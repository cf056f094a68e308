/*
 * Test harness: start our Node test server (tests/server/server.mjs, the real
 * SurrealDB core behind a WebSocket /rpc endpoint) on a free loopback port and
 * stop it. Every integration test starts its own and always stops it.
 */
#ifndef SURPOOL_TEST_HARNESS_H
#define SURPOOL_TEST_HARNESS_H

#include <sys/types.h>

typedef struct test_server {
    pid_t pid;
    int port;
    int stdin_fd; /* closing it makes the server exit (--exit-on-stdin-close) */
    char url[128];
} test_server;

/* Start `script` (relative to tests/server/) with extra args (NULL-terminated
 * array, may be NULL) on --port `port` (0 = free port). Returns 0 on success. */
int harness_start(test_server *s, const char *script, int port, const char *const *args);
/* SIGTERM, wait up to 5 s, then SIGKILL. Safe to call twice. */
void harness_stop(test_server *s);
/* SIGKILL at once (crash simulation); waits for the process. */
void harness_kill9(test_server *s);
/* HTTP POST /control with a JSON body; returns 0 on HTTP 200. */
int harness_control(const test_server *s, const char *json_body);

#endif
