/*
 * The libwebsockets transport, driven directly (no pool) against
 * tests/server/null_server.mjs, which each test starts on a free port.
 * Real threads, real sockets; run it under ASan, TSan and valgrind too.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <dirent.h>
#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cbor_codec.h"
#include "codec.h"
#include "internal.h"
#include "transport.h"
#include "url.h"
#include "wire.h"

#ifndef SURPOOL_SOURCE_DIR
#error "compile with -DSURPOOL_SOURCE_DIR=\"/path/to/repo\""
#endif

extern char **environ;

static const surpool__transport_ops *ops = &surpool__transport_lws;

/* Under a sanitizer freed memory is held back (ASan's quarantine): RSS says
 * nothing about what the library keeps. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RSS_MEANINGFUL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define RSS_MEANINGFUL 0
#endif
#endif
#ifndef RSS_MEANINGFUL
#define RSS_MEANINGFUL 1
#endif
/* Sanitizers slow everything down several times (as testkit.h's TK_SLOW). */
#define SLOW (RSS_MEANINGFUL ? 1 : 4)

#define WAIT_MS 15000 /* upper bound for anything that should happen "soon" */

/* ------------------------------------------------------------------------- */
/* Test logger: silent unless SURPOOL_TEST_VERBOSE is set                    */
/* ------------------------------------------------------------------------- */

static atomic_int g_log_lines;
static atomic_int g_saw_uv, g_saw_poll, g_saw_fallback; /* "event loop: ..." lines */

static void test_log(void *ud, surpool_log_level level, const char *msg)
{
    (void)ud;
    atomic_fetch_add(&g_log_lines, 1);
    if (strcmp(msg, "event loop: libuv") == 0)
        atomic_fetch_add(&g_saw_uv, 1);
    else if (strcmp(msg, "event loop: poll") == 0)
        atomic_fetch_add(&g_saw_poll, 1);
    else if (strstr(msg, "cannot run on libuv") != NULL)
        atomic_fetch_add(&g_saw_fallback, 1);
    if (getenv("SURPOOL_TEST_VERBOSE") != NULL)
        fprintf(stderr, "  [log %d] %s\n", (int)level, msg);
}

static const surpool__logger g_logger = {test_log, NULL, SURPOOL_LOG_DEBUG};

/* ------------------------------------------------------------------------- */
/* The null server                                                            */
/* ------------------------------------------------------------------------- */

typedef struct server {
    pid_t pid;
    int port;
    int out_fd;
} server;

/* Every server still running, so that a failed test (cmocka longjmps out of
 * it) does not leave one behind: test_teardown kills them. */
static pid_t g_pids[16];

static void pids_add(pid_t pid)
{
    for (size_t i = 0; i < sizeof(g_pids) / sizeof(g_pids[0]); i++) {
        if (g_pids[i] == 0) {
            g_pids[i] = pid;
            return;
        }
    }
}

static void pids_remove(pid_t pid)
{
    for (size_t i = 0; i < sizeof(g_pids) / sizeof(g_pids[0]); i++)
        if (g_pids[i] == pid)
            g_pids[i] = 0;
}

static int test_teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(g_pids) / sizeof(g_pids[0]); i++) {
        if (g_pids[i] != 0) {
            kill(g_pids[i], SIGKILL);
            waitpid(g_pids[i], NULL, 0);
            g_pids[i] = 0;
        }
    }
    return 0;
}

/* Start `node tests/server/null_server.mjs --port 0 <args...>` (NULL-terminated)
 * and read its `LISTENING <port>` line. */
static void server_start(server *s, ...)
{
    const char *argv[32];
    int n = 0;
    argv[n++] = "node";
    argv[n++] = SURPOOL_SOURCE_DIR "/tests/server/null_server.mjs";
    argv[n++] = "--port";
    argv[n++] = "0";
    va_list ap;
    va_start(ap, s);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < 30)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;

    int fds[2];
    assert_int_equal(pipe(fds), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addclose(&fa, fds[1]);
    int rc = posix_spawnp(&s->pid, "node", &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    assert_int_equal(rc, 0);
    pids_add(s->pid);
    s->out_fd = fds[0];

    char line[128];
    size_t len = 0;
    int64_t until = surpool__now_ns() + 10000 * SURPOOL__NS_PER_MS;
    while (len < sizeof(line) - 1) {
        struct pollfd p = {s->out_fd, POLLIN, 0};
        int left = (int)((until - surpool__now_ns()) / SURPOOL__NS_PER_MS);
        assert_true(left > 0);
        if (poll(&p, 1, left) <= 0)
            continue;
        ssize_t r = read(s->out_fd, line + len, 1);
        assert_true(r == 1);
        if (line[len] == '\n')
            break;
        len++;
    }
    line[len] = '\0';
    assert_int_equal(strncmp(line, "LISTENING ", 10), 0);
    s->port = atoi(line + 10);
    assert_true(s->port > 0);
}

static void server_stop(server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        pids_remove(s->pid);
        s->pid = 0;
    }
    if (s->out_fd >= 0) {
        close(s->out_fd);
        s->out_fd = -1;
    }
}

/* A port with nothing listening: bind an ephemeral one, then close it. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t sl = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &sl);
    close(fd);
    return ntohs(a.sin_port);
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atol(line + 6);
    if (f != NULL)
        fclose(f);
    return kb;
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------------- */
/* A transport + URL bundle                                                   */
/* ------------------------------------------------------------------------- */

typedef struct fixture {
    surpool__url url;
    surpool__tconfig cfg;
    surpool__transport *t;
} fixture;

static void fixture_cfg(fixture *f, const char *scheme, const char *host, int port)
{
    char s[256];
    snprintf(s, sizeof(s), "%s://%s:%d/rpc", scheme, host, port);
    surpool_error err;
    assert_int_equal(surpool__url_parse(s, &f->url, &err), SURPOOL_OK);
    memset(&f->cfg, 0, sizeof(f->cfg));
    f->cfg.url = &f->url;
    f->cfg.connect_timeout_ms = 5000;
    f->cfg.max_message_bytes = 64u << 20;
    f->cfg.max_connections = 16;
    f->cfg.logger = &g_logger;
}

static void fixture_create(fixture *f)
{
    surpool_error err;
    surpool_err rc = ops->create(&f->cfg, NULL, &f->t, &err);
    if (rc != SURPOOL_OK)
        fail_msg("create: %s", err.message);
}

static void fixture_destroy(fixture *f)
{
    ops->destroy(f->t);
    f->t = NULL;
    surpool__url_free(&f->url);
}

/* ------------------------------------------------------------------------- */
/* Connection events                                                          */
/* ------------------------------------------------------------------------- */

typedef struct events {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int dead;
    surpool_err why;
    char message[256];
    int notifies;
} events;

static void ev_on_dead(void *ud, surpool_err why, const char *message)
{
    events *e = ud;
    pthread_mutex_lock(&e->mu);
    e->dead++;
    e->why = why;
    snprintf(e->message, sizeof(e->message), "%s", message);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static void ev_on_notify(void *ud, json_t *frame)
{
    events *e = ud;
    pthread_mutex_lock(&e->mu);
    /* No cmocka asserts here: this runs on the transport's thread. */
    if (json_object_get(frame, "result") != NULL)
        e->notifies++;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static void events_init(events *e, surpool__tconn_events *tev)
{
    memset(e, 0, sizeof(*e));
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    tev->on_dead = ev_on_dead;
    tev->on_notify = ev_on_notify;
    tev->userdata = e;
}

static void events_fini(events *e)
{
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
}

static int wait_dead(events *e, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&e->mu);
    while (e->dead == 0 && pthread_cond_timedwait(&e->cv, &e->mu, &ts) == 0) {
    }
    int d = e->dead;
    pthread_mutex_unlock(&e->mu);
    return d;
}

static surpool__tconn *open_ok(fixture *f, const surpool__tconn_events *ev)
{
    surpool__tconn *c = NULL;
    surpool_error err;
    surpool_err rc = ops->open(f->t, NULL, surpool__deadline_after_ms(5000), ev, &c, &err);
    if (rc != SURPOOL_OK)
        fail_msg("open: %s (%s)", err.message, surpool_strerror(rc));
    assert_non_null(c);
    assert_true(ops->alive(c));
    return c;
}

/* ------------------------------------------------------------------------- */
/* Requests                                                                   */
/* ------------------------------------------------------------------------- */

/* Completion is counted per batch; a request that completes twice is a bug. */
typedef struct batch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int completed;
} batch;

typedef struct treq {
    surpool__treq r;
    batch *b;
    atomic_int done_calls;
    int64_t done_at;
    int decoded_in_done; /* the transport set reply itself (it must not decode) */
    int frame_in_done;   /* it handed over the raw frame */
} treq;

static void batch_init(batch *b)
{
    memset(b, 0, sizeof(*b));
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
}

static void batch_fini(batch *b)
{
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
}

static void on_done(surpool__treq *r)
{
    treq *q = (treq *)r;
    batch *b = q->b;
    q->done_at = surpool__now_ns();
    q->decoded_in_done = r->reply != NULL;
    q->frame_in_done = r->frame != NULL;
    atomic_fetch_add(&q->done_calls, 1);
    pthread_mutex_lock(&b->mu);
    b->completed++;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

/* Wait until `n` requests of the batch completed; 1 if they did in time. */
static int batch_wait(batch *b, int n, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&b->mu);
    while (b->completed < n && pthread_cond_timedwait(&b->cv, &b->mu, &ts) == 0) {
    }
    int ok = b->completed >= n;
    pthread_mutex_unlock(&b->mu);
    return ok;
}

static treq *treq_new(batch *b, int64_t id, const char *method, json_t *params, long timeout_ms)
{
    treq *q = calloc(1, sizeof(*q));
    assert_non_null(q);
    surpool_error err;
    assert_int_equal(surpool__codec_encode_request(id, method, params, ops->headroom, &q->r.buf,
                                                   &q->r.len, &err),
                     SURPOOL_OK);
    if (params != NULL)
        json_decref(params);
    q->r.id = id;
    q->r.deadline_ns = timeout_ms < 0 ? INT64_MAX : surpool__deadline_after_ms(timeout_ms);
    q->r.done = on_done;
    q->b = b;
    return q;
}

static void treq_free(treq *q)
{
    if (q == NULL)
        return;
    if (q->r.reply != NULL)
        json_decref(q->r.reply);
    surpool__free(q->r.frame);
    surpool__free(q->r.buf);
    free(q);
}

static void submit_ok(surpool__tconn *c, treq *q)
{
    assert_int_equal(ops->submit(c, &q->r), SURPOOL_OK);
}

/* The reply must be for this request. */
static void assert_reply(treq *q)
{
    /* The transport routed the raw bytes; the decode happens here, on the
     * thread that wanted the reply. */
    if (q->r.status == SURPOOL_OK) {
        assert_false(q->decoded_in_done);
        assert_true(q->frame_in_done);
    }
    surpool__wire_decode_reply(&q->r);
    if (q->r.status != SURPOOL_OK)
        fail_msg("request %lld: %s: %s", (long long)q->r.id, surpool_strerror(q->r.status),
                 q->r.message);
    assert_non_null(q->r.reply);
    json_t *id = json_object_get(q->r.reply, "id");
    assert_true(json_is_integer(id));
    assert_int_equal(json_integer_value(id), q->r.id);
    assert_int_equal(atomic_load(&q->done_calls), 1);
}

/* One synchronous call. */
static treq *call(surpool__tconn *c, int64_t id, const char *method, json_t *params,
                  long timeout_ms, batch *b)
{
    treq *q = treq_new(b, id, method, params, timeout_ms);
    int before;
    pthread_mutex_lock(&b->mu);
    before = b->completed;
    pthread_mutex_unlock(&b->mu);
    submit_ok(c, q);
    assert_true(batch_wait(b, before + 1, WAIT_MS));
    return q;
}

