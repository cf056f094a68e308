/*
 * The shared lane on the real transport (libwebsockets) against the null
 * server, on both event loops: async completions cross from the service
 * thread to the lane's delivery thread once per pass of the loop (transport.h,
 * contract 10), so these check that none is lost or delayed for good by that:
 * completions of reads, of request deadlines (timers) and of sockets closing,
 * each exactly once and on the delivery thread.
 */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "lane.h"
#include "testkit.h"
#include "transport.h"

extern char **environ;

/* The null server (tests/server/null_server.mjs: canned JSON replies, and
 * `sleep [ms]`), started here: harness.c passes it options of server.mjs. */
static pid_t g_pid = -1;
static char g_url[64];

static int group_setup(void **state)
{
    (void)state;
    int out[2];
    if (pipe(out) != 0)
        return -1;
    const char *argv[] = {"node", SURPOOL_SOURCE_DIR "/tests/server/null_server.mjs", "--port",
                          "0", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    posix_spawn_file_actions_addclose(&fa, out[1]);
    int rc = posix_spawnp(&g_pid, "node", &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    if (rc != 0) {
        close(out[0]);
        g_pid = -1;
        fprintf(stderr, "cannot run node\n");
        return -1;
    }
    /* "LISTENING <port>\n", bounded. */
    char line[64] = {0};
    size_t len = 0;
    int64_t end = tk_now_ms() + 30000 * TK_SLOW;
    while (len < sizeof(line) - 1 && memchr(line, '\n', len) == NULL && tk_now_ms() < end) {
        struct pollfd pfd = {out[0], POLLIN, 0};
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        ssize_t r = read(out[0], line + len, sizeof(line) - 1 - len);
        if (r <= 0 && errno != EINTR)
            break;
        if (r > 0)
            len += (size_t)r;
    }
    close(out[0]);
    int port = 0;
    if (sscanf(line, "LISTENING %d", &port) != 1 || port <= 0) {
        fprintf(stderr, "tests/server/null_server.mjs did not start (did npm ci run?)\n");
        kill(g_pid, SIGKILL);
        waitpid(g_pid, NULL, 0);
        g_pid = -1;
        return -1;
    }
    snprintf(g_url, sizeof(g_url), "ws://127.0.0.1:%d/rpc", port);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (g_pid > 0) {
        kill(g_pid, SIGKILL);
        waitpid(g_pid, NULL, 0);
    }
    return 0;
}

/* A pool of 3 connections whose lane has 2 sockets, on `loop` ("poll" or
 * "libuv": the transport reads SURPOOL_EVENT_LOOP when the pool is created). */
static surpool_pool *make_pool(const char *loop)
{
    setenv("SURPOOL_EVENT_LOOP", loop, 1);
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = g_url;
    cfg.wire_format = SURPOOL_WIRE_JSON; /* the null server speaks JSON only */
    cfg.max_connections = 3;
    cfg.shared_connections = 2;
    cfg.shared_max_inflight = 64;
    cfg.connect_timeout_ms = 10000;
    cfg.acquire_timeout_ms = 10000;
    cfg.request_timeout_ms = 20000;
    surpool_pool *p = NULL;
    surpool_error err;
    surpool_err rc = surpool_pool_create(&cfg, &p, &err);
    unsetenv("SURPOOL_EVENT_LOOP");
    if (rc != SURPOOL_OK)
        fail_msg("pool create (%s loop): %s", loop, err.message);
    return tk_pool_track(p);
}

/* Chains of async calls: each callback sends the next while `budget` lasts. */
enum { CHAINS = 128 };
typedef struct chains {
    surpool_pool *pool;
    atomic_int budget;
    atomic_int calls, ok, off_delivery, ended;
    atomic_int chain_calls[CHAINS]; /* callbacks per chain while its request was out */
    atomic_int chain_out[CHAINS];   /* 1 while a chain's request is out */
    atomic_int twice;               /* a callback for a chain with nothing out */
} chains;

typedef struct link_ {
    chains *c;
    int i;
} link_;

static void on_chain(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)result;
    (void)err;
    link_ *k = ud;
    chains *c = k->c;
    atomic_fetch_add(&c->calls, 1);
    if (atomic_exchange(&c->chain_out[k->i], 0) != 1)
        atomic_fetch_add(&c->twice, 1);
    if (!surpool__lane_on_delivery_thread())
        atomic_fetch_add(&c->off_delivery, 1);
    if (code == SURPOOL_OK)
        atomic_fetch_add(&c->ok, 1);
    if (code == SURPOOL_OK && atomic_fetch_sub(&c->budget, 1) > 0) {
        atomic_store(&c->chain_out[k->i], 1);
        if (surpool_query_async(c->pool, "RETURN 1", NULL, on_chain, k) == SURPOOL_OK)
            return;
        atomic_store(&c->chain_out[k->i], 0);
    }
    atomic_fetch_add(&c->ended, 1);
}

static void start_chains(chains *c, link_ *links)
{
    for (int i = 0; i < CHAINS; i++) {
        links[i] = (link_){c, i};
        atomic_store(&c->chain_out[i], 1);
        assert_int_equal(surpool_query_async(c->pool, "RETURN 1", NULL, on_chain, &links[i]),
                         SURPOOL_OK);
    }
}

/* Replies read in one pass reach the delivery thread together: every one of
 * thousands is delivered exactly once, there, with 128 in flight; then the
 * pool is destroyed while the chains run and every chain still ends. */
static void run_chains(const char *loop)
{
    surpool_pool *p = make_pool(loop);
    chains *c = calloc(1, sizeof(*c));
    link_ *links = calloc(CHAINS, sizeof(*links));
    c->pool = p;
    enum { EXTRA = 4000 };
    atomic_store(&c->budget, EXTRA);
    start_chains(c, links);
    WAIT_UNTIL(atomic_load(&c->ended) == CHAINS, 60000);
    assert_int_equal(atomic_load(&c->calls), CHAINS + EXTRA);
    assert_int_equal(atomic_load(&c->ok), CHAINS + EXTRA);
    assert_int_equal(atomic_load(&c->off_delivery), 0);
    assert_int_equal(atomic_load(&c->twice), 0);

    /* Destroy under way: every request completes once (OK or CLOSED), each
     * chain ends (its next call is refused). (Requests still queued in the
     * lane complete on the destroying thread, as docs/threading.md says.) */
    memset(c, 0, sizeof(*c));
    c->pool = p;
    atomic_store(&c->budget, 1 << 30);
    start_chains(c, links);
    WAIT_UNTIL(atomic_load(&c->calls) >= 4 * CHAINS, 60000);
    tk_pool_destroy(p);
    assert_int_equal(atomic_load(&c->ended), CHAINS);
    assert_int_equal(atomic_load(&c->twice), 0);
    free(links);
    free(c);
}

static void test_chains_poll(void **state)
{
    (void)state;
    run_chains("poll");
}

static void test_chains_libuv(void **state)
{
    (void)state;
    run_chains("libuv");
}

/* A completion made by a timer (the request's deadline) with no other I/O
 * going on is handed over without waiting for the loop to wake up again: on
 * libuv the timers run before the loop blocks, so the pass that collects them
 * ends there (a prepare handle), not after the next I/O. */
typedef struct timed {
    atomic_int calls, code, off_delivery;
} timed;

static void on_timed(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)result;
    (void)err;
    timed *t = ud;
    atomic_store(&t->code, (int)code);
    if (!surpool__lane_on_delivery_thread())
        atomic_fetch_add(&t->off_delivery, 1);
    atomic_fetch_add(&t->calls, 1);
}

static void run_deadline(const char *loop)
{
    surpool_pool *p = make_pool(loop);
    json_t *out = NULL;
    surpool_error err;
    if (surpool_query(p, "RETURN 1", NULL, &out, &err) != SURPOOL_OK)
        fail_msg("warm-up query: %s", err.message);
    json_decref(out);
    timed t = {0};
    surpool_call_options o;
    surpool_call_options_init(&o);
    o.timeout_ms = 200;
    json_t *params = json_pack("[i]", 600000); /* the reply would come in 10 min */
    assert_int_equal(surpool_call_async_opts(p, "sleep", params, &o, on_timed, &t), SURPOOL_OK);
    json_decref(params);
    WAIT_UNTIL(atomic_load(&t.calls) == 1, 20000);
    assert_int_equal(atomic_load(&t.code), SURPOOL_ERR_REQUEST_TIMEOUT);
    assert_int_equal(atomic_load(&t.off_delivery), 0);
    tk_pool_destroy(p);
    assert_int_equal(atomic_load(&t.calls), 1);
}

static void test_deadline_poll(void **state)
{
    (void)state;
    run_deadline("poll");
}

static void test_deadline_libuv(void **state)
{
    (void)state;
    run_deadline("libuv");
}

/* Off the transport's thread there is no pass: nothing is armed, the caller
 * hands over at once (contract 10). */
static void never_run(surpool__pass_hook *h)
{
    (void)h;
    fail_msg("a hook armed off the transport's thread ran");
}

static void test_no_pass_off_the_service_thread(void **state)
{
    (void)state;
    surpool__pass_hook h = {never_run, NULL, 0};
    assert_int_equal(surpool__transport_defer(&h), 0);
    assert_int_equal(h.armed, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_chains_poll, tk_teardown),
        cmocka_unit_test_teardown(test_chains_libuv, tk_teardown),
        cmocka_unit_test_teardown(test_deadline_poll, tk_teardown),
        cmocka_unit_test_teardown(test_deadline_libuv, tk_teardown),
        cmocka_unit_test(test_no_pass_off_the_service_thread),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