/* `n` pings one after another, ids 1..n, each answered "ok". */
static void pings(surpool__tconn *c, batch *b, int n)
{
    for (int i = 1; i <= n; i++) {
        treq *q = call(c, i, "ping", NULL, 5000, b);
        assert_reply(q);
        assert_string_equal(json_string_value(json_object_get(q->r.reply, "result")), "ok");
        treq_free(q);
    }
}

/* ------------------------------------------------------------------------- */
/* Tests                                                                      */
/* ------------------------------------------------------------------------- */

static void test_round_trips(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);

    surpool__tconn *c = open_ok(&f, NULL);
    batch b;
    batch_init(&b);
    pings(c, &b, 50);
    /* Params survive the trip (raw UTF-8, NUL inside a string). */
    json_t *p = json_pack("[s, s#]", "h\xc3\xa9llo \xe2\x82\xac", "a\0b", (size_t)3);
    treq *q = call(c, 99, "echo", p, 5000, &b);
    assert_reply(q);
    json_t *res = json_object_get(q->r.reply, "result");
    assert_string_equal(json_string_value(json_array_get(res, 0)), "h\xc3\xa9llo \xe2\x82\xac");
    assert_int_equal(json_string_length(json_array_get(res, 1)), 3);
    treq_free(q);

    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
}

/* Pings on a fresh transport with the given loop; returns which loop it said
 * it runs (1 libuv, 0 poll). */
static int loop_round_trips(int port, int event_loop)
{
    atomic_store(&g_saw_uv, 0);
    atomic_store(&g_saw_poll, 0);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", port);
    f.cfg.event_loop = event_loop;
    fixture_create(&f);
    surpool__tconn *c = open_ok(&f, NULL);
    batch b;
    batch_init(&b);
    pings(c, &b, 20);
    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    int uv = atomic_load(&g_saw_uv), poll_ = atomic_load(&g_saw_poll);
    assert_int_equal(uv + poll_, 1); /* each transport says which loop, once */
    return uv;
}

/* The libuv loop is used when asked for (and installed: the build needs
 * libwebsockets-evlib-uv); poll() when asked for; a missing libuv plugin falls
 * back to poll() with an INFO line; auto picks by pool size. */
static void test_event_loops(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    assert_int_equal(loop_round_trips(s.port, SURPOOL__LOOP_LIBUV), 1);
    assert_int_equal(loop_round_trips(s.port, SURPOOL__LOOP_POLL), 0);

    atomic_store(&g_saw_fallback, 0);
    surpool__lws_test_no_uv = 1;
    int uv = loop_round_trips(s.port, SURPOOL__LOOP_LIBUV);
    surpool__lws_test_no_uv = 0;
    assert_int_equal(uv, 0);
    assert_int_equal(atomic_load(&g_saw_fallback), 1);

    /* auto (unless SURPOOL_EVENT_LOOP says otherwise, as in this suite's twin) */
    if (getenv("SURPOOL_EVENT_LOOP") == NULL) {
        assert_int_equal(loop_round_trips(s.port, SURPOOL__LOOP_AUTO), 0); /* 16 conns */
        atomic_store(&g_saw_uv, 0);
        fixture f;
        fixture_cfg(&f, "ws", "127.0.0.1", s.port);
        f.cfg.max_connections = SURPOOL__LOOP_AUTO_LIBUV_ABOVE + 1;
        fixture_create(&f);
        fixture_destroy(&f);
        assert_int_equal(atomic_load(&g_saw_uv), 1);
    }
    server_stop(&s);
}

/* A big reply reaches its request as raw bytes: the service thread routed it
 * and did not parse it. While this thread still holds it undecoded, another
 * connection's ping completes; only then is the big one decoded, here. */
static void test_big_reply_decoded_by_its_caller(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    surpool__tconn *c1 = open_ok(&f, NULL);
    surpool__tconn *c2 = open_ok(&f, NULL);
    batch b;
    batch_init(&b);
    const size_t n = 8u << 20;
    treq *big = call(c1, 1, "big", json_pack("[I]", (json_int_t)n), 15000, &b);
    assert_int_equal(big->r.status, SURPOOL_OK);
    assert_false(big->decoded_in_done);
    assert_non_null(big->r.frame);
    assert_true(big->r.frame_len > n);
    assert_null(big->r.reply);

    treq *ping = call(c2, 2, "ping", NULL, 5000, &b);
    assert_reply(ping);
    treq_free(ping);

    assert_reply(big); /* decodes it */
    assert_null(big->r.frame);
    assert_int_equal(json_string_length(json_object_get(big->r.reply, "result")), n);
    treq_free(big);
    ops->close(c1);
    ops->close(c2);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
}

/* surpool__wire_decode_reply(): the submitter's half of a routed reply. A frame
 * routing accepts but the decoder refuses, or one that decodes to another
 * id, ends its request as PROTOCOL; the frame is freed in every case. */
static void decode_case(const char *bytes, size_t len, int cbor, int64_t id, surpool_err want)
{
    surpool__treq r;
    memset(&r, 0, sizeof(r));
    r.id = id;
    r.frame = surpool__malloc(len + 1);
    assert_non_null(r.frame);
    memcpy(r.frame, bytes, len);
    r.frame[len] = '\0';
    r.frame_len = len;
    r.frame_cbor = cbor;
    surpool__wire_decode_reply(&r);
    assert_null(r.frame);
    assert_int_equal(r.status, want);
    if (want == SURPOOL_OK) {
        assert_int_equal(json_integer_value(json_object_get(r.reply, "id")), id);
    } else {
        assert_null(r.reply);
        assert_true(r.message[0] != '\0');
    }
    json_decref(r.reply);
}

static void test_reply_decode(void **state)
{
    (void)state;
    const char *good = "{\"id\":7,\"result\":[1,2]}";
    decode_case(good, strlen(good), 0, 7, SURPOOL_OK);
    decode_case(good, strlen(good), 0, 8, SURPOOL_ERR_PROTOCOL); /* routed to another id */

    const char *broken = "{\"id\":7,\"result\":[1 2]}";
    surpool__frame_kind kind;
    int64_t id;
    assert_int_equal(surpool__codec_route(broken, strlen(broken), &kind, &id, NULL),
                     SURPOOL_OK);
    assert_int_equal(id, 7);
    decode_case(broken, strlen(broken), 0, 7, SURPOOL_ERR_PROTOCOL);

    json_t *v = json_pack("{s:I, s:s}", "id", (json_int_t)9, "result", "x");
    char *buf;
    size_t len;
    assert_int_equal(surpool__cbor_encode_value(v, 0, &buf, &len, NULL), SURPOOL_OK);
    decode_case(buf, len, 1, 9, SURPOOL_OK);
    decode_case(buf, len - 1, 1, 9, SURPOOL_ERR_PROTOCOL); /* truncated */
    surpool__free(buf);
    json_decref(v);

    surpool__treq r; /* a failed request's frame is just freed */
    memset(&r, 0, sizeof(r));
    r.status = SURPOOL_ERR_DISCONNECTED;
    r.frame = surpool__malloc(1);
    surpool__wire_decode_reply(&r);
    assert_null(r.frame);
    assert_null(r.reply);
    assert_int_equal(r.status, SURPOOL_ERR_DISCONNECTED);
}

static void test_pipelined_out_of_order(void **state)
{
    (void)state;
    server s;
    server_start(&s, "--shuffle", NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    surpool__tconn *c = open_ok(&f, NULL);

    enum { N = 1000 };
    batch b;
    batch_init(&b);
    treq **qs = calloc(N, sizeof(*qs));
    for (int i = 0; i < N; i++) {
        qs[i] = treq_new(&b, 1000 + i, "ping", NULL, 10000);
        submit_ok(c, qs[i]);
    }
    assert_true(batch_wait(&b, N, WAIT_MS));
    for (int i = 0; i < N; i++) {
        assert_reply(qs[i]);
        treq_free(qs[i]);
    }
    free(qs);
    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
}

typedef struct worker {
    surpool__tconn *c;
    int id0;
    int n;
    int failures;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    batch b;
    batch_init(&b);
    for (int i = 0; i < w->n; i++) {
        treq *q = treq_new(&b, w->id0 + i, "ping", NULL, 10000);
        if (ops->submit(w->c, &q->r) != SURPOOL_OK || !batch_wait(&b, i + 1, WAIT_MS) ||
            (surpool__wire_decode_reply(&q->r), q->r.status != SURPOOL_OK) ||
            json_integer_value(json_object_get(q->r.reply, "id")) != w->id0 + i)
            w->failures++;
        treq_free(q);
    }
    batch_fini(&b);
    return NULL;
}

static void test_many_connections(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    f.cfg.max_connections = 8;
    fixture_create(&f);

    enum { CONNS = 8, THREADS = 16, PER = 200 };
    surpool__tconn *cs[CONNS];
    for (int i = 0; i < CONNS; i++)
        cs[i] = open_ok(&f, NULL);
    worker ws[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        ws[i] = (worker){cs[i % CONNS], (i + 1) * 100000, PER, 0};
        pthread_create(&th[i], NULL, worker_main, &ws[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(ws[i].failures, 0);
    }
    for (int i = 0; i < CONNS; i++)
        ops->close(cs[i]);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_connect_refused(void **state)
{
    (void)state;
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", closed_port());
    fixture_create(&f);
    surpool__tconn *c = NULL;
    surpool_error err;
    /* A long deadline: CONNECT (not TIMEOUT) proves the refusal was reported
     * as such instead of being waited out. */
    surpool_err rc = ops->open(f.t, NULL, surpool__deadline_after_ms(60000), NULL, &c, &err);
    assert_int_equal(rc, SURPOOL_ERR_CONNECT);
    assert_int_equal(err.code, SURPOOL_ERR_CONNECT);
    assert_null(c);
    assert_non_null(strstr(err.message, "127.0.0.1"));
    /* lws only says "Unable to connect": the message says what happened. */
    if (strstr(err.message, "connection refused") == NULL)
        fail_msg("refusal not named: %s", err.message);
    fixture_destroy(&f);
}

/* A listener whose accept queue is full: Linux drops further SYNs, so the TCP
 * connect gets no answer at all and the open must say it timed out there. */
static void test_connect_unanswered_times_out(void **state)
{
    (void)state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(lfd, 0), 0);
    socklen_t sl = sizeof(a);
    getsockname(lfd, (struct sockaddr *)&a, &sl);
    /* Fill the accept queue (never accepted). */
    int fill[4], nfill = 0;
    for (int i = 0; i < 4; i++) {
        fill[nfill] = socket(AF_INET, SOCK_STREAM, 0);
        int fl = fcntl(fill[nfill], F_GETFL, 0);
        fcntl(fill[nfill], F_SETFL, fl | O_NONBLOCK);
        (void)connect(fill[nfill], (struct sockaddr *)&a, sizeof(a));
        nfill++;
    }
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", ntohs(a.sin_port));
    f.cfg.connect_timeout_ms = 1000;
    fixture_create(&f);
    surpool__tconn *c = NULL;
    surpool_error err;
    /* The open deadline is well past connect_timeout_ms, so the transport's own
     * connect timeout decides (equal deadlines raced: TIMEOUT or CONNECT). */
    surpool_err rc = ops->open(f.t, NULL, surpool__deadline_after_ms(5000), NULL, &c, &err);
    assert_null(c);
    print_message("    %s: %s\n", surpool_strerror(rc), err.message);
    if (rc != SURPOOL_ERR_CONNECT || strstr(err.message, "timed out") == NULL ||
        strstr(err.message, "127.0.0.1 port") == NULL ||
        strstr(err.message, "no answer to the TCP connect") == NULL)
        fail_msg("%s: %s", surpool_strerror(rc), err.message);
    fixture_destroy(&f);
    for (int i = 0; i < nfill; i++)
        close(fill[i]);
    close(lfd);
}

static void test_resolve_failure(void **state)
{
    (void)state;
    fixture f;
    fixture_cfg(&f, "ws", "no-such-host.invalid", 80);
    fixture_create(&f);
    surpool__tconn *c = NULL;
    surpool_error err;
    surpool_err rc = ops->open(f.t, NULL, surpool__deadline_after_ms(5000), NULL, &c, &err);
    assert_int_equal(rc, SURPOOL_ERR_CONNECT);
    if (strstr(err.message, "cannot connect to no-such-host.invalid port 80: name not "
                            "resolved") == NULL)
        fail_msg("%s", err.message);
    fixture_destroy(&f);
}

static void test_no_upgrade_times_out(void **state)
{
    (void)state;
    server s;
    server_start(&s, "--no-upgrade", NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    f.cfg.connect_timeout_ms = 500;
    fixture_create(&f);
    int fds = count_fds();
    surpool__tconn *c = NULL;
    surpool_error err;
    int64_t t0 = surpool__now_ns();
    surpool_err rc = ops->open(f.t, NULL, surpool__deadline_after_ms(500), NULL, &c, &err);
    int64_t ms = (surpool__now_ns() - t0) / SURPOOL__NS_PER_MS;
    assert_int_equal(rc, SURPOOL_ERR_TIMEOUT);
    assert_non_null(strstr(err.message, "timed out after 500 ms"));
    if (strstr(err.message, "127.0.0.1 port") == NULL ||
        strstr(err.message, "TCP connected, no answer to the WebSocket upgrade") == NULL)
        fail_msg("%s", err.message);
    assert_true(ms >= 480); /* never before the deadline */
    /* The aborted attempt's socket is gone when open() returns. */
    assert_int_equal(count_fds(), fds);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_missing_subprotocol(void **state)
{
    (void)state;
    server s;
    server_start(&s, "--no-subprotocol", NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    surpool__tconn *c = NULL;
    surpool_error err;
    surpool_err rc = ops->open(f.t, NULL, surpool__deadline_after_ms(5000), NULL, &c, &err);
    assert_int_equal(rc, SURPOOL_ERR_CONNECT);
    assert_non_null(strstr(err.message, "subprotocol 'json'"));
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_wrong_path(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    surpool__url_free(&f.url);
    char u[128];
    snprintf(u, sizeof(u), "ws://127.0.0.1:%d/nope", s.port);
    surpool_error err;
    assert_int_equal(surpool__url_parse(u, &f.url, &err), SURPOOL_OK);
    fixture_create(&f);
    surpool__tconn *c = NULL;
    surpool_err rc = ops->open(f.t, NULL, surpool__deadline_after_ms(5000), NULL, &c, &err);
    assert_int_equal(rc, SURPOOL_ERR_CONNECT);
    print_message("    %s\n", err.message);
    assert_non_null(strstr(err.message, "HTTP 400"));
    fixture_destroy(&f);
    server_stop(&s);
}

/* A server of one connection on loopback (a 404 answer, a hang-up in the TLS
 * handshake). */
typedef struct oneshot {
    int lfd, port;
    pthread_t th;
} oneshot;

/* A loopback listener on a free port whose one connection `main_fn` serves on
 * a thread of its own (join h->th, close h->lfd). */
static void oneshot_start(oneshot *h, void *(*main_fn)(void *))
{
    h->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(h->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(h->lfd, 4), 0);
    socklen_t sl = sizeof(a);
    getsockname(h->lfd, (struct sockaddr *)&a, &sl);
    h->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&h->th, NULL, main_fn, h), 0);
}

static void *http404_main(void *arg)
{
    oneshot *h = arg;
    int fd = accept(h->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    char buf[4096];
    size_t got = 0;
    struct pollfd p = {fd, POLLIN, 0};
    /* Read the request head (bounded), then answer. */
    while (got < sizeof(buf) - 1 && poll(&p, 1, WAIT_MS) == 1) {
        ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n") != NULL)
            break;
    }
    static const char resp[] =
        "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nNot Found";
    (void)!write(fd, resp, sizeof(resp) - 1);
    close(fd);
    return NULL;
}

/* An HTTP 404 at the upgrade: the message says the path is not a SurrealDB RPC
 * endpoint and suggests /rpc, instead of lws' "ws upgrade response not 101". */
static void test_http_404_names_the_path(void **state)
{
    (void)state;
    oneshot h;
    oneshot_start(&h, http404_main);

    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", h.port);
    surpool__url_free(&f.url);
    char u[128];
    snprintf(u, sizeof(u), "ws://127.0.0.1:%d/surreal", h.port);
    surpool_error err;
    assert_int_equal(surpool__url_parse(u, &f.url, &err), SURPOOL_OK);
    fixture_create(&f);
    surpool__tconn *c = NULL;
    surpool_err rc = ops->open(f.t, NULL, surpool__deadline_after_ms(WAIT_MS), NULL, &c, &err);
    assert_int_equal(rc, SURPOOL_ERR_CONNECT);
    assert_null(c);
    print_message("    %s\n", err.message);
    if (strstr(err.message, "HTTP 404") == NULL ||
        strstr(err.message, "path '/surreal' is not a SurrealDB RPC endpoint (is it /rpc?)") ==
            NULL ||
        strstr(err.message, "not 101") != NULL)
        fail_msg("%s", err.message);
    fixture_destroy(&f);
    pthread_join(h.th, NULL);
    close(h.lfd);
}

/* A server that takes the TCP connection and hangs up in the middle of the
 * TLS handshake (no alert: a proxy that does not know the name, a server
 * that does not speak TLS there): the handshake failed, TLS, as the lws
 * role reported it ("connect SYSCALL"), not "closed the connection before
 * the WebSocket upgrade completed". */
static void *hangup_main(void *arg)
{
    oneshot *h = arg;
    int fd = accept(h->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    char buf[4096];
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, WAIT_MS) == 1)
        (void)!read(fd, buf, sizeof(buf)); /* the ClientHello */
    close(fd);
    return NULL;
}

static void test_tls_hangup_in_handshake(void **state)
{
    (void)state;
    oneshot h;
    oneshot_start(&h, hangup_main);

    fixture f;
    fixture_cfg(&f, "wss", "127.0.0.1", h.port);
    fixture_create(&f);
    surpool__tconn *c = NULL;
    surpool_error err;
    surpool_err rc = ops->open(f.t, NULL, surpool__deadline_after_ms(WAIT_MS), NULL, &c, &err);
    assert_null(c);
    print_message("    %s: %s\n", surpool_strerror(rc), err.message);
    if (rc != SURPOOL_ERR_TLS ||
        strstr(err.message, "TLS handshake with 127.0.0.1 failed") == NULL)
        fail_msg("%s: %s", surpool_strerror(rc), err.message);
    fixture_destroy(&f);
    pthread_join(h.th, NULL);
    close(h.lfd);

    /* A server that never answers the ClientHello: lws' timeout ends it
     * (connect_timeout_ms, before the open deadline) and says where. */
    server s;
    server_start(&s, "--no-upgrade", NULL);
    fixture_cfg(&f, "wss", "127.0.0.1", s.port);
    f.cfg.connect_timeout_ms = 1000;
    fixture_create(&f);
    rc = ops->open(f.t, NULL, surpool__deadline_after_ms(WAIT_MS), NULL, &c, &err);
    print_message("    %s: %s\n", surpool_strerror(rc), err.message);
    if (rc != SURPOOL_ERR_TIMEOUT ||
        strstr(err.message, "no answer to the TLS handshake") == NULL)
        fail_msg("%s: %s", surpool_strerror(rc), err.message);
    /* The same when the caller's deadline ends it (open() says it then). */
    rc = ops->open(f.t, NULL, surpool__deadline_after_ms(500), NULL, &c, &err);
    print_message("    %s: %s\n", surpool_strerror(rc), err.message);
    if (rc != SURPOOL_ERR_TIMEOUT ||
        strstr(err.message, "no answer to the TLS handshake") == NULL)
        fail_msg("%s: %s", surpool_strerror(rc), err.message);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_reply_too_large(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    f.cfg.max_message_bytes = 100000;
    fixture_create(&f);
    events ea, eb;
    surpool__tconn_events tea, teb;
    events_init(&ea, &tea);
    events_init(&eb, &teb);
    surpool__tconn *a = open_ok(&f, &tea);
    surpool__tconn *other = open_ok(&f, &teb);

    batch b;
    batch_init(&b);
    /* Just under the limit passes (it arrives in several 64 KiB pieces). */
    treq *q = call(a, 1, "big", json_pack("[i]", 99000), 5000, &b);
    assert_reply(q);
    treq_free(q);

    /* A request still in flight when the big reply arrives shares its fate. */
    treq *slow = treq_new(&b, 2, "sleep", json_pack("[i]", 20000), 60000);
    submit_ok(a, slow);
    treq *big = treq_new(&b, 3, "big", json_pack("[i]", 200000), 10000);
    submit_ok(a, big);
    assert_true(batch_wait(&b, 3, WAIT_MS));
    assert_int_equal(big->r.status, SURPOOL_ERR_TOO_LARGE);
    assert_string_equal(big->r.message, "reply larger than max_message_bytes (100000)");
    assert_int_equal(slow->r.status, SURPOOL_ERR_TOO_LARGE);
    assert_int_equal(atomic_load(&big->done_calls), 1);
    assert_int_equal(atomic_load(&slow->done_calls), 1);
    treq_free(big);
    treq_free(slow);

    /* The connection dies (the pool replaces it) ... */
    assert_true(wait_dead(&ea, WAIT_MS) == 1);
    assert_int_equal(ea.why, SURPOOL_ERR_TOO_LARGE);
    assert_false(ops->alive(a));
    treq *after = treq_new(&b, 4, "ping", NULL, 1000);
    assert_int_equal(ops->submit(a, &after->r), SURPOOL_ERR_DISCONNECTED);
    treq_free(after);

    /* ... and the other one does not notice. */
    q = call(other, 5, "ping", NULL, 5000, &b);
    assert_reply(q);
    treq_free(q);
    assert_true(ops->alive(other));
    assert_int_equal(eb.dead, 0);

    ops->close(a);
    ops->close(other);
    assert_int_equal(ea.dead, 1);
    batch_fini(&b);
    events_fini(&ea);
    events_fini(&eb);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_request_timeout(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    surpool__tconn *c = open_ok(&f, NULL);
    batch b;
    batch_init(&b);

    /* Mixed deadlines, submitted out of deadline order (the unsorted path). */
    treq *q300 = treq_new(&b, 1, "sleep", json_pack("[i]", 600), 300);
    treq *q100 = treq_new(&b, 2, "sleep", json_pack("[i]", 600), 100);
    treq *qok = treq_new(&b, 3, "sleep", json_pack("[i]", 50), 5000);
    submit_ok(c, q300);
    submit_ok(c, q100);
    submit_ok(c, qok);
    assert_true(batch_wait(&b, 3, WAIT_MS));
    assert_int_equal(q100->r.status, SURPOOL_ERR_REQUEST_TIMEOUT);
    assert_int_equal(q300->r.status, SURPOOL_ERR_REQUEST_TIMEOUT);
    assert_reply(qok);
    int64_t late100 = (q100->done_at - q100->r.deadline_ns) / 1000;
    int64_t late300 = (q300->done_at - q300->r.deadline_ns) / 1000;
    print_message("    deadline overshoot: %lld us, %lld us\n", (long long)late100,
                  (long long)late300);
    assert_true(late100 >= 0); /* never before the deadline */
    assert_true(late300 >= 0);

    /* The late replies (after 600 ms) are dropped; the connection carries on. */
    struct timespec ts = {0, 500 * 1000 * 1000};
    nanosleep(&ts, NULL);
    treq *q = call(c, 4, "ping", NULL, 5000, &b);
    assert_reply(q);
    treq_free(q);
    assert_true(ops->alive(c));
    assert_int_equal(atomic_load(&q100->done_calls), 1);
    assert_int_equal(atomic_load(&q300->done_calls), 1);

    /* A deadline already past at submit completes promptly, from any thread. */
    treq *past = treq_new(&b, 5, "sleep", json_pack("[i]", 1000), 0);
    submit_ok(c, past);
    assert_true(batch_wait(&b, 5, WAIT_MS));
    assert_int_equal(past->r.status, SURPOOL_ERR_REQUEST_TIMEOUT);

    treq_free(q100);
    treq_free(q300);
    treq_free(qok);
    treq_free(past);
    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_cancel(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    surpool__tconn *c = open_ok(&f, NULL);
    batch b;
    batch_init(&b);
    /* The reply takes 1.5 s: the cancel 50 ms in surely comes first. */
    treq *q = treq_new(&b, 1, "sleep", json_pack("[i]", 1500), 60000);
    submit_ok(c, q);
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_int_equal(ops->cancel(c, &q->r), 1);
    assert_int_equal(ops->cancel(c, &q->r), 0); /* already removed */
    /* Its reply arrives later and is dropped; done() is never called. */
    treq *p = call(c, 2, "sleep", json_pack("[i]", 2000), 60000, &b); /* ends after q's */
    assert_reply(p);
    assert_int_equal(atomic_load(&q->done_calls), 0);
    /* Cancel after completion: 0. */
    assert_int_equal(ops->cancel(c, &p->r), 0);
    treq_free(p);
    treq_free(q);
    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
}

/* cancel() racing the writer and the replies: each request is either taken
 * back (done() never runs) or completed exactly once. */
typedef struct canceller {
    surpool__tconn *c;
    int id0;
    int cancelled, completed, bad;
} canceller;

static void *cancel_main(void *arg)
{
    canceller *w = arg;
    batch b;
    batch_init(&b);
    enum { N = 400 };
    treq *qs[N];
    int taken[N];
    for (int i = 0; i < N; i++) {
        qs[i] = treq_new(&b, w->id0 + i, "ping", NULL, 10000);
        if (ops->submit(w->c, &qs[i]->r) != SURPOOL_OK) {
            w->bad++;
            taken[i] = 1;
            continue;
        }
        /* Vary the gap so that some are queued, some on the wire, some done. */
        static const long gap_us[5] = {0, 5, 50, 300, 2000};
        if (gap_us[i % 5] != 0) {
            struct timespec gap = {0, gap_us[i % 5] * 1000};
            nanosleep(&gap, NULL);
        }
        taken[i] = ops->cancel(w->c, &qs[i]->r);
        w->cancelled += taken[i];
    }
    int expect = N - w->cancelled;
    if (!batch_wait(&b, expect, WAIT_MS))
        w->bad++;
    struct timespec ts = {0, 200 * 1000 * 1000}; /* stragglers would show up here */
    nanosleep(&ts, NULL);
    for (int i = 0; i < N; i++) {
        int calls = atomic_load(&qs[i]->done_calls);
        if (taken[i] ? calls != 0 : (calls != 1 || qs[i]->r.status != SURPOOL_OK))
            w->bad++;
        w->completed += calls;
        treq_free(qs[i]);
    }
    batch_fini(&b);
    return NULL;
}

static void test_cancel_race(void **state)
{
    (void)state;
    server s;
    server_start(&s, "--shuffle", NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    surpool__tconn *c = open_ok(&f, NULL);
    enum { T = 4 };
    canceller w[T];
    pthread_t th[T];
    for (int i = 0; i < T; i++) {
        w[i] = (canceller){c, (i + 1) * 10000, 0, 0, 0};
        pthread_create(&th[i], NULL, cancel_main, &w[i]);
    }
    int cancelled = 0, completed = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].bad, 0);
        cancelled += w[i].cancelled;
        completed += w[i].completed;
    }
    print_message("    cancelled %d, completed %d\n", cancelled, completed);
    assert_true(ops->alive(c));
    ops->close(c);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_server_killed(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    surpool__tconn *c = open_ok(&f, &tev);
    batch b;
    batch_init(&b);
    enum { N = 20 };
    treq *qs[N];
    for (int i = 0; i < N; i++) {
        qs[i] = treq_new(&b, i + 1, "sleep", json_pack("[i]", 10000), 20000);
        submit_ok(c, qs[i]);
    }
    treq *p = call(c, 100, "ping", NULL, 5000, &b); /* all N are on the wire now */
    assert_reply(p);
    treq_free(p);
    server_stop(&s);
    assert_true(batch_wait(&b, N + 1, WAIT_MS));
    for (int i = 0; i < N; i++) {
        assert_int_equal(qs[i]->r.status, SURPOOL_ERR_DISCONNECTED);
        assert_int_equal(atomic_load(&qs[i]->done_calls), 1);
        treq_free(qs[i]);
    }
    assert_int_equal(wait_dead(&e, WAIT_MS), 1);
    assert_int_equal(e.why, SURPOOL_ERR_DISCONNECTED);
    assert_false(ops->alive(c));
    treq *after = treq_new(&b, 200, "ping", NULL, 1000);
    assert_int_equal(ops->submit(c, &after->r), SURPOOL_ERR_DISCONNECTED);
    treq_free(after);
    ops->close(c);
    assert_int_equal(e.dead, 1);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
}

static void test_close_after(void **state)
{
    (void)state;
    server s;
    server_start(&s, "--close-after", "5", NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    surpool__tconn *c = open_ok(&f, &tev);
    batch b;
    batch_init(&b);
    for (int i = 1; i <= 4; i++) {
        treq *q = call(c, i, "ping", NULL, 5000, &b);
        assert_reply(q);
        treq_free(q);
    }
    treq *q = call(c, 5, "ping", NULL, 5000, &b);
    assert_int_equal(q->r.status, SURPOOL_ERR_DISCONNECTED);
    treq_free(q);
    assert_int_equal(wait_dead(&e, WAIT_MS), 1);
    ops->close(c);
    /* A new connection to the same server works. */
    surpool__tconn *c2 = open_ok(&f, NULL);
    q = call(c2, 6, "ping", NULL, 5000, &b);
    assert_reply(q);
    treq_free(q);
    ops->close(c2);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
    server_stop(&s);
}

/* A reply the server sends as many frames of one message, with a ping between
 * every two: the message arrives whole (any byte lost, repeated or out of order
 * changes the string), the pings are answered, and the socket stays usable. */
static void test_fragmented_reply(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    surpool__tconn *c = open_ok(&f, NULL);
    batch b;
    batch_init(&b);
    static const int parts[] = {2, 7, 300};
    static const int sizes[] = {10, 100000, 700000};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        treq *q = call(c, (int64_t)i + 1, "fragmented", json_pack("[i,i]", parts[i], sizes[i]),
                       10000, &b);
        assert_reply(q);
        json_t *res = json_object_get(q->r.reply, "result");
        assert_true(json_is_string(res));
        assert_int_equal(json_string_length(res), sizes[i]);
        const char *v = json_string_value(res);
        for (int k = 0; k < sizes[i]; k++)
            if (v[k] != 'x')
                fail_msg("byte %d of a %d-byte reply in %d frames is 0x%02x", k, sizes[i],
                         parts[i], (unsigned char)v[k]);
        treq_free(q);
    }
    pings(c, &b, 3);
    assert_true(ops->alive(c));
    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
}

/* A request submitted by a done() (on the service thread, as lane.c does)
 * while a pong waits to be written: the reply came in pieces with a ping
 * between them, so one writable callback finds both the pong and the new
 * request; the request must go out after the pong, not wait for the next
 * unrelated writable callback. */
static surpool__tconn *g_chain_c;
static treq *g_chain_next;
static atomic_int g_chain_rc;

static void on_done_chain(surpool__treq *r)
{
    atomic_store(&g_chain_rc, ops->submit(g_chain_c, &g_chain_next->r));
    on_done(r);
}

static void test_request_after_pong(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    surpool__tconn *c = open_ok(&f, NULL);
    batch b;
    batch_init(&b);
    for (int i = 0; i < 5; i++) {
        treq *first = treq_new(&b, 2 * i + 1, "fragmented", json_pack("[i,i]", 2, 10), 60000);
        first->r.done = on_done_chain;
        g_chain_c = c;
        g_chain_next = treq_new(&b, 2 * i + 2, "ping", NULL, 60000);
        submit_ok(c, first);
        assert_true(batch_wait(&b, 2 * i + 2, WAIT_MS));
        assert_int_equal(atomic_load(&g_chain_rc), SURPOOL_OK);
        assert_reply(first);
        assert_reply(g_chain_next);
        treq_free(first);
        treq_free(g_chain_next);
    }
    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
}

/* The keepalive's times for one test (0, 0 = the fixed ones back). */
static void ka_times(int ping_ms, int hangup_ms)
{
    surpool__lws_test_ka_ping_ms = ping_ms;
    surpool__lws_test_ka_hangup_ms = hangup_ms;
}

/* The keepalive tests' short times: a ping after 150 ms of quiet, the hang-up
 * at 500 ms, times SLOW under sanitizers (a pong must come back within the
 * difference, and a loaded sanitized run can stall the service thread that
 * long). KA_DEAD_MSG is what on_dead then says. */
#define KA_PING_MS (150 * SLOW)
#define KA_HANGUP_MS (500 * SLOW)
#define KA_DEAD_MSG                                                                            \
    (SLOW == 1 ? "no answer from the server for 0.5 s (keepalive)"                             \
               : "no answer from the server for 2 s (keepalive)")

/* A request whose one param is a string of n copies of `ch`. */
static treq *big_request(batch *b, int64_t id, size_t n, char ch, long timeout_ms)
{
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, ch, n);
    big[n] = '\0';
    treq *q = treq_new(b, id, "ping", json_pack("[s]", big), timeout_ms);
    free(big);
    return q;
}

/* The keepalive (its times shortened by the test hook): a quiet socket whose
 * server answers pings stays open past the hang-up time; one whose server
 * stops reading is dropped with DISCONNECTED, its request failing, and the
 * dead event says why. */
static void test_keepalive(void **state)
{
    (void)state;
    ka_times(KA_PING_MS, KA_HANGUP_MS);
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    surpool__tconn *c = open_ok(&f, &tev);
    batch b;
    batch_init(&b);
    /* Three hang-up times of silence from our side: only pongs keep it open. */
    struct timespec quiet = {3 * KA_HANGUP_MS / 1000, (3 * KA_HANGUP_MS % 1000) * 1000000L};
    nanosleep(&quiet, NULL);
    assert_true(ops->alive(c));
    pings(c, &b, 2);

    treq *mute = treq_new(&b, 100, "mute", NULL, 60000);
    submit_ok(c, mute);
    assert_int_equal(wait_dead(&e, WAIT_MS), 1);
    assert_string_equal(e.message, KA_DEAD_MSG);
    assert_true(batch_wait(&b, 3, WAIT_MS));
    assert_int_equal(mute->r.status, SURPOOL_ERR_DISCONNECTED);
    assert_false(ops->alive(c));
    treq_free(mute);
    ops->close(c);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
    server_stop(&s);
    ka_times(0, 0);
}

/* A server whose process stopped reading (its kernel still acknowledges what
 * fits its buffers) while we keep sending small requests: the requests' bytes
 * being acknowledged is not the server taking them, so the keepalive still
 * hangs up (a wait bounded by WAIT_MS; it never came while requests flowed). */
static void test_keepalive_requests_to_mute(void **state)
{
    (void)state;
    ka_times(KA_PING_MS, KA_HANGUP_MS);
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    surpool__tconn *c = open_ok(&f, &tev);
    batch b;
    batch_init(&b);
    enum { MAXQ = 400 };
    treq *qs[MAXQ];
    int n = 0;
    qs[n] = treq_new(&b, 1, "mute", NULL, 60000);
    submit_ok(c, qs[n++]);
    int dead = 0;
    while (!dead && n < MAXQ) {
        treq *q = treq_new(&b, n + 1, "ping", NULL, 60000);
        if (ops->submit(c, &q->r) != SURPOOL_OK) {
            treq_free(q);
            break;
        }
        qs[n++] = q;
        dead = wait_dead(&e, 40); /* one request per 40 ms, WAIT_MS in all */
    }
    if (!dead)
        dead = wait_dead(&e, 100);
    assert_int_equal(dead, 1);
    assert_string_equal(e.message, KA_DEAD_MSG);
    assert_true(batch_wait(&b, n, WAIT_MS));
    /* Pings that reached the server with "mute" were answered; the rest, and
     * "mute" itself, end with the socket. */
    assert_int_equal(qs[0]->r.status, SURPOOL_ERR_DISCONNECTED);
    assert_int_equal(qs[n - 1]->r.status, SURPOOL_ERR_DISCONNECTED);
    for (int i = 0; i < n; i++) {
        if (qs[i]->r.status != SURPOOL_OK && qs[i]->r.status != SURPOOL_ERR_DISCONNECTED)
            fail_msg("request %d: %s", i, surpool_strerror(qs[i]->r.status));
        treq_free(qs[i]);
    }
    ops->close(c);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
    server_stop(&s);
    ka_times(0, 0);
}

/* The keepalive hangs up on a server that stopped reading while our output
 * waits for it (a big request the socket cannot take): no close frame can
 * go out, so the socket goes at once and on_dead says so then, not after
 * the close-frame backstop (connect_timeout_ms, here 60 s). */
static void test_keepalive_choked(void **state)
{
    (void)state;
    ka_times(KA_PING_MS, KA_HANGUP_MS);
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    /* The close frame's backstop (connect_timeout_ms) beyond WAIT_MS: a
     * hang-up that waited for it would not be seen. */
    f.cfg.connect_timeout_ms = 60000;
    fixture_create(&f);
    batch b;
    batch_init(&b);
    /* Built before the socket opens: the hang-up is due KA_HANGUP_MS after that. */
    treq *q = big_request(&b, 2, (size_t)32 << 20, 'y', 60000);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    surpool__tconn *c = open_ok(&f, &tev);
    treq *mute = treq_new(&b, 1, "mute", NULL, 60000);
    submit_ok(c, mute);
    struct timespec settle = {0, 100 * 1000 * 1000};
    nanosleep(&settle, NULL);
    int64_t t0 = surpool__now_ns();
    submit_ok(c, q);
    assert_true(batch_wait(&b, 2, WAIT_MS));
    assert_int_equal(wait_dead(&e, WAIT_MS), 1);
    int64_t ms = (surpool__now_ns() - t0) / SURPOOL__NS_PER_MS;
    print_message("    on_dead %lld ms after the big request: %s\n", (long long)ms, e.message);
    assert_string_equal(e.message, KA_DEAD_MSG);
    assert_int_equal(q->r.status, SURPOOL_ERR_DISCONNECTED);
    treq_free(mute);
    treq_free(q);
    ops->close(c);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
    server_stop(&s);
    ka_times(0, 0);
}

/* A request the server takes slowly (it stops reading for 10 ms after each
 * chunk, and sends nothing until it has all of it): the upload outlasts the
 * keepalive's hang-up time (shortened by the test hook) many times over, yet
 * the server is taking our bytes, so the socket stays and the reply comes. */
static void test_upload_keeps_alive(void **state)
{
    (void)state;
    ka_times(KA_PING_MS, KA_HANGUP_MS);
    server s;
    server_start(&s, "--read-pause-ms", "10", NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    batch b;
    batch_init(&b);
    treq *q = big_request(&b, 1, (size_t)24 << 20, 'u', 60000);
    surpool__tconn *c = open_ok(&f, NULL);
    submit_ok(c, q);
    assert_true(batch_wait(&b, 1, WAIT_MS));
    assert_reply(q);
    assert_string_equal(json_string_value(json_object_get(q->r.reply, "result")), "ok");
    assert_true(ops->alive(c));
    treq_free(q);
    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
    ka_times(0, 0);
}

/* The server closes and reads no more while a big request of ours is half
 * written (it reads slowly): no close frame of ours can follow that request,
 * so the socket goes at once and the request fails with the server's code,
 * not after the close-frame backstop (connect_timeout_ms, here 60 s). */
static void test_peer_close_during_upload(void **state)
{
    (void)state;
    server s;
    server_start(&s, "--read-pause-ms", "10", NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    f.cfg.connect_timeout_ms = 60000;
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    batch b;
    batch_init(&b);
    treq *q = big_request(&b, 2, (size_t)24 << 20, 'c', 60000);
    surpool__tconn *c = open_ok(&f, &tev);
    treq *cm = treq_new(&b, 1, "close_mute", json_pack("[i,i]", 200, 1001), 60000);
    submit_ok(c, cm);
    submit_ok(c, q);
    assert_int_equal(wait_dead(&e, WAIT_MS), 1);
    assert_non_null(strstr(e.message, "connection closed by peer (code 1001"));
    assert_true(batch_wait(&b, 2, WAIT_MS));
    assert_int_equal(q->r.status, SURPOOL_ERR_DISCONNECTED);
    assert_int_equal(cm->r.status, SURPOOL_ERR_DISCONNECTED);
    treq_free(cm);
    treq_free(q);
    ops->close(c);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_peer_close_code(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    surpool__tconn *c = open_ok(&f, &tev);
    batch b;
    batch_init(&b);
    treq *slow = treq_new(&b, 1, "sleep", json_pack("[i]", 5000), 10000);
    submit_ok(c, slow);
    treq *q = call(c, 2, "close", json_pack("[i, s]", 4000, "bye now"), 5000, &b);
    assert_true(batch_wait(&b, 2, WAIT_MS));
    assert_int_equal(q->r.status, SURPOOL_ERR_DISCONNECTED);
    assert_string_equal(q->r.message, "connection closed by peer (code 4000 bye now)");
    assert_int_equal(slow->r.status, SURPOOL_ERR_DISCONNECTED);
    assert_int_equal(wait_dead(&e, WAIT_MS), 1);
    assert_string_equal(e.message, "connection closed by peer (code 4000 bye now)");
    treq_free(q);
    treq_free(slow);
    ops->close(c);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
    server_stop(&s);
}

/* A close reason is text the server chose: it reaches the request's message,
 * the dead event and the log without controls ('?', or \n for a newline) --
 * issue 9 item 12. A reason that is not UTF-8 breaks the protocol (RFC 6455
 * 8.1): the connection fails with PROTOCOL, and no byte of it is quoted. */
static void test_peer_close_reason_bytes(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    surpool__tconn *c = open_ok(&f, &tev);
    batch b;
    batch_init(&b);
    /* "A", U+20AC, ESC, DEL, "\n", "B" */
    treq *q = call(c, 1, "close",
                   json_pack("[i,[i,i,i,i,i,i,i,i]]", 4001, 0x41, 0xE2, 0x82, 0xAC, 0x1B, 0x7F,
                             0x0A, 0x42),
                   5000, &b);
    assert_int_equal(q->r.status, SURPOOL_ERR_DISCONNECTED);
    const char *want = "connection closed by peer (code 4001 A\xE2\x82\xAC??\\nB)";
    assert_string_equal(q->r.message, want);
    assert_int_equal(wait_dead(&e, WAIT_MS), 1);
    assert_string_equal(e.message, want);
    treq_free(q);
    ops->close(c);

    /* A lone 0xFF, a truncated 0xC3. */
    events e2;
    events_init(&e2, &tev);
    c = open_ok(&f, &tev);
    q = call(c, 1, "close", json_pack("[i,[i,i,i]]", 4001, 0x41, 0xFF, 0xC3), 5000, &b);
    assert_int_equal(q->r.status, SURPOOL_ERR_PROTOCOL);
    assert_string_equal(q->r.message, "server sent text that is not UTF-8 (in a text message "
                                      "or a close reason)");
    assert_int_equal(wait_dead(&e2, WAIT_MS), 1);
    treq_free(q);
    ops->close(c);
    events_fini(&e2);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
    server_stop(&s);
}

/* The URL path goes into lws' 4096-byte header buffer. lws 4.1 refuses a
 * connect whose path does not fit, yet destroys the half-made socket later
 * on memory we had freed (and leaks ~200 KB): the transport refuses such a
 * URL at create, whoever parsed it (issue 9 item 8). A path of exactly
 * SURPOOL__URL_PATH_MAX bytes does reach the server (which answers 400: it
 * serves /rpc only). */
static void test_long_path(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);

    /* The longest path the URL parser lets through: sent, answered. */
    char *path = surpool__malloc(SURPOOL__URL_PATH_MAX + 1);
    assert_non_null(path);
    path[0] = '/';
    memset(path + 1, 'p', SURPOOL__URL_PATH_MAX - 1);
    path[SURPOOL__URL_PATH_MAX] = '\0';
    surpool__free(f.url.path);
    f.url.path = path;
    fixture_create(&f);
    surpool__tconn *c = NULL;
    surpool_error err;
    surpool_err rc = ops->open(f.t, NULL, surpool__deadline_after_ms(WAIT_MS), NULL, &c, &err);
    assert_int_equal(rc, SURPOOL_ERR_CONNECT);
    print_message("    %s\n", err.message);
    if (strstr(err.message, "HTTP 400") == NULL)
        fail_msg("a %d-byte path did not reach the server: %s", SURPOOL__URL_PATH_MAX,
                 err.message);
    ops->destroy(f.t);
    f.t = NULL;

    /* One byte more (and far more): refused at create, nothing reaches lws. */
    size_t lens[] = {SURPOOL__URL_PATH_MAX + 1, 5000, 64 * 1024};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        path = surpool__malloc(lens[i] + 1);
        assert_non_null(path);
        path[0] = '/';
        memset(path + 1, 'p', lens[i] - 1);
        path[lens[i]] = '\0';
        surpool__free(f.url.path);
        f.url.path = path;
        surpool__transport *t = NULL;
        rc = ops->create(&f.cfg, NULL, &t, &err);
        if (rc == SURPOOL_OK) {
            /* Before the fix: the connect fails and lws frees the socket later. */
            surpool__tconn *c2 = NULL;
            ops->open(t, NULL, surpool__deadline_after_ms(WAIT_MS), NULL, &c2, &err);
            if (c2 != NULL)
                ops->close(c2);
            ops->destroy(t);
            fail_msg("a %zu-byte path was accepted by create (open said: %s)", lens[i],
                     err.message);
        }
        assert_int_equal(rc, SURPOOL_ERR_INVALID_ARG);
        assert_null(t);
        assert_non_null(strstr(err.message, "path"));
    }
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_bad_frames(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    batch b;
    batch_init(&b);
    const char *methods[] = {"binary", "garbage"};
    for (int i = 0; i < 2; i++) {
        events e;
        surpool__tconn_events tev;
        events_init(&e, &tev);
        surpool__tconn *c = open_ok(&f, &tev);
        treq *q = call(c, 1, methods[i], NULL, 5000, &b);
        assert_int_equal(q->r.status, SURPOOL_ERR_PROTOCOL);
        print_message("    %s: %s\n", methods[i], q->r.message);
        treq_free(q);
        assert_int_equal(wait_dead(&e, WAIT_MS), 1);
        assert_int_equal(e.why, SURPOOL_ERR_PROTOCOL);
        ops->close(c);
        events_fini(&e);
    }
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
}

/* A frame ws.c refuses (a reserved bit set) gets our close frame with 1002
 * before the socket goes (the null server says what the last connection to
 * close got: 1006 when no close frame came). */
static void test_bad_frame_close_code(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    batch b;
    batch_init(&b);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    surpool__tconn *c = open_ok(&f, &tev);
    treq *q = call(c, 1, "bad_frame", NULL, WAIT_MS, &b);
    assert_int_equal(q->r.status, SURPOOL_ERR_PROTOCOL);
    treq_free(q);
    assert_int_equal(wait_dead(&e, WAIT_MS), 1);
    ops->close(c);
    events_fini(&e);
    c = open_ok(&f, NULL);
    json_int_t code = 0;
    int64_t until = surpool__now_ns() + (int64_t)WAIT_MS * SURPOOL__NS_PER_MS;
    for (int64_t id = 2; code == 0 && surpool__now_ns() < until; id++) {
        q = call(c, id, "last_close", NULL, WAIT_MS, &b);
        assert_reply(q);
        json_t *r = json_object_get(q->r.reply, "result");
        code = json_is_integer(r) ? json_integer_value(r) : 0;
        treq_free(q);
        struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    if (code != 1002)
        fail_msg("the server saw close code %lld (0: none within %d ms), not 1002",
                 (long long)code, WAIT_MS);
    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_notifications_and_orphans(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    surpool__tconn *c = open_ok(&f, &tev);
    batch b;
    batch_init(&b);
    treq *q = call(c, 1, "notify", NULL, 5000, &b);
    assert_reply(q);
    treq_free(q);
    assert_int_equal(e.notifies, 1); /* sent before the reply, same socket */
    q = call(c, 2, "orphan", NULL, 5000, &b);
    assert_reply(q); /* the id-less error was dropped, not a notification */
    treq_free(q);
    assert_int_equal(e.notifies, 1);
    assert_true(ops->alive(c));
    ops->close(c);
    assert_int_equal(e.dead, 0); /* no on_dead after close() */
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_close_with_requests_in_flight(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    surpool__tconn *c = open_ok(&f, &tev);
    batch b;
    batch_init(&b);
    enum { N = 200 };
    treq *qs[N];
    for (int i = 0; i < N; i++) {
        qs[i] = treq_new(&b, i + 1, "sleep", json_pack("[i]", 1000), 10000);
        submit_ok(c, qs[i]);
    }
    ops->close(c); /* some are queued, some on the wire */
    assert_true(batch_wait(&b, N, WAIT_MS));
    for (int i = 0; i < N; i++) {
        assert_int_equal(qs[i]->r.status, SURPOOL_ERR_DISCONNECTED);
        assert_int_equal(atomic_load(&qs[i]->done_calls), 1);
    }
    /* Nothing completes twice later, and on_dead never comes. */
    struct timespec ts = {1, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    for (int i = 0; i < N; i++) {
        assert_int_equal(atomic_load(&qs[i]->done_calls), 1);
        treq_free(qs[i]);
    }
    assert_int_equal(e.dead, 0);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_destroy_closes_open_connections(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, "ws", "127.0.0.1", s.port);
    fixture_create(&f);
    batch b;
    batch_init(&b);
    surpool__tconn *c1 = open_ok(&f, NULL);
    surpool__tconn *c2 = open_ok(&f, NULL);
    (void)c2;
    treq *q = treq_new(&b, 1, "sleep", json_pack("[i]", 5000), 10000);
    submit_ok(c1, q);
    fixture_destroy(&f); /* no close(): destroy does it */
    assert_int_equal(b.completed, 1);
    assert_int_equal(q->r.status, SURPOOL_ERR_DISCONNECTED);
    treq_free(q);
    batch_fini(&b);
    server_stop(&s);
}

static void test_create_destroy_cycles(void **state)
{
    (void)state;
    server s;
    server_start(&s, NULL);
    int cycles =
        getenv("SURPOOL_TEST_CYCLES") != NULL ? atoi(getenv("SURPOOL_TEST_CYCLES")) : 50;
    int fds0 = -1;
    long rss0 = 0;
    batch b;
    batch_init(&b);
    for (int i = 0; i < cycles; i++) {
        fixture f;
        fixture_cfg(&f, "ws", "127.0.0.1", s.port);
        fixture_create(&f);
        surpool__tconn *c = open_ok(&f, NULL);
        treq *q = call(c, i + 1, "ping", NULL, 5000, &b);
        assert_reply(q);
        treq_free(q);
        if (i % 2 == 0)
            ops->close(c); /* odd cycles leave it to destroy() */
        fixture_destroy(&f);
        if (i == 1)
            fds0 = count_fds();
        else if (i > 1)
            assert_int_equal(count_fds(), fds0);
        if (i == 9)
            rss0 = rss_kb();
    }
    if (cycles > 10)
        print_message("    %d cycles: RSS after 10: %ld kB, at the end: %ld kB\n", cycles, rss0,
                      rss_kb());
    batch_fini(&b);
    server_stop(&s);
}

/* ---- TLS ---- */

static char g_tls_dir[256];

static int run(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* A private CA, a server certificate for localhost (DNS:localhost, IP:127.0.0.1)
 * and one for localhost only (no IP), made with the openssl CLI. */
static int tls_setup(void **state)
{
    (void)state;
    snprintf(g_tls_dir, sizeof(g_tls_dir), "/tmp/surpool-tls-XXXXXX");
    assert_non_null(mkdtemp(g_tls_dir));
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "cd %s && "
             "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 "
             "  -subj '/CN=surpool test CA' >/dev/null 2>&1 && "
             "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext && "
             "printf 'subjectAltName=DNS:localhost\\n' > dns.ext && "
             "openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr "
             "  -subj '/CN=localhost' >/dev/null 2>&1 && "
             "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
             "  -out srv.pem -days 2 -extfile san.ext >/dev/null 2>&1 && "
             "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
             "  -out dns.pem -days 2 -extfile dns.ext >/dev/null 2>&1",
             g_tls_dir);
    assert_int_equal(run(cmd), 0);
    return 0;
}

static int tls_teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_tls_dir);
    return run(cmd) == 0 ? 0 : -1;
}

static int tls_teardown_all(void **state)
{
    test_teardown(state);
    return tls_teardown(state);
}

static void tls_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", g_tls_dir, name);
}

/* Runs `fn` over ws:// and then over wss:// (the server with the test CA's
 * certificate and key, the client trusting that CA). */
typedef void (*scheme_test)(const char *scheme, const char *ca, const char *cert,
                            const char *key);
static void ws_and_wss(scheme_test fn)
{
    char cert[300], key[300], ca[300];
    tls_path(cert, sizeof(cert), "srv.pem");
    tls_path(key, sizeof(key), "srv.key");
    tls_path(ca, sizeof(ca), "ca.pem");
    fn("ws", NULL, NULL, NULL);
    fn("wss", ca, cert, key);
}

static surpool_err tls_try(int port, const char *host, const char *ca, int insecure,
                           surpool_error *err)
{
    fixture f;
    fixture_cfg(&f, "wss", host, port);
    f.cfg.tls_ca_file = ca;
    f.cfg.tls_insecure_skip_verify = insecure;
    surpool_err rc = ops->create(&f.cfg, NULL, &f.t, err);
    if (rc != SURPOOL_OK) {
        surpool__url_free(&f.url);
        return rc;
    }
    surpool__tconn *c = NULL;
    rc = ops->open(f.t, NULL, surpool__deadline_after_ms(5000), NULL, &c, err);
    if (rc == SURPOOL_OK) {
        batch b;
        batch_init(&b);
        treq *q = call(c, 1, "ping", NULL, 5000, &b);
        assert_reply(q);
        treq_free(q);
        batch_fini(&b);
        ops->close(c);
    }
    fixture_destroy(&f);
    return rc;
}

static void test_tls(void **state)
{
    (void)state;
    char cert[300], key[300], ca[300], dns[300];
    tls_path(cert, sizeof(cert), "srv.pem");
    tls_path(key, sizeof(key), "srv.key");
    tls_path(ca, sizeof(ca), "ca.pem");
    tls_path(dns, sizeof(dns), "dns.pem");
    surpool_error err;

    server s;
    server_start(&s, "--tls-cert", cert, "--tls-key", key, NULL);
    /* Verified with our CA, by name and by address. */
    assert_int_equal(tls_try(s.port, "localhost", ca, 0, &err), SURPOOL_OK);
    assert_int_equal(tls_try(s.port, "127.0.0.1", ca, 0, &err), SURPOOL_OK);
    /* The system store does not know our CA. */
    assert_int_equal(tls_try(s.port, "localhost", NULL, 0, &err), SURPOOL_ERR_TLS);
    print_message("    no CA: %s\n", err.message);
    assert_non_null(strstr(err.message, "certificate verify failed: "));
    assert_non_null(strstr(err.message, "local issuer"));
    /* Explicitly insecure: anything goes. */
    assert_int_equal(tls_try(s.port, "localhost", NULL, 1, &err), SURPOOL_OK);
    /* A CA file that cannot be loaded fails create(). */
    assert_int_equal(tls_try(s.port, "localhost", "/nonexistent/ca.pem", 0, &err),
                     SURPOOL_ERR_TLS);
    print_message("    bad CA file: %s\n", err.message);
    assert_non_null(strstr(err.message, "/nonexistent/ca.pem"));
    /* A client certificate and key must belong together (checked at create). */
    fixture f;
    fixture_cfg(&f, "wss", "localhost", s.port);
    f.cfg.tls_ca_file = ca;
    char cakey[300];
    tls_path(cakey, sizeof(cakey), "ca.key");
    f.cfg.tls_cert_file = cert;
    f.cfg.tls_key_file = cakey;
    assert_int_equal(ops->create(&f.cfg, NULL, &f.t, &err), SURPOOL_ERR_TLS);
    print_message("    cert/key mismatch: %s\n", err.message);
    assert_non_null(strstr(err.message, "mismatch"));
    f.cfg.tls_key_file = key;
    fixture_create(&f); /* the server does not ask for it, but it loads */
    surpool__tconn *c = open_ok(&f, NULL);
    ops->close(c);
    fixture_destroy(&f);

    /* TLS to a plain ws server. */
    server plain;
    server_start(&plain, NULL);
    surpool_err rc = tls_try(plain.port, "localhost", ca, 0, &err);
    print_message("    wss to ws: %s\n", err.message);
    assert_int_equal(rc, SURPOOL_ERR_TLS);
    server_stop(&plain);
    server_stop(&s);

    /* A certificate for the name "localhost" only: connecting to 127.0.0.1 must
     * fail the name check even though the chain is trusted. */
    server s2;
    server_start(&s2, "--tls-cert", dns, "--tls-key", key, NULL);
    assert_int_equal(tls_try(s2.port, "localhost", ca, 0, &err), SURPOOL_OK);
    assert_int_equal(tls_try(s2.port, "127.0.0.1", ca, 0, &err), SURPOOL_ERR_TLS);
    print_message("    wrong name: %s\n", err.message);
    assert_non_null(strstr(err.message, "certificate verify failed: "));
    assert_non_null(strstr(err.message, "mismatch"));
    assert_int_equal(tls_try(s2.port, "127.0.0.1", ca, 1, &err), SURPOOL_OK);

    /* Several nodes share one transport: each open() checks its own node's
     * name (SNI and verification follow the endpoint, not tconfig.url). */
    fixture fe;
    fixture_cfg(&fe, "wss", "localhost", s2.port);
    fe.cfg.tls_ca_file = ca;
    fixture_create(&fe);
    char ipurl[96];
    snprintf(ipurl, sizeof(ipurl), "wss://127.0.0.1:%d/rpc", s2.port);
    surpool__url by_ip;
    assert_int_equal(surpool__url_parse(ipurl, &by_ip, &err), SURPOOL_OK);
    surpool__tconn *ce = NULL;
    assert_int_equal(ops->open(fe.t, &by_ip, surpool__deadline_after_ms(5000), NULL, &ce, &err),
                     SURPOOL_ERR_TLS);
    print_message("    endpoint 127.0.0.1 on a localhost transport: %s\n", err.message);
    assert_non_null(strstr(err.message, "mismatch"));
    ce = open_ok(&fe, NULL); /* the default endpoint, localhost: verified */
    ops->close(ce);
    surpool__url ws_ep;
    snprintf(ipurl, sizeof(ipurl), "ws://localhost:%d/rpc", s2.port);
    assert_int_equal(surpool__url_parse(ipurl, &ws_ep, &err), SURPOOL_OK);
    assert_int_equal(ops->open(fe.t, &ws_ep, surpool__deadline_after_ms(5000), NULL, &ce, &err),
                     SURPOOL_ERR_INVALID_ARG); /* another scheme than the transport's */
    surpool__url_free(&ws_ep);
    surpool__url_free(&by_ip);
    fixture_destroy(&fe);

    /* Our SSL_CTX comes and goes with each transport: no fd (or memory) growth. */
    int fds0 = count_fds();
    int cycles =
        getenv("SURPOOL_TEST_CYCLES") != NULL ? atoi(getenv("SURPOOL_TEST_CYCLES")) : 20;
    long rss0 = 0;
    for (int i = 0; i < cycles; i++) {
        assert_int_equal(tls_try(s2.port, "localhost", ca, 0, &err), SURPOOL_OK);
        assert_int_equal(tls_try(s2.port, "127.0.0.1", ca, 0, &err), SURPOOL_ERR_TLS);
        if (i == 9)
            rss0 = rss_kb();
    }
    assert_int_equal(count_fds(), fds0);
    if (cycles > 10)
        print_message("    %d TLS cycles: RSS after 10: %ld kB, at the end: %ld kB\n", cycles,
                      rss0, rss_kb());
    server_stop(&s2);
}

/* One big request must not pin its size in memory for the connection's
 * life: the transport frees its own buffers above a size once written
 * (ws.c's output, the TLS output), and so must the TLS session. A 32 MB
 * request over wss, then RSS: what stays is a few buffers of 64 KiB, not
 * the request (OpenSSL's memory BIO never shrinks what it grew to). */
static void big_request_rss(const char *scheme, int port, const char *ca)
{
    fixture f;
    fixture_cfg(&f, scheme, "localhost", port);
    f.cfg.tls_ca_file = ca;
    fixture_create(&f);
    surpool__tconn *c = open_ok(&f, NULL);
    batch b;
    batch_init(&b);
    pings(c, &b, 2);
    malloc_trim(0); /* RSS counts what is held, not what malloc keeps free */
    long before = rss_kb();
    treq *q = big_request(&b, 10, (size_t)32 << 20, 'y', 30000);
    submit_ok(c, q);
    assert_true(batch_wait(&b, 3, WAIT_MS * 2));
    assert_reply(q);
    treq_free(q);
    pings(c, &b, 2); /* the socket is fine, and its buffers have settled */
    malloc_trim(0);
    long after = rss_kb();
    print_message("    %s: RSS before the 32 MB request %ld kB, after %ld kB\n", scheme, before,
                  after);
    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    if (RSS_MEANINGFUL && after - before > 8 * 1024)
        fail_msg("%s: a 32 MB request left %ld kB behind on an idle connection", scheme,
                 after - before);
}

static void test_big_request_memory(void **state)
{
    (void)state;
    char cert[300], key[300], ca[300];
    tls_path(cert, sizeof(cert), "srv.pem");
    tls_path(key, sizeof(key), "srv.key");
    tls_path(ca, sizeof(ca), "ca.pem");
    /* Big blocks always from mmap (no dynamic threshold): a freed one leaves
     * RSS at once, so RSS counts what is still held. */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    server plain, tls;
    server_start(&plain, NULL);
    big_request_rss("ws", plain.port, NULL);
    server_stop(&plain);
    server_start(&tls, "--tls-cert", cert, "--tls-key", key, NULL);
    big_request_rss("wss", tls.port, ca);
    server_stop(&tls);
}

/* What an idle connection keeps (RSS per connection) after it sent a
 * 200 kB request and received its 200 kB echo: its buffers shrink back
 * within a keepalive period (shortened here). For wss: the read BIO grew
 * to 87 KiB for a 64 KiB read and never shrank, the session kept ~34 KiB
 * of record buffers; for both: ws.c's output buffer (256 KiB) and the
 * receive buffer (256 KiB) stayed. 40 connections. Returns the figure once
 * it is at most `limit_kb`, or the last one read after WAIT_MS. */
static long idle_kb(const char *scheme, const char *cert, const char *key, const char *ca,
                    long limit_kb)
{
    mallopt(M_MMAP_THRESHOLD, 256 * 1024); /* as in test_big_request_memory */
    ka_times(150, 5000);
    server s;
    if (cert != NULL)
        server_start(&s, "--tls-cert", cert, "--tls-key", key, NULL);
    else
        server_start(&s, NULL);
    enum { N = 40, BODY = 200000 };
    fixture f;
    fixture_cfg(&f, scheme, "localhost", s.port);
    f.cfg.tls_ca_file = ca;
    f.cfg.max_connections = N + 1;
    fixture_create(&f);
    batch b;
    batch_init(&b);
    surpool__tconn *warm = open_ok(&f, NULL); /* the context's own allocations */
    pings(warm, &b, 1);
    char *body = malloc(BODY + 1);
    assert_non_null(body);
    memset(body, 'z', BODY);
    body[BODY] = '\0';
    malloc_trim(0);
    long before = rss_kb();
    surpool__tconn *c[N];
    for (int i = 0; i < N; i++) {
        c[i] = open_ok(&f, NULL);
        treq *q = call(c[i], 1, "echo", json_pack("[s]", body), 5000, &b);
        assert_reply(q);
        treq_free(q);
    }
    /* Each socket gives its buffers back at its own keepalive check, once
     * quiet for half the ping period (75 ms here), on the service thread.
     * After 500 ms that has usually happened for all 40, but not on a
     * loaded machine (66 kB was seen with another suite running alongside), so
     * poll (bounded) instead of trusting a fixed pause: a transport that
     * never gives them back still fails. */
    struct timespec quiet = {0, 500 * 1000 * 1000}, step = {0, 100 * 1000 * 1000};
    nanosleep(&quiet, NULL);
    int64_t end = surpool__now_ns() + (int64_t)WAIT_MS * SURPOOL__NS_PER_MS;
    long per;
    for (;;) {
        malloc_trim(0);
        per = (rss_kb() - before) / N;
        /* Under a sanitizer RSS says nothing (no limit to wait for). */
        if (!RSS_MEANINGFUL || per <= limit_kb || surpool__now_ns() >= end)
            break;
        nanosleep(&step, NULL);
    }
    print_message("    an idle %s connection after a 200 kB round trip: %ld kB\n", scheme, per);
    free(body);
    for (int i = 0; i < N; i++)
        ops->close(c[i]);
    ops->close(warm);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
    ka_times(0, 0);
    return per;
}

static void test_idle_memory(void **state)
{
    (void)state;
    char cert[300], key[300], ca[300];
    tls_path(cert, sizeof(cert), "srv.pem");
    tls_path(key, sizeof(key), "srv.key");
    tls_path(ca, sizeof(ca), "ca.pem");
    long ws = idle_kb("ws", NULL, NULL, NULL, 64);
    long wss = idle_kb("wss", cert, key, ca, 96);
    if (RSS_MEANINGFUL && (ws > 64 || wss > 96))
        fail_msg("an idle connection holds %ld kB (ws), %ld kB (wss)", ws, wss);
}

/* A big reply and a big request at once, to a server that stops reading
 * while its reply waits in its socket's write buffer (back-pressure): the
 * request's bytes must not stop us reading the reply, or neither side moves
 * until the keepalive hangs up on a live server (40 s; the wait here ends
 * first). The keepalive keeps its own times: a server busy with 24 MB of
 * JSON on a loaded machine can leave a ping unanswered for a while. */
static void updown(const char *scheme, const char *ca, const char *cert, const char *key)
{
    server s;
    if (cert != NULL)
        server_start(&s, "--backpressure", "--tls-cert", cert, "--tls-key", key, NULL);
    else
        server_start(&s, "--backpressure", NULL);
    fixture f;
    fixture_cfg(&f, scheme, "localhost", s.port);
    f.cfg.tls_ca_file = ca;
    fixture_create(&f);
    batch b;
    batch_init(&b);
    treq *down = treq_new(&b, 1, "big", json_pack("[i]", 24 << 20), 60000);
    treq *up = big_request(&b, 2, (size_t)24 << 20, 'u', 60000);
    surpool__tconn *c = open_ok(&f, NULL);
    submit_ok(c, down);
    submit_ok(c, up);
    assert_true(batch_wait(&b, 2, WAIT_MS));
    assert_reply(down);
    assert_reply(up);
    assert_true(ops->alive(c));
    treq_free(down);
    treq_free(up);
    ops->close(c);
    batch_fini(&b);
    fixture_destroy(&f);
    server_stop(&s);
}

/* The server dies (SIGKILL) while a big request of ours is half written and
 * more wait behind it: the socket fails mid-send (EPIPE/ECONNRESET from
 * send(), never SIGPIPE), every request ends once with DISCONNECTED and
 * on_dead comes once. */
static void killed_mid_upload(const char *scheme, const char *ca, const char *cert,
                              const char *key)
{
    server s;
    if (cert != NULL)
        server_start(&s, "--read-pause-ms", "10", "--tls-cert", cert, "--tls-key", key, NULL);
    else
        server_start(&s, "--read-pause-ms", "10", NULL);
    fixture f;
    fixture_cfg(&f, scheme, "localhost", s.port);
    f.cfg.tls_ca_file = ca;
    f.cfg.connect_timeout_ms = 60000;
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    batch b;
    batch_init(&b);
    enum { N = 4 };
    treq *qs[N];
    qs[0] = big_request(&b, 1, (size_t)24 << 20, 'k', 60000);
    surpool__tconn *c = open_ok(&f, &tev);
    submit_ok(c, qs[0]);
    for (int i = 1; i < N; i++) {
        qs[i] = treq_new(&b, i + 1, "ping", NULL, 60000);
        submit_ok(c, qs[i]);
    }
    struct timespec settle = {0, 300 * 1000 * 1000};
    nanosleep(&settle, NULL);
    server_stop(&s);
    assert_true(batch_wait(&b, N, WAIT_MS));
    assert_int_equal(wait_dead(&e, WAIT_MS), 1);
    assert_int_equal(e.why, SURPOOL_ERR_DISCONNECTED);
    for (int i = 0; i < N; i++) {
        assert_int_equal(qs[i]->r.status, SURPOOL_ERR_DISCONNECTED);
        assert_int_equal(atomic_load(&qs[i]->done_calls), 1);
        treq_free(qs[i]);
    }
    ops->close(c);
    assert_int_equal(e.dead, 1);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
}

static void test_killed_mid_upload(void **state)
{
    (void)state;
    ws_and_wss(killed_mid_upload);
}

/* The connection fails while a big request of ours is half written to a
 * server that reads no more: no close frame can follow that request, so the
 * socket goes at once and every request and on_dead learn it then, not after
 * the close-frame backstop (connect_timeout_ms, here 60 s). `bad_reply`: the
 * server sends a frame we refuse (not JSON) 300 ms after it read its first
 * chunk and stopped reading (for far longer than this test), and we read
 * nothing more then; else a submitter could not decode a reply (contract 11)
 * after a 300 ms settle while the server is muted. The 300 ms let the big
 * request fill the socket first (were they too short, the check would only be
 * easier). */
static void fail_mid_upload(const char *scheme, int bad_reply, const char *ca, const char *cert,
                            const char *key)
{
    server s;
    const char *delay = bad_reply ? "300" : "0", *pause = bad_reply ? "600000" : "0";
    if (cert != NULL)
        server_start(&s, "--reply-delay-ms", delay, "--read-pause-ms", pause, "--tls-cert",
                     cert, "--tls-key", key, NULL);
    else
        server_start(&s, "--reply-delay-ms", delay, "--read-pause-ms", pause, NULL);
    fixture f;
    fixture_cfg(&f, scheme, "localhost", s.port);
    f.cfg.tls_ca_file = ca;
    f.cfg.connect_timeout_ms = 60000;
    fixture_create(&f);
    events e;
    surpool__tconn_events tev;
    events_init(&e, &tev);
    batch b;
    batch_init(&b);
    treq *q = big_request(&b, 2, (size_t)32 << 20, 'f', 60000);
    surpool__tconn *c = open_ok(&f, &tev);
    treq *first = treq_new(&b, 1, bad_reply ? "garbage" : "mute", NULL, 60000);
    treq *after = treq_new(&b, 3, "ping", NULL, 60000);
    submit_ok(c, first);
    submit_ok(c, q);
    submit_ok(c, after);
    if (!bad_reply) {
        struct timespec settle = {0, 300 * 1000 * 1000};
        nanosleep(&settle, NULL);
        (ops->fail)(c, SURPOOL_ERR_PROTOCOL, "a reply the submitter refused");
    }
    assert_int_equal(wait_dead(&e, WAIT_MS), 1);
    assert_int_equal(e.why, SURPOOL_ERR_PROTOCOL);
    assert_true(batch_wait(&b, 3, WAIT_MS));
    /* In flight when the connection failed: its code (DISCONNECTED only had
     * a loaded machine not framed them yet by then). Queued: DISCONNECTED. */
    for (int i = 0; i < 2; i++) {
        surpool_err st = (i == 0 ? first : q)->r.status;
        if (st != SURPOOL_ERR_PROTOCOL && st != SURPOOL_ERR_DISCONNECTED)
            fail_msg("request %d: %s", i + 1, surpool_strerror(st));
    }
    assert_int_equal(after->r.status, SURPOOL_ERR_DISCONNECTED);
    treq_free(first);
    treq_free(q);
    treq_free(after);
    ops->close(c);
    batch_fini(&b);
    events_fini(&e);
    fixture_destroy(&f);
    server_stop(&s);
}

static void test_fail_during_upload(void **state)
{
    (void)state;
    char cert[300], key[300], ca[300];
    tls_path(cert, sizeof(cert), "srv.pem");
    tls_path(key, sizeof(key), "srv.key");
    tls_path(ca, sizeof(ca), "ca.pem");
    for (int bad_reply = 0; bad_reply <= 1; bad_reply++) {
        fail_mid_upload("ws", bad_reply, NULL, NULL, NULL);
        fail_mid_upload("wss", bad_reply, ca, cert, key);
    }
}

/* close() on one connection and destroy() on another while a big request
 * of each is half written to a server that reads no more (and more wait
 * behind it): every request ends once with DISCONNECTED, nothing is left
 * (the sanitized runs check the memory), and destroy returns. */
static void close_mid_upload(const char *scheme, const char *ca, const char *cert,
                             const char *key)
{
    server s;
    if (cert != NULL)
        server_start(&s, "--tls-cert", cert, "--tls-key", key, NULL);
    else
        server_start(&s, NULL);
    fixture f;
    fixture_cfg(&f, scheme, "localhost", s.port);
    f.cfg.tls_ca_file = ca;
    f.cfg.connect_timeout_ms = 60000;
    fixture_create(&f);
    batch b;
    batch_init(&b);
    enum { N = 3 };
    treq *qs[2][N];
    surpool__tconn *cs[2];
    for (int k = 0; k < 2; k++) {
        qs[k][1] = big_request(&b, 2, (size_t)24 << 20, 'd', 60000);
        cs[k] = open_ok(&f, NULL);
        qs[k][0] = treq_new(&b, 1, "mute", NULL, 60000);
        qs[k][2] = treq_new(&b, 3, "ping", NULL, 60000);
        for (int i = 0; i < N; i++)
            submit_ok(cs[k], qs[k][i]);
    }
    struct timespec settle = {0, 300 * 1000 * 1000};
    nanosleep(&settle, NULL);
    ops->close(cs[0]);
    fixture_destroy(&f); /* no close() for cs[1]: destroy does it */
    assert_int_equal(b.completed, 2 * N);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < N; i++) {
            assert_int_equal(qs[k][i]->r.status, SURPOOL_ERR_DISCONNECTED);
            assert_int_equal(atomic_load(&qs[k][i]->done_calls), 1);
            treq_free(qs[k][i]);
        }
    }
    batch_fini(&b);
    server_stop(&s);
}

static void test_close_mid_upload(void **state)
{
    (void)state;
    ws_and_wss(close_mid_upload);
}

static void test_upload_while_downloading(void **state)
{
    (void)state;
    ws_and_wss(updown);
}

/* A server that ends the connection after the TLS handshake without
 * answering the upgrade (its close_notify first): the handshake succeeded,
 * so this is what ws:// says for the same server, CONNECT "closed the
 * connection before the WebSocket upgrade completed", not a TLS failure. */
static void test_tls_hangup_at_upgrade(void **state)
{
    (void)state;
    char cert[300], key[300], ca[300];
    tls_path(cert, sizeof(cert), "srv.pem");
    tls_path(key, sizeof(key), "srv.key");
    tls_path(ca, sizeof(ca), "ca.pem");
    const char *schemes[] = {"ws", "wss"};
    for (int i = 0; i < 2; i++) {
        server s;
        if (i == 0)
            server_start(&s, "--hangup-at-upgrade", NULL);
        else
            server_start(&s, "--hangup-at-upgrade", "--tls-cert", cert, "--tls-key", key, NULL);
        fixture f;
        fixture_cfg(&f, schemes[i], "localhost", s.port);
        f.cfg.tls_ca_file = ca;
        fixture_create(&f);
        surpool__tconn *c = NULL;
        surpool_error err;
        surpool_err rc =
            ops->open(f.t, NULL, surpool__deadline_after_ms(WAIT_MS), NULL, &c, &err);
        assert_null(c);
        print_message("    %s: %s: %s\n", schemes[i], surpool_strerror(rc), err.message);
        if (rc != SURPOOL_ERR_CONNECT ||
            strstr(err.message, "closed the connection before the WebSocket upgrade") == NULL)
            fail_msg("%s: %s: %s", schemes[i], surpool_strerror(rc), err.message);
        fixture_destroy(&f);
        server_stop(&s);
    }
}

/* A TLS 1.3 server that requires a client certificate we do not have
 * refuses it after our side of the handshake is done (its alert comes
 * with the first read): still a TLS failure, and it names the alert
 * (OpenSSL 3.0 calls alert 116 "unknown"). */
static void test_tls_client_cert_required(void **state)
{
    (void)state;
    char cert[300], key[300], ca[300];
    tls_path(cert, sizeof(cert), "srv.pem");
    tls_path(key, sizeof(key), "srv.key");
    tls_path(ca, sizeof(ca), "ca.pem");
    server s;
    server_start(&s, "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca, NULL);
    surpool_error err;
    surpool_err rc = tls_try(s.port, "localhost", ca, 0, &err);
    print_message("    %s: %s\n", surpool_strerror(rc), err.message);
    if (rc != SURPOOL_ERR_TLS || strstr(err.message, "alert 'certificate required") == NULL)
        fail_msg("%s: %s", surpool_strerror(rc), err.message);
    server_stop(&s);
}

static void test_invalid_args(void **state)
{
    (void)state;
    surpool_error err;
    surpool__transport *t = NULL;
    assert_int_equal(ops->create(NULL, NULL, &t, &err), SURPOOL_ERR_INVALID_ARG);
    ops->destroy(NULL);
    ops->close(NULL);
    assert_int_equal(ops->alive(NULL), 0);
    assert_int_equal(ops->submit(NULL, NULL), SURPOOL_ERR_INVALID_ARG);
}

int main(void)
{
    /* No stray SIGPIPE kills while the server dies under us. */
    signal(SIGPIPE, SIG_IGN);
    if (getenv("SURPOOL_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("SURPOOL_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_invalid_args, test_teardown),
        cmocka_unit_test_teardown(test_round_trips, test_teardown),
        cmocka_unit_test_teardown(test_event_loops, test_teardown),
        cmocka_unit_test(test_reply_decode),
        cmocka_unit_test_teardown(test_big_reply_decoded_by_its_caller, test_teardown),
        cmocka_unit_test_teardown(test_pipelined_out_of_order, test_teardown),
        cmocka_unit_test_teardown(test_many_connections, test_teardown),
        cmocka_unit_test_teardown(test_connect_refused, test_teardown),
        cmocka_unit_test_teardown(test_connect_unanswered_times_out, test_teardown),
        cmocka_unit_test_teardown(test_http_404_names_the_path, test_teardown),
        cmocka_unit_test_teardown(test_tls_hangup_in_handshake, test_teardown),
        cmocka_unit_test_teardown(test_resolve_failure, test_teardown),
        cmocka_unit_test_teardown(test_no_upgrade_times_out, test_teardown),
        cmocka_unit_test_teardown(test_missing_subprotocol, test_teardown),
        cmocka_unit_test_teardown(test_wrong_path, test_teardown),
        cmocka_unit_test_teardown(test_reply_too_large, test_teardown),
        cmocka_unit_test_teardown(test_request_timeout, test_teardown),
        cmocka_unit_test_teardown(test_cancel, test_teardown),
        cmocka_unit_test_teardown(test_cancel_race, test_teardown),
        cmocka_unit_test_teardown(test_server_killed, test_teardown),
        cmocka_unit_test_teardown(test_close_after, test_teardown),
        cmocka_unit_test_teardown(test_fragmented_reply, test_teardown),
        cmocka_unit_test_teardown(test_request_after_pong, test_teardown),
        cmocka_unit_test_teardown(test_keepalive, test_teardown),
        cmocka_unit_test_teardown(test_keepalive_choked, test_teardown),
        cmocka_unit_test_teardown(test_upload_keeps_alive, test_teardown),
        cmocka_unit_test_teardown(test_keepalive_requests_to_mute, test_teardown),
        cmocka_unit_test_teardown(test_peer_close_during_upload, test_teardown),
        cmocka_unit_test_teardown(test_peer_close_code, test_teardown),
        cmocka_unit_test_teardown(test_peer_close_reason_bytes, test_teardown),
        cmocka_unit_test_teardown(test_long_path, test_teardown),
        cmocka_unit_test_teardown(test_bad_frames, test_teardown),
        cmocka_unit_test_teardown(test_bad_frame_close_code, test_teardown),
        cmocka_unit_test_teardown(test_notifications_and_orphans, test_teardown),
        cmocka_unit_test_teardown(test_close_with_requests_in_flight, test_teardown),
        cmocka_unit_test_teardown(test_destroy_closes_open_connections, test_teardown),
        cmocka_unit_test_teardown(test_create_destroy_cycles, test_teardown),
        cmocka_unit_test_setup_teardown(test_tls, tls_setup, tls_teardown_all),
        cmocka_unit_test_setup_teardown(test_big_request_memory, tls_setup, tls_teardown_all),
        cmocka_unit_test_setup_teardown(test_idle_memory, tls_setup, tls_teardown_all),
        cmocka_unit_test_setup_teardown(test_killed_mid_upload, tls_setup, tls_teardown_all),
        cmocka_unit_test_setup_teardown(test_close_mid_upload, tls_setup, tls_teardown_all),
        cmocka_unit_test_setup_teardown(test_fail_during_upload, tls_setup, tls_teardown_all),
        cmocka_unit_test_setup_teardown(test_upload_while_downloading, tls_setup,
                                        tls_teardown_all),
        cmocka_unit_test_setup_teardown(test_tls_hangup_at_upgrade, tls_setup,
                                        tls_teardown_all),
        cmocka_unit_test_setup_teardown(test_tls_client_cert_required, tls_setup,
                                        tls_teardown_all),
    };
    if (getenv("SURPOOL_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("SURPOOL_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
